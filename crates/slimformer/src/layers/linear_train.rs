//! A linear layer in training, `X·Wᵀ + b`, as one op with its backward
//! (`dX = dY·W`, `dW = dYᵀ·X`, `db` = dY's column sums). Composed from candle's ops
//! it was a product and a bias op, and for each candle's backward zero-fills a
//! gradient and adds to it; the bias op also copied the product once more.
//!
//! Under `--precision bf16` all three products run through the bf16 kernels: mixed
//! precision as PyTorch's autocast does it on a CPU (bf16 inputs to the products, f32
//! sums, f32 weights and optimizer). On an AMX CPU, at a batch of 32 short texts, the
//! three products run 1.3–3× faster than candle's f32 ones (`examples/train_gemm.rs`,
//! packing included; the weights' gradient gains least). In f32 the forward uses the
//! packed f32 kernel and the gradients candle's products. Weights change every step,
//! so nothing is packed ahead.

use super::fast::contiguous_f32;
use super::precision::Precision;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use slimformer_kernels::gemm::{self, Epilogue, PackedWeight};
use slimformer_kernels::gemm_bf16::{self, Lhs, PackedBf16Weight};

/// `x·Wᵀ + b` for x: [rows, in], w: [out, in], b: [out] (f32 on the CPU),
/// differentiable; the products in `precision` (int8 trains in f32).
pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = TrainedLinear {
        bf16: precision == Precision::Bf16,
    };
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Whether `linear` takes these operands (else the caller composes candle's ops).
pub(crate) fn takes(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> bool {
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    f32_cpu(x) && f32_cpu(w) && b.is_none_or(f32_cpu) && w.rank() == 2
}

#[derive(Clone, Copy)]
struct TrainedLinear {
    bf16: bool,
}

/// The two [rows, k] × [n, k] operands' dimensions, checked.
fn dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (rows, k) = x.shape().dims2()?;
    let (n, k_w) = w.shape().dims2()?;
    if k != k_w {
        candle_core::bail!("linear layer: input [{rows}, {k}], weight [{n}, {k_w}]");
    }
    Ok((rows, n, k))
}

impl TrainedLinear {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, n, k) = dims(x.1, w.1)?;
        if bias.is_some_and(|b| b.len() != n) {
            candle_core::bail!(
                "bias of {} values for {n} outputs",
                bias.map_or(0, <[f32]>::len)
            );
        }
        let (xv, wv) = (contiguous_f32(x.0, x.1)?, contiguous_f32(w.0, w.1)?);
        let out = if self.bf16 {
            gemm_bf16::linear(
                xv,
                rows,
                &PackedBf16Weight::pack(wv, n, k),
                bias,
                Epilogue::None,
            )
        } else {
            gemm::linear(
                xv,
                rows,
                &PackedWeight::pack(wv, n, k),
                bias,
                Epilogue::None,
            )
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    /// dX and dW.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if !self.bf16 {
            return Ok((grad.matmul(w)?, grad.t()?.matmul(x)?));
        }
        Ok((
            grad.apply_op2_no_bwd(w, &InputGrad)?,
            grad.apply_op2_no_bwd(x, &WeightGrad)?,
        ))
    }
}

impl CustomOp2 for TrainedLinear {
    fn name(&self) -> &'static str {
        "trained-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((x, x_layout), (w, w_layout), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, &grad.contiguous()?)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for TrainedLinear {
    fn name(&self) -> &'static str {
        "trained-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = contiguous_f32(b, b_layout)?;
        self.forward((x, x_layout), (w, w_layout), Some(bias))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw) = self.grads(x, w, &grad)?;
        Ok((Some(dx), Some(dw), Some(super::rows::column_sums(&grad)?)))
    }
}

