//! `slimformer study`: the comparative study of the five families, end to end and
//! resumable stage by stage. From scratch with one compute budget — a tokenizer and a
//! small model per family pretrained on the same raw text with its own objectives
//! (DistilBERT distilled from that BERT), each fine-tuned on every dataset — and from a
//! real checkpoint (a fine-tuned teacher and its shrunk students); every model
//! measured by `compare`; a report beside the papers' published figures.
//!
//! Each stage leaves `OUT/stages/NAME.json`; a rerun skips the stages that have one
//! and resumes an interrupted training from its run folder.

use crate::compare::{measure_all, MeasureOptions, MeasureRunner};
use serde::{Deserialize, Serialize};
use slimformer::io::write_atomic;
use slimformer::models::Family;
use slimformer::{Error, Result};
use slimformer_train::data::Columns;
use slimformer_train::finetune::{self, FinetuneOptions};
use slimformer_train::pretrain::{self, ModelShape, PretrainOptions, TokenizerSource};
use slimformer_train::shrink::distill::{self, DistillData, DistillOptions, StudentSpec};
use slimformer_train::shrink::losses::DistillWeights;
use slimformer_train::trainer::TrainConfig;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    pub train: PathBuf,
    pub dev: PathBuf,
    pub test: PathBuf,
    #[serde(default = "text_col")]
    pub text_col: String,
    #[serde(default = "label_col")]
    pub label_col: String,
}

fn text_col() -> String {
    "text".into()
}
fn label_col() -> String {
    "label".into()
}

/// Real checkpoints compared on one test file (those missing are left out).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealConfig {
    pub test: PathBuf,
    pub models: Vec<PathBuf>,
}

/// The study's configuration (`--config study.toml`; every field has a default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudyConfig {
    pub corpus: Vec<PathBuf>,
    pub families: Vec<String>,
    pub size: String,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub pretrain_steps: usize,
    pub pretrain_batch: usize,
    pub pretrain_lr: f64,
    pub datasets: Vec<DatasetConfig>,
    pub finetune_epochs: usize,
    pub finetune_max_steps: Option<usize>,
    pub finetune_lr: f64,
    pub finetune_batch: usize,
    pub max_len: usize,
    pub real: Option<RealConfig>,
    pub compare_runs: usize,
    pub compare_shapes: Vec<(usize, usize)>,
    pub seed: u64,
}

impl Default for StudyConfig {
    fn default() -> Self {
        let data = PathBuf::from("assets/data");
        let dataset = |name: &str| DatasetConfig {
            name: name.into(),
            train: data.join(name).join("train.csv"),
            dev: data.join(name).join("dev.csv"),
            test: data.join(name).join("test.csv"),
            text_col: text_col(),
            label_col: label_col(),
        };
        Self {
            corpus: vec![
                data.join("raw/austen.txt"),
                data.join("raw/movie_dialog.txt"),
            ],
            families: Family::ALL
                .iter()
                .map(|f| f.model_type().to_string())
                .collect(),
            size: "tiny".into(),
            vocab_size: 8000,
            seq_len: 64,
            pretrain_steps: 300,
            pretrain_batch: 16,
            pretrain_lr: 5e-4,
            datasets: vec![dataset("rotten_tomatoes"), dataset("sms_spam")],
            finetune_epochs: 1,
            finetune_max_steps: None,
            // Small models from a short pretraining need a larger step than BERT-base's
            // 2e-5–5e-5: at 1e-4 every family stayed at the majority class on Rotten Tomatoes.
            finetune_lr: 5e-4,
            finetune_batch: 32,
            max_len: 64,
            real: Some(RealConfig {
                test: data.join("rotten_tomatoes/test.csv"),
                models: [
                    "runs/compare-rotten_tomatoes-seed42/slimformer",
                    "runs/shrink/distil3",
                    "runs/shrink/albert-e128-all-g3",
                    "runs/shrink/teacher-int8",
                    "runs/shrink/distil3-int8",
                ]
                .iter()
                .map(PathBuf::from)
                .collect(),
            }),
            compare_runs: 10,
            compare_shapes: vec![(1, 16), (1, 128), (32, 128)],
            seed: 42,
        }
    }
}

impl StudyConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        toml::from_str(&text).map_err(|e| Error::file(path, e.to_string().trim().to_string()))
    }

    fn families(&self) -> Result<Vec<Family>> {
        self.families
            .iter()
            .map(|f| {
                Family::from_model_type(f).ok_or_else(|| {
                    Error::Config(format!("unknown family {f:?} in the study config"))
                })
            })
            .collect()
    }
}

/// The measured record of one stage.
type StageRecord = serde_json::Value;

struct Stages {
    dir: PathBuf,
}

