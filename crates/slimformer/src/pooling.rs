//! Sentence embeddings as sentence-transformers makes them: pooling over the
//! real tokens, optional L2 normalization, settings read from the checkpoint.

use crate::checkpoint::read_json;
use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "max" => Pooling::Max,
            "mean_sqrt_len" => Pooling::MeanSqrtLen,
            other => {
                return Err(format!(
                    "unknown pooling {other:?}: expected mean, cls, max or mean_sqrt_len"
                ))
            }
        })
    }
}

/// How a checkpoint wants its sentence embeddings made.
#[derive(Debug, Clone)]
pub struct EmbeddingSettings {
    /// Concatenated in this order, as sentence-transformers does when several are on.
    pub pooling: Vec<Pooling>,
    pub normalize: bool,
    /// `max_seq_length` of `sentence_bert_config.json`.
    pub max_seq_length: Option<usize>,
}

impl EmbeddingSettings {
    /// Reads `1_Pooling/config.json` (or the pooling module that `modules.json`
    /// names), `modules.json` and `sentence_bert_config.json`; without them, mean
    /// pooling and no normalization.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        let modules = if modules_path.exists() {
            read_json(&modules_path)?
                .as_array()
                .cloned()
                .ok_or_else(|| Error::file(&modules_path, "expected a JSON array of modules"))?
        } else {
            Vec::new()
        };
        let module_type = |m: &serde_json::Value| {
            m.get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string()
        };
        let normalize = modules
            .iter()
            .any(|m| module_type(m).ends_with(".Normalize"));
        let pooling_dir = modules
            .iter()
            .find(|m| module_type(m).ends_with(".Pooling"))
            .and_then(|m| m.get("path").and_then(|p| p.as_str()))
            .unwrap_or("1_Pooling");
        let pooling_path = dir.join(pooling_dir).join("config.json");
        let pooling = if pooling_path.exists() {
            let cfg = read_json(&pooling_path)?;
            let on = |key: &str| cfg.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
            let modes: Vec<Pooling> = [
                ("pooling_mode_cls_token", Pooling::Cls),
                ("pooling_mode_max_tokens", Pooling::Max),
                ("pooling_mode_mean_tokens", Pooling::Mean),
                ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
            ]
            .into_iter()
            .filter(|(key, _)| on(key))
            .map(|(_, mode)| mode)
            .collect();
            if modes.is_empty() {
                return Err(Error::file(
                    &pooling_path,
                    "no supported pooling mode is enabled",
                ));
            }
            modes
        } else {
            vec![Pooling::Mean]
        };
        let st_config = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_config.exists() {
            read_json(&st_config)?
                .get("max_seq_length")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
        } else {
            None
        };
        Ok(Self {
            pooling,
            normalize,
            max_seq_length,
        })
    }
}

/// Pools one text's hidden states [n_tokens, hidden] (padding already removed).
pub fn pool(hidden: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let n = hidden.dim(0)? as f64;
    Ok(match pooling {
        Pooling::Mean => hidden.mean(0)?,
        Pooling::Cls => hidden.get(0)?,
        Pooling::Max => hidden.max(0)?,
        Pooling::MeanSqrtLen => (hidden.sum(0)? / n.sqrt())?,
    })
}

/// Pools with every mode of `settings` and normalizes if asked: a vector [dim].
pub fn embed(hidden: &Tensor, settings: &EmbeddingSettings) -> Result<Tensor> {
    let parts = settings
        .pooling
        .iter()
        .map(|&p| pool(hidden, p))
        .collect::<Result<Vec<_>>>()?;
    let pooled = Tensor::cat(&parts, 0)?;
    if settings.normalize {
        l2_normalize(&pooled)
    } else {
        Ok(pooled)
    }
}

/// x / max(‖x‖, 1e-12), as torch's `F.normalize`.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .to_dtype(DType::F32)?
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    Ok(xs.broadcast_div(&norm)?)
}
