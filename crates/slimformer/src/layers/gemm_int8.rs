//! The int8 linear layer: weights quantized symmetrically per output channel (as
//! `slimformer quantize` stores them), activations quantized per row at each call
//! (dynamic quantization), products summed in i32 by AVX512-VNNI's `vpdpbusd`
//! (64 multiply-adds per instruction against 16 for f32 FMA).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so activations are stored
//! shifted by 128 (`u = q + 128`) and the shift is taken back out with the
//! weights' column sums: Σ u·w = Σ q·w + 128·Σ w.

use super::gemm::{for_each_tile, Epilogue, OutPtr, MR, NR};
use rayon::prelude::*;

/// Depth of one block, in values (a multiple of 4); also the group of values that
/// share one activation scale: per-row scales alone let a few outlier features
/// (BERT-style models have them) coarsen every other value of the row.
const KC: usize = 64;
/// Rows per task.
const MC: usize = 8 * MR;

/// W (out × in) as int8 in KC-deep blocks of NR-column panels; within a panel,
/// for each group of 4 depths, NR columns × 4 bytes (what `vpdpbusd` reads).
#[derive(Debug)]
pub struct PackedInt8Weight {
    k: usize,
    /// k rounded up to a multiple of 4 (zero padding).
    k4: usize,
    n: usize,
    panels: usize,
    data: Vec<i8>,
    /// Per output channel: w ≈ q · scale.
    scales: Vec<f32>,
    /// 128 · Σ q over each depth block, per block and column (padded to panels·NR).
    shifts: Vec<i32>,
}

