//! The fused attention of one sequence and head in bf16 on AMX, for `--precision
//! bf16` and heads of 32 or 64 values. The two products run on the tile unit
//! (`tdpbf16ps`: 16 queries × 16 keys of scores per instruction over a head of 32,
//! then 16 queries × 16 values over 32 keys), the softmax in f32 with AVX-512,
//! as PyTorch's bf16 attention does: scores and probabilities are rounded to bf16
//! only as the products' inputs, sums stay f32.
//!
//! Per head: Q·scale as bf16 rows; K and V as the tile unit's B operand (pairs of
//! depths side by side: pairs of head values for K, pairs of keys for V); then,
//! per 16 queries, a row of score tiles, the softmax, and the value product.
//!
//! Gathering those operands is most of the cost outside the products: each head
//! row sits in its own page of the projections (rows are 3·hidden floats apart).
//! With a batch to spread over the threads, a task takes a whole sequence and reads
//! its rows front to back for all heads at once, which the hardware prefetcher
//! follows; for one or two sequences, a task per head keeps both cores busy.

use crate::aligned::AlignedVec;
use crate::amx::{self, dot_bf16, load, store, zero};
use crate::gemm::OutPtr;
use crate::head::Head;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Whether this CPU and head size take this path.
pub(super) fn available(d: usize) -> bool {
    (d == 32 || d == 64) && amx::bf16() && crate::cpu_has!("avx512bf16")
}

/// One head's operands in the tile unit's layouts, for `keys` rows (the sequence
/// padded to 32 with zeros); each on a cache line (tile rows must not straddle two).
#[derive(Default)]
struct Operands {
    /// keys × d bf16: the queries, scaled.
    q: AlignedVec<u16>,
    /// d/2 rows × keys: (k[key][2t], k[key][2t+1]) as two bf16.
    k: AlignedVec<u32>,
    /// keys/2 rows × d: (v[2t][c], v[2t+1][c]) as two bf16.
    v: AlignedVec<u32>,
}

impl Operands {
    fn reuse(&mut self, keys: usize, d: usize) {
        self.q.reuse(keys * d);
        self.k.reuse(d / 2 * keys);
        self.v.reuse(keys / 2 * d);
    }
}

/// The products' f32 and bf16 rows for one block of 16 queries.
#[derive(Default)]
struct Block {
    /// 16 queries × keys of f32 scores.
    scores: AlignedVec<f32>,
    /// 16 queries × keys of bf16 probabilities (before normalizing).
    probs: AlignedVec<u16>,
    /// 16 queries × d of f32 value sums.
    sums: AlignedVec<f32>,
}

#[derive(Default)]
struct Scratch {
    heads: Vec<Operands>,
    block: Block,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Whether a batch of `b` sequences runs a task per sequence (else per head).
pub(super) fn per_sequence(b: usize) -> bool {
    b >= 2 * rayon::current_num_threads()
}

/// softmax(q·kᵀ·scale + bias)·v for one sequence and head; q, k, v start at the
/// head's first value, rows 3·`hidden` apart; `out` at the head's first output
/// value, rows `hidden` apart, written by this task alone.
///
/// # Safety
/// [`available`]`(shape.d)` holds; `out` as above.
pub(super) unsafe fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    out: OutPtr,
    shape: Head,
) {
    unsafe {
        on_tiles(|s| match shape.d {
            32 => head::<32>(q, k, v, bias, out, shape, s),
            _ => head::<64>(q, k, v, bias, out, shape, s),
        })
    }
}

/// The same for all `heads` of one sequence: `qkv` its [len, 3·hidden] projections,
/// `out` its first output value, rows `hidden` apart, written by this task alone.
///
/// # Safety
/// As for [`attend_head`].
pub(super) unsafe fn attend_sequence(
    qkv: &[f32],
    heads: usize,
    bias: &[f32],
    out: OutPtr,
    shape: Head,
) {
    unsafe {
        on_tiles(|s| match shape.d {
            32 => sequence::<32>(qkv, heads, bias, out, shape, s),
            _ => sequence::<64>(qkv, heads, bias, out, shape, s),
        })
    }
}

/// Runs `f` on this thread's scratch with the tiles configured.
///
/// # Safety
/// AMX-BF16 is usable ([`available`]).
unsafe fn on_tiles(f: impl FnOnce(&mut Scratch)) {
    unsafe { SCRATCH.with(|s| amx::with_tiles(|| f(&mut s.borrow_mut()))) }
}

