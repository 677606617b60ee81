//! candle ops over the vectorised maths of `slimformer_kernels::math`: the exact
//! GELU (with its derivative, for training), its tanh approximation and the
//! softmax, run in parallel chunks. Inference only where no gradient flows;
//! `SLIMFORMER_CANDLE_OPS=1` falls back to candle's own ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use slimformer_kernels::gemm::Epilogue;
use slimformer_kernels::math::{add_bias_then, gelu_erf_grad, softmax_rows};

const CHUNK: usize = 4096;

pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fast kernels take f32");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fast kernels take contiguous tensors");
    };
    Ok(&data[start..end])
}

/// An element-wise activation (the epilogue without a bias).
struct Activate(Epilogue);

impl CustomOp1 for Activate {
    fn name(&self) -> &'static str {
        "fast-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(storage, layout)?;
        let mut out = xs.to_vec();
        out.par_chunks_mut(CHUNK)
            .for_each(|o| add_bias_then(o, None, self.0));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "fast-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(storage, layout)?;
        let dim = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; xs.len()];
        let rows_per_chunk = (CHUNK / dim).max(1);
        out.par_chunks_mut(rows_per_chunk * dim)
            .zip(xs.par_chunks(rows_per_chunk * dim))
            .for_each(|(o, x)| softmax_rows(o, x, dim));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `SLIMFORMER_CANDLE_OPS` set (to anything) turns slimformer's kernels off:
/// candle's own matmul and ops run, in f32 whatever the precision (the baseline of
/// the kernel benchmarks).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SLIMFORMER_CANDLE_OPS").is_none())
}

pub(crate) fn usable(xs: &Tensor) -> bool {
    enabled() && xs.dtype() == candle_core::DType::F32 && xs.device().is_cpu() && !xs.track_op()
}

/// Exact GELU, x·Φ(x): the fast kernel when nothing is trained through `xs`, and
/// when something is (in f32), the same kernel with its derivative for the backward
/// pass (candle's calls libm's erf one value at a time: a tenth of a training step).
pub fn gelu_erf(xs: &Tensor) -> candle_core::Result<Tensor> {
    if usable(xs) {
        xs.contiguous()?
            .apply_op1_no_bwd(&Activate(Epilogue::GeluErf))
    } else if enabled() && xs.dtype() == candle_core::DType::F32 && xs.device().is_cpu() {
        xs.contiguous()?.apply_op1(TrainedGeluErf)
    } else {
        xs.gelu_erf()
    }
}

struct TrainedGeluErf;

impl CustomOp1 for TrainedGeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Activate(Epilogue::GeluErf).cpu_fwd(storage, layout)
    }

    fn bwd(
        &self,
        xs: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            xs.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfGrad)?,
        ))
    }
}

/// grad · d/dx [x·Φ(x)] = grad · (Φ(x) + x·φ(x)).
struct GeluErfGrad;

impl candle_core::CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous_f32(x, x_layout)?, contiguous_f32(g, g_layout)?);
        if x.len() != g.len() {
            candle_core::bail!("GELU gradient: shapes disagree");
        }
        let mut out = g.to_vec();
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| gelu_erf_grad(o, x));
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// GELU's tanh approximation (`gelu_new`): the fast kernel when nothing is trained
/// through `xs`.
pub fn gelu_tanh(xs: &Tensor) -> candle_core::Result<Tensor> {
    if usable(xs) {
        xs.contiguous()?
            .apply_op1_no_bwd(&Activate(Epilogue::GeluTanh))
    } else {
        xs.gelu()
    }
}

/// Softmax over the last dimension: the fast kernel when nothing is trained through
/// `xs`, else candle's differentiable composition.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    if usable(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else if xs.track_op() {
        candle_nn::ops::softmax(xs, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_candles_ops() {
        let xs = Tensor::arange(-600f32, 600f32, &candle_core::Device::Cpu)
            .unwrap()
            .affine(0.01, 0.0)
            .unwrap()
            .reshape((12, 100))
            .unwrap();
        let diff = |a: Tensor, b: Tensor| crate::layers::tests::max_diff(&a, &b);
        assert!(diff(gelu_erf(&xs).unwrap(), xs.gelu_erf().unwrap()) < 1e-6);
        // Trained: the same values, and candle's gradient.
        let var = candle_core::Var::from_tensor(&xs).unwrap();
        let weights = xs.sin().unwrap();
        let grad = |y: Tensor| {
            let grads = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            grads.get(var.as_tensor()).unwrap().clone()
        };
        let ours = gelu_erf(var.as_tensor()).unwrap();
        assert!(diff(ours.clone(), xs.gelu_erf().unwrap()) < 1e-6);
        assert!(diff(grad(ours), grad(var.as_tensor().gelu_erf().unwrap())) < 1e-5);
        assert!(diff(gelu_tanh(&xs).unwrap(), xs.gelu().unwrap()) < 1e-5);
        let fast = softmax_last_dim(&xs).unwrap();
        assert!(diff(fast, candle_nn::ops::softmax_last_dim(&xs).unwrap()) < 1e-6);
    }
}
