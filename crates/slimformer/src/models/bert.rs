//! BERT (Devlin et al.): absolute positions, token types, post-LN layers.
//! RoBERTa reuses it with padding-aware positions (see `roberta.rs`); the
//! encoder itself is the shared [`PostLnEncoder`].

use super::post_ln::PostLnEncoder;
use crate::layers::{
    Activation, Embeddings, EmbeddingsNames, LayerNames, LayerShape, PositionIds, TransformerLayer,
};
use crate::{Error, Result};
use candle_nn::VarBuilder;
use serde::Deserialize;

/// `config.json` of BERT and RoBERTa, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f32,
    /// Before the classifier; `None` means `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f32>,
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
}

mod defaults {
    use crate::layers::Activation;
    pub fn vocab_size() -> usize {
        30522
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn hidden_act() -> Activation {
        Activation::Gelu
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn dropout() -> f32 {
        0.1
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
}

pub(crate) const BERT_LAYER: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    ffn_up: "intermediate.dense",
    ffn_down: "output.dense",
    output_norm: "output.LayerNorm",
};

impl BertConfig {
    pub(crate) fn layer_shape(&self) -> LayerShape {
        LayerShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            activation: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            attention_dropout: self.attention_probs_dropout_prob,
            attention_output_dropout: self.hidden_dropout_prob,
            hidden_dropout: self.hidden_dropout_prob,
        }
    }
}

pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<PostLnEncoder> {
    load_with_positions(vb, cfg, PositionIds::Absolute)
}

pub(crate) fn load_with_positions(
    vb: VarBuilder,
    cfg: &BertConfig,
    positions: PositionIds,
) -> Result<PostLnEncoder> {
    if cfg.position_embedding_type != "absolute" {
        return Err(Error::Config(format!(
            "position_embedding_type {:?} is not supported (only \"absolute\")",
            cfg.position_embedding_type
        )));
    }
    let spec = EmbeddingsNames {
        vocab_size: cfg.vocab_size,
        max_positions: cfg.max_position_embeddings,
        type_vocab_size: Some(cfg.type_vocab_size),
        size: cfg.hidden_size,
        layer_norm_eps: cfg.layer_norm_eps,
        dropout: cfg.hidden_dropout_prob,
    };
    let embeddings = Embeddings::load(vb.pp("embeddings"), &spec, positions)?;
    let shape = cfg.layer_shape();
    let layers = (0..cfg.num_hidden_layers)
        .map(|i| TransformerLayer::load(vb.pp(format!("encoder.layer.{i}")), &BERT_LAYER, &shape))
        .collect::<Result<_>>()?;
    Ok(PostLnEncoder::new(embeddings, layers))
}
