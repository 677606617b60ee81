//! The matrix product of the linear layers at inference: `C = A·Wᵀ + bias`, then
//! optionally GELU, with W packed once (at the first call) into the panels the
//! micro-kernel reads, so no call re-packs the weights as candle's generic GEMM does.
//!
//! Blocking follows BLIS: a KC×NR panel of W serves every MR×KC slice of an MC×KC
//! block of A (in L2) in turn, through an MR×NR register tile of accumulators (for
//! tasks of many rows, a 6×64 tile over two panels at once).
//! A is read in place (the kernel broadcasts one value of each of its MR rows per
//! step, from any address): packing it cost 6–9% of the forward pass. Tasks split the rows (and, for short inputs, the columns) across
//! rayon's threads; each task runs bias and activation on its tile while it is
//! still in cache. AVX-512 kernel where the CPU has it, else a portable one that
//! the compiler vectorizes for AVX2 or the baseline.

use crate::aligned::AlignedVec;
use crate::math::bias_then_act;
pub use crate::math::Epilogue;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows of the register tile.
pub const MR: usize = 12;
/// Rows of the wide register tile: 6 rows × two panels (64 columns), for tasks of
/// at least [`WIDE_ROWS`] rows.
const WR: usize = 6;
/// Fewest rows a task runs on the wide tile. Per step it loads four vectors of W and
/// broadcasts six values of A for its 24 FMAs, where the 12×32 tile loads two and
/// broadcasts twelve; alternating, eight rounds: MiniLM 32×128 0.86–0.93 of the
/// time, 1×128 0.77–0.98 (8 of 8 each). One 16-token sentence ran 1.04–1.17× slower
/// on it (its 16 rows make tiles of 6, 6 and 4), so short inputs keep the 12×32 tile.
const WIDE_ROWS: usize = 48;
/// Columns of the register tile: two AVX-512 vectors.
pub const NR: usize = 32;
/// Depth of one block: MiniLM's whole 384, a third or quarter of BERT's 768 or
/// 3072, so each output tile is stored once or a few times, not once per 128 (a
/// KC×NR panel of W is then 48 KiB, L1's whole size). Against 128,
/// alternating, eight rounds: MiniLM 1×128 0.88–0.98 of the time (all eight),
/// 32×128 0.92–1.02 (six of eight ahead).
const KC: usize = 384;
/// Rows of A per task (MC×KC floats, 144 KiB, stays in L2).
const MC: usize = 8 * MR;

/// W (out × in, PyTorch's layout) as Wᵀ in KC×NR panels: block `p` of depth
/// `kc` starts at `p0·panels·NR`, its panel `j` at `+ j·kc·NR`, row-major kc×NR.
/// Columns past `n` are zero.
#[derive(Debug)]
pub struct PackedWeight {
    k: usize,
    n: usize,
    panels: usize,
    data: AlignedVec<f32>,
}

