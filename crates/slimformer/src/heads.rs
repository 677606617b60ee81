//! Task heads on top of an encoder's last hidden state, loaded from the tensor
//! names of transformers' `*ForSequenceClassification`, `*ForTokenClassification`
//! and `*ForMaskedLM` models.

use crate::checkpoint::Checkpoint;
use crate::layers::{linear, Activation, Dropout, LayerNorm, Linear};
use crate::model::Model;
use crate::models::Family;
use crate::rng::TrainRng;
use crate::{Error, Result};
use candle_core::{IndexOp, Module, Tensor};
use std::collections::BTreeMap;

/// Which head a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    SequenceClassification,
    TokenClassification,
    MaskedLm,
}

impl HeadKind {
    /// The end of transformers' class name for the head (`...ForTokenClassification`).
    pub fn class_suffix(&self) -> &'static str {
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

impl ProblemType {
    /// transformers' `problem_type` in `config.json`.
    pub fn config_name(self) -> &'static str {
        match self {
            ProblemType::SingleLabel => "single_label_classification",
            ProblemType::MultiLabel => "multi_label_classification",
            ProblemType::Regression => "regression",
        }
    }

    /// The problem type a `config.json` names, if it names one.
    pub fn from_config(config: &serde_json::Value) -> Option<ProblemType> {
        match config.get("problem_type").and_then(|p| p.as_str())? {
            "multi_label_classification" => Some(ProblemType::MultiLabel),
            "regression" => Some(ProblemType::Regression),
            _ => Some(ProblemType::SingleLabel),
        }
    }
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
    pub fn from_config(config: &serde_json::Value, num_labels: usize) -> Labels {
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
        // transformers' rule when the config names none: one output is a regression.
        let problem_type = ProblemType::from_config(config).unwrap_or(if num_labels == 1 {
            ProblemType::Regression
        } else {
            ProblemType::SingleLabel
        });
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

/// Rows of a stored weight matrix (the number of labels of a classifier), or
/// `None` when the checkpoint has no such tensor.
fn stored_rows(model: &Model, name: &str) -> Result<Option<usize>> {
    match model.checkpoint.tensors.get(name) {
        Some(t) => Ok(Some(t.dims().first().copied().ok_or_else(|| {
            Error::file(
                model.checkpoint.weights_path(),
                format!("tensor {name} is a scalar"),
            )
        })?)),
        None => Ok(None),
    }
}

fn required_rows(model: &Model, name: &str) -> Result<usize> {
    stored_rows(model, name)?.ok_or_else(|| {
        Error::file(
            model.checkpoint.weights_path(),
            format!("no tensor {name:?}: the checkpoint has no such head"),
        )
    })
}

/// Checks that `architectures` (when present) agrees with the head asked for.
/// Whether the model folder's `config.json` names a `*ForTokenClassification`
/// architecture (the commands that take either classifier choose by it).
pub fn is_token_classifier(dir: &std::path::Path) -> Result<bool> {
    let config = crate::checkpoint::read_json(&dir.join(crate::checkpoint::CONFIG_FILE))?;
    Ok(config
        .get("architectures")
        .and_then(|a| a.as_array())
        .is_some_and(|archs| {
            archs
                .iter()
                .filter_map(|a| a.as_str())
                .any(|a| a.ends_with(HeadKind::TokenClassification.class_suffix()))
        }))
}

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

/// Tensor names and activation of a family's sequence-classification head.
struct SequenceHeadNames {
    pooler: &'static str,
    activation: Activation,
    classifier: &'static str,
    summary_token: SummaryToken,
    /// RoBERTa drops out before its dense layer too.
    dropout_before_pooler: bool,
}

fn sequence_head_names(model: &Model) -> Result<SequenceHeadNames> {
    let names = |pooler, activation, classifier| SequenceHeadNames {
        pooler,
        activation,
        classifier,
        summary_token: SummaryToken::First,
        dropout_before_pooler: false,
    };
    Ok(match model.family() {
        Family::Bert => names("pooler.dense", Activation::Tanh, "classifier"),
        Family::Albert => names("pooler", Activation::Tanh, "classifier"),
        Family::Roberta => SequenceHeadNames {
            dropout_before_pooler: true,
            ..names("classifier.dense", Activation::Tanh, "classifier.out_proj")
        },
        Family::DistilBert => names("pre_classifier", Activation::Relu, "classifier"),
        Family::XLNet => {
            let config = &model.checkpoint.config;
            let summary_token = match config.get("summary_type").and_then(|s| s.as_str()) {
                None | Some("last") => SummaryToken::Last,
                Some("first") => SummaryToken::First,
                Some(other) => {
                    return Err(Error::file(
                        model.checkpoint.dir.join(crate::checkpoint::CONFIG_FILE),
                        format!(
                            "summary_type {other:?} is not supported (only \"last\" or \"first\")"
                        ),
                    ))
                }
            };
            SequenceHeadNames {
                summary_token,
                ..names("sequence_summary.summary", Activation::Tanh, "logits_proj")
            }
        }
    })
}

/// Sequence classification: a summary token, a dense+activation "pooler", and a
/// linear classifier — under each family's own names. A clone shares the weights.
#[derive(Clone)]
pub struct SequenceClassifier {
    summary_token: SummaryToken,
    pooler: Linear,
    pooler_activation: Activation,
    classifier: Linear,
    dropout_before_pooler: bool,
    dropout: Dropout,
    pub labels: Labels,
}

impl SequenceClassifier {
    /// The checkpoint's own head, with as many labels as it was trained for.
    pub fn load(model: &Model) -> Result<Self> {
        check_architecture(&model.checkpoint, HeadKind::SequenceClassification)?;
        let names = sequence_head_names(model)?;
        let num_labels = required_rows(model, &format!("{}.weight", names.classifier))?;
        let labels = Labels::from_config(&model.checkpoint.config, num_labels);
        Self::build(model, names, labels)
    }

    /// A head for `labels`: the checkpoint's when it has one of that size, else a
    /// new one (created in the model's VarMap when it is trainable).
    pub fn for_labels(model: &Model, labels: Labels) -> Result<Self> {
        let names = sequence_head_names(model)?;
        let stored = stored_rows(model, &format!("{}.weight", names.classifier))?;
        if stored.is_some_and(|n| n != labels.names.len()) {
            return Err(Error::Input(format!(
                "the checkpoint's classifier has {} labels, the data {}",
                stored.unwrap_or_default(),
                labels.names.len()
            )));
        }
        Self::build(model, names, labels)
    }

    fn build(model: &Model, names: SequenceHeadNames, labels: Labels) -> Result<Self> {
        let hidden = model.hidden_size();
        let vb = &model.vb;
        let load = || -> Result<Self> {
            Ok(Self {
                summary_token: names.summary_token,
                pooler: linear(vb, names.pooler, hidden, hidden)?,
                pooler_activation: names.activation,
                classifier: linear(vb, names.classifier, hidden, labels.names.len())?,
                dropout_before_pooler: names.dropout_before_pooler,
                dropout: Dropout::new(model.config.classifier_dropout()),
                labels: labels.clone(),
            })
        };
        load().map_err(|e| model.weights_error(e))
    }

    /// Logits [batch, labels] from the last hidden state [batch, len, hidden].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.forward_t(hidden, None)
    }

    pub fn forward_t(&self, hidden: &Tensor, train: Option<&TrainRng>) -> Result<Tensor> {
        let len = hidden.dim(1)?;
        let mut token = match self.summary_token {
            SummaryToken::First => hidden.i((.., 0))?,
            SummaryToken::Last => hidden.i((.., len - 1))?,
        };
        if self.dropout_before_pooler {
            token = self.dropout.forward(&token, train)?;
        }
        let pooled = self
            .pooler_activation
            .forward(&self.pooler.forward(&token)?)?;
        let pooled = self.dropout.forward(&pooled, train)?;
        Ok(self.classifier.forward(&pooled)?)
    }
}

/// Token classification: one linear layer over every token.
pub struct TokenClassifier {
    classifier: Linear,
    dropout: Dropout,
    pub labels: Labels,
}

impl TokenClassifier {
    pub fn load(model: &Model) -> Result<Self> {
        check_architecture(&model.checkpoint, HeadKind::TokenClassification)?;
        let num_labels = required_rows(model, "classifier.weight")?;
        let mut labels = Labels::from_config(&model.checkpoint.config, num_labels);
        // Token labels are always one of several classes.
        labels.problem_type = ProblemType::SingleLabel;
        Self::build(model, labels)
    }

