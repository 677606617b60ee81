//! Measuring one model for `slimformer compare`: shape, parameters, size, load time,
//! peak memory, encode latency, throughput on real texts, and accuracy when it is a
//! classifier. The command runs this in a child process per model, so that the peak
//! memory is that model's alone.

use serde::{Deserialize, Serialize};
use slimformer::batching::BatchLimits;
use slimformer::bench::{bench_shape, BenchResult};
use slimformer::heads::SequenceClassifier;
use slimformer::model::Model;
use slimformer::params::{count_parameters, ParamCounts};
use slimformer::pipeline::Pipeline;
use slimformer::tokenize::{Encoded, TextTokenizer};
use slimformer::{Error, Result};
use slimformer_train::data::{self, Columns};
use slimformer_train::finetune::{evaluate_checkpoint, DEFAULT_MAX_LEN};
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
    pub latency: Vec<BenchResult>,
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
    let tokenizer = TextTokenizer::load(dir, model.config.padding(), Some(max_len), true)?;
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
        .map(|&s| bench_shape(model, s, opts.warmup, opts.runs, threads))
        .collect::<Result<Vec<BenchResult>>>()?;

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

/// One model of a comparison: its measurement, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelOutcome {
    pub path: PathBuf,
    pub measurement: Option<Measurement>,
    pub error: Option<String>,
}

/// The shapes measured, in the order the measurements list them (a study's small
/// models are timed only at lengths their position tables allow).
pub fn measured_shapes<'a>(models: impl IntoIterator<Item = &'a Measurement>) -> Vec<String> {
    let mut shapes: Vec<String> = Vec::new();
    for m in models {
        for b in &m.latency {
            if !shapes.contains(&b.shape) {
                shapes.push(b.shape.clone());
            }
        }
    }
    shapes
}

/// A name per model for reports and charts: the shortest end of its path that no other
/// model's path ends with (a teacher in `runs/minilm/slimformer` and a student in
/// `runs/student/slimformer` are `minilm/slimformer` and `student/slimformer`).
pub fn model_labels(models: &[Measurement]) -> Vec<String> {
    let parts: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let path = m.path.canonicalize().unwrap_or_else(|_| m.path.clone());
            path.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .filter(|c| c != "/")
                .collect()
        })
        .collect();
    let tail = |p: &[String], k: usize| p[p.len().saturating_sub(k)..].join("/");
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (1..=p.len())
                .find(|&k| {
                    let name = tail(p, k);
                    parts
                        .iter()
                        .enumerate()
                        .all(|(j, q)| j == i || tail(q, k) != name)
                })
                .map(|k| tail(p, k))
                .unwrap_or_else(|| models[i].model.clone())
        })
        .collect()
}

/// Where each model of a comparison is measured. A model's peak memory must be
/// its own, so the `slimformer` binary measures each in a child process of its
/// own; this crate only asks for the measurement.
pub trait MeasureRunner {
    /// [`measure`]s `model`, or says why it could not.
    fn measure(
        &self,
        model: &Path,
        opts: &MeasureOptions,
    ) -> std::result::Result<Measurement, String>;
}

/// Measures each model with `runner`; a model that fails is reported with its
/// error and the others still run. `progress` is told each model as it starts.
pub fn measure_all(
    runner: &dyn MeasureRunner,
    models: &[PathBuf],
    opts: &MeasureOptions,
    mut progress: impl FnMut(usize, &Path),
) -> Vec<ModelOutcome> {
    models
        .iter()
        .enumerate()
        .map(|(i, model)| {
            progress(i, model);
            let (measurement, error) = match runner.measure(model, opts) {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(e)),
            };
            ModelOutcome {
                path: model.clone(),
                measurement,
                error,
            }
        })
        .collect()
}
