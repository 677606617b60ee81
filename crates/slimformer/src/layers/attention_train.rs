//! Self-attention for training as one op: context = dropout(softmax(scale·QKᵀ +
//! bias))·V per head, with its backward, reading Q, K and V in the linear layers'
//! [batch, len, heads·head_dim] layout. Composed from candle's ops it was about fifteen
//! graph nodes per layer: three head-major copies of Q, K and V and their backward
//! copies, two batched products of tiny matrices (one per sequence and head), the
//! probabilities, the transpose back; and for each node's input candle's backward
//! zero-fills a gradient and adds to it. The backward recomputes the probabilities
//! (a head's scores are len × len × head_dim of work) instead of storing them, and
//! redraws the dropout mask from its seed (`dropout::mask_factors`, indexed as the composed
//! path's mask tensor is, so both paths draw the same mask).

use super::dropout::mask_factors;
use super::fast::contiguous_f32;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;
use slimformer_kernels::math::{lane_dot, softmax_in_place};

/// The attention context [batch, len, heads·head_dim] of q, k, v (same layout);
/// `bias`: [batch, 1, 1, len] (the padding mask); `dropout`: the drop probability of
/// the probabilities and its mask's seed. f32 on the CPU, differentiable in q, k, v.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    heads: usize,
    scale: f32,
    dropout: Option<(f32, u64)>,
) -> candle_core::Result<Tensor> {
    let op = TrainedAttention {
        bias: bias.flatten_all()?.to_vec1::<f32>()?,
        heads,
        scale,
        keep: dropout.map(|(p, seed)| (1.0 - p, seed)),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct TrainedAttention {
    /// [batch, len] additive key bias.
    bias: Vec<f32>,
    heads: usize,
    scale: f32,
    keep: Option<(f32, u64)>,
}

/// One head of one sequence, gathered head-major (len × d) from the [len, width]
/// rows, and k, v transposed too (d × len), so every inner loop below runs over
/// contiguous values: a row of scores is one query against all keys as d
/// multiply-adds of len lanes.
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    kt: Vec<f32>,
    vt: Vec<f32>,
}

/// Head `h` (columns h·d..h·d+d) of `rows` (len × width), len × d.
fn gather(rows: &[f32], width: usize, h: usize, d: usize) -> Vec<f32> {
    let mut head = vec![0f32; rows.len() / width.max(1) * d];
    for (part, row) in head.chunks_mut(d).zip(rows.chunks(width)) {
        part.copy_from_slice(&row[h * d..h * d + d]);
    }
    head
}

/// Sequence `b`'s rows (`seq` values) of a [batch, len, width] tensor.
fn sequence(t: &[f32], b: usize, seq: usize) -> &[f32] {
    &t[b * seq..][..seq]
}

/// Keys padded to whole vectors of 16, so the score loops have no remainder.
fn padded(len: usize) -> usize {
    len.div_ceil(16) * 16
}

/// `m` (len × d) transposed: d × padded(len), zero past len.
fn transpose(m: &[f32], d: usize) -> Vec<f32> {
    let len = m.len() / d.max(1);
    let lp = padded(len);
    let mut t = vec![0f32; d * lp];
    for (j, row) in m.chunks(d).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * lp + j] = x;
        }
    }
    t
}

/// Adds `head` (len × d) into columns h·d..h·d+d of `rows` (len × width).
fn scatter(rows: &mut [f32], width: usize, h: usize, head: &[f32]) {
    let d = head.len() / (rows.len() / width).max(1);
    for (row, part) in rows.chunks_mut(width).zip(head.chunks(d)) {
        row[h * d..h * d + d].copy_from_slice(part);
    }
}

impl Head {
    fn new(q: &[f32], k: &[f32], v: &[f32], width: usize, h: usize, d: usize) -> Head {
        let (k, v) = (gather(k, width, h, d), gather(v, width, h, d));
        Head {
            q: gather(q, width, h, d),
            kt: transpose(&k, d),
            vt: transpose(&v, d),
            k,
            v,
        }
    }
}

impl TrainedAttention {
    fn dims(&self, layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (b, l, width) = layout.shape().dims3()?;
        if width % self.heads != 0 || self.bias.len() != b * l {
            candle_core::bail!(
                "attention over [{b}, {l}, {width}] with {} heads and a bias of {} values",
                self.heads,
                self.bias.len()
            );
        }
        Ok((b, l, width))
    }

    /// Probabilities (before dropout) of query `i` into `p`; `scores` is scratch
    /// of `padded(len)` values.
    fn probs(&self, head: &Head, bias: &[f32], i: usize, p: &mut [f32], scores: &mut [f32]) {
        let d = head.q.len() / p.len();
        weighted_sum(scores, &head.q[i * d..][..d], &head.kt);
        softmax_row(p, &scores[..p.len()], bias, self.scale);
    }

