//! `x + b` and `x · w` with a vector along the last dimension (biases, LayerNorm's
//! weights) for training. candle's backward sums their gradients over the leading
//! dimensions one element at a time with a division per element and dimension: a
//! tenth of a fine-tuning step. These ops sum the gradient's columns directly.
//! Also LayerNorm's normalization with its backward, one pass over each row each way
//! (from candle's ops it is about ten element-wise passes each way).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `x + b` (b: [n], x: [..., n]).
pub fn add_row(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if !x.track_op() && !b.track_op() {
        return x.broadcast_add(b);
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, RowOp::Add)
}

/// `x · w` (w: [n], x: [..., n]).
pub fn mul_row(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !x.track_op() && !w.track_op() {
        return x.broadcast_mul(w);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RowOp::Mul)
}

/// `x · m` for x: [..., k], m: [k, n], as one 2-D product: a batched product with
/// `m` broadcast would sum m's gradient over the batch through candle's slow path.
pub fn matmul_last(x: &Tensor, m: &Tensor) -> candle_core::Result<Tensor> {
    apply_last(x, |rows| rows.matmul(m))
}

/// `f` on x: [..., k] viewed as one matrix of rows: [rows, k] → [rows, n], with the
/// leading dimensions restored.
pub fn apply_last(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("a product over the last dimension of a scalar");
    };
    let rows: usize = lead.iter().product();
    let out = f(&x.contiguous()?.reshape((rows, k))?)?;
    let mut shape = lead.to_vec();
    shape.push(out.dim(1)?);
    out.reshape(shape)
}

/// `(x − mean) / √(var + eps)` over the last dimension (LayerNorm without its
/// weight and bias), differentiable.
pub fn normalize(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Normalize { eps })
}

/// Σ over every leading dimension of a [..., n] tensor: [n].
pub fn column_sums(t: &Tensor) -> candle_core::Result<Tensor> {
    t.contiguous()?.apply_op1_no_bwd(&ColumnSums)
}

#[derive(Clone, Copy)]
enum RowOp {
    Add,
    Mul,
}

fn row_op<T: WithDType>(x: &[T], row: &[T], op: RowOp) -> Vec<T> {
    let n = row.len().max(1);
    let mut out = x.to_vec();
    out.par_chunks_mut(n * (4096 / n).max(1)).for_each(|chunk| {
        for values in chunk.chunks_mut(n) {
            for (v, &r) in values.iter_mut().zip(row) {
                *v = match op {
                    RowOp::Add => *v + r,
                    RowOp::Mul => *v * r,
                };
            }
        }
    });
    out
}

fn slice<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("row ops take contiguous tensors"),
    }
}

impl CustomOp2 for RowOp {
    fn name(&self) -> &'static str {
        match self {
            RowOp::Add => "add-row",
            RowOp::Mul => "mul-row",
        }
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        row: &CpuStorage,
        row_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = x_layout.shape().dims().last().copied().unwrap_or(1);
        if row_layout.shape().dims() != [n] {
            candle_core::bail!(
                "{}: a row of shape {:?} for a tensor of shape {:?}",
                self.name(),
                row_layout.shape(),
                x_layout.shape()
            );
        }
        let out = match (x, row) {
            (CpuStorage::F32(x), CpuStorage::F32(r)) => {
                CpuStorage::F32(row_op(slice(x, x_layout)?, slice(r, row_layout)?, *self))
            }
            (CpuStorage::F64(x), CpuStorage::F64(r)) => {
                CpuStorage::F64(row_op(slice(x, x_layout)?, slice(r, row_layout)?, *self))
            }
            _ => candle_core::bail!("{}: f32 or f64 tensors of one dtype", self.name()),
        };
        Ok((out, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        row: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok(match self {
            RowOp::Add => (Some(grad.clone()), Some(column_sums(grad)?)),
            RowOp::Mul => (
                Some(grad.broadcast_mul(row)?),
                Some(column_sums(&(grad * x)?)?),
            ),
        })
    }
}

struct ColumnSums;

fn column_sums_of<T: WithDType>(t: &[T], n: usize) -> Vec<T> {
    let n = n.max(1);
    // Each task's sums collected in order, then added in order: rayon's `reduce`
    // pairs them as its tasks were stolen, so the rounding (and a seeded training
    // run's gradients) would vary from run to run.
    let partial: Vec<Vec<T>> = t
        .par_chunks(rows_per_task(n) * n)
        .map(|chunk| {
            let mut sums = vec![T::zero(); n];
            for values in chunk.chunks(n) {
                for (s, &v) in sums.iter_mut().zip(values) {
                    *s += v;
                }
            }
            sums
        })
        .collect();
    let mut sums = vec![T::zero(); n];
    for part in partial {
        sums.iter_mut().zip(part).for_each(|(s, p)| *s += p);
    }
    sums
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, t: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = layout.shape().dims().last().copied().unwrap_or(1);
        let out = match t {
            CpuStorage::F32(t) => CpuStorage::F32(column_sums_of(slice(t, layout)?, n)),
            CpuStorage::F64(t) => CpuStorage::F64(column_sums_of(slice(t, layout)?, n)),
            _ => candle_core::bail!("column sums of f32 or f64 tensors"),
        };
        Ok((out, Shape::from(n)))
    }
}

/// Rows per parallel task of the row-wise ops.
fn rows_per_task(n: usize) -> usize {
    (16384 / n.max(1)).max(1)
}

