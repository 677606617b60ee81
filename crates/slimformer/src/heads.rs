//! Task heads on top of an encoder's last hidden state, loaded from the tensor
//! names of transformers' `*ForSequenceClassification`, `*ForTokenClassification`
//! and `*ForMaskedLM` models.

use crate::checkpoint::Checkpoint;
use crate::layers::{Activation, LayerNorm, Linear};
use crate::model::Model;
use crate::models::Family;
use crate::{Error, Result};
use candle_core::{DType, IndexOp, Module, Tensor};
use std::collections::BTreeMap;

/// Which head a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    SequenceClassification,
    TokenClassification,
    MaskedLm,
}

impl HeadKind {
    fn class_suffix(&self) -> &'static str {
        match self {
            HeadKind::SequenceClassification => "ForSequenceClassification",
            HeadKind::TokenClassification => "ForTokenClassification",
            HeadKind::MaskedLm => "ForMaskedLM",
        }
    }
}

/// How classification logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    SingleLabel,
    MultiLabel,
    Regression,
}

/// Which token's hidden state summarizes the sequence.
#[derive(Debug, Clone, Copy)]
enum SummaryToken {
    First,
    /// XLNet puts `<cls>` last and pads on the left.
    Last,
}

/// Labels and problem type read from `config.json`.
#[derive(Debug, Clone)]
pub struct Labels {
    pub names: Vec<String>,
    pub problem_type: ProblemType,
}

impl Labels {
    fn from_config(config: &serde_json::Value, num_labels: usize) -> Labels {
        let id2label: BTreeMap<usize, String> = config
            .get("id2label")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let names = (0..num_labels)
            .map(|i| id2label.get(&i).cloned().unwrap_or(format!("LABEL_{i}")))
            .collect();
        let problem_type = match config.get("problem_type").and_then(|p| p.as_str()) {
            Some("multi_label_classification") => ProblemType::MultiLabel,
            Some("regression") => ProblemType::Regression,
            Some(_) => ProblemType::SingleLabel,
            None if num_labels == 1 => ProblemType::Regression,
            None => ProblemType::SingleLabel,
        };
        Labels {
            names,
            problem_type,
        }
    }

    /// Turns logits [n, labels] into scores: softmax, sigmoid, or raw for regression.
    pub fn scores(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(match self.problem_type {
            ProblemType::SingleLabel => candle_nn::ops::softmax_last_dim(logits)?,
            ProblemType::MultiLabel => candle_nn::ops::sigmoid(logits)?,
            ProblemType::Regression => logits.clone(),
        })
    }
}

/// Loads `name.weight` / `name.bias` with the stored shape, checking the input width.
fn stored_linear(ckpt: &Checkpoint, name: &str, d_in: usize) -> Result<Linear> {
    let weight = stored(ckpt, &format!("{name}.weight"))?;
    let (d_out, stored_in) = weight.dims2()?;
    if stored_in != d_in {
        return Err(Error::file(
            ckpt.weights_path(),
            format!("tensor {name}.weight has shape [{d_out}, {stored_in}], expected [_, {d_in}]"),
        ));
    }
    let bias = stored(ckpt, &format!("{name}.bias"))?;
    if bias.dims() != [d_out] {
        return Err(Error::file(
            ckpt.weights_path(),
            format!(
                "tensor {name}.bias has shape {:?}, expected [{d_out}]",
                bias.dims()
            ),
        ));
    }
    Ok(Linear::new(weight, Some(bias)))
}

fn stored(ckpt: &Checkpoint, name: &str) -> Result<Tensor> {
    let tensor = ckpt.tensors.get(name).ok_or_else(|| {
        Error::file(
            ckpt.weights_path(),
            format!("no tensor {name:?} (needed by the head)"),
        )
    })?;
    Ok(tensor.to_dtype(DType::F32)?)
}

fn first_present<'a>(ckpt: &Checkpoint, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .copied()
        .find(|n| ckpt.tensors.contains_key(*n))
}

/// Checks that `architectures` (when present) agrees with the head asked for.
fn check_architecture(ckpt: &Checkpoint, kind: HeadKind) -> Result<()> {
    let Some(archs) = ckpt.config.get("architectures").and_then(|a| a.as_array()) else {
        return Ok(());
    };
    let archs: Vec<&str> = archs.iter().filter_map(|a| a.as_str()).collect();
    let matches = |a: &&str| {
        a.ends_with(kind.class_suffix())
            || (kind == HeadKind::MaskedLm && a.ends_with("ForPreTraining"))
    };
    if archs.is_empty() || archs.iter().any(matches) {
        return Ok(());
    }
    Err(Error::file(
        ckpt.dir.join(crate::checkpoint::CONFIG_FILE),
        format!(
            "the checkpoint is a {} and has no *{} head",
            archs.join(", "),
            kind.class_suffix()
        ),
    ))
}

/// Sequence classification: a summary token, a dense+activation "pooler", and a
/// linear classifier — under each family's own names.
pub struct SequenceClassifier {
    summary_token: SummaryToken,
    pooler: Linear,
    pooler_activation: Activation,
    classifier: Linear,
    pub labels: Labels,
}

