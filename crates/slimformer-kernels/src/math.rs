//! Vectorised maths for the inference kernels: branch-free polynomial `exp`, `erf`
//! and `tanh` that the compiler vectorizes, lane-parallel reductions, GELU and the
//! bias epilogues, softmax. candle computes these one scalar libm call at a time:
//! the exact (erf) GELU and the softmax's exponentials were a third of MiniLM's
//! forward pass once the matrix products used AVX-512.

/// What runs on each output after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    GeluErf,
    GeluTanh,
}

/// e^x, relative error below 2e-7 on the range that does not over/underflow.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Below e^-87.3 (about the smallest normal float) the result is 0, not clamped:
    // a padded key's probability must be exactly 0, as libm gives. A tiny clamped
    // value times the softmax's 1/sum is a subnormal, and every product that then
    // reads it (the value sums, training's backward GEMMs) runs ~100× slower on
    // x86 microcode assists.
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.7);
    // x = n·ln2 + r, |r| ≤ ln2/2; ln2 split in two for an exact product.
    // Round to nearest by the 1.5·2²³ trick: `round()` is a libm call on baseline
    // x86-64 and would stop the loop from vectorizing.
    const SHIFTER: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf).
    // `mul_add` is one FMA instruction in the kernels (compiled for AVX2/AVX-512);
    // Rust never fuses `a * b + c` by itself.
    let p = 1.987_569_1e-4f32.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let e = r2.mul_add(p, r) + 1.0;
    // 2^n by building the float's exponent bits. n as an integer is in the low bits
    // of `shifted` (`n as i32` would be a saturating cast, which is not vectorized).
    let n_bits = shifted.to_bits().wrapping_sub(SHIFTER.to_bits());
    let bits = n_bits.wrapping_add(127) << 23;
    if underflow {
        0.0
    } else {
        e * f32::from_bits(bits)
    }
}

/// erf(x), absolute error below 5e-7 in f32 (Abramowitz & Stegun 7.1.26: 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let poly = 1.061_405_4f32.mul_add(t, -1.453_152_1);
    let poly = poly.mul_add(t, 1.421_413_7);
    let poly = poly.mul_add(t, -0.284_496_74);
    let poly = poly.mul_add(t, 0.254_829_6) * t;
    let y = (-poly).mul_add(exp(-a * a), 1.0);
    y.copysign(x)
}

/// Folds `step(acc, x)` over 16 independent lanes, then joins the lanes with
/// `join`: a plain fold is one serial chain (floating-point order is kept), which
/// the compiler cannot vectorize.
#[inline(always)]
pub fn lane_fold<A: Copy>(
    xs: &[f32],
    init: A,
    step: impl Fn(A, f32) -> A,
    join: impl Fn(A, A) -> A,
) -> A {
    let mut acc = [init; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(init, |a, &v| step(a, v));
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = step(*a, v);
        }
    }
    acc.iter().fold(tail, |a, &b| join(a, b))
}

/// Σ x, vectorizable.
#[inline(always)]
pub fn lane_sum(xs: &[f32]) -> f32 {
    lane_fold(xs, 0.0, |a, v| a + v, |a, b| a + b)
}

/// Σ x², vectorizable.
#[inline(always)]
pub fn lane_sum_squares(xs: &[f32]) -> f32 {
    lane_fold(xs, 0.0, |a, v| a + v * v, |a, b| a + b)
}

