//! Students made from a teacher's own weights (DistilBERT's initialisation): K of
//! its layers, evenly spaced or named, plus its embeddings and heads. A BERT teacher
//! gives a DistilBERT student (no token types: the type-0 embedding is folded into
//! the positions; no pooler: `pre_classifier` starts from it); RoBERTa and
//! DistilBERT teachers give students of their own family.

use candle_core::Tensor;
use slimformer::checkpoint::Checkpoint;
use slimformer::models::Family;
use slimformer::save::{class_prefix, save_tensors, write_atomic};
use slimformer::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// A model to write: its family, `config.json`, and tensors by canonical name.
pub struct StudentCheckpoint {
    pub family: Family,
    pub config: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
}

/// `k` of `n` layers, evenly spaced, first and last included (ties round to even,
/// which gives DistilBERT's 0,2,4,7,9,11 for 6 of 12 and 0,2,5 for 3 of 6).
pub fn evenly_spaced_layers(n: usize, k: usize) -> Result<Vec<usize>> {
    if k == 0 || k > n {
        return Err(Error::bad_value(
            "student_layers",
            k,
            format!("the teacher has {n} layers, so choose 1 to {n}"),
        ));
    }
    if k == 1 {
        return Ok(vec![n - 1]);
    }
    Ok((0..k)
        .map(|i| (i as f64 * (n - 1) as f64 / (k - 1) as f64).round_ties_even() as usize)
        .collect())
}

/// Checks a list of teacher layers given by hand: in range, no repeats.
pub fn check_layers(layers: &[usize], n: usize) -> Result<()> {
    if layers.is_empty() {
        return Err(Error::setting("teacher_layers", "no layer named"));
    }
    if let Some(bad) = layers.iter().find(|&&l| l >= n) {
        return Err(Error::setting(
            "teacher_layers",
            format!(
                "layer {bad} does not exist (the teacher has layers 0 to {})",
                n - 1
            ),
        ));
    }
    let mut seen = layers.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != layers.len() {
        return Err(Error::setting("teacher_layers", "a layer is named twice"));
    }
    Ok(())
}

/// The number of transformer layers of a teacher checkpoint.
pub fn layer_count(ckpt: &Checkpoint) -> Result<usize> {
    let key = match ckpt.family {
        Family::DistilBert => "n_layers",
        Family::XLNet => "n_layer",
        _ => "num_hidden_layers",
    };
    ckpt.config
        .get(key)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .ok_or_else(|| Error::file(ckpt.dir.join("config.json"), format!("no {key:?} field")))
}

fn layer_prefix(family: Family) -> Option<&'static str> {
    match family {
        Family::Bert | Family::Roberta => Some("encoder.layer."),
        Family::DistilBert => Some("transformer.layer."),
        _ => None,
    }
}

/// BERT's names inside a layer → DistilBERT's.
const BERT_TO_DISTILBERT_LAYER: [(&str, &str); 8] = [
    ("attention.self.query.", "attention.q_lin."),
    ("attention.self.key.", "attention.k_lin."),
    ("attention.self.value.", "attention.v_lin."),
    ("attention.output.dense.", "attention.out_lin."),
    ("attention.output.LayerNorm.", "sa_layer_norm."),
    ("intermediate.dense.", "ffn.lin1."),
    ("output.dense.", "ffn.lin2."),
    ("output.LayerNorm.", "output_layer_norm."),
];

/// BERT's names outside the layers → DistilBERT's (`None`: dropped).
fn bert_to_distilbert_other(name: &str) -> Option<String> {
    const MAP: [(&str, &str); 7] = [
        ("embeddings.word_embeddings.", "embeddings.word_embeddings."),
        ("embeddings.LayerNorm.", "embeddings.LayerNorm."),
        ("pooler.dense.", "pre_classifier."),
        ("classifier.", "classifier."),
        ("cls.predictions.transform.dense.", "vocab_transform."),
        ("cls.predictions.transform.LayerNorm.", "vocab_layer_norm."),
        ("cls.predictions.decoder.", "vocab_projector."),
    ];
    if name == "cls.predictions.bias" {
        return Some("vocab_projector.bias".into());
    }
    MAP.iter()
        .find_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
}

