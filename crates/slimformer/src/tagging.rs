//! Entities from a token classifier's scores, grouped as transformers'
//! token-classification pipeline groups them (`aggregation_strategy`), with
//! character spans into the text.

use crate::heads::TokenClassifier;
use crate::tokenize::{Encoded, TextTokenizer};
use crate::{Error, Result};
use candle_core::Tensor;
use serde::Serialize;
use tokenizers::{Decoder, ModelWrapper};

/// How tokens become entities (transformers' `aggregation_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Every token that is not `O`, with its own tag.
    None,
    /// Neighbouring tokens of one type joined into an entity.
    Simple,
    /// A word takes its first sub-token's tag, then words are joined.
    First,
    /// A word takes the tag of its sub-tokens' averaged scores.
    Average,
    /// A word takes the tag of its most confident sub-token.
    Max,
}

impl std::str::FromStr for Aggregation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => Aggregation::None,
            "simple" => Aggregation::Simple,
            "first" => Aggregation::First,
            "average" => Aggregation::Average,
            "max" => Aggregation::Max,
            _ => {
                return Err(Error::bad_value(
                    "aggregation",
                    s,
                    "expected none, simple, first, average or max",
                ))
            }
        })
    }
}

/// One entity: `entity` and `index` (the token's position) without aggregation,
/// `entity_group` with it; `start`/`end` are character offsets into the text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_group: Option<String>,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub word: String,
    pub start: usize,
    pub end: usize,
}

/// One text's entities (the `tag --aggregation` output line).
#[derive(Debug, Clone, Serialize)]
pub struct EntitiesOutput {
    pub entities: Vec<Entity>,
}

/// A token with its scores over the tags, before grouping.
struct Scored {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// A word (or, for `simple`/`none`, a token) with its chosen tag.
struct Tagged {
    label: String,
    score: f32,
    word: String,
    start: usize,
    end: usize,
    index: usize,
}

/// Turns token-classifier outputs into entities, the tokenizer telling sub-words
/// apart and joining tokens back into words.
pub struct Tagger<'a> {
    head: &'a TokenClassifier,
    tokenizer: &'a TextTokenizer,
    /// WordPiece's `##` (or a BPE's continuing-subword prefix), when the model has one.
    subword_prefix: Option<String>,
    unk_id: Option<u32>,
}

impl<'a> Tagger<'a> {
    pub fn new(head: &'a TokenClassifier, tokenizer: &'a TextTokenizer) -> Self {
        let model = tokenizer.inner().get_model();
        let (subword_prefix, unk) = match model {
            ModelWrapper::WordPiece(m) => (
                Some(m.continuing_subword_prefix.clone()),
                Some(m.unk_token.clone()),
            ),
            ModelWrapper::BPE(m) => (m.continuing_subword_prefix.clone(), m.unk_token.clone()),
            ModelWrapper::WordLevel(m) => (None, Some(m.unk_token.clone())),
            ModelWrapper::Unigram(_) => (None, None),
        };
        let unk_id = match model {
            ModelWrapper::Unigram(_) => tokenizer.inner().token_to_id("<unk>"),
            _ => unk.and_then(|t| tokenizer.inner().token_to_id(&t)),
        };
        Tagger {
            head,
            tokenizer,
            subword_prefix,
            unk_id,
        }
    }

    /// Each text's entities, `O` left out.
    pub fn entities(
        &self,
        aggregation: Aggregation,
        texts: &[&Encoded],
        hidden: Vec<Tensor>,
    ) -> Result<Vec<Vec<Entity>>> {
        texts
            .iter()
            .zip(hidden)
            .map(|(text, h)| {
                let scores = self
                    .head
                    .labels
                    .scores(&self.head.forward(&h)?)?
                    .to_vec2::<f32>()?;
                self.group(aggregation, self.scored_tokens(text, scores))
            })
            .collect()
    }

    /// The text's tokens (special tokens left out) with their scores, each marked
    /// a sub-word or not as transformers marks it: by the continuing-subword prefix
    /// when the tokenizer has one (a token longer than its span, as `##ing`), else
    /// when it follows text with no whitespace between (transformers' fallback, which
    /// looks for a space in the text: here any whitespace the tokenizer skipped
    /// counts). An unknown token always starts a word.
    fn scored_tokens(&self, text: &Encoded, scores: Vec<Vec<f32>>) -> Vec<Scored> {
        let mut tokens = Vec::new();
        // The end of the text the tokens so far cover (empty tokens cover nothing).
        let mut covered_until = 0;
        for (index, row) in scores.into_iter().enumerate() {
            if text.special_tokens_mask[index] != 0 {
                continue;
            }
            let (start, end) = text.offsets[index];
            let word = text.tokens[index].clone();
            let is_subword = if Some(text.ids[index]) == self.unk_id {
                false
            } else if self.subword_prefix.is_some() {
                word.chars().count() != end - start
            } else {
                start > 0 && covered_until == start
            };
            if end > start {
                covered_until = end;
            }
            tokens.push(Scored {
                word,
                scores: row,
                start,
                end,
                index,
                is_subword,
            });
        }
        tokens
    }

