use super::attention::AttentionNames;
use super::{Activation, FeedForward, LayerNorm, SelfAttention};
use candle_core::Tensor;
use candle_nn::VarBuilder;

/// Tensor names of one post-LayerNorm transformer layer, relative to the layer.
pub struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub ffn_up: &'static str,
    pub ffn_down: &'static str,
    pub output_norm: &'static str,
}

/// Sizes of one transformer layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

/// The post-LN layer of BERT, RoBERTa, ALBERT and DistilBERT:
/// `x = norm1(x + attn(x)); x = norm2(x + ffn(x))`.
#[derive(Debug, Clone)]
pub struct TransformerLayer {
    attention: SelfAttention,
    attention_norm: LayerNorm,
    ffn: FeedForward,
    output_norm: LayerNorm,
}

impl TransformerLayer {
    pub fn load(vb: VarBuilder, names: &LayerNames, shape: &LayerShape) -> crate::Result<Self> {
        let attention_names = AttentionNames {
            query: names.query,
            key: names.key,
            value: names.value,
            output: names.attention_output,
        };
        Ok(Self {
            attention: SelfAttention::load(&vb, &attention_names, shape.hidden, shape.heads)?,
            attention_norm: LayerNorm::load(
                vb.pp(names.attention_norm),
                shape.hidden,
                shape.layer_norm_eps,
            )?,
            ffn: FeedForward::load(
                &vb,
                names.ffn_up,
                names.ffn_down,
                shape.hidden,
                shape.intermediate,
                shape.activation,
            )?,
            output_norm: LayerNorm::load(
                vb.pp(names.output_norm),
                shape.hidden,
                shape.layer_norm_eps,
            )?,
        })
    }

    pub fn forward(&self, xs: &Tensor, attention_bias: &Tensor) -> candle_core::Result<Tensor> {
        let attended = self.attention.forward(xs, attention_bias)?;
        let xs = self.attention_norm.forward(&(xs + attended)?)?;
        let ffn = self.ffn.forward(&xs)?;
        self.output_norm.forward(&(xs + ffn)?)
    }
}
