//! Attention probabilities for training: dropout(softmax(scale·scores + bias)) as
//! one op with its own backward. Composed from candle's ops this is about ten passes
//! over the [batch, heads, len, len] scores forward (scale, mask, max, subtract,
//! exp, sum, divide, the dropout mask and its product) and as many backward — 25 MB
//! a pass for one MiniLM layer at 32×128 — with the dropout mask drawn one value at
//! a time on one thread. Here it is one pass each way; the backward recomputes the
//! probabilities from the scores instead of keeping them, and the mask is a hash of
//! (seed, position), drawn in parallel and never stored.

use super::dropout::{kept, mask};
use super::fast::{lane_dot, softmax_in_place};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// dropout(softmax(scale·scores + bias)) over the last dimension; `scores`:
/// [batch, heads, len, keys], `bias`: [batch, 1, 1, keys] (the padding mask).
/// `dropout`: the drop probability and the seed of its mask. Differentiable in
/// `scores`; other dtypes, shapes or devices take candle's composition, as does
/// inference under `SLIMFORMER_PORTABLE_KERNELS=1` (candle's stock path for A/B).
pub fn attention_probs(
    scores: &Tensor,
    bias: &Tensor,
    scale: f64,
    dropout: Option<(f32, u64)>,
) -> candle_core::Result<Tensor> {
    let dims = scores.dims();
    let fused = scores.device().is_cpu()
        && (scores.track_op() || super::fast::enabled())
        && scores.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && dims.len() == 4
        && bias.dims() == [dims[0], 1, 1, dims[3]];
    if !fused {
        let probs = candle_nn::ops::softmax(
            &(scores * scale)?.broadcast_add(bias)?,
            candle_core::D::Minus1,
        )?;
        return match dropout {
            Some((p, seed)) => probs.mul(&mask(&probs, p, seed)?),
            None => Ok(probs),
        };
    }
    let op = AttentionProbs {
        scale: scale as f32,
        rows_per_bias: dims[1] * dims[2],
        keep: dropout.map(|(p, seed)| (1.0 - p, seed)),
    };
    scores.contiguous()?.apply_op2(&bias.contiguous()?, op)
}

#[derive(Clone, Copy)]
struct AttentionProbs {
    scale: f32,
    /// Rows of scores that share one row of the bias (heads × queries).
    rows_per_bias: usize,
    /// Keep probability and seed of the dropout mask.
    keep: Option<(f32, u64)>,
}

impl AttentionProbs {
    /// Probabilities of row `r` (before dropout) into `p`.
    fn row(&self, r: usize, scores: &[f32], bias: &[f32], p: &mut [f32]) {
        let n = p.len();
        softmax_row(
            p,
            scores,
            &bias[(r / self.rows_per_bias) * n..][..n],
            self.scale,
        );
    }

    /// The dropout factor of value `i` (0 or 1/keep; 1 without dropout).
    fn factor(&self, i: usize) -> f32 {
        match self.keep {
            Some((keep, seed)) if kept(seed, i, keep) => 1.0 / keep,
            Some(_) => 0.0,
            None => 1.0,
        }
    }
}

// Compiled per instruction set (`mul_add` is a libm call on baseline x86-64).
dispatch!(pub(super) softmax_row, (p: &mut [f32], scores: &[f32], bias: &[f32], scale: f32), {
    for ((p, &s), &b) in p.iter_mut().zip(scores).zip(bias) {
        *p = s.mul_add(scale, b);
    }
    softmax_in_place(p);
});

// p (in `dx`) → scale · p ⊙ (gm − Σ gm⊙p).
dispatch!(pub(super) softmax_grad_row, (dx: &mut [f32], gm: &[f32], scale: f32), {
    let dot = lane_dot(dx, gm);
    for (dx, &gm) in dx.iter_mut().zip(gm) {
        *dx = scale * *dx * (gm - dot);
    }
});

/// Rows per parallel task: about 16k values.
fn task_rows(n: usize) -> usize {
    (16_384 / n.max(1)).max(1)
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("attention probabilities: {what} must be contiguous f32"),
    }
}

