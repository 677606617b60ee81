//! What inference costs in memory, from a model's shapes: the figures behind the
//! server's memory budget and the bound documented in docs/RELIABILITY.md. Every
//! figure is an upper bound of what the fused inference path allocates (f32
//! activations; freed buffers reused by the allocator are not counted twice).

use crate::model::{FamilyConfig, Model};
use crate::models::Family;

const F32: u64 = 4;

/// A model's sizes, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryShape {
    pub hidden: u64,
    pub intermediate: u64,
    pub heads: u64,
    /// XLNet's relative attention materialises its scores: [rows, heads, len, len]
    /// terms. The other families' fused attention holds one row of scores per thread.
    pub quadratic_attention: bool,
    /// The weights in memory: f32 values, plus the int8 or bf16 copies the kernels
    /// pack for those precisions.
    pub weights: u64,
}

impl MemoryShape {
    pub fn of(model: &Model, parameters: usize, packed_bytes_per_weight: u64) -> Self {
        Self::from_config(
            &model.config,
            model.family(),
            parameters as u64 * (F32 + packed_bytes_per_weight),
        )
    }

    pub fn from_config(config: &FamilyConfig, family: Family, weights: u64) -> Self {
        MemoryShape {
            hidden: config.hidden_size() as u64,
            intermediate: config.intermediate_size() as u64,
            heads: config.attention_heads() as u64,
            quadratic_attention: family == Family::XLNet,
            weights,
        }
    }

    /// Peak activations of one forward pass over `tokens` padded tokens (rows ×
    /// length) of sequences `len` tokens long. The feed-forward block holds its input,
    /// the inner activation before and after GELU and its output beside the residual
    /// (2·I + 3·H values a token); attention holds its input, the three projections,
    /// the context and its output beside the residual (7·H); the larger of the two.
    pub fn forward_bytes(&self, tokens: u64, len: u64) -> u64 {
        let per_token = (2 * self.intermediate + 3 * self.hidden).max(7 * self.hidden);
        // Content and position scores (the latter over 2·len relative positions),
        // the segment term and the probabilities, per head.
        let scores = if self.quadratic_attention {
            5 * self.heads * len
        } else {
            0
        };
        tokens * (per_token + scores) * F32
    }

    /// The last hidden states of `tokens` tokens, held from the forward pass until
    /// their request's answer is built.
    pub fn hidden_bytes(&self, tokens: u64) -> u64 {
        tokens * self.hidden * F32
    }
}

/// Bytes of one value of an answer while it is built and sent: the f32 of the task's
/// output and its JSON text (up to 16 characters with its separator), with 4 to spare.
pub const ANSWER_BYTES_PER_VALUE: u64 = F32 + 16 + 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> MemoryShape {
        MemoryShape {
            hidden: 384,
            intermediate: 1536,
            heads: 12,
            quadratic_attention: false,
            weights: 0,
        }
    }

    #[test]
    fn the_feed_forward_block_is_the_peak_of_a_bert_layer() {
        // (2·1536 + 3·384) values of 4 bytes: 16,896 bytes a token.
        assert_eq!(minilm().forward_bytes(1, 512), 16_896);
        assert_eq!(minilm().forward_bytes(16_384, 512), 16_384 * 16_896);
    }

    #[test]
    fn xlnet_pays_for_its_scores_per_token_and_length() {
        let xlnet = MemoryShape {
            quadratic_attention: true,
            ..minilm()
        };
        let linear = minilm().forward_bytes(1024, 512);
        assert_eq!(
            xlnet.forward_bytes(1024, 512) - linear,
            1024 * 5 * 12 * 512 * 4
        );
        assert_eq!(minilm().hidden_bytes(10), 10 * 384 * 4);
    }
}