impl PackedWeight {
    /// `w`: out × in row-major (n = out, k = in).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let panels = n.div_ceil(NR);
        let mut data = AlignedVec::zeroed(panels * NR * k);
        // In parallel over panels: packing is most of the time a model takes to
        // become ready (MiniLM's 42 MB of linear weights).
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let block = &mut data[p0 * panels * NR..(p0 + kc) * panels * NR];
            block
                .par_chunks_mut(kc * NR)
                .enumerate()
                .for_each(|(j, panel)| {
                    // Column by column: each reads a contiguous run of its row of W.
                    for c in 0..NR.min(n - j * NR) {
                        let src = &w[(j * NR + c) * k + p0..][..kc];
                        for (p, &v) in src.iter().enumerate() {
                            panel[p * NR + c] = v;
                        }
                    }
                });
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

/// The output pointer (or another buffer's), shared by parallel tasks that write
/// disjoint parts of it.
pub(super) struct OutPtr<T = f32>(pub(super) *mut T);
// SAFETY: every user hands each task a part of the output no other task writes.
unsafe impl<T> Send for OutPtr<T> {}
unsafe impl<T> Sync for OutPtr<T> {}

impl<T> Clone for OutPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// Through a method, so closures capture the whole (Send) wrapper.
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// How [`for_each_tile`] splits an m-row output of `panels` panels.
struct Split {
    mc: usize,
    row_blocks: usize,
    col_splits: usize,
    panels_per_split: usize,
}

impl Split {
    fn of(m: usize, mc: usize, panels: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        // Up to a few blocks of rows (one or a few sentences), every task takes all
        // the rows and a range of columns: each panel of W is then read once, not
        // once per row block (W does not fit in L2; A does).
        let mc = if m <= 4 * mc { m.max(1) } else { mc };
        let row_blocks = m.div_ceil(mc);
        let col_splits = (2 * threads).div_ceil(row_blocks).clamp(1, panels.max(1));
        let panels_per_split = panels.div_ceil(col_splits).max(1);
        Split {
            mc,
            row_blocks,
            col_splits: panels.div_ceil(panels_per_split),
            panels_per_split,
        }
    }
}

/// Whether every task of [`for_each_tile`] holds whole rows (all the panels), so
/// that [`Finish::then`] sees every row.
pub(super) fn whole_rows(m: usize, mc: usize, panels: usize) -> bool {
    Split::of(m, mc, panels).col_splits == 1
}

/// Called with a finished row's index and values.
pub(super) type RowHook<'a> = dyn Fn(usize, &[f32]) + Sync + 'a;

/// What each task of [`tiled_output`] does to its rows once they are computed,
/// while they are still in cache.
#[derive(Clone, Copy)]
pub(super) struct Finish<'a> {
    pub(super) bias: Option<&'a [f32]>,
    pub(super) epilogue: Epilogue,
    /// Called with each finished row and its index: to hand the row on to the
    /// next product in its input format. Where it is given, the rows go only
    /// here (see [`tiled_output`]).
    pub(super) then: Option<&'a RowHook<'a>>,
}

impl<'a> Finish<'a> {
    pub(super) fn new(bias: Option<&'a [f32]>, epilogue: Epilogue) -> Self {
        Finish {
            bias,
            epilogue,
            then: None,
        }
    }

