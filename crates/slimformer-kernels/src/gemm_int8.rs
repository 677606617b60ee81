//! The int8 linear layer: weights quantized symmetrically per output channel (as
//! `slimformer quantize` stores them), activations quantized per row and group of
//! 64 values at each call (dynamic quantization), products summed in i32 by AVX512-VNNI's `vpdpbusd`
//! (64 multiply-adds per instruction against 16 for f32 FMA).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so activations are stored
//! shifted by 128 (`u = q + 128`) and the shift is taken back out with the
//! weights' column sums: Σ u·w = Σ q·w + 128·Σ w. AMX has a signed × signed
//! product (`tdpbssd`), so its activations are stored unshifted.

use crate::aligned::AlignedVec;
use crate::chain::{Buffer, LowPrecision};
use crate::gemm::{tiled_output, Epilogue, Finish, OutPtr, NR};
use rayon::prelude::*;

/// Values that share one activation scale (a multiple of 4): per-row scales alone
/// let a few outlier features (BERT-style models have them) coarsen every other
/// value of the row; groups of 64 keep the embeddings' cosine to fp32 ≥ 0.999.
const GROUP: usize = 64;
/// Rows of the register tile: 6 rows × 2 vectors of i32 sums for the current group
/// and as many f32 sums over all groups stay in 24 of the 32 registers, so a
/// group's rescaling never goes through memory.
const MR: usize = 6;
/// Rows per task.
const MC: usize = 8 * MR;
/// Rows of the AMX kernel's block: two tiles of 16.
const AMX_ROWS: usize = 32;

/// W (out × in) as int8 in NR-column panels over the whole depth; within a panel,
/// for each group of 4 depths, NR columns × 4 bytes (what `vpdpbusd` reads).
#[derive(Debug)]
pub struct PackedInt8Weight {
    k: usize,
    /// k rounded up to a multiple of 4 (zero padding).
    k4: usize,
    n: usize,
    panels: usize,
    /// Activation groups per row: k4 / GROUP rounded up.
    groups: usize,
    data: AlignedVec<i8>,
    /// Per output channel (padded to panels·NR): w ≈ q · scale.
    scales: Vec<f32>,
    /// 128 · Σ q over each group, per panel, group and column.
    shifts: Vec<i32>,
}

impl PackedInt8Weight {
    /// `w`: out × in row-major (n = out, k = in).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let k4 = k.div_ceil(4) * 4;
        let panels = n.div_ceil(NR);
        let groups = k4.div_ceil(GROUP);
        let mut scales = vec![1f32; panels * NR];
        for (scale, row) in scales.iter_mut().zip(w.chunks(k.max(1))) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max > 0.0 {
                *scale = max / 127.0;
            }
        }
        let q = |col: usize, p: usize| -> i8 {
            if col < n && p < k {
                (w[col * k + p] / scales[col]).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        };
        let mut data = AlignedVec::zeroed(panels * NR * k4);
        let mut shifts = vec![0i32; panels * groups * NR];
        data.par_chunks_mut((k4 * NR).max(1))
            .zip(shifts.par_chunks_mut((groups * NR).max(1)))
            .enumerate()
            .for_each(|(j, (panel, shifts))| {
                for (t, quad) in panel.chunks_mut(NR * 4).enumerate() {
                    let g = 4 * t / GROUP;
                    for c in 0..NR {
                        for u in 0..4 {
                            let v = q(j * NR + c, 4 * t + u);
                            quad[c * 4 + u] = v;
                            shifts[g * NR + c] += 128 * v as i32;
                        }
                    }
                }
            });
        Self {
            k,
            k4,
            n,
            panels,
            groups,
            data,
            scales,
            shifts,
        }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }
}