impl Stages {
    /// Runs `f` unless the stage has its record; returns the record.
    fn run(&self, name: &str, f: impl FnOnce() -> Result<StageRecord>) -> Result<StageRecord> {
        let path = self.dir.join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str(&text) {
                tracing::info!("stage {name}: done before, skipped");
                return Ok(v);
            }
        }
        tracing::info!("stage {name}: running");
        eprintln!("slimformer study: {name}");
        let record = f()?;
        write_atomic(
            &path,
            (serde_json::to_string_pretty(&record).expect("json") + "\n").as_bytes(),
        )?;
        Ok(record)
    }
}

fn objectives_of(family: Family) -> &'static str {
    match family {
        Family::Bert => "MLM (static masks) + next-sentence prediction",
        Family::Roberta => "MLM (dynamic masks), no NSP",
        Family::XLNet => "permutation LM, two-stream attention",
        Family::Albert => "MLM + sentence-order prediction; factorized embeddings, shared layers",
        Family::DistilBert => "distilled from the BERT above: soft targets + MLM + cosine",
    }
}

/// Runs the study into `out`, measuring each comparison's models with `runner`;
/// returns the path of `study.md`.
pub fn run(config: &StudyConfig, out: &Path, runner: &dyn MeasureRunner) -> Result<PathBuf> {
    let stages = Stages {
        dir: out.join("stages"),
    };
    std::fs::create_dir_all(&stages.dir).map_err(|e| Error::file(&stages.dir, e))?;
    write_atomic(
        &out.join("study_config.json"),
        (serde_json::to_string_pretty(config).expect("json") + "\n").as_bytes(),
    )?;
    let pretrained = pretrain_families(config, out, &stages)?;
    let (finetuned, mut comparisons) =
        finetune_and_compare(config, out, &stages, &pretrained, runner)?;
    if let Some(real) = compare_real(config, out, &stages, runner)? {
        comparisons.push(real);
    }
    let md = render(config, &pretrained, &finetuned, &comparisons);
    let path = out.join("study.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

/// The pretraining settings every family gets.
fn pretrain_config(config: &StudyConfig) -> TrainConfig {
    TrainConfig {
        max_steps: Some(config.pretrain_steps),
        lr: config.pretrain_lr,
        batch: config.pretrain_batch,
        seed: config.seed,
        log_every: 10,
        ..Default::default()
    }
}

/// Each family from scratch on the corpus (DistilBERT last: it distils the BERT),
/// in `Family::ALL` order.
fn pretrain_families(
    config: &StudyConfig,
    out: &Path,
    stages: &Stages,
) -> Result<Vec<(Family, PathBuf, StageRecord)>> {
    let mut order = config.families()?;
    order.sort_by_key(|f| *f == Family::DistilBert);
    let mut pretrained = Vec::new();
    for family in order {
        let dir = out.join("pretrain").join(family.model_type());
        let record = stages.run(&format!("pretrain-{family}"), || {
            pretrain_one(config, out, family, &dir)
        })?;
        pretrained.push((family, dir, record));
    }
    pretrained.sort_by_key(|(f, _, _)| Family::ALL.iter().position(|a| a == f));
    Ok(pretrained)
}

/// One family's pretraining (DistilBERT: general distillation of the study's
/// BERT into half its layers), and its stage record.
fn pretrain_one(
    config: &StudyConfig,
    out: &Path,
    family: Family,
    dir: &Path,
) -> Result<StageRecord> {
    let size = pretrain::size(&config.size)?;
    let dir = dir.to_path_buf();
    let (outcome, params) = if family == Family::DistilBert {
        let teacher = out.join("pretrain/bert");
        if !teacher.join("config.json").exists() {
            return Err(Error::Config(
                "DistilBERT is distilled from the study's BERT: keep \"bert\" in families".into(),
            ));
        }
        let layers = slimformer_train::shrink::student::layer_count(
            &slimformer::checkpoint::Checkpoint::open(&teacher)?,
        )?;
        let report = distill::distill(&DistillOptions {
            teacher,
            student: StudentSpec::Layers((layers / 2).max(1)),
            data: DistillData::General {
                corpus: config.corpus.clone(),
            },
            weights: DistillWeights::default(),
            max_len: Some(config.seq_len),
            train_config: pretrain_config(config),
            out: dir.clone(),
            overwrite: false,
            progress: false,
            cache_dir: None,
            augment: 0,
        })?;
        let params =
            slimformer::params::count_parameters(&slimformer::checkpoint::Checkpoint::open(&dir)?)
                .total;
        (serde_json::to_value(&report.outcome).expect("json"), params)
    } else {
        let report = pretrain::pretrain(&PretrainOptions {
            family,
            corpus: config.corpus.clone(),
            tokenizer: TokenizerSource::Train {
                vocab_size: config.vocab_size,
            },
            shape: ModelShape::Size(size),
            seq_len: config.seq_len,
            whole_word_mask: false,
            dev_fraction: 0.02,
            train_config: pretrain_config(config),
            out: dir.clone(),
            overwrite: false,
            progress: false,
        })?;
        (
            serde_json::to_value(&report.outcome).expect("json"),
            report.parameters,
        )
    };
    let examples = config.pretrain_steps * config.pretrain_batch;
    let rate = outcome["examples_per_s"].as_f64().unwrap_or(0.0);
    Ok(serde_json::json!({
        "family": family,
        "objectives": objectives_of(family),
        "parameters_with_heads": params,
        "steps": config.pretrain_steps,
        "examples": examples,
        "tokens_seen": examples * config.seq_len,
        "examples_per_s": rate,
        "train_minutes": if rate > 0.0 { examples as f64 / rate / 60.0 } else { 0.0 },
        "dev": outcome["best"]["values"],
    }))
}

type Finetuned = Vec<(String, Family, StageRecord)>;
type Comparisons = Vec<(String, PathBuf)>;

/// Each pretrained model fine-tuned on every dataset, then one comparison of
/// them per dataset.
fn finetune_and_compare(
    config: &StudyConfig,
    out: &Path,
    stages: &Stages,
    pretrained: &[(Family, PathBuf, StageRecord)],
    runner: &dyn MeasureRunner,
) -> Result<(Finetuned, Comparisons)> {
    let mut finetuned: Finetuned = Vec::new();
    let mut comparisons = Vec::new();
    // The small models know positions up to the pretraining length only: time them
    // at lengths they can take.
    let mut scratch_shapes: Vec<(usize, usize)> = Vec::new();
    for &(b, l) in &config.compare_shapes {
        let shape = (b, l.min(config.seq_len));
        if !scratch_shapes.contains(&shape) {
            scratch_shapes.push(shape);
        }
    }
    for ds in &config.datasets {
        let columns = Columns {
            text: ds.text_col.clone(),
            text_pair: None,
            label: ds.label_col.clone(),
        };
        let mut dirs = Vec::new();
        for (family, model_dir, _) in pretrained {
            let dir = out
                .join("finetune")
                .join(&ds.name)
                .join(family.model_type());
            let record = stages.run(&format!("finetune-{}-{family}", ds.name), || {
                let report = finetune::finetune(&FinetuneOptions {
                    model_dir: model_dir.clone(),
                    train: ds.train.clone(),
                    dev: Some(ds.dev.clone()),
                    dev_split: None,
                    columns: columns.clone(),
                    max_len: Some(config.max_len),
                    train_config: TrainConfig {
                        epochs: config.finetune_epochs,
                        max_steps: config.finetune_max_steps,
                        lr: config.finetune_lr,
                        batch: config.finetune_batch,
                        seed: config.seed,
                        ..Default::default()
                    },
                    out: dir.clone(),
                    overwrite: false,
                    progress: false,
                    test: Some(ds.test.clone()),
                    problem_type: None,
                })?;
                Ok(serde_json::json!({
                    "dataset": ds.name,
                    "family": family,
                    "test": report.test.map(|m| m.values),
                    "examples_per_s": report.outcome.examples_per_s,
                }))
            })?;
            finetuned.push((ds.name.clone(), *family, record));
            dirs.push(dir);
        }
        let report_dir = out.join("compare").join(&ds.name);
        stages.run(&format!("compare-{}", ds.name), || {
            compare_into(
                runner,
                &dirs,
                &ds.test,
                columns.clone(),
                (config, &scratch_shapes),
                &report_dir,
            )
        })?;
        comparisons.push((ds.name.clone(), report_dir));
    }
    Ok((finetuned, comparisons))
}

/// The comparison of the real checkpoints the config lists (those present).
fn compare_real(
    config: &StudyConfig,
    out: &Path,
    stages: &Stages,
    runner: &dyn MeasureRunner,
) -> Result<Option<(String, PathBuf)>> {
    let Some(real) = &config.real else {
        return Ok(None);
    };
    let present: Vec<PathBuf> = real
        .models
        .iter()
        .filter(|m| m.join("config.json").exists())
        .cloned()
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let report_dir = out.join("compare").join("real");
    let name = format!("compare-real-{}", present.len());
    stages.run(&name, || {
        compare_into(
            runner,
            &present,
            &real.test,
            Columns::default(),
            (config, &config.compare_shapes),
            &report_dir,
        )
    })?;
    Ok(Some(("real checkpoints".into(), report_dir)))
}

fn compare_into(
    runner: &dyn MeasureRunner,
    models: &[PathBuf],
    eval: &Path,
    columns: Columns,
    (config, shapes): (&StudyConfig, &[(usize, usize)]),
    dir: &Path,
) -> Result<StageRecord> {
    let outcomes = measure_all(
        runner,
        models,
        &MeasureOptions {
            eval: eval.to_path_buf(),
            columns,
            shapes: shapes.to_vec(),
            warmup: 2,
            runs: config.compare_runs,
        },
        |_, m| eprintln!("slimformer study: measuring {}", m.display()),
    );
    crate::report::write_report(dir, &outcomes, eval)?;
    Ok(serde_json::json!({"report": dir, "models": outcomes}))
}

/// The papers' figures, quoted (not measured here).
const PAPERS: &str = "\
| family | parameters (base) | training data | objectives | published result |
|---|---|---|---|---|
| BERT (Devlin et al. 2019) | 110M | BooksCorpus + English Wikipedia, 16 GB | MLM + NSP | GLUE dev average 79.5 (as reported by the DistilBERT paper) |
| RoBERTa (Liu et al. 2019) | 125M | 160 GB (adds CC-News, OpenWebText, Stories) | dynamic MLM, no NSP, larger batches | beats BERT on GLUE, SQuAD, RACE at equal size |
| XLNet (Yang et al. 2019) | 110M (base) | 126 GB for the large model (adds Giga5, ClueWeb, Common Crawl) | permutation LM, two-stream attention | beats BERT on 20 tasks (large) |
| ALBERT (Lan et al. 2020) | 12M | as BERT, 16 GB | MLM + SOP; factorized embeddings, shared layers | base: average 80.1 vs BERT-base 82.3 on its benchmark mix, 5.6× vs 4.7× BERT-base speed-up over BERT-large |
| DistilBERT (Sanh et al. 2019) | 66M | as BERT | distillation: soft targets + MLM + cosine | GLUE 77.0 = 97% of BERT-base, 40% smaller, 60% faster |
";

fn render(
    config: &StudyConfig,
    pretrained: &[(Family, PathBuf, StageRecord)],
    finetuned: &[(String, Family, StageRecord)],
    comparisons: &[(String, PathBuf)],
) -> String {
    let mut md = String::from("# The comparative study\n\n");
    md +=
        &format!(
        "From scratch: a `{}` model per family ({} steps × {} sequences × {} tokens of the same \
         raw text: {} tokens seen each; vocabulary {}), each fine-tuned on {} ({} epoch(s), \
         lr {}). Produced by `slimformer study`.\n\n",
        config.size,
        config.pretrain_steps,
        config.pretrain_batch,
        config.seq_len,
        config.pretrain_steps * config.pretrain_batch * config.seq_len,
        config.vocab_size,
        config.datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(" and "),
        config.finetune_epochs,
        config.finetune_lr,
    );
    md += "## From scratch, same budget (measured)\n\n| family | objectives | parameters | pretraining ex/s | pretraining minutes | pretraining dev metrics |";
    for ds in &config.datasets {
        md += &format!(" {} test acc |", ds.name);
    }
    md += "\n|---|---|---|---|---|---|";
    for _ in &config.datasets {
        md += "---|";
    }
    md += "\n";
    for (family, _, r) in pretrained {
        let dev = r["dev"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {:.3}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        md += &format!(
            "| {family} | {} | {} | {:.1} | {:.1} | {dev} |",
            r["objectives"].as_str().unwrap_or(""),
            r["parameters_with_heads"],
            r["examples_per_s"].as_f64().unwrap_or(0.0),
            r["train_minutes"].as_f64().unwrap_or(0.0),
        );
        for ds in &config.datasets {
            let acc = finetuned
                .iter()
                .find(|(d, f, _)| d == &ds.name && f == family)
                .and_then(|(_, _, r)| r["test"]["accuracy"].as_f64());
            md += &format!(" {} |", acc.map_or("-".into(), |a| format!("{a:.4}")));
        }
        md += "\n";
    }
    md += "\n";
    for (name, dir) in comparisons {
        md += &format!("## Compared: {name}\n\n");
        if let Ok(report) = std::fs::read_to_string(dir.join("report.md")) {
            let body: String = report
                .lines()
                .skip(2)
                .map(|l| {
                    // Charts are beside the report: point at them from here.
                    if let Some(rest) = l.strip_prefix("![") {
                        let (alt, file) = rest.split_once("](").unwrap_or((rest, ""));
                        format!("![{alt}]({}/{}", dir.display(), file)
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            md += &body;
            md += "\n\n";
        }
    }
    md += "## The papers' figures (quoted, not measured here)\n\n";
    md += PAPERS;
    md
}
