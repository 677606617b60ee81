//! Retraining on new data at fixed intervals: labelled files that arrive in an inbox
//! are fine-tuned into a candidate from the production version, the candidate and
//! production are scored on a fixed holdout, and the candidate is promoted only if it
//! is not worse by more than a tolerance. Every run is recorded in the registry with
//! its reason. A corrupt inbox file is quarantined, not fatal; a run that fails leaves
//! production untouched.

use serde::{Deserialize, Serialize};
use slimformer::{Error, Result};
use slimformer_registry::{self as registry, Registry, RunRecord};
use slimformer_train::data::{self, Columns};
use slimformer_train::finetune::{self, evaluate_checkpoint, FinetuneOptions};
use slimformer_train::trainer::TrainConfig;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    pub registry: PathBuf,
    /// New labelled files (.csv, .tsv, .jsonl) arrive here.
    pub inbox: PathBuf,
    /// The fixed holdout both candidate and production are scored on.
    pub holdout: PathBuf,
    /// Seconds between runs (or `cron`).
    #[serde(default)]
    pub interval_seconds: Option<f64>,
    /// A five-field cron expression (minute hour day month weekday), UTC.
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default = "d_text")]
    pub text_col: String,
    #[serde(default)]
    pub text_pair_col: Option<String>,
    #[serde(default = "d_label")]
    pub label_col: String,
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_batch")]
    pub batch: usize,
    #[serde(default)]
    pub max_len: Option<usize>,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Largest accepted drop of holdout accuracy (0.01 = one point).
    #[serde(default = "d_tolerance")]
    pub tolerance: f64,
    /// Share of the new rows held out as dev data while fine-tuning.
    #[serde(default = "d_dev_split")]
    pub dev_split: f64,
    /// Distil the fine-tuned candidate into a student of this many of its layers
    /// (DistilBERT's recipe, on the same new data) before it is scored.
    #[serde(default)]
    pub distill_layers: Option<usize>,
    /// Quantize the candidate (`int8` or `bf16`) before it is scored, so what is
    /// promoted is what was scored.
    #[serde(default)]
    pub quantize: Option<String>,
}

fn d_text() -> String {
    "text".into()
}
fn d_label() -> String {
    "label".into()
}
fn d_epochs() -> usize {
    1
}
fn d_lr() -> f64 {
    5e-5
}
fn d_batch() -> usize {
    32
}
fn d_seed() -> u64 {
    42
}
fn d_tolerance() -> f64 {
    0.01
}
fn d_dev_split() -> f64 {
    0.1
}

impl RetrainConfig {
    /// The training settings of a round, for fine-tuning and distilling alike.
    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            max_steps: self.max_steps,
            lr: self.lr,
            batch: self.batch,
            seed: self.seed,
            ..Default::default()
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let c: RetrainConfig = toml::from_str(&text)
            .map_err(|e| Error::file(path, e.to_string().trim().to_string()))?;
        if let Some(mode) = &c.quantize {
            mode.parse::<slimformer_train::shrink::quantize::QuantMode>()
                .map_err(|e| Error::file(path, format!("quantize: {e}")))?;
        }
        if let Some(expr) = &c.cron {
            Cron::parse(expr).map_err(|e| Error::file(path, e))?;
        }
        Ok(c)
    }

    fn columns(&self) -> Columns {
        Columns {
            text: self.text_col.clone(),
            text_pair: self.text_pair_col.clone(),
            label: self.label_col.clone(),
        }
    }
}

fn content_hash(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}-{}", bytes.len())
}

fn inbox_files(inbox: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(inbox) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|e| {
                        ["csv", "tsv", "jsonl"].contains(&e.to_string_lossy().as_ref())
                    })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::file(inbox, e)),
    };
    files.sort();
    Ok(files)
}

