//! RoBERTa (Liu et al.): BERT's architecture; positions count from
//! `padding_idx + 1` and skip padding, as transformers does.

use super::bert::{self, BertConfig};
use super::post_ln::PostLnEncoder;
use crate::layers::PositionIds;
use crate::Result;
use candle_nn::VarBuilder;

/// RoBERTa's config.json has BERT's fields; its pad token defaults to 1.
pub type RobertaConfig = BertConfig;

pub const DEFAULT_PAD_TOKEN_ID: u32 = 1;

pub fn load(vb: VarBuilder, cfg: &RobertaConfig) -> Result<PostLnEncoder> {
    let padding_idx = cfg.pad_token_id.unwrap_or(DEFAULT_PAD_TOKEN_ID);
    bert::load_with_positions(vb, cfg, PositionIds::SkipPadding { padding_idx })
}

/// The longest input: positions start after the padding index.
pub fn max_input_len(cfg: &RobertaConfig) -> usize {
    let padding_idx = cfg.pad_token_id.unwrap_or(DEFAULT_PAD_TOKEN_ID) as usize;
    cfg.max_position_embeddings.saturating_sub(padding_idx + 1)
}
