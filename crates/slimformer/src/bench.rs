//! Timing the encoder's forward pass on fixed synthetic token ids, or on a real
//! corpus packed as the batch commands pack it, with no tokenization or
//! serialization inside the timed region.

use crate::batching::{self, BatchLimits};
use crate::model::Model;
use crate::models::Batch;
use crate::pipeline::Pipeline;
use crate::tokenize::Encoded;
use crate::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The shapes (batch × length) every benchmark reports.
pub const SHAPES: [(usize, usize); 3] = [(1, 16), (1, 128), (32, 128)];

/// One shape timed: the median and 95th percentile of `runs` forward passes.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Forward passes over a real corpus, batched exactly as the batch commands
/// batch it ([`batching::pack`] under the same limits).
#[derive(Debug, Clone, Serialize)]
pub struct PackedBenchResult {
    pub precision: String,
    pub threads: usize,
    pub texts: usize,
    /// Real tokens (padding excluded), special tokens included.
    pub tokens: usize,
    /// Tokens the passes compute, padding included.
    pub padded_tokens: usize,
    pub batches: usize,
    /// One pass over every batch, median and p95 over `runs`.
    pub median_s: f64,
    pub p95_s: f64,
    pub runs: usize,
    pub texts_per_s: f64,
    pub tokens_per_s: f64,
}

/// Times the encoder alone over `texts` packed under `limits`: the batches are
/// collated before the clock starts, so the figure is what the model stage of a
/// batch job could reach with nothing around it.
pub fn bench_packed(
    pipeline: &Pipeline,
    texts: &[Encoded],
    limits: BatchLimits,
    warmup: usize,
    runs: usize,
    threads: usize,
) -> Result<PackedBenchResult> {
    let lengths: Vec<usize> = texts.iter().map(|t| t.ids.len()).collect();
    let groups = batching::pack(&lengths, limits);
    let mut padded_tokens = 0;
    let batches = groups
        .iter()
        .map(|group| {
            let members: Vec<&Encoded> = group.iter().map(|&i| &texts[i]).collect();
            padded_tokens += group.len() * group.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            pipeline.tokenizer.collate(&members, &Device::Cpu)
        })
        .collect::<Result<Vec<Batch>>>()?;
    let pass = || -> Result<()> {
        for batch in &batches {
            pipeline.model.encoder.forward(batch)?;
        }
        Ok(())
    };
    for _ in 0..warmup {
        pass()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        pass()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median_s = percentile(&times, 0.5);
    let tokens: usize = lengths.iter().sum();
    Ok(PackedBenchResult {
        precision: crate::layers::precision().to_string(),
        threads,
        texts: texts.len(),
        tokens,
        padded_tokens,
        batches: batches.len(),
        median_s,
        p95_s: percentile(&times, 0.95),
        runs: times.len(),
        texts_per_s: texts.len() as f64 / median_s,
        tokens_per_s: tokens as f64 / median_s,
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
