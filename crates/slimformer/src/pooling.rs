//! Sentence embeddings as sentence-transformers makes them: pooling over the
//! real tokens, optional L2 normalization, settings read from the checkpoint.

use crate::checkpoint::read_json;
use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

impl Pooling {
    /// The name `--pooling` and the routes take.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
        }
    }
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
    /// Keep only the first this many values (Matryoshka embeddings), before the
    /// normalization, as sentence-transformers' `truncate_dim` does.
    pub dimensions: Option<usize>,
    /// The prompts of `config_sentence_transformers.json`.
    pub prompts: Prompts,
}

/// Named texts put before each input (`"query": "query: "`), as
/// sentence-transformers' `prompts` and `default_prompt_name`.
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    pub named: BTreeMap<String, String>,
    /// Used when a call names no prompt.
    pub default_name: Option<String>,
    /// `include_prompt` of the pooling config: false would pool without the
    /// prompt's tokens, which is not implemented.
    pub pooled: bool,
}

impl Prompts {
    /// The text to put before each input: `prompt` itself, else the prompt named
    /// `name`, else the default one; none when nothing is asked or configured.
    pub fn resolve(&self, name: Option<&str>, prompt: Option<&str>) -> Result<Option<String>> {
        let chosen = match (prompt, name.or(self.default_name.as_deref())) {
            (Some(p), _) => Some(p.to_string()),
            (None, Some(name)) => Some(self.named.get(name).cloned().ok_or_else(|| {
                let known = if self.named.is_empty() {
                    "the model defines no prompts (config_sentence_transformers.json)".to_string()
                } else {
                    let names: Vec<&str> = self.named.keys().map(String::as_str).collect();
                    format!("not among the model's prompts: {}", names.join(", "))
                };
                Error::bad_value("prompt_name", format!("{name:?}"), known)
            })?),
            (None, None) => None,
        };
        if chosen.as_deref().is_some_and(|p| !p.is_empty()) && !self.pooled {
            return Err(Error::Unsupported(
                "the model pools without its prompt's tokens (include_prompt: false in its \
                 pooling config), which slimformer does not do"
                    .into(),
            ));
        }
        Ok(chosen.filter(|p| !p.is_empty()))
    }
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
        let include_prompt = if pooling_path.exists() {
            read_json(&pooling_path)?
                .get("include_prompt")
                .and_then(|v| v.as_bool())
                .unwrap_or(true)
        } else {
            true
        };
        let prompts = read_prompts(dir, include_prompt)?;
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
            dimensions: None,
            prompts,
        })
    }

    /// The length of an embedding before any truncation: the hidden size for each
    /// pooling mode.
    pub fn full_dimensions(&self, hidden_size: usize) -> usize {
        hidden_size * self.pooling.len()
    }

    /// Keeps the first `dimensions` values of each embedding (checked against the
    /// model's `full` length).
    pub fn truncated(mut self, dimensions: Option<usize>, full: usize) -> Result<Self> {
        self.dimensions = checked_dimensions(dimensions, full)?;
        Ok(self)
    }
}

/// `dimensions` checked against an embedding of `full` values: none when it keeps
/// them all.
pub fn checked_dimensions(dimensions: Option<usize>, full: usize) -> Result<Option<usize>> {
    if let Some(d) = dimensions.filter(|&d| d == 0 || d > full) {
        return Err(Error::bad_value(
            "dimensions",
            d,
            format!("must be between 1 and {full}, the model's embedding size"),
        ));
    }
    Ok(dimensions.filter(|&d| d < full))
}

/// `prompts` and `default_prompt_name` of `config_sentence_transformers.json`.
fn read_prompts(dir: &Path, pooled: bool) -> Result<Prompts> {
    let path = dir.join("config_sentence_transformers.json");
    let mut prompts = Prompts {
        pooled,
        ..Prompts::default()
    };
    if !path.exists() {
        return Ok(prompts);
    }
    let cfg = read_json(&path)?;
    if let Some(map) = cfg.get("prompts").filter(|v| !v.is_null()) {
        let map = map
            .as_object()
            .ok_or_else(|| Error::file(&path, "`prompts` must be an object of name: text"))?;
        for (name, text) in map {
            let text = text
                .as_str()
                .ok_or_else(|| Error::file(&path, format!("prompt {name:?} must be a string")))?;
            prompts.named.insert(name.clone(), text.to_string());
        }
    }
    prompts.default_name = cfg
        .get("default_prompt_name")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if let Some(name) = &prompts.default_name {
        if !prompts.named.contains_key(name) {
            return Err(Error::file(
                &path,
                format!("default_prompt_name {name:?} is not one of its prompts"),
            ));
        }
    }
    Ok(prompts)
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
    let mut pooled = Tensor::cat(&parts, 0)?;
    if let Some(d) = settings.dimensions {
        pooled = pooled.narrow(0, 0, d)?;
    }
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
