//! Self-attention for training as one op: context = dropout(softmax(scale·QKᵀ +
//! bias))·V per head, with its backward, reading Q, K and V in the linear layers'
//! [batch, len, heads·head_dim] layout. Composed from candle's ops it was about fifteen
//! graph nodes per layer: three head-major copies of Q, K and V and their backward
//! copies, two batched products of tiny matrices (one per sequence and head), the
//! probabilities, the transpose back; and for each node's input candle's backward
//! zero-fills a gradient and adds to it. The backward recomputes the probabilities
//! (a head's scores are len × len × head_dim of work) instead of storing them, and
//! redraws the dropout mask from its seed, as `attention_probs` does (same mask).

use super::attention_probs::{softmax_grad_row, softmax_row};
use super::dropout::kept;
use super::fast::{contiguous_f32, lane_dot};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

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

/// One sequence's rows of q, k, v (len × width each) and its key bias.
struct Sequence<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    bias: &'a [f32],
    /// Index of the sequence in the batch.
    index: usize,
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

    /// Probabilities (before dropout) of query `i` of head `h` into `p`, with
    /// `scores` as scratch.
    fn probs(&self, s: &Sequence, h: usize, i: usize, p: &mut [f32], scores: &mut [f32]) {
        let width = s.q.len() / p.len();
        let d = width / self.heads;
        let qi = &s.q[i * width + h * d..][..d];
        for (j, sj) in scores.iter_mut().enumerate() {
            *sj = lane_dot(qi, &s.k[j * width + h * d..][..d]);
        }
        softmax_row(p, scores, s.bias, self.scale);
    }

    /// The dropout factors (0 or 1/keep; 1 without dropout) of that row into `f`,
    /// indexed as `attention_probs` indexes them ([batch, heads, len, len]), so both
    /// draw the same mask.
    fn factors(&self, s: &Sequence, h: usize, i: usize, f: &mut [f32]) {
        let l = f.len();
        match self.keep {
            Some((keep, seed)) => {
                let row = ((s.index * self.heads + h) * l + i) * l;
                for (j, fj) in f.iter_mut().enumerate() {
                    *fj = if kept(seed, row + j, keep) {
                        1.0 / keep
                    } else {
                        0.0
                    };
                }
            }
            None => f.fill(1.0),
        }
    }
}

// y += a·x
dispatch!(axpy, (y: &mut [f32], a: f32, x: &[f32]), {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = a.mul_add(x, *y);
    }
});

fn storage_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(contiguous_f32(cpu, layout)?.to_vec()),
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
                let s = Sequence {
                    q: &q[b * seq..][..seq],
                    k: &k[b * seq..][..seq],
                    v: &v[b * seq..][..seq],
                    bias: &self.bias[b * l..][..l],
                    index: b,
                };
                let (mut p, mut scratch, mut f) = (vec![0f32; l], vec![0f32; l], vec![0f32; l]);
                for h in 0..self.heads {
                    for i in 0..l {
                        self.probs(&s, h, i, &mut p, &mut scratch);
                        self.factors(&s, h, i, &mut f);
                        let o = &mut out[i * width + h * d..][..d];
                        for (j, (&pj, &fj)) in p.iter().zip(&f).enumerate() {
                            if pj * fj != 0.0 {
                                axpy(o, pj * fj, &s.v[j * width + h * d..][..d]);
                            }
                        }
                    }
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
        let (qv, kv, vv) = (storage_f32(q)?, storage_f32(k)?, storage_f32(v)?);
        let g = storage_f32(&grad.contiguous()?)?;
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
                let s = Sequence {
                    q: &qv[b * seq..][..seq],
                    k: &kv[b * seq..][..seq],
                    v: &vv[b * seq..][..seq],
                    bias: &self.bias[b * l..][..l],
                    index: b,
                };
                let g = &g[b * seq..][..seq];
                let (mut p, mut f, mut dp) = (vec![0f32; l], vec![0f32; l], vec![0f32; l]);
                for h in 0..self.heads {
                    let at = |i: usize| i * width + h * d..i * width + h * d + d;
                    for i in 0..l {
                        // dp: scratch for the scores, then the probabilities' gradient.
                        self.probs(&s, h, i, &mut p, &mut dp);
                        self.factors(&s, h, i, &mut f);
                        let gi = &g[at(i)];
                        for j in 0..l {
                            // dV_j += p_ij·f_ij · dO_i
                            if p[j] * f[j] != 0.0 {
                                axpy(&mut dv[at(j)], p[j] * f[j], gi);
                            }
                            // dP_ij = (dO_i · V_j) · f_ij
                            dp[j] = match f[j] {
                                0.0 => 0.0,
                                fj => lane_dot(gi, &s.v[at(j)]) * fj,
                            };
                        }
                        // dS_i = scale · p_i ⊙ (dP_i − Σ dP_i ⊙ p_i), in `p`.
                        softmax_grad_row(&mut p, &dp, self.scale);
                        for (j, &ds) in p.iter().enumerate() {
                            if ds != 0.0 {
                                axpy(&mut dq[at(i)], ds, &s.k[at(j)]);
                                axpy(&mut dk[at(j)], ds, &s.q[at(i)]);
                            }
                        }
                    }
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
    use super::super::attention_probs::attention_probs;
    use super::super::gemm::tests::max_diff;
    use super::*;
    use candle_core::{Device, Var};

    /// The composition this op replaces: head-major copies, candle's products and
    /// the fused probabilities.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        heads: usize,
        scale: f32,
        dropout: Option<(f32, u64)>,
    ) -> candle_core::Result<Tensor> {
        let (b, l, width) = q.dims3()?;
        let split = |t: &Tensor| {
            t.reshape((b, l, heads, width / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let probs = attention_probs(
            &split(q)?.matmul(&split(k)?.t()?)?,
            bias,
            scale as f64,
            dropout,
        )?;
        probs
            .matmul(&split(v)?)?
            .transpose(1, 2)?
            .reshape((b, l, width))
    }

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
            let want = composed(q, k, v, &bias, heads, scale, dropout)?;
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
