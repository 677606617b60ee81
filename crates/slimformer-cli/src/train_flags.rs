//! The flags every training command shares, and the trainer configuration they make.

use slimformer_train::trainer::{Selection, TrainConfig};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TrainingFlags {
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Share of the steps spent warming the learning rate up from 0.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay (never on biases and LayerNorm).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Evaluate (and save resume state) every N optimizer steps (default: once per
    /// pass over the data, and at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// A metrics.jsonl training line every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// The run folder: best checkpoint, metrics.jsonl, resume state.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace what --out holds instead of resuming or refusing.
    #[arg(long)]
    pub overwrite: bool,
    /// Which evaluation's checkpoint the run keeps: the best of a metric of the
    /// task's (accuracy, macro_f1, mcc, micro_f1, pearson, loss, ...: the lowest of a
    /// loss or an error, the highest of any other), or `last` (default: the task's own,
    /// accuracy for a classifier).
    #[arg(long, value_name = "METRIC|last")]
    pub select: Option<String>,
}

/// The schedule flags of supervised training (`finetune`, `distill`, `compress`).
#[derive(clap::Args)]
pub struct ScheduleFlags {
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Optimizer steps in all (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Peak learning rate (linear warm-up, then linear decay to 0).
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Examples per forward/backward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Truncate texts to this many tokens (default: 128, or the model's limit if lower).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Stop after N evaluations without a better dev score.
    #[arg(long)]
    pub patience: Option<usize>,
}

impl ScheduleFlags {
    pub fn schedule(&self) -> Schedule {
        Schedule {
            lr: self.lr,
            batch: self.batch,
            epochs: self.epochs,
            max_steps: self.max_steps,
            patience: self.patience,
        }
    }
}

/// What each command decides itself.
pub struct Schedule {
    pub lr: f64,
    pub batch: usize,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub patience: Option<usize>,
}

impl TrainingFlags {
    pub fn config(&self, schedule: Schedule) -> TrainConfig {
        TrainConfig {
            epochs: schedule.epochs,
            max_steps: schedule.max_steps,
            lr: schedule.lr,
            batch: schedule.batch,
            grad_accum: self.grad_accum,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            clip: self.clip,
            seed: self.seed,
            eval_every: self.eval_every,
            patience: schedule.patience,
            log_every: self.log_every,
            select: self
                .select
                .as_deref()
                .map_or(Selection::Primary, Selection::parse),
        }
    }
}