/// Rows quantized to bytes q + `zero` (128 for `vpdpbusd`'s unsigned operand, 0
/// for AMX's signed one), one scale per row and group (row-major); rows padded to
/// k4 with `zero`, and `rows` ≥ m rows of zeros (scale 1) in all. The bytes go
/// into `q`, a buffer reused from call to call.
fn quantize_rows(
    q: &mut AlignedVec<u8>,
    a: &[f32],
    (m, rows): (usize, usize),
    (k, k4): (usize, usize),
    (vnni, zero): (bool, u8),
) -> Vec<f32> {
    let groups = k4.div_ceil(GROUP);
    let mut scales = padded(q, (m, rows), (k, k4), zero);
    q[..m * k4]
        .par_chunks_mut(k4)
        .zip(scales.par_chunks_mut(groups))
        .zip(a.par_chunks(k.max(1)))
        .for_each(|((q, scales), row)| quantize_row(q, scales, row, vnni, zero));
    scales
}

/// `q` sized for `rows` rows of k4 bytes, all but the first m rows' first k bytes
/// set to `zero`; the scales, all 1 (what the m rows' quantization then overwrites).
fn padded(
    q: &mut AlignedVec<u8>,
    (m, rows): (usize, usize),
    (k, k4): (usize, usize),
    zero: u8,
) -> Vec<f32> {
    q.reuse(rows * k4);
    let (valid, padding) = q.split_at_mut(m * k4);
    padding.fill(zero);
    if k < k4 {
        valid.fill(zero); // the rows' tails
    }
    vec![1f32; rows * k4.div_ceil(GROUP)]
}

thread_local! {
    /// The last product's quantized rows, kept for the next call on this thread.
    static QUANTIZED: std::cell::RefCell<QuantizedRows> =
        std::cell::RefCell::new(QuantizedRows::default());
    /// [`chained`]'s inner activation, quantized, kept likewise.
    static HANDED_OVER: std::cell::RefCell<QuantizedRows> =
        std::cell::RefCell::new(QuantizedRows::default());
}

fn quantize_row(q: &mut [u8], scales: &mut [f32], row: &[f32], vnni: bool, zero: u8) {
    #[cfg(target_arch = "x86_64")]
    if vnni {
        // SAFETY: `vnni` is only true where the CPU has the features (`has_vnni`);
        // the slices' lengths are what `quantize_rows` made.
        return unsafe { vnni::quantize_row(q, scales, row, zero) };
    }
    for ((q, scale), values) in q.chunks_mut(GROUP).zip(scales).zip(row.chunks(GROUP)) {
        quantize_group(q, scale, values, zero);
    }
}

dispatch!(quantize_group, (q: &mut [u8], scale: &mut f32, row: &[f32], zero: u8), {
    let max = crate::math::lane_max_abs(row);
    *scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / *scale;
    for (q, &v) in q.iter_mut().zip(row) {
        // Round to nearest without libm's `round` (which would stop vectorization).
        const SHIFTER: f32 = 12_582_912.0;
        let r = (v * inv + SHIFTER) - SHIFTER;
        *q = (r.clamp(-127.0, 127.0) as i32 + zero as i32) as u8;
    }
});

/// `a`: m × k row-major. Returns m × n: `a·Wᵀ + bias` through int8, then the epilogue.
pub fn linear(
    a: &[f32],
    m: usize,
    w: &PackedInt8Weight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    linear_on(a, m, w, bias, epilogue, Kernel::for_weight(w))
}

/// `down(epilogue(a·upᵀ + up_bias)) + down_bias`, a feed-forward block, with the
/// inner activation quantized row by row as the up product finishes it
/// ([`crate::chain`]).
pub fn chained(
    a: &[f32],
    m: usize,
    up: (&PackedInt8Weight, Option<&[f32]>),
    epilogue: Epilogue,
    down: (&PackedInt8Weight, Option<&[f32]>),
) -> Vec<f32> {
    crate::chain::chained::<Int8>(a, m, up, epilogue, down)
}

/// Quantized activation rows (as `quantize_rows` makes them) and their scales.
#[derive(Default)]
struct QuantizedRows {
    q: AlignedVec<u8>,
    scales: Vec<f32>,
}

/// The int8 products, for [`crate::chain`].
struct Int8;

impl LowPrecision for Int8 {
    type Weight = PackedInt8Weight;
    type Kernel = Kernel;
    type Rows = QuantizedRows;

