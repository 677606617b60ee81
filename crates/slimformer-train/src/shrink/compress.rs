//! ALBERT-style compression of a trained BERT: factorized embeddings (V×E + E×H) by
//! truncated SVD, and cross-layer parameter sharing — then distillation from the
//! original recovers what the approximation lost.
//!
//! # Factorized embeddings
//!
//! BERT computes `LN_H(w + p + t)`; ALBERT computes `map(LN_E(w' + p' + t'))` with
//! `map` an E→H linear layer. Every table is centred (LayerNorm removes each row's
//! mean anyway) and projected on the top-E eigenvectors of the tables' joint Gram
//! matrix (the right singular vectors of the stacked tables). The basis is then
//! rotated (a Householder reflection) so that the mean over E coordinates that LN_E
//! subtracts is the coefficient of the weakest kept direction: at E = H that
//! direction is the all-ones vector, whose coefficient is 0 after centring, and the
//! conversion is exact; below H it costs one more dimension. `map` carries BERT's
//! LayerNorm scale and shift and the √(H/E) ratio between the two normalizations.
//! Below H, that start is then fitted to BERT's embedding output ([`super::embedding_fit`]).
//!
//! # Sharing
//!
//! `all` ties whole layers: G groups of consecutive layers each run one shared layer
//! (HF's `num_hidden_groups`), initialised from the mean of the layers it replaces
//! (or the first). `none` keeps every layer (G = L). `attention` and `ffn` share only
//! that block, which HF's ALBERT cannot express: slimformer stores them as an ALBERT
//! checkpoint with `"slimformer_shared": "attention"|"ffn"` in config.json, the shared
//! block under `albert_layer_groups.{g}.albert_layers.0` and each layer's own block
//! under `encoder.slimformer_layers.{l}` — a slimformer extension transformers
//! cannot load.

use super::embedding_fit::{
    fit, random_pair_error, AlbertEmbeddings, BertEmbeddings, EmbeddingFitOptions,
    EmbeddingFitReport,
};
use super::linalg::symmetric_eigen;
use super::student::StudentCheckpoint;
use candle_core::{DType, Device, Tensor};
use slimformer::checkpoint::Checkpoint;
use slimformer::models::Family;
use slimformer::{Error, Result};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    All,
    Attention,
    Ffn,
    None,
}

impl std::str::FromStr for Sharing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "all" => Sharing::All,
            "attention" => Sharing::Attention,
            "ffn" => Sharing::Ffn,
            "none" => Sharing::None,
            o => {
                return Err(format!(
                    "unknown sharing {o:?}: expected all, attention, ffn or none"
                ))
            }
        })
    }
}

/// How a shared layer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareInit {
    Mean,
    First,
}

