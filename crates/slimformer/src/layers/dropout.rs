use super::fast::contiguous_f32;
use crate::rng::TrainRng;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Inverted dropout, drawing from the run's seeded generator; off in inference.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    pub fn new(p: f32) -> Self {
        Self { p }
    }

    /// The drop probability and a fresh mask seed, where this dropout is active.
    pub fn draw(&self, train: Option<&TrainRng>) -> Option<(f32, u64)> {
        let rng = train?;
        (self.p > 0.0).then(|| (self.p, rng.with(|r| r.next_u64())))
    }

    pub fn forward(&self, xs: &Tensor, train: Option<&TrainRng>) -> candle_core::Result<Tensor> {
        match self.draw(train) {
            Some((p, seed)) if takes(xs) => xs.contiguous()?.apply_op1(Masked { p, seed }),
            Some((p, seed)) => xs.mul(&mask(xs, p, seed)?),
            None => Ok(xs.clone()),
        }
    }

    /// `residual + dropout(xs)`, as one op where training in f32 (the residual
    /// connection of every transformer layer).
    pub fn add_to(
        &self,
        residual: &Tensor,
        xs: &Tensor,
        train: Option<&TrainRng>,
    ) -> candle_core::Result<Tensor> {
        match self.draw(train) {
            Some((p, seed)) if takes(xs) && takes(residual) && xs.dims() == residual.dims() => xs
                .contiguous()?
                .apply_op2(&residual.contiguous()?, Masked { p, seed }),
            Some((p, seed)) => residual + xs.mul(&mask(xs, p, seed)?)?,
            None => residual + xs,
        }
    }
}

fn takes(xs: &Tensor) -> bool {
    xs.dtype() == DType::F32 && xs.device().is_cpu()
}

/// x·mask (and + residual): the mask is drawn again from its seed in the backward
/// pass, so it is neither stored nor a node of the graph (as a tensor it was one
/// more product whose gradient candle also computed for the mask).
#[derive(Clone, Copy)]
struct Masked {
    p: f32,
    seed: u64,
}

impl Masked {
    /// `out[i] (+)= x[i]·mask[i]` over the whole tensor, in parallel.
    fn apply(&self, x: &[f32], out: &mut [f32], accumulate: bool) {
        let (keep, seed) = (1.0 - self.p, self.seed);
        const CHUNK: usize = 1 << 14;
        const BLOCK: usize = 1 << 10;
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (out, x))| {
                let mut factors = [0f32; BLOCK];
                for (b, (out, x)) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK)).enumerate() {
                    let factors = &mut factors[..out.len()];
                    mask_factors(factors, c * CHUNK + b * BLOCK, seed, keep);
                    for ((o, &v), &m) in out.iter_mut().zip(x).zip(factors.iter()) {
                        *o = if accumulate { *o + v * m } else { v * m };
                    }
                }
            });
    }
}

impl CustomOp1 for Masked {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, layout)?;
        let mut out = vec![0f32; x.len()];
        self.apply(x, &mut out, false);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // The same mask on the gradient.
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

impl CustomOp2 for Masked {
    fn name(&self) -> &'static str {
        "dropout-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        residual: &CpuStorage,
        r_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, residual) = (
            contiguous_f32(x, x_layout)?,
            contiguous_f32(residual, r_layout)?,
        );
        if x.len() != residual.len() {
            candle_core::bail!("dropout-add of {} values onto {}", x.len(), residual.len());
        }
        let mut out = residual.to_vec();
        self.apply(x, &mut out, true);
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((Some(grad.apply_op1_no_bwd(self)?), Some(grad)))
    }
}

/// The mask drawn with `seed`, shaped like `like` and scaled by 1/keep.
pub(crate) fn mask(like: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    const CHUNK: usize = 1 << 14;
    let mut mask = vec![0f32; like.elem_count()];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, m)| mask_factors(m, c * CHUNK, seed, 1.0 - p));
    Tensor::from_vec(mask, like.shape(), like.device())?.to_dtype(like.dtype())
}

/// Whether value `index` survives a dropout mask drawn with `seed`: a hash of the
/// two (SplitMix64's finalizer), so any part of the mask can be drawn in parallel,
/// or drawn again in the backward pass, without storing it.
#[inline(always)]
fn kept(seed: u64, index: usize, keep: f32) -> bool {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 24 random bits as a uniform value in [0, 1).
    ((z >> 40) as f32) * (1.0 / (1u64 << 24) as f32) < keep
}

/// `f[j]` = 1/keep where value `first + j` survives the mask drawn with `seed`
/// ([`kept`]), else 0. Vectorized where the CPU multiplies 64-bit lanes
/// (AVX512-DQ's `vpmullq`); else the hash's three products run one value at a
/// time, which was 3% of a training step.
pub(crate) fn mask_factors(f: &mut [f32], first: usize, seed: u64, keep: f32) {
    #[inline(always)]
    fn fill(f: &mut [f32], first: usize, seed: u64, keep: f32) {
        let scale = 1.0 / keep;
        for (j, fj) in f.iter_mut().enumerate() {
            *fj = if kept(seed, first + j, keep) {
                scale
            } else {
                0.0
            };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if slimformer_kernels::cpu_has!("avx512f", "avx512dq") {
        #[target_feature(enable = "avx512f,avx512dq")]
        fn wide(f: &mut [f32], first: usize, seed: u64, keep: f32) {
            fill(f, first, seed, keep)
        }
        // SAFETY: the CPU has the features `wide` was compiled for.
        return unsafe { wide(f, first, seed, keep) };
    }
    fill(f, first, seed, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tests::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn fused_dropout_matches_the_mask_product_both_ways() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // More values than one parallel chunk, so chunk offsets count.
        let shape = (3, 70_001);
        let x = Var::randn(0f32, 1.0, shape, &dev)?;
        let residual = Var::randn(0f32, 1.0, shape, &dev)?;
        let up = Tensor::randn(0f32, 1.0, shape, &dev)?;
        let (p, seed) = (0.1, 7);
        let mask = mask(x.as_tensor(), p, seed)?;

        let fused = x.as_tensor().apply_op1(Masked { p, seed })?;
        let want = x.as_tensor().mul(&mask)?;
        assert!(max_diff(&fused, &want) < 1e-6);
        let grads = (&fused * &up)?.sum_all()?.backward()?;
        assert!(max_diff(grads.get(x.as_tensor()).unwrap(), &(&up * &mask)?) < 1e-6);

        let summed = x
            .as_tensor()
            .apply_op2(residual.as_tensor(), Masked { p, seed })?;
        assert!(max_diff(&summed, &(residual.as_tensor() + &want)?) < 1e-6);
        let grads = (&summed * &up)?.sum_all()?.backward()?;
        assert!(max_diff(grads.get(x.as_tensor()).unwrap(), &(&up * &mask)?) < 1e-6);
        assert!(max_diff(grads.get(residual.as_tensor()).unwrap(), &up) == 0.0);
        // About the asked share is dropped.
        let dropped = mask
            .eq(0f32)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!((dropped - p).abs() < 0.005, "{dropped}");
        Ok(())
    }
}
