//! The tasks behind `encode`, `embed`, `classify`, `tag` and `fill-mask`: texts in,
//! serializable results out, batched. Shared by the command line and the server.

use crate::heads::{MaskedLmHead, ProblemType, SequenceClassifier, TokenClassifier};
use crate::model::Model;
use crate::pooling::{self, EmbeddingSettings};
use crate::tokenize::{Encoded, TextInput, TextTokenizer};
use crate::{Error, Result};
use candle_core::{Device, IndexOp, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// How texts longer than the model allows are handled.
#[derive(Debug, Clone, Copy, Default)]
pub struct LengthLimit {
    /// Overrides the model's position limit (and sentence-transformers' max_seq_length).
    pub max_len: Option<usize>,
    /// Reject instead of truncating.
    pub no_truncate: bool,
}

/// A model with its tokenizer, ready for any task.
pub struct Pipeline {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    device: Device,
}

impl Pipeline {
    /// Loads a model folder. `extra_limit` is a task's own length limit (for
    /// embeddings, sentence-transformers' `max_seq_length`).
    pub fn load(dir: &Path, limit: LengthLimit, extra_limit: Option<usize>) -> Result<Self> {
        let model = Model::load(dir)?;
        let model_limit = model.config.max_input_len();
        let max_len = match limit.max_len {
            Some(asked) => {
                if let Some(most) = model_limit.filter(|&m| asked > m) {
                    return Err(Error::Input(format!(
                        "--max-len {asked} is more than the model's position limit of {most}"
                    )));
                }
                Some(asked)
            }
            None => [model_limit, extra_limit].into_iter().flatten().min(),
        };
        let tokenizer = TextTokenizer::load(dir, &model.config, max_len, !limit.no_truncate)?;
        Ok(Self {
            model,
            tokenizer,
            device: Device::Cpu,
        })
    }

    /// Runs the encoder on already tokenized texts; one [n_tokens, hidden] tensor
    /// per text, padding removed.
    pub fn hidden_states(&self, texts: &[&Encoded]) -> Result<Vec<Tensor>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.tokenizer.collate(texts, &self.device)?;
        let hidden = self.model.encoder.forward(&batch)?;
        let len = hidden.dim(1)?;
        texts
            .iter()
            .enumerate()
            .map(|(row, text)| {
                let start = self.tokenizer.first_token_index(text, len);
                Ok(hidden.i((row, start..start + text.ids.len()))?)
            })
            .collect()
    }

    /// Tokenizes every input and checks it with `check`, then runs `task` once
    /// over those that passed; each input gets its own result, in input order,
    /// with the length it was truncated from, if it was.
    pub fn run<T>(
        &self,
        inputs: &[TextInput],
        check: impl Fn(&Encoded) -> Result<()>,
        task: impl FnOnce(&[&Encoded], Vec<Tensor>) -> Result<Vec<T>>,
    ) -> Vec<Result<(T, Option<usize>)>> {
        let encoded: Vec<Result<Encoded>> = inputs
            .iter()
            .map(|i| self.tokenizer.encode(i).and_then(|e| check(&e).map(|_| e)))
            .collect();
        let ok: Vec<&Encoded> = encoded.iter().filter_map(|e| e.as_ref().ok()).collect();
        let outputs = self.hidden_states(&ok).and_then(|hidden| task(&ok, hidden));
        let mut outputs = match outputs {
            Ok(outputs) => outputs.into_iter(),
            Err(e) => {
                let message = e.to_string();
                return encoded
                    .into_iter()
                    .map(|r| r.and(Err(Error::Input(message.clone()))))
                    .collect();
            }
        };
        encoded
            .into_iter()
            .map(|r| {
                let e = r?;
                let out = outputs.next().expect("one output per encoded text");
                Ok((out, e.truncated_from))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EncodeOutput {
    pub ids: Vec<u32>,
    pub last_hidden_state: Vec<Vec<f32>>,
}

pub fn encode(texts: &[&Encoded], hidden: Vec<Tensor>) -> Result<Vec<EncodeOutput>> {
    texts
        .iter()
        .zip(hidden)
        .map(|(text, h)| {
            Ok(EncodeOutput {
                ids: text.ids.clone(),
                last_hidden_state: h.to_vec2()?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbedOutput {
    pub embedding: Vec<f32>,
}

pub fn embed(settings: &EmbeddingSettings, hidden: Vec<Tensor>) -> Result<Vec<EmbedOutput>> {
    hidden
        .iter()
        .map(|h| {
            Ok(EmbedOutput {
                embedding: pooling::embed(h, settings)?.to_vec1()?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ClassifyOutput {
    Labels {
        label: String,
        scores: BTreeMap<String, f32>,
    },
    Regression {
        score: f32,
    },
}

pub fn classify(head: &SequenceClassifier, hidden: Vec<Tensor>) -> Result<Vec<ClassifyOutput>> {
    // Each text's summary token is taken from its own unpadded states.
    let logits = hidden
        .iter()
        .map(|h| head.forward(&h.unsqueeze(0)?))
        .collect::<Result<Vec<_>>>()?;
    let scores = head
        .labels
        .scores(&Tensor::cat(&logits, 0)?)?
        .to_vec2::<f32>()?;
    Ok(scores
        .into_iter()
        .map(|row| match head.labels.problem_type {
            ProblemType::Regression => ClassifyOutput::Regression { score: row[0] },
            _ => {
                let best = argmax(&row);
                ClassifyOutput::Labels {
                    label: head.labels.names[best].clone(),
                    scores: head.labels.names.iter().cloned().zip(row).collect(),
                }
            }
        })
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct TaggedToken {
    pub token: String,
    pub start: usize,
    pub end: usize,
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TagOutput {
    pub tokens: Vec<TaggedToken>,
}

pub fn tag(
    head: &TokenClassifier,
    texts: &[&Encoded],
    hidden: Vec<Tensor>,
) -> Result<Vec<TagOutput>> {
    texts
        .iter()
        .zip(hidden)
        .map(|(text, h)| {
            let scores = head.labels.scores(&head.forward(&h)?)?.to_vec2::<f32>()?;
            let tokens = scores
                .iter()
                .enumerate()
                .filter(|(i, _)| text.special_tokens_mask[*i] == 0)
                .map(|(i, row)| {
                    let best = argmax(row);
                    TaggedToken {
                        token: text.tokens[i].clone(),
                        start: text.offsets[i].0,
                        end: text.offsets[i].1,
                        label: head.labels.names[best].clone(),
                        score: row[best],
                    }
                })
                .collect();
            Ok(TagOutput { tokens })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct MaskPrediction {
    pub token: String,
    pub id: u32,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct FillMaskOutput {
    pub masks: Vec<Vec<MaskPrediction>>,
}

/// Checks that a text holds the mask token before any model work is done.
pub fn require_mask(tokenizer: &TextTokenizer, text: &Encoded) -> Result<()> {
    let (mask, id) = tokenizer
        .mask_token()
        .ok_or_else(|| Error::Input("the tokenizer has no mask token".into()))?;
    if text.ids.contains(&id) {
        Ok(())
    } else {
        Err(Error::Input(format!("the text has no mask token {mask}")))
    }
}

pub fn fill_mask(
    head: &MaskedLmHead,
    tokenizer: &TextTokenizer,
    top_k: usize,
    texts: &[&Encoded],
    hidden: Vec<Tensor>,
) -> Result<Vec<FillMaskOutput>> {
    let (_, mask_id) = tokenizer
        .mask_token()
        .ok_or_else(|| Error::Input("the tokenizer has no mask token".into()))?;
    texts
        .iter()
        .zip(hidden)
        .map(|(text, h)| {
            let positions: Vec<usize> = (0..text.ids.len())
                .filter(|&i| text.ids[i] == mask_id)
                .collect();
            let masks = positions
                .iter()
                .map(|&p| {
                    let logits = head.forward(&h.i(p..p + 1)?.unsqueeze(0)?)?.flatten_all()?;
                    let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec1::<f32>()?;
                    Ok(top_k_indices(&probs, top_k)
                        .into_iter()
                        .map(|id| MaskPrediction {
                            token: tokenizer.inner().id_to_token(id as u32).unwrap_or_default(),
                            id: id as u32,
                            score: probs[id],
                        })
                        .collect())
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(FillMaskOutput { masks })
        })
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    top_k_indices(row, 1).first().copied().unwrap_or(0)
}

/// Indices of the k largest values, largest first (ties: lower index first).
fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
