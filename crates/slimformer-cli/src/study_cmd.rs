//! `slimformer study`: the comparative study, resumable stage by stage.

use slimformer_study::study::{self, StudyConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct StudyArgs {
    /// A study.toml (default: the full study on the fetched data, about two hours here).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The study folder: stage records, run folders, reports, study.md.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn study(args: StudyArgs, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => StudyConfig::load(path)?,
        None => StudyConfig::default(),
    };
    let runner = crate::compare_cmd::ChildRunner {
        exe: std::env::current_exe()?,
        threads,
    };
    let report = study::run(&config, &args.out, &runner)?;
    println!("{}", serde_json::json!({"out": args.out, "report": report}));
    Ok(ExitCode::SUCCESS)
}