/// The student made of `layers` of the teacher (in that order), its embeddings and
/// heads; see the module docs for the family it becomes.
pub fn from_teacher_layers(teacher: &Checkpoint, layers: &[usize]) -> Result<StudentCheckpoint> {
    let n = layer_count(teacher)?;
    check_layers(layers, n)?;
    let prefix = layer_prefix(teacher.family).ok_or_else(|| {
        Error::setting(
            "student_layers",
            format!(
                "a student made of teacher layers needs a BERT, RoBERTa or DistilBERT \
                 teacher, not {}: give a student config for a student of any shape",
                teacher.family
            ),
        )
    })?;
    let to_distilbert = teacher.family == Family::Bert;
    let mut tensors = HashMap::new();
    for (name, tensor) in &teacher.tensors {
        let tensor = tensor.to_dtype(candle_core::DType::F32)?;
        if let Some(rest) = name.strip_prefix(prefix) {
            let (index, inner) = rest.split_once('.').unwrap_or((rest, ""));
            let Ok(index) = index.parse::<usize>() else {
                continue;
            };
            let Some(slot) = layers.iter().position(|&l| l == index) else {
                continue;
            };
            let inner = if to_distilbert {
                match BERT_TO_DISTILBERT_LAYER
                    .iter()
                    .find_map(|(f, t)| inner.strip_prefix(f).map(|r| format!("{t}{r}")))
                {
                    Some(renamed) => renamed,
                    None => continue,
                }
            } else {
                inner.to_string()
            };
            let out_prefix = if to_distilbert {
                "transformer.layer."
            } else {
                prefix
            };
            tensors.insert(format!("{out_prefix}{slot}.{inner}"), tensor);
        } else if to_distilbert {
            if let Some(renamed) = bert_to_distilbert_other(name) {
                tensors.insert(renamed, tensor);
            }
        } else {
            tensors.insert(name.clone(), tensor);
        }
    }
    let mut config = teacher.config.clone();
    let family = if to_distilbert {
        fold_token_types(teacher, &mut tensors)?;
        config = distilbert_config(&teacher.config, layers.len());
        Family::DistilBert
    } else {
        let key = if teacher.family == Family::DistilBert {
            "n_layers"
        } else {
            "num_hidden_layers"
        };
        config[key] = layers.len().into();
        teacher.family
    };
    config["architectures"] = serde_json::json!([architecture(family, &tensors)]);
    Ok(StudentCheckpoint {
        family,
        config,
        tensors,
    })
}

/// DistilBERT has no token types: every token gets the type-0 embedding, so it is
/// added to every position embedding (exact for single texts).
fn fold_token_types(teacher: &Checkpoint, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    let get = |n: &str| {
        teacher
            .tensors
            .get(n)
            .ok_or_else(|| Error::file(teacher.weights_path(), format!("no tensor {n:?}")))
    };
    let positions =
        get("embeddings.position_embeddings.weight")?.to_dtype(candle_core::DType::F32)?;
    let folded = match teacher
        .tensors
        .get("embeddings.token_type_embeddings.weight")
    {
        Some(types) => {
            positions.broadcast_add(&types.to_dtype(candle_core::DType::F32)?.narrow(0, 0, 1)?)?
        }
        None => positions,
    };
    tensors.insert("embeddings.position_embeddings.weight".into(), folded);
    Ok(())
}

/// A DistilBERT `config.json` with a BERT config's sizes and labels.
fn distilbert_config(bert: &serde_json::Value, layers: usize) -> serde_json::Value {
    let get = |k: &str| bert.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let eps = bert
        .get("layer_norm_eps")
        .and_then(|v| v.as_f64())
        .unwrap_or(1e-12);
    if (eps - 1e-12).abs() > 1e-15 {
        tracing::warn!(
            "the teacher's layer_norm_eps is {eps}; DistilBERT always uses 1e-12, \
             so the student's outputs differ slightly at the start"
        );
    }
    let dropout = get("hidden_dropout_prob");
    let mut config = serde_json::json!({
        "model_type": "distilbert",
        "vocab_size": get("vocab_size"),
        "dim": get("hidden_size"),
        "n_layers": layers,
        "n_heads": get("num_attention_heads"),
        "hidden_dim": get("intermediate_size"),
        "activation": bert.get("hidden_act").cloned().unwrap_or("gelu".into()),
        "max_position_embeddings": get("max_position_embeddings"),
        "dropout": dropout,
        "attention_dropout": get("attention_probs_dropout_prob"),
        "seq_classif_dropout": bert.get("classifier_dropout").filter(|v| !v.is_null()).cloned().unwrap_or(dropout),
        "qa_dropout": 0.1,
        "initializer_range": bert.get("initializer_range").cloned().unwrap_or(0.02.into()),
        "pad_token_id": bert.get("pad_token_id").cloned().unwrap_or(0.into()),
        "sinusoidal_pos_embds": false,
        "tie_weights_": true,
    });
    for key in [
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "torch_dtype",
    ] {
        if let Some(v) = bert.get(key) {
            config[key] = v.clone();
        }
    }
    config
}

/// The transformers class for the heads a checkpoint carries.
pub fn architecture(family: Family, tensors: &HashMap<String, Tensor>) -> String {
    let has = |p: &str| tensors.keys().any(|n| n.starts_with(p));
    let class = class_prefix(family);
    if has("classifier.") || has("logits_proj.") {
        format!("{class}ForSequenceClassification")
    } else if has("vocab_projector.")
        || has("lm_head.")
        || has("cls.predictions.")
        || has("predictions.")
    {
        format!("{class}ForMaskedLM")
    } else {
        format!("{class}Model")
    }
}

/// Files of a model folder that are neither its config nor its weights: the
/// tokenizer and sentence-transformers' pooling settings, copied to a student.
const SIDE_FILES: [&str; 12] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "added_tokens.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "README.md",
];
const SIDE_DIRS: [&str; 2] = ["1_Pooling", "2_Normalize"];

