//! The matrix product of the linear layers at inference: `C = A·Wᵀ + bias`, then
//! optionally GELU, with W packed once (at the first call) into the panels the
//! micro-kernel reads, so no call re-packs the weights as candle's generic GEMM does.
//!
//! Blocking follows BLIS: a KC×NR panel of W stays in L1 while MR×KC slices of a
//! packed MC×KC block of A stream from L2 through an MR×NR register tile of
//! accumulators. Tasks split the rows (and, for short inputs, the columns) across
//! rayon's threads; each task runs bias and activation on its tile while it is
//! still in cache. AVX-512 kernel where the CPU has it, else a portable one that
//! the compiler vectorizes for AVX2 or the baseline.

use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of the register tile.
pub const MR: usize = 12;
/// Columns of the register tile: two AVX-512 vectors.
pub const NR: usize = 32;
/// Depth of one block: a KC×NR panel of W (16 KiB) and an MR×KC slice of A (6 KiB)
/// share L1 with room to spare (256 filled L1 and ran 10–20% slower).
const KC: usize = 128;
/// Rows of A packed per block (MC×KC floats, 48 KiB, stays in L2).
const MC: usize = 8 * MR;

/// What runs on each output after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    GeluErf,
    GeluTanh,
}

/// W (out × in, PyTorch's layout) as Wᵀ in KC×NR panels: block `p` of depth
/// `kc` starts at `p0·panels·NR`, its panel `j` at `+ j·kc·NR`, row-major kc×NR.
/// Columns past `n` are zero.
#[derive(Debug)]
pub struct PackedWeight {
    k: usize,
    n: usize,
    panels: usize,
    data: Vec<f32>,
}

impl PackedWeight {
    /// `w`: out × in row-major (n = out, k = in).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * NR * k];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let block = &mut data[p0 * panels * NR..(p0 + kc) * panels * NR];
            for (j, panel) in block.chunks_mut(kc * NR).enumerate() {
                for (p, row) in panel.chunks_mut(NR).enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        let col = j * NR + c;
                        if col < n {
                            *v = w[col * k + p0 + p];
                        }
                    }
                }
            }
        }
        Self { k, n, panels, data }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    fn panel(&self, p0: usize, kc: usize, j: usize) -> &[f32] {
        let start = p0 * self.panels * NR + j * kc * NR;
        &self.data[start..start + kc * NR]
    }
}

/// The output pointer, shared by parallel tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every user hands each task a part of the output no other task writes.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so closures capture the whole (Send) wrapper.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `task(rows, panels)` in parallel over the output split into blocks of `mc`
/// rows and, where that gives too few tasks to keep every thread busy (one short
/// sentence), into column ranges of whole panels too.
pub(super) fn for_each_tile(
    m: usize,
    mc: usize,
    panels: usize,
    task: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Send + Sync,
) {
    let row_blocks = m.div_ceil(mc);
    let threads = rayon::current_num_threads().max(1);
    let col_splits = (2 * threads).div_ceil(row_blocks).clamp(1, panels.max(1));
    let panels_per_split = panels.div_ceil(col_splits).max(1);
    let col_splits = panels.div_ceil(panels_per_split);
    (0..row_blocks * col_splits).into_par_iter().for_each(|t| {
        let (rb, cs) = (t / col_splits, t % col_splits);
        task(
            rb * mc..(rb * mc + mc).min(m),
            cs * panels_per_split..((cs + 1) * panels_per_split).min(panels),
        )
    });
}

thread_local! {
    static A_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `a`: m × k row-major. Returns m × n: `a·Wᵀ + bias`, then the epilogue.
pub fn linear(
    a: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    assert_eq!(a.len(), m * k, "input of {m}×{k} has {} values", a.len());
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "bias of {} for {n} outputs", bias.len());
    }
    if m == 0 || n == 0 || k == 0 {
        // No product: the output is the bias (and the epilogue of it).
        let mut out = vec![0f32; m * n];
        for row in out.chunks_mut(n.max(1)) {
            finish_row(row, bias, epilogue);
        }
        return out;
    }
    // Not zeroed: the first depth block stores every output before any is read.
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let ptr = OutPtr(out.as_mut_ptr());
    for_each_tile(m, MC, w.panels, |rows, panels| {
        A_PACK.with(|buf| {
            let mut buf = buf.borrow_mut();
            tile(a, k, w, rows, panels, &mut buf, ptr, bias, epilogue);
        });
    });
    // SAFETY: the tasks above wrote all m·n values (every row block × column split,
    // the first depth block storing, not adding).
    unsafe { out.set_len(m * n) };
    out
}

/// One task: rows × panels of the output, all of K, then the epilogue.
#[allow(clippy::too_many_arguments)]
fn tile(
    a: &[f32],
    k: usize,
    w: &PackedWeight,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    a_pack: &mut Vec<f32>,
    out: OutPtr,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) {
    let n = w.n;
    let mc = rows.len();
    let slices = mc.div_ceil(MR);
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        pack_a(a, k, rows.start, mc, p0, kc, a_pack);
        for j in panels.clone() {
            let b = w.panel(p0, kc, j);
            let cols = NR.min(n - j * NR);
            for s in 0..slices {
                let r0 = rows.start + s * MR;
                let mr = MR.min(rows.end - r0);
                let a_slice = &a_pack[s * MR * kc..(s + 1) * MR * kc];
                // SAFETY: rows r0..r0+mr and columns j·NR..j·NR+cols are in bounds
                // and belong to this task alone.
                unsafe {
                    let c = out.get().add(r0 * n + j * NR);
                    micro_tile(kc, a_slice, b, c, n, mr, cols, p0 > 0);
                }
            }
        }
    }
    let c0 = panels.start * NR;
    let c1 = (panels.end * NR).min(n);
    for r in rows {
        // SAFETY: as above, this task's own rows and columns, all written by now.
        let row = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * n + c0), c1 - c0) };
        finish_row(row, bias.map(|b| &b[c0..c1]), epilogue);
    }
}

