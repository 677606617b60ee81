//! Prometheus metrics, rendered by hand in the text exposition format: requests by
//! route and status, latency histograms, and by model: requests, queue size, batch
//! sizes and tokens, inference time, the version; reloads and their failures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Model versions the process holds in memory, every model together: one per model,
/// and two for a model while a replaced version answers its last requests. Counted
/// by the engines as they are built and dropped.
pub static VERSIONS_IN_MEMORY: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const TOKEN_BUCKETS: [f64; 9] = [
    16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}\n"));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n",
            self.count
        ));
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        out.push_str(&format!("{name}_sum{braces} {}\n", self.sum));
        out.push_str(&format!("{name}_count{braces} {}\n", self.count));
    }
}

/// What is counted per model.
#[derive(Default, Clone)]
struct ModelStats {
    requests: u64,
    batch_size: Histogram,
    batch_tokens: Histogram,
    inference_seconds: Histogram,
    queue: i64,
    version: Option<String>,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// By model name.
    models: Mutex<BTreeMap<String, ModelStats>>,
    in_flight: AtomicI64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicI64,
    /// Connections closed on arrival because the connection limit was reached.
    pub connections_refused: AtomicU64,
    /// The requests' memory budget (0: no memory limit) and what is reserved of it.
    pub memory_budget_bytes: AtomicU64,
    pub memory_reserved_bytes: AtomicU64,
    /// Requests refused for want of memory (429 or 413).
    pub memory_refusals: AtomicU64,
}

/// A label value, escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((route.to_string(), status)).or_default() += 1;
        drop(r);
        let mut l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        l.entry(route.to_string())
            .or_default()
            .observe(&LATENCY_BUCKETS, seconds);
    }

    fn with_model(&self, model: &str, f: impl FnOnce(&mut ModelStats)) {
        let mut m = self.models.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(model.to_string()).or_default());
    }

    /// One inference request for `model`.
    pub fn model_request(&self, model: &str) {
        self.with_model(model, |m| m.requests += 1);
    }

    /// One forward pass of `model`: its texts and padded tokens.
    pub fn observe_batch(&self, model: &str, texts: usize, tokens: usize) {
        self.with_model(model, |m| {
            m.batch_size.observe(&SIZE_BUCKETS, texts as f64);
            m.batch_tokens.observe(&TOKEN_BUCKETS, tokens as f64);
        });
    }

    /// The inference time of one packed batch (all its passes).
    pub fn observe_seconds(&self, model: &str, seconds: f64) {
        self.with_model(model, |m| {
            m.inference_seconds.observe(&LATENCY_BUCKETS, seconds)
        });
    }

    pub fn queue_add(&self, model: &str, d: i64) {
        self.with_model(model, |m| m.queue += d);
    }

    pub fn in_flight_add(&self, d: i64) {
        self.in_flight.fetch_add(d, Ordering::Relaxed);
    }

    /// `model` now serves `version` (the loaded folder's name is `served`).
    pub fn reloaded(&self, model: &str, version: &str) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.with_model(model, |m| m.version = Some(version.to_string()));
    }

    pub fn reload_failed(&self) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP slimformer_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE slimformer_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push_str(&format!(
                "slimformer_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP slimformer_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE slimformer_request_duration_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.render(
                &mut out,
                "slimformer_request_duration_seconds",
                &format!("route=\"{route}\""),
                &LATENCY_BUCKETS,
            );
        }
        let models = self
            .models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        type Of = fn(&ModelStats) -> &Histogram;
        let histograms: [(&str, &str, Of, &[f64]); 3] = [
            (
                "slimformer_batch_size",
                "Texts per forward pass.",
                |m| &m.batch_size,
                &SIZE_BUCKETS,
            ),
            (
                "slimformer_batch_tokens",
                "Padded tokens per forward pass.",
                |m| &m.batch_tokens,
                &TOKEN_BUCKETS,
            ),
            (
                "slimformer_inference_seconds",
                "Time of one packed batch.",
                |m| &m.inference_seconds,
                &LATENCY_BUCKETS,
            ),
        ];
        for (name, help, of, buckets) in histograms {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
            for (model, stats) in &models {
                of(stats).render(
                    &mut out,
                    name,
                    &format!("model=\"{}\"", label(model)),
                    buckets,
                );
            }
        }
        let by_model =
            |out: &mut String, name: &str, kind: &str, help: &str, v: fn(&ModelStats) -> String| {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                for (model, stats) in &models {
                    out.push_str(&format!(
                        "{name}{{model=\"{}\"}} {}\n",
                        label(model),
                        v(stats)
                    ));
                }
            };
        by_model(
            &mut out,
            "slimformer_model_requests_total",
            "counter",
            "Inference requests by model.",
            |m| m.requests.to_string(),
        );
        by_model(
            &mut out,
            "slimformer_queue_size",
            "gauge",
            "Requests waiting for the model's inference thread.",
            |m| m.queue.to_string(),
        );
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        gauge(
            &mut out,
            "slimformer_requests_in_flight",
            "gauge",
            "Requests being handled.",
            self.in_flight.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "slimformer_reloads_total",
            "counter",
            "Model versions switched to.",
            self.reloads.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "slimformer_reload_failures_total",
            "counter",
            "Model versions refused (failed to load or the smoke test).",
            self.reload_failures.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "slimformer_connections_open",
            "gauge",
            "HTTP connections open.",
            self.connections_open.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "slimformer_connections_refused_total",
            "counter",
            "Connections closed on arrival because --max-connections were open.",
            self.connections_refused.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "slimformer_log_lines_dropped_total",
            "counter",
            "Log lines dropped because the log output did not keep up (requests never wait for it).",
            crate::log_sink::dropped_lines().to_string(),
        );
        gauge(
            &mut out,
            "slimformer_model_versions_in_memory",
            "gauge",
            "Model versions held in memory: one per model, two for a model while a replaced version finishes its last requests.",
            VERSIONS_IN_MEMORY.load(Ordering::Relaxed).to_string(),
        );
        if let Some(heap) = crate::heap::heap_stats() {
            gauge(
                &mut out,
                "slimformer_heap_in_use_bytes",
                "gauge",
                "Bytes the allocator has handed out and not had back.",
                heap.in_use.to_string(),
            );
            gauge(
                &mut out,
                "slimformer_heap_free_bytes",
                "gauge",
                "Freed bytes the allocator's heap keeps (at most this many stay resident; the rest went back page by page).",
                heap.free.to_string(),
            );
        }
        gauge(
            &mut out,
            "slimformer_memory_budget_bytes",
            "gauge",
            "Memory requests may reserve under the memory limit (0: no limit).",
            self.memory_budget_bytes.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "slimformer_memory_reserved_bytes",
            "gauge",
            "Memory reserved by requests being handled or answered.",
            self.memory_reserved_bytes
                .load(Ordering::Relaxed)
                .to_string(),
        );
        gauge(
            &mut out,
            "slimformer_memory_refusals_total",
            "counter",
            "Requests refused because their memory did not fit the budget (429 or 413).",
            self.memory_refusals.load(Ordering::Relaxed).to_string(),
        );
        out.push_str("# HELP slimformer_model_info The version each model serves.\n# TYPE slimformer_model_info gauge\n");
        for (model, stats) in &models {
            if let Some(version) = &stats.version {
                out.push_str(&format!(
                    "slimformer_model_info{{model=\"{}\",version=\"{}\"}} 1\n",
                    label(model),
                    label(version)
                ));
            }
        }
        out
    }
}