impl CustomOp2 for AttentionProbs {
    fn name(&self) -> &'static str {
        "attention-probs"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        sl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (scores, bias) = (f32s(s, sl, "scores")?, f32s(b, bl, "bias")?);
        let n = sl.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; scores.len()];
        let task = task_rows(n) * n;
        out.par_chunks_mut(task)
            .zip(scores.par_chunks(task))
            .enumerate()
            .for_each(|(t, (out, scores))| {
                for (i, (p, s)) in out.chunks_mut(n).zip(scores.chunks(n)).enumerate() {
                    let r = t * task / n + i;
                    self.row(r, s, bias, p);
                    if self.keep.is_some() {
                        for (j, p) in p.iter_mut().enumerate() {
                            *p *= self.factor(r * n + j);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), sl.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad =
            scores.apply_op3_no_bwd(bias, &grad.contiguous()?, &AttentionProbsGrad(*self))?;
        // The bias is the padding mask: a constant.
        Ok((Some(grad), None))
    }
}

/// ∂L/∂scores from g = ∂L/∂output: with p the probabilities and m the dropout
/// factors, scale · p ⊙ (g⊙m − Σ g⊙m⊙p) per row.
struct AttentionProbsGrad(AttentionProbs);

impl CustomOp3 for AttentionProbsGrad {
    fn name(&self) -> &'static str {
        "attention-probs-grad"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        sl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.0;
        let (scores, bias, grad) = (
            f32s(s, sl, "scores")?,
            f32s(b, bl, "bias")?,
            f32s(g, gl, "gradient")?,
        );
        if scores.len() != grad.len() {
            candle_core::bail!(
                "attention probabilities: the gradient's shape differs from the scores'"
            );
        }
        let n = sl.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; scores.len()];
        let task = task_rows(n) * n;
        out.par_chunks_mut(task)
            .zip(scores.par_chunks(task).zip(grad.par_chunks(task)))
            .enumerate()
            .for_each(|(t, (out, (scores, grad)))| {
                let mut gm = vec![0f32; n];
                for (i, (dx, (s, g))) in out
                    .chunks_mut(n)
                    .zip(scores.chunks(n).zip(grad.chunks(n)))
                    .enumerate()
                {
                    let r = t * task / n + i;
                    // dx holds p until the last loop turns it into the gradient.
                    op.row(r, s, bias, dx);
                    for (j, (gm, &g)) in gm.iter_mut().zip(g).enumerate() {
                        *gm = if op.keep.is_some() {
                            g * op.factor(r * n + j)
                        } else {
                            g
                        };
                    }
                    softmax_grad_row(dx, &gm, op.scale);
                }
            });
        Ok((CpuStorage::F32(out), sl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gemm::tests::max_diff;
    use candle_core::{Device, Var};

    /// The fused op and candle's composition (with the same mask) agree forward
    /// and backward, with padding in the bias and with and without dropout.
    #[test]
    fn fused_probabilities_and_gradient_match_candles_ops() {
        let dev = Device::Cpu;
        let (b, h, l, k) = (2, 3, 5, 37);
        let values = (Tensor::arange(0f32, (b * h * l * k) as f32, &dev).unwrap() * 0.37)
            .unwrap()
            .sin()
            .unwrap()
            .affine(4.0, 0.0)
            .unwrap()
            .reshape((b, h, l, k))
            .unwrap();
        let bias: Vec<f32> = (0..b * k)
            .map(|i| if i % k > 30 && i >= k { -3e38 } else { 0.0 })
            .collect();
        let bias = Tensor::from_vec(bias, (b, 1, 1, k), &dev).unwrap();
        let target = (&values * 1.7).unwrap().cos().unwrap();
        for dropout in [None, Some((0.25f32, 7u64))] {
            let x = Var::from_tensor(&values).unwrap();
            let scale = 0.125;
            let ours = attention_probs(x.as_tensor(), &bias, scale, dropout).unwrap();
            let probs = candle_nn::ops::softmax(
                &(x.as_tensor() * scale)
                    .unwrap()
                    .broadcast_add(&bias)
                    .unwrap(),
                candle_core::D::Minus1,
            )
            .unwrap();
            let theirs = match dropout {
                Some((p, seed)) => probs.mul(&mask(&probs, p, seed).unwrap()).unwrap(),
                None => probs,
            };
            assert!(max_diff(&ours, &theirs) < 1e-6, "forward differs");
            let grad = |y: &Tensor| {
                let loss = (y * &target).unwrap().sum_all().unwrap();
                loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
            };
            let d = max_diff(&grad(&ours), &grad(&theirs));
            assert!(d < 1e-6, "gradient differs by {d}");
        }
    }

    #[test]
    fn dropout_keeps_about_the_asked_share() {
        let dev = Device::Cpu;
        let scores = Tensor::zeros((4, 2, 64, 64), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros((4, 1, 1, 64), DType::F32, &dev).unwrap();
        let probs = attention_probs(&scores, &bias, 1.0, Some((0.1, 3))).unwrap();
        let values = probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dropped = values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len() as f64;
        assert!((dropped - 0.1).abs() < 0.01, "dropped {dropped}");
        let other = attention_probs(&scores, &bias, 1.0, Some((0.1, 4))).unwrap();
        assert!(max_diff(&probs, &other) > 0.0, "another seed, another mask");
    }
}
