//! The CPU kernels of slimformer, on plain slices (no tensor library): what the
//! model layers call where no gradient flows.
//!
//! - [`gemm`]: f32 products against weights packed once at load, with fused
//!   bias/GELU epilogues; [`gemm_int8`] and [`gemm_bf16`]: the same in int8 (VNNI,
//!   AMX) and bf16 (AVX512-BF16, AMX).
//! - [`attention`]: fused attention (scores, mask, softmax, values) and residual +
//!   LayerNorm.
//! - [`math`]: vectorised `exp`, `erf`, `tanh`, GELU, softmax and reductions.
//!
//! Each kernel picks the widest instructions the CPU has at run time (AMX,
//! AVX-512, AVX2+FMA, or portable code): one binary runs everywhere.

#[macro_use]
mod dispatch;

pub mod aligned;
pub mod amx;
#[cfg(target_arch = "x86_64")]
mod attend_amx;
#[cfg(target_arch = "x86_64")]
mod attend_avx512;
pub mod attention;
mod chain;
pub mod gemm;
pub mod gemm_bf16;
pub mod gemm_int8;
mod head;
pub mod math;
#[doc(hidden)]
pub mod testing;

/// `SLIMFORMER_PORTABLE_KERNELS` set (to anything): every kernel runs its
/// portable code, as on a CPU without AVX2, AVX-512 or AMX. Read once.
pub fn portable_only() -> bool {
    static PORTABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PORTABLE.get_or_init(|| std::env::var_os("SLIMFORMER_PORTABLE_KERNELS").is_some())
}
