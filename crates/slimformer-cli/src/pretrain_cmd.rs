//! `slimformer pretrain`: a model from scratch on a text corpus, with the family's
//! pretraining objectives, saved as a Hugging Face pretraining checkpoint.

use crate::train_flags::{Schedule, TrainingFlags};
use slimformer::models::Family;
use slimformer_train::pretrain::{self, ModelShape, PretrainOptions, TokenizerSource};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct PretrainArgs {
    /// The model family: its architecture, tokenizer kind and objectives (bert: MLM +
    /// NSP, roberta: dynamic MLM, albert: MLM + SOP, distilbert: MLM, xlnet: PLM).
    #[arg(long, value_parser = ["bert", "roberta", "xlnet", "albert", "distilbert"])]
    pub family: String,
    /// Text files: one paragraph per line (a tab separates two), documents separated
    /// by an empty line.
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// A folder with the tokenizer.json to use (default: train one on the corpus).
    #[arg(long, conflicts_with = "vocab_size")]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of the tokenizer trained on the corpus.
    #[arg(long, default_value_t = 8000)]
    pub vocab_size: usize,
    /// Model size: tiny (128 hidden, 2 layers), mini (256, 4), small (512, 4).
    #[arg(long, conflicts_with = "config", default_value = "tiny")]
    pub size: String,
    /// A config.json giving the model's shape instead of --size (its vocab_size and
    /// pad_token_id follow the tokenizer).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: usize,
    /// Tokens per sequence, special tokens included.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (linear warm-up, then linear decay to 0).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Mask all pieces of a word together.
    #[arg(long)]
    pub whole_word_mask: bool,
    /// The last fraction of the examples, held out for evaluation.
    #[arg(long, default_value_t = 0.05)]
    pub dev_fraction: f64,
    #[command(flatten)]
    pub training: TrainingFlags,
}

pub fn pretrain(args: PretrainArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let family = Family::from_model_type(&args.family)
        .ok_or_else(|| anyhow::anyhow!("unknown family {:?}", args.family))?;
    let shape = match args.config {
        Some(path) => ModelShape::Config(path),
        None => ModelShape::Size(pretrain::size(&args.size)?),
    };
    let tokenizer = match args.tokenizer {
        Some(dir) => TokenizerSource::Dir(dir),
        None => TokenizerSource::Train {
            vocab_size: args.vocab_size,
        },
    };
    let opts = PretrainOptions {
        family,
        corpus: args.corpus,
        tokenizer,
        shape,
        seq_len: args.seq_len,
        whole_word_mask: args.whole_word_mask,
        dev_fraction: args.dev_fraction,
        train_config: args.training.config(Schedule {
            lr: args.lr,
            batch: args.batch,
            epochs: 1,
            max_steps: Some(args.steps),
            patience: None,
        }),
        out: args.training.out,
        overwrite: args.training.overwrite,
        progress: true,
    };
    let report = pretrain::pretrain(&opts)?;
    let o = &report.outcome;
    let line = serde_json::json!({
        "out": report.out,
        "family": report.family,
        "architecture": report.architecture,
        "dev": o.last.as_ref().map(|m| &m.values),
        "best_dev": o.best.as_ref().map(|m| &m.values),
        "best_step": o.best_step,
        "steps": o.steps,
        "resumed_from": o.resumed_from,
        "examples_per_s": o.examples_per_s,
        "minutes": start.elapsed().as_secs_f64() / 60.0,
        "train_examples": report.train_examples,
        "dev_examples": report.dev_examples,
        "vocab_size": report.vocab_size,
        "parameters": report.parameters,
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
