//! A linear layer's product `X·Wᵀ` for training under `--precision bf16`, with its
//! backward (`dX = dY·W`, `dW = dYᵀ·X`) through the same bf16 kernels: mixed
//! precision as PyTorch's autocast does it on a CPU (bf16 inputs to the products, f32
//! sums, f32 weights and optimizer). On an AMX CPU each product runs 3–4× faster
//! than f32 (`examples/train_gemm.rs`); the packing each call needs is part of that
//! figure. Weights change every step, so nothing is packed ahead.

use super::fast::contiguous_f32;
use super::gemm::Epilogue;
use super::gemm_bf16::{self, Lhs, PackedBf16Weight};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

/// `x·Wᵀ + b` for x: [rows, in], w: [out, in], b: [out] (f32 on the CPU),
/// differentiable. The bias is added as the product's epilogue: a separate op was one
/// more pass over the output each way, and one more gradient for candle to sum.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Bf16Product),
        None => x.apply_op2(&w, Bf16Product),
    }
}

/// Whether `product` takes these operands (else the caller uses candle's matmul).
pub(crate) fn takes(x: &Tensor, w: &Tensor) -> bool {
    x.dtype() == DType::F32 && w.dtype() == DType::F32 && x.device().is_cpu() && w.rank() == 2
}

struct Bf16Product;

/// The two [rows, k] × [n, k] operands' dimensions, checked.
fn dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (rows, k) = x.shape().dims2()?;
    let (n, k_w) = w.shape().dims2()?;
    if k != k_w {
        candle_core::bail!("bf16 product of [{rows}, {k}] by a weight of [{n}, {k_w}]");
    }
    Ok((rows, n, k))
}

impl Bf16Product {
    fn forward(
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
        let packed = PackedBf16Weight::pack(wv, n, k);
        let out = gemm_bf16::linear(xv, rows, &packed, bias, Epilogue::None);
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    /// dX and dW.
    fn grads(x: &Tensor, w: &Tensor, grad: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            grad.apply_op2_no_bwd(w, &InputGrad)?,
            grad.apply_op2_no_bwd(x, &WeightGrad)?,
        ))
    }
}

impl CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        "bf16-product"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::forward((x, x_layout), (w, w_layout), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::grads(x, w, &grad.contiguous()?)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Bf16Product {
    fn name(&self) -> &'static str {
        "bf16-linear"
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
        Self::forward((x, x_layout), (w, w_layout), Some(bias))
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
        let (dx, dw) = Self::grads(x, w, &grad)?;
        Ok((Some(dx), Some(dw), Some(super::rows::column_sums(&grad)?)))
    }
}

/// dX[rows, k] = dY·W: W read as the transposed (k × n) weight.
struct InputGrad;

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "bf16-product-input-grad"
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
        "bf16-product-weight-grad"
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
    use super::super::gemm::tests::max_diff;
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn product_and_gradients_are_close_to_f32() -> candle_core::Result<()> {
        for &(rows, n, k) in &[(1, 1, 1), (45, 70, 33), (130, 64, 96)] {
            let dev = Device::Cpu;
            let x = Var::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Var::randn(0f32, 0.1, (n, k), &dev)?;
            let up = Tensor::randn(0f32, 1.0, (rows, n), &dev)?;
            let loss = |y: Tensor| (y * &up)?.sum_all();
            let b = Var::randn(0f32, 1.0, n, &dev)?;
            let y = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?;
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
                "dX {rows}×{n}×{k}"
            );
            let dw = grads.get(w.as_tensor()).unwrap();
            let dw_ref = grads_ref.get(w.as_tensor()).unwrap();
            assert!(
                max_diff(dw, dw_ref) < bound(rows, 3.0 * 3.0),
                "dW {rows}×{n}×{k}"
            );
            assert_eq!(dw.dims(), &[n, k]);
            let db = grads.get(b.as_tensor()).unwrap();
            assert!(max_diff(db, grads_ref.get(b.as_tensor()).unwrap()) < 1e-4);
        }
        Ok(())
    }
}