/// dX[rows, k] = dY·W: W read as the transposed (k × n) weight.
struct InputGrad;

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "bf16-input-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        g_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, n) = g_layout.shape().dims2()?;
        let (n_w, k) = w_layout.shape().dims2()?;
        if n != n_w {
            candle_core::bail!("gradient of [{rows}, {n}] for a weight of [{n_w}, {k}]");
        }
        let (g, w) = (contiguous_f32(g, g_layout)?, contiguous_f32(w, w_layout)?);
        let packed = PackedBf16Weight::pack_transposed(w, k, n);
        let dx = gemm_bf16::linear(g, rows, &packed, None, Epilogue::None);
        Ok((CpuStorage::F32(dx), Shape::from((rows, k))))
    }
}

/// dW[n, k] = dYᵀ·X: dY's columns as the rows of A, X as the transposed weight.
struct WeightGrad;

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "bf16-weight-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        g_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, n) = g_layout.shape().dims2()?;
        let (rows_x, k) = x_layout.shape().dims2()?;
        if rows != rows_x {
            candle_core::bail!("gradient of [{rows}, {n}] for an input of [{rows_x}, {k}]");
        }
        let (g, x) = (contiguous_f32(g, g_layout)?, contiguous_f32(x, x_layout)?);
        let packed = PackedBf16Weight::pack_transposed(x, k, rows);
        let dw = gemm_bf16::product(Lhs::Columns(g), n, &packed, None, Epilogue::None);
        Ok((CpuStorage::F32(dw), Shape::from((n, k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tests::max_diff;
    use candle_core::{Device, Var};
    use slimformer_kernels::testing::values;

    #[test]
    fn products_and_gradients_match_candles_f32() -> candle_core::Result<()> {
        for (&(rows, n, k), precision) in [(1, 1, 1), (45, 70, 33), (130, 64, 96)]
            .iter()
            .flat_map(|s| [(s, Precision::Fp32), (s, Precision::Bf16)])
        {
            // Fixed values in [-scale, scale], so the bounds below hold by arithmetic,
            // not by the luck of a random draw (x up to 1, W up to 0.1).
            let uniform = |shape: (usize, usize), seed, scale: f32| {
                let v: Vec<f32> = values(shape.0 * shape.1, seed)
                    .iter()
                    .map(|v| 2.0 * scale * v)
                    .collect();
                Tensor::from_vec(v, shape, &Device::Cpu)
            };
            let x = Var::from_tensor(&uniform((rows, k), 1, 1.0)?)?;
            let w = Var::from_tensor(&uniform((n, k), 2, 0.1)?)?;
            let up = uniform((rows, n), 3, 1.0)?;
            let loss = |y: Tensor| (y * &up)?.sum_all();
            let b = Var::from_tensor(&uniform((1, n), 4, 1.0)?.flatten_all()?)?;
            let y = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), precision)?;
            let grads = loss(y.clone())?.backward()?;
            let y_ref = x
                .as_tensor()
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            let grads_ref = loss(y_ref.clone())?.backward()?;
            // bf16 keeps 8 bits: each input rounded by up to 2⁻⁹ relative.
            let bound =
                |depth: usize, scale: f64| depth as f64 * scale * 2.0 * 2f64.powi(-9) + 1e-5;
            assert!(max_diff(&y, &y_ref) < bound(k, 0.1 * 3.0));
            let dx = grads.get(x.as_tensor()).unwrap();
            let dx_ref = grads_ref.get(x.as_tensor()).unwrap();
            assert!(
                max_diff(dx, dx_ref) < bound(n, 0.1 * 3.0),
                "dX {rows}×{n}×{k} {precision}"
            );
            let dw = grads.get(w.as_tensor()).unwrap();
            let dw_ref = grads_ref.get(w.as_tensor()).unwrap();
            assert!(
                max_diff(dw, dw_ref) < bound(rows, 3.0 * 3.0),
                "dW {rows}×{n}×{k} {precision}"
            );
            assert_eq!(dw.dims(), &[n, k]);
            let db = grads.get(b.as_tensor()).unwrap();
            assert!(max_diff(db, grads_ref.get(b.as_tensor()).unwrap()) < 1e-4);
        }
        Ok(())
    }
}