    /// The dropout factors (0 or 1/keep; 1 without dropout) of row `i` of head `h`
    /// of sequence `b` into `f`, indexed as `dropout::mask` indexes the composed path's
    /// [batch, heads, len, len] probabilities, so both draw the same mask.
    fn factors(&self, b: usize, h: usize, i: usize, f: &mut [f32]) {
        let l = f.len();
        match self.keep {
            Some((keep, seed)) => {
                mask_factors(f, ((b * self.heads + h) * l + i) * l, seed, keep);
            }
            None => f.fill(1.0),
        }
    }
}

// Compiled per instruction set (`mul_add` is a libm call on baseline x86-64).
slimformer_kernels::dispatch!(softmax_row, (p: &mut [f32], scores: &[f32], bias: &[f32], scale: f32), {
    for ((p, &s), &b) in p.iter_mut().zip(scores).zip(bias) {
        *p = s.mul_add(scale, b);
    }
    softmax_in_place(p);
});

// p (in `dx`) → scale · p ⊙ (gm − Σ gm⊙p).
slimformer_kernels::dispatch!(softmax_grad_row, (dx: &mut [f32], gm: &[f32], scale: f32), {
    let dot = lane_dot(dx, gm);
    for (dx, &gm) in dx.iter_mut().zip(gm) {
        *dx = scale * *dx * (gm - dot);
    }
});

// out = Σ_j w[j]·rows[j] (rows: w.len() × out.len()): a weighted sum of rows, or
// a row times a matrix (a query against the transposed keys: one row of scores).
slimformer_kernels::dispatch!(weighted_sum, (out: &mut [f32], w: &[f32], rows: &[f32]), {
    let n = out.len();
    let mut c0 = 0;
    while c0 < n {
        c0 += match n - c0 {
            64.. => weighted_sum_block::<64>(&mut out[c0..], w, &rows[c0..], n),
            32.. => weighted_sum_block::<32>(&mut out[c0..], w, &rows[c0..], n),
            16.. => weighted_sum_block::<16>(&mut out[c0..], w, &rows[c0..], n),
            _ => weighted_sum_block::<1>(&mut out[c0..], w, &rows[c0..], n),
        };
    }
});

/// The first N values of [`weighted_sum`]'s output (`rows` from the block's first
/// column, `n` apart), summed in registers: with the whole output as the
/// accumulator, every multiply-add loaded and stored its sum. Returns N.
#[inline(always)]
fn weighted_sum_block<const N: usize>(out: &mut [f32], w: &[f32], rows: &[f32], n: usize) -> usize {
    let mut acc = [0f32; N];
    for (j, &wj) in w.iter().enumerate() {
        if wj != 0.0 {
            for (a, &r) in acc.iter_mut().zip(&rows[j * n..][..N]) {
                *a = wj.mul_add(r, *a);
            }
        }
    }
    out[..N].copy_from_slice(&acc);
    N
}

// x ⊙= f
slimformer_kernels::dispatch!(scale_by, (x: &mut [f32], f: &[f32]), {
    for (x, &f) in x.iter_mut().zip(f) {
        *x *= f;
    }
});

fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => contiguous_f32(cpu, layout),
        _ => candle_core::bail!("trained attention runs on the CPU"),
    }
}

