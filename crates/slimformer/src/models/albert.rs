//! ALBERT (Lan et al.): factorized embeddings (V×E + E×H) and cross-layer
//! parameter sharing through `num_hidden_groups` × `inner_group_num` layers.

use super::{Batch, Encoder, LayerStates};
use crate::layers::{
    attention_bias, linear, Activation, Embeddings, EmbeddingsNames, LayerNames, LayerShape,
    Linear, PositionIds, TransformerLayer,
};
use crate::rng::TrainRng;
use crate::{Error, Result};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

/// `config.json` of ALBERT, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct AlbertConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::embedding_size")]
    pub embedding_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::one")]
    pub num_hidden_groups: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::one")]
    pub inner_group_num: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub hidden_dropout_prob: f32,
    #[serde(default)]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "defaults::classifier_dropout_prob")]
    pub classifier_dropout_prob: f32,
    /// slimformer's extension: only this block of each layer is shared across the
    /// group (`attention` or `ffn`); each layer's other block lives under
    /// `encoder.slimformer_layers.{l}`. Absent: whole layers are shared, as in HF.
    #[serde(default)]
    pub slimformer_shared: Option<SharedBlock>,
}

/// The block of a layer that slimformer's partial sharing ties across layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedBlock {
    Attention,
    Ffn,
}

mod defaults {
    use crate::layers::Activation;
    pub fn vocab_size() -> usize {
        30000
    }
    pub fn embedding_size() -> usize {
        128
    }
    pub fn hidden_size() -> usize {
        4096
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn one() -> usize {
        1
    }
    pub fn num_attention_heads() -> usize {
        64
    }
    pub fn intermediate_size() -> usize {
        16384
    }
    pub fn hidden_act() -> Activation {
        Activation::GeluTanh
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn classifier_dropout_prob() -> f32 {
        0.1
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
}

const ALBERT_LAYER: LayerNames = LayerNames {
    query: "attention.query",
    key: "attention.key",
    value: "attention.value",
    attention_output: "attention.dense",
    attention_norm: "attention.LayerNorm",
    ffn_up: "ffn",
    ffn_down: "ffn_output",
    output_norm: "full_layer_layer_norm",
};

#[derive(Debug, Clone)]
pub struct Albert {
    embeddings: Embeddings,
    /// E → H, the second factor of the factorized embedding.
    embedding_projection: Linear,
    /// `steps[l]`: the layers run at depth `l` (`inner_group_num` of them); shared
    /// layers are clones holding the same tensors.
    steps: Vec<Vec<TransformerLayer>>,
}

impl Albert {
    pub fn load(vb: VarBuilder, cfg: &AlbertConfig) -> Result<Self> {
        if cfg.num_hidden_groups == 0
            || !cfg.num_hidden_layers.is_multiple_of(cfg.num_hidden_groups)
        {
            return Err(Error::Config(format!(
                "num_hidden_layers {} is not a multiple of num_hidden_groups {}",
                cfg.num_hidden_layers, cfg.num_hidden_groups
            )));
        }
        let spec = EmbeddingsNames {
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
            type_vocab_size: Some(cfg.type_vocab_size),
            size: cfg.embedding_size,
            layer_norm_eps: cfg.layer_norm_eps,
            dropout: cfg.hidden_dropout_prob,
        };
        let embeddings = Embeddings::load(vb.pp("embeddings"), &spec, PositionIds::Absolute)?;
        let encoder = vb.pp("encoder");
        let embedding_projection = linear(
            &encoder,
            "embedding_hidden_mapping_in",
            cfg.embedding_size,
            cfg.hidden_size,
        )?;
        let shape = LayerShape {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            activation: cfg.hidden_act,
            layer_norm_eps: cfg.layer_norm_eps,
            attention_dropout: cfg.attention_probs_dropout_prob,
            attention_output_dropout: cfg.hidden_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
        };
        let layers_per_group = cfg.num_hidden_layers / cfg.num_hidden_groups;
        let steps = match cfg.slimformer_shared {
            None => {
                let groups = (0..cfg.num_hidden_groups)
                    .map(|g| {
                        (0..cfg.inner_group_num)
                            .map(|j| {
                                let vb = encoder
                                    .pp(format!("albert_layer_groups.{g}.albert_layers.{j}"));
                                TransformerLayer::load(vb, &ALBERT_LAYER, &shape)
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                // Transformers' mapping: consecutive blocks of layers share one group.
                (0..cfg.num_hidden_layers)
                    .map(|l| groups[l / layers_per_group].clone())
                    .collect()
            }
            Some(block) => {
                if cfg.inner_group_num != 1 {
                    return Err(Error::Config(
                        "slimformer_shared needs inner_group_num 1".into(),
                    ));
                }
                (0..cfg.num_hidden_layers)
                    .map(|l| {
                        let group = l / layers_per_group;
                        let shared =
                            encoder.pp(format!("albert_layer_groups.{group}.albert_layers.0"));
                        let own = encoder.pp(format!("slimformer_layers.{l}"));
                        let (attention, ffn) = match block {
                            SharedBlock::Attention => (shared, own),
                            SharedBlock::Ffn => (own, shared),
                        };
                        Ok(vec![TransformerLayer::load_parts(
                            attention,
                            ffn,
                            &ALBERT_LAYER,
                            &shape,
                        )?])
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Self {
            embeddings,
            embedding_projection,
            steps,
        })
    }
}

impl Albert {
    /// The projected embeddings and the attention bias every layer takes.
    fn embed(&self, batch: &Batch, train: Option<&TrainRng>) -> Result<(Tensor, Tensor)> {
        let embedded = self
            .embeddings
            .forward(&batch.input_ids, &batch.token_type_ids, train)?;
        let xs = self.embedding_projection.forward(&embedded)?;
        let bias = attention_bias(&batch.attention_mask, xs.dtype())?;
        Ok((xs, bias))
    }
}

impl Encoder for Albert {
    fn forward_t(&self, batch: &Batch, train: Option<&TrainRng>) -> Result<Tensor> {
        let (mut xs, bias) = self.embed(batch, train)?;
        for step in &self.steps {
            for layer in step {
                xs = layer.forward(&xs, &bias, train)?;
            }
        }
        Ok(xs)
    }

    fn word_embeddings(&self) -> &Tensor {
        self.embeddings.word_embeddings()
    }

    fn forward_layers(
        &self,
        batch: &Batch,
        train: Option<&TrainRng>,
        attention: bool,
    ) -> Result<LayerStates> {
        let (xs, bias) = self.embed(batch, train)?;
        // Each layer run counts once: a shared layer once for every time it runs.
        LayerStates::run(xs, self.steps.iter().flatten(), &bias, train, attention)
    }
}
