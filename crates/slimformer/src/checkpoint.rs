//! Reading Hugging Face checkpoint folders: `config.json` and the weights, from
//! `model.safetensors`, sharded safetensors or `pytorch_model.bin`, with tensor
//! names brought to one canonical form (no family prefix, no legacy gamma/beta).

use crate::error::FileContext;
use crate::models::Family;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
const SAFETENSORS_FILE: &str = "model.safetensors";
const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
const PYTORCH_FILE: &str = "pytorch_model.bin";

/// A checkpoint folder, read into memory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub family: Family,
    /// The raw `config.json`, for the family config and the head settings.
    pub config: serde_json::Value,
    /// Tensors by canonical name, as stored (dtype unchanged).
    pub tensors: HashMap<String, Tensor>,
    pub weight_files: Vec<PathBuf>,
    /// How the stored weights were quantized (`int8`, `bf16`), if they were; the
    /// tensors above are already restored to f32.
    pub quantization: Option<String>,
}

impl Checkpoint {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::file(&dir, "not a model folder (no such directory)"));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config = read_json(&config_path)?;
        let family = family_of(&config, &config_path)?;
        let weight_files = weight_files(&dir)?;
        let mut tensors = HashMap::new();
        for file in &weight_files {
            for (name, tensor) in read_weights(file)? {
                tensors.insert(canonical_name(&name, family), tensor);
            }
            crate::quantized::dequantize(&mut tensors, file)?;
        }
        let quantization = config
            .get(crate::quantized::METADATA_KEY)
            .and_then(|q| q.get("mode"))
            .and_then(|m| m.as_str())
            .map(str::to_string);
        Ok(Self {
            dir,
            family,
            config,
            tensors,
            weight_files,
            quantization,
        })
    }

    /// Deserializes the family's config struct from `config.json`.
    pub fn family_config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.config.clone()).in_file(self.dir.join(CONFIG_FILE))
    }

    /// A VarBuilder over the tensors, converted to f32 on the CPU.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &Device::Cpu)
    }

    /// The dtype most of the weights are stored in.
    pub fn dtype(&self) -> DType {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for t in self.tensors.values() {
            *counts.entry(t.dtype()).or_default() += t.elem_count();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or(DType::F32)
    }

    pub fn size_bytes(&self) -> u64 {
        self.weight_files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Missing tensors and wrong shapes are problems of the weights file: say which.
    pub fn weights_error(&self, e: Error) -> Error {
        match e {
            Error::Candle(e) => Error::file(
                self.weights_path(),
                crate::error::first_line(&e.to_string()),
            ),
            other => other,
        }
    }

    /// Where load errors point: the weights file, or the folder when sharded.
    pub fn weights_path(&self) -> &Path {
        match self.weight_files.as_slice() {
            [one] => one,
            _ => &self.dir,
        }
    }
}

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(path, "missing"),
        _ => Error::file(path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

fn family_of(config: &serde_json::Value, path: &Path) -> Result<Family> {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::file(path, "no \"model_type\" field"))?;
    Family::from_model_type(model_type).ok_or_else(|| {
        let known: Vec<_> = Family::ALL.iter().map(|f| f.model_type()).collect();
        Error::Unsupported(format!(
            "{}: unknown model_type {model_type:?}: slimformer supports {}",
            path.display(),
            known.join(", ")
        ))
    })
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SAFETENSORS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(SAFETENSORS_INDEX_FILE);
    if index.exists() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::file(&index, "no \"weight_map\" object"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        if shards.is_empty() {
            return Err(Error::file(&index, "\"weight_map\" names no shard files"));
        }
        return shards
            .into_iter()
            .map(|name| {
                let shard = dir.join(name);
                if shard.exists() {
                    Ok(shard)
                } else {
                    Err(Error::file(
                        &shard,
                        format!("missing (listed in {SAFETENSORS_INDEX_FILE})"),
                    ))
                }
            })
            .collect();
    }
    let pytorch = dir.join(PYTORCH_FILE);
    if pytorch.exists() {
        return Ok(vec![pytorch]);
    }
    Err(Error::file(
        dir,
        format!(
            "no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {PYTORCH_FILE}"
        ),
    ))
}

fn read_weights(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let is_pytorch = path.extension().is_some_and(|e| e == "bin");
    if is_pytorch {
        candle_core::pickle::read_all(path).in_file(path)
    } else {
        // Mapped, not read: the tensors are copied out once, straight from the page
        // cache (reading first would copy all the weights twice); populated, so the
        // kernel maps every page in one go instead of one fault per page.
        let file = std::fs::File::open(path).in_file(path)?;
        // SAFETY: the map lives until the tensors are copied out of it, below; a
        // file changed by another process meanwhile is the only hazard, as for any
        // reader of a file being rewritten (slimformer itself replaces files by rename).
        let bytes = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.in_file(path)?;
        if crate::quantized::quantization_of(&bytes).is_some() {
            return crate::quantized::read_quantized(&bytes, path);
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| Error::file(path, format!("not a valid safetensors file ({e})")))?;
        Ok(tensors.into_iter().collect())
    }
}

/// Strips the family's base-model prefix and renames TF-era LayerNorm parameters.
fn canonical_name(name: &str, family: Family) -> String {
    let name = name.strip_prefix(family.weight_prefix()).unwrap_or(name);
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_drop_prefix_and_legacy_suffixes() {
        assert_eq!(
            canonical_name("bert.embeddings.LayerNorm.gamma", Family::Bert),
            "embeddings.LayerNorm.weight"
        );
        assert_eq!(
            canonical_name("classifier.bias", Family::Bert),
            "classifier.bias"
        );
        // DistilBERT's own encoder lives under `transformer.`: only `distilbert.` goes.
        assert_eq!(
            canonical_name(
                "distilbert.transformer.layer.0.ffn.lin1.weight",
                Family::DistilBert
            ),
            "transformer.layer.0.ffn.lin1.weight"
        );
        assert_eq!(
            canonical_name("transformer.layer.0.rel_attn.q", Family::XLNet),
            "layer.0.rel_attn.q"
        );
    }
}