impl CustomOp3 for TrainedAttention {
    fn name(&self) -> &'static str {
        "trained-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, l, width) = self.dims(ql)?;
        if kl.shape() != ql.shape() || vl.shape() != ql.shape() {
            candle_core::bail!("attention: q, k and v differ in shape");
        }
        let (q, k, v) = (
            contiguous_f32(q, ql)?,
            contiguous_f32(k, kl)?,
            contiguous_f32(v, vl)?,
        );
        let d = width / self.heads;
        let seq = l * width;
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(seq.max(1))
            .enumerate()
            .for_each(|(b, out)| {
                let bias = &self.bias[b * l..][..l];
                let (mut p, mut f) = (vec![0f32; l], vec![0f32; l]);
                let mut scratch = vec![0f32; padded(l)];
                let mut context = vec![0f32; l * d];
                for h in 0..self.heads {
                    let head = Head::new(
                        sequence(q, b, seq),
                        sequence(k, b, seq),
                        sequence(v, b, seq),
                        width,
                        h,
                        d,
                    );
                    for (i, ctx) in context.chunks_mut(d).enumerate() {
                        self.probs(&head, bias, i, &mut p, &mut scratch);
                        self.factors(b, h, i, &mut f);
                        scale_by(&mut p, &f);
                        weighted_sum(ctx, &p, &head.v);
                    }
                    scatter(out, width, h, &context);
                }
            });
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, l, width) = q.dims3()?;
        let grad = grad.contiguous()?;
        let (qs, ks, vs, gs) = (
            q.storage_and_layout(),
            k.storage_and_layout(),
            v.storage_and_layout(),
            grad.storage_and_layout(),
        );
        let (qv, kv, vv, g) = (
            cpu_f32(&qs.0, qs.1)?,
            cpu_f32(&ks.0, ks.1)?,
            cpu_f32(&vs.0, vs.1)?,
            cpu_f32(&gs.0, gs.1)?,
        );
        let d = width / self.heads;
        let seq = l * width;
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; qv.len()],
            vec![0f32; qv.len()],
            vec![0f32; qv.len()],
        );
        dq.par_chunks_mut(seq.max(1))
            .zip(dk.par_chunks_mut(seq.max(1)))
            .zip(dv.par_chunks_mut(seq.max(1)))
            .enumerate()
            .for_each(|(b, ((dq, dk), dv))| {
                let bias = &self.bias[b * l..][..l];
                let (mut p, mut f) = (vec![0f32; l], vec![0f32; l]);
                let mut dp = vec![0f32; padded(l)];
                // Each query's dropped-out probabilities and score gradients, as rows.
                let (mut dropped, mut ds) = (vec![0f32; l * l], vec![0f32; l * l]);
                let (mut dqh, mut dkh, mut dvh) =
                    (vec![0f32; l * d], vec![0f32; l * d], vec![0f32; l * d]);
                for h in 0..self.heads {
                    let head = Head::new(
                        sequence(qv, b, seq),
                        sequence(kv, b, seq),
                        sequence(vv, b, seq),
                        width,
                        h,
                        d,
                    );
                    let gh = gather(sequence(g, b, seq), width, h, d);
                    for (i, dqi) in dqh.chunks_mut(d).enumerate() {
                        let gi = &gh[i * d..][..d];
                        // dp: scratch for the scores first.
                        self.probs(&head, bias, i, &mut p, &mut dp);
                        self.factors(b, h, i, &mut f);
                        let dropped = &mut dropped[i * l..][..l];
                        dropped.copy_from_slice(&p);
                        scale_by(dropped, &f);
                        // dP = (dO_i · V_j)_j ⊙ f
                        weighted_sum(&mut dp, gi, &head.vt);
                        scale_by(&mut dp[..l], &f);
                        // dS_i = scale · p ⊙ (dP − Σ dP ⊙ p), in `p`.
                        softmax_grad_row(&mut p, &dp[..l], self.scale);
                        weighted_sum(dqi, &p, &head.k);
                        ds[i * l..][..l].copy_from_slice(&p);
                    }
                    // dV = (p ⊙ f)ᵀ·dO and dK = dSᵀ·Q, a key at a time with its sums
                    // over the queries in registers (added query by query as outer
                    // products, every multiply-add loaded and stored its sum; the
                    // order of the additions is the same).
                    let lp = padded(l);
                    for (sums, by_query, rows) in
                        [(&mut dvh, &dropped, &gh), (&mut dkh, &ds, &head.q)]
                    {
                        let by_key = transpose(by_query, l);
                        for (j, sum) in sums.chunks_mut(d).enumerate() {
                            weighted_sum(sum, &by_key[j * lp..][..l], rows);
                        }
                    }
                    scatter(dq, width, h, &dqh);
                    scatter(dk, width, h, &dkh);
                    scatter(dv, width, h, &dvh);
                }
            });
        let shape = q.shape();
        Ok((
            Some(Tensor::from_vec(dq, shape, q.device())?),
            Some(Tensor::from_vec(dk, shape, k.device())?),
            Some(Tensor::from_vec(dv, shape, v.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::attention::composed;
    use super::*;
    use crate::layers::tests::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composed_attention_and_its_gradients() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (b, l, heads, d) = (3, 7, 2, 8);
        let qkv: Vec<Var> = (0..3)
            .map(|_| Var::randn(0f32, 1.0, (b, l, heads * d), &dev))
            .collect::<candle_core::Result<_>>()?;
        // The last keys of two sequences are padding.
        let mut bias = vec![0f32; b * l];
        bias[l - 2..l].fill(f32::MIN);
        bias[2 * l - 1] = f32::MIN;
        let bias = Tensor::from_vec(bias, (b, 1, 1, l), &dev)?;
        let up = Tensor::randn(0f32, 1.0, (b, l, heads * d), &dev)?;
        let scale = 1.0 / (d as f32).sqrt();
        for dropout in [None, Some((0.2, 11))] {
            let (q, k, v) = (qkv[0].as_tensor(), qkv[1].as_tensor(), qkv[2].as_tensor());
            let got = attend(q, k, v, &bias, heads, scale, dropout)?;
            let want = composed(q, k, v, &bias, heads, scale as f64, dropout)?;
            assert!(max_diff(&got, &want) < 1e-5, "{dropout:?}");
            let grads = (&got * &up)?.sum_all()?.backward()?;
            let grads_want = (&want * &up)?.sum_all()?.backward()?;
            for (name, t) in ["q", "k", "v"].iter().zip([q, k, v]) {
                let diff = max_diff(grads.get(t).unwrap(), grads_want.get(t).unwrap());
                assert!(diff < 1e-5, "d{name} {dropout:?}: {diff}");
            }
        }
        Ok(())
    }
}
