//! slimformer-train's tests, one test binary for them all: parity with
//! transformers for every family and head (inference and gradients), fine-tuning
//! and shrinking on real checkpoints.

mod finetune;
mod gradients;
mod parity;
mod shrink;
mod token_metrics;
mod training_parity;
