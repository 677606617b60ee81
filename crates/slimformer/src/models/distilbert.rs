//! DistilBERT (Sanh et al.): BERT's layers under other names, no token types.

use super::post_ln::PostLnEncoder;
use crate::layers::{
    Activation, Embeddings, EmbeddingsNames, LayerNames, LayerShape, PositionIds, TransformerLayer,
};
use crate::Result;
use candle_nn::VarBuilder;
use serde::Deserialize;

/// transformers hard-codes DistilBERT's LayerNorm epsilon.
const LAYER_NORM_EPS: f64 = 1e-12;

/// `config.json` of DistilBERT, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::dim")]
    pub dim: usize,
    #[serde(default = "defaults::n_layers")]
    pub n_layers: usize,
    #[serde(default = "defaults::n_heads")]
    pub n_heads: usize,
    #[serde(default = "defaults::hidden_dim")]
    pub hidden_dim: usize,
    #[serde(default = "defaults::activation")]
    pub activation: Activation,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "defaults::dropout")]
    pub dropout: f32,
    #[serde(default = "defaults::dropout")]
    pub attention_dropout: f32,
    #[serde(default = "defaults::seq_classif_dropout")]
    pub seq_classif_dropout: f32,
}

mod defaults {
    use crate::layers::Activation;
    pub fn vocab_size() -> usize {
        30522
    }
    pub fn dim() -> usize {
        768
    }
    pub fn n_layers() -> usize {
        6
    }
    pub fn n_heads() -> usize {
        12
    }
    pub fn hidden_dim() -> usize {
        3072
    }
    pub fn activation() -> Activation {
        Activation::Gelu
    }
    pub fn dropout() -> f32 {
        0.1
    }
    pub fn seq_classif_dropout() -> f32 {
        0.2
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
}

const DISTILBERT_LAYER: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_output: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    ffn_up: "ffn.lin1",
    ffn_down: "ffn.lin2",
    output_norm: "output_layer_norm",
};

pub fn load(vb: VarBuilder, cfg: &DistilBertConfig) -> Result<PostLnEncoder> {
    let spec = EmbeddingsNames {
        vocab_size: cfg.vocab_size,
        max_positions: cfg.max_position_embeddings,
        type_vocab_size: None,
        size: cfg.dim,
        layer_norm_eps: LAYER_NORM_EPS,
        dropout: cfg.dropout,
    };
    // Sinusoidal position tables (`sinusoidal_pos_embds`) are stored in the
    // checkpoint like learned ones, so both load the same way.
    let embeddings = Embeddings::load(vb.pp("embeddings"), &spec, PositionIds::Absolute)?;
    let shape = LayerShape {
        hidden: cfg.dim,
        heads: cfg.n_heads,
        intermediate: cfg.hidden_dim,
        activation: cfg.activation,
        layer_norm_eps: LAYER_NORM_EPS,
        attention_dropout: cfg.attention_dropout,
        // transformers' DistilBERT drops out after the feed-forward block only.
        attention_output_dropout: 0.0,
        hidden_dropout: cfg.dropout,
    };
    let layers = (0..cfg.n_layers)
        .map(|i| {
            TransformerLayer::load(
                vb.pp(format!("transformer.layer.{i}")),
                &DISTILBERT_LAYER,
                &shape,
            )
        })
        .collect::<Result<_>>()?;
    Ok(PostLnEncoder::new(embeddings, layers))
}
