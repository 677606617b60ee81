//! The tasks behind `encode`, `embed`, `classify`, `tag` and `fill-mask`: texts in,
//! serializable results out, in length-sorted batches ([`crate::batching`]).
//! Shared by the command line and the server.

use crate::batching::{self, BatchLimits};
use crate::heads::{MaskedLmHead, ProblemType, SequenceClassifier, TokenClassifier};
use crate::model::Model;
use crate::pooling::{self, EmbeddingSettings};
use crate::tokenize::{Encoded, TextInput, TextTokenizer};
use crate::{Error, Result};
use candle_core::{Device, IndexOp, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;

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
        let tokenizer = Self::tokenizer(dir, &model, limit, extra_limit)?;
        Ok(Self::new(model, tokenizer))
    }

    /// `dir`'s tokenizer for `model`, truncating as [`Pipeline::load`] does: at the
    /// asked length, else at the smaller of the model's and the task's limit.
    pub fn tokenizer(
        dir: &Path,
        model: &Model,
        limit: LengthLimit,
        extra_limit: Option<usize>,
    ) -> Result<TextTokenizer> {
        let model_limit = model.config.max_input_len();
        let max_len = match limit.max_len {
            Some(asked) => {
                if let Some(most) = model_limit.filter(|&m| asked > m) {
                    return Err(Error::bad_value(
                        "max_len",
                        asked,
                        format!("more than the model's position limit of {most}"),
                    ));
                }
                Some(asked)
            }
            None => [model_limit, extra_limit].into_iter().flatten().min(),
        };
        TextTokenizer::load(dir, model.config.padding(), max_len, !limit.no_truncate)
    }

    /// A loaded model with the tokenizer to feed it.
    pub fn new(model: Model, tokenizer: TextTokenizer) -> Self {
        Self {
            model,
            tokenizer,
            device: Device::Cpu,
        }
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

    /// Runs `task` over the texts in length-sorted batches under `limits`; each
    /// text gets its own result, in the texts' order. A batch that fails gives
    /// its error to each of its texts; the other batches still run.
    pub fn run_packed<T>(
        &self,
        texts: &[&Encoded],
        limits: BatchLimits,
        task: impl Fn(&[&Encoded], Vec<Tensor>) -> Result<Vec<T>>,
    ) -> Vec<std::result::Result<T, String>> {
        let mut results: Vec<Option<std::result::Result<T, String>>> =
            std::iter::repeat_with(|| None).take(texts.len()).collect();
        for (batch, group) in batching::batches(texts, |t| t.ids.len(), limits) {
            let group: Vec<&Encoded> = group.into_iter().copied().collect();
            let outputs = self
                .hidden_states(&group)
                .and_then(|hidden| task(&group, hidden));
            match outputs {
                Ok(outputs) => {
                    assert_eq!(outputs.len(), batch.len(), "one output per text");
                    for (&i, out) in batch.iter().zip(outputs) {
                        results[i] = Some(Ok(out));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for &i in &batch {
                        results[i] = Some(Err(message.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every text is in one batch"))
            .collect()
    }

    /// Streams `items` through `task` and hands each result to `sink` in input
    /// order, as three stages joined by queues of one window each, so the model
    /// runs while the next window is read and tokenized and the last one is
    /// written. Reading: up to `options.window` items, tokenized in parallel and
    /// checked with `check`; the model: length-sorted batches under
    /// `options.limits`; writing: `sink`, on a thread of its own. Memory is
    /// bounded by a few windows however long the input.
    ///
    /// An item is a payload the sink gets back (the row's id and text) and the
    /// input, or why the row is unusable; its result is the task's output and the
    /// token count it was truncated from, or the row's error. An `Err` item (a
    /// read failure) or a sink error stops the stream after the results before it
    /// are written, and is returned.
    pub fn stream<P: Send, T: Send>(
        &self,
        items: impl Iterator<Item = Result<StreamItem<P>>> + Send,
        options: StreamOptions,
        check: impl Fn(&Encoded) -> Result<()> + Sync,
        task: impl Fn(&[&Encoded], Vec<Tensor>) -> Result<Vec<T>>,
        sink: impl FnMut(P, StreamResult<T>) -> Result<()> + Send,
    ) -> Result<()> {
        let window = options.window.max(1);
        let (to_model, tokenized) = mpsc::sync_channel::<Window<P>>(1);
        let (to_sink, finished) = mpsc::sync_channel::<Vec<(P, StreamResult<T>)>>(1);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| self.read_windows(items, window, &check, to_model));
            let writer = scope.spawn(|| write_windows(finished, sink));
            for Window { rows, encoded } in tokenized {
                let ok: Vec<&Encoded> = encoded.iter().filter_map(|e| e.as_ref().ok()).collect();
                let mut outputs = self.run_packed(&ok, options.limits, &task).into_iter();
                let results = rows
                    .into_iter()
                    .zip(encoded.iter())
                    .map(|(payload, e)| {
                        let result = match e {
                            Ok(e) => outputs
                                .next()
                                .expect("one output per encoded text")
                                .map(|out| (out, e.truncated_from)),
                            Err(message) => Err(message.clone()),
                        };
                        (payload, result)
                    })
                    .collect();
                if to_sink.send(results).is_err() {
                    break; // the sink failed: its error is returned below
                }
            }
            drop(to_sink);
            let written = writer.join().expect("the writing stage does not panic");
            let read = reader.join().expect("the reading stage does not panic");
            written.and(read)
        })
    }

    /// The reading stage of [`Pipeline::stream`].
    fn read_windows<P>(
        &self,
        mut items: impl Iterator<Item = Result<StreamItem<P>>>,
        window: usize,
        check: &(impl Fn(&Encoded) -> Result<()> + Sync),
        to_model: mpsc::SyncSender<Window<P>>,
    ) -> Result<()> {
        loop {
            let mut rows = Vec::with_capacity(window);
            let mut inputs = Vec::with_capacity(window);
            let mut failure = None;
            for item in items.by_ref().take(window) {
                match item {
                    Ok(StreamItem { payload, input }) => {
                        rows.push(payload);
                        inputs.push(input);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if rows.is_empty() {
                return failure.map_or(Ok(()), Err);
            }
            let encoded = inputs
                .into_par_iter()
                .map(|input| {
                    let input = input?;
                    self.tokenizer
                        .encode(&input)
                        .and_then(|e| check(&e).map(|_| e))
                        .map_err(|e| e.to_string())
                })
                .collect();
            if to_model.send(Window { rows, encoded }).is_err() {
                return Ok(()); // the model stage stopped: the sink's error says why
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }
}

/// One row of a stream: what the sink gets back, and the input or why the row
/// cannot run.
pub struct StreamItem<P> {
    pub payload: P,
    pub input: std::result::Result<TextInput, String>,
}

/// A row's result: the task's output and the token count it was truncated
/// from, or the row's error.
pub type StreamResult<T> = std::result::Result<(T, Option<usize>), String>;

/// How [`Pipeline::stream`] reads ahead and batches.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Rows read, tokenized and sorted together; results are written a window at
    /// a time.
    pub window: usize,
    pub limits: BatchLimits,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            window: 4096,
            limits: BatchLimits::DEFAULT,
        }
    }
}

/// A window of tokenized rows on its way to the model.
struct Window<P> {
    rows: Vec<P>,
    encoded: Vec<std::result::Result<Encoded, String>>,
}

/// The writing stage of [`Pipeline::stream`]: stops at the sink's first error.
fn write_windows<P, T>(
    finished: mpsc::Receiver<Vec<(P, StreamResult<T>)>>,
    mut sink: impl FnMut(P, StreamResult<T>) -> Result<()>,
) -> Result<()> {
    for results in finished {
        for (payload, result) in results {
            sink(payload, result)?;
        }
    }
    Ok(())
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
