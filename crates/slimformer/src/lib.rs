//! slimformer: transformer encoders (BERT, RoBERTa, XLNet, ALBERT, DistilBERT)
//! loaded from Hugging Face checkpoints and run with candle, with no Python or
//! libtorch at run time. This crate is the core that every other layer builds on.
//!
//! - [`models`]: one file per family; [`layers`]: the blocks they share, over the
//!   CPU kernels of `slimformer-kernels`.
//! - [`checkpoint`]: reading checkpoint folders ([`quantized`]: int8/bf16 ones);
//!   [`save`] and [`hf_tokenizer`]: writing them in Hugging Face's layout;
//!   [`model`]: a loaded model of any family.
//! - [`heads`]: classification, token classification and masked-LM heads.
//! - [`tokenize`], [`batching`], [`pooling`], [`pipeline`]: from texts to results.
//! - [`params`], [`bench`], [`hub`]: inspection, timing, finding models.
//! - [`error`], [`io`], [`rng`]: typed errors, atomic writes, seeded randomness.

pub mod batching;
pub mod bench;
pub mod checkpoint;
pub mod error;
pub mod heads;
pub mod hf_tokenizer;
pub mod hub;
pub mod io;
pub mod layers;
pub mod memory;
pub mod model;
pub mod models;
pub mod params;
pub mod pipeline;
pub mod pooling;
pub mod quantized;
pub mod rerank;
pub mod rng;
pub mod save;
pub mod tagging;
pub mod tokenize;

pub use error::{Error, Result};
pub use model::Model;
pub use pipeline::Pipeline;
