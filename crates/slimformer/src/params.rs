//! Parameter counts as transformers' `num_parameters()` gives them: tied or
//! shared tensors once, buffers not at all; split into embeddings, encoder, heads.

use crate::checkpoint::Checkpoint;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: usize,
    /// Token, position and type tables, their LayerNorm, and ALBERT's E→H projection.
    pub embeddings: usize,
    /// The transformer layers.
    pub encoder: usize,
    /// Everything task-specific: poolers, classifiers, LM heads.
    pub heads: usize,
}

/// Buffers transformers saves beside the parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with("position_ids")
        || name.ends_with("token_type_ids")
        || name.ends_with("masked_bias")
}

fn part(name: &str) -> Part {
    const EMBEDDINGS: [&str; 4] = [
        "embeddings.",
        "word_embedding.",
        "mask_emb",
        "encoder.embedding_hidden_mapping_in.",
    ];
    const ENCODER: [&str; 3] = ["encoder.", "transformer.", "layer."];
    if EMBEDDINGS.iter().any(|p| name.starts_with(p)) {
        Part::Embeddings
    } else if ENCODER.iter().any(|p| name.starts_with(p)) {
        Part::Encoder
    } else {
        Part::Heads
    }
}

enum Part {
    Embeddings,
    Encoder,
    Heads,
}

pub fn count_parameters(ckpt: &Checkpoint) -> ParamCounts {
    let mut names: Vec<&String> = ckpt.tensors.keys().filter(|n| !is_buffer(n)).collect();
    // Embeddings and encoder first, so a tied copy is dropped from the heads.
    names.sort_by_key(|n| (matches!(part(n), Part::Heads), n.as_str()));
    let mut seen: HashMap<(Vec<usize>, candle_core::DType), Vec<&candle_core::Tensor>> =
        HashMap::new();
    let mut counts = ParamCounts::default();
    for name in names {
        let tensor = &ckpt.tensors[name];
        let key = (tensor.dims().to_vec(), tensor.dtype());
        let same_shape = seen.entry(key).or_default();
        if same_shape.iter().any(|t| same_values(t, tensor)) {
            continue;
        }
        same_shape.push(tensor);
        let n = tensor.elem_count();
        counts.total += n;
        match part(name) {
            Part::Embeddings => counts.embeddings += n,
            Part::Encoder => counts.encoder += n,
            Part::Heads => counts.heads += n,
        }
    }
    counts
}

/// Tied weights are saved as two identical copies.
fn same_values(a: &candle_core::Tensor, b: &candle_core::Tensor) -> bool {
    let flat = |t: &candle_core::Tensor| {
        t.to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
    };
    match (flat(a), flat(b)) {
        (Ok(x), Ok(y)) => x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
        _ => false,
    }
}