impl std::str::FromStr for ShareInit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(ShareInit::Mean),
            "first" => Ok(ShareInit::First),
            o => Err(format!(
                "unknown initialization {o:?} of shared layers: expected mean or first"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompressOptions {
    /// E (default: H, an exact conversion).
    pub embedding_size: Option<usize>,
    pub sharing: Sharing,
    /// G (default: 1 when sharing, L for `none`).
    pub groups: Option<usize>,
    pub share_init: ShareInit,
    /// Fit the factorized embeddings to BERT's embedding output (E < H only).
    pub embedding_fit: Option<EmbeddingFitOptions>,
}

/// What compression did and cost before any recovery.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressReport {
    pub embedding_size: usize,
    pub hidden_size: usize,
    pub sharing: Sharing,
    pub groups: usize,
    pub layers: usize,
    pub share_init: ShareInit,
    /// ‖W − W V Vᵀ‖ / ‖W‖ of the centred word embeddings.
    pub word_embedding_svd_error: f64,
    /// Relative error of the embedding output (after the E→H map) against BERT's,
    /// over 4096 random (token, position) pairs with token type 0, as saved.
    pub embedding_output_error: f64,
    /// The fit of the factorized embeddings, when there was one.
    pub embedding_fit: Option<EmbeddingFitReport>,
    /// Whether transformers can load the result (`attention`/`ffn` sharing: no).
    pub transformers_loadable: bool,
}

/// BERT's names in a layer → ALBERT's; the first five are the attention block.
const LAYER_NAMES: [(&str, &str); 8] = [
    ("attention.self.query", "attention.query"),
    ("attention.self.key", "attention.key"),
    ("attention.self.value", "attention.value"),
    ("attention.output.dense", "attention.dense"),
    ("attention.output.LayerNorm", "attention.LayerNorm"),
    ("intermediate.dense", "ffn"),
    ("output.dense", "ffn_output"),
    ("output.LayerNorm", "full_layer_layer_norm"),
];
const ATTENTION_PARTS: usize = 5;

fn f32_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

fn centred(rows: Vec<Vec<f32>>) -> Vec<Vec<f64>> {
    rows.into_iter()
        .map(|r| {
            let mean = r.iter().map(|&v| v as f64).sum::<f64>() / r.len().max(1) as f64;
            r.iter().map(|&v| v as f64 - mean).collect()
        })
        .collect()
}

/// The factorized embeddings of one model.
struct Factorized {
    /// H×E, row-major: the rotated basis V'.
    basis: Vec<f64>,
    e: usize,
    h: usize,
    svd_error: f64,
}

impl Factorized {
    fn new(tables: &[&Vec<Vec<f64>>], e: usize, h: usize) -> Self {
        let mut gram = vec![0f64; h * h];
        for table in tables {
            for row in table.iter() {
                for i in 0..h {
                    let ri = row[i];
                    if ri == 0.0 {
                        continue;
                    }
                    let g = &mut gram[i * h..(i + 1) * h];
                    for (j, gj) in g.iter_mut().enumerate() {
                        *gj += ri * row[j];
                    }
                }
            }
        }
        let (values, vectors) = symmetric_eigen(gram, h);
        // Error of the word embeddings alone in the top-E basis.
        let words = tables[0];
        let project = |row: &[f64]| -> f64 {
            let kept: f64 = (0..e)
                .map(|k| {
                    let c: f64 = (0..h).map(|i| row[i] * vectors[i * h + k]).sum();
                    c * c
                })
                .sum();
            let total: f64 = row.iter().map(|v| v * v).sum();
            (total - kept).max(0.0)
        };
        let total: f64 = words.iter().flat_map(|r| r.iter()).map(|v| v * v).sum();
        let lost: f64 = words.iter().map(|r| project(r)).sum();
        let _ = values;
        // Householder R maps 1/√E to e_E: V' = V_E R.
        let mut u: Vec<f64> = vec![1.0 / (e as f64).sqrt(); e];
        u[e - 1] -= 1.0;
        let uu: f64 = u.iter().map(|x| x * x).sum();
        let mut basis = vec![0f64; h * e];
        for i in 0..h {
            let row: Vec<f64> = (0..e).map(|k| vectors[i * h + k]).collect();
            let dot: f64 = row.iter().zip(&u).map(|(a, b)| a * b).sum();
            for k in 0..e {
                basis[i * e + k] = if uu > 0.0 {
                    row[k] - 2.0 * dot * u[k] / uu
                } else {
                    row[k]
                };
            }
        }
        Factorized {
            basis,
            e,
            h,
            svd_error: (lost / total.max(f64::MIN_POSITIVE)).sqrt(),
        }
    }

    /// rows [n, H] (centred) → [n, E].
    fn project(&self, rows: &[Vec<f64>]) -> Result<Tensor> {
        let mut out = Vec::with_capacity(rows.len() * self.e);
        for row in rows {
            for k in 0..self.e {
                out.push(
                    (0..self.h)
                        .map(|i| row[i] * self.basis[i * self.e + k])
                        .sum::<f64>() as f32,
                );
            }
        }
        Ok(Tensor::from_vec(out, (rows.len(), self.e), &Device::Cpu)?)
    }
}

fn vec1(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Compresses a BERT checkpoint into an ALBERT-layout student.
pub fn compress(
    teacher: &Checkpoint,
    opts: &CompressOptions,
) -> Result<(StudentCheckpoint, CompressReport)> {
    let shape = CompressedShape::of(teacher, opts)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let embeddings = factorize_embeddings(teacher, &shape, opts, &mut tensors)?;
    share_layers(teacher, &shape, opts, &mut tensors)?;
    carry_heads(teacher, &mut tensors)?;
    let partial = matches!(opts.sharing, Sharing::Attention | Sharing::Ffn);
    let config = albert_config(teacher, &shape, &embeddings, opts.sharing, &tensors);
    let report = CompressReport {
        embedding_size: shape.e,
        hidden_size: shape.h,
        sharing: opts.sharing,
        groups: shape.groups,
        layers: shape.layers,
        share_init: opts.share_init,
        word_embedding_svd_error: embeddings.svd_error,
        embedding_output_error: embeddings.output_error,
        embedding_fit: embeddings.fit,
        transformers_loadable: !partial,
    };
    Ok((
        StudentCheckpoint {
            family: Family::Albert,
            config,
            tensors,
        },
        report,
    ))
}

/// The compressed model's sizes, checked against the teacher's.
struct CompressedShape {
    /// Hidden size (the teacher's) and embedding size (E ≤ H).
    h: usize,
    e: usize,
    layers: usize,
    groups: usize,
    eps: f64,
}

impl CompressedShape {
    fn of(teacher: &Checkpoint, opts: &CompressOptions) -> Result<Self> {
        if teacher.family != Family::Bert {
            return Err(Error::Input(format!(
                "compress takes a BERT checkpoint (all-MiniLM, bert-base...), not {}",
                teacher.family
            )));
        }
        let cfg = &teacher.config;
        let config_path = teacher.dir.join(slimformer::checkpoint::CONFIG_FILE);
        let need = |k: &str| {
            config_usize(cfg, k).ok_or_else(|| Error::file(&config_path, format!("no {k:?} field")))
        };
        let h = need("hidden_size")?;
        let layers = need("num_hidden_layers")?;
        let e = opts.embedding_size.unwrap_or(h);
        if e == 0 || e > h {
            return Err(Error::bad_value(
                "embedding_size",
                e,
                format!("must be between 1 and the hidden size {h}"),
            ));
        }
        let groups = match (opts.sharing, opts.groups) {
            (Sharing::None, Some(g)) if g != layers => {
                return Err(Error::bad_value(
                    "groups",
                    g,
                    format!("without sharing: nothing is shared, so there are {layers} groups"),
                ))
            }
            (Sharing::None, _) => layers,
            (_, Some(g)) => g,
            (_, None) => 1,
        };
        if groups == 0 || !layers.is_multiple_of(groups) {
            return Err(Error::bad_value(
                "groups",
                groups,
                format!("must divide the teacher's {layers} layers"),
            ));
        }
        let eps = cfg
            .get("layer_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-12);
        Ok(Self {
            h,
            e,
            layers,
            groups,
            eps,
        })
    }
}

fn config_usize(cfg: &serde_json::Value, key: &str) -> Option<usize> {
    cfg.get(key).and_then(|v| v.as_u64()).map(|v| v as usize)
}

fn teacher_tensor<'a>(teacher: &'a Checkpoint, name: &str) -> Result<&'a Tensor> {
    teacher
        .tensors
        .get(name)
        .ok_or_else(|| Error::file(teacher.weights_path(), format!("no tensor {name:?}")))
}

/// What factorizing the embeddings measured, and the tables' sizes.
struct FactorizedEmbeddings {
    svd_error: f64,
    output_error: f64,
    fit: Option<EmbeddingFitReport>,
    positions: usize,
    types: usize,
}

/// BERT's H-wide embedding tables as ALBERT's E-wide ones and the E→H mapping
/// (SVD of the centred tables, LayerNorm's scale folded into the mapping), fitted
/// to BERT's embedding output if asked; into `tensors`.
fn factorize_embeddings(
    teacher: &Checkpoint,
    shape: &CompressedShape,
    opts: &CompressOptions,
    tensors: &mut HashMap<String, Tensor>,
) -> Result<FactorizedEmbeddings> {
    let CompressedShape { h, e, eps, .. } = *shape;
    let tensor = |n: &str| teacher_tensor(teacher, n);
    let type_table = teacher
        .tensors
        .get("embeddings.token_type_embeddings.weight");
    let words = centred(f32_rows(tensor("embeddings.word_embeddings.weight")?)?);
    let positions = centred(f32_rows(tensor("embeddings.position_embeddings.weight")?)?);
    let types = match type_table {
        Some(t) => centred(f32_rows(t)?),
        None => vec![vec![0.0; h]],
    };
    let factor = Factorized::new(&[&words, &positions, &types], e, h);
    let gamma = vec1(tensor("embeddings.LayerNorm.weight")?)?;
    let beta = vec1(tensor("embeddings.LayerNorm.bias")?)?;
    let ratio = (h as f64 / e as f64).sqrt();
    let mut map_w = vec![0f32; h * e];
    for i in 0..h {
        for k in 0..e {
            map_w[i * e + k] = (ratio * gamma[i] * factor.basis[i * e + k]) as f32;
        }
    }
    let dev = &Device::Cpu;
    let f32_of = |n: &str| -> Result<Tensor> { Ok(tensor(n)?.to_dtype(DType::F32)?) };
    let bert = BertEmbeddings {
        words: f32_of("embeddings.word_embeddings.weight")?,
        positions: f32_of("embeddings.position_embeddings.weight")?,
        type0: match type_table {
            Some(t) => t.to_dtype(DType::F32)?.get(0)?,
            None => Tensor::zeros(h, DType::F32, dev)?,
        },
        gamma: f32_of("embeddings.LayerNorm.weight")?,
        beta: f32_of("embeddings.LayerNorm.bias")?,
        eps,
    };
    let mut albert = AlbertEmbeddings {
        words: factor.project(&words)?,
        positions: factor.project(&positions)?,
        types: factor.project(&types)?,
        map_weight: Tensor::from_vec(map_w, (h, e), dev)?,
        map_bias: Tensor::from_vec(beta.iter().map(|&v| v as f32).collect::<Vec<_>>(), h, dev)?,
        eps,
    };
    let mut fit_report = None;
    if let (Some(fit_opts), true) = (&opts.embedding_fit, e < h) {
        let (fitted, report) = fit(&bert, &albert, fit_opts)?;
        albert = fitted;
        fit_report = Some(report);
    }
    let output_error = random_pair_error(&bert, &albert)?;
    let AlbertEmbeddings {
        words: word_e,
        positions: pos_e,
        types: type_e,
        map_weight,
        map_bias,
        ..
    } = albert;
    tensors.insert("embeddings.word_embeddings.weight".into(), word_e);
    tensors.insert("embeddings.position_embeddings.weight".into(), pos_e);
    tensors.insert("embeddings.token_type_embeddings.weight".into(), type_e);
    tensors.insert(
        "embeddings.LayerNorm.weight".into(),
        Tensor::ones(e, DType::F32, dev)?,
    );
    tensors.insert(
        "embeddings.LayerNorm.bias".into(),
        Tensor::zeros(e, DType::F32, dev)?,
    );
    tensors.insert(
        "encoder.embedding_hidden_mapping_in.weight".into(),
        map_weight,
    );
    tensors.insert("encoder.embedding_hidden_mapping_in.bias".into(), map_bias);
    Ok(FactorizedEmbeddings {
        svd_error: factor.svd_error,
        output_error,
        fit: fit_report,
        positions: positions.len(),
        types: types.len(),
    })
}

/// The teacher's layers as ALBERT's layer groups: each shared block of a group is
/// its members' mean (or its first member), the blocks not shared stay per layer.
fn share_layers(
    teacher: &Checkpoint,
    shape: &CompressedShape,
    opts: &CompressOptions,
    tensors: &mut HashMap<String, Tensor>,
) -> Result<()> {
    let CompressedShape { layers, groups, .. } = *shape;
    let per_group = layers / groups;
    for (part, (bert, albert)) in LAYER_NAMES.iter().enumerate() {
        let shared = match opts.sharing {
            Sharing::All => true,
            Sharing::None => true,
            Sharing::Attention => part < ATTENTION_PARTS,
            Sharing::Ffn => part >= ATTENTION_PARTS,
        };
        for suffix in ["weight", "bias"] {
            let of_layer = |l: usize| -> Result<Tensor> {
                let name = format!("encoder.layer.{l}.{bert}.{suffix}");
                Ok(teacher_tensor(teacher, &name)?.to_dtype(DType::F32)?)
            };
            if !shared {
                for l in 0..layers {
                    tensors.insert(
                        format!("encoder.slimformer_layers.{l}.{albert}.{suffix}"),
                        of_layer(l)?,
                    );
                }
                continue;
            }
            for g in 0..groups {
                let members: Vec<usize> = (g * per_group..(g + 1) * per_group).collect();
                let value = match opts.share_init {
                    ShareInit::First => of_layer(members[0])?,
                    ShareInit::Mean => {
                        let stacked = members
                            .iter()
                            .map(|&l| of_layer(l))
                            .collect::<Result<Vec<_>>>()?;
                        Tensor::stack(&stacked, 0)?.mean(0)?
                    }
                };
                tensors.insert(
                    format!("encoder.albert_layer_groups.{g}.albert_layers.0.{albert}.{suffix}"),
                    value,
                );
            }
        }
    }
    Ok(())
}

/// BERT's pooler is ALBERT's; the classifier carries over. The masked-LM head
/// does not (ALBERT's lives in E-space).
fn carry_heads(teacher: &Checkpoint, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    for (from, to) in [("pooler.dense.", "pooler."), ("classifier.", "classifier.")] {
        for (name, t) in &teacher.tensors {
            if let Some(rest) = name.strip_prefix(from) {
                tensors.insert(format!("{to}{rest}"), t.to_dtype(DType::F32)?);
            }
        }
    }
    if teacher
        .tensors
        .keys()
        .any(|n| n.starts_with("cls.predictions."))
    {
        tracing::warn!(
            "the teacher's masked-LM head is not carried over (ALBERT's lives in E-space)"
        );
    }
    Ok(())
}

/// The student's `config.json`: ALBERT's fields from the teacher's, its labels,
/// and a note where the sharing is one transformers cannot load.
fn albert_config(
    teacher: &Checkpoint,
    shape: &CompressedShape,
    embeddings: &FactorizedEmbeddings,
    sharing: Sharing,
    tensors: &HashMap<String, Tensor>,
) -> serde_json::Value {
    let cfg = &teacher.config;
    let get = |k: &str| config_usize(cfg, k);
    let mut config = serde_json::json!({
        "model_type": "albert",
        "vocab_size": get("vocab_size"),
        "embedding_size": shape.e,
        "hidden_size": shape.h,
        "num_hidden_layers": shape.layers,
        "num_hidden_groups": shape.groups,
        "inner_group_num": 1,
        "num_attention_heads": get("num_attention_heads"),
        "intermediate_size": get("intermediate_size"),
        "hidden_act": cfg.get("hidden_act").cloned().unwrap_or("gelu".into()),
        "hidden_dropout_prob": cfg.get("hidden_dropout_prob").cloned().unwrap_or(0.1.into()),
        "attention_probs_dropout_prob": cfg.get("attention_probs_dropout_prob").cloned().unwrap_or(0.1.into()),
        "classifier_dropout_prob": cfg.get("classifier_dropout").filter(|v| !v.is_null()).cloned()
            .or_else(|| cfg.get("hidden_dropout_prob").cloned()).unwrap_or(0.1.into()),
        "max_position_embeddings": embeddings.positions,
        "type_vocab_size": embeddings.types,
        "initializer_range": cfg.get("initializer_range").cloned().unwrap_or(0.02.into()),
        "layer_norm_eps": shape.eps,
        "pad_token_id": cfg.get("pad_token_id").cloned().unwrap_or(0.into()),
        "position_embedding_type": "absolute",
    });
    for key in ["id2label", "label2id", "num_labels", "problem_type"] {
        if let Some(v) = cfg.get(key) {
            config[key] = v.clone();
        }
    }
    if matches!(sharing, Sharing::Attention | Sharing::Ffn) {
        config["slimformer_shared"] = serde_json::to_value(sharing).expect("json");
        config["slimformer_note"] = "only one block of each layer is shared: a slimformer \
            extension of ALBERT that transformers cannot load"
            .into();
    }
    config["architectures"] =
        serde_json::json!([super::student::architecture(Family::Albert, tensors)]);
    config
}
