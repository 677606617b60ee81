//! The bf16 linear layer: weights stored as bf16 (converted at the first call),
//! activations rounded to bf16 at each call, products summed in f32 by
//! AVX512-BF16's `vdpbf16ps` (two multiply-adds per lane and instruction, against
//! one for f32 FMA). bf16 keeps f32's exponent range, so nothing is scaled; the
//! cost is 8 bits of mantissa on each input.
//!
//! Where the CPU has AMX (Sapphire Rapids and later), its tile unit does the
//! products instead: `tdpbf16ps` multiplies a 16×32 tile of A by a 32×16 tile of W
//! into 16×16 f32 sums, 16× the work of one AVX-512 instruction. Without AMX,
//! the same blocking as the f32 kernel ([`crate::gemm`]): a 12×32 register tile
//! over pairs of depths (what one `vdpbf16ps` lane reads). Depths are padded to a
//! multiple of 32 (one AMX tile) with zeros.

use crate::aligned::AlignedVec;
use crate::chain::{Buffer, LowPrecision};
use crate::gemm::{tiled_output, Epilogue, Finish, OutPtr, NR};
use rayon::prelude::*;

/// Rows of the register tile (24 of the 32 zmm registers hold its sums).
const MR: usize = 12;
/// Rows per task (a multiple of the AMX kernel's 32 rows too).
const MC: usize = 8 * MR;
/// Depths per AMX tile of A (32 bf16 = 64 bytes, a tile row).
const DEPTH_STEP: usize = 32;
/// Rows of the AMX kernel's block: two tiles of 16.
const AMX_ROWS: usize = 32;

/// f32 → bf16, rounding to nearest even (as `vcvtne2ps2bf16`); NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = 0x7fff + ((bits >> 16) & 1);
    // A select, not a branch, so loops over it vectorize.
    let nan = (bits >> 16) | 0x40;
    let rounded = bits.wrapping_add(round) >> 16;
    (if x.is_nan() { nan } else { rounded }) as u16
}

#[inline(always)]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// W (out × in) as bf16 in NR-column panels over the whole depth; within a panel,
/// for each pair of depths, NR columns × 2 values.
#[derive(Debug)]
pub struct PackedBf16Weight {
    k: usize,
    /// k rounded up to a multiple of 32 (zero padding).
    k2: usize,
    n: usize,
    panels: usize,
    data: AlignedVec<u16>,
}

impl PackedBf16Weight {
    /// `w`: out × in row-major (n = out, k = in).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let k2 = k.div_ceil(DEPTH_STEP) * DEPTH_STEP;
        let panels = n.div_ceil(NR);
        let mut data = AlignedVec::zeroed(panels * NR * k2);
        data.par_chunks_mut((k2 * NR).max(1))
            .enumerate()
            .for_each(|(j, panel)| {
                for c in 0..NR.min(n - j * NR) {
                    for (p, &v) in w[(j * NR + c) * k..][..k].iter().enumerate() {
                        panel[(p / 2 * NR + c) * 2 + p % 2] = to_bf16(v);
                    }
                }
            });
        Self {
            k,
            k2,
            n,
            panels,
            data,
        }
    }

    /// `wt`: Wᵀ, in × out row-major (k × n): a weight as training's backward pass
    /// meets it (W itself for the input's gradient, X for the weights').
    pub fn pack_transposed(wt: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(wt.len(), n * k, "weight of {k}×{n} has {} values", wt.len());
        let k2 = k.div_ceil(DEPTH_STEP) * DEPTH_STEP;
        let panels = n.div_ceil(NR);
        let mut data = AlignedVec::zeroed(panels * NR * k2);
        data.par_chunks_mut((k2 * NR).max(1))
            .enumerate()
            .for_each(|(j, panel)| {
                let cols = NR.min(n - j * NR);
                let zeros = [0f32; NR];
                for (pair, dst) in panel
                    .chunks_exact_mut(2 * NR)
                    .take(k.div_ceil(2))
                    .enumerate()
                {
                    let even = &wt[2 * pair * n + j * NR..][..cols];
                    let odd = match 2 * pair + 1 < k {
                        true => &wt[(2 * pair + 1) * n + j * NR..][..cols],
                        false => &zeros[..cols],
                    };
                    write_pairs(dst, even, odd);
                }
            });
        Self {
            k,
            k2,
            n,
            panels,
            data,
        }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }
}