    fn label(&self, id: usize) -> String {
        self.head.labels.names[id].clone()
    }

    fn join(&self, words: Vec<String>) -> Result<String> {
        match self.tokenizer.inner().get_decoder() {
            Some(decoder) => decoder
                .decode(words)
                .map_err(|e| Error::Tokenizer(e.to_string())),
            None => Ok(words.join(" ")),
        }
    }

    fn group(&self, aggregation: Aggregation, tokens: Vec<Scored>) -> Result<Vec<Entity>> {
        let tagged: Vec<Tagged> = match aggregation {
            Aggregation::None | Aggregation::Simple => tokens
                .into_iter()
                .map(|t| {
                    let best = argmax(&t.scores);
                    Tagged {
                        label: self.label(best),
                        score: t.scores[best],
                        word: t.word,
                        start: t.start,
                        end: t.end,
                        index: t.index,
                    }
                })
                .collect(),
            _ => self.words(aggregation, tokens)?,
        };
        if aggregation == Aggregation::None {
            return Ok(tagged
                .into_iter()
                .filter(|t| t.label != "O")
                .map(|t| Entity {
                    entity: Some(t.label),
                    entity_group: None,
                    score: t.score,
                    index: Some(t.index),
                    word: t.word,
                    start: t.start,
                    end: t.end,
                })
                .collect());
        }
        let mut entities = Vec::new();
        let mut run: Vec<Tagged> = Vec::new();
        for t in tagged {
            let continues = run.last().is_some_and(|last| {
                let (bi, kind) = bio(&t.label);
                bi != 'B' && kind == bio(&last.label).1
            });
            if !continues && !run.is_empty() {
                entities.push(self.entity_group(std::mem::take(&mut run))?);
            }
            run.push(t);
        }
        if !run.is_empty() {
            entities.push(self.entity_group(run)?);
        }
        entities.retain(|e| e.entity_group.as_deref() != Some("O"));
        Ok(entities)
    }

    /// Tokens joined into words, each word tagged as `aggregation` says.
    fn words(&self, aggregation: Aggregation, tokens: Vec<Scored>) -> Result<Vec<Tagged>> {
        let mut groups: Vec<Vec<Scored>> = Vec::new();
        for t in tokens {
            match groups.last_mut() {
                Some(group) if t.is_subword => group.push(t),
                _ => groups.push(vec![t]),
            }
        }
        groups
            .into_iter()
            .map(|group| {
                let scores: Vec<f32> = match aggregation {
                    // The first of equally confident sub-tokens, as Python's max().
                    Aggregation::Max => group
                        .iter()
                        .fold(&group[0], |best, t| {
                            if max(&t.scores) > max(&best.scores) {
                                t
                            } else {
                                best
                            }
                        })
                        .scores
                        .clone(),
                    Aggregation::Average => (0..group[0].scores.len())
                        .map(|k| {
                            group.iter().map(|t| t.scores[k]).sum::<f32>() / group.len() as f32
                        })
                        .collect(),
                    _ => group[0].scores.clone(),
                };
                let best = argmax(&scores);
                Ok(Tagged {
                    label: self.label(best),
                    score: scores[best],
                    start: group[0].start,
                    end: group[group.len() - 1].end,
                    index: group[0].index,
                    word: self.join(group.into_iter().map(|t| t.word).collect())?,
                })
            })
            .collect()
    }

    fn entity_group(&self, run: Vec<Tagged>) -> Result<Entity> {
        let kind = run[0]
            .label
            .split_once('-')
            .map_or(run[0].label.as_str(), |(_, k)| k)
            .to_string();
        let score = run.iter().map(|t| t.score).sum::<f32>() / run.len() as f32;
        let (start, end) = (run[0].start, run[run.len() - 1].end);
        Ok(Entity {
            entity: None,
            entity_group: Some(kind),
            score,
            index: None,
            word: self.join(run.into_iter().map(|t| t.word).collect())?,
            start,
            end,
        })
    }
}

/// The B/I part and the type of a tag, as transformers reads them (a tag without a
/// `B-`/`I-` prefix continues a run of its own type).
fn bio(label: &str) -> (char, &str) {
    if let Some(kind) = label.strip_prefix("B-") {
        ('B', kind)
    } else if let Some(kind) = label.strip_prefix("I-") {
        ('I', kind)
    } else {
        ('I', label)
    }
}

/// The index of the largest value (the first of equal ones, as numpy's argmax).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

fn max(values: &[f32]) -> f32 {
    values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}
