//! What an AMX kernel needs besides its instructions: whether this process may use
//! the tile unit, and the tiles' configuration. AMX has no stable Rust intrinsics:
//! the kernels ([`crate::gemm_bf16`], [`crate::gemm_int8`], [`crate::attend_amx`])
//! use inline assembly, through the helpers here.

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::asm;
    use std::sync::OnceLock;

    /// CPUID leaf 7 EDX bits.
    const AMX_BF16: u32 = 1 << 22;
    const AMX_INT8: u32 = 1 << 25;
    const AMX_TILE: u32 = 1 << 24;

    /// The CPU's AMX features, once Linux has let this process use the tile data
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once); none
    /// with `SLIMFORMER_NO_AMX=1` (to time the AVX-512 kernels instead).
    fn features() -> u32 {
        static FEATURES: OnceLock<u32> = OnceLock::new();
        *FEATURES.get_or_init(|| {
            if std::env::var_os("SLIMFORMER_NO_AMX").is_some() {
                return 0;
            }
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & AMX_TILE == 0 {
                return 0;
            }
            const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
            const XFEATURE_XTILEDATA: u64 = 18;
            let ret: i64;
            // SAFETY: the arch_prctl system call (158) only changes this process's
            // permission to use the AMX state; it reads no memory of ours.
            unsafe {
                asm!(
                    "syscall",
                    inlateout("rax") 158i64 => ret,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            if ret == 0 {
                edx
            } else {
                0
            }
        })
    }

    pub fn bf16() -> bool {
        !crate::portable_only() && features() & AMX_BF16 != 0
    }

    pub fn int8() -> bool {
        !crate::portable_only() && features() & AMX_INT8 != 0
    }

    /// Palette 1, all eight tiles 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// Releases the tiles when dropped: after `f` returns, and when it panics
    /// (a rayon worker that survives a panic must not keep 8 KiB of tile state,
    /// which every context switch of the thread then saves and restores).
    struct Release;

    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: only made after `ldtilecfg` succeeded on this thread.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// Runs `f` with the tiles configured (tile registers are per thread), then
    /// releases them, also when `f` panics.
    ///
    /// # Safety
    /// `bf16()` or `int8()` is true.
    pub unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
        let mut cfg = TileConfig([0u8; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64;
            cfg.0[48 + t] = 16;
        }
        // SAFETY: the caller checked that the CPU has AMX and the kernel lets this
        // process use it; the configuration is a valid palette-1 layout.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        let _release = Release;
        f()
    }

    /// Tile `T` = 16 rows of 64 bytes from `p`, `stride` bytes apart.
    ///
    /// # Safety
    /// Inside [`with_tiles`]; the 16 rows are readable.
    #[inline(always)]
    pub unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
        unsafe {
            asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride,
            options(nostack, readonly));
        }
    }

    /// 16 rows of 64 bytes at `p`, `stride` bytes apart = tile `T`.
    ///
    /// # Safety
    /// Inside [`with_tiles`]; the 16 rows are writable.
    #[inline(always)]
    pub unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
        unsafe {
            asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) stride,
            options(nostack));
        }
    }

    /// Tile `T` = 0.
    ///
    /// # Safety
    /// Inside [`with_tiles`].
    #[inline(always)]
    pub unsafe fn zero<const T: u8>() {
        unsafe {
            asm!("tilezero tmm{t}", t = const T, options(nostack, nomem));
        }
    }

    /// Tile `C` (16×16 i32) += tile `A` (16 rows × 64 i8) · tile `B` (16 quads of
    /// rows × 16 columns × 4 i8).
    ///
    /// # Safety
    /// Inside [`with_tiles`], on a CPU with [`int8`].
    #[inline(always)]
    pub unsafe fn dot_i8i8<const C: u8, const A: u8, const B: u8>() {
        unsafe {
            asm!("tdpbssd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
            options(nostack, nomem));
        }
    }

    /// Tile `C` (16×16 f32) += tile `A` (16 rows × 32 bf16) · tile `B` (16 pairs of
    /// rows × 16 columns × 2 bf16).
    ///
    /// # Safety
    /// Inside [`with_tiles`], on a CPU with [`bf16`].
    #[inline(always)]
    pub unsafe fn dot_bf16<const C: u8, const A: u8, const B: u8>() {
        unsafe {
            asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
            options(nostack, nomem));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub fn bf16() -> bool {
        false
    }

    pub fn int8() -> bool {
        false
    }

    /// Never called: no AMX off x86-64.
    ///
    /// # Safety
    /// None needed; kept `unsafe` to match the x86-64 signature.
    pub unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

pub use imp::{bf16, int8, with_tiles};
#[cfg(target_arch = "x86_64")]
pub use imp::{dot_bf16, dot_i8i8, load, store, zero};