impl PackedInt8Weight {
    /// `w`: out × in row-major (n = out, k = in).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let k4 = k.div_ceil(4) * 4;
        let panels = n.div_ceil(NR);
        let scales: Vec<f32> = w
            .chunks(k.max(1))
            .map(|row| {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                if max > 0.0 {
                    max / 127.0
                } else {
                    1.0
                }
            })
            .collect();
        let q = |col: usize, p: usize| -> i8 {
            if col < n && p < k {
                (w[col * k + p] / scales[col]).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        };
        let blocks = k4.div_ceil(KC);
        let mut data = vec![0i8; panels * NR * k4];
        let mut shifts = vec![0i32; blocks * panels * NR];
        for (b, p0) in (0..k4).step_by(KC).enumerate() {
            let kc = KC.min(k4 - p0);
            for j in 0..panels {
                let panel = &mut data[p0 * panels * NR + j * kc * NR..][..kc * NR];
                for t in 0..kc / 4 {
                    for c in 0..NR {
                        for u in 0..4 {
                            let v = q(j * NR + c, p0 + 4 * t + u);
                            panel[(t * NR + c) * 4 + u] = v;
                            shifts[b * panels * NR + j * NR + c] += 128 * v as i32;
                        }
                    }
                }
            }
        }
        Self {
            k,
            k4,
            n,
            panels,
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

/// Rows quantized to u8 (q + 128), one scale per row and depth block (row-major);
/// rows padded to k4 with 128 (zero).
fn quantize_rows(a: &[f32], m: usize, k: usize, k4: usize) -> (Vec<u8>, Vec<f32>) {
    let blocks = k4.div_ceil(KC);
    let mut q = vec![128u8; m * k4];
    let mut scales = vec![1f32; m * blocks];
    q.par_chunks_mut(k4)
        .zip(scales.par_chunks_mut(blocks))
        .zip(a.par_chunks(k.max(1)))
        .for_each(|((q, scales), row)| {
            for ((q, scale), values) in q.chunks_mut(KC).zip(scales).zip(row.chunks(KC)) {
                quantize_group(q, scale, values);
            }
        });
    (q, scales)
}

dispatch!(quantize_group, (q: &mut [u8], scale: &mut f32, row: &[f32]), {
    let max = super::fast::lane_max_abs(row);
    *scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / *scale;
    for (q, &v) in q.iter_mut().zip(row) {
        // Round to nearest without libm's `round` (which would stop vectorization).
        const SHIFTER: f32 = 12_582_912.0;
        let r = (v * inv + SHIFTER) - SHIFTER;
        *q = (r.clamp(-127.0, 127.0) as i32 + 128) as u8;
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
    let (k, k4, n) = (w.k, w.k4, w.n);
    assert_eq!(a.len(), m * k, "input of {m}×{k} has {} values", a.len());
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let (qa, group_scales) = quantize_rows(a, m, k, k4);
    let blocks = k4.div_ceil(KC);
    let ptr = OutPtr(out.as_mut_ptr());
    for_each_tile(m, MC, w.panels, |rows, panels| {
        for (b, p0) in (0..k4).step_by(KC).enumerate() {
            let kc = KC.min(k4 - p0);
            for j in panels.clone() {
                let panel = &w.data[p0 * w.panels * NR + j * kc * NR..][..kc * NR];
                let shift = &w.shifts[b * w.panels * NR + j * NR..][..NR];
                let cols = NR.min(n - j * NR);
                let mut scales = [0f32; NR];
                scales[..cols].copy_from_slice(&w.scales[j * NR..j * NR + cols]);
                for r0 in rows.clone().step_by(MR) {
                    let mr = MR.min(rows.end - r0);
                    let mut row_scales = [0f32; MR];
                    for (i, s) in row_scales.iter_mut().take(mr).enumerate() {
                        *s = group_scales[(r0 + i) * blocks + b];
                    }
                    let tile = Tile {
                        a: &qa[r0 * k4 + p0..],
                        lda: k4,
                        kc,
                        b: panel,
                        shift,
                        col_scales: &scales,
                        row_scales: &row_scales[..mr],
                        cols,
                        accumulate: p0 > 0,
                    };
                    // SAFETY: rows r0..r0+mr, columns j·NR..j·NR+cols are this task's.
                    unsafe { micro_tile(&tile, ptr.get().add(r0 * n + j * NR), n) };
                }
            }
        }
        let c0 = panels.start * NR;
        let c1 = (panels.end * NR).min(n);
        for r in rows {
            // SAFETY: as above.
            let row = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(r * n + c0), c1 - c0) };
            super::fast::add_bias_then(row, bias.map(|b| &b[c0..c1]), epilogue);
        }
    });
    out
}

/// One MR×NR register tile's inputs: u8 rows of A (stride `lda`), one kc-deep
/// panel of W, and what turns the i32 sums back into f32.
struct Tile<'a> {
    a: &'a [u8],
    lda: usize,
    kc: usize,
    b: &'a [i8],
    shift: &'a [i32],
    col_scales: &'a [f32; NR],
    row_scales: &'a [f32],
    cols: usize,
    accumulate: bool,
}

/// C[rows × cols] (+)= dequantized A·W over one depth block.
///
/// # Safety
/// `c` points at a block of row_scales.len() × cols values with row stride `ldc`.
unsafe fn micro_tile(t: &Tile, c: *mut f32, ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the CPU has the features; the caller's contract covers c.
        return vnni::kernel(t, c, ldc);
    }
    let mut acc = [0i32; MR * NR];
    for (i, acc) in acc.chunks_mut(NR).enumerate().take(t.row_scales.len()) {
        let row = &t.a[i * t.lda..][..t.kc];
        for (q, group) in row.chunks_exact(4).enumerate() {
            let w = &t.b[q * NR * 4..(q + 1) * NR * 4];
            for (c, acc) in acc.iter_mut().enumerate() {
                for u in 0..4 {
                    *acc += group[u] as i32 * w[c * 4 + u] as i32;
                }
            }
        }
    }
    for (i, &rs) in t.row_scales.iter().enumerate() {
        let row = c.add(i * ldc);
        for j in 0..t.cols {
            let v = (acc[i * NR + j] - t.shift[j]) as f32 * rs * t.col_scales[j];
            let v = if t.accumulate { *row.add(j) + v } else { v };
            row.add(j).write(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Tile, MR, NR};
    use std::arch::x86_64::*;

    /// 24 i32 accumulators; per group of 4 depths, two 64-byte loads of W and MR
    /// broadcasts of 4 activation bytes feed 24 `vpdpbusd`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn kernel(t: &Tile, out: *mut f32, ldc: usize) {
        let mut c = [[_mm512_setzero_si512(); 2]; MR];
        let rows = t.row_scales.len();
        let mut pb = t.b.as_ptr();
        // Rows past `rows` read row 0 again (their sums are never stored).
        let row_ptr: [*const u8; MR] =
            std::array::from_fn(|i| t.a.as_ptr().add(if i < rows { i * t.lda } else { 0 }));
        for q in 0..t.kc / 4 {
            let b0 = _mm512_loadu_si512(pb as *const _);
            let b1 = _mm512_loadu_si512(pb.add(64) as *const _);
            for (ci, &ap) in c.iter_mut().zip(&row_ptr) {
                let a = _mm512_set1_epi32((ap.add(4 * q) as *const i32).read_unaligned());
                ci[0] = _mm512_dpbusd_epi32(ci[0], a, b0);
                ci[1] = _mm512_dpbusd_epi32(ci[1], a, b1);
            }
            pb = pb.add(NR * 4);
        }
        let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
        let (m0, m1) = (mask(t.cols), mask(t.cols.saturating_sub(16)));
        let shift0 = _mm512_loadu_si512(t.shift.as_ptr() as *const _);
        let shift1 = _mm512_loadu_si512(t.shift.as_ptr().add(16) as *const _);
        let scale0 = _mm512_loadu_ps(t.col_scales.as_ptr());
        let scale1 = _mm512_loadu_ps(t.col_scales.as_ptr().add(16));
        for (i, ci) in c.iter().enumerate().take(rows) {
            let rs = _mm512_set1_ps(t.row_scales[i]);
            let row = out.add(i * ldc);
            let mut v0 = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(ci[0], shift0)),
                _mm512_mul_ps(scale0, rs),
            );
            let mut v1 = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(ci[1], shift1)),
                _mm512_mul_ps(scale1, rs),
            );
            if t.accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm::tests::values;
    use super::*;

    #[test]
    fn int8_product_is_close_to_f32() {
        for &(m, n, k) in &[(1, 1, 1), (5, 33, 7), (13, 64, 300), (30, 70, 1030)] {
            let a = values(m * k, 1);
            let w = values(n * k, 2);
            let bias = values(n, 3);
            let exact = super::super::gemm::linear(
                &a,
                m,
                &super::super::gemm::PackedWeight::pack(&w, n, k),
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
}
