//! Timing the encoder's forward pass on fixed synthetic token ids, with no
//! tokenization or serialization inside the timed region.

use crate::model::Model;
use crate::models::Batch;
use crate::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::time::Instant;

/// The shapes (batch × length) every benchmark reports.
pub const SHAPES: [(usize, usize); 3] = [(1, 16), (1, 128), (32, 128)];

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub shape: String,
    pub precision: String,
    pub threads: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub runs: usize,
}

/// Deterministic ids away from the special tokens at the start of the vocabulary.
fn synthetic_batch(model: &Model, batch: usize, len: usize) -> Result<Batch> {
    let vocab = model.encoder.word_embeddings().dim(0)? as u32;
    let low = 10.min(vocab - 1);
    let ids: Vec<u32> = (0..batch * len)
        .map(|i| low + (i as u32).wrapping_mul(2_654_435_761) % (vocab - low))
        .collect();
    let device = Device::Cpu;
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (batch, len), &device)?,
        attention_mask: Tensor::ones((batch, len), candle_core::DType::U32, &device)?,
        token_type_ids: Tensor::zeros((batch, len), candle_core::DType::U32, &device)?,
    })
}

pub fn bench_shape(
    model: &Model,
    (batch, len): (usize, usize),
    warmup: usize,
    runs: usize,
    threads: usize,
) -> Result<BenchResult> {
    let input = synthetic_batch(model, batch, len)?;
    for _ in 0..warmup {
        model.encoder.forward(&input)?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        model.encoder.forward(&input)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(BenchResult {
        shape: format!("{batch}x{len}"),
        precision: crate::layers::precision().to_string(),
        threads,
        median_ms: percentile(&times, 0.5),
        p95_ms: percentile(&times, 0.95),
        runs: times.len(),
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