/// Packs rows r0..r0+mc, depth p0..p0+kc of `a` as MR-row slices, each kc×MR
/// (depth-major, so the kernel reads MR consecutive values per step); missing
/// rows are zero.
fn pack_a(a: &[f32], k: usize, r0: usize, mc: usize, p0: usize, kc: usize, buf: &mut Vec<f32>) {
    let slices = mc.div_ceil(MR);
    buf.clear();
    buf.resize(slices * MR * kc, 0.0);
    for s in 0..slices {
        let dst = &mut buf[s * MR * kc..(s + 1) * MR * kc];
        for i in 0..MR.min(mc - s * MR) {
            let src = &a[(r0 + s * MR + i) * k + p0..][..kc];
            for (p, &v) in src.iter().enumerate() {
                dst[p * MR + i] = v;
            }
        }
    }
}

/// C[mr × cols] (+)= A_slice · B_panel.
///
/// # Safety
/// `c` points at an mr × cols block of a row-major matrix with row stride `ldc`;
/// where `accumulate` is false the block need not be initialized.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_tile(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    cols: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the caller's contract covers c.
        return avx512::kernel(kc, a, b, c, ldc, mr, cols, accumulate);
    }
    let mut acc = [0f32; MR * NR];
    kernel(kc, a, b, &mut acc);
    for i in 0..mr {
        let row = c.add(i * ldc);
        for (j, t) in acc[i * NR..i * NR + cols].iter().enumerate() {
            let v = if accumulate { *row.add(j) + t } else { *t };
            row.add(j).write(v);
        }
    }
}

/// acc[MR × NR] = Σ_p a[p·MR + i] · b[p·NR + j], without AVX-512.
fn kernel(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32; MR * NR]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { kernel_avx2(kc, a, b, acc) };
        return;
    }
    kernel_portable(kc, a, b, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32; MR * NR]) {
    kernel_portable(kc, a, b, acc)
}

#[inline(always)]
fn kernel_portable(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32; MR * NR]) {
    acc.fill(0.0);
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (i, &ai) in a.iter().enumerate() {
            for (c, &bj) in acc[i * NR..(i + 1) * NR].iter_mut().zip(b) {
                *c = ai.mul_add(bj, *c);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// MR×NR accumulators in 24 of the 32 zmm registers; per step two loads of
    /// W and MR broadcasts of A feed 24 FMAs. Stores straight into C, masked at
    /// the right edge.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn kernel(
        kc: usize,
        a: &[f32],
        b: &[f32],
        out: *mut f32,
        ldc: usize,
        mr: usize,
        cols: usize,
        accumulate: bool,
    ) {
        debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        let mut c = [[_mm512_setzero_ps(); 2]; MR];
        let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(pb);
            let b1 = _mm512_loadu_ps(pb.add(16));
            for (i, ci) in c.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*pa.add(i));
                ci[0] = _mm512_fmadd_ps(ai, b0, ci[0]);
                ci[1] = _mm512_fmadd_ps(ai, b1, ci[1]);
            }
            pa = pa.add(MR);
            pb = pb.add(NR);
        }
        let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        for (i, ci) in c.iter().enumerate() {
            if i >= mr {
                break;
            }
            let row = out.add(i * ldc);
            let (mut v0, mut v1) = (ci[0], ci[1]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}

/// Bias, then the epilogue, on one row (or a column range of one).
fn finish_row(row: &mut [f32], bias: Option<&[f32]>, epilogue: Epilogue) {
    super::fast::add_bias_then(row, bias, epilogue);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn reference(a: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                out[i * n + j] = dot as f32 + bias[j];
            }
        }
        out
    }

    /// Deterministic values in [-0.5, 0.5) (xorshift), for the kernels' tests.
    pub(in crate::layers) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_a_plain_product_at_every_edge() {
        // Shapes that leave partial row slices, partial panels and a partial depth block.
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 33, 7),
            (13, 64, 300),
            (97, 70, 513),
            (200, 384, 384),
        ] {
            let a = values(m * k, 1);
            let w = values(n * k, 2);
            let bias = values(n, 3);
            let packed = PackedWeight::pack(&w, n, k);
            let got = linear(&a, m, &packed, Some(&bias), Epilogue::None);
            let want = reference(&a, m, &w, n, k, &bias);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{m}×{n}×{k}: worst difference {worst}");
        }
    }

    #[test]
    fn gelu_epilogue_equals_gelu_after() {
        let (m, n, k) = (20, 40, 16);
        let (a, w, bias) = (values(m * k, 4), values(n * k, 5), values(n, 6));
        let packed = PackedWeight::pack(&w, n, k);
        let fused = linear(&a, m, &packed, Some(&bias), Epilogue::GeluErf);
        let mut plain = linear(&a, m, &packed, Some(&bias), Epilogue::None);
        super::super::fast::add_bias_then(&mut plain, None, Epilogue::GeluErf);
        assert_eq!(fused, plain);
    }
}
