//! slimformer: transformer encoders (BERT, RoBERTa, XLNet, ALBERT, DistilBERT)
//! loaded from Hugging Face checkpoints and run with candle, with no Python or
//! libtorch at run time.
//!
//! - [`models`]: one file per family; [`layers`]: the blocks they share.
//! - [`checkpoint`]: reading checkpoint folders; [`model`]: a loaded model of any family.
//! - [`heads`]: classification, token classification and masked-LM heads.
//! - [`tokenize`], [`pooling`], [`pipeline`]: from texts to results.
//! - [`params`], [`bench`], [`hub`]: inspection, timing, finding models.
//! - [`compare`], [`report`], [`plots`]: measuring models side by side, and the report.
//! - [`train`]: the trainer, pretraining and fine-tuning; [`shrink`]: distillation,
//!   ALBERT-style compression, quantization.

pub mod batching;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod error;
pub mod heads;
pub mod hub;
pub mod io;
pub mod layers;
pub mod model;
pub mod models;
pub mod params;
pub mod pipeline;
pub mod plots;
pub mod pooling;
pub mod registry;
pub mod report;
pub mod retrain;
pub mod rng;
pub mod shrink;
pub mod study;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
pub use model::Model;
pub use pipeline::Pipeline;