    fn kernel(w: &PackedInt8Weight) -> Kernel {
        Kernel::for_weight(w)
    }

    fn shape(w: &PackedInt8Weight) -> (usize, usize, usize) {
        (w.k, w.n, w.panels)
    }

    fn rows_per_task(kernel: Kernel) -> usize {
        kernel.mc()
    }

    fn linear(
        a: &[f32],
        m: usize,
        w: &PackedInt8Weight,
        bias: Option<&[f32]>,
        epilogue: Epilogue,
        kernel: Kernel,
    ) -> Vec<f32> {
        linear_on(a, m, w, bias, epilogue, kernel)
    }

    fn buffers() -> [&'static Buffer<Self::Rows>; 2] {
        [&QUANTIZED, &HANDED_OVER]
    }

    fn convert(rows: &mut Self::Rows, a: &[f32], m: usize, w: &PackedInt8Weight, kernel: Kernel) {
        let k = w.k;
        assert_eq!(a.len(), m * k, "input of {m}×{k} has {} values", a.len());
        rows.scales = quantize_for(&mut rows.q, a, m, w, kernel);
    }

    fn fill_rows<R>(
        rows: &mut Self::Rows,
        m: usize,
        w: &PackedInt8Weight,
        kernel: Kernel,
        f: impl FnOnce(&(dyn Fn(usize, &[f32]) + Sync)) -> R,
    ) -> R {
        let (k, k4, groups) = (w.k, w.k4, w.groups);
        let (vnni, zero) = (kernel.vnni(), kernel.zero());
        rows.scales = padded(&mut rows.q, (m, kernel.rows(m)), (k, k4), zero);
        let (q, s) = (
            OutPtr(rows.q.as_mut_ptr()),
            OutPtr(rows.scales.as_mut_ptr()),
        );
        let write = move |r: usize, row: &[f32]| {
            // SAFETY: row r < m of both buffers, which only the task holding that row
            // writes.
            let (q, s) = unsafe {
                (
                    std::slice::from_raw_parts_mut(q.get().add(r * k4), k4),
                    std::slice::from_raw_parts_mut(s.get().add(r * groups), groups),
                )
            };
            quantize_row(q, s, row, vnni, zero);
        };
        f(&write)
    }

    fn product(
        rows: &Self::Rows,
        m: usize,
        w: &PackedInt8Weight,
        finish: Finish,
        kernel: Kernel,
    ) -> Vec<f32> {
        product(&rows.q, &rows.scales, m, w, finish, kernel)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// `tdpbssd` on 32×32 blocks (one tile's depth is one activation group).
    Amx,
    Vnni,
    Portable,
}

impl Kernel {
    fn for_weight(w: &PackedInt8Weight) -> Self {
        if !has_vnni() {
            Kernel::Portable
        } else if amx::usable() && w.k4.is_multiple_of(GROUP) {
            Kernel::Amx
        } else {
            Kernel::Vnni
        }
    }

    /// Rows of activations the kernel reads for m rows: the AMX kernel reads whole
    /// blocks of 32.
    fn rows(self, m: usize) -> usize {
        match self {
            Kernel::Amx => m.div_ceil(AMX_ROWS) * AMX_ROWS,
            _ => m,
        }
    }

    /// Rows per task.
    fn mc(self) -> usize {
        match self {
            Kernel::Amx => 3 * AMX_ROWS,
            _ => MC,
        }
    }

    /// The quantized activations' zero point: `vpdpbusd`'s are unsigned.
    fn zero(self) -> u8 {
        match self {
            Kernel::Amx => 0,
            _ => 128,
        }
    }

    /// Whether the AVX-512 quantizer runs (where the CPU has VNNI).
    fn vnni(self) -> bool {
        self != Kernel::Portable
    }
}

/// Whether this CPU runs the AVX512-VNNI kernels (else the portable ones).
fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu_has!("avx512vnni", "avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn linear_on(
    a: &[f32],
    m: usize,
    w: &PackedInt8Weight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    kernel: Kernel,
) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    assert_eq!(a.len(), m * k, "input of {m}×{k} has {} values", a.len());
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    let mut rows = QUANTIZED.with(|q| q.take());
    rows.scales = quantize_for(&mut rows.q, a, m, w, kernel);
    let out = product(
        &rows.q,
        &rows.scales,
        m,
        w,
        Finish::new(bias, epilogue),
        kernel,
    );
    QUANTIZED.with(|q| q.replace(rows));
    out
}