    /// Only the hook on whole rows: for kernels that add the bias and run the
    /// epilogue themselves.
    pub(super) fn rows_only(self) -> Self {
        Finish {
            then: self.then,
            ..Finish::new(None, Epilogue::None)
        }
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
    let Split {
        mc,
        row_blocks,
        col_splits,
        panels_per_split,
    } = Split::of(m, mc, panels);
    (0..row_blocks * col_splits).into_par_iter().for_each(|t| {
        let (rb, cs) = (t / col_splits, t % col_splits);
        task(
            rb * mc..(rb * mc + mc).min(m),
            cs * panels_per_split..((cs + 1) * panels_per_split).min(panels),
        )
    });
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
    // SAFETY: `tile` stores every value of its block (its first depth block stores,
    // the others add).
    unsafe {
        tiled_output(
            m,
            n,
            MC,
            w.panels,
            Finish::new(bias, epilogue),
            |rows, panels, out| tile(a, k, w, rows, panels, out),
        )
    }
}

/// `len` values, every one written by `fill` (in parallel as it likes), with no
/// zero fill first. Freed memory is kept for reuse (`alloc::keep_freed_memory`), so
/// a zeroed output is not fresh zero pages but a `memset` of the whole block, on
/// one thread before the parallel work: 2.4% of a bf16 forward's samples.
///
/// # Safety
/// `fill` writes every value.
pub(super) unsafe fn written_by(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is `len`, and `fill` wrote every value (the caller's
    // obligation).
    unsafe { out.set_len(len) };
    out
}

/// The values of `slice`, once they are all written.
///
/// # Safety
/// Every value of `slice` is initialised.
pub(super) unsafe fn assume_written(slice: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has f32's layout, and every value is initialised.
    unsafe { &mut *(slice as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The m × n output of a linear layer, computed in parallel by `tiles(rows, panels,
/// block)` over the blocks of [`for_each_tile`] (`block` points at row `rows.start`
/// of the output); each task then runs the bias and the epilogue on its block while
/// it is still in cache. The output is not zeroed first. Where `finish.then` is
/// given, the rows only go to it (see [`tiled_rows`]) and the output is empty.
///
/// # Safety
/// `tiles` stores every value of its rows × panels block (rows n apart from `block`);
/// with `finish.then`, [`whole_rows`]`(m, mc, panels)`.
pub(super) unsafe fn tiled_output(
    m: usize,
    n: usize,
    mc: usize,
    panels: usize,
    finish: Finish,
    tiles: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>, OutPtr) + Send + Sync,
) -> Vec<f32> {
    unsafe {
        if finish.then.is_some() {
            tiled_rows(m, n, mc, panels, finish, tiles);
            return Vec::new();
        }
        // SAFETY: the blocks cover all m·n values, each stored by its task before the
        // epilogue reads it.
        written_by(m * n, |out| {
            let ptr = OutPtr(out.as_mut_ptr().cast::<f32>());
            for_each_tile(m, mc, panels, |rows, panels| {
                let block = OutPtr(ptr.get().add(rows.start * n));
                tiles(rows.clone(), panels.clone(), block);
                finish_block(block, n, rows, panels, finish);
            })
        })
    }
}

/// As [`tiled_output`], but each task computes its block into a buffer of its
/// thread's, kept from call to call, and only hands the finished rows to
/// `finish.then`: where nothing else reads the output, it is never written to
/// memory (its first write missed every cache line of a block that size).
///
/// # Safety
/// As for [`tiled_output`]; and [`whole_rows`]`(m, mc, panels)`.
unsafe fn tiled_rows(
    m: usize,
    n: usize,
    mc: usize,
    panels: usize,
    finish: Finish,
    tiles: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>, OutPtr) + Send + Sync,
) {
    unsafe {
        assert!(whole_rows(m, mc, panels), "every task holds whole rows");
        for_each_tile(m, mc, panels, |rows, panels| {
            BLOCK.with(|buffer| {
                let mut buffer = buffer.borrow_mut();
                buffer.reuse(rows.len() * n);
                let block = OutPtr(buffer.as_mut_ptr());
                tiles(rows.clone(), panels.clone(), block);
                finish_block(block, n, rows, panels, finish);
            })
        })
    }
}

thread_local! {
    /// [`tiled_rows`]'s block of rows, kept for the next task on this thread.
    static BLOCK: std::cell::RefCell<AlignedVec<f32>> =
        std::cell::RefCell::new(AlignedVec::default());
}

/// The bias, the epilogue and `finish.then` on a task's block of rows (`block`
/// points at row `rows.start`, rows n apart; `panels` are the task's columns).
///
/// # Safety
/// The block's values are all stored, and are this task's alone.
unsafe fn finish_block(
    block: OutPtr,
    n: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    finish: Finish,
) {
    unsafe {
        let c0 = panels.start * NR;
        let c1 = (panels.end * NR).min(n);
        for (i, r) in rows.enumerate() {
            let row = std::slice::from_raw_parts_mut(block.get().add(i * n + c0), c1 - c0);
            finish_row(row, finish.bias.map(|b| &b[c0..c1]), finish.epilogue);
            if let Some(then) = finish.then {
                // Only `tiled_rows` hands rows on, and its tasks hold whole rows.
                debug_assert_eq!(c1 - c0, n);
                then(r, row);
            }
        }
    }
}

/// One task: rows × panels of the output, all of K.
fn tile(
    a: &[f32],
    k: usize,
    w: &PackedWeight,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: OutPtr,
) {
    let n = w.n;
    #[cfg(target_arch = "x86_64")]
    let wide = rows.len() >= WIDE_ROWS && crate::cpu_has!("avx512f");
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        #[allow(unused_mut)] // only the x86-64 build advances it before the loop
        let mut j = panels.start;
        #[cfg(target_arch = "x86_64")]
        if wide {
            // Two panels at a time; an odd last panel goes to the 12×32 tile below.
            while j + 1 < panels.end {
                let (b0, b1) = (w.panel(p0, kc, j), w.panel(p0, kc, j + 1));
                let cols = NR.min(n - (j + 1) * NR);
                for_each_slice(a, k, rows.clone(), (p0, kc), WR, |slice, i| {
                    // SAFETY: `wide` checked AVX-512F; the slice's rows and columns
                    // j·NR..(j+1)·NR+cols are in bounds and belong to this task alone.
                    unsafe {
                        let c = out.get().add(i * n + j * NR);
                        avx512::wide_kernel(slice, (b0, b1), c, n, cols, p0 > 0);
                    }
                });
                j += 2;
            }
        }
        for j in j..panels.end {
            let b = w.panel(p0, kc, j);
            let cols = NR.min(n - j * NR);
            for_each_slice(a, k, rows.clone(), (p0, kc), MR, |slice, i| {
                // SAFETY: the slice's rows and columns j·NR..j·NR+cols are in bounds
                // and belong to this task alone.
                unsafe {
                    let c = out.get().add(i * n + j * NR);
                    micro_tile(slice, b, c, n, cols, p0 > 0);
                }
            });
        }
    }
}

/// Calls `f(slice, i)` for each slice of `height` rows (fewer at the end) of `rows`
/// of A (rows `k` apart) at depths p0..p0+kc; `i` is the slice's first row within
/// `rows`.
fn for_each_slice(
    a: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    (p0, kc): (usize, usize),
    height: usize,
    mut f: impl FnMut(&ASlice, usize),
) {
    for r0 in rows.clone().step_by(height) {
        let slice = ASlice {
            a: &a[r0 * k + p0..],
            lda: k,
            rows: height.min(rows.end - r0),
            kc,
        };
        f(&slice, r0 - rows.start);
    }
}

/// `rows` (≤ MR) rows of A, `lda` apart, `kc` deep: one register tile's share.
struct ASlice<'a> {
    a: &'a [f32],
    lda: usize,
    rows: usize,
    kc: usize,
}

/// C[rows × cols] (+)= A_slice · B_panel.
///
/// # Safety
/// `c` points at a rows × cols block of a row-major matrix with row stride `ldc`;
/// where `accumulate` is false the block need not be initialized.
unsafe fn micro_tile(
    a: &ASlice,
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
) {
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu_has!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the caller's contract covers c.
            return avx512::kernel(a, b, c, ldc, cols, accumulate);
        }
        let mut acc = [0f32; MR * NR];
        kernel(a, b, &mut acc);
        for i in 0..a.rows {
            let row = c.add(i * ldc);
            for (j, t) in acc[i * NR..i * NR + cols].iter().enumerate() {
                let v = if accumulate { *row.add(j) + t } else { *t };
                row.add(j).write(v);
            }
        }
    }
}

