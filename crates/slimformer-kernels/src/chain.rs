//! A feed-forward block, `down(epilogue(a·upᵀ + up_bias)) + down_bias`, as one op
//! for the low-precision products: the inner activation is converted (quantized
//! to int8, rounded to bf16) row by row as the up product's tasks finish it, while
//! the row is still in cache. As a pass of its own it read 4096 × 1536 values back
//! from L3: 12% of an int8 MiniLM forward at 32×128, most of it waiting on memory.

use crate::gemm::{whole_rows, Epilogue, Finish};
use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread's row buffer, kept from call to call: a fresh one costs a zero fill,
/// and page faults for a large one, at every call.
pub(crate) type Buffer<R> = LocalKey<RefCell<R>>;

/// A product whose kernels read their input rows converted to a low precision.
pub(crate) trait LowPrecision {
    type Weight: Sync;
    /// The kernel a weight is multiplied with on this CPU.
    type Kernel: Copy;
    /// Converted input rows, as a kernel reads them.
    type Rows: Default + 'static;

    fn kernel(w: &Self::Weight) -> Self::Kernel;
    /// (inputs k, outputs n, panels) of a weight.
    fn shape(w: &Self::Weight) -> (usize, usize, usize);
    /// Rows per task of the kernel's products.
    fn rows_per_task(kernel: Self::Kernel) -> usize;
    /// The whole product, as the unchained `linear`.
    fn linear(
        a: &[f32],
        m: usize,
        w: &Self::Weight,
        bias: Option<&[f32]>,
        epilogue: Epilogue,
        kernel: Self::Kernel,
    ) -> Vec<f32>;
    /// This thread's two row buffers: the input's, and the handed-over activation's.
    fn buffers() -> [&'static Buffer<Self::Rows>; 2];
    /// `rows` = a's m rows converted for a product with `w`.
    fn convert(rows: &mut Self::Rows, a: &[f32], m: usize, w: &Self::Weight, kernel: Self::Kernel);
    /// `rows` sized for m rows of `w`'s input, padding set; then calls `f` with a
    /// writer of row r (r < m) that a task holding that row alone may call.
    fn fill_rows<R>(
        rows: &mut Self::Rows,
        m: usize,
        w: &Self::Weight,
        kernel: Self::Kernel,
        f: impl FnOnce(&(dyn Fn(usize, &[f32]) + Sync)) -> R,
    ) -> R;
    /// The product of m converted rows and `w`, finished by `finish`.
    fn product(
        rows: &Self::Rows,
        m: usize,
        w: &Self::Weight,
        finish: Finish,
        kernel: Self::Kernel,
    ) -> Vec<f32>;
}

/// The feed-forward block in precision `P` (see the module docs).
pub(crate) fn chained<P: LowPrecision>(
    a: &[f32],
    m: usize,
    (up, up_bias): (&P::Weight, Option<&[f32]>),
    epilogue: Epilogue,
    (down, down_bias): (&P::Weight, Option<&[f32]>),
) -> Vec<f32> {
    let ((up_k, up_n, up_panels), (down_k, down_n, _)) = (P::shape(up), P::shape(down));
    assert_eq!(up_n, down_k, "{up_n} outputs feed {down_k} inputs");
    let (up_kernel, down_kernel) = (P::kernel(up), P::kernel(down));
    let empty = m == 0 || up_k == 0 || up_n == 0 || down_n == 0;
    if empty || !whole_rows(m, P::rows_per_task(up_kernel), up_panels) {
        // Tasks that split the columns (short inputs) never hold a whole row.
        let inner = P::linear(a, m, up, up_bias, epilogue, up_kernel);
        return P::linear(&inner, m, down, down_bias, Epilogue::None, down_kernel);
    }
    let [rows_buffer, next_buffer] = P::buffers();
    let (mut rows, mut next) = (rows_buffer.take(), next_buffer.take());
    P::convert(&mut rows, a, m, up, up_kernel);
    P::fill_rows(&mut next, m, down, down_kernel, |write| {
        let finish = Finish {
            then: Some(write),
            ..Finish::new(up_bias, epilogue)
        };
        P::product(&rows, m, up, finish, up_kernel);
    });
    let out = P::product(
        &next,
        m,
        down,
        Finish::new(down_bias, Epilogue::None),
        down_kernel,
    );
    rows_buffer.set(rows);
    next_buffer.set(next);
    out
}
