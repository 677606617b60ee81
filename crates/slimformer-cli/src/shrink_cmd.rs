//! `slimformer distill`, `compress` and `quantize`: smaller, faster models.

use crate::train_cmd::ColumnFlags;
use crate::train_flags::{ScheduleFlags, TrainingFlags};
use slimformer_train::shrink::compress::{self, CompressOptions, ShareInit, Sharing};
use slimformer_train::shrink::distill::{self, DistillData, DistillOptions, StudentSpec};
use slimformer_train::shrink::embedding_fit::{self, EmbeddingFitOptions};
use slimformer_train::shrink::losses::DistillWeights;
use slimformer_train::shrink::quantize::{self, QuantMode};
use slimformer_train::shrink::student::write_checkpoint;
use std::path::PathBuf;
use std::process::ExitCode;

/// Texts (or paragraphs) of the recovery data the embedding fit samples from.
const FIT_TEXTS: usize = 20_000;

/// The data, loss and schedule flags of a distillation (also `compress`'s recovery).
#[derive(clap::Args)]
pub struct DistillFlags {
    /// Labelled training data (task distillation): .csv, .tsv or .jsonl.
    #[arg(long, conflicts_with = "corpus")]
    pub train: Option<PathBuf>,
    /// Raw text files (general distillation), one paragraph per line.
    #[arg(long, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    #[arg(long, conflicts_with = "dev_split")]
    pub dev: Option<PathBuf>,
    #[arg(long)]
    pub dev_split: Option<f64>,
    /// Test data, scored with the best checkpoint at the end.
    #[arg(long)]
    pub test: Option<PathBuf>,
    #[command(flatten)]
    pub columns: ColumnFlags,
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    /// Weight of the soft-target loss (KL at temperature T, times T²).
    #[arg(long, default_value_t = 5.0)]
    pub alpha_ce: f64,
    /// Weight of the gold-label loss (task distillation).
    #[arg(long, default_value_t = 2.0)]
    pub alpha_task: f64,
    /// Weight of the masked-LM loss (general distillation).
    #[arg(long, default_value_t = 2.0)]
    pub alpha_mlm: f64,
    /// Weight of the cosine loss between last hidden states.
    #[arg(long, default_value_t = 1.0)]
    pub alpha_cos: f64,
    /// Weight of the mean squared error between the hidden states of mapped layers
    /// (the embeddings' output included; through a learned projection when the
    /// widths differ). The teacher then runs at every step, uncached.
    #[arg(long, default_value_t = 0.0)]
    pub alpha_hidden: f64,
    /// Weight of the KL between the attention distributions of mapped layers (the
    /// same number of heads on both sides). The teacher then runs at every step.
    #[arg(long, default_value_t = 0.0)]
    pub alpha_attention: f64,
    /// Where the teacher's outputs on the training data are cached (task distillation).
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
    /// Run the teacher on every batch instead of caching its outputs.
    #[arg(long)]
    pub no_teacher_cache: bool,
    /// Task distillation: add N altered copies of each training text (40% of its
    /// tokens replaced by neighbours in the teacher's embeddings), labelled by the
    /// teacher (TinyBERT's augmentation).
    #[arg(long, default_value_t = 0)]
    pub augment: usize,
    #[command(flatten)]
    pub schedule: ScheduleFlags,
    #[command(flatten)]
    pub training: TrainingFlags,
}

#[derive(clap::Args)]
pub struct DistillArgs {
    /// The teacher model folder (or a hub id in the local cache).
    #[arg(long)]
    pub teacher: String,
    /// K of the teacher's layers, evenly spaced, first and last included.
    #[arg(long, conflicts_with_all = ["teacher_layers", "student_config", "student"])]
    pub student_layers: Option<usize>,
    /// Exactly these teacher layers, e.g. 0,2,4.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["student_config", "student"])]
    pub teacher_layers: Option<Vec<usize>>,
    /// A config.json for a student of any shape, randomly initialised.
    #[arg(long, conflicts_with = "student")]
    pub student_config: Option<PathBuf>,
    /// A student made beforehand, e.g. by general distillation on raw text
    /// (`distill --corpus ... --out DIR`), to distill on the task next.
    #[arg(long)]
    pub student: Option<PathBuf>,
    #[command(flatten)]
    pub flags: DistillFlags,
}

#[derive(clap::Args)]
pub struct CompressArgs {
    /// A BERT checkpoint folder (or a hub id in the local cache).
    pub model: String,
    /// E: the width of the factorized embeddings (default: the hidden size, exact).
    #[arg(long)]
    pub embedding_size: Option<usize>,
    /// Which parts of the layers are shared across depth.
    #[arg(long, default_value = "all")]
    pub share: Sharing,
    /// Groups of consecutive layers, one shared layer (or block) each (default 1).
    #[arg(long)]
    pub groups: Option<usize>,
    /// A shared layer starts as the mean of the layers it replaces, or the first.
    #[arg(long, default_value = "mean")]
    pub share_init: ShareInit,
    /// Steps fitting the factorized embeddings to the model's embedding output before
    /// recovery (on the recovery texts, else on random tokens; 0: keep the SVD start).
    #[arg(long, default_value_t = 2000)]
    pub embedding_fit_steps: usize,
    /// The compressed model before recovery (default: OUT/compressed when recovering,
    /// else OUT itself).
    #[command(flatten)]
    pub recovery: RecoveryFlags,
}

/// Without --train or --corpus, compress writes the compressed model and stops.
#[derive(clap::Args)]
pub struct RecoveryFlags {
    #[command(flatten)]
    pub flags: DistillFlags,
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    pub model: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "int8")]
    pub mode: QuantMode,
}

fn default_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("slimformer").join("teacher-outputs"))
}