/// # Safety
/// AMX-BF16 is usable; `out` points at the head's first output value: `l` rows of `d`
/// values, `hidden` apart, that only this call writes; q, k and v hold the head's `l`
/// rows, `3·hidden` apart.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn head<const D: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    out: OutPtr,
    shape: Head,
    s: &mut Scratch,
) {
    unsafe {
        let Head { l, hidden, .. } = shape;
        let stride = 3 * hidden;
        let last = (l - 1) * stride + D;
        assert!(l > 0 && bias.len() >= l && q.len() >= last && k.len() >= last && v.len() >= last);
        let keys = l.div_ceil(32) * 32;
        s.heads.resize_with(1, Operands::default);
        let ops = &mut s.heads[0];
        ops.reuse(keys, D);
        let zeros = [0f32; D];
        for t in 0..keys / 2 {
            let pair = |x| [0, 1].map(|r| row_or_zeros(x, 2 * t + r, l, stride, &zeros));
            gather_pair::<D>(ops, keys, t, pair(q), pair(k), pair(v), shape.scale);
        }
        attend_block_rows::<D>(ops, l, keys, bias, out, hidden, &mut s.block);
    }
}

/// # Safety
/// AMX-BF16 is usable; `out` points at the sequence's `l × hidden` output values, which
/// only this call writes; `qkv` holds its `l` rows of `3·hidden`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn sequence<const D: usize>(
    qkv: &[f32],
    heads: usize,
    bias: &[f32],
    out: OutPtr,
    shape: Head,
    s: &mut Scratch,
) {
    unsafe {
        let Head { l, hidden, .. } = shape;
        let stride = 3 * hidden;
        assert!(l > 0 && bias.len() >= l && qkv.len() >= l * stride && heads * D == hidden);
        let keys = l.div_ceil(32) * 32;
        s.heads.resize_with(heads, Operands::default);
        for ops in &mut s.heads {
            ops.reuse(keys, D);
        }
        let zeros = [0f32; D];
        for t in 0..keys / 2 {
            for (h, ops) in s.heads.iter_mut().enumerate() {
                let pair = |part: usize| {
                    let x = &qkv[part * hidden + h * D..];
                    [0, 1].map(|r| row_or_zeros(x, 2 * t + r, l, stride, &zeros))
                };
                gather_pair::<D>(ops, keys, t, pair(0), pair(1), pair(2), shape.scale);
            }
        }
        for (h, ops) in s.heads.iter().enumerate() {
            let out = OutPtr(out.get().add(h * D));
            attend_block_rows::<D>(ops, l, keys, bias, out, hidden, &mut s.block);
        }
    }
}

/// Row `j` of a head (rows `stride` apart in `x`), or `zeros` past its `l` rows.
fn row_or_zeros<'a>(
    x: &'a [f32],
    j: usize,
    l: usize,
    stride: usize,
    zeros: &'a [f32],
) -> &'a [f32] {
    match j < l {
        true => &x[j * stride..][..zeros.len()],
        false => zeros,
    }
}

/// Rows 2t and 2t+1 of one head's q, k and v (d values each; zeros past the
/// sequence) into its operands.
///
/// # Safety
/// The CPU has AVX512-BF16; each of q, k, v holds at least `D` values per row given,
/// and `ops` has room for `keys` keys.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn gather_pair<const D: usize>(
    ops: &mut Operands,
    keys: usize,
    t: usize,
    q: [&[f32]; 2],
    k: [&[f32]; 2],
    v: [&[f32]; 2],
    scale: f32,
) {
    unsafe {
        let scale = _mm512_set1_ps(scale);
        // Two runs of 32 values as 32 bf16, scaled.
        let bf16x32 = |x: &[f32], c: usize, scale: __m512| -> __m512i {
            let lo = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(c)), scale);
            let hi = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(c + 16)), scale);
            std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
        };
        let one = _mm512_set1_ps(1.0);
        for (r, q) in q.iter().enumerate() {
            for c in (0..D).step_by(32) {
                let dst = ops.q.as_mut_ptr().add((2 * t + r) * D + c);
                _mm512_store_si512(dst as *mut _, bf16x32(q, c, scale));
            }
        }
        // A key's d values as bf16 are its d/2 pairs; they go down its column.
        for (r, k) in k.iter().enumerate() {
            let mut pairs = [0u32; D];
            for c in (0..D).step_by(32) {
                _mm512_storeu_si512(pairs.as_mut_ptr().add(c / 2) as *mut _, bf16x32(k, c, one));
            }
            for (p, &pair) in pairs[..D / 2].iter().enumerate() {
                ops.k[p * keys + 2 * t + r] = pair;
            }
        }
        // V: the two rows interleaved, value by value.
        for c in (0..D).step_by(16) {
            let half = |x: &[f32]| {
                let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(c)));
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h))
            };
            let pair = _mm512_or_si512(half(v[0]), _mm512_slli_epi32::<16>(half(v[1])));
            _mm512_store_si512(ops.v.as_mut_ptr().add(t * D + c) as *mut _, pair);
        }
    }
}

