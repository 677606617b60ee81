use super::fused::Attention;
use super::{fast, linear, softmax_last_dim, Dropout, Linear};
use crate::rng::TrainRng;
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

/// Multi-head scaled dot-product self-attention with query/key/value/output projections.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    num_heads: usize,
    head_dim: usize,
    probs_dropout: Dropout,
}

/// Names of the four projections under the attention's `VarBuilder`.
pub struct AttentionNames<'a> {
    pub query: &'a str,
    pub key: &'a str,
    pub value: &'a str,
    pub output: &'a str,
}

impl SelfAttention {
    pub fn load(
        vb: &VarBuilder,
        names: &AttentionNames,
        hidden: usize,
        num_heads: usize,
        probs_dropout: f32,
    ) -> crate::Result<Self> {
        if num_heads == 0 || !hidden.is_multiple_of(num_heads) {
            return Err(crate::Error::Config(format!(
                "hidden size {hidden} is not a multiple of the number of attention heads {num_heads}"
            )));
        }
        Ok(Self {
            query: linear(vb, names.query, hidden, hidden)?,
            key: linear(vb, names.key, hidden, hidden)?,
            value: linear(vb, names.value, hidden, hidden)?,
            output: linear(vb, names.output, hidden, hidden)?,
            num_heads,
            head_dim: hidden / num_heads,
            probs_dropout: Dropout::new(probs_dropout),
        })
    }

    /// `xs`: [batch, len, hidden]; `bias`: additive mask broadcastable to
    /// [batch, heads, len, len] (see [`attention_bias`]).
    pub fn forward(
        &self,
        xs: &Tensor,
        bias: &Tensor,
        train: Option<&TrainRng>,
    ) -> candle_core::Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        if train.is_none() {
            if let Some(context) = self.fused(xs, bias)? {
                return self.output.forward(&context);
            }
        }
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.query.forward(xs)?)?;
        let k = heads(self.key.forward(xs)?)?;
        let v = heads(self.value.forward(xs)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let probs = self
            .probs_dropout
            .forward(&softmax_last_dim(&scores)?, train)?;
        let context =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, l, self.num_heads * self.head_dim))?;
        self.output.forward(&context)
    }

    /// The context in one fused pass, where nothing is trained and the mask is
    /// one key bias per sequence ([batch, 1, 1, len]); `None` otherwise.
    fn fused(&self, xs: &Tensor, bias: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, l, _) = xs.dims3()?;
        if !fast::usable(xs) || bias.dims() != [b, 1, 1, l] || !fast::usable(bias) {
            return Ok(None);
        }
        let q = self.query.forward(xs)?;
        let k = self.key.forward(xs)?;
        let v = self.value.forward(xs)?;
        if ![&q, &k, &v].iter().all(|t| fast::usable(t)) {
            return Ok(None);
        }
        let op = Attention {
            bias: bias.flatten_all()?.to_vec1::<f32>()?,
            heads: self.num_heads,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        };
        Ok(Some(q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &op,
        )?))
    }
}

/// Turns a [batch, len] attention mask (1 = token, 0 = padding) into the additive
/// bias [batch, 1, 1, len] that attention adds to its scores.
pub fn attention_bias(mask: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let keep = mask.to_dtype(dtype)?;
    // transformers uses the dtype's minimum; any large negative gives the same softmax.
    let bias = ((keep - 1.0)? * f32::MAX as f64)?;
    bias.reshape((b, 1, 1, l))
}
