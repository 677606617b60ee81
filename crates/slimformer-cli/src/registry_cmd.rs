//! `slimformer registry` and `slimformer retrain`: versions, promotion, rollback, and
//! scheduled retraining with a quality gate.

use slimformer_registry::Registry;
use slimformer_retrain::{self as retrain, RetrainConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum RegistryCommand {
    /// Create a registry with MODEL as its first production version.
    Init {
        dir: PathBuf,
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "v1")]
        version: String,
    },
    /// Copy a model folder in as a new candidate version (default: the next vN).
    Add {
        dir: PathBuf,
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        version: Option<String>,
    },
    /// Every version with its status and holdout scores.
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One version's record.
    Show { dir: PathBuf, version: String },
    /// Make a version production (atomically; the server follows).
    Promote { dir: PathBuf, version: String },
    /// Back to the previous production version.
    Rollback { dir: PathBuf },
    /// The retraining runs and their outcomes.
    History {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct RetrainArgs {
    /// retrain.toml: registry, inbox, holdout, schedule, training settings, tolerance.
    #[arg(long)]
    pub config: PathBuf,
    /// One round now, then exit.
    #[arg(long)]
    pub once: bool,
}

fn score(v: &serde_json::Value, who: &str) -> String {
    v[who]["accuracy"]
        .as_f64()
        .map_or("-".into(), |a| format!("{a:.4}"))
}

pub fn registry(cmd: RegistryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RegistryCommand::Init {
            dir,
            model,
            version,
        } => {
            Registry::init(&dir, &model, &version)?;
            println!(
                "{}",
                serde_json::json!({"registry": dir, "production": version})
            );
        }
        RegistryCommand::Add {
            dir,
            model,
            version,
        } => {
            let registry = Registry::open(&dir)?;
            let version = match version {
                Some(v) => v,
                None => registry.next_version()?,
            };
            registry.import(&model, &version)?;
            println!(
                "{}",
                serde_json::json!({"registry": dir, "added": version, "status": "candidate"})
            );
        }
        RegistryCommand::List { dir, json } => {
            let rows = Registry::open(&dir)?.list()?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!(
                    "{:<10} {:<11} {:<8} {:>10} {:>10}  note",
                    "version", "status", "parent", "candidate", "production"
                );
                for r in rows {
                    println!(
                        "{:<10} {:<11} {:<8} {:>10} {:>10}  {}",
                        r.name,
                        r.status.as_str(),
                        r.parent.unwrap_or_default(),
                        score(&r.holdout, "candidate"),
                        score(&r.holdout, "production"),
                        r.note
                    );
                }
            }
        }
        RegistryCommand::Show { dir, version } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&Registry::open(&dir)?.show(&version)?)?
            );
        }
        RegistryCommand::Promote { dir, version } => {
            Registry::open(&dir)?.promote(&version, "promoted by hand")?;
            println!("{}", serde_json::json!({"production": version}));
        }
        RegistryCommand::Rollback { dir } => {
            let v = Registry::open(&dir)?.rollback()?;
            println!("{}", serde_json::json!({"production": v}));
        }
        RegistryCommand::History { dir, json } => {
            let runs = Registry::open(&dir)?.runs()?;
            if json {
                println!("{}", serde_json::to_string(&runs)?);
            } else {
                println!(
                    "{:>4} {:<9} {:<10} {:>9} {:>10}  reason",
                    "run", "outcome", "candidate", "cand acc", "prod acc"
                );
                for r in runs {
                    println!(
                        "{:>4} {:<9} {:<10} {:>9} {:>10}  {}",
                        r.id,
                        r.outcome,
                        r.candidate.unwrap_or_default(),
                        r.candidate_score.map_or("-".into(), |v| format!("{v:.4}")),
                        r.production_score.map_or("-".into(), |v| format!("{v:.4}")),
                        r.reason
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn retrain(args: RetrainArgs) -> anyhow::Result<ExitCode> {
    let config = RetrainConfig::load(&args.config)?;
    retrain::run_scheduled(&config, args.once)?;
    Ok(ExitCode::SUCCESS)
}
