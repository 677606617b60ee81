//! The training loop shared by fine-tuning and pre-training: deterministic
//! shuffling, AdamW with warm-up/decay, gradient accumulation and clipping,
//! periodic evaluation, the best checkpoint, `metrics.jsonl`, and resumable state.
//!
//! # The run folder
//!
//! ```text
//! OUT/
//!   config.json, model.safetensors, tokenizer*.json   the best checkpoint (TrainTask::save)
//!   metrics.jsonl        one JSON object per log line and per evaluation
//!   train_config.json    the exact configuration of the run
//!   resume/              model.safetensors (VarMap, canonical names), optimizer.safetensors
//!                        (AdamW moments), state.json (step, best metric, fingerprint)
//! ```
//!
//! Every file is written atomically, and `resume/` is built in a temporary folder
//! beside it and renamed into place, so a run killed at any moment (even SIGKILL)
//! leaves the previous complete state. Starting again with the same `OUT` resumes
//! from `resume/` when the configuration matches (the step budget, evaluation
//! cadence, patience and logging may change), and refuses otherwise unless
//! `overwrite` is set.
//!
//! # Determinism
//!
//! The example order of epoch `e` is a permutation drawn from the seed and `e`; the
//! dropout of micro-batch `k` (counted over the whole run) is seeded from the seed and
//! `k`. So a run repeats exactly, and a resumed run continues exactly as it would have.

use super::optim::{linear_schedule, AdamW, AdamWConfig};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use slimformer::rng::{Rng, TrainRng};
use slimformer::save::{save_tensors, varmap_tensors, write_atomic};
use slimformer::{Error, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything that shapes a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training examples (ignored when `max_steps` is set).
    pub epochs: usize,
    /// Optimizer steps in all; overrides `epochs`.
    pub max_steps: Option<usize>,
    /// Peak learning rate.
    pub lr: f64,
    /// Examples per micro-batch (per forward/backward pass).
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Fraction of the steps spent warming the learning rate up from 0 (then it
    /// decays linearly to 0).
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay (not on biases and normalization weights).
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm (0: no clipping).
    pub clip: f64,
    pub seed: u64,
    /// Evaluate every this many optimizer steps (default: once per epoch), and always
    /// at the end.
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations without improvement of the primary metric.
    pub patience: Option<usize>,
    /// Write a training line to `metrics.jsonl` every this many steps.
    pub log_every: usize,
    /// Which evaluation's checkpoint is kept (and drives `patience`).
    #[serde(default)]
    pub select: Selection,
}

/// Which evaluation the run keeps as its best checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The task's own primary metric (accuracy for one label a text, micro-F1 for
    /// several, the squared error of a regression, ...).
    #[default]
    Primary,
    /// The best value of this metric of the task's: the lowest of a loss or an error
    /// (`loss`, `mse`, `mae`), the highest of any other.
    Metric(String),
    /// The last evaluation, whatever its metrics.
    Last,
}

impl Selection {
    /// `last`, `primary`, or a metric's name.
    pub fn parse(text: &str) -> Selection {
        match text {
            "last" => Selection::Last,
            "primary" => Selection::Primary,
            metric => Selection::Metric(metric.to_string()),
        }
    }

    /// The evaluation with its primary metric set to the selected one; an error when
    /// the task has no such metric.
    fn apply(&self, mut metrics: Metrics) -> Result<Metrics> {
        if let Selection::Metric(name) = self {
            if !metrics.values.contains_key(name) {
                let names: Vec<&str> = metrics.values.keys().map(String::as_str).collect();
                return Err(Error::bad_value(
                    "select",
                    name,
                    format!(
                        "not a metric of this task (its metrics: {}; or last)",
                        names.join(", ")
                    ),
                ));
            }
            metrics.higher_is_better = !matches!(name.as_str(), "loss" | "mse" | "mae");
            metrics.primary = name.clone();
        }
        Ok(metrics)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: None,
            lr: 5e-5,
            batch: 32,
            grad_accum: 1,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            clip: 1.0,
            seed: 42,
            eval_every: None,
            patience: None,
            log_every: 10,
            select: Selection::Primary,
        }
    }
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Metric name → value, e.g. `accuracy`, `macro_f1`, `mcc`, `loss`.
    pub values: BTreeMap<String, f64>,
    /// The metric that picks the best checkpoint (a key of `values`).
    pub primary: String,
    /// Whether larger values of `primary` are better (false for a loss).
    pub higher_is_better: bool,
}