/// Copies the tokenizer and sentence-transformers files of `from` into `to`;
/// `drop_token_types` makes the tokenizer stop returning token types (DistilBERT).
/// `tokenizer_config.json` always names the tokenizer's class (that of `from`'s
/// family), since a student of another family (an ALBERT made from a BERT) would
/// otherwise get its own family's tokenizer class from transformers.
pub fn copy_side_files(from: &Path, to: &Path, drop_token_types: bool) -> Result<()> {
    for name in SIDE_FILES {
        let src = from.join(name);
        if !src.is_file() || name == "tokenizer_config.json" {
            continue;
        }
        let bytes = std::fs::read(&src).map_err(|e| Error::file(&src, e))?;
        write_atomic(&to.join(name), &bytes)?;
    }
    if from.join(slimformer::tokenize::TOKENIZER_FILE).is_file() {
        let bytes = tokenizer_config(from, drop_token_types)?;
        write_atomic(&to.join("tokenizer_config.json"), &bytes)?;
    }
    for dir in SIDE_DIRS {
        let src = from.join(dir);
        if !src.is_dir() {
            continue;
        }
        let dest = to.join(dir);
        std::fs::create_dir_all(&dest).map_err(|e| Error::file(&dest, e))?;
        for entry in std::fs::read_dir(&src).map_err(|e| Error::file(&src, e))? {
            let path = entry.map_err(|e| Error::file(&src, e))?.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
                write_atomic(&dest.join(path.file_name().expect("file")), &bytes)?;
            }
        }
    }
    Ok(())
}

/// `from`'s tokenizer_config.json (or a new one) with the tokenizer class named and,
/// for DistilBERT, no token types among the model inputs (or transformers'
/// `model(**tokenizer(text))` fails).
fn tokenizer_config(from: &Path, drop_token_types: bool) -> Result<Vec<u8>> {
    let path = from.join("tokenizer_config.json");
    let mut v: serde_json::Value = if path.is_file() {
        slimformer::checkpoint::read_json(&path)?
    } else {
        serde_json::json!({})
    };
    let source_family =
        slimformer::checkpoint::read_json(&from.join(slimformer::checkpoint::CONFIG_FILE))
            .ok()
            .and_then(|c| {
                c.get("model_type")?
                    .as_str()
                    .and_then(Family::from_model_type)
            });
    if let (Some(obj), Some(family)) = (v.as_object_mut(), source_family) {
        obj.entry("tokenizer_class")
            .or_insert_with(|| format!("{}Tokenizer", class_prefix(family)).into());
    }
    if let (Some(obj), true) = (v.as_object_mut(), drop_token_types) {
        obj.insert(
            "model_input_names".into(),
            serde_json::json!(["input_ids", "attention_mask"]),
        );
    }
    Ok((serde_json::to_string_pretty(&v).expect("json") + "\n").into_bytes())
}

/// Writes a checkpoint folder: `model.safetensors` under HF's names (the family's
/// base prefix on everything but the heads), `config.json`, and the side files of
/// `side_files_from`. Built in a temporary folder and renamed into place.
pub fn write_checkpoint(
    student: &StudentCheckpoint,
    dir: &Path,
    side_files_from: &Path,
) -> Result<()> {
    use slimformer::save::{hf_name, PRETRAINING_HEAD_PREFIXES, SEQUENCE_HEAD_PREFIXES};
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    let heads: Vec<&str> = SEQUENCE_HEAD_PREFIXES
        .iter()
        .chain(PRETRAINING_HEAD_PREFIXES)
        .copied()
        .collect();
    let named: HashMap<String, Tensor> = student
        .tensors
        .iter()
        .map(|(n, t)| (hf_name(student.family, n, &heads), t.clone()))
        .collect();
    save_tensors(&named, &tmp.join("model.safetensors"))?;
    let text = serde_json::to_string_pretty(&student.config).expect("json") + "\n";
    write_atomic(
        &tmp.join(slimformer::checkpoint::CONFIG_FILE),
        text.as_bytes(),
    )?;
    copy_side_files(side_files_from, &tmp, student.family == Family::DistilBert)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::file(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_layers_match_distilbert() {
        assert_eq!(
            evenly_spaced_layers(12, 6).unwrap(),
            vec![0, 2, 4, 7, 9, 11]
        );
        assert_eq!(evenly_spaced_layers(6, 3).unwrap(), vec![0, 2, 5]);
        assert_eq!(evenly_spaced_layers(6, 6).unwrap(), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(evenly_spaced_layers(6, 2).unwrap(), vec![0, 5]);
        assert!(evenly_spaced_layers(6, 7).is_err());
        assert!(evenly_spaced_layers(6, 0).is_err());
    }

    #[test]
    fn hand_picked_layers_are_checked() {
        assert!(check_layers(&[0, 2, 4], 6).is_ok());
        assert!(check_layers(&[0, 6], 6).is_err());
        assert!(check_layers(&[1, 1], 6).is_err());
        assert!(check_layers(&[], 6).is_err());
    }
}