/// `a`'s m rows quantized into `q` as `kernel` reads them for a product with `w`;
/// returns their scales.
fn quantize_for(
    q: &mut AlignedVec<u8>,
    a: &[f32],
    m: usize,
    w: &PackedInt8Weight,
    kernel: Kernel,
) -> Vec<f32> {
    let io = (kernel.vnni(), kernel.zero());
    quantize_rows(q, a, (m, kernel.rows(m)), (w.k, w.k4), io)
}

/// The product of m quantized rows (`qa`, `row_scales`: what `quantize_rows` made
/// for `kernel`) and W, finished by `finish`.
fn product(
    qa: &[u8],
    row_scales: &[f32],
    m: usize,
    w: &PackedInt8Weight,
    finish: Finish,
    kernel: Kernel,
) -> Vec<f32> {
    let (k4, n, groups) = (w.k4, w.n, w.groups);
    let vnni = kernel.vnni();
    // The AMX kernel runs the bias and the epilogue on each block itself.
    let in_kernel = kernel == Kernel::Amx;
    let tiles = |rows: std::ops::Range<usize>, panels: std::ops::Range<usize>, out: OutPtr| {
        if in_kernel {
            let then = (finish.bias, finish.epilogue);
            // SAFETY: AMX is usable, k4 a multiple of GROUP; qa and row_scales hold
            // whole blocks of 32 rows; rows and panels are this task's.
            return unsafe { amx::task((qa, row_scales), w, rows, panels, out, then) };
        }
        for j in panels {
            for r0 in rows.clone().step_by(MR) {
                let tile = Tile {
                    a: &qa[r0 * k4..],
                    lda: k4,
                    row_scales: &row_scales[r0 * groups..],
                    rows: MR.min(rows.end - r0),
                    groups,
                    b: &w.data[j * k4 * NR..][..k4 * NR],
                    shifts: &w.shifts[j * groups * NR..][..groups * NR],
                    col_scales: &w.scales[j * NR..][..NR],
                    cols: NR.min(n - j * NR),
                };
                // SAFETY: rows r0..r0+rows, columns j·NR..j·NR+cols are this task's.
                unsafe {
                    let c = out.get().add((r0 - rows.start) * n + j * NR);
                    micro_tile(&tile, c, n, vnni)
                };
            }
        }
    };
    let finish = match in_kernel {
        true => finish.rows_only(),
        false => finish,
    };
    // SAFETY: the AMX task and every micro-tile store all of their outputs.
    unsafe { tiled_output(m, n, kernel.mc(), w.panels, finish, tiles) }
}

/// One register tile's inputs: `rows` (≤ MR) u8 rows of A (stride `lda`, all of
/// the depth), their scales (stride `groups`), one panel of W with its shifts and
/// column scales.
struct Tile<'a> {
    a: &'a [u8],
    lda: usize,
    row_scales: &'a [f32],
    rows: usize,
    groups: usize,
    b: &'a [i8],
    shifts: &'a [i32],
    col_scales: &'a [f32],
    cols: usize,
}

impl Tile<'_> {
    /// Depths of group `g` (the last may be short).
    fn depth(&self, g: usize) -> usize {
        GROUP.min(self.lda - g * GROUP)
    }
}

