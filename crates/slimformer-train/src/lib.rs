//! Training for slimformer's models: the shared [`trainer`] (AdamW in [`optim`],
//! seeded data order, checkpoints and resuming), fine-tuning ([`finetune`]),
//! pretraining objectives ([`pretrain`], [`objectives`]: MLM, SOP, PLM, pairs),
//! tokenizer training ([`tokenizer`]), and making models smaller ([`shrink`]:
//! distillation, ALBERT-style compression, quantization).

pub mod data;
pub mod finetune;
pub mod init;
pub mod objectives;
pub mod optim;
pub mod pretrain;
pub mod pretrain_heads;
pub mod shrink;
pub mod tagged;
pub mod token_classification;
pub mod tokenizer;
pub mod trainer;
