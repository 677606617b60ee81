//! `slimformer finetune`: sequence classification on labelled CSV/TSV/JSONL files,
//! token classification on tagged CoNLL/CoNLL-U/JSONL files; `slimformer evaluate`.

use crate::train_flags::{ScheduleFlags, TrainingFlags};
use slimformer::heads::ProblemType;
use slimformer_train::data::Columns;
use slimformer_train::finetune::{self, FinetuneOptions};
use slimformer_train::token_classification;
use std::path::PathBuf;
use std::process::ExitCode;

/// Which columns (or JSON keys) hold the texts and the label.
#[derive(clap::Args)]
pub struct ColumnFlags {
    #[arg(long, default_value = "text")]
    pub text_col: String,
    /// Column of the second text of a pair.
    #[arg(long)]
    pub text_pair_col: Option<String>,
    #[arg(long, default_value = "label")]
    pub label_col: String,
}

impl ColumnFlags {
    pub fn into_columns(self) -> Columns {
        Columns {
            text: self.text_col,
            text_pair: self.text_pair_col,
            label: self.label_col,
        }
    }
}

/// What a fine-tune trains.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FinetuneTask {
    /// A label per text (or text pair): `*ForSequenceClassification`.
    SequenceClassification,
    /// A tag per word (entities, part of speech): `*ForTokenClassification`.
    TokenClassification,
}

/// What a sequence classifier's labels are.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProblemTypeFlag {
    /// One label a text: softmax and cross-entropy.
    SingleLabel,
    /// Any number of labels a text, `|`-separated in the label field (a list in
    /// JSON Lines; empty for none): a sigmoid and binary cross-entropy each.
    MultiLabel,
    /// A number a text: one output and squared error.
    Regression,
}

impl From<ProblemTypeFlag> for ProblemType {
    fn from(flag: ProblemTypeFlag) -> Self {
        match flag {
            ProblemTypeFlag::SingleLabel => ProblemType::SingleLabel,
            ProblemTypeFlag::MultiLabel => ProblemType::MultiLabel,
            ProblemTypeFlag::Regression => ProblemType::Regression,
        }
    }
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The model folder to start from (or a hub id in the local cache).
    pub model: String,
    #[arg(long, value_enum, default_value = "sequence-classification")]
    pub task: FinetuneTask,
    /// Sequence classification: what the labels are (default: the model's
    /// `problem_type`, else single-label).
    #[arg(long, value_enum)]
    pub problem_type: Option<ProblemTypeFlag>,
    /// Training data. Sequence classification: .csv, .tsv, or .jsonl with a header /
    /// keys. Token classification: .conll/.iob/.bio/.txt/.tsv (word and tag per line,
    /// blank line between sentences), .conllu (FORM and UPOS), or .jsonl
    /// ({"tokens": [...], "tags": [...]}).
    #[arg(long)]
    pub train: PathBuf,
    /// Dev data, same format (default: --dev-split of the training data).
    #[arg(long, conflicts_with = "dev_split")]
    pub dev: Option<PathBuf>,
    /// Fraction of the training rows held out as dev data (seeded) when no --dev.
    #[arg(long)]
    pub dev_split: Option<f64>,
    #[command(flatten)]
    pub columns: ColumnFlags,
    #[command(flatten)]
    pub schedule: ScheduleFlags,
    #[command(flatten)]
    pub training: TrainingFlags,
    /// Test data, scored with the best checkpoint at the end.
    #[arg(long)]
    pub test: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// A sequence- or token-classification model folder (or a hub id in the local cache).
    pub model: String,
    /// Labelled data, labels named as in the model's id2label: .csv, .tsv or .jsonl
    /// for a sequence classifier; tagged .conll/.conllu/.jsonl for a token classifier.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub columns: ColumnFlags,
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

/// `slimformer evaluate`, as one JSON object: accuracy, macro-F1, MCC and loss for a
/// sequence classifier (exact-match accuracy, micro- and macro-F1 for a multi-label one;
/// MSE, MAE, Pearson and Spearman for a regression); token accuracy, loss and (for entity tags) seqeval's
/// precision, recall and F1 for a token classifier.
pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let model_dir = slimformer::hub::resolve_model(&args.model)?;
    let metrics = if slimformer::heads::is_token_classifier(&model_dir)? {
        token_classification::evaluate_checkpoint(
            &model_dir,
            &args.data,
            args.max_len,
            args.batch.max(1),
        )?
    } else {
        finetune::evaluate_checkpoint(
            &model_dir,
            &args.data,
            &args.columns.into_columns(),
            args.max_len,
            args.batch.max(1),
        )?
    };
    println!("{}", serde_json::to_string(&metrics.values)?);
    Ok(ExitCode::SUCCESS)
}

pub fn finetune(args: FinetuneArgs) -> anyhow::Result<ExitCode> {
    let model_dir = slimformer::hub::resolve_model(&args.model)?;
    let opts = FinetuneOptions {
        model_dir,
        train: args.train,
        dev_split: if args.dev.is_none() {
            Some(args.dev_split.unwrap_or(0.1))
        } else {
            None
        },
        dev: args.dev,
        columns: args.columns.into_columns(),
        max_len: args.schedule.max_len,
        train_config: args.training.config(args.schedule.schedule()),
        out: args.training.out,
        overwrite: args.training.overwrite,
        progress: true,
        test: args.test,
        problem_type: args.problem_type.map(ProblemType::from),
    };
    if args.task == FinetuneTask::TokenClassification && opts.problem_type.is_some() {
        anyhow::bail!("--problem-type is for --task sequence-classification: a token classifier has one tag a token");
    }
    let report = match args.task {
        FinetuneTask::SequenceClassification => finetune::finetune(&opts)?,
        FinetuneTask::TokenClassification => token_classification::finetune(&opts)?,
    };
    let o = &report.outcome;
    let line = serde_json::json!({
        "out": report.out,
        "dev": o.best.as_ref().map(|m| &m.values),
        "best_step": o.best_step,
        "last_dev": o.last.as_ref().map(|m| &m.values),
        "steps": o.steps,
        "resumed_from": o.resumed_from,
        "stopped_early": o.stopped_early,
        "examples_per_s": o.examples_per_s,
        "train_examples": report.train_examples,
        "dev_examples": report.dev_examples,
        "test": report.test.as_ref().map(|m| &m.values),
        "labels": report.labels,
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