impl DistillFlags {
    fn has_data(&self) -> bool {
        self.train.is_some() || !self.corpus.is_empty()
    }

    fn options(self, teacher: PathBuf, student: StudentSpec) -> anyhow::Result<DistillOptions> {
        let task = self.train.is_some();
        let data = match self.train {
            Some(train) => DistillData::Task {
                dev_split: if self.dev.is_none() {
                    Some(self.dev_split.unwrap_or(0.1))
                } else {
                    None
                },
                train,
                dev: self.dev,
                columns: self.columns.into_columns(),
                test: self.test,
            },
            None if !self.corpus.is_empty() => DistillData::General {
                corpus: self.corpus,
            },
            None => anyhow::bail!(
                "no data: pass --train FILE (task distillation) or --corpus FILE... (general)"
            ),
        };
        let cache_dir = match (self.no_teacher_cache, self.teacher_cache) {
            (true, _) => None,
            (false, Some(dir)) => Some(dir),
            (false, None) => default_cache(),
        };
        Ok(DistillOptions {
            teacher,
            student,
            data,
            weights: DistillWeights {
                temperature: self.temperature,
                alpha_ce: self.alpha_ce,
                alpha_hard: if task {
                    self.alpha_task
                } else {
                    self.alpha_mlm
                },
                alpha_cos: self.alpha_cos,
                alpha_hidden: self.alpha_hidden,
                alpha_attention: self.alpha_attention,
            },
            max_len: self.schedule.max_len,
            train_config: self.training.config(self.schedule.schedule()),
            out: self.training.out,
            overwrite: self.training.overwrite,
            progress: true,
            cache_dir,
            augment: self.augment,
        })
    }
}

fn print_report(report: &distill::DistillReport) -> anyhow::Result<()> {
    let o = &report.outcome;
    let line = serde_json::json!({
        "out": report.out,
        "student_init": report.student_init,
        "dev": o.best.as_ref().map(|m| &m.values),
        "best_step": o.best_step,
        "steps": o.steps,
        "resumed_from": o.resumed_from,
        "stopped_early": o.stopped_early,
        "examples_per_s": o.examples_per_s,
        "train_examples": report.train_examples,
        "test": report.test.as_ref().map(|m| &m.values),
    });
    println!("{line}");
    Ok(())
}

pub fn distill(args: DistillArgs) -> anyhow::Result<ExitCode> {
    let teacher = slimformer::hub::resolve_model(&args.teacher)?;
    let student = match (
        args.student_layers,
        args.teacher_layers,
        args.student_config,
        args.student,
    ) {
        (Some(k), ..) => StudentSpec::Layers(k),
        (_, Some(layers), ..) => StudentSpec::TeacherLayers(layers),
        (_, _, Some(config), _) => StudentSpec::Config(config),
        (.., Some(dir)) => {
            if !dir.join(slimformer::checkpoint::CONFIG_FILE).is_file() {
                anyhow::bail!(
                    "--student {}: not a model folder (no config.json)",
                    dir.display()
                );
            }
            StudentSpec::Prepared(dir)
        }
        _ => anyhow::bail!(
            "which student? pass --student-layers K, --teacher-layers 0,2,4, \
             --student-config FILE or --student DIR"
        ),
    };
    let opts = args.flags.options(teacher, student)?;
    print_report(&distill::distill(&opts)?)?;
    Ok(ExitCode::SUCCESS)
}

pub fn compress(args: CompressArgs) -> anyhow::Result<ExitCode> {
    let model_dir = slimformer::hub::resolve_model(&args.model)?;
    let teacher = slimformer::checkpoint::Checkpoint::open(&model_dir)?;
    let flags = args.recovery.flags;
    let out = flags.training.out.clone();
    let recovery = if flags.has_data() {
        let compressed = out.join("compressed");
        let opts = flags.options(model_dir.clone(), StudentSpec::Prepared(compressed.clone()))?;
        Some((compressed, opts))
    } else {
        None
    };
    let texts = match &recovery {
        Some((_, opts)) if args.embedding_fit_steps > 0 => {
            let max_len = opts
                .max_len
                .unwrap_or(slimformer_train::finetune::DEFAULT_MAX_LEN);
            embedding_fit::token_ids(&opts.data, &model_dir, max_len, FIT_TEXTS)?
        }
        _ => Vec::new(),
    };
    let opts = CompressOptions {
        embedding_size: args.embedding_size,
        sharing: args.share,
        groups: args.groups,
        share_init: args.share_init,
        embedding_fit: (args.embedding_fit_steps > 0)
            .then(|| EmbeddingFitOptions::new(args.embedding_fit_steps, texts)),
    };
    let (student, report) = compress::compress(&teacher, &opts)?;
    let compressed = recovery.as_ref().map_or(&out, |(c, _)| c);
    write_checkpoint(&student, compressed, &model_dir)?;
    let loaded = slimformer::Model::load(compressed)?;
    let params = slimformer::params::count_parameters(&loaded.checkpoint);
    let before = slimformer::params::count_parameters(&teacher);
    let summary = serde_json::json!({
        "compressed": compressed,
        "report": report,
        "parameters_before": before.total,
        "parameters_after": params.total,
        "parameter_ratio": params.total as f64 / before.total.max(1) as f64,
    });
    slimformer::io::write_atomic(
        &compressed.join("compress_report.json"),
        (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
    )?;
    let Some((_, opts)) = recovery else {
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!("{summary}");
    print_report(&distill::distill(&opts)?)?;
    Ok(ExitCode::SUCCESS)
}

pub fn quantize(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    let model_dir = slimformer::hub::resolve_model(&args.model)?;
    let report = quantize::quantize(&model_dir, &args.out, args.mode)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