/// Moves `file` into `inbox/<sub>/` (processed or quarantine).
fn file_away(inbox: &Path, sub: &str, file: &Path) -> Result<PathBuf> {
    let dir = inbox.join(sub);
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
    let dest = dir.join(format!(
        "{}-{}",
        registry::now().replace('.', ""),
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::rename(file, &dest).map_err(|e| Error::file(file, e))?;
    Ok(dest)
}

/// One run at a time: a lock file holding the pid, taken over when its process died.
struct RunLock(PathBuf);

impl RunLock {
    fn take(dir: &Path) -> Result<RunLock> {
        let path = dir.join(".retrain.lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(RunLock(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    let alive =
                        !pid.trim().is_empty() && Path::new("/proc").join(pid.trim()).exists();
                    if alive {
                        return Err(Error::file(
                            &path,
                            format!("another retraining run (pid {}) is in progress", pid.trim()),
                        ));
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(Error::file(&path, e)),
            }
        }
        Err(Error::file(&path, "cannot take the retraining lock"))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs one retraining round and records it; returns the record.
pub fn run_once(config: &RetrainConfig) -> Result<RunRecord> {
    let reg = Registry::open(&config.registry)?;
    let _lock = RunLock::take(&config.registry)?;
    let started_at = registry::now();
    let mut record = RunRecord {
        started_at: started_at.clone(),
        ..Default::default()
    };
    let outcome = round(config, &reg, &mut record);
    record.finished_at = registry::now();
    if let Err(e) = &outcome {
        record.outcome = "failed".into();
        record.reason = e.to_string();
    }
    record.id = reg.record_run(&record)?;
    tracing::info!(outcome = %record.outcome, reason = %record.reason, "retraining run");
    Ok(record)
}

/// One round: gate a candidate left by an interrupted run, or gather the inbox's
/// new rows, train a candidate from production on them (distil and quantize it if
/// asked), record it, and gate it on the holdout.
fn round(config: &RetrainConfig, reg: &Registry, record: &mut RunRecord) -> Result<()> {
    let (production, production_dir) = registry::production(&reg.dir)?;
    record.production_before = Some(production.clone());
    let columns = config.columns();
    let score =
        |dir: &Path| evaluate_checkpoint(dir, &config.holdout, &columns, config.max_len, 32);

    // A candidate recorded by a run that stopped before its gate is gated now.
    if let Some(pending) = reg
        .list()?
        .into_iter()
        .rev()
        .find(|v| v.status == registry::VersionStatus::Candidate)
    {
        let dir = registry::version_dir(&reg.dir, &pending.name);
        record.candidate = Some(pending.name.clone());
        let (c, p) = (score(&dir)?, score(&production_dir)?);
        return gate(
            config,
            reg,
            record,
            &pending.name,
            c.primary_value(),
            p.primary_value(),
        );
    }

    let inbox = gather_inbox(config, reg, &columns)?;
    record.quarantined = serde_json::json!(inbox.quarantined);
    if inbox.rows.is_empty() {
        record.outcome = "skipped".into();
        record.reason = "no new labelled data in the inbox".into();
        return Ok(());
    }

    let name = reg.next_version()?;
    let staging = reg.staging_dir(&name);
    let work = reg.dir.join(".staging").join(format!("{name}-data"));
    std::fs::create_dir_all(&work).map_err(|e| Error::file(&work, e))?;
    let train_file = work.join("train.jsonl");
    write_rows(&inbox.rows, &columns, &train_file)?;
    record.candidate = Some(name.clone());
    let report = train_candidate(config, &production_dir, &train_file, &staging)?;
    slimformer_registry::fault_point("candidate-trained");
    if let Some(k) = config.distill_layers {
        distill_candidate(config, k, &train_file, &staging, &work)?;
    }
    if let Some(mode) = &config.quantize {
        quantize_candidate(mode, &staging, &work)?;
    }

    // Both on the same holdout.
    let (candidate_m, production_m) = (score(&staging)?, score(&production_dir)?);
    let (c, p) = (candidate_m.primary_value(), production_m.primary_value());
    record.candidate_score = Some(c);
    record.production_score = Some(p);
    let data = serde_json::json!({
        "files": inbox.used.iter().map(|(h, n, _)| serde_json::json!({"name": n, "hash": h})).collect::<Vec<_>>(),
        "rows": inbox.rows.len(),
        "train_examples": report.train_examples,
        "dev_examples": report.dev_examples,
    });
    let holdout = serde_json::json!({"candidate": candidate_m.values, "production": production_m.values, "new_data_dev": report.outcome.best.as_ref().map(|m| &m.values)});
    let files: Vec<(String, String)> = inbox
        .used
        .iter()
        .map(|(h, n, _)| (h.clone(), n.clone()))
        .collect();
    reg.add_version(
        &name,
        &staging,
        Some(&production),
        &serde_json::to_value(config).unwrap_or_default(),
        &data,
        &holdout,
        &files,
    )?;
    slimformer_registry::fault_point("version-recorded");
    for (_, _, file) in &inbox.used {
        file_away(&config.inbox, "processed", file)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    gate(config, reg, record, &name, c, p)
}

/// The inbox's new rows, the files they came from (content hash, name, path),
/// and the files put in quarantine (unreadable, or without rows).
struct Inbox {
    rows: Vec<data::Row>,
    used: Vec<(String, String, PathBuf)>,
    quarantined: Vec<serde_json::Value>,
}

/// Reads the inbox's files that the registry has not seen: readable ones give
/// rows, the others go to quarantine; files seen before are filed as processed.
fn gather_inbox(config: &RetrainConfig, reg: &Registry, columns: &data::Columns) -> Result<Inbox> {
    let mut inbox = Inbox {
        rows: Vec::new(),
        used: Vec::new(),
        quarantined: Vec::new(),
    };
    for file in inbox_files(&config.inbox)? {
        let bytes = std::fs::read(&file).map_err(|e| Error::file(&file, e))?;
        let hash = content_hash(&bytes);
        if reg.seen(&hash)? {
            file_away(&config.inbox, "processed", &file)?;
            continue;
        }
        match data::read_rows(&file, columns) {
            Ok(r) if !r.is_empty() => {
                inbox.rows.extend(r);
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                inbox.used.push((hash, name, file));
            }
            Ok(_) => inbox
                .quarantined
                .push(serde_json::json!({"file": file, "error": "no rows"})),
            Err(e) => {
                let dest = file_away(&config.inbox, "quarantine", &file)?;
                inbox
                    .quarantined
                    .push(serde_json::json!({"file": dest, "error": e.to_string()}));
            }
        }
    }
    Ok(inbox)
}

/// The rows as JSON Lines in the configured columns: the candidate's training file.
fn write_rows(rows: &[data::Row], columns: &data::Columns, path: &Path) -> Result<()> {
    let lines: String = rows
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({ &columns.label: r.label });
            match &r.input {
                slimformer::tokenize::TextInput::Single(t) => v[&columns.text] = t.clone().into(),
                slimformer::tokenize::TextInput::Pair(a, b) => {
                    v[&columns.text] = a.clone().into();
                    if let Some(pc) = &columns.text_pair {
                        v[pc] = b.clone().into();
                    }
                }
            }
            v.to_string() + "\n"
        })
        .collect();
    slimformer::io::write_atomic(path, lines.as_bytes())
}

/// Fine-tunes production on the new rows into `staging`.
fn train_candidate(
    config: &RetrainConfig,
    production_dir: &Path,
    train_file: &Path,
    staging: &Path,
) -> Result<finetune::FinetuneReport> {
    let report = finetune::finetune(&FinetuneOptions {
        model_dir: production_dir.to_path_buf(),
        train: train_file.to_path_buf(),
        dev: None,
        dev_split: Some(config.dev_split),
        columns: config.columns(),
        max_len: config.max_len,
        train_config: config.train_config(),
        out: staging.to_path_buf(),
        overwrite: true,
        progress: false,
        test: None,
        problem_type: None,
    })?;
    let _ = std::fs::remove_dir_all(staging.join(slimformer_train::trainer::RESUME_DIR));
    Ok(report)
}

/// Distils the candidate in `staging` into `layers` of its layers, in its place.
fn distill_candidate(
    config: &RetrainConfig,
    layers: usize,
    train_file: &Path,
    staging: &Path,
    work: &Path,
) -> Result<()> {
    use slimformer_train::shrink::distill::{self, DistillData, DistillOptions, StudentSpec};
    let student = work.join("student");
    distill::distill(&DistillOptions {
        teacher: staging.to_path_buf(),
        student: StudentSpec::Layers(layers),
        data: DistillData::Task {
            train: train_file.to_path_buf(),
            dev: None,
            dev_split: Some(config.dev_split),
            columns: config.columns(),
            test: None,
        },
        weights: Default::default(),
        max_len: config.max_len,
        train_config: config.train_config(),
        out: student.clone(),
        overwrite: true,
        progress: false,
        cache_dir: None,
        augment: 0,
    })?;
    let _ = std::fs::remove_dir_all(student.join(slimformer_train::trainer::RESUME_DIR));
    let _ = std::fs::remove_dir_all(student.join(distill::INIT_DIR));
    std::fs::remove_dir_all(staging).map_err(|e| Error::file(staging, e))?;
    std::fs::rename(&student, staging).map_err(|e| Error::file(staging, e))
}

/// Quantizes the candidate in `staging` (`int8` or `bf16`), in its place.
fn quantize_candidate(mode: &str, staging: &Path, work: &Path) -> Result<()> {
    use slimformer_train::shrink::quantize::{quantize, QuantMode};
    let mode: QuantMode = mode.parse().map_err(Error::Config)?;
    let quantized = work.join("quantized");
    quantize(staging, &quantized, mode)?;
    for f in ["model.safetensors", "config.json"] {
        std::fs::rename(quantized.join(f), staging.join(f)).map_err(|e| Error::file(staging, e))?;
    }
    Ok(())
}

/// Promotes a recorded candidate scoring `c` on the holdout against production's `p`,
/// or rejects it.
fn gate(
    config: &RetrainConfig,
    reg: &Registry,
    record: &mut RunRecord,
    name: &str,
    c: f64,
    p: f64,
) -> Result<()> {
    record.candidate_score = Some(c);
    record.production_score = Some(p);
    if c + config.tolerance >= p {
        reg.promote(name, "retrained: not worse than production on the holdout")?;
        record.outcome = "promoted".into();
        record.reason = format!(
            "holdout accuracy {c:.4} vs production {p:.4} (tolerance {})",
            config.tolerance
        );
    } else {
        let reason = format!(
            "holdout accuracy {c:.4} is more than {} below production's {p:.4}",
            config.tolerance
        );
        reg.reject(name, &reason)?;
        record.outcome = "rejected".into();
        record.reason = reason;
    }
    Ok(())
}

/// A five-field cron expression: minute hour day-of-month month day-of-week (UTC),
/// each `*`, a number, a list `1,5`, a range `1-5`, or a step `*/15`.
#[derive(Debug, Clone)]
pub struct Cron {
    fields: [Vec<u32>; 5],
}

impl Cron {
    pub fn parse(expr: &str) -> std::result::Result<Cron, String> {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "cron {expr:?}: expected 5 fields (minute hour day month weekday)"
            ));
        }
        let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)];
        let mut fields: [Vec<u32>; 5] = Default::default();
        for (i, (part, (lo, hi))) in parts.iter().zip(ranges).enumerate() {
            let mut values = Vec::new();
            for item in part.split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((r, s)) => (
                        r,
                        s.parse::<u32>()
                            .map_err(|_| format!("cron {expr:?}: bad step {s:?}"))?,
                    ),
                    None => (item, 1),
                };
                let (a, b) = if range == "*" {
                    (lo, hi)
                } else if let Some((a, b)) = range.split_once('-') {
                    (
                        a.parse().map_err(|_| format!("cron {expr:?}: bad {a:?}"))?,
                        b.parse().map_err(|_| format!("cron {expr:?}: bad {b:?}"))?,
                    )
                } else {
                    let v: u32 = range
                        .parse()
                        .map_err(|_| format!("cron {expr:?}: bad {range:?}"))?;
                    (v, v)
                };
                if a < lo || b > hi || a > b || step == 0 {
                    return Err(format!("cron {expr:?}: {item:?} is outside {lo}-{hi}"));
                }
                values.extend((a..=b).step_by(step as usize));
            }
            fields[i] = values;
        }
        Ok(Cron { fields })
    }

    /// Seconds from `now` (unix seconds) to the next matching minute.
    pub fn seconds_until_next(&self, now: u64) -> u64 {
        let mut t = (now / 60 + 1) * 60;
        for _ in 0..(366 * 24 * 60) {
            let (min, hour, day, month, weekday) = civil(t);
            let ok = self.fields[0].contains(&min)
                && self.fields[1].contains(&hour)
                && self.fields[2].contains(&day)
                && self.fields[3].contains(&month)
                && self.fields[4].contains(&weekday);
            if ok {
                return t - now;
            }
            t += 60;
        }
        24 * 3600
    }
}

