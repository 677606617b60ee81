//! Prometheus metrics, rendered by hand in the text exposition format: requests by
//! route and status, latency histograms, queue size, batch sizes and tokens, the
//! model version, reloads and their failures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

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

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batch_size: Mutex<Histogram>,
    batch_tokens: Mutex<Histogram>,
    inference_seconds: Mutex<Histogram>,
    queue: AtomicI64,
    in_flight: AtomicI64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    model: Mutex<Option<(String, String)>>,
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

    /// One forward pass: its texts and padded tokens.
    pub fn observe_batch(&self, texts: usize, tokens: usize) {
        for (m, buckets, v) in [
            (&self.batch_size, &SIZE_BUCKETS[..], texts as f64),
            (&self.batch_tokens, &TOKEN_BUCKETS[..], tokens as f64),
        ] {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(buckets, v);
        }
    }

    /// The inference time of one packed batch (all its passes).
    pub fn observe_seconds(&self, seconds: f64) {
        self.inference_seconds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&LATENCY_BUCKETS, seconds);
    }

    pub fn queue_add(&self, d: i64) {
        self.queue.fetch_add(d, Ordering::Relaxed);
    }

    pub fn in_flight_add(&self, d: i64) {
        self.in_flight.fetch_add(d, Ordering::Relaxed);
    }

    pub fn reloaded(&self, name: &str, version: &str) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        *self.model.lock().unwrap_or_else(|e| e.into_inner()) = Some((label(name), label(version)));
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
        let hist = |out: &mut String, name: &str, help: &str, h: &Mutex<Histogram>, b: &[f64]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
            h.lock()
                .unwrap_or_else(|e| e.into_inner())
                .render(out, name, "", b);
        };
        hist(
            &mut out,
            "slimformer_batch_size",
            "Texts per forward pass.",
            &self.batch_size,
            &SIZE_BUCKETS,
        );
        hist(
            &mut out,
            "slimformer_batch_tokens",
            "Padded tokens per forward pass.",
            &self.batch_tokens,
            &TOKEN_BUCKETS,
        );
        hist(
            &mut out,
            "slimformer_inference_seconds",
            "Time of one forward pass.",
            &self.inference_seconds,
            &LATENCY_BUCKETS,
        );
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        gauge(
            &mut out,
            "slimformer_queue_size",
            "gauge",
            "Requests waiting for the inference thread.",
            self.queue.load(Ordering::Relaxed).to_string(),
        );
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
        if let Some((name, version)) = self
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            out.push_str("# HELP slimformer_model_info The model being served.\n# TYPE slimformer_model_info gauge\n");
            out.push_str(&format!(
                "slimformer_model_info{{model=\"{name}\",version=\"{version}\"}} 1\n"
            ));
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
