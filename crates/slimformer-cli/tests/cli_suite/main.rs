//! The `slimformer` binary's tests, one test binary (one link) for them all: each
//! module runs the real binary as a user would, on real checkpoints and data.

mod cli;
mod common;
mod compare_cli;
mod finetune_cli;
mod jobs;
mod layering;
mod memory_limit;
mod pretrain_cli;
mod reliability;
mod rerank_cli;
mod retrain_cli;
mod serve;
mod serve_models;
mod serve_tei;
mod shrink_cli;
mod study_cli;
mod tagging;
mod training_precision;
mod vendored;
