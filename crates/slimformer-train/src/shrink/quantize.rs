//! Weight quantization of a checkpoint: the matrices of the linear layers and the
//! word embeddings (half of a small model's parameters) stored as int8 with one
//! scale per output channel (per row), or as bf16. Norms, biases and the small
//! position/type tables stay f32.
//!
//! # The int8 format
//!
//! `model.safetensors` holds each quantized matrix `W` [out, in] as `I8` under its
//! usual name and its scales as `F32` [out] under `<name>_scale`, with
//! `W ≈ q · scale[row]` and `scale[row] = max |W[row]| / 127` (symmetric). The file's
//! metadata and `config.json` carry `slimformer_quantization`; slimformer restores
//! f32 weights when it loads such a checkpoint (transformers does not read it). Making
//! int8 inference fast is the job of the kernels, not of this format.

use crate::shrink::student::copy_side_files;
use candle_core::{DType, Tensor};
use slimformer::checkpoint::Checkpoint;
use slimformer::save::{hf_name, write_atomic, PRETRAINING_HEAD_PREFIXES, SEQUENCE_HEAD_PREFIXES};
use slimformer::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use slimformer::quantized::{METADATA_KEY, SCALE_SUFFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMode {
    Int8,
    Bf16,
}

impl std::str::FromStr for QuantMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "int8" => Ok(QuantMode::Int8),
            "bf16" => Ok(QuantMode::Bf16),
            other => Err(format!("unknown mode {other:?}: expected int8 or bf16")),
        }
    }
}

/// Whether a tensor (canonical name) is quantized: every 2-D weight matrix except
/// the position and token-type tables.
pub fn is_quantized(name: &str, tensor: &Tensor) -> bool {
    tensor.rank() == 2
        && name.ends_with(".weight")
        && !name.contains("position_embeddings")
        && !name.contains("token_type_embeddings")
        && !name.to_ascii_lowercase().contains("norm")
}

/// Symmetric per-row int8: the values and one scale per row.
pub fn quantize_rows(w: &Tensor) -> Result<(Vec<i8>, Vec<f32>)> {
    let rows = w.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut q = Vec::with_capacity(w.elem_count());
    let mut scales = Vec::with_capacity(rows.len());
    for row in rows {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        q.extend(
            row.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(scale);
    }
    Ok((q, scales))
}

/// What `quantize` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantReport {
    pub out: PathBuf,
    pub mode: QuantMode,
    pub quantized_tensors: usize,
    pub quantized_parameters: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// bytes_after / bytes_before.
    pub size_ratio: f64,
    /// Largest |W − dequantized W| over all quantized weights.
    pub max_abs_error: f32,
}

