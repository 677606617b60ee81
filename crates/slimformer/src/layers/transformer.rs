use super::attention::AttentionNames;
use super::{Activation, Dropout, FeedForward, LayerNorm, SelfAttention};
use crate::rng::TrainRng;
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
    /// On the attention probabilities.
    pub attention_dropout: f32,
    /// On the attention block's output (DistilBERT has none there).
    pub attention_output_dropout: f32,
    /// On the feed-forward block's output.
    pub hidden_dropout: f32,
}

/// The post-LN layer of BERT, RoBERTa, ALBERT and DistilBERT:
/// `x = norm1(x + attn(x)); x = norm2(x + ffn(x))`.
#[derive(Debug, Clone)]
pub struct TransformerLayer {
    attention: SelfAttention,
    attention_norm: LayerNorm,
    ffn: FeedForward,
    output_norm: LayerNorm,
    attention_output_dropout: Dropout,
    hidden_dropout: Dropout,
}

impl TransformerLayer {
    pub fn load(vb: VarBuilder, names: &LayerNames, shape: &LayerShape) -> crate::Result<Self> {
        Self::load_parts(vb.clone(), vb, names, shape)
    }

    /// A layer whose attention block (attention and its LayerNorm) and feed-forward
    /// block (FFN and the output LayerNorm) live under different prefixes, for
    /// sharing one of them across layers.
    pub fn load_parts(
        vb: VarBuilder,
        ffn_vb: VarBuilder,
        names: &LayerNames,
        shape: &LayerShape,
    ) -> crate::Result<Self> {
        let attention_names = AttentionNames {
            query: names.query,
            key: names.key,
            value: names.value,
            output: names.attention_output,
        };
        let norm = |vb: &VarBuilder, name: &str| {
            LayerNorm::load(vb.pp(name), shape.hidden, shape.layer_norm_eps)
        };
        Ok(Self {
            attention: SelfAttention::load(
                &vb,
                &attention_names,
                shape.hidden,
                shape.heads,
                shape.attention_dropout,
            )?,
            attention_norm: norm(&vb, names.attention_norm)?,
            ffn: FeedForward::load(
                &ffn_vb,
                (names.ffn_up, names.ffn_down),
                shape.hidden,
                shape.intermediate,
                shape.activation,
                Dropout::default(),
            )?,
            output_norm: norm(&ffn_vb, names.output_norm)?,
            attention_output_dropout: Dropout::new(shape.attention_output_dropout),
            hidden_dropout: Dropout::new(shape.hidden_dropout),
        })
    }

    pub fn forward(
        &self,
        xs: &Tensor,
        attention_bias: &Tensor,
        train: Option<&TrainRng>,
    ) -> candle_core::Result<Tensor> {
        let attended = self.attention.forward(xs, attention_bias, train)?;
        self.after_attention(xs, &attended, train)
    }

    /// [`TransformerLayer::forward`], also returning the attention's
    /// log-probabilities [batch, heads, len, len].
    pub fn forward_keeping_attention(
        &self,
        xs: &Tensor,
        attention_bias: &Tensor,
        train: Option<&TrainRng>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (attended, log_probs) =
            self.attention
                .forward_keeping_log_probs(xs, attention_bias, train)?;
        Ok((self.after_attention(xs, &attended, train)?, log_probs))
    }

    /// The residual and LayerNorm around attention, then the feed-forward block.
    fn after_attention(
        &self,
        xs: &Tensor,
        attended: &Tensor,
        train: Option<&TrainRng>,
    ) -> candle_core::Result<Tensor> {
        let xs = add_norm(
            &self.attention_norm,
            &self.attention_output_dropout,
            xs,
            attended,
            train,
        )?;
        let ffn = self.ffn.forward(&xs, train)?;
        add_norm(&self.output_norm, &self.hidden_dropout, &xs, &ffn, train)
    }
}

/// LayerNorm(residual + dropout(branch)): one fused pass at inference, dropout and
/// the sum as one op in training.
fn add_norm(
    norm: &LayerNorm,
    dropout: &Dropout,
    residual: &Tensor,
    branch: &Tensor,
    train: Option<&TrainRng>,
) -> candle_core::Result<Tensor> {
    match train {
        None => norm.forward_residual(residual, branch),
        Some(_) => norm.forward(&dropout.add_to(residual, branch, train)?),
    }
}