impl Metrics {
    pub fn primary_value(&self) -> f64 {
        self.values.get(&self.primary).copied().unwrap_or(f64::NAN)
    }

    /// Whether these metrics beat `other` on the primary metric.
    pub fn better_than(&self, other: &Metrics) -> bool {
        let (a, b) = (self.primary_value(), other.primary_value());
        if b.is_nan() {
            return !a.is_nan();
        }
        if self.higher_is_better {
            a > b
        } else {
            a < b
        }
    }
}

/// A training objective the [`train`] loop drives. Implement it for fine-tuning,
/// masked-LM pre-training, or anything else with a loss.
///
/// The task owns the model and its data; the loop owns the order, the optimizer, and
/// the run folder. The model's parameters are the variables of the `VarMap` given to
/// [`train`] (from `Model::load_trainable`, plus any head the task created in it before
/// the call): every float variable of that map is optimized; variables that get no
/// gradient are left unchanged.
///
/// - `loss`: the mean loss of a micro-batch of training examples, a scalar tensor
///   connected to the VarMap's variables (the loop calls `backward` on it). Pass
///   `Some(rng)` as the encoder's and heads' `train` argument (dropout on) and draw any
///   other randomness of the step (e.g. which tokens to mask) from `rng` too, never
///   from candle's generator, so that the run repeats exactly.
/// - `evaluate`: metrics on held-out data with dropout off (`train: None`); the
///   `primary` metric picks the best checkpoint and drives early stopping.
/// - `save`: writes the model as a Hugging Face checkpoint folder into `dir` (which
///   exists); see [`super::save`] for the helpers. Called for each new best.
pub trait TrainTask {
    type Example;
    fn loss(&self, batch: &[&Self::Example], rng: &TrainRng) -> Result<Tensor>;
    fn evaluate(&self) -> Result<Metrics>;
    fn save(&self, dir: &Path) -> Result<()>;
}

/// Where and how a run is recorded.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder.
    pub out: PathBuf,
    /// Start over even if `out` holds another run.
    pub overwrite: bool,
    /// What the task is (model, data files, columns...): recorded in
    /// `train_config.json` and part of the configuration a resume must match.
    pub task_info: serde_json::Value,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Entries of `out` the caller made before training (e.g. a student's starting
    /// checkpoint): they do not make the folder count as used, and survive `overwrite`.
    pub keep: Vec<String>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// Optimizer steps done in all (including before a resume).
    pub steps: usize,
    pub total_steps: usize,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    pub stopped_early: bool,
    /// The best evaluation (whose checkpoint is at the top of the run folder).
    pub best: Option<Metrics>,
    pub best_step: Option<usize>,
    /// The last evaluation.
    pub last: Option<Metrics>,
    /// Training throughput of this process (evaluation excluded).
    pub examples_per_s: f64,
}

pub const RESUME_DIR: &str = "resume";
const RESUME_OLD: &str = ".resume.old";
const TMP_MARK: &str = ".tmp-";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CONFIG_FILE: &str = "train_config.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeState {
    step: usize,
    epoch: f64,
    best: Option<Metrics>,
    best_step: Option<usize>,
    evals_without_improvement: usize,
    /// The configuration a resume must match.
    fingerprint: serde_json::Value,
    /// How the randomness continues (informational: it is derived from the step).
    rng: String,
}

/// The parts of a run that a resume must keep.
fn fingerprint(config: &TrainConfig, task_info: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "lr": config.lr,
        "batch": config.batch,
        "grad_accum": config.grad_accum,
        "warmup_ratio": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "clip": config.clip,
        "seed": config.seed,
        "task": task_info,
    })
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng::new(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(32));
    r.next_u64()
}

/// The example order of one epoch.
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(mix(seed, 1, epoch as u64)).shuffle(&mut order);
    order
}