/// `a`: m × k row-major. Returns m × n: `a·Wᵀ + bias` through bf16, then the epilogue.
pub fn linear(
    a: &[f32],
    m: usize,
    w: &PackedBf16Weight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    product(Lhs::Rows(a), m, w, bias, epilogue)
}

/// The m × k left operand A: its rows (A row-major), or its columns (Aᵀ row-major,
/// k × m: the output's gradient, as the weights' gradient dYᵀ·X reads it).
#[derive(Debug, Clone, Copy)]
pub enum Lhs<'a> {
    Rows(&'a [f32]),
    Columns(&'a [f32]),
}

/// m × n: `A·Wᵀ + bias` through bf16, then the epilogue.
pub fn product(
    a: Lhs,
    m: usize,
    w: &PackedBf16Weight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    linear_on(a, m, w, bias, epilogue, Kernel::here())
}

/// `down(epilogue(a·upᵀ + up_bias)) + down_bias`, a feed-forward block, with the
/// inner activation converted to bf16 row by row as the up product finishes it
/// ([`crate::chain`]).
pub fn chained(
    a: &[f32],
    m: usize,
    up: (&PackedBf16Weight, Option<&[f32]>),
    epilogue: Epilogue,
    down: (&PackedBf16Weight, Option<&[f32]>),
) -> Vec<f32> {
    crate::chain::chained::<Bf16>(a, m, up, epilogue, down)
}

/// The bf16 products, for [`crate::chain`].
struct Bf16;

impl LowPrecision for Bf16 {
    type Weight = PackedBf16Weight;
    type Kernel = Kernel;
    type Rows = AlignedVec<u16>;

    fn kernel(_: &PackedBf16Weight) -> Kernel {
        Kernel::here()
    }

    fn shape(w: &PackedBf16Weight) -> (usize, usize, usize) {
        (w.k, w.n, w.panels)
    }

    fn rows_per_task(_: Kernel) -> usize {
        MC
    }

    fn linear(
        a: &[f32],
        m: usize,
        w: &PackedBf16Weight,
        bias: Option<&[f32]>,
        epilogue: Epilogue,
        kernel: Kernel,
    ) -> Vec<f32> {
        linear_on(Lhs::Rows(a), m, w, bias, epilogue, kernel)
    }

    fn buffers() -> [&'static Buffer<Self::Rows>; 2] {
        [&ROWS, &HANDED_OVER]
    }

    fn convert(rows: &mut Self::Rows, a: &[f32], m: usize, w: &PackedBf16Weight, kernel: Kernel) {
        rows_of(rows, Lhs::Rows(a), m, w.k, w.k2, kernel);
    }

    fn fill_rows<R>(
        rows: &mut Self::Rows,
        m: usize,
        w: &PackedBf16Weight,
        kernel: Kernel,
        f: impl FnOnce(&(dyn Fn(usize, &[f32]) + Sync)) -> R,
    ) -> R {
        let (k, k2) = (w.k, w.k2);
        rows.reuse(padded_rows(m) * k2);
        rows[m * k2..].fill(0);
        let (native, q) = (kernel.native(), OutPtr(rows.as_mut_ptr()));
        let write = move |r: usize, row: &[f32]| {
            // SAFETY: row r < m, which only the task holding that row writes.
            let q = unsafe { std::slice::from_raw_parts_mut(q.get().add(r * k2), k2) };
            convert_row(q, row, native);
            q[k..].fill(0);
        };
        f(&write)
    }

    fn product(
        rows: &Self::Rows,
        m: usize,
        w: &PackedBf16Weight,
        finish: Finish,
        kernel: Kernel,
    ) -> Vec<f32> {
        product_of_rows(rows, m, w, finish, kernel)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Amx,
    Avx512,
    Portable,
}

impl Kernel {
    /// The fastest this CPU has.
    fn here() -> Self {
        if amx::usable() {
            Kernel::Amx
        } else if has_bf16() {
            Kernel::Avx512
        } else {
            Kernel::Portable
        }
    }

    /// Whether rows are converted with AVX512-BF16's `vcvtne2ps2bf16` (which an
    /// AMX CPU need not expose).
    fn native(self) -> bool {
        self != Kernel::Portable && has_bf16()
    }
}

/// Rows the kernels read for m rows: the AMX kernel reads whole blocks of 32.
fn padded_rows(m: usize) -> usize {
    m.div_ceil(AMX_ROWS) * AMX_ROWS
}

/// Whether this CPU runs the AVX512-BF16 kernel (else the portable one).
fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu_has!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn linear_on(
    a: Lhs,
    m: usize,
    w: &PackedBf16Weight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    kernel: Kernel,
) -> Vec<f32> {
    let (k, k2, n) = (w.k, w.k2, w.n);
    let (Lhs::Rows(values) | Lhs::Columns(values)) = a;
    assert_eq!(
        values.len(),
        m * k,
        "input of {m}×{k} has {} values",
        values.len()
    );
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    let mut rows = ROWS.with(|r| r.take());
    rows_of(&mut rows, a, m, k, k2, kernel);
    let out = product_of_rows(&rows, m, w, Finish::new(bias, epilogue), kernel);
    ROWS.with(|r| r.replace(rows));
    out
}

/// `rows` = A's m rows as bf16, padded to k2 with zero (and to whole AMX blocks
/// of rows).
fn rows_of(rows: &mut AlignedVec<u16>, a: Lhs, m: usize, k: usize, k2: usize, kernel: Kernel) {
    rows.reuse(padded_rows(m) * k2);
    let (valid, padding) = rows.split_at_mut(m * k2);
    padding.fill(0);
    match a {
        Lhs::Rows(a) => {
            let native = kernel.native();
            valid
                .par_chunks_mut(k2)
                .zip(a.par_chunks(k.max(1)))
                .for_each(|(q, row)| {
                    convert_row(q, row, native);
                    q[k..].fill(0);
                });
        }
        Lhs::Columns(at) => convert_columns(valid, k2, at, m, k),
    }
}

/// The product of m bf16 rows (what `rows_of` made) and W, finished by `finish`.
fn product_of_rows(
    rows: &[u16],
    m: usize,
    w: &PackedBf16Weight,
    finish: Finish,
    kernel: Kernel,
) -> Vec<f32> {
    let (k2, n) = (w.k2, w.n);
    // The AMX kernel runs the bias and the epilogue on each block itself.
    let in_kernel = kernel == Kernel::Amx;
    let tiles = |rs: std::ops::Range<usize>, panels: std::ops::Range<usize>, ptr: OutPtr| {
        if in_kernel {
            let (w, then) = ((&w.data[..], n), (finish.bias, finish.epilogue));
            // SAFETY: AMX is usable; the rows buffer holds whole 32-row blocks.
            return unsafe { amx::task(rows, k2, rs, w, panels, ptr, then) };
        }
        for j in panels {
            for r0 in rs.clone().step_by(MR) {
                let tile = Tile {
                    a: &rows[r0 * k2..],
                    lda: k2,
                    rows: MR.min(rs.end - r0),
                    b: &w.data[j * k2 * NR..][..k2 * NR],
                    cols: NR.min(n - j * NR),
                };
                // SAFETY: rows r0..r0+rows, columns j·NR..j·NR+cols are this task's.
                unsafe {
                    micro_tile(
                        &tile,
                        ptr.get().add((r0 - rs.start) * n + j * NR),
                        n,
                        kernel == Kernel::Avx512,
                    )
                };
            }
        }
    };
    let finish = match in_kernel {
        true => finish.rows_only(),
        false => finish,
    };
    // SAFETY: the AMX task and every micro-tile store all of their outputs.
    unsafe { tiled_output(m, n, MC, w.panels, finish, tiles) }
}

thread_local! {
    /// The last product's bf16 rows, kept for the next call on this thread: a fresh
    /// buffer costs a zero fill, and page faults for a large one, at every call.
    static ROWS: std::cell::RefCell<AlignedVec<u16>> =
        std::cell::RefCell::new(AlignedVec::default());
    /// [`chained`]'s inner activation as bf16 rows, kept likewise.
    static HANDED_OVER: std::cell::RefCell<AlignedVec<u16>> =
        std::cell::RefCell::new(AlignedVec::default());
}

/// The m rows `k2` apart of `rows` = the columns of `at` (k × m) as bf16, zero past
/// depth k: blocks of 16 rows in parallel, each reading one 64-byte run of every
/// line of `at`.
fn convert_columns(rows: &mut [u16], k2: usize, at: &[f32], m: usize, k: usize) {
    const BLOCK: usize = 16;
    rows.par_chunks_mut(BLOCK * k2)
        .enumerate()
        .for_each(|(b, block)| {
            let i0 = b * BLOCK;
            let count = block.len() / k2;
            let zeros = [0f32; BLOCK];
            let mut pairs = [0u32; BLOCK];
            for p in (0..k).step_by(2) {
                let even = &at[p * m + i0..][..count];
                let odd = match p + 1 < k {
                    true => &at[(p + 1) * m + i0..][..count],
                    false => &zeros[..count],
                };
                bf16_pairs(&mut pairs[..count], even, odd);
                for (i, &pair) in pairs[..count].iter().enumerate() {
                    block[i * k2 + p..][..2].copy_from_slice(&[pair as u16, (pair >> 16) as u16]);
                }
            }
            for row in block.chunks_exact_mut(k2) {
                row[k.div_ceil(2) * 2..].fill(0);
            }
        });
}

/// `dst` = (even[c], odd[c]) as bf16 for each c: a pair of depths as `vdpbf16ps`
/// and AMX's B tiles read them.
fn write_pairs(dst: &mut [u16], even: &[f32], odd: &[f32]) {
    let mut pairs = [0u32; NR];
    let pairs = &mut pairs[..even.len()];
    bf16_pairs(pairs, even, odd);
    for (q, &pair) in dst.chunks_exact_mut(2).zip(pairs.iter()) {
        q.copy_from_slice(&[pair as u16, (pair >> 16) as u16]);
    }
}

dispatch!(bf16_pairs, (out: &mut [u32], even: &[f32], odd: &[f32]), {
    for ((pair, &e), &o) in out.iter_mut().zip(even).zip(odd) {
        *pair = to_bf16(e) as u32 | (to_bf16(o) as u32) << 16;
    }
});

/// `q[..row.len()]` = `row` as bf16.
fn convert_row(q: &mut [u16], row: &[f32], native: bool) {
    #[cfg(target_arch = "x86_64")]
    if native {
        // SAFETY: `native` only where the CPU has AVX512-BF16.
        return unsafe { avx512::convert_row(q, row) };
    }
    for (q, &v) in q.iter_mut().zip(row) {
        *q = to_bf16(v);
    }
}

/// One register tile's inputs: `rows` (≤ MR) bf16 rows of A (stride `lda`, all of
/// the depth, even) and one panel of W.
struct Tile<'a> {
    a: &'a [u16],
    lda: usize,
    rows: usize,
    b: &'a [u16],
    cols: usize,
}

/// C[rows × cols] = A·W over the whole depth.
///
/// # Safety
/// `c` points at a block of rows × cols values with row stride `ldc`; `native` only
/// where `has_bf16()`.
unsafe fn micro_tile(t: &Tile, c: *mut f32, ldc: usize, native: bool) {
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if native {
            // SAFETY: only true where the CPU has the features; the caller's contract covers c.
            return avx512::kernel(t, c, ldc);
        }
        let mut sums = [0f32; MR * NR];
        for (i, sums) in sums.chunks_mut(NR).enumerate().take(t.rows) {
            let row = &t.a[i * t.lda..][..t.lda];
            for (pair, a) in row.chunks_exact(2).enumerate() {
                let w = &t.b[pair * NR * 2..][..NR * 2];
                let (a0, a1) = (from_bf16(a[0]), from_bf16(a[1]));
                for (c, s) in sums.iter_mut().enumerate() {
                    *s = a1.mul_add(from_bf16(w[2 * c + 1]), a0.mul_add(from_bf16(w[2 * c]), *s));
                }
            }
        }
        for i in 0..t.rows {
            for j in 0..t.cols {
                c.add(i * ldc + j).write(sums[i * NR + j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, MR, NR};
    use std::arch::x86_64::*;

    /// 32 values at a time by `vcvtne2ps2bf16` (round to nearest even).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `q` is at least as long as `row`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert_row(q: &mut [u16], row: &[f32]) {
        unsafe {
            let whole = row.len() / 32 * 32;
            for p in (0..whole).step_by(32) {
                let lo = _mm512_loadu_ps(row.as_ptr().add(p));
                let hi = _mm512_loadu_ps(row.as_ptr().add(p + 16));
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(q.as_mut_ptr().add(p) as *mut _, both);
            }
            for (q, &v) in q[whole..].iter_mut().zip(&row[whole..]) {
                *q = super::to_bf16(v);
            }
        }
    }

    /// Per pair of depths, two 64-byte loads of W and MR broadcasts of a row's pair
    /// of bf16 values feed 24 `vdpbf16ps`.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; the tile's rows and panel are readable to depth
    /// `t.lda`; `out` points at `t.rows` writable rows of NR values, `ldc` apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn kernel(t: &Tile, out: *mut f32, ldc: usize) {
        unsafe {
            let rows = t.rows;
            // Rows past `rows` read row 0 again (their sums are never stored).
            let row_ptr: [*const u16; MR] =
                std::array::from_fn(|i| t.a.as_ptr().add(if i < rows { i * t.lda } else { 0 }));
            let mut c = [[_mm512_setzero_ps(); 2]; MR];
            let mut pb = t.b.as_ptr();
            for pair in 0..t.lda / 2 {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb as *const _));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(32) as *const _));
                for (ci, &ap) in c.iter_mut().zip(&row_ptr) {
                    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                        (ap.add(2 * pair) as *const i32).read_unaligned(),
                    ));
                    ci[0] = _mm512_dpbf16_ps(ci[0], a, b0);
                    ci[1] = _mm512_dpbf16_ps(ci[1], a, b1);
                }
                pb = pb.add(NR * 2);
            }
            let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
            let (m0, m1) = (mask(t.cols), mask(t.cols.saturating_sub(16)));
            for (i, ci) in c.iter().enumerate().take(rows) {
                let row = out.add(i * ldc);
                _mm512_mask_storeu_ps(row, m0, ci[0]);
                _mm512_mask_storeu_ps(row.add(16), m1, ci[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{AMX_ROWS, DEPTH_STEP, NR};
    use crate::amx::{dot_bf16, load, store, with_tiles, zero};
    use crate::gemm::{bias_block, finish_block_row};
    use crate::gemm::{Epilogue, OutPtr};

    pub use crate::amx::bf16 as usable;

    /// Rows `rows` × panels `panels` of the output (of `n` columns; `out` points at
    /// row `rows.start`), all of the depth, plus the bias, then the epilogue.
    ///
    /// # Safety
    /// `usable()`; `a` holds whole 32-row blocks of `lda` bf16 each (a multiple of
    /// 32); rows and panels are this task's alone.
    pub unsafe fn task(
        a: &[u16],
        lda: usize,
        rows: std::ops::Range<usize>,
        (w, n): (&[u16], usize),
        panels: std::ops::Range<usize>,
        out: OutPtr,
        (bias, epilogue): (Option<&[f32]>, Epilogue),
    ) {
        unsafe {
            let plain = bias.is_none() && epilogue == Epilogue::None;
            with_tiles(|| {
                let mut sums = Block([0f32; AMX_ROWS * NR]);
                for r0 in rows.clone().step_by(AMX_ROWS) {
                    let block_rows = &a[r0 * lda..(r0 + AMX_ROWS) * lda];
                    for j in panels.clone() {
                        let panel = w[j * lda * NR..][..lda * NR].as_ptr();
                        let cols = NR.min(n - j * NR);
                        let dst = out.get().add((r0 - rows.start) * n + j * NR);
                        let whole = cols == NR && rows.end - r0 >= AMX_ROWS;
                        if plain
                            && whole
                            && (dst as usize).is_multiple_of(64)
                            && n.is_multiple_of(16)
                        {
                            // Tiles go straight into the output where its lines allow.
                            block(block_rows.as_ptr(), lda, panel, dst, n);
                            continue;
                        }
                        block(block_rows.as_ptr(), lda, panel, sums.0.as_mut_ptr(), NR);
                        let bias = bias_block(bias, j * NR);
                        let rows = AMX_ROWS.min(rows.end - r0);
                        finish_rows(&sums, rows, (cols, dst, n), &bias, epilogue);
                    }
                }
            })
        }
    }

    /// A 32×32 block of sums on a cache line (tile stores that straddle lines are
    /// slow, as loads are).
    #[repr(C, align(64))]
    struct Block([f32; AMX_ROWS * NR]);

    /// The first `rows` × `cols` of `block`, plus `bias`, then the epilogue, into
    /// `dst` (rows `ldc` apart), in AVX-512 (every AMX CPU has AVX-512).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dst` points at `rows` writable rows of `cols` values,
    /// `ldc` apart.
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_rows(
        block: &Block,
        rows: usize,
        (cols, dst, ldc): (usize, *mut f32, usize),
        bias: &[f32; NR],
        epilogue: Epilogue,
    ) {
        unsafe {
            use std::arch::x86_64::*;
            let mask = |lanes: usize| ((1u32 << lanes.min(16)) - 1) as __mmask16;
            let masks = [mask(cols), mask(cols.saturating_sub(16))];
            for i in 0..rows {
                let mut row: [f32; NR] = block.0[i * NR..][..NR].try_into().unwrap();
                finish_block_row(&mut row, bias, epilogue);
                for (h, &m) in masks.iter().enumerate() {
                    let v = _mm512_loadu_ps(row.as_ptr().add(16 * h));
                    _mm512_mask_storeu_ps(dst.add(i * ldc + 16 * h), m, v);
                }
            }
        }
    }

    /// 32 rows of A (from `a`, `lda` bf16 apart) times one 32-column panel of W
    /// over the whole depth, into a 32×32 block of `c` (rows `ldc` apart) as four
    /// 16×16 tiles.
    ///
    /// # Safety
    /// Inside [`with_tiles`]; `a` has 32 readable rows of `lda` values, `panel` the
    /// packed panel to depth `lda`, `c` a writable 32×32 block (rows `ldc` apart).
    #[inline]
    unsafe fn block(a: *const u16, lda: usize, panel: *const u16, c: *mut f32, ldc: usize) {
        unsafe {
            zero::<0>();
            zero::<1>();
            zero::<2>();
            zero::<3>();
            let (sa, sb) = (lda * 2, NR * 2 * 2);
            for t in 0..lda / DEPTH_STEP {
                let pa = a.add(t * DEPTH_STEP) as *const u8;
                // Each step: 16 pairs of depths × NR columns × 2 values of the panel.
                let pb = panel.add(t * DEPTH_STEP * NR) as *const u8;
                // Each product starts as soon as its two tiles are in, while the
                // next tile loads.
                load::<4>(pa, sa);
                load::<6>(pb, sb);
                dot_bf16::<0, 4, 6>();
                load::<7>(pb.add(64), sb);
                dot_bf16::<1, 4, 7>();
                load::<5>(pa.add(16 * sa), sa);
                dot_bf16::<2, 5, 6>();
                dot_bf16::<3, 5, 7>();
            }
            let c = c as *mut u8;
            let s = ldc * 4;
            store::<0>(c, s);
            store::<1>(c.add(64), s);
            store::<2>(c.add(16 * s), s);
            store::<3>(c.add(16 * s + 64), s);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub use crate::amx::bf16 as usable;

    /// Never called: `usable()` is false.
    ///
    /// # Safety
    /// Never called (`usable()` is false off x86-64).
    pub unsafe fn task(
        _: &[u16],
        _: usize,
        _: std::ops::Range<usize>,
        _: (&[u16], usize),
        _: std::ops::Range<usize>,
        _: crate::gemm::OutPtr,
        _: (Option<&[f32]>, crate::gemm::Epilogue),
    ) {
        unreachable!("no AMX off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between two bf16 values: to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2⁻⁸ is halfway too: up, to the even 1 + 2⁻⁶.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.0), 0xc000);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        if has_bf16() {
            let row = values(75, 9);
            let (mut native, mut portable) = (vec![0u16; 75], vec![0u16; 75]);
            convert_row(&mut native, &row, true);
            convert_row(&mut portable, &row, false);
            assert_eq!(native, portable);
        }
    }

    #[test]
    fn chained_products_equal_the_two_products() {
        crate::testing::chained_equals_two_products(PackedBf16Weight::pack, linear, chained);
    }

    #[test]
    fn bf16_product_is_close_to_f32_and_both_kernels_agree() {
        // The native kernels are checked where the CPU has them, reported as
        // skipped elsewhere; the portable one everywhere.
        let test = "bf16_product_is_close_to_f32_and_both_kernels_agree";
        let bf16 = crate::testing::can_check("avx512bf16", has_bf16(), test);
        let amx = crate::testing::can_check("amx", amx::usable(), test);
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 33, 7),
            (13, 64, 300),
            (30, 70, 1031),
            (200, 40, 70),
            (64, 64, 96),
        ] {
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
            let packed = PackedBf16Weight::pack(&w, n, k);
            let portable = linear_on(
                Lhs::Rows(&a),
                m,
                &packed,
                Some(&bias),
                Epilogue::None,
                Kernel::Portable,
            );
            // Each input carries a relative error up to 2⁻⁹.
            let bound = k as f32 * 0.25 * 2.0 * 2f32.powi(-9) + 1e-5;
            for (i, (p, e)) in portable.iter().zip(&exact).enumerate() {
                assert!((p - e).abs() < bound, "{m}×{n}×{k} [{i}]: {p} vs {e}");
            }
            let native = [(Kernel::Avx512, bf16), (Kernel::Amx, amx)];
            for (kernel, _) in native.into_iter().filter(|k| k.1) {
                let got = linear_on(
                    Lhs::Rows(&a),
                    m,
                    &packed,
                    Some(&bias),
                    Epilogue::None,
                    kernel,
                );
                for (i, (f, p)) in got.iter().zip(&portable).enumerate() {
                    // The same bf16 products; only the order of the f32 sums differs.
                    assert!(
                        (f - p).abs() <= 1e-4 * (1.0 + p.abs()),
                        "{kernel:?} {m}×{n}×{k} [{i}]: {f} vs {p}"
                    );
                }
            }
        }
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| x[(i % rows) * cols + i / rows])
            .collect()
    }

    #[test]
    fn transposed_operands_give_the_same_product() {
        for &(m, n, k) in &[(1, 1, 1), (17, 33, 7), (40, 64, 45), (70, 35, 100)] {
            let (a, w) = (values(m * k, 4), values(n * k, 5));
            let (at, wt) = (transpose(&a, m, k), transpose(&w, n, k));
            let want = product(
                Lhs::Rows(&a),
                m,
                &PackedBf16Weight::pack(&w, n, k),
                None,
                Epilogue::None,
            );
            let packed_t = PackedBf16Weight::pack_transposed(&wt, n, k);
            assert_eq!(packed_t.data[..], PackedBf16Weight::pack(&w, n, k).data[..]);
            let got = product(Lhs::Columns(&at), m, &packed_t, None, Epilogue::None);
            assert_eq!(got, want, "{m}×{n}×{k}");
        }
    }
}
