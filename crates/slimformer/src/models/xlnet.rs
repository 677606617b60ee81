//! XLNet (Yang et al.): no absolute positions, no embedding LayerNorm. Every layer
//! scores content (`ac`), relative position (`bd`, Transformer-XL style) and
//! "same segment or not" (`ef`) separately. This is the content stream of HF's
//! `XLNetModel` for `attn_type = "bi"`, without mems, perm_mask or target_mapping.
//! Tensors stay batch-first ([batch, heads, len, ...]) instead of HF's [len, batch].

use super::{Batch, Encoder};
use crate::layers::{softmax_last_dim, Activation, Dropout, FeedForward, LayerNorm};
use crate::rng::TrainRng;
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

/// `config.json` of XLNet, with transformers' defaults. Fields only pretraining or
/// the task heads use (mem_len, summary_*, ...) are left out.
#[derive(Debug, Clone, Deserialize)]
pub struct XLNetConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::d_model")]
    pub d_model: usize,
    #[serde(default = "defaults::n_layer")]
    pub n_layer: usize,
    #[serde(default = "defaults::n_head")]
    pub n_head: usize,
    /// transformers insists on `d_model / n_head`; absent means exactly that.
    pub d_head: Option<usize>,
    #[serde(default = "defaults::d_inner")]
    pub d_inner: usize,
    #[serde(default = "defaults::ff_activation")]
    pub ff_activation: Activation,
    /// Ignored, as transformers does: every layer has its own r_w/r_r/r_s biases.
    #[serde(default = "defaults::untie_r")]
    pub untie_r: bool,
    #[serde(default = "defaults::attn_type")]
    pub attn_type: String,
    #[serde(default)]
    pub bi_data: bool,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Relative distances are clamped to ±clamp_len when it is positive.
    #[serde(default = "defaults::clamp_len")]
    pub clamp_len: i64,
    /// Only changes the "uni" causal mask, which is not supported.
    #[serde(default)]
    pub same_length: bool,
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<u32>,
    /// Everywhere but the attention probabilities' own.
    #[serde(default = "defaults::dropout")]
    pub dropout: f32,
    #[serde(default = "defaults::dropout")]
    pub summary_last_dropout: f32,
}

mod defaults {
    use crate::layers::Activation;
    pub fn vocab_size() -> usize {
        32000
    }
    pub fn d_model() -> usize {
        1024
    }
    pub fn n_layer() -> usize {
        24
    }
    pub fn n_head() -> usize {
        16
    }
    pub fn d_inner() -> usize {
        4096
    }
    pub fn ff_activation() -> Activation {
        Activation::Gelu
    }
    pub fn untie_r() -> bool {
        true
    }
    pub fn attn_type() -> String {
        "bi".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn clamp_len() -> i64 {
        -1
    }
    pub fn dropout() -> f32 {
        0.1
    }
    pub fn pad_token_id() -> Option<u32> {
        Some(5)
    }
}

/// Positions are relative, so no input length is too long for the weights.
pub fn max_input_len(_cfg: &XLNetConfig) -> Option<usize> {
    None
}

/// A `[d_model, n_head, d_head]` projection as HF stores it, flattened to
/// `[d_model, n_head * d_head]` so that `x.matmul(w)` is HF's `ibh,hnd->ibnd`.
fn projection(vb: &VarBuilder, name: &str, cfg: &XLNetConfig, d_head: usize) -> Result<Tensor> {
    let w = vb.get((cfg.d_model, cfg.n_head, d_head), name)?;
    Ok(w.reshape((cfg.d_model, cfg.n_head * d_head))?)
}

/// HF's `XLNetRelativeAttention` (content stream) followed by its post-attention
/// residual + LayerNorm. Weights are kept as views (reshape/unsqueeze/permute) of the
/// loaded variables, never copies, so that optimiser updates to the vars show here.
#[derive(Debug, Clone)]
struct RelativeAttention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    r: Tensor,
    /// [n_head, 1, d_head], ready to broadcast over [batch, n_head, len, d_head].
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    r_s_bias: Tensor,
    /// [n_head, d_head, 2]: column 0 scores "same segment", column 1 "different".
    seg_embed: Tensor,
    norm: LayerNorm,
    n_head: usize,
    d_head: usize,
    dropout: Dropout,
}