fn le_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Writes a quantized copy of the checkpoint in `model_dir` to `out`.
pub fn quantize(model_dir: &Path, out: &Path, mode: QuantMode) -> Result<QuantReport> {
    let ckpt = Checkpoint::open(model_dir)?;
    if let Some(q) = &ckpt.quantization {
        return Err(Error::file(
            model_dir,
            format!("is already quantized ({q}): quantize the fp32 model"),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let heads: Vec<&str> = SEQUENCE_HEAD_PREFIXES
        .iter()
        .chain(PRETRAINING_HEAD_PREFIXES)
        .copied()
        .collect();
    let name_of = |n: &str| hf_name(ckpt.family, n, &heads);
    let mut names: Vec<&String> = ckpt.tensors.keys().collect();
    names.sort();
    let (mut count, mut params, mut max_err) = (0usize, 0usize, 0f32);
    let weights_path = out.join("model.safetensors");
    match mode {
        QuantMode::Int8 => {
            let mut blobs: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
            for name in names {
                let t = &ckpt.tensors[name];
                if is_quantized(name, t) {
                    let (q, scales) = quantize_rows(t)?;
                    let rows = t.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                    let cols = t.dim(1)?;
                    for (r, row) in rows.iter().enumerate() {
                        for (c, v) in row.iter().enumerate() {
                            let back = q[r * cols + c] as f32 * scales[r];
                            max_err = max_err.max((v - back).abs());
                        }
                    }
                    count += 1;
                    params += t.elem_count();
                    let bytes = q.iter().map(|v| *v as u8).collect();
                    blobs.push((
                        name_of(name),
                        safetensors::Dtype::I8,
                        t.dims().to_vec(),
                        bytes,
                    ));
                    let scale_bytes = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                    blobs.push((
                        format!("{}{SCALE_SUFFIX}", name_of(name)),
                        safetensors::Dtype::F32,
                        vec![scales.len()],
                        scale_bytes,
                    ));
                } else {
                    blobs.push((
                        name_of(name),
                        safetensors::Dtype::F32,
                        t.dims().to_vec(),
                        le_bytes(t)?,
                    ));
                }
            }
            let views = blobs
                .iter()
                .map(|(n, d, s, b)| {
                    safetensors::tensor::TensorView::new(*d, s.clone(), b)
                        .map(|v| (n.clone(), v))
                        .map_err(|e| Error::file(&weights_path, e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            let meta = HashMap::from([
                ("format".to_string(), "pt".to_string()),
                (METADATA_KEY.to_string(), "int8".to_string()),
            ]);
            slimformer::io::replace_file(&weights_path, |tmp| {
                safetensors::tensor::serialize_to_file(views, Some(meta), tmp)
                    .map_err(|e| Error::file(&weights_path, e.to_string()))
            })?;
        }
        QuantMode::Bf16 => {
            let mut tensors = HashMap::new();
            for name in names {
                let t = &ckpt.tensors[name];
                let stored = if is_quantized(name, t) {
                    count += 1;
                    params += t.elem_count();
                    let b = t.to_dtype(DType::BF16)?;
                    let err = (b.to_dtype(DType::F32)? - t.to_dtype(DType::F32)?)?
                        .abs()?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f32>()?;
                    max_err = max_err.max(err);
                    b
                } else {
                    t.to_dtype(DType::F32)?
                };
                tensors.insert(name_of(name), stored);
            }
            slimformer::save::save_tensors(&tensors, &weights_path)?;
        }
    }
    let mut config = ckpt.config.clone();
    config[METADATA_KEY] = serde_json::json!({
        "mode": mode,
        "scheme": match mode {
            QuantMode::Int8 => "symmetric int8, one f32 scale per output row (<name>_scale)",
            QuantMode::Bf16 => "bfloat16 weight matrices",
        },
        "tensors": count,
        "note": "slimformer restores f32 weights on load; transformers does not read this format",
    });
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    write_atomic(
        &out.join(slimformer::checkpoint::CONFIG_FILE),
        text.as_bytes(),
    )?;
    copy_side_files(model_dir, out, false)?;
    let bytes_before = ckpt.size_bytes();
    let bytes_after = std::fs::metadata(&weights_path)
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(QuantReport {
        out: out.to_path_buf(),
        mode,
        quantized_tensors: count,
        quantized_parameters: params,
        bytes_before,
        bytes_after,
        size_ratio: bytes_after as f64 / bytes_before.max(1) as f64,
        max_abs_error: max_err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn int8_rows_round_trip_within_half_a_step() {
        let w = Tensor::new(
            &[[0.5f32, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.01]],
            &Device::Cpu,
        )
        .unwrap();
        let (q, s) = quantize_rows(&w).unwrap();
        assert_eq!(q[1], -127);
        assert_eq!(q[6], 127);
        assert_eq!(s[1], 1.0);
        for (i, v) in w
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .enumerate()
        {
            let back = q[i] as f32 * s[i / 3];
            assert!((v - back).abs() <= s[i / 3] / 2.0 + 1e-7);
        }
    }

    #[test]
    fn only_weight_matrices_are_quantized() {
        let m = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
        let v = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(is_quantized(
            "encoder.layer.0.attention.self.query.weight",
            &m
        ));
        assert!(is_quantized("embeddings.word_embeddings.weight", &m));
        assert!(!is_quantized("embeddings.position_embeddings.weight", &m));
        assert!(!is_quantized("encoder.layer.0.output.LayerNorm.weight", &v));
        assert!(!is_quantized("classifier.bias", &v));
    }
}
