use super::attention_train;
use super::dropout::mask;
use super::fused::Attention;
use super::{fast, linear, Dropout, Linear};
use crate::rng::TrainRng;
use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;
use std::sync::{Arc, OnceLock};

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
    /// At inference, the three projections as one (their weights stacked): one
    /// product, one pass over the input (int8 quantizes it once, not three times).
    /// Built at the first call; `None` where the weights cannot be stacked.
    qkv: Arc<OnceLock<Option<Linear>>>,
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
            qkv: Arc::default(),
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
        let (q, k, v) = (
            self.query.forward(xs)?,
            self.key.forward(xs)?,
            self.value.forward(xs)?,
        );
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let dropout = self.probs_dropout.draw(train);
        let context = if [&q, &k, &v, bias]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
            && bias.dims() == [b, 1, 1, l]
            && fast::enabled()
        {
            attention_train::attend(&q, &k, &v, bias, self.num_heads, scale as f32, dropout)?
        } else {
            composed(&q, &k, &v, bias, self.num_heads, scale, dropout)?
        };
        self.output.forward(&context)
    }

    /// [`SelfAttention::forward`] through candle's composed ops, also returning the
    /// attention's log-probabilities [batch, heads, len, len] (before dropout), for
    /// losses on the attention distribution.
    pub fn forward_keeping_log_probs(
        &self,
        xs: &Tensor,
        bias: &Tensor,
        train: Option<&TrainRng>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (q, k, v) = (
            self.query.forward(xs)?,
            self.key.forward(xs)?,
            self.value.forward(xs)?,
        );
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = attention_scores(&q, &k, bias, self.num_heads, scale)?;
        let log_probs = candle_nn::ops::log_softmax(&scores, D::Minus1)?;
        let context = attend_values(
            &log_probs.exp()?,
            &v,
            self.num_heads,
            self.probs_dropout.draw(train),
        )?;
        Ok((self.output.forward(&context)?, log_probs))
    }

    /// The context in one fused pass, where nothing is trained and the mask is
    /// one key bias per sequence ([batch, 1, 1, len]); `None` otherwise.
    fn fused(&self, xs: &Tensor, bias: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, l, _) = xs.dims3()?;
        if !fast::usable(xs) || bias.dims() != [b, 1, 1, l] || !fast::usable(bias) {
            return Ok(None);
        }
        let projections = [&self.query, &self.key, &self.value];
        // Weights being trained change at every step: never stack those.
        if projections
            .iter()
            .any(|p| p.weight().track_op() || p.bias().is_some_and(|b| b.track_op()))
        {
            return Ok(None);
        }
        let qkv = match self.qkv.get_or_init(|| stack(projections).ok().flatten()) {
            Some(qkv) => qkv.forward(xs)?,
            None => Tensor::cat(
                &[
                    &self.query.forward(xs)?,
                    &self.key.forward(xs)?,
                    &self.value.forward(xs)?,
                ],
                2,
            )?,
        };
        if !fast::usable(&qkv) {
            return Ok(None);
        }
        let op = Attention {
            bias: bias.flatten_all()?.to_vec1::<f32>()?,
            heads: self.num_heads,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            bf16: super::precision() != super::Precision::Fp32,
        };
        Ok(Some(qkv.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The attention context of q, k, v ([batch, len, heads·d]) from candle's ops:
/// dropout(softmax(scale·QKᵀ + bias))·V, for any dtype, device or bias shape, and as
/// the stock path under `SLIMFORMER_CANDLE_OPS=1`.
pub(super) fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    heads: usize,
    scale: f64,
    dropout: Option<(f32, u64)>,
) -> candle_core::Result<Tensor> {
    let scores = attention_scores(q, k, bias, heads, scale)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    attend_values(&probs, v, heads, dropout)
}

/// [batch, len, heads·d] → [batch, heads, len, d].
fn split_heads(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, l, width) = t.dims3()?;
    t.reshape((b, l, heads, width / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// scale·QKᵀ + bias, [batch, heads, len, len].
fn attention_scores(
    q: &Tensor,
    k: &Tensor,
    bias: &Tensor,
    heads: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let scores = split_heads(q, heads)?.matmul(&split_heads(k, heads)?.t()?)?;
    (scores * scale)?.broadcast_add(bias)
}

/// dropout(probs)·V back to [batch, len, heads·d].
fn attend_values(
    probs: &Tensor,
    v: &Tensor,
    heads: usize,
    dropout: Option<(f32, u64)>,
) -> candle_core::Result<Tensor> {
    let (b, l, width) = v.dims3()?;
    let probs = match dropout {
        Some((p, seed)) => probs.mul(&mask(probs, p, seed)?)?,
        None => probs.clone(),
    };
    probs
        .matmul(&split_heads(v, heads)?)?
        .transpose(1, 2)?
        .reshape((b, l, width))
}

/// One linear layer computing the three projections side by side; `None` unless all
/// three have a bias or none has.
fn stack(projections: [&Linear; 3]) -> candle_core::Result<Option<Linear>> {
    let weight = Tensor::cat(&projections.map(Linear::weight), 0)?;
    let biases: Vec<&Tensor> = projections.iter().filter_map(|p| p.bias()).collect();
    let bias = match biases.len() {
        0 => None,
        3 => Some(Tensor::cat(&biases, 0)?),
        _ => return Ok(None),
    };
    Ok(Some(Linear::new(weight, bias)))
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