impl RelativeAttention {
    fn load(vb: VarBuilder, cfg: &XLNetConfig, d_head: usize) -> Result<Self> {
        let bias = |name: &str| -> Result<Tensor> {
            Ok(vb.get((cfg.n_head, d_head), name)?.unsqueeze(1)?)
        };
        Ok(Self {
            q: projection(&vb, "q", cfg, d_head)?,
            k: projection(&vb, "k", cfg, d_head)?,
            v: projection(&vb, "v", cfg, d_head)?,
            o: projection(&vb, "o", cfg, d_head)?,
            r: projection(&vb, "r", cfg, d_head)?,
            r_w_bias: bias("r_w_bias")?,
            r_r_bias: bias("r_r_bias")?,
            r_s_bias: bias("r_s_bias")?,
            seg_embed: vb
                .get((2, cfg.n_head, d_head), "seg_embed")?
                .permute((1, 2, 0))?,
            norm: LayerNorm::load(vb.pp("layer_norm"), cfg.d_model, cfg.layer_norm_eps)?,
            n_head: cfg.n_head,
            d_head,
            dropout: Dropout::new(cfg.dropout),
        })
    }

    /// [batch, len, d_model] → [batch, n_head, len, d_head] through `w`.
    fn heads(&self, xs: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        Ok(xs
            .broadcast_matmul(w)?
            .reshape((b, l, self.n_head, self.d_head))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// The content stream: `h` [batch, len, d_model], `pos_emb` [2·len, d_model].
    fn forward(
        &self,
        h: &Tensor,
        pos_emb: &Tensor,
        seg_diff: &Tensor,
        bias: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<Tensor> {
        let q_head = self.heads(h, &self.q)?;
        let k_head_h = self.heads(h, &self.k)?;
        let v_head_h = self.heads(h, &self.v)?;
        let k_head_r = self.heads(&pos_emb.unsqueeze(0)?, &self.r)?;
        let attn_vec = self.rel_attn_core(
            &q_head, &k_head_h, &v_head_h, &k_head_r, seg_diff, bias, train,
        )?;
        self.post_attention(h, &attn_vec, train)
    }

    /// Two-stream attention (HF's branch with `g`): the content stream `h` as in
    /// [`Self::forward`] with `bias_h`, and the query stream `g` [batch, m, d_model],
    /// scattered to positions by `target_mapping` [batch, m, len] (f-type), attending
    /// to the content stream's keys/values with `bias_g`. Returns (h, g).
    #[allow(clippy::too_many_arguments)]
    fn forward_two_stream(
        &self,
        h: &Tensor,
        g: &Tensor,
        pos_emb: &Tensor,
        seg_diff: &Tensor,
        bias_h: &Tensor,
        bias_g: &Tensor,
        target_mapping: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<(Tensor, Tensor)> {
        let k_head_h = self.heads(h, &self.k)?;
        let v_head_h = self.heads(h, &self.v)?;
        let k_head_r = self.heads(&pos_emb.unsqueeze(0)?, &self.r)?;
        let q_head_h = self.heads(h, &self.q)?;
        let attn_h = self.rel_attn_core(
            &q_head_h, &k_head_h, &v_head_h, &k_head_r, seg_diff, bias_h, train,
        )?;
        let out_h = self.post_attention(h, &attn_h, train)?;
        // einsum("mbnd,mlb->lbnd"): [b, 1, len, m] @ [b, n, m, d] → [b, n, len, d].
        let q_head_g = self.heads(g, &self.q)?;
        let scatter = target_mapping.transpose(1, 2)?.unsqueeze(1)?.contiguous()?;
        let q_head_g = scatter.broadcast_matmul(&q_head_g)?;
        let attn_g = self.rel_attn_core(
            &q_head_g, &k_head_h, &v_head_h, &k_head_r, seg_diff, bias_g, train,
        )?;
        // einsum("lbnd,mlb->mbnd"): [b, 1, m, len] @ [b, n, len, d] → [b, n, m, d].
        let gather = target_mapping.unsqueeze(1)?.contiguous()?;
        let attn_g = gather.broadcast_matmul(&attn_g)?;
        let out_g = self.post_attention(g, &attn_g, train)?;
        Ok((out_h, out_g))
    }

    /// HF's `rel_attn_core`. The query heads come in separately from the key/value
    /// heads so that the query stream `g` of two-stream (permutation LM) attention
    /// can reuse it unchanged: project `g` with `self.q`, pass the content stream's
    /// `k_head_h`/`v_head_h`/`k_head_r` and a mask *without* the self-attending
    /// diagonal (HF's `attn_mask_g`), then [`Self::post_attention`] with residual `g`.
    ///
    /// Shapes: `q_head`, `k_head_h`, `v_head_h` [batch, n_head, len, d_head];
    /// `k_head_r` [1, n_head, 2·len, d_head]; `seg_diff` [batch, 1, len, len], 1.0
    /// where query and key are in different segments; `bias` additive, broadcastable
    /// to [batch, n_head, len, len]. Returns [batch, n_head, len, d_head].
    #[allow(clippy::too_many_arguments)]
    fn rel_attn_core(
        &self,
        q_head: &Tensor,
        k_head_h: &Tensor,
        v_head_h: &Tensor,
        k_head_r: &Tensor,
        seg_diff: &Tensor,
        bias: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<Tensor> {
        let klen = k_head_h.dim(2)?;
        let ac = q_head
            .broadcast_add(&self.r_w_bias)?
            .matmul(&k_head_h.t()?)?;
        let bd = q_head
            .broadcast_add(&self.r_r_bias)?
            .broadcast_matmul(&k_head_r.t()?)?;
        let bd = rel_shift(&bd, klen)?;
        // ef[i, j] = (q_i + r_s_bias)·seg_embed[s] with s = 1 if segments differ, else 0.
        let ef = q_head
            .broadcast_add(&self.r_s_bias)?
            .broadcast_matmul(&self.seg_embed.contiguous()?)?;
        let same = ef.narrow(D::Minus1, 0, 1)?;
        let delta = (ef.narrow(D::Minus1, 1, 1)? - &same)?;
        let ef = same.broadcast_add(&seg_diff.broadcast_mul(&delta)?)?;
        let scale = 1.0 / (self.d_head as f64).sqrt();
        let score = (((ac + bd)? + ef)? * scale)?.broadcast_add(bias)?;
        let prob = self.dropout.forward(&softmax_last_dim(&score)?, train)?;
        Ok(prob.matmul(v_head_h)?)
    }

    /// Output projection `o`, residual, LayerNorm.
    fn post_attention(
        &self,
        h: &Tensor,
        attn_vec: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<Tensor> {
        let (b, _, l, _) = attn_vec.dims4()?;
        let merged = attn_vec
            .transpose(1, 2)?
            .reshape((b, l, self.n_head * self.d_head))?;
        let out = self
            .dropout
            .forward(&merged.broadcast_matmul(&self.o.t()?)?, train)?;
        Ok(self.norm.forward(&(out + h)?)?)
    }
}

/// HF's `rel_shift_bnij`: turns scores against the positions `klen, klen-1, …,
/// -qlen+1` ([…, qlen, klen + qlen]) into scores against key j at distance i - j
/// ([…, qlen, klen]): out[i, j] = x[i, qlen - i + j], by the reshape trick.
fn rel_shift(x: &Tensor, klen: usize) -> Result<Tensor> {
    let (b, n, qlen, plen) = x.dims4()?;
    Ok(x.reshape((b, n, plen, qlen))?
        .narrow(2, 1, plen - 1)?
        .contiguous()?
        .reshape((b, n, qlen, plen - 1))?
        .narrow(3, 0, klen)?)
}

#[derive(Debug, Clone)]
struct XLNetLayer {
    attention: RelativeAttention,
    ff: FeedForward,
    ff_norm: LayerNorm,
    ff_dropout: Dropout,
}

impl XLNetLayer {
    fn load(vb: VarBuilder, cfg: &XLNetConfig, d_head: usize) -> Result<Self> {
        let ff = vb.pp("ff");
        Ok(Self {
            attention: RelativeAttention::load(vb.pp("rel_attn"), cfg, d_head)?,
            ff: FeedForward::load(
                &ff,
                ("layer_1", "layer_2"),
                cfg.d_model,
                cfg.d_inner,
                cfg.ff_activation,
                Dropout::new(cfg.dropout),
            )?,
            ff_norm: LayerNorm::load(ff.pp("layer_norm"), cfg.d_model, cfg.layer_norm_eps)?,
            ff_dropout: Dropout::new(cfg.dropout),
        })
    }

    fn forward(
        &self,
        h: &Tensor,
        pos_emb: &Tensor,
        seg_diff: &Tensor,
        bias: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<Tensor> {
        let h = self.attention.forward(h, pos_emb, seg_diff, bias, train)?;
        let ff = self
            .ff_dropout
            .forward(&self.ff.forward(&h, train)?, train)?;
        Ok(self.ff_norm.forward(&(ff + h)?)?)
    }
}

impl XLNetLayer {
    #[allow(clippy::too_many_arguments)]
    fn forward_two_stream(
        &self,
        h: &Tensor,
        g: &Tensor,
        pos_emb: &Tensor,
        seg_diff: &Tensor,
        bias_h: &Tensor,
        bias_g: &Tensor,
        target_mapping: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<(Tensor, Tensor)> {
        let (h, g) = self.attention.forward_two_stream(
            h,
            g,
            pos_emb,
            seg_diff,
            bias_h,
            bias_g,
            target_mapping,
            train,
        )?;
        let ff = |x: Tensor| -> Result<Tensor> {
            let y = self
                .ff_dropout
                .forward(&self.ff.forward(&x, train)?, train)?;
            Ok(self.ff_norm.forward(&(y + x)?)?)
        };
        // HF runs the feed-forward on g before h; the order matters for dropout draws.
        let g = ff(g)?;
        let h = ff(h)?;
        Ok((h, g))
    }
}

#[derive(Debug, Clone)]
pub struct XLNet {
    word_embedding: Embedding,
    /// [1, 1, d_model]: the query stream's input for permutation LM.
    mask_emb: Tensor,
    layers: Vec<XLNetLayer>,
    d_model: usize,
    clamp_len: i64,
    dropout: Dropout,
}

impl XLNet {
    pub fn load(vb: VarBuilder, cfg: &XLNetConfig) -> Result<Self> {
        if cfg.attn_type != "bi" {
            return Err(Error::Config(format!(
                "XLNet attn_type {:?} is not supported (only \"bi\")",
                cfg.attn_type
            )));
        }
        if cfg.bi_data {
            return Err(Error::Config(
                "XLNet bi_data = true is not supported".into(),
            ));
        }
        if cfg.n_head == 0
            || !cfg.d_model.is_multiple_of(cfg.n_head)
            || !cfg.d_model.is_multiple_of(2)
        {
            return Err(Error::Config(format!(
                "XLNet d_model {} must be even and a multiple of n_head {}",
                cfg.d_model, cfg.n_head
            )));
        }
        let d_head = cfg.d_model / cfg.n_head;
        if cfg.d_head.is_some_and(|d| d != d_head) {
            return Err(Error::Config(format!(
                "XLNet d_head {:?} must equal d_model / n_head = {d_head}",
                cfg.d_head
            )));
        }
        let layers = (0..cfg.n_layer)
            .map(|i| XLNetLayer::load(vb.pp(format!("layer.{i}")), cfg, d_head))
            .collect::<Result<_>>()?;
        Ok(Self {
            word_embedding: candle_nn::embedding(
                cfg.vocab_size,
                cfg.d_model,
                vb.pp("word_embedding"),
            )?,
            mask_emb: vb.get((1, 1, cfg.d_model), "mask_emb")?,
            layers,
            d_model: cfg.d_model,
            clamp_len: cfg.clamp_len,
            dropout: Dropout::new(cfg.dropout),
        })
    }

    pub fn mask_emb(&self) -> &Tensor {
        &self.mask_emb
    }

    /// HF's `relative_positional_encoding` for "bi": [sin, cos] of the distances
    /// len, len-1, …, -len+1, as [2·len, d_model]. Computed in f32 exactly as HF does.
    fn relative_positions(&self, len: usize, device: &Device, dtype: DType) -> Result<Tensor> {
        let d = self.d_model as f32;
        let inv_freq: Vec<f32> = (0..self.d_model)
            .step_by(2)
            .map(|f| 1.0 / 10000f32.powf(f as f32 / d))
            .collect();
        let mut pos: Vec<f32> = (0..2 * len).map(|c| len as f32 - c as f32).collect();
        if self.clamp_len > 0 {
            let c = self.clamp_len as f32;
            pos.iter_mut().for_each(|p| *p = p.clamp(-c, c));
        }
        let mut table = Vec::with_capacity(2 * len * self.d_model);
        for p in pos {
            table.extend(inv_freq.iter().map(|f| (p * f).sin()));
            table.extend(inv_freq.iter().map(|f| (p * f).cos()));
        }
        Ok(Tensor::from_vec(table, (2 * len, self.d_model), device)?.to_dtype(dtype)?)
    }
}

impl XLNet {
    /// Two-stream attention for permutation LM, as HF's `XLNetModel` with `perm_mask`
    /// and `target_mapping` (no mems): `perm_mask` [batch, len, len], 1 where token i
    /// may not attend to token j; `target_mapping` [batch, m, len], one-hot rows
    /// naming the m positions to predict (all-zero rows pad). Returns the query
    /// stream's last layer [batch, m, d_model] (after the output dropout).
    pub fn forward_two_stream(
        &self,
        batch: &Batch,
        perm_mask: &Tensor,
        target_mapping: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<Tensor> {
        let embedded = self.word_embedding.forward(&batch.input_ids)?;
        let mut h = self.dropout.forward(&embedded, train)?;
        let (b, l, _) = h.dims3()?;
        let (device, dtype) = (h.device().clone(), h.dtype());
        let m = target_mapping.dim(1)?;
        let target_mapping = target_mapping.to_dtype(dtype)?;
        let mask_emb = self.mask_emb.broadcast_as((b, m, self.d_model))?;
        let mut g = self.dropout.forward(&mask_emb.contiguous()?, train)?;
        let (bias_h, bias_g) = two_stream_biases(&batch.attention_mask, perm_mask, dtype)?;
        let types = batch.token_type_ids.to_dtype(DType::U32)?;
        let seg_diff = types
            .reshape((b, 1, l, 1))?
            .broadcast_ne(&types.reshape((b, 1, 1, l))?)?
            .to_dtype(dtype)?;
        let pos_emb = self.relative_positions(l, &device, dtype)?;
        let pos_emb = self.dropout.forward(&pos_emb, train)?;
        for layer in &self.layers {
            (h, g) = layer.forward_two_stream(
                &h,
                &g,
                &pos_emb,
                &seg_diff,
                &bias_h,
                &bias_g,
                &target_mapping,
                train,
            )?;
        }
        Ok(self.dropout.forward(&g, train)?)
    }
}

/// Which keys each query may not see in two-stream attention, as HF builds them:
/// the query stream hides j from i when j is padding or `perm_mask[i, j]` is set
/// (`attn_mask`); the content stream hides the same except i itself (`non_tgt_mask`).
/// Returned as 0/1 f32 [batch, len, len] (content, query).
pub fn two_stream_masks(attention_mask: &Tensor, perm_mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, l) = attention_mask.dims2()?;
    let padding = attention_mask
        .to_dtype(DType::F32)?
        .eq(0f32)?
        .to_dtype(DType::F32)?
        .reshape((b, 1, l))?;
    let query = padding
        .broadcast_add(&perm_mask.to_dtype(DType::F32)?)?
        .gt(0f32)?
        .to_dtype(DType::F32)?;
    let eye = Tensor::eye(l, DType::F32, attention_mask.device())?;
    let content = query.broadcast_sub(&eye)?.gt(0f32)?.to_dtype(DType::F32)?;
    Ok((content, query))
}

/// [`two_stream_masks`] as additive biases [batch, 1, len, len] (−1e30 where hidden).
fn two_stream_biases(
    attention_mask: &Tensor,
    perm_mask: &Tensor,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let (content, query) = two_stream_masks(attention_mask, perm_mask)?;
    let big = if dtype == DType::F16 { 65500.0 } else { 1e30 };
    let bias = |m: Tensor| -> Result<Tensor> { Ok((m.unsqueeze(1)?.to_dtype(dtype)? * -big)?) };
    Ok((bias(content)?, bias(query)?))
}

/// HF's `non_tgt_mask` as an additive bias [batch, 1, len, len]: key j is hidden
/// from query i when j is padding and j ≠ i (every token, padding too, sees itself).
/// HF subtracts 1e30 (65500 in f16); both make the softmax weight exactly 0.
fn attention_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let padding = mask.to_dtype(DType::F32)?.eq(0f32)?.to_dtype(DType::F32)?;
    let eye = Tensor::eye(l, DType::F32, mask.device())?;
    let hidden = padding
        .reshape((b, 1, 1, l))?
        .broadcast_sub(&eye)?
        .gt(0f32)?;
    let big = if dtype == DType::F16 { 65500.0 } else { 1e30 };
    Ok((hidden.to_dtype(dtype)? * -big)?)
}

impl Encoder for XLNet {
    fn forward_t(&self, batch: &Batch, train: Option<&TrainRng>) -> Result<Tensor> {
        let embedded = self.word_embedding.forward(&batch.input_ids)?;
        let mut h = self.dropout.forward(&embedded, train)?;
        let (b, l, _) = h.dims3()?;
        let (device, dtype) = (h.device().clone(), h.dtype());
        let bias = attention_bias(&batch.attention_mask, dtype)?;
        // Token types are compared for equality only (XLNet's <cls> is type 2, padding 3).
        let types = batch.token_type_ids.to_dtype(DType::U32)?;
        let seg_diff = types
            .reshape((b, 1, l, 1))?
            .broadcast_ne(&types.reshape((b, 1, 1, l))?)?
            .to_dtype(dtype)?;
        let pos_emb = self.relative_positions(l, &device, dtype)?;
        let pos_emb = self.dropout.forward(&pos_emb, train)?;
        for layer in &self.layers {
            h = layer.forward(&h, &pos_emb, &seg_diff, &bias, train)?;
        }
        Ok(self.dropout.forward(&h, train)?)
    }

    fn word_embeddings(&self) -> &Tensor {
        self.word_embedding.embeddings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config(extra: &str) -> XLNetConfig {
        let json = format!(
            r#"{{"vocab_size": 50, "d_model": 16, "n_layer": 2, "n_head": 4, "d_inner": 32{extra}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn u32s(rows: &[&[u32]]) -> Tensor {
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    }

    /// Random weights: load once to create every variable, overwrite them all.
    fn random_model(cfg: &XLNetConfig) -> Result<XLNet> {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        XLNet::load(vb.clone(), cfg)?;
        for var in varmap.data().lock().unwrap().values() {
            var.set(&Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu)?)?;
        }
        XLNet::load(vb, cfg)
    }

    #[test]
    fn left_padding_leaves_real_tokens_unchanged() -> Result<()> {
        let model = random_model(&tiny_config(r#", "clamp_len": 4"#))?;
        // XLNet pads on the left; <cls> has type 2 and padding type 3.
        let padded = Batch {
            input_ids: u32s(&[
                &[5, 5, 10, 11, 12, 13, 4, 3],
                &[20, 21, 22, 23, 24, 25, 4, 3],
            ]),
            attention_mask: u32s(&[&[0, 0, 1, 1, 1, 1, 1, 1], &[1; 8]]),
            token_type_ids: u32s(&[&[3, 3, 0, 0, 1, 1, 1, 2], &[0, 0, 0, 0, 1, 1, 1, 2]]),
        };
        let alone = Batch {
            input_ids: u32s(&[&[10, 11, 12, 13, 4, 3]]),
            attention_mask: u32s(&[&[1; 6]]),
            token_type_ids: u32s(&[&[0, 0, 1, 1, 1, 2]]),
        };
        let batched = model.forward(&padded)?.get(0)?.narrow(0, 2, 6)?;
        let single = model.forward(&alone)?.get(0)?;
        let diff = (batched - single)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "left padding changed real tokens by {diff}");
        Ok(())
    }

    #[test]
    fn rejects_unsupported_attention() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let err = XLNet::load(vb, &tiny_config(r#", "attn_type": "uni""#)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
}
