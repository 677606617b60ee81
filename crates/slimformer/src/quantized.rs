//! Reading slimformer's quantized checkpoints: int8 matrices stored as `I8` with
//! one `F32` scale per row under `<name>_scale`, or bf16 matrices, flagged by
//! `slimformer_quantization` in the file's metadata and in `config.json`. Loading
//! restores f32 weights; the kernels re-quantize them for int8/bf16 inference.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The metadata key (safetensors and `config.json`) naming the quantization.
pub const METADATA_KEY: &str = "slimformer_quantization";
/// The suffix of an int8 matrix's per-row scales.
pub const SCALE_SUFFIX: &str = "_scale";

/// Reads a safetensors buffer that may hold int8 tensors: those come back as f32
/// integer values, to be scaled by [`dequantize`].
pub fn read_quantized(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file ({e})")))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = if view.dtype() == safetensors::Dtype::I8 {
                let values: Vec<f32> = view.data().iter().map(|b| *b as i8 as f32).collect();
                Tensor::from_vec(values, view.shape(), &Device::Cpu)?
            } else {
                use candle_core::safetensors::Load;
                view.load(&Device::Cpu)?
            };
            Ok((name, t))
        })
        .collect()
}

/// Whether a safetensors buffer says it holds slimformer-quantized weights.
pub fn quantization_of(bytes: &[u8]) -> Option<String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    meta.metadata().as_ref()?.get(METADATA_KEY).cloned()
}

/// Multiplies every int8 matrix by its `<name>_scale` rows and drops the scales.
pub fn dequantize(tensors: &mut HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let scaled: Vec<String> = tensors
        .keys()
        .filter_map(|n| n.strip_suffix(SCALE_SUFFIX).map(str::to_string))
        .collect();
    for name in scaled {
        let scale = tensors
            .remove(&format!("{name}{SCALE_SUFFIX}"))
            .expect("listed");
        let q = tensors.get(&name).ok_or_else(|| {
            Error::file(path, format!("{name}{SCALE_SUFFIX} has no tensor {name}"))
        })?;
        if q.rank() != 2 || scale.dims() != [q.dim(0)?] {
            return Err(Error::file(
                path,
                format!("{name}{SCALE_SUFFIX} does not have one scale per row of {name}"),
            ));
        }
        let w = q
            .to_dtype(DType::F32)?
            .broadcast_mul(&scale.to_dtype(DType::F32)?.unsqueeze(1)?)?;
        tensors.insert(name, w);
    }
    Ok(())
}
