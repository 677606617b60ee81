//! `x + b` and `x · w` with a vector along the last dimension (biases, LayerNorm's
//! weights) for training. candle's backward sums their gradients over the leading
//! dimensions one element at a time with a division per element and dimension: a
//! tenth of a fine-tuning step. These ops sum the gradient's columns directly.

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
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("matmul_last of a scalar");
    };
    let rows: usize = lead.iter().product();
    let out = x.contiguous()?.reshape((rows, k))?.matmul(m)?;
    let mut shape = lead.to_vec();
    shape.push(out.dim(1)?);
    out.reshape(shape)
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
    let rows_per_task = (16384 / n).max(1);
    t.par_chunks(rows_per_task * n)
        .map(|chunk| {
            let mut sums = vec![T::zero(); n];
            for values in chunk.chunks(n) {
                for (s, &v) in sums.iter_mut().zip(values) {
                    *s += v;
                }
            }
            sums
        })
        .reduce(
            || vec![T::zero(); n],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// max |a − b| over all values.
    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(D::Minus1))
            .and_then(|d| d.to_scalar::<f64>())
            .unwrap()
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
}