/// C[rows × cols] = dequantized A·W over the whole depth.
///
/// # Safety
/// `c` points at a block of rows × cols values with row stride `ldc`; `vnni` only
/// where `has_vnni()`.
unsafe fn micro_tile(t: &Tile, c: *mut f32, ldc: usize, vnni: bool) {
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if vnni {
            // SAFETY: only true where the CPU has the features; the caller's contract covers c.
            return vnni::kernel(t, c, ldc);
        }
        let mut sums = [0f32; MR * NR];
        for (i, sums) in sums.chunks_mut(NR).enumerate().take(t.rows) {
            for g in 0..t.groups {
                let d0 = g * GROUP;
                let row = &t.a[i * t.lda + d0..][..t.depth(g)];
                let mut acc = [0i32; NR];
                for (q, quad) in row.chunks_exact(4).enumerate() {
                    let w = &t.b[(d0 / 4 + q) * NR * 4..][..NR * 4];
                    for (c, acc) in acc.iter_mut().enumerate() {
                        for u in 0..4 {
                            *acc += quad[u] as i32 * w[c * 4 + u] as i32;
                        }
                    }
                }
                let rs = t.row_scales[i * t.groups + g];
                for ((s, a), shift) in sums.iter_mut().zip(acc).zip(&t.shifts[g * NR..]) {
                    *s += (a - shift) as f32 * rs;
                }
            }
        }
        for i in 0..t.rows {
            for j in 0..t.cols {
                c.add(i * ldc + j).write(sums[i * NR + j] * t.col_scales[j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Tile, GROUP, MR, NR};

    /// Steps of 4 depths that W's prefetch runs ahead of its loads.
    const B_AHEAD: usize = 16;
    use std::arch::x86_64::*;

    /// `quantize_group` over a row, a group (4 vectors) at a time in registers: the
    /// generic version's `f32::max` and saturating casts cost as much as the product.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `q` is at least as long as `row`, and `scales` has one
    /// value per group of `row`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_row(q: &mut [u8], scales: &mut [f32], row: &[f32], zero: u8) {
        unsafe {
            let offset = _mm512_set1_epi32(zero as i32);
            for (g, scale) in scales.iter_mut().enumerate() {
                let d0 = g * GROUP;
                let len = GROUP.min(row.len().saturating_sub(d0));
                let masks: [__mmask16; 4] = std::array::from_fn(|v| {
                    ((1u32 << len.saturating_sub(16 * v).min(16)) - 1) as __mmask16
                });
                let x: [__m512; 4] = std::array::from_fn(|v| {
                    _mm512_maskz_loadu_ps(masks[v], row.as_ptr().add((d0 + 16 * v).min(row.len())))
                });
                let max = _mm512_max_ps(
                    _mm512_max_ps(_mm512_abs_ps(x[0]), _mm512_abs_ps(x[1])),
                    _mm512_max_ps(_mm512_abs_ps(x[2]), _mm512_abs_ps(x[3])),
                );
                let max = _mm512_reduce_max_ps(max);
                *scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                let inv = _mm512_set1_ps(1.0 / *scale);
                for (v, (&x, &mask)) in x.iter().zip(&masks).enumerate() {
                    // Round to nearest even (the default mode), as the generic version.
                    let i = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x, inv)), offset);
                    _mm512_mask_cvtepi32_storeu_epi8(
                        q.as_mut_ptr().add(d0 + 16 * v) as *mut _,
                        mask,
                        i,
                    );
                }
            }
        }
    }

    /// Per group of 4 depths, two 64-byte loads of W and MR broadcasts of 4
    /// activation bytes feed 12 `vpdpbusd`; after each group of 64 depths the 12
    /// i32 sums are shifted, converted and added into 12 f32 sums at the rows'
    /// scales, all in registers.
    ///
    /// # Safety
    /// The CPU has AVX512-VNNI (and BW); the tile's rows, scales and panel are readable
    /// to depth `t.lda`; `out` points at `t.rows` writable rows of NR values, `ldc`
    /// apart.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn kernel(t: &Tile, out: *mut f32, ldc: usize) {
        unsafe {
            let rows = t.rows;
            // Rows past `rows` read row 0 again (their sums are never stored).
            let row_ptr: [*const u8; MR] =
                std::array::from_fn(|i| t.a.as_ptr().add(if i < rows { i * t.lda } else { 0 }));
            let scale_ptr: [*const f32; MR] = std::array::from_fn(|i| {
                t.row_scales
                    .as_ptr()
                    .add(if i < rows { i * t.groups } else { 0 })
            });
            let mut f = [[_mm512_setzero_ps(); 2]; MR];
            let mut pb = t.b.as_ptr();
            for g in 0..t.groups {
                let d0 = g * super::GROUP;
                let mut c = [[_mm512_setzero_si512(); 2]; MR];
                // The next group's line of each row, and W a few steps ahead (the
                // first row tile reads its panel from L3): as in the f32 kernel.
                for &ap in &row_ptr {
                    _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(d0 + GROUP) as *const i8);
                }
                for q in 0..t.depth(g) / 4 {
                    _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(B_AHEAD * NR * 4));
                    _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(B_AHEAD * NR * 4 + 64));
                    let b0 = _mm512_loadu_si512(pb as *const _);
                    let b1 = _mm512_loadu_si512(pb.add(64) as *const _);
                    for (ci, &ap) in c.iter_mut().zip(&row_ptr) {
                        let a =
                            _mm512_set1_epi32((ap.add(d0 + 4 * q) as *const i32).read_unaligned());
                        ci[0] = _mm512_dpbusd_epi32(ci[0], a, b0);
                        ci[1] = _mm512_dpbusd_epi32(ci[1], a, b1);
                    }
                    pb = pb.add(NR * 4);
                }
                let shift0 = _mm512_loadu_si512(t.shifts.as_ptr().add(g * NR) as *const _);
                let shift1 = _mm512_loadu_si512(t.shifts.as_ptr().add(g * NR + 16) as *const _);
                for ((fi, ci), &sp) in f.iter_mut().zip(&c).zip(&scale_ptr) {
                    let rs = _mm512_set1_ps(*sp.add(g));
                    fi[0] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(_mm512_sub_epi32(ci[0], shift0)),
                        rs,
                        fi[0],
                    );
                    fi[1] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(_mm512_sub_epi32(ci[1], shift1)),
                        rs,
                        fi[1],
                    );
                }
            }
            let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
            let (m0, m1) = (mask(t.cols), mask(t.cols.saturating_sub(16)));
            let scale0 = _mm512_loadu_ps(t.col_scales.as_ptr());
            let scale1 = _mm512_loadu_ps(t.col_scales.as_ptr().add(16));
            for (i, fi) in f.iter().enumerate().take(rows) {
                let row = out.add(i * ldc);
                _mm512_mask_storeu_ps(row, m0, _mm512_mul_ps(fi[0], scale0));
                _mm512_mask_storeu_ps(row.add(16), m1, _mm512_mul_ps(fi[1], scale1));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{PackedInt8Weight, AMX_ROWS, GROUP, NR};
    use crate::amx::{dot_i8i8, load, store, with_tiles, zero};
    use crate::gemm::{bias_block, finish_block_row};
    use crate::gemm::{Epilogue, OutPtr};
    use std::arch::x86_64::*;

    pub use crate::amx::int8 as usable;

    /// Groups whose i32 tiles are stored before they are rescaled together: their
    /// f32 sums then stay in a register across the batch, where one group at a time
    /// loaded and stored every sum once per group. Six 32×32 blocks of i32 are
    /// 24 KB, half of L1. (Measured within noise: the block's time goes to loading
    /// W's tiles from L2, not to the rescaling; kept for the memory traffic it saves.)
    const BATCH: usize = 6;

    /// A 32×32 block of i32 or f32 sums on a cache line.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Block<T>([T; AMX_ROWS * NR]);

    /// Rows `rows` × panels `panels` of the output: per 32×32 block and group of
    /// 64 depths, four `tdpbssd` into 16×16 i32 tiles, stored; per batch of groups,
    /// each i32 sum converted and added into an f32 sum at its row's group scale;
    /// then the columns' scales, the bias and the epilogue. `out` points at row
    /// `rows.start` of the output.
    ///
    /// # Safety
    /// `usable()`; `w.k4` a multiple of GROUP; `qa` (signed bytes, rows `w.k4`
    /// apart) and `row_scales` (`w.groups` per row) hold whole 32-row blocks; rows
    /// and panels are this task's alone.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn task(
        (qa, row_scales): (&[u8], &[f32]),
        w: &PackedInt8Weight,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        out: OutPtr,
        (bias, epilogue): (Option<&[f32]>, Epilogue),
    ) {
        unsafe {
            let (k4, n, groups) = (w.k4, w.n, w.groups);
            let mut ints = [Block([0i32; AMX_ROWS * NR]); BATCH];
            let mut sums = Block([0f32; AMX_ROWS * NR]);
            with_tiles(|| {
                for r0 in rows.clone().step_by(AMX_ROWS) {
                    let a = qa[r0 * k4..(r0 + AMX_ROWS) * k4].as_ptr();
                    let scales = &row_scales[r0 * groups..(r0 + AMX_ROWS) * groups];
                    let valid_rows = AMX_ROWS.min(rows.end - r0);
                    for j in panels.clone() {
                        let panel = w.data[j * k4 * NR..][..k4 * NR].as_ptr() as *const u8;
                        let cols = NR.min(n - j * NR);
                        let mask = |lanes: usize| ((1u32 << lanes.min(16)) - 1) as __mmask16;
                        let masks = [mask(cols), mask(cols.saturating_sub(16))];
                        let col_scales =
                            [0, 16].map(|c| _mm512_loadu_ps(w.scales[j * NR + c..].as_ptr()));
                        let bias = bias_block(bias, j * NR);
                        for g0 in (0..groups).step_by(BATCH) {
                            let batch = BATCH.min(groups - g0);
                            for (b, ints) in ints[..batch].iter_mut().enumerate() {
                                // One group: 16 quads of depths × NR columns × 4 bytes of W.
                                let g = g0 + b;
                                let (pa, pb) = (a.add(g * GROUP), panel.add(g * GROUP * NR));
                                zero::<0>();
                                zero::<1>();
                                zero::<2>();
                                zero::<3>();
                                load::<4>(pa, k4);
                                load::<6>(pb, NR * 4);
                                dot_i8i8::<0, 4, 6>();
                                load::<7>(pb.add(64), NR * 4);
                                dot_i8i8::<1, 4, 7>();
                                load::<5>(pa.add(16 * k4), k4);
                                dot_i8i8::<2, 5, 6>();
                                dot_i8i8::<3, 5, 7>();
                                let c = ints.0.as_mut_ptr() as *mut u8;
                                store::<0>(c, NR * 4);
                                store::<1>(c.add(64), NR * 4);
                                store::<2>(c.add(16 * NR * 4), NR * 4);
                                store::<3>(c.add(16 * NR * 4 + 64), NR * 4);
                            }
                            let last = g0 + batch == groups;
                            for r in 0..AMX_ROWS {
                                let row_scales = &scales[r * groups + g0..][..batch];
                                let mut row = [0f32; NR];
                                for (h, &col_scale) in col_scales.iter().enumerate() {
                                    let at = r * NR + 16 * h;
                                    let sum = sums.0.as_mut_ptr().add(at);
                                    let mut acc = match g0 {
                                        0 => _mm512_setzero_ps(),
                                        _ => _mm512_load_ps(sum),
                                    };
                                    for (ints, &s) in ints.iter().zip(row_scales) {
                                        let i =
                                            _mm512_load_si512(ints.0.as_ptr().add(at) as *const _);
                                        acc = _mm512_fmadd_ps(
                                            _mm512_cvtepi32_ps(i),
                                            _mm512_set1_ps(s),
                                            acc,
                                        );
                                    }
                                    if !last {
                                        _mm512_store_ps(sum, acc);
                                    } else {
                                        let v = _mm512_mul_ps(acc, col_scale);
                                        _mm512_storeu_ps(row.as_mut_ptr().add(16 * h), v);
                                    }
                                }
                                if last && r < valid_rows {
                                    finish_block_row(&mut row, &bias, epilogue);
                                    let dst = out.get().add((r0 - rows.start + r) * n + j * NR);
                                    for (h, &mask) in masks.iter().enumerate() {
                                        let v = _mm512_loadu_ps(row.as_ptr().add(16 * h));
                                        _mm512_mask_storeu_ps(dst.add(16 * h), mask, v);
                                    }
                                }
                            }
                        }
                    }
                }
            })
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub fn usable() -> bool {
        false
    }

    /// Never called: no AMX off x86-64.
    ///
    /// # Safety
    /// Never called (no AMX off x86-64).
    pub unsafe fn task(
        _: (&[u8], &[f32]),
        _: &super::PackedInt8Weight,
        _: std::ops::Range<usize>,
        _: std::ops::Range<usize>,
        _: super::OutPtr,
        _: (Option<&[f32]>, super::Epilogue),
    ) {
        unreachable!("AMX off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn int8_product_is_close_to_f32() {
        for &(m, n, k) in &[(1, 1, 1), (5, 33, 7), (13, 64, 300), (30, 70, 1030)] {
            let a = values(m * k, 1);
            let w = values(n * k, 2);
            let bias = values(n, 3);
            let exact = crate::gemm::linear(
                &a,
                m,
                &crate::gemm::PackedWeight::pack(&w, n, k),
                Some(&bias),
                Epilogue::None,
            );
            let got = linear(
                &a,
                m,
                &PackedInt8Weight::pack(&w, n, k),
                Some(&bias),
                Epilogue::None,
            );
            // Each product carries up to half a step of both scales: bound the error by
            // k · (|a|max·|w|max) / 127 (a loose but exact-arithmetic-free bound).
            let bound = k as f32 * 0.25 / 127.0;
            let worst = got
                .iter()
                .zip(&exact)
                .map(|(g, e)| (g - e).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < bound,
                "{m}×{n}×{k}: worst difference {worst} (bound {bound})"
            );
            let dot: f32 = got.iter().zip(&exact).map(|(g, e)| g * e).sum();
            let norms = got.iter().map(|g| g * g).sum::<f32>().sqrt()
                * exact.iter().map(|e| e * e).sum::<f32>().sqrt();
            assert!(dot / norms > 0.999, "{m}×{n}×{k}: cosine {}", dot / norms);
        }
    }

    #[test]
    fn chained_products_equal_the_two_products() {
        crate::testing::chained_equals_two_products(PackedInt8Weight::pack, linear, chained);
    }

    #[test]
    fn vnni_amx_and_portable_kernels_agree() {
        let test = "vnni_amx_and_portable_kernels_agree";
        if !crate::testing::can_check("vnni", has_vnni(), test) {
            return;
        }
        // AMX is checked where the CPU has it, and reported as skipped elsewhere.
        let amx = crate::testing::can_check("amx", amx::usable(), test);
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 45, 130),
            (13, 64, 300),
            (30, 70, 1030),
            (200, 40, 70),
            (1, 5, 192),
            (33, 70, 128),
            (100, 64, 384),
        ] {
            let a = values(m * k, 4);
            let w = PackedInt8Weight::pack(&values(n * k, 5), n, k);
            let bias = values(n, 6);
            let k4 = k.div_ceil(4) * 4;
            // Same bytes and scales from both quantizers, at both zero points.
            for zero in [0, 128] {
                let quantized = |vnni| {
                    let mut q = AlignedVec::default();
                    let scales = quantize_rows(&mut q, &a, (m, m), (k, k4), (vnni, zero));
                    (q.to_vec(), scales)
                };
                assert_eq!(
                    quantized(true),
                    quantized(false),
                    "{m}×{k}, zero {zero}: quantized activations differ"
                );
            }
            let run = |kernel| linear_on(&a, m, &w, Some(&bias), Epilogue::GeluErf, kernel);
            let portable = run(Kernel::Portable);
            let mut kernels = vec![Kernel::Vnni];
            if amx && k4.is_multiple_of(GROUP) {
                kernels.push(Kernel::Amx);
            }
            for kernel in kernels {
                let fast = run(kernel);
                for (i, (f, p)) in fast.iter().zip(&portable).enumerate() {
                    // The same integer sums; only the order of the f32 rescaling differs.
                    assert!(
                        (f - p).abs() <= 1e-5 * (1.0 + p.abs()),
                        "{kernel:?} {m}×{n}×{k} [{i}]: {f} vs {p}"
                    );
                }
            }
        }
    }
}
