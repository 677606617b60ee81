//! Measuring one model for `slimformer compare`: shape, parameters, size, load time,
//! peak memory, encode latency, throughput on real texts, and accuracy when it is a
//! classifier. The command runs this in a child process per model, so that the peak
//! memory is that model's alone.

use crate::batching::BatchLimits;
use crate::bench::{bench_shape, BenchResult};
use crate::heads::SequenceClassifier;
use crate::model::Model;
use crate::params::{count_parameters, ParamCounts};
use crate::pipeline::Pipeline;
use crate::tokenize::{Encoded, TextTokenizer};
use crate::train::data::{self, Columns};
use crate::train::finetune::{evaluate_checkpoint, DEFAULT_MAX_LEN};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub model: String,
    pub path: PathBuf,
    pub family: String,
    pub hidden_size: usize,
    pub layers: Option<u64>,
    pub params: ParamCountsRecord,
    pub size_bytes: u64,
    pub quantization: Option<String>,
    pub load_ms: f64,
    /// Peak resident memory of the measuring process (Linux; `None` elsewhere).
    pub peak_rss_mib: Option<f64>,
    pub latency: Vec<BenchRecord>,
    /// Texts per second over the eval texts (batches of 32, longest first).
    pub throughput_texts_per_s: f64,
    pub eval_texts: usize,
    /// accuracy, macro_f1, mcc, loss — when the model is a classifier of the eval labels.
    pub metrics: Option<BTreeMap<String, f64>>,
    pub threads: usize,
}

/// [`ParamCounts`] as stored in a report.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ParamCountsRecord {
    pub total: usize,
    pub embeddings: usize,
    pub encoder: usize,
    pub heads: usize,
}

impl From<ParamCounts> for ParamCountsRecord {
    fn from(p: ParamCounts) -> Self {
        Self {
            total: p.total,
            embeddings: p.embeddings,
            encoder: p.encoder,
            heads: p.heads,
        }
    }
}

/// [`BenchResult`] as stored in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRecord {
    pub shape: String,
    pub precision: String,
    pub threads: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub runs: usize,
}