/// acc[MR × NR] = Σ_p a[i·lda + p] · b[p·NR + j], without AVX-512.
fn kernel(a: &ASlice, b: &[f32], acc: &mut [f32; MR * NR]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_has!("avx2", "fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { kernel_avx2(a, b, acc) };
        return;
    }
    kernel_portable(a, b, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn kernel_avx2(a: &ASlice, b: &[f32], acc: &mut [f32; MR * NR]) {
    kernel_portable(a, b, acc)
}

#[inline(always)]
fn kernel_portable(a: &ASlice, b: &[f32], acc: &mut [f32; MR * NR]) {
    acc.fill(0.0);
    for (p, b) in b.chunks_exact(NR).take(a.kc).enumerate() {
        for (i, acc) in acc.chunks_exact_mut(NR).take(a.rows).enumerate() {
            let ai = a.a[i * a.lda + p];
            for (c, &bj) in acc.iter_mut().zip(b) {
                *c = ai.mul_add(bj, *c);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ASlice, MR, NR, WR};
    use std::arch::x86_64::*;

    /// Steps of depth that W's prefetch runs ahead of its loads.
    const B_AHEAD: usize = 16;

    /// MR×NR accumulators in 24 of the 32 zmm registers; per step two loads of
    /// W and MR broadcasts of A feed 24 FMAs. Stores straight into C, masked at
    /// the right edge.
    /// A short last slice (or a short input: one sentence of 16 tokens is 12 + 4
    /// rows) runs a tile of 4 or 8 rows instead of computing 12.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `out` points at `a.rows` rows (`ldc` apart) of `cols` ≤ NR
    /// writable values; `b` holds `a.kc` rows of NR.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn kernel(
        a: &ASlice,
        b: &[f32],
        out: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        unsafe {
            let b = [b];
            match a.rows {
                0..=4 => kernel_rows::<4, 1, 2>(a, b, out, ldc, cols, accumulate),
                5..=8 => kernel_rows::<8, 1, 2>(a, b, out, ldc, cols, accumulate),
                _ => kernel_rows::<MR, 1, 2>(a, b, out, ldc, cols, accumulate),
            }
        }
    }

    /// 6 rows × 64 columns (two panels): per step four loads of W and six
    /// broadcasts of A feed 24 FMAs. `cols`: the second panel's columns.
    ///
    /// # Safety
    /// As for [`kernel`], over two panels: `out`'s rows have NR + `cols` writable
    /// values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn wide_kernel(
        a: &ASlice,
        b: (&[f32], &[f32]),
        out: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        unsafe { kernel_rows::<WR, 2, 4>(a, [b.0, b.1], out, ldc, cols, accumulate) }
    }

    /// R rows × P panels (V = 2·P vectors of 16 columns); `cols`: the last panel's
    /// columns.
    ///
    /// # Safety
    /// As for [`kernel`], with `a.rows` ≤ R and P panels.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kernel_rows<const R: usize, const P: usize, const V: usize>(
        a: &ASlice,
        b: [&[f32]; P],
        out: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        unsafe {
            let (kc, mr) = (a.kc, a.rows);
            debug_assert!(V == 2 * P && mr <= R && b.iter().all(|b| b.len() >= kc * NR));
            debug_assert!(a.a.len() > (mr - 1) * a.lda + kc - 1);
            let mut c = [[_mm512_setzero_ps(); V]; R];
            // Rows past `mr` read row 0 again (their sums are never stored).
            let rows: [*const f32; R] =
                std::array::from_fn(|i| a.a.as_ptr().add(if i < mr { i * a.lda } else { 0 }));
            let mut pb: [*const f32; P] = b.map(|b| b.as_ptr());
            let ahead = B_AHEAD * NR;
            for p0 in (0..kc).step_by(16) {
                // The next cache line of each row of A (16 floats on), which the
                // hardware does not fetch ahead for twelve interleaved streams.
                for &row in &rows {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(p0 + 16) as *const i8);
                }
                for p in p0..(p0 + 16).min(kc) {
                    // W's panels a few steps ahead: the first row tile reads them from L3.
                    for &pb in &pb {
                        _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(ahead) as *const i8);
                        _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(ahead + 16) as *const i8);
                    }
                    let w: [__m512; V] =
                        std::array::from_fn(|v| _mm512_loadu_ps(pb[v / 2].add(16 * (v % 2))));
                    for (ci, &row) in c.iter_mut().zip(&rows) {
                        let ai = _mm512_set1_ps(*row.add(p));
                        for (c, &w) in ci.iter_mut().zip(&w) {
                            *c = _mm512_fmadd_ps(ai, w, *c);
                        }
                    }
                    for pb in &mut pb {
                        *pb = pb.add(NR);
                    }
                }
            }
            let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
            // Every panel but the last is whole.
            let masks: [__mmask16; V] = std::array::from_fn(|v| match v + 2 >= V {
                true => mask(cols.saturating_sub(16 * (v % 2))),
                false => !0,
            });
            for (i, ci) in c.iter().enumerate().take(mr) {
                let row = out.add(i * ldc);
                for (v, (&s, &m)) in ci.iter().zip(&masks).enumerate() {
                    let dst = row.add(16 * v);
                    let s = match accumulate {
                        true => _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, dst)),
                        false => s,
                    };
                    _mm512_mask_storeu_ps(dst, m, s);
                }
            }
        }
    }
}