fn describe_differences(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return String::new();
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            format!(
                "{k}: {} then, {} now",
                o.get(k).unwrap_or(&serde_json::Value::Null),
                n.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Removes what an interrupted write left (temporary files and folders) and restores
/// a resume folder caught between its two renames.
fn clean_leftovers(out: &Path) -> Result<()> {
    let resume = out.join(RESUME_DIR);
    let old = out.join(RESUME_OLD);
    if !resume.exists() && old.exists() {
        std::fs::rename(&old, &resume).map_err(|e| Error::file(&old, e))?;
    }
    for entry in std::fs::read_dir(out).map_err(|e| Error::file(out, e))? {
        let entry = entry.map_err(|e| Error::file(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.contains(TMP_MARK) || name == RESUME_OLD {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
    Ok(())
}

fn empty_dir(out: &Path, keep: &[String]) -> Result<()> {
    for entry in std::fs::read_dir(out).map_err(|e| Error::file(out, e))? {
        let path = entry.map_err(|e| Error::file(out, e))?.path();
        if is_kept(&path, keep) {
            continue;
        }
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| Error::file(&path, e))?;
    }
    Ok(())
}

fn is_kept(path: &Path, keep: &[String]) -> bool {
    path.file_name()
        .is_some_and(|n| keep.iter().any(|k| n.to_string_lossy() == *k))
}

/// Decides whether the run folder is resumed, started, or refused.
fn prepare_run(opts: &RunOptions, fp: &serde_json::Value) -> Result<Option<ResumeState>> {
    let out = &opts.out;
    if !out.exists() {
        std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
        return Ok(None);
    }
    if !out.is_dir() {
        return Err(Error::file(out, "exists and is not a folder"));
    }
    clean_leftovers(out)?;
    let state_path = out.join(RESUME_DIR).join("state.json");
    let is_empty = std::fs::read_dir(out)
        .map_err(|e| Error::file(out, e))?
        .filter_map(|e| e.ok())
        .all(|e| is_kept(&e.path(), &opts.keep));
    if is_empty {
        return Ok(None);
    }
    if opts.overwrite {
        empty_dir(out, &opts.keep)?;
        return Ok(None);
    }
    if !state_path.exists() {
        return Err(Error::setting(
            "overwrite",
            format!(
                "{} is not empty and holds no resumable run (no resume/state.json): \
                 allow replacing it, or choose another output folder",
                out.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::file(&state_path, e))?;
    let state: ResumeState = serde_json::from_str(&text)
        .map_err(|e| Error::file(&state_path, format!("invalid resume state: {e}")))?;
    if state.fingerprint != *fp {
        return Err(Error::setting(
            "overwrite",
            format!(
                "{} holds a run with a different configuration ({}): allow replacing it \
                 to start over, or choose another output folder",
                out.display(),
                describe_differences(&state.fingerprint, fp)
            ),
        ));
    }
    Ok(Some(state))
}

/// Sets every variable of `varmap` from a safetensors file (all must be there).
pub fn load_vars(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::file(path, slimformer::error::first_line(&e.to_string())))?;
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::file(path, format!("no tensor {name}")))?;
        var.set(&t.to_dtype(var.dtype())?).map_err(|e| {
            Error::file(
                path,
                format!("{name}: {}", slimformer::error::first_line(&e.to_string())),
            )
        })?;
    }
    Ok(())
}

fn write_resume(out: &Path, varmap: &VarMap, opt: &AdamW, state: &ResumeState) -> Result<()> {
    let tmp = out.join(format!(".resume{TMP_MARK}{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    save_tensors(&varmap_tensors(varmap), &tmp.join("model.safetensors"))?;
    save_tensors(&opt.state_tensors()?, &tmp.join("optimizer.safetensors"))?;
    let json = serde_json::to_string_pretty(state).expect("json") + "\n";
    write_atomic(&tmp.join("state.json"), json.as_bytes())?;
    let resume = out.join(RESUME_DIR);
    let old = out.join(RESUME_OLD);
    if resume.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::file(&old, e))?;
        }
        std::fs::rename(&resume, &old).map_err(|e| Error::file(&resume, e))?;
    }
    std::fs::rename(&tmp, &resume).map_err(|e| Error::file(&resume, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::file(&old, e))?;
    }
    Ok(())
}

/// Saves the best checkpoint: into a temporary folder, then each file renamed to the
/// top of the run folder.
fn save_best<T: TrainTask>(task: &T, out: &Path) -> Result<()> {
    let tmp = out.join(format!(".best{TMP_MARK}{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    task.save(&tmp)?;
    move_files_into(&tmp, out)
}

/// Moves every file under `from` to the same place under `to`, one rename per file
/// (a folder cannot be renamed over a non-empty one, such as the previous best
/// checkpoint's `1_Pooling/`), then removes `from`.
fn move_files_into(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::file(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::file(from, e))? {
        let entry = entry.map_err(|e| Error::file(from, e))?;
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            move_files_into(&entry.path(), &dest)?;
        } else {
            std::fs::rename(entry.path(), &dest).map_err(|e| Error::file(&dest, e))?;
        }
    }
    std::fs::remove_dir(from).map_err(|e| Error::file(from, e))
}

/// Keeps the lines of `metrics.jsonl` up to `step` (a resumed run rewrites the rest).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

struct MetricsLog(std::fs::File);

impl MetricsLog {
    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.0, "{value}")?;
        self.0.flush()?;
        Ok(())
    }
}

fn validate(config: &TrainConfig, n: usize) -> Result<()> {
    let bad = |m: &str| Err(Error::Input(m.to_string()));
    if n == 0 {
        return bad("no training examples");
    }
    if config.batch == 0 || config.grad_accum == 0 {
        return bad("the batch size and gradient accumulation must be at least 1");
    }
    if !(config.lr > 0.0 && config.lr.is_finite()) {
        return bad("the learning rate must be a positive number");
    }
    if !(0.0..1.0).contains(&config.warmup_ratio) {
        return bad("the warm-up ratio must be in [0, 1)");
    }
    if config.max_steps.is_none() && config.epochs == 0 {
        return bad("epochs must be at least 1");
    }
    if config.eval_every == Some(0) || config.log_every == 0 {
        return Err(Error::setting(
            "eval_every",
            "the evaluation and log intervals must be at least 1",
        ));
    }
    Ok(())
}

/// Runs training to the end of the step budget (or early stopping), resuming from
/// `opts.out/resume` when it holds a matching run.
pub fn train<T: TrainTask + Sync>(
    task: &T,
    examples: &[T::Example],
    varmap: &VarMap,
    config: &TrainConfig,
    opts: &RunOptions,
) -> Result<TrainOutcome>
where
    T::Example: Sync,
{
    slimformer::layers::on_pool(|| train_on_pool(task, examples, varmap, config, opts))
}

fn train_on_pool<T: TrainTask>(
    task: &T,
    examples: &[T::Example],
    varmap: &VarMap,
    config: &TrainConfig,
    opts: &RunOptions,
) -> Result<TrainOutcome> {
    let n = examples.len();
    validate(config, n)?;
    let fp = fingerprint(config, &opts.task_info);
    let resumed = prepare_run(opts, &fp)?;
    let out = &opts.out;
    let plan = Plan::new(config, n);
    let mut opt = AdamW::new(
        varmap,
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..Default::default()
        },
    )?;
    let mut progress = match &resumed {
        Some(state) => restore(out, varmap, &mut opt, state)?,
        None => Progress::default(),
    };
    let resumed_from = resumed.as_ref().map(|s| s.step);
    write_run_config(out, config, opts, n, &plan)?;
    let mut log = MetricsLog(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join(METRICS_FILE))
            .map_err(|e| Error::file(out.join(METRICS_FILE), e))?,
    );

    let bar = progress_bar(opts.progress, plan.total as u64, progress.step as u64);
    let mut train_secs = 0f64;
    let mut examples_done = 0usize;
    let (mut window_loss, mut window_n, mut window_start) = (0f64, 0usize, Instant::now());
    let mut order: Option<(usize, Vec<usize>)> = None;
    let mut last: Option<Metrics> = None;
    let mut stopped_early = false;

    while progress.step < plan.total {
        let t0 = Instant::now();
        let step = progress.step;
        let epoch = step / plan.steps_per_epoch;
        if order.as_ref().map(|o| o.0) != Some(epoch) {
            order = Some((epoch, epoch_order(config.seed, epoch, n)));
        }
        let perm = &order.as_ref().expect("order set").1;
        let (step_loss, step_examples) =
            one_step(task, examples, perm, config, &plan, step, &mut opt)?;
        let lr = linear_schedule(config.lr, step, plan.warmup, plan.total);
        progress.step += 1;
        let step = progress.step;
        examples_done += step_examples;
        train_secs += t0.elapsed().as_secs_f64();
        window_loss += step_loss;
        window_n += step_examples;
        let epoch_f = step as f64 / plan.steps_per_epoch as f64;
        let rate = examples_done as f64 / train_secs.max(1e-9);
        bar.set_position(step as u64);
        bar.set_message(format!(
            "loss {:.4} · {:.0} ex/s",
            step_loss / step_examples as f64,
            rate
        ));

        if step.is_multiple_of(config.log_every) || step == plan.total {
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            log.write(serde_json::json!({
                "split": "train",
                "step": step,
                "epoch": epoch_f,
                "loss": window_loss / window_n.max(1) as f64,
                "lr": lr,
                "examples_per_s": window_n as f64 / secs,
            }))?;
            (window_loss, window_n, window_start) = (0.0, 0, Instant::now());
        }

        if step.is_multiple_of(plan.eval_every) || step == plan.total {
            let metrics = config.select.apply(task.evaluate()?)?;
            let mut line = serde_json::json!({"split": "dev", "step": step, "epoch": epoch_f});
            for (k, v) in &metrics.values {
                line[k] = serde_json::json!(v);
            }
            log.write(line)?;
            let keep = config.select == Selection::Last
                || progress
                    .best
                    .as_ref()
                    .is_none_or(|b| metrics.better_than(b));
            if keep {
                save_best(task, out)?;
                progress.best = Some(metrics.clone());
                progress.best_step = Some(step);
                progress.stale = 0;
            } else {
                progress.stale += 1;
            }
            let stop = config.patience.is_some_and(|p| progress.stale >= p);
            let state = ResumeState {
                step,
                epoch: epoch_f,
                best: progress.best.clone(),
                best_step: progress.best_step,
                evals_without_improvement: progress.stale,
                fingerprint: fp.clone(),
                rng: "shuffling seeded by (seed, epoch); dropout by (seed, micro-batch)".into(),
            };
            write_resume(out, varmap, &opt, &state)?;
            last = Some(metrics);
            if stop {
                stopped_early = true;
                break;
            }
        }
    }
    bar.finish_and_clear();
    Ok(TrainOutcome {
        steps: progress.step,
        total_steps: plan.total,
        resumed_from,
        stopped_early,
        best: progress.best,
        best_step: progress.best_step,
        last,
        examples_per_s: examples_done as f64 / train_secs.max(1e-9),
    })
}

/// The run's shape, from the config and the number of examples.
struct Plan {
    micro_per_epoch: usize,
    steps_per_epoch: usize,
    total: usize,
    warmup: usize,
    eval_every: usize,
}

impl Plan {
    fn new(config: &TrainConfig, n: usize) -> Self {
        let micro_per_epoch = n.div_ceil(config.batch);
        let steps_per_epoch = micro_per_epoch.div_ceil(config.grad_accum);
        let total = config.max_steps.unwrap_or(config.epochs * steps_per_epoch);
        Self {
            micro_per_epoch,
            steps_per_epoch,
            total,
            warmup: (total as f64 * config.warmup_ratio).ceil() as usize,
            eval_every: config.eval_every.unwrap_or(steps_per_epoch),
        }
    }
}

/// Where a run stands: the steps done, the best evaluation and its step, and the
/// evaluations since it (for early stopping).
#[derive(Default)]
struct Progress {
    step: usize,
    best: Option<Metrics>,
    best_step: Option<usize>,
    stale: usize,
}

/// A resumed run's weights, optimizer state and progress; the metrics log is cut
/// back to its last checkpoint.
fn restore(out: &Path, varmap: &VarMap, opt: &mut AdamW, state: &ResumeState) -> Result<Progress> {
    let dir = out.join(RESUME_DIR);
    load_vars(varmap, &dir.join("model.safetensors"))?;
    let opt_path = dir.join("optimizer.safetensors");
    let tensors = candle_core::safetensors::load(&opt_path, &Device::Cpu)
        .map_err(|e| Error::file(&opt_path, slimformer::error::first_line(&e.to_string())))?;
    opt.load_state(&tensors, state.step)
        .map_err(|e| Error::file(&opt_path, e))?;
    truncate_metrics(&out.join(METRICS_FILE), state.step)?;
    Ok(Progress {
        step: state.step,
        best: state.best.clone(),
        best_step: state.best_step,
        stale: state.evals_without_improvement,
    })
}

/// `train_config.json`: the settings, the task, and what follows from them.
fn write_run_config(
    out: &Path,
    config: &TrainConfig,
    opts: &RunOptions,
    n: usize,
    plan: &Plan,
) -> Result<()> {
    let record = serde_json::json!({
        "train": config,
        "task": opts.task_info,
        "derived": {
            "examples": n,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total,
            "warmup_steps": plan.warmup,
            "eval_every": plan.eval_every,
            "schedule": "linear warm-up from 0, then linear decay to 0",
            "optimizer": "AdamW (betas 0.9, 0.999; eps 1e-8; no decay on biases and norms)",
        },
    });
    let text = serde_json::to_string_pretty(&record).expect("json") + "\n";
    write_atomic(&out.join(CONFIG_FILE), text.as_bytes())
}

/// Optimizer step `step` (from 0): its micro-batches' gradients, each weighted
/// by its share of the step's examples, clipped, then applied at the schedule's
/// rate. Returns the summed loss and the number of examples.
fn one_step<T: TrainTask>(
    task: &T,
    examples: &[T::Example],
    perm: &[usize],
    config: &TrainConfig,
    plan: &Plan,
    step: usize,
    opt: &mut AdamW,
) -> Result<(f64, usize)> {
    let n = examples.len();
    let epoch = step / plan.steps_per_epoch;
    let within = step % plan.steps_per_epoch;
    let first_mb = within * config.grad_accum;
    let last_mb = ((within + 1) * config.grad_accum).min(plan.micro_per_epoch);
    let ranges: Vec<(usize, std::ops::Range<usize>)> = (first_mb..last_mb)
        .map(|mb| (mb, mb * config.batch..((mb + 1) * config.batch).min(n)))
        .collect();
    let step_examples: usize = ranges.iter().map(|(_, r)| r.len()).sum();
    let mut grads = opt.zero_grads();
    let mut step_loss = 0f64;
    for (mb, range) in ranges {
        let batch: Vec<&T::Example> = perm[range].iter().map(|&i| &examples[i]).collect();
        let global_mb = (epoch * plan.micro_per_epoch + mb) as u64;
        let rng = TrainRng::new(mix(config.seed, 2, global_mb));
        let loss = task.loss(&batch, &rng)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::Input(format!(
                "the loss is {value} at step {}: lower the learning rate",
                step + 1
            )));
        }
        step_loss += value * batch.len() as f64;
        let scaled = (loss * (batch.len() as f64 / step_examples as f64))?;
        opt.accumulate(&mut grads, &scaled.backward()?)?;
    }
    opt.clip(&mut grads, config.clip)?;
    opt.apply(
        &grads,
        linear_schedule(config.lr, step, plan.warmup, plan.total),
    )?;
    Ok((step_loss, step_examples))
}