/// One head's attention from its operands, 16 queries at a time: a row of score
/// tiles, the softmax, the value product.
///
/// # Safety
/// AMX-BF16 is usable and the tiles are configured ([`amx::with_tiles`]); `out` as for
/// [`head`]; `ops` holds `keys` gathered keys.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn attend_block_rows<const D: usize>(
    ops: &Operands,
    l: usize,
    keys: usize,
    bias: &[f32],
    out: OutPtr,
    hidden: usize,
    s: &mut Block,
) {
    unsafe {
        s.scores.reuse(16 * keys);
        s.probs.reuse(16 * keys);
        s.sums.reuse(16 * D);
        let lk = l.div_ceil(16) * 16;
        for q0 in (0..l).step_by(16) {
            let rows = 16.min(l - q0);
            // Scores: the block's queries stay in tiles 1 (and 3) across the keys.
            load::<1>(ops.q.as_ptr().add(q0 * D) as *const u8, D * 2);
            if D == 64 {
                load::<3>(ops.q.as_ptr().add(q0 * D + 32) as *const u8, D * 2);
            }
            for kb in (0..lk).step_by(16) {
                zero::<0>();
                load::<2>(ops.k.as_ptr().add(kb) as *const u8, keys * 4);
                dot_bf16::<0, 1, 2>();
                if D == 64 {
                    load::<4>(ops.k.as_ptr().add(16 * keys + kb) as *const u8, keys * 4);
                    dot_bf16::<0, 3, 4>();
                }
                store::<0>(s.scores.as_mut_ptr().add(kb) as *mut u8, keys * 4);
            }
            let mut inv = [0f32; 16];
            for (r, inv) in inv.iter_mut().enumerate().take(rows) {
                let scores = &s.scores[r * keys..][..l];
                *inv = softmax_row(scores, bias, &mut s.probs[r * keys..][..keys]);
            }
            // Values: 16 queries × 16 values per tile, over the keys 32 at a time.
            for c in (0..D).step_by(16) {
                zero::<0>();
                for k0 in (0..keys).step_by(32) {
                    load::<1>(s.probs.as_ptr().add(k0) as *const u8, keys * 2);
                    load::<2>(ops.v.as_ptr().add(k0 / 2 * D + c) as *const u8, D * 4);
                    dot_bf16::<0, 1, 2>();
                }
                store::<0>(s.sums.as_mut_ptr().add(c) as *mut u8, D * 4);
            }
            for (r, &inv) in inv.iter().enumerate().take(rows) {
                let o = out.get().add((q0 + r) * hidden);
                let inv = _mm512_set1_ps(inv);
                for c in (0..D).step_by(16) {
                    let sum = _mm512_load_ps(s.sums.as_ptr().add(r * D + c));
                    _mm512_storeu_ps(o.add(c), _mm512_mul_ps(sum, inv));
                }
            }
        }
    }
}
/// e^(score + bias − max) of one query's `l` keys as bf16 into `probs` (zero past
/// `l`); returns 1 / their sum.
///
/// # Safety
/// The CPU has AVX512-BF16; `bias` is at least as long as `scores`, and `probs` as long
/// as `scores` rounded up to 16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn softmax_row(scores: &[f32], bias: &[f32], probs: &mut [u16]) -> f32 {
    unsafe {
        let l = scores.len();
        let mask = |b: usize| -> __mmask16 { ((1u32 << (l - 16 * b).min(16)) - 1) as __mmask16 };
        let blocks = l.div_ceil(16);
        let biased = |b: usize| {
            let m = mask(b);
            _mm512_add_ps(
                _mm512_maskz_loadu_ps(m, scores.as_ptr().add(16 * b)),
                _mm512_maskz_loadu_ps(m, bias.as_ptr().add(16 * b)),
            )
        };
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for b in 0..blocks {
            max = _mm512_mask_max_ps(max, mask(b), max, biased(b));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for b in 0..probs.len() / 16 {
            let e = match b < blocks {
                true => _mm512_maskz_mov_ps(
                    mask(b),
                    crate::attend_avx512::exp16(_mm512_sub_ps(biased(b), max)),
                ),
                false => _mm512_setzero_ps(),
            };
            sum = _mm512_add_ps(sum, e);
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
            _mm256_store_si256(probs.as_mut_ptr().add(16 * b) as *mut _, h);
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }
}