/// GFLOP/s of the register-tile kernel alone on this thread over `calls` calls,
/// its A slice, W panel and output tile all in L1: the ceiling of [`linear`]'s
/// rate, which `examples/gemm.rs` prints beside the products' own.
pub fn kernel_rate_in_l1(calls: usize) -> f64 {
    // A depth whose W panel (16 KiB) and A slice (6 KiB) fit L1 together.
    const DEPTH: usize = 128;
    let a: Vec<f32> = (0..MR * DEPTH).map(|i| (i % 7) as f32 * 1e-3).collect();
    let w: Vec<f32> = (0..NR * DEPTH).map(|i| (i % 5) as f32 * 1e-3).collect();
    let w = PackedWeight::pack(&w, NR, DEPTH);
    let slice = ASlice {
        a: &a,
        lda: DEPTH,
        rows: MR,
        kc: DEPTH,
    };
    let mut c = vec![0f32; MR * NR];
    let start = std::time::Instant::now();
    for _ in 0..calls {
        // SAFETY: `c` is an MR × NR block with rows NR apart.
        unsafe { micro_tile(&slice, w.panel(0, DEPTH, 0), c.as_mut_ptr(), NR, NR, true) };
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&c);
    (calls * MR * NR * DEPTH * 2) as f64 / seconds / 1e9
}

