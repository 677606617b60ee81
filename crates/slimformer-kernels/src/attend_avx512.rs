//! The fused attention of one sequence and head in AVX-512 intrinsics, for heads of
//! 32 or 64 values (MiniLM's and BERT-base's). The portable version in `fused.rs`
//! left its score and value sums to the compiler, which kept them in arrays it
//! spilled to the stack; here 4 query rows × 64 keys of scores, and 4 rows of
//! value sums, live in registers, and exponentials use `vscalefps` for 2ⁿ. Same
//! arithmetic as the portable version up to the order of the sums.

use crate::gemm::OutPtr;
use crate::head::Head;
use std::arch::x86_64::*;

/// Query rows per pass.
const ROWS: usize = 4;

/// Whether this CPU and head size take this path.
pub(super) fn available(d: usize) -> bool {
    (d == 32 || d == 64) && crate::cpu_has!("avx512f")
}

/// Scratch floats [`attend`] needs: Kᵀ, V and 4 rows of scores.
pub(super) fn scratch_len(l: usize, d: usize) -> usize {
    2 * l * d + ROWS * l
}

/// softmax(q·kᵀ·scale + bias)·v for one sequence and head; q, k, v start at the
/// head's first value, rows 3·`hidden` apart; `out` at the head's first output
/// value, rows `hidden` apart, written by this task alone.
///
/// # Safety
/// [`available`]`(shape.d)` holds; `out` as above; `buf` has [`scratch_len`] floats.
pub(super) unsafe fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    out: OutPtr,
    buf: &mut [f32],
    shape: Head,
) {
    unsafe {
        match shape.d {
            32 => attend_head::<2>(q, k, v, bias, out, buf, shape),
            _ => attend_head::<4>(q, k, v, bias, out, buf, shape),
        }
    }
}

/// `VB` vectors of 16 per head row (d = 16·VB).
///
/// # Safety
/// As for [`attend`]: the CPU has AVX-512F; `out`'s head rows are this call's alone.
#[target_feature(enable = "avx512f")]
unsafe fn attend_head<const VB: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    out: OutPtr,
    buf: &mut [f32],
    shape: Head,
) {
    unsafe {
        let Head { l, hidden, .. } = shape;
        let d = 16 * VB;
        let stride = 3 * hidden;
        assert!(
            l > 0
                && bias.len() >= l
                && q.len() > (l - 1) * stride + d - 1
                && k.len() > (l - 1) * stride + d - 1
                && v.len() > (l - 1) * stride + d - 1
                && buf.len() >= scratch_len(l, d)
        );
        let (kt, rest) = buf.split_at_mut(l * d);
        let (vh, scores) = rest.split_at_mut(l * d);
        // V's rows gathered: in place they are a page apart (3·hidden floats), and the
        // value sums would walk a new page per key.
        for j in 0..l {
            for p in 0..d {
                kt[p * l + j] = k[j * stride + p];
            }
            vh[j * d..(j + 1) * d].copy_from_slice(&v[j * stride..][..d]);
        }
        let mut i = 0;
        while i < l {
            let rows = ROWS.min(l - i);
            rows_pass::<VB>(i, rows, q, kt, vh, bias, out, scores, shape);
            i += rows;
        }
    }
}

/// Lanes of key block `b` (16 keys) that exist.
#[inline(always)]
fn block_mask(l: usize, b: usize) -> __mmask16 {
    let lanes = (l - 16 * b).min(16);
    ((1u32 << lanes) - 1) as __mmask16
}

