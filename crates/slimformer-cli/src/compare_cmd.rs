//! `slimformer compare`: several models measured side by side, one child process
//! each (so each peak memory is its own), into a report folder.

use crate::train_cmd::ColumnFlags;
use slimformer_study::compare::{measure, measure_all, MeasureOptions, MeasureRunner, Measurement};
use slimformer_study::report::write_report;
use std::path::{Path, PathBuf};
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
    let outcomes = measure_all(&runner, &args.models, &opts, |i, model| {
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

/// Measures each model in a child process (`slimformer compare-one`), so that the
/// peak memory it reports is that model's alone.
pub struct ChildRunner {
    pub exe: PathBuf,
    pub threads: Option<usize>,
}

impl MeasureRunner for ChildRunner {
    fn measure(&self, model: &Path, opts: &MeasureOptions) -> Result<Measurement, String> {
        let shapes: Vec<String> = opts
            .shapes
            .iter()
            .map(|(b, l)| format!("{b}x{l}"))
            .collect();
        let mut cmd = std::process::Command::new(&self.exe);
        // The child measures in this process's precision.
        cmd.args(["--precision", &slimformer::layers::precision().to_string()]);
        if let Some(t) = self.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        cmd.arg("compare-one")
            .arg(model)
            .arg("--eval")
            .arg(&opts.eval)
            .args(["--text-col", &opts.columns.text])
            .args(["--label-col", &opts.columns.label])
            .args(["--runs", &opts.runs.to_string()])
            .args(["--warmup", &opts.warmup.to_string()])
            .args(["--shapes", &shapes.join(",")]);
        if let Some(pair) = &opts.columns.text_pair {
            cmd.args(["--text-pair-col", pair]);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        // The child prints its measurement as the last line of stdout, and its
        // error as `slimformer: error: …` on stderr.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Measurement>(l).ok());
        match (out.status.success(), parsed) {
            (true, Some(m)) => Ok(m),
            _ => Err(String::from_utf8_lossy(&out.stderr)
                .lines()
                .find_map(|l| l.strip_prefix("slimformer: error: "))
                .unwrap_or("the measurement failed")
                .to_string()),
        }
    }
}