/// The mean of a row and 1/√(var + eps).
fn row_stats<T: WithDType>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|v| (v.to_f64() - mean) * (v.to_f64() - mean))
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn normalize_rows<T: WithDType>(x: &[T], n: usize, eps: f64) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let task = rows_per_task(n) * n.max(1);
    out.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(out, x)| {
            for (out, x) in out.chunks_mut(n.max(1)).zip(x.chunks(n.max(1))) {
                let (mean, r) = row_stats(x, eps);
                for (o, v) in out.iter_mut().zip(x) {
                    *o = T::from_f64((v.to_f64() - mean) * r);
                }
            }
        });
    out
}

/// ∂L/∂x of y = normalize(x) from g = ∂L/∂y: r·(g − mean(g) − y·mean(g·y)) per row.
fn normalize_grad_rows<T: WithDType>(x: &[T], g: &[T], n: usize, eps: f64) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let task = rows_per_task(n) * n.max(1);
    let n = n.max(1);
    out.par_chunks_mut(task)
        .zip(x.par_chunks(task).zip(g.par_chunks(task)))
        .for_each(|(out, (x, g))| {
            for (out, (x, g)) in out.chunks_mut(n).zip(x.chunks(n).zip(g.chunks(n))) {
                let (mean, r) = row_stats(x, eps);
                let y = |v: &T| (v.to_f64() - mean) * r;
                let mean_g = g.iter().map(|v| v.to_f64()).sum::<f64>() / n as f64;
                let mean_gy =
                    g.iter().zip(x).map(|(g, v)| g.to_f64() * y(v)).sum::<f64>() / n as f64;
                for (o, (g, v)) in out.iter_mut().zip(g.iter().zip(x)) {
                    *o = T::from_f64(r * (g.to_f64() - mean_g - y(v) * mean_gy));
                }
            }
        });
    out
}

struct Normalize {
    eps: f64,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "normalize"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = layout.shape().dims().last().copied().unwrap_or(1);
        let out = match x {
            CpuStorage::F32(x) => CpuStorage::F32(normalize_rows(slice(x, layout)?, n, self.eps)),
            CpuStorage::F64(x) => CpuStorage::F64(normalize_rows(slice(x, layout)?, n, self.eps)),
            _ => candle_core::bail!("normalize: f32 or f64 tensors"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &NormalizeGrad { eps: self.eps },
        )?))
    }
}

struct NormalizeGrad {
    eps: f64,
}

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "normalize-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if x_layout.shape() != g_layout.shape() {
            candle_core::bail!("normalize-grad: the input and its gradient differ in shape");
        }
        let n = x_layout.shape().dims().last().copied().unwrap_or(1);
        let out = match (x, g) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(normalize_grad_rows(
                slice(x, x_layout)?,
                slice(g, g_layout)?,
                n,
                self.eps,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(normalize_grad_rows(
                slice(x, x_layout)?,
                slice(g, g_layout)?,
                n,
                self.eps,
            )),
            _ => candle_core::bail!("normalize-grad: f32 or f64 tensors of one dtype"),
        };
        Ok((out, x_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// max |a − b| over all values.
    use crate::layers::tests::max_diff;

    /// Column sums (bias gradients) add their tasks' sums in one order, whatever
    /// the threads do: with `reduce`, two runs of a seeded fine-tuning differed.
    #[test]
    fn column_sums_are_the_same_sum_every_time() {
        let (rows, n) = (4096, 64);
        let t: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 10f32.powi((i % 7) as i32 - 3))
            .collect();
        let task = rows_per_task(n) * n;
        assert!(t.len() / task >= 8, "enough tasks for the order to matter");
        let mut want = vec![0f32; n];
        for chunk in t.chunks(task) {
            let mut part = vec![0f32; n];
            for values in chunk.chunks(n) {
                part.iter_mut().zip(values).for_each(|(s, v)| *s += v);
            }
            want.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for _ in 0..20 {
            let got = pool.install(|| column_sums_of(&t, n));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want));
        }
    }

    #[test]
    fn gradients_match_candles_broadcast_ops() {
        let dev = Device::Cpu;
        let values = Tensor::arange(0f64, 24.0, &dev).unwrap();
        let x = Var::from_tensor(&values.reshape((2, 3, 4)).unwrap()).unwrap();
        let row = Var::new(&[0.5f64, -1.0, 2.0, 0.25], &dev).unwrap();
        let target = (values + 5.0)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        type Op = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
        let pairs: [(Op, Op); 2] = [
            (add_row, |x, r| x.broadcast_add(r)),
            (mul_row, |x, r| x.broadcast_mul(r)),
        ];
        for (ours, candles) in pairs {
            let apply = |f: Op| f(x.as_tensor(), row.as_tensor()).unwrap();
            assert_eq!(max_diff(&apply(ours), &apply(candles)), 0.0);
            let grads = |f: Op| {
                (apply(f) * &target)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            };
            let (a, b) = (grads(ours), grads(candles));
            for v in [x.as_tensor(), row.as_tensor()] {
                let diff = max_diff(a.get(v).unwrap(), b.get(v).unwrap());
                assert!(diff < 1e-12, "gradient differs by {diff}");
            }
        }
    }

    #[test]
    fn normalize_and_its_gradient_match_candles_ops() {
        let dev = Device::Cpu;
        let values = (Tensor::arange(0f64, 24.0, &dev).unwrap() * 0.7)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let x = Var::from_tensor(&values).unwrap();
        let target = (values * 3.0).unwrap().sin().unwrap();
        let by_candle = |x: &Tensor| {
            let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
            centred.broadcast_div(&(var + 1e-5)?.sqrt()?)
        };
        let ours = normalize(x.as_tensor(), 1e-5).unwrap();
        let theirs = by_candle(x.as_tensor()).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-12);
        let grad = |y: &Tensor| {
            let loss = (y * &target).unwrap().sum_all().unwrap();
            loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
        };
        assert!(max_diff(&grad(&ours), &grad(&theirs)) < 1e-12);
    }
}