/// (minute, hour, day, month, weekday with Sunday = 0) of unix seconds, UTC.
fn civil(t: u64) -> (u32, u32, u32, u32, u32) {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let weekday = ((days + 4).rem_euclid(7)) as u32;
    (
        (secs / 60 % 60) as u32,
        (secs / 3600) as u32,
        day,
        month,
        weekday,
    )
}

/// Runs rounds forever on the config's schedule (or once when `once`).
pub fn run_scheduled(config: &RetrainConfig, once: bool) -> Result<()> {
    let cron = config
        .cron
        .as_deref()
        .map(Cron::parse)
        .transpose()
        .map_err(Error::Config)?;
    if !once && cron.is_none() && config.interval_seconds.is_none() {
        return Err(Error::setting(
            "once",
            "the retrain config has neither interval_seconds nor cron: it can run one round only",
        ));
    }
    loop {
        match run_once(config) {
            Ok(r) => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
            Err(e) => tracing::error!(error = %e, "retraining round failed"),
        }
        if once {
            return Ok(());
        }
        let wait = match (&cron, config.interval_seconds) {
            (Some(c), _) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                c.seconds_until_next(now) as f64
            }
            (None, Some(s)) => s,
            (None, None) => unreachable!("checked above"),
        };
        std::thread::sleep(std::time::Duration::from_secs_f64(wait.max(0.0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_finds_the_next_minute() {
        // 2026-11-26 15:00:00 UTC is a Thursday.
        let t = 1_795_705_200;
        assert_eq!(civil(t), (0, 15, 26, 11, 4));
        let every_15 = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(every_15.seconds_until_next(t), 15 * 60);
        let at_3am = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(at_3am.seconds_until_next(t), 12 * 3600);
        let sunday = Cron::parse("30 2 * * 0").unwrap();
        assert_eq!(sunday.seconds_until_next(t), (2 * 24 + 11) * 3600 + 30 * 60);
        assert!(Cron::parse("61 * * * *").is_err());
        assert!(Cron::parse("* * *").is_err());
    }
}
