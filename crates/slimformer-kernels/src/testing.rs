//! Helpers for the kernels' tests, shared with the layers' tests: deterministic
//! inputs, a chained-product check, and how a test reports the CPU feature it
//! could not check.

use crate::gemm::Epilogue;
use std::io::Write;

/// Whether a test of a kernel that needs `feature` can run: `available` says
/// whether this CPU has it. When it cannot, the test says so on the terminal (past
/// the test harness' capture, so a skip is visible in `cargo test`'s output) and
/// fails if `SLIMFORMER_REQUIRE_KERNELS` names the feature (a comma-separated list
/// such as `avx512,vnni,avx512bf16,amx`, or `all`): on a machine that has the
/// feature, a kernel that stopped being detected must not pass by skipping.
pub fn can_check(feature: &str, available: bool, test: &str) -> bool {
    if available {
        return true;
    }
    let required = std::env::var("SLIMFORMER_REQUIRE_KERNELS").unwrap_or_default();
    let required = required
        .split(',')
        .map(str::trim)
        .any(|f| f == feature || f == "all");
    assert!(
        !required,
        "{test}: SLIMFORMER_REQUIRE_KERNELS names {feature}, but this CPU (or build) does not run it"
    );
    let _ = writeln!(
        std::io::stderr(),
        "note: {test}: skipped, this CPU lacks {feature}"
    );
    false
}

/// `chained` (a feed-forward block as one op) gives exactly `linear` twice. Short
/// inputs split the columns between tasks (the inner activation then takes a
/// pass of its own); long ones hand over whole rows.
pub fn chained_equals_two_products<W>(
    pack: impl Fn(&[f32], usize, usize) -> W,
    linear: impl Fn(&[f32], usize, &W, Option<&[f32]>, Epilogue) -> Vec<f32>,
    chained: impl Fn(&[f32], usize, (&W, Option<&[f32]>), Epilogue, (&W, Option<&[f32]>)) -> Vec<f32>,
) {
    for &(m, k, inner, n) in &[(5, 64, 128, 64), (400, 64, 192, 96), (33, 70, 131, 20)] {
        let a = values(m * k, 7);
        let up = pack(&values(inner * k, 8), inner, k);
        let down = pack(&values(n * inner, 9), n, inner);
        let (up_bias, down_bias) = (values(inner, 10), values(n, 11));
        let h = linear(&a, m, &up, Some(&up_bias), Epilogue::GeluErf);
        let two = linear(&h, m, &down, Some(&down_bias), Epilogue::None);
        let up = (&up, Some(&up_bias[..]));
        let one = chained(&a, m, up, Epilogue::GeluErf, (&down, Some(&down_bias)));
        assert_eq!(one, two, "{m}×{k}→{inner}→{n}");
    }
}

/// Deterministic values in [-0.5, 0.5) (xorshift), for the kernels' tests.
pub fn values(len: usize, seed: u32) -> Vec<f32> {
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
