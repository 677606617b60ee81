//! Writing trained models as Hugging Face checkpoint folders that `transformers`
//! loads: `config.json`, `model.safetensors` under HF's tensor names, and the
//! tokenizer files. Every file is written atomically (a temporary file in the same
//! folder, then a rename), so a killed run never leaves a half-written file.

use crate::heads::{HeadKind, Labels, ProblemType};
use crate::model::Model;
use crate::models::Family;
use crate::{Error, Result};
use candle_core::Tensor;
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

/// Canonical-name prefixes of the sequence-classification heads of all families
/// (BERT's and ALBERT's poolers are part of the base model, so not here).
pub const SEQUENCE_HEAD_PREFIXES: &[&str] = &[
    "classifier.",
    "pre_classifier.",
    "sequence_summary.",
    "logits_proj.",
];

/// Canonical-name prefixes of the pretraining heads of all families (masked LM,
/// NSP under `cls.`, SOP, XLNet's LM): saved without the base prefix, and dropped
/// when a fine-tuned classifier is saved.
pub const PRETRAINING_HEAD_PREFIXES: &[&str] = &[
    "cls.",
    "lm_head.",
    "vocab_transform.",
    "vocab_layer_norm.",
    "vocab_projector.",
    "predictions.",
    "lm_loss.",
    "sop_classifier.",
];

/// HF's name for a canonical tensor name: head tensors (those starting with one of
/// `head_prefixes`) stay as they are, everything else is the base model and gets the
/// family's prefix (`bert.`, `roberta.`, `distilbert.`, `albert.`, `transformer.`).
pub fn hf_name(family: Family, canonical: &str, head_prefixes: &[&str]) -> String {
    if head_prefixes.iter().any(|p| canonical.starts_with(p)) {
        canonical.to_string()
    } else {
        format!("{}{canonical}", family.weight_prefix())
    }
}

pub use crate::io::write_atomic;

/// Writes `tensors` as a safetensors file, atomically.
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let contiguous = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<HashMap<_, _>>>()?;
    crate::io::replace_file(path, |tmp| {
        candle_core::safetensors::save(&contiguous, tmp)
            .map_err(|e| Error::file(path, crate::error::first_line(&e.to_string())))
    })
}

/// Variables that exist only while training (a distillation's learned projection):
/// kept in a run's resume state, never written into a model.
pub const TRAINING_ONLY_PREFIX: &str = "training_only.";

/// Every variable of a VarMap by name (detached copies of the current values).
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    data.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect()
}

/// The variables of a VarMap that belong in the model it trains: all but the
/// training-only ones.
pub fn model_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let mut tensors = varmap_tensors(varmap);
    tensors.retain(|name, _| !name.starts_with(TRAINING_ONLY_PREFIX));
    tensors
}

/// Saves a fine-tuned sequence classifier to `dir` (created if needed): the base
/// model's tensors with the family prefix, the head's without, masked-LM head tensors
/// dropped; `config.json` with `architectures`, `id2label`, `label2id`, `num_labels`
/// and `problem_type`; and the tokenizer files.
pub fn save_sequence_classifier(
    dir: &Path,
    model: &Model,
    varmap: &VarMap,
    labels: &Labels,
) -> Result<()> {
    save_classifier(
        dir,
        model,
        varmap,
        &labels.names,
        HeadKind::SequenceClassification,
        Some(labels.problem_type),
    )
}

/// Writes a fine-tuned classifier (`kind`: a sequence or a token classifier) as
/// transformers' `*For{Sequence,Token}Classification` folder, labels in `id2label`;
/// a sequence classifier's `problem_type` says how its logits become scores.
pub fn save_classifier(
    dir: &Path,
    model: &Model,
    varmap: &VarMap,
    labels: &[String],
    kind: HeadKind,
    problem_type: Option<ProblemType>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let family = model.family();
    let tensors: HashMap<String, Tensor> = model_tensors(varmap)
        .into_iter()
        .filter(|(n, _)| !PRETRAINING_HEAD_PREFIXES.iter().any(|p| n.starts_with(p)))
        .map(|(n, t)| (hf_name(family, &n, SEQUENCE_HEAD_PREFIXES), t))
        .collect();
    save_tensors(&tensors, &dir.join("model.safetensors"))?;

    let mut config = model.checkpoint.config.clone();
    if let Some(obj) = config.as_object_mut() {
        let arch = format!("{}{}", class_prefix(family), kind.class_suffix());
        obj.insert("architectures".into(), serde_json::json!([arch]));
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        obj.insert("id2label".into(), id2label.into());
        obj.insert("label2id".into(), label2id.into());
        obj.insert("num_labels".into(), labels.len().into());
        match problem_type {
            Some(p) => obj.insert("problem_type".into(), p.config_name().into()),
            None => obj.remove("problem_type"),
        };
    }
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    write_atomic(&dir.join(crate::checkpoint::CONFIG_FILE), text.as_bytes())?;
    save_tokenizer_files(&model.checkpoint.dir, dir, model)
}

/// The class-name stem transformers uses for a family.
pub fn class_prefix(family: Family) -> &'static str {
    match family {
        Family::Bert => "Bert",
        Family::Roberta => "Roberta",
        Family::DistilBert => "DistilBert",
        Family::Albert => "Albert",
        Family::XLNet => "XLNet",
    }
}

const TOKENIZER_SIDE_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// Copies `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` from
/// the source model folder; the last two are written fresh when the source lacks them.
pub fn save_tokenizer_files(source: &Path, dir: &Path, model: &Model) -> Result<()> {
    let tok_path = source.join(crate::tokenize::TOKENIZER_FILE);
    let tok_bytes = std::fs::read(&tok_path).map_err(|e| Error::file(&tok_path, e))?;
    if TOKENIZER_SIDE_FILES
        .iter()
        .any(|f| !source.join(f).exists())
    {
        let tok =
            tokenizers::Tokenizer::from_bytes(&tok_bytes).map_err(|e| Error::file(&tok_path, e))?;
        let max_len = model.config.max_input_len().unwrap_or(1_000_000);
        crate::hf_tokenizer::save_tokenizer(&tok, model.family(), dir, max_len)?;
    }
    write_atomic(&dir.join(crate::tokenize::TOKENIZER_FILE), &tok_bytes)?;
    for f in TOKENIZER_SIDE_FILES {
        let src = source.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(|e| Error::file(&src, e))?;
            write_atomic(&dir.join(f), &bytes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_prefix_the_base_model_only() {
        let h = SEQUENCE_HEAD_PREFIXES;
        assert_eq!(
            hf_name(Family::Bert, "pooler.dense.weight", h),
            "bert.pooler.dense.weight"
        );
        assert_eq!(
            hf_name(Family::Bert, "classifier.bias", h),
            "classifier.bias"
        );
        assert_eq!(
            hf_name(Family::Albert, "pooler.bias", h),
            "albert.pooler.bias"
        );
        assert_eq!(
            hf_name(Family::DistilBert, "pre_classifier.weight", h),
            "pre_classifier.weight"
        );
        assert_eq!(
            hf_name(Family::DistilBert, "transformer.layer.0.ffn.lin1.weight", h),
            "distilbert.transformer.layer.0.ffn.lin1.weight"
        );
        assert_eq!(
            hf_name(Family::XLNet, "layer.0.rel_attn.q", h),
            "transformer.layer.0.rel_attn.q"
        );
        assert_eq!(
            hf_name(Family::Roberta, "classifier.out_proj.weight", h),
            "classifier.out_proj.weight"
        );
    }
}