/// Σ x·y over two slices of one length, vectorizable.
#[inline(always)]
pub fn lane_dot(xs: &[f32], ys: &[f32]) -> f32 {
    debug_assert_eq!(xs.len(), ys.len());
    let mut acc = [0f32; 16];
    let (xc, yc) = (xs.chunks_exact(16), ys.chunks_exact(16));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in xc.zip(yc) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a = x.mul_add(y, *a);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// max |x|, vectorizable; 0 for an empty slice.
#[inline(always)]
pub fn lane_max_abs(xs: &[f32]) -> f32 {
    lane_fold(xs, 0.0, |a, v| a.max(v.abs()), f32::max)
}

/// max x, vectorizable; −∞ for an empty slice.
#[inline(always)]
pub fn lane_max(xs: &[f32]) -> f32 {
    lane_fold(xs, f32::NEG_INFINITY, f32::max, f32::max)
}

/// tanh(x) = 1 − 2 / (e^{2x} + 1); `exp` clamps, so ±1 at the extremes, no NaN.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// GELU, exact: 0.5·x·(1 + erf(x/√2)).
#[inline(always)]
fn gelu_erf_value(x: f32) -> f32 {
    let half_x = 0.5 * x;
    half_x.mul_add(erf(x * std::f32::consts::FRAC_1_SQRT_2), half_x)
}

/// transformers' gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
#[inline(always)]
fn gelu_tanh_value(x: f32) -> f32 {
    let half_x = 0.5 * x;
    let inner = 0.797_884_6 * (0.044_715 * x * x).mul_add(x, x);
    half_x.mul_add(tanh(inner), half_x)
}

/// `row[i] = act(row[i] + bias[i])` in one pass over the row (a separate pass for
/// the bias was a quarter of the epilogue's time); no bias where `bias` is empty.
#[inline(always)]
fn map_biased(row: &mut [f32], bias: &[f32], act: impl Fn(f32) -> f32) {
    if bias.is_empty() {
        for v in row.iter_mut() {
            *v = act(*v);
        }
    } else {
        assert_eq!(row.len(), bias.len(), "a bias for each value of the row");
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = act(*v + b);
        }
    }
}

/// `row = act(row + bias)`, inlined into each caller's instruction-set variant.
#[inline(always)]
pub fn bias_then_act(row: &mut [f32], bias: &[f32], epilogue: Epilogue) {
    match epilogue {
        Epilogue::None => map_biased(row, bias, |x| x),
        Epilogue::GeluErf => map_biased(row, bias, gelu_erf_value),
        Epilogue::GeluTanh => map_biased(row, bias, gelu_tanh_value),
    }
}

dispatch!(bias_then_act_slice, (row: &mut [f32], bias: &[f32], epilogue: Epilogue), {
    bias_then_act(row, bias, epilogue)
});

/// `row += bias`, then the activation: the epilogue of the packed linear layers.
pub fn add_bias_then(row: &mut [f32], bias: Option<&[f32]>, epilogue: Epilogue) {
    bias_then_act_slice(row, bias.unwrap_or(&[]), epilogue)
}

dispatch!(pub softmax_rows, (o: &mut [f32], x: &[f32], dim: usize), {
    for (o, x) in o.chunks_mut(dim).zip(x.chunks(dim)) {
        o.copy_from_slice(x);
        softmax_in_place(o);
    }
});

/// Softmax of one row in place; inlined into each caller's instruction-set variant.
#[inline(always)]
pub fn softmax_in_place(row: &mut [f32]) {
    let max = lane_max(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lane_sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

// `grad[i] *= GELU′(x[i])`: the exact GELU's derivative, Φ(x) + x·φ(x).
dispatch!(pub gelu_erf_grad, (grad: &mut [f32], x: &[f32]), {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (g, &x) in grad.iter_mut().zip(x) {
        let cdf = 0.5f32.mul_add(erf(x * std::f32::consts::FRAC_1_SQRT_2), 0.5);
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        *g *= x.mul_add(pdf, cdf);
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_libm() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -20000..20000 {
            let x = i as f32 * 0.004;
            let e = exp(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let want_erf = libm_erf(x as f64);
            worst_erf = worst_erf.max((erf(x) as f64 - want_erf).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(-87.3).is_normal());
        assert!(exp(0.0) == 1.0);
    }

    /// erf by its series / continued fraction in f64, for reference.
    fn libm_erf(x: f64) -> f64 {
        // A&S 7.1.26 is the kernel under test; compare with a high-precision series.
        let mut sum = 0f64;
        let mut term = x;
        let mut n = 0f64;
        if x.abs() > 4.0 {
            return x.signum();
        }
        loop {
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
