//! The `slimformer` command: argument parsing and dispatch only; the work is in
//! the `slimformer` library.

mod alloc;
mod compare_cmd;
mod input;
mod pretrain_cmd;
mod probe_cmd;
mod registry_cmd;
mod rerank_cmd;
mod serve_cmd;
mod shrink_cmd;
mod study_cmd;
mod tasks;
mod train_cmd;
mod train_flags;

use clap::{Parser, Subcommand};
use slimformer_server::log_sink;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "slimformer",
    version,
    about = "Transformer encoders for production: load, run, shrink, compare, serve"
)]
struct Cli {
    /// Threads for inference (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Arithmetic at inference: fp32; int8 (linear layers with weights per channel,
    /// activations per row and 64 values, quantized at run time; AMX or VNNI where
    /// present); or bf16 (weights and activations rounded to bf16, f32 sums; AMX or
    /// AVX512-BF16 where present). On AMX, int8 and bf16 also run attention's two
    /// products in bf16.
    #[arg(long, global = true, default_value = "fp32")]
    precision: slimformer::layers::Precision,
    /// How log lines look: text, or json (one JSON object per line; `serve`
    /// then writes them to standard output, for log collectors).
    #[arg(
        long,
        global = true,
        env = "SLIMFORMER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Family, configuration, parameters, size and dtype of a model.
    Inspect(tasks::InspectArgs),
    /// Token ids and last hidden states, one JSON object per text.
    Encode(tasks::TaskArgs),
    /// Sentence embeddings, as sentence-transformers makes them.
    Embed(tasks::EmbedArgs),
    /// Sequence classification with the checkpoint's labels.
    Classify(tasks::TaskArgs),
    /// Token classification, with character offsets.
    Tag(tasks::TagArgs),
    /// Documents ranked against a query, best first: a cross-encoder's relevance,
    /// or an embedding model's cosine similarity.
    Rerank(Box<rerank_cmd::RerankArgs>),
    /// Top-k predictions for each mask token.
    FillMask(tasks::FillMaskArgs),
    /// Time the encoder's forward pass on synthetic inputs.
    Bench(tasks::BenchArgs),
    /// Fine-tune a sequence classifier on labelled CSV/TSV/JSONL data.
    Finetune(Box<train_cmd::FinetuneArgs>),
    /// Accuracy, macro-F1 and MCC of a sequence classifier on labelled data.
    Evaluate(train_cmd::EvaluateArgs),
    /// Pretrain a model from scratch on a text corpus (MLM, NSP/SOP, or PLM).
    Pretrain(Box<pretrain_cmd::PretrainArgs>),
    /// Distill a teacher into a smaller student (DistilBERT's recipe).
    Distill(Box<shrink_cmd::DistillArgs>),
    /// ALBERT-style compression of a BERT: factorized embeddings, shared layers,
    /// then recovery by distillation.
    Compress(Box<shrink_cmd::CompressArgs>),
    /// Store the weights as int8 (per-channel scales) or bf16.
    Quantize(shrink_cmd::QuantizeArgs),
    /// Serve a model (or a registry's production version) over REST.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Measure models side by side (size, memory, latency, accuracy) into a report.
    Compare(Box<compare_cmd::CompareArgs>),
    /// The comparative study of the five families, end to end, resumable.
    Study(study_cmd::StudyArgs),
    /// Model versions: list, show, promote, rollback, history.
    #[command(subcommand)]
    Registry(registry_cmd::RegistryCommand),
    /// Retrain on new inbox data on a schedule, promoting only what passes the gate.
    Retrain(registry_cmd::RetrainArgs),
    /// GET an http:// address; exit 0 on a 200 (a health check with no curl).
    Probe(probe_cmd::ProbeArgs),
    /// One model of `compare`, in a process of its own.
    #[command(hide = true)]
    CompareOne(Box<compare_cmd::CompareOneArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(threads) = cli.threads {
        // candle's matmul and rayon both size their pools from this variable,
        // read when first used: set it before any work starts.
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
    }
    slimformer::layers::set_precision(cli.precision);
    let trains = matches!(
        cli.command,
        Command::Finetune(_)
            | Command::Pretrain(_)
            | Command::Distill(_)
            | Command::Compress(_)
            | Command::Retrain(_)
    );
    alloc::keep_freed_memory(!trains);
    let _log_flush = init_logging(cli.log_format, matches!(cli.command, Command::Serve(_)));
    let result = match cli.command {
        Command::Inspect(args) => tasks::inspect(args),
        Command::Encode(args) => tasks::encode(args),
        Command::Embed(args) => tasks::embed(args),
        Command::Classify(args) => tasks::classify(args),
        Command::Tag(args) => tasks::tag(args),
        Command::FillMask(args) => tasks::fill_mask(args),
        Command::Rerank(args) => rerank_cmd::rerank(*args),
        Command::Bench(args) => tasks::bench(args),
        Command::Finetune(args) => train_cmd::finetune(*args),
        Command::Evaluate(args) => train_cmd::evaluate(args),
        Command::Pretrain(args) => pretrain_cmd::pretrain(*args),
        Command::Distill(args) => shrink_cmd::distill(*args),
        Command::Compress(args) => shrink_cmd::compress(*args),
        Command::Quantize(args) => shrink_cmd::quantize(args),
        Command::Serve(args) => serve_cmd::serve(*args),
        Command::Compare(args) => compare_cmd::compare(*args, cli.threads),
        Command::CompareOne(args) => compare_cmd::compare_one(*args),
        Command::Study(args) => study_cmd::study(args, cli.threads),
        Command::Registry(cmd) => registry_cmd::registry(cmd),
        Command::Retrain(args) => registry_cmd::retrain(args),
        Command::Probe(args) => probe_cmd::probe(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = describe(&e);
            if cli.log_format == LogFormat::Json {
                // A log collector sees why the process stopped, not only the terminal.
                tracing::error!(error = %message, "stopped");
            }
            eprintln!("slimformer: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines: the server logs each request (ids, routes, statuses; texts only if
/// asked) at info, the other commands only warnings. JSON lines from the server go
/// to standard output, where container log drivers read; every other command keeps
/// standard output for its results. The server's lines go through a bounded queue
/// that drops (and counts) lines rather than stall a request on a stalled log
/// reader; the guard returned writes out what is queued at exit.
fn init_logging(format: LogFormat, serving: bool) -> Option<log_sink::FlushGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIMFORMER_LOG")
        .unwrap_or_else(|_| if serving { "info" } else { "warn" }.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !serving {
        match format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .init(),
            LogFormat::Text => builder.with_writer(std::io::stderr).with_ansi(ansi).init(),
        }
        return None;
    }
    let output = match format {
        LogFormat::Json => log_sink::Output::Stdout,
        LogFormat::Text => log_sink::Output::Stderr,
    };
    let (writer, guard) = log_sink::non_blocking(output);
    let make_writer = move || writer.clone();
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_writer(make_writer)
            .init(),
        LogFormat::Text => builder.with_writer(make_writer).with_ansi(ansi).init(),
    }
    Some(guard)
}

/// The error as the user should read it: a library setting named by its flag
/// (`max_len` → `--max-len`), a text too long with the flags that change it.
fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<slimformer::Error>() {
        Some(slimformer::Error::Setting {
            name,
            value,
            problem,
        }) => {
            let value = value.as_ref().map(|v| format!(" {v}")).unwrap_or_default();
            format!("{}{value}: {problem}", flag_of(name))
        }
        Some(too_long @ slimformer::Error::TooLong { .. }) => {
            format!("{too_long}; raise --max-len, or leave out --no-truncate")
        }
        _ => format!("{e:#}"),
    }
}

/// The command-line flag of a library setting.
fn flag_of(setting: &str) -> String {
    match setting {
        "dev" => "--dev FILE or --dev-split FRACTION".into(),
        "corpus" => "--corpus FILE".into(),
        "alpha_hard" => "--alpha-task/--alpha-mlm".into(),
        other => format!("--{}", other.replace('_', "-")),
    }
}
