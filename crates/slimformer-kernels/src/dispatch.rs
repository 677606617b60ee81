//! Runtime choice of the widest vector instructions for the inference kernels.

/// Instantiates `$body` (a loop over slices) for AVX-512, AVX2+FMA and the baseline,
/// picked at run time, so the same scalar code is vectorized for the widest lanes.
/// The bodies use `mul_add` for FMA instructions; on the baseline (an x86-64 CPU
/// without AVX2, older than 2013) that is a libm call: correct, slow.
#[macro_export]
macro_rules! dispatch {
    ($vis:vis $name:ident, ($($arg:ident: $ty:ty),*), $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) $body
                #[target_feature(enable = "avx2,fma")]
                unsafe fn mid($($arg: $ty),*) $body
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { mid($($arg),*) };
                }
            }
            $body
        }
    };
}