/// A block row's bias: `NR` values from column `c0` of `bias`, zero past its end
/// (or all zero without one).
pub fn bias_block(bias: Option<&[f32]>, c0: usize) -> [f32; NR] {
    let mut block = [0f32; NR];
    if let Some(bias) = bias {
        let values = &bias[c0.min(bias.len())..];
        let len = values.len().min(NR);
        block[..len].copy_from_slice(&values[..len]);
    }
    block
}

/// `row = act(row + bias)` for one 32-column row of a block, inlined into an AMX
/// kernel's AVX-512 code: the row is finished while it is in registers, where a
/// pass over the output rows afterwards read them back from L2.
#[inline(always)]
pub fn finish_block_row(row: &mut [f32; NR], bias: &[f32; NR], epilogue: Epilogue) {
    bias_then_act(row, bias, epilogue)
}

/// Bias, then the epilogue, on one row (or a column range of one).
fn finish_row(row: &mut [f32], bias: Option<&[f32]>, epilogue: Epilogue) {
    crate::math::add_bias_then(row, bias, epilogue);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

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

    #[test]
    fn matches_a_plain_product_at_every_edge() {
        // Shapes that leave partial row slices, partial panels and a partial depth block.
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 33, 7),
            (13, 64, 300),
            (97, 70, 513),
            (200, 384, 384),
            (400, 40, 20), // several row blocks
            // The wide tile (≥ 48 rows): a partial second panel, a second depth block.
            (60, 56, 33),
            (49, 64, 385),
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
    fn portable_kernel_matches_a_plain_product() {
        // What CPUs without AVX-512 run; this machine would otherwise never test it.
        let (rows, k, kc) = (5, 40, 33);
        let a = values(rows * k, 7);
        let w = values(NR * kc, 8);
        let mut acc = [0f32; MR * NR];
        let slice = ASlice {
            a: &a,
            lda: k,
            rows,
            kc,
        };
        kernel_portable(&slice, &w, &mut acc);
        for i in 0..MR {
            for j in 0..NR {
                let want: f32 = if i < rows {
                    (0..kc).map(|p| a[i * k + p] * w[p * NR + j]).sum()
                } else {
                    0.0
                };
                assert!((acc[i * NR + j] - want).abs() < 1e-5, "[{i}, {j}]");
            }
        }
    }

    #[test]
    fn gelu_epilogue_equals_gelu_after() {
        let (m, n, k) = (20, 40, 16);
        let (a, w, bias) = (values(m * k, 4), values(n * k, 5), values(n, 6));
        let packed = PackedWeight::pack(&w, n, k);
        let fused = linear(&a, m, &packed, Some(&bias), Epilogue::GeluErf);
        let mut plain = linear(&a, m, &packed, Some(&bias), Epilogue::None);
        crate::math::add_bias_then(&mut plain, None, Epilogue::GeluErf);
        assert_eq!(fused, plain);
    }
}