/// The registry's last retraining run, when it has one: its time, outcome, and the
/// candidate's and production's holdout scores.
pub fn retrain_metrics(registry: &std::path::Path) -> Option<String> {
    if !registry.join(slimformer_registry::db_file()).exists() {
        return None;
    }
    let runs = slimformer_registry::Registry::open(registry)
        .ok()?
        .runs()
        .ok()?;
    let last = runs.last()?;
    let mut out = String::new();
    out.push_str("# HELP slimformer_retrain_runs_total Retraining runs recorded in the registry.\n# TYPE slimformer_retrain_runs_total counter\n");
    out.push_str(&format!("slimformer_retrain_runs_total {}\n", runs.len()));
    out.push_str("# HELP slimformer_retrain_last_run_timestamp_seconds When the last retraining run finished.\n# TYPE slimformer_retrain_last_run_timestamp_seconds gauge\n");
    out.push_str(&format!(
        "slimformer_retrain_last_run_timestamp_seconds {}\n",
        last.finished_at
    ));
    out.push_str("# HELP slimformer_retrain_last_outcome The last run's outcome (1 for the one it had).\n# TYPE slimformer_retrain_last_outcome gauge\n");
    for outcome in ["promoted", "rejected", "skipped", "failed"] {
        let v = u8::from(last.outcome == outcome);
        out.push_str(&format!(
            "slimformer_retrain_last_outcome{{outcome=\"{outcome}\"}} {v}\n"
        ));
    }
    out.push_str("# HELP slimformer_retrain_holdout_accuracy Holdout accuracy in the last scored run.\n# TYPE slimformer_retrain_holdout_accuracy gauge\n");
    if let Some(scored) = runs.iter().rev().find(|r| r.candidate_score.is_some()) {
        for (who, v) in [
            ("candidate", scored.candidate_score),
            ("production", scored.production_score),
        ] {
            if let Some(v) = v {
                out.push_str(&format!(
                    "slimformer_retrain_holdout_accuracy{{model=\"{who}\"}} {v}\n"
                ));
            }
        }
    }
    Some(out)
}