impl SequenceClassifier {
    pub fn load(model: &Model) -> Result<Self> {
        let ckpt = &model.checkpoint;
        check_architecture(ckpt, HeadKind::SequenceClassification)?;
        let (pooler, activation, classifier, token) = match ckpt.family {
            Family::Bert => (
                "pooler.dense",
                Activation::Tanh,
                "classifier",
                SummaryToken::First,
            ),
            Family::Albert => (
                "pooler",
                Activation::Tanh,
                "classifier",
                SummaryToken::First,
            ),
            Family::Roberta => (
                "classifier.dense",
                Activation::Tanh,
                "classifier.out_proj",
                SummaryToken::First,
            ),
            Family::DistilBert => (
                "pre_classifier",
                Activation::Relu,
                "classifier",
                SummaryToken::First,
            ),
            Family::XLNet => {
                let token = match ckpt.config.get("summary_type").and_then(|s| s.as_str()) {
                    None | Some("last") => SummaryToken::Last,
                    Some("first") => SummaryToken::First,
                    Some(other) => {
                        return Err(Error::file(
                            ckpt.dir.join(crate::checkpoint::CONFIG_FILE),
                            format!(
                            "summary_type {other:?} is not supported (only \"last\" or \"first\")"
                        ),
                        ))
                    }
                };
                (
                    "sequence_summary.summary",
                    Activation::Tanh,
                    "logits_proj",
                    token,
                )
            }
        };
        let hidden = model.hidden_size();
        let classifier = stored_linear(ckpt, classifier, hidden)?;
        let num_labels = classifier.weight().dim(0)?;
        Ok(Self {
            summary_token: token,
            pooler: stored_linear(ckpt, pooler, hidden)?,
            pooler_activation: activation,
            classifier,
            labels: Labels::from_config(&ckpt.config, num_labels),
        })
    }

    /// Logits [batch, labels] from the last hidden state [batch, len, hidden].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let len = hidden.dim(1)?;
        let token = match self.summary_token {
            SummaryToken::First => hidden.i((.., 0))?,
            SummaryToken::Last => hidden.i((.., len - 1))?,
        };
        let pooled = self
            .pooler_activation
            .forward(&self.pooler.forward(&token)?)?;
        Ok(self.classifier.forward(&pooled)?)
    }
}

/// Token classification: one linear layer over every token.
pub struct TokenClassifier {
    classifier: Linear,
    pub labels: Labels,
}

impl TokenClassifier {
    pub fn load(model: &Model) -> Result<Self> {
        let ckpt = &model.checkpoint;
        check_architecture(ckpt, HeadKind::TokenClassification)?;
        let classifier = stored_linear(ckpt, "classifier", model.hidden_size())?;
        let num_labels = classifier.weight().dim(0)?;
        let mut labels = Labels::from_config(&ckpt.config, num_labels);
        // Token labels are always one of several classes.
        labels.problem_type = ProblemType::SingleLabel;
        Ok(Self { classifier, labels })
    }

    /// Logits [batch, len, labels].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.classifier.forward(hidden)?)
    }
}

/// Masked-LM head: dense → activation → LayerNorm → decoder (often tied to the
/// word embeddings) + bias.
pub struct MaskedLmHead {
    transform: Linear,
    activation: Activation,
    norm: LayerNorm,
    decoder: Tensor,
    bias: Tensor,
}

struct MlmNames {
    dense: &'static str,
    norm: &'static str,
    decoder: &'static str,
    biases: [&'static str; 2],
}

impl MaskedLmHead {
    pub fn load(model: &Model) -> Result<Self> {
        let ckpt = &model.checkpoint;
        let names = match ckpt.family {
            Family::Bert => MlmNames {
                dense: "cls.predictions.transform.dense",
                norm: "cls.predictions.transform.LayerNorm",
                decoder: "cls.predictions.decoder.weight",
                biases: ["cls.predictions.bias", "cls.predictions.decoder.bias"],
            },
            Family::Roberta => MlmNames {
                dense: "lm_head.dense",
                norm: "lm_head.layer_norm",
                decoder: "lm_head.decoder.weight",
                biases: ["lm_head.bias", "lm_head.decoder.bias"],
            },
            Family::DistilBert => MlmNames {
                dense: "vocab_transform",
                norm: "vocab_layer_norm",
                decoder: "vocab_projector.weight",
                biases: ["vocab_projector.bias", "vocab_projector.bias"],
            },
            Family::Albert => MlmNames {
                dense: "predictions.dense",
                norm: "predictions.LayerNorm",
                decoder: "predictions.decoder.weight",
                biases: ["predictions.bias", "predictions.decoder.bias"],
            },
            Family::XLNet => return Err(Error::Input(
                "XLNet is trained by permutation language modelling and has no masked-LM head: \
                     fill-mask needs a bert, roberta, distilbert or albert checkpoint"
                    .into(),
            )),
        };
        check_architecture(ckpt, HeadKind::MaskedLm)?;
        let transform = stored_linear(ckpt, names.dense, model.hidden_size())?;
        let width = transform.weight().dim(0)?;
        let norm = LayerNorm::load(
            ckpt.var_builder().pp(names.norm),
            width,
            model.config.layer_norm_eps(),
        )?;
        let decoder = match ckpt.tensors.get(names.decoder) {
            Some(t) => t.to_dtype(DType::F32)?,
            None => model.encoder.word_embeddings().clone(),
        };
        let bias_name = first_present(ckpt, &names.biases).ok_or_else(|| {
            Error::file(
                ckpt.weights_path(),
                format!("no tensor {:?} (the MLM bias)", names.biases[0]),
            )
        })?;
        Ok(Self {
            transform,
            activation: model.config.mlm_activation(),
            norm,
            decoder,
            bias: stored(ckpt, bias_name)?,
        })
    }

    /// Vocabulary logits [batch, len, vocab].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.transform.forward(hidden)?;
        let h = self.norm.forward(&self.activation.forward(&h)?)?;
        let logits = h.broadcast_matmul(&self.decoder.t()?)?;
        Ok(logits.broadcast_add(&self.bias)?)
    }
}
