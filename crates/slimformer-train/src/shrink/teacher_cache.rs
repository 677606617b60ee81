//! The teacher's outputs on the training data of a task distillation, computed once
//! and kept on disk: logits in f32, last hidden states of the real tokens in f16.
//! The file is named by a hash of everything they depend on (the teacher's weights,
//! config and tokenizer, the data file, the columns, the length limit, what is kept),
//! so a changed teacher or data set never reads a stale cache.

use candle_core::{DType, Device, Tensor};
use slimformer::io::replace_file;
use slimformer::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bump when the file layout changes.
const FORMAT: &str = "slimformer-teacher-outputs-v1";

/// The teacher's outputs for examples 0..n.
#[derive(Debug, Clone)]
pub struct TeacherOutputs {
    /// [n, labels], f32.
    pub logits: Tensor,
    /// [real tokens of all examples, hidden], f16; example `i` owns rows
    /// `offsets[i]..offsets[i + 1]`.
    pub hidden: Option<Tensor>,
    pub offsets: Vec<usize>,
}

impl TeacherOutputs {
    /// Logits [batch, labels] of the examples `indices`.
    pub fn logits_of(&self, indices: &[usize]) -> Result<Tensor> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let n = idx.len();
        Ok(self
            .logits
            .index_select(&Tensor::from_vec(idx, n, &Device::Cpu)?, 0)?)
    }

    /// The real tokens' hidden states of the examples `indices`, in order, f32.
    pub fn hidden_of(&self, indices: &[usize]) -> Result<Option<Tensor>> {
        let Some(hidden) = &self.hidden else {
            return Ok(None);
        };
        let rows: Vec<u32> = indices
            .iter()
            .flat_map(|&i| (self.offsets[i] as u32)..(self.offsets[i + 1] as u32))
            .collect();
        let n = rows.len();
        let picked = hidden.index_select(&Tensor::from_vec(rows, n, &Device::Cpu)?, 0)?;
        Ok(Some(picked.to_dtype(DType::F32)?))
    }
}

/// FNV-1a over length-prefixed parts: a stable content hash.
pub fn cache_key(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    for b in FORMAT.bytes() {
        eat(b);
    }
    for part in parts {
        for b in (part.len() as u64).to_le_bytes() {
            eat(b);
        }
        for &b in *part {
            eat(b);
        }
    }
    format!("{h:016x}")
}

/// Bytes of every file a model folder's outputs depend on.
pub fn model_fingerprint(dir: &Path, weight_files: &[PathBuf]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut files: Vec<PathBuf> = weight_files.to_vec();
    files.push(dir.join(slimformer::checkpoint::CONFIG_FILE));
    files.push(dir.join(slimformer::tokenize::TOKENIZER_FILE));
    for f in files {
        if f.exists() {
            let content = std::fs::read(&f).map_err(|e| Error::file(&f, e))?;
            bytes.extend(cache_key(&[&content]).into_bytes());
        }
    }
    Ok(bytes)
}

/// Reads the outputs stored under `key` in `dir`, or computes and stores them.
pub fn load_or_compute(
    dir: Option<&Path>,
    key: &str,
    compute: impl FnOnce() -> Result<TeacherOutputs>,
) -> Result<TeacherOutputs> {
    let Some(dir) = dir else {
        return compute();
    };
    let path = dir.join(format!("{key}.safetensors"));
    if path.exists() {
        match read(&path) {
            Ok(outputs) => {
                tracing::info!("teacher outputs from the cache {}", path.display());
                return Ok(outputs);
            }
            Err(e) => tracing::warn!("ignoring an unreadable teacher cache: {e}"),
        }
    }
    let outputs = compute()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let mut tensors = HashMap::from([
        ("logits".to_string(), outputs.logits.clone()),
        (
            "offsets".to_string(),
            Tensor::new(
                outputs
                    .offsets
                    .iter()
                    .map(|&o| o as i64)
                    .collect::<Vec<_>>(),
                &Device::Cpu,
            )?,
        ),
    ]);
    if let Some(h) = &outputs.hidden {
        tensors.insert("hidden".into(), h.clone());
    }
    replace_file(&path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| Error::file(&path, e.to_string()))
    })?;
    Ok(outputs)
}

fn read(path: &Path) -> Result<TeacherOutputs> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::file(path, e.to_string()))?;
    let logits = t
        .remove("logits")
        .ok_or_else(|| Error::file(path, "no logits"))?;
    let offsets: Vec<usize> = t
        .remove("offsets")
        .ok_or_else(|| Error::file(path, "no offsets"))?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|o| o as usize)
        .collect();
    Ok(TeacherOutputs {
        logits,
        hidden: t.remove("hidden"),
        offsets,
    })
}