impl From<BenchResult> for BenchRecord {
    fn from(b: BenchResult) -> Self {
        Self {
            shape: b.shape,
            precision: b.precision,
            threads: b.threads,
            median_ms: b.median_ms,
            p95_ms: b.p95_ms,
            runs: b.runs,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MeasureOptions {
    pub eval: PathBuf,
    pub columns: Columns,
    pub shapes: Vec<(usize, usize)>,
    pub warmup: usize,
    pub runs: usize,
}

/// Peak resident set size of this process, from /proc (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Measures the model in `dir` (see the module docs).
pub fn measure(dir: &Path, opts: &MeasureOptions) -> Result<Measurement> {
    let started = Instant::now();
    let model = Model::load(dir)?;
    let max_len = model
        .config
        .max_input_len()
        .map_or(DEFAULT_MAX_LEN, |m| m.min(DEFAULT_MAX_LEN));
    let tokenizer = TextTokenizer::load(dir, &model.config, Some(max_len), true)?;
    let pipeline = Pipeline::new(model, tokenizer);
    let (model, tokenizer) = (&pipeline.model, &pipeline.tokenizer);
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let threads = candle_core::utils::get_num_threads();

    // Shapes longer than the model's positions are left out (and missing in the report).
    let limit = model.config.max_input_len().unwrap_or(usize::MAX);
    let latency = opts
        .shapes
        .iter()
        .filter(|s| s.1 <= limit)
        .map(|&s| bench_shape(model, s, opts.warmup, opts.runs, threads).map(Into::into))
        .collect::<Result<Vec<BenchRecord>>>()?;

    let rows = data::read_rows(&opts.eval, &opts.columns)?;
    let encoded: Vec<Encoded> = rows
        .iter()
        .map(|r| {
            tokenizer
                .encode(&r.input)
                .map_err(|e| Error::file(&opts.eval, format!("line {}: {e}", r.line)))
        })
        .collect::<Result<_>>()?;
    // Throughput as the batch commands run: the pipeline's length-sorted batches.
    let refs: Vec<&Encoded> = encoded.iter().collect();
    let t0 = Instant::now();
    for result in pipeline.run_packed(&refs, BatchLimits::DEFAULT, |_, hidden| Ok(hidden)) {
        result.map_err(Error::Input)?;
    }
    let throughput = encoded.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9);

    let metrics = match SequenceClassifier::load(model) {
        Ok(head) => {
            let labels_known = rows
                .iter()
                .all(|r| head.labels.names.iter().any(|n| n == &r.label));
            if labels_known {
                Some(evaluate_checkpoint(dir, &opts.eval, &opts.columns, Some(max_len), 32)?.values)
            } else {
                tracing::warn!(
                    "{}: the eval labels are not the model's ({}): no accuracy",
                    dir.display(),
                    head.labels.names.join(", ")
                );
                None
            }
        }
        Err(_) => None,
    };
    let config = &model.checkpoint.config;
    let layers = ["num_hidden_layers", "n_layers", "n_layer"]
        .iter()
        .find_map(|k| config.get(*k).and_then(|v| v.as_u64()));
    Ok(Measurement {
        model: dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: dir.to_path_buf(),
        family: model.family().to_string(),
        hidden_size: model.hidden_size(),
        layers,
        params: count_parameters(&model.checkpoint).into(),
        size_bytes: model.checkpoint.size_bytes(),
        quantization: model.checkpoint.quantization.clone(),
        load_ms,
        peak_rss_mib: peak_rss_mib(),
        latency,
        throughput_texts_per_s: throughput,
        eval_texts: encoded.len(),
        metrics,
        threads,
    })
}

/// How `compare` runs each model: the slimformer binary to start as a child per model.
#[derive(Debug, Clone)]
pub struct ChildRunner {
    pub exe: PathBuf,
    pub threads: Option<usize>,
}

impl ChildRunner {
    /// Measures each model in a child process (`slimformer compare-one`); a model that
    /// fails is reported with its error and the others still run. `progress` is told
    /// each model as it starts.
    pub fn run(
        &self,
        models: &[PathBuf],
        opts: &MeasureOptions,
        mut progress: impl FnMut(usize, &Path),
    ) -> Vec<crate::report::ModelOutcome> {
        let shapes: Vec<String> = opts
            .shapes
            .iter()
            .map(|(b, l)| format!("{b}x{l}"))
            .collect();
        models
            .iter()
            .enumerate()
            .map(|(i, model)| {
                progress(i, model);
                let mut cmd = std::process::Command::new(&self.exe);
                // The child measures in this process's precision (`slimformer --precision`).
                cmd.args(["--precision", &crate::layers::precision().to_string()]);
                if let Some(t) = self.threads {
                    cmd.args(["--threads", &t.to_string()]);
                }
                cmd.arg("compare-one")
                    .arg(model)
                    .arg("--eval")
                    .arg(&opts.eval)
                    .args([
                        "--text-col",
                        &opts.columns.text,
                        "--label-col",
                        &opts.columns.label,
                    ])
                    .args([
                        "--runs",
                        &opts.runs.to_string(),
                        "--warmup",
                        &opts.warmup.to_string(),
                    ])
                    .args(["--shapes", &shapes.join(",")]);
                if let Some(pair) = &opts.columns.text_pair {
                    cmd.args(["--text-pair-col", pair]);
                }
                let (measurement, error) = match cmd.output() {
                    Ok(out) => {
                        let stdout = String::from_utf8_lossy(&out.stdout);
                        let parsed = stdout
                            .lines()
                            .last()
                            .and_then(|l| serde_json::from_str::<Measurement>(l).ok());
                        match (out.status.success(), parsed) {
                            (true, Some(m)) => (Some(m), None),
                            _ => {
                                let err = String::from_utf8_lossy(&out.stderr);
                                let message = err
                                    .lines()
                                    .find_map(|l| l.strip_prefix("slimformer: error: "))
                                    .unwrap_or("the measurement failed")
                                    .to_string();
                                (None, Some(message))
                            }
                        }
                    }
                    Err(e) => (
                        None,
                        Some(format!("cannot start {}: {e}", self.exe.display())),
                    ),
                };
                crate::report::ModelOutcome {
                    path: model.clone(),
                    measurement,
                    error,
                }
            })
            .collect()
    }
}
