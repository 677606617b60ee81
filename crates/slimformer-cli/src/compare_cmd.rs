//! `slimformer compare`: several models measured side by side, one child process
//! each (so each peak memory is its own), into a report folder.

use crate::train_cmd::ColumnFlags;
use slimformer::compare::{measure, ChildRunner, MeasureOptions};
use slimformer::report::write_report;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Model folders (any family, fp32 or quantized).
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// Labelled eval data (.csv, .tsv, .jsonl): throughput on its texts, and accuracy
    /// for classifiers of its labels.
    #[arg(long)]
    pub eval: PathBuf,
    #[command(flatten)]
    pub columns: ColumnFlags,
    /// The report folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Timed runs per shape.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, value_delimiter = ',', value_parser = crate::tasks::parse_shape, default_value = "1x16,1x128,32x128")]
    pub shapes: Vec<(usize, usize)>,
}

/// The child: measures one model and prints its JSON.
#[derive(clap::Args)]
pub struct CompareOneArgs {
    pub model: PathBuf,
    #[arg(long)]
    pub eval: PathBuf,
    #[command(flatten)]
    pub columns: ColumnFlags,
    #[arg(long)]
    pub runs: usize,
    #[arg(long)]
    pub warmup: usize,
    #[arg(long, value_delimiter = ',', value_parser = crate::tasks::parse_shape)]
    pub shapes: Vec<(usize, usize)>,
}

pub fn compare_one(args: CompareOneArgs) -> anyhow::Result<ExitCode> {
    let m = measure(
        &args.model,
        &MeasureOptions {
            eval: args.eval,
            columns: args.columns.into_columns(),
            shapes: args.shapes,
            warmup: args.warmup,
            runs: args.runs,
        },
    )?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(ExitCode::SUCCESS)
}

pub fn compare(args: CompareArgs, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    if !args.eval.is_file() {
        anyhow::bail!("{}: no such eval file", args.eval.display());
    }
    let runner = ChildRunner {
        exe: std::env::current_exe()?,
        threads,
    };
    let opts = MeasureOptions {
        eval: args.eval.clone(),
        columns: args.columns.into_columns(),
        shapes: args.shapes,
        warmup: args.warmup,
        runs: args.runs,
    };
    let bar = indicatif::ProgressBar::new(args.models.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let outcomes = runner.run(&args.models, &opts, |i, model| {
        bar.set_position(i as u64);
        bar.set_message(model.display().to_string());
    });
    bar.finish_and_clear();
    for o in &outcomes {
        if let Some(e) = &o.error {
            eprintln!("slimformer: {}: {e}", o.path.display());
        }
    }
    write_report(&args.out, &outcomes, &args.eval)?;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    println!(
        "{}",
        serde_json::json!({"out": args.out, "models": outcomes.len(), "failed": failed})
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
