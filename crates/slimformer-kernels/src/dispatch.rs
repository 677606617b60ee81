//! Runtime choice of the widest vector instructions for the inference kernels.

/// Instantiates `$body` (a loop over slices) for AVX-512, AVX2+FMA and the baseline,
/// picked at run time, so the same scalar code is vectorized for the widest lanes.
/// The bodies use `mul_add` for FMA instructions; on the baseline (an x86-64 CPU
/// without AVX2, older than 2013) that is a libm call: correct, slow.
/// Whether the CPU has every one of the features and the kernels may use them:
/// always false under `SLIMFORMER_PORTABLE_KERNELS=1`, which runs the portable
/// code that a CPU without AVX2 runs (the tests cover it as a whole model so).
#[macro_export]
macro_rules! cpu_has {
    ($($feature:tt),+) => {
        !$crate::portable_only() $(&& std::arch::is_x86_feature_detected!($feature))+
    };
}

#[macro_export]
macro_rules! dispatch {
    ($vis:vis $name:ident, ($($arg:ident: $ty:ty),*), $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn wide($($arg: $ty),*) $body
                #[target_feature(enable = "avx2,fma")]
                fn mid($($arg: $ty),*) $body
                if $crate::cpu_has!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if $crate::cpu_has!("avx2", "fma") {
                    // SAFETY: as above.
                    return unsafe { mid($($arg),*) };
                }
            }
            $body
        }
    };
}