fn progress_bar(enabled: bool, total: u64, pos: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(pos);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_best_checkpoint_replaces_the_files_of_the_first_in_subfolders_too() {
        let root = std::env::temp_dir().join(format!("sf-move-{}", std::process::id()));
        let out = root.join("run");
        for (round, text) in [(0, "first"), (1, "second")] {
            let tmp = root.join(format!("tmp{round}"));
            std::fs::create_dir_all(tmp.join("1_Pooling")).unwrap();
            std::fs::write(tmp.join("config.json"), text).unwrap();
            std::fs::write(tmp.join("1_Pooling/config.json"), text).unwrap();
            move_files_into(&tmp, &out).unwrap();
            assert!(!tmp.exists());
        }
        assert_eq!(
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            "second"
        );
        let pooling = std::fs::read_to_string(out.join("1_Pooling/config.json")).unwrap();
        assert_eq!(pooling, "second");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(42, 0, 10);
        assert_eq!(a, epoch_order(42, 0, 10));
        assert_ne!(a, epoch_order(42, 1, 10));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn better_than_respects_direction() {
        let m = |v: f64, hi: bool| Metrics {
            values: [("x".to_string(), v)].into(),
            primary: "x".into(),
            higher_is_better: hi,
        };
        assert!(m(2.0, true).better_than(&m(1.0, true)));
        assert!(m(1.0, false).better_than(&m(2.0, false)));
        assert!(!m(1.0, true).better_than(&m(1.0, true)));
    }

    #[test]
    fn selection_sets_the_metric_and_its_direction() {
        let metrics = Metrics {
            values: [("accuracy".to_string(), 0.9), ("loss".to_string(), 0.3)].into(),
            primary: "accuracy".into(),
            higher_is_better: true,
        };
        let by_loss = Selection::parse("loss").apply(metrics.clone()).unwrap();
        assert_eq!(
            (by_loss.primary.as_str(), by_loss.higher_is_better),
            ("loss", false)
        );
        assert_eq!(
            Selection::parse("primary").apply(metrics.clone()).unwrap(),
            metrics
        );
        assert_eq!(Selection::parse("last"), Selection::Last);
        let e = Selection::parse("f1")
            .apply(metrics)
            .unwrap_err()
            .to_string();
        assert!(e.contains("select") && e.contains("accuracy, loss"), "{e}");
    }
}
