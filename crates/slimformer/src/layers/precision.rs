//! The arithmetic of the linear layers, chosen once for the whole process.

use std::sync::atomic::{AtomicU8, Ordering};

/// The arithmetic of every linear layer for the whole process (the command line's `--precision`): weights are stored f32 either way; training runs its products
/// in bf16 under `Bf16` and in f32 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    /// Weights per output channel and activations per row and group of 64 values
    /// as int8 (dynamic quantization), i32 sums.
    Int8,
    /// Weights and activations rounded to bf16, f32 sums.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision {other:?}: expected fp32, int8 or bf16"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        })
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the inference precision of every linear layer in this process.
pub fn set_precision(precision: Precision) {
    if precision != Precision::Fp32 && !super::fast::enabled() {
        tracing::warn!(
            "SLIMFORMER_CANDLE_OPS is set: candle's ops run in f32, so {precision} does not apply"
        );
    }
    PRECISION.store(precision as u8, Ordering::Relaxed);
}

pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => Precision::Int8,
        2 => Precision::Bf16,
        _ => Precision::Fp32,
    }
}