    /// A head for the tag set `names`: the checkpoint's when it has one (of that
    /// size: the caller drops one of another), else a new one in the model's VarMap.
    pub fn for_labels(model: &Model, names: Vec<String>) -> Result<Self> {
        let labels = Labels {
            names,
            problem_type: ProblemType::SingleLabel,
        };
        Self::build(model, labels)
    }

    fn build(model: &Model, labels: Labels) -> Result<Self> {
        let num_labels = labels.names.len();
        let classifier = linear(&model.vb, "classifier", model.hidden_size(), num_labels)
            .map_err(|e| model.weights_error(e))?;
        Ok(Self {
            classifier,
            dropout: Dropout::new(model.config.classifier_dropout()),
            labels,
        })
    }

    /// Logits [batch, len, labels].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.forward_t(hidden, None)
    }

    pub fn forward_t(&self, hidden: &Tensor, train: Option<&TrainRng>) -> Result<Tensor> {
        Ok(self
            .classifier
            .forward(&self.dropout.forward(hidden, train)?)?)
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
    /// The bias's name, and the name older checkpoints store it under.
    biases: [&'static str; 2],
}

impl MaskedLmHead {
    pub fn load(model: &Model) -> Result<Self> {
        let names = match model.family() {
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
        check_architecture(&model.checkpoint, HeadKind::MaskedLm)?;
        let vb = &model.vb;
        let load = || -> Result<Self> {
            let word_embeddings = model.encoder.word_embeddings();
            let (vocab, width) = word_embeddings.dims2()?;
            let decoder = if vb.contains_tensor(names.decoder) {
                vb.get((vocab, width), names.decoder)?
            } else {
                // Tied: the very same tensor, so training updates both uses.
                word_embeddings.clone()
            };
            let bias_name = names
                .biases
                .into_iter()
                .find(|n| vb.contains_tensor(n))
                .unwrap_or(names.biases[0]);
            Ok(Self {
                transform: linear(vb, names.dense, model.hidden_size(), width)?,
                activation: model.config.mlm_activation(),
                norm: LayerNorm::load(vb.pp(names.norm), width, model.config.layer_norm_eps())?,
                decoder,
                bias: vb.get_with_hints(vocab, bias_name, candle_nn::Init::Const(0.0))?,
            })
        };
        load().map_err(|e| model.weights_error(e))
    }

    /// Vocabulary logits [batch, len, vocab].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.transform.forward(hidden)?;
        let h = self.norm.forward(&self.activation.forward(&h)?)?;
        let logits = crate::layers::rows::matmul_last(&h, &self.decoder.t()?)?;
        Ok(crate::layers::rows::add_row(&logits, &self.bias)?)
    }
}
