//! Making models smaller and faster: DistilBERT-style knowledge distillation
//! ([`distill`], [`losses`], teacher-labelled [`augment`]ation, students built from a teacher's layers in [`student`]),
//! ALBERT-style compression of a trained BERT ([`compress`]: factorized embeddings by
//! SVD, fitted to BERT's embedding output in [`embedding_fit`]; cross-layer sharing), and weight quantization ([`quantize`]).

pub mod augment;
pub mod compress;
pub mod distill;
pub mod embedding_fit;
pub mod linalg;
pub mod losses;
pub mod quantize;
pub mod student;
pub mod teacher_cache;