/// Query rows i..i+rows (≤ 4; rows past `rows` repeat row i and are not stored).
///
/// # Safety
/// The CPU has AVX-512F; query rows i..i+rows exist; `out`'s rows i..i+rows of this
/// head are this call's alone; `scores` holds 4 rows of `l`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_pass<const VB: usize>(
    i: usize,
    rows: usize,
    q: &[f32],
    kt: &[f32],
    vh: &[f32],
    bias: &[f32],
    out: OutPtr,
    scores: &mut [f32],
    shape: Head,
) {
    unsafe {
        let Head {
            l, hidden, scale, ..
        } = shape;
        let d = 16 * VB;
        let stride = 3 * hidden;
        // The scale goes into the query once, not into every score.
        let mut qs = [[0f32; 64]; ROWS];
        for (r, qs) in qs.iter_mut().enumerate() {
            let row = &q[(i + if r < rows { r } else { 0 }) * stride..][..d];
            for (s, &x) in qs.iter_mut().zip(row) {
                *s = x * scale;
            }
        }
        let blocks = l.div_ceil(16);
        let s = scores.as_mut_ptr();
        let mut b0 = 0;
        while b0 < blocks {
            match blocks - b0 {
                1 => score_blocks::<1>(&qs, d, kt, l, bias, s, b0),
                2 => score_blocks::<2>(&qs, d, kt, l, bias, s, b0),
                3 => score_blocks::<3>(&qs, d, kt, l, bias, s, b0),
                _ => score_blocks::<4>(&qs, d, kt, l, bias, s, b0),
            }
            b0 += 4;
        }
        let mut inv = [0f32; ROWS];
        for (r, inv) in inv.iter_mut().enumerate() {
            let row = s.add(r * l);
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for b in 0..blocks {
                let m = block_mask(l, b);
                max = _mm512_mask_max_ps(max, m, max, _mm512_maskz_loadu_ps(m, row.add(16 * b)));
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
            let mut sum = _mm512_setzero_ps();
            for b in 0..blocks {
                let m = block_mask(l, b);
                let e = exp16(_mm512_sub_ps(
                    _mm512_maskz_loadu_ps(m, row.add(16 * b)),
                    max,
                ));
                _mm512_mask_storeu_ps(row.add(16 * b), m, e);
                sum = _mm512_mask_add_ps(sum, m, sum, e);
            }
            *inv = 1.0 / _mm512_reduce_add_ps(sum);
        }
        let mut acc = [[_mm512_setzero_ps(); VB]; ROWS];
        for j in 0..l {
            let vr = vh.as_ptr().add(j * d);
            let vv: [__m512; VB] = std::array::from_fn(|c| _mm512_loadu_ps(vr.add(16 * c)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(*s.add(r * l + j));
                for (a, &vc) in acc.iter_mut().zip(&vv) {
                    *a = _mm512_fmadd_ps(p, vc, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let o = out.get().add((i + r) * hidden);
            let inv = _mm512_set1_ps(inv[r]);
            for (c, &a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(16 * c), _mm512_mul_ps(a, inv));
            }
        }
    }
}

/// 4 rows of scores over key blocks b0..b0+NB (16 keys each): bias + q·Kᵀ, the
/// 4×NB vectors of sums in registers across the head dimension.
///
/// # Safety
/// The CPU has AVX-512F; `s` points at 4 rows of `l` writable scores; key blocks
/// b0..b0+NB start inside `l`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_blocks<const NB: usize>(
    qs: &[[f32; 64]; ROWS],
    d: usize,
    kt: &[f32],
    l: usize,
    bias: &[f32],
    s: *mut f32,
    b0: usize,
) {
    unsafe {
        let masks: [__mmask16; NB] = std::array::from_fn(|b| block_mask(l, b0 + b));
        let init: [__m512; NB] = std::array::from_fn(|b| {
            _mm512_maskz_loadu_ps(masks[b], bias.as_ptr().add(16 * (b0 + b)))
        });
        let mut acc = [init; ROWS];
        for p in 0..d {
            let row = kt.as_ptr().add(p * l + 16 * b0);
            let kv: [__m512; NB] =
                std::array::from_fn(|b| _mm512_maskz_loadu_ps(masks[b], row.add(16 * b)));
            for (acc, qs) in acc.iter_mut().zip(qs) {
                let a = _mm512_set1_ps(qs[p]);
                for (s, &k) in acc.iter_mut().zip(&kv) {
                    *s = _mm512_fmadd_ps(a, k, *s);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (b, &a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(s.add(r * l + 16 * (b0 + b)), masks[b], a);
            }
        }
    }
}

/// e^x on 16 lanes, x ≤ 0 (scores less their row's maximum): the polynomial of
/// `fast::exp`, with 2ⁿ applied by `vscalefps`; 0 below e^-87.3, as there (no
/// subnormal probabilities for padded keys).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn exp16(x: __m512) -> __m512 {
    let normal = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-87.3));
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.121_944_4e-4), r);
    let c = |v: f32| _mm512_set1_ps(v);
    let mut p = _mm512_fmadd_ps(c(1.987_569_1e-4), r, c(1.398_199_9e-3));
    p = _mm512_fmadd_ps(p, r, c(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, c(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, c(1.666_666_5e-1));
    p = _mm512_fmadd_ps(p, r, c(0.5));
    let e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r), c(1.0));
    _mm512_maskz_mov_ps(normal, _mm512_scalef_ps(e, n))
}
