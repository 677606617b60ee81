//! Tokenization with the checkpoint's own `tokenizer.json`, and collation of
//! encoded texts into padded batches the way each family pads.

use crate::models::Batch;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// One input: a text, or a pair of texts (tab-separated on the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextInput {
    Single(String),
    Pair(String, String),
}

impl TextInput {
    /// The input with `prefix` (a prompt) before its first text.
    pub fn with_prefix(self, prefix: &str) -> TextInput {
        match self {
            TextInput::Single(t) => TextInput::Single(format!("{prefix}{t}")),
            TextInput::Pair(a, b) => TextInput::Pair(format!("{prefix}{a}"), b),
        }
    }

    pub fn to_encode_input(&self) -> EncodeInput<'_> {
        match self {
            TextInput::Single(a) => EncodeInput::Single(a.as_str().into()),
            TextInput::Pair(a, b) => EncodeInput::Dual(a.as_str().into(), b.as_str().into()),
        }
    }
}

/// A tokenized text, never padded.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub tokens: Vec<String>,
    /// Character offsets into the text (into the second text for its tokens).
    pub offsets: Vec<(usize, usize)>,
    pub special_tokens_mask: Vec<u32>,
    /// Which text of a pair each token came from (`None` for special tokens).
    pub sequence_ids: Vec<Option<usize>>,
    /// The length before truncation, when the text was truncated.
    pub truncated_from: Option<usize>,
}

/// How a family pads a batch: the pad token's id and type id, and on which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    pub id: u32,
    pub type_id: u32,
    /// XLNet pads on the left, so that its last token is the one it pools.
    pub left: bool,
}

pub struct TextTokenizer {
    plain: Tokenizer,
    /// The same tokenizer, truncating to `max_len`.
    truncating: Option<Tokenizer>,
    /// Truncating only a pair's second text (a reranked document, never its query).
    truncating_second: Option<Tokenizer>,
    max_len: Option<usize>,
    truncate: bool,
    pad_id: u32,
    pad_type_id: u32,
    pad_left: bool,
}

impl TextTokenizer {
    /// Reads `dir/tokenizer.json`, ignoring the padding and truncation stored in it.
    /// Texts longer than `max_len` tokens are truncated, or rejected when `truncate` is false.
    pub fn load(
        dir: &Path,
        padding: Padding,
        max_len: Option<usize>,
        truncate: bool,
    ) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            return Err(Error::file(&path, "missing"));
        }
        let mut plain = Tokenizer::from_file(&path).map_err(|e| Error::file(&path, e))?;
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| Error::file(&path, e))?;
        let truncating_with = |strategy: TruncationStrategy| -> Result<Option<Tokenizer>> {
            let Some(max_length) = max_len else {
                return Ok(None);
            };
            let mut t = plain.clone();
            t.with_truncation(Some(TruncationParams {
                max_length,
                strategy,
                ..Default::default()
            }))
            .map_err(|e| Error::file(&path, e))?;
            Ok(Some(t))
        };
        let truncating = truncating_with(TruncationStrategy::LongestFirst)?;
        let truncating_second = truncating_with(TruncationStrategy::OnlySecond)?;
        Ok(Self {
            plain,
            truncating,
            truncating_second,
            max_len,
            truncate,
            pad_id: padding.id,
            pad_type_id: padding.type_id,
            pad_left: padding.left,
        })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.plain
    }

    pub fn max_len(&self) -> Option<usize> {
        self.max_len
    }

    pub fn encode(&self, input: &TextInput) -> Result<Encoded> {
        self.encode_with(input, self.truncating.as_ref())
    }

    /// As [`TextTokenizer::encode`], but a pair too long loses tokens from its
    /// second text only (a query stays whole against its document); when the
    /// first text alone is too long, from both.
    pub fn encode_keeping_first(&self, input: &TextInput) -> Result<Encoded> {
        match self.encode_with(input, self.truncating_second.as_ref()) {
            Err(Error::Tokenizer(_)) if matches!(input, TextInput::Pair(..)) => self.encode(input),
            other => other,
        }
    }

    fn encode_with(&self, input: &TextInput, truncating: Option<&Tokenizer>) -> Result<Encoded> {
        let full = self
            .plain
            .encode_char_offsets(input.to_encode_input(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let (encoding, truncated_from) = match (self.max_len, truncating) {
            (Some(max), Some(truncating)) if full.len() > max => {
                if !self.truncate {
                    return Err(Error::TooLong {
                        tokens: full.len(),
                        limit: max,
                    });
                }
                let cut = truncating
                    .encode_char_offsets(input.to_encode_input(), true)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                (cut, Some(full.len()))
            }
            _ => (full, None),
        };
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            tokens: encoding.get_tokens().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
            special_tokens_mask: encoding.get_special_tokens_mask().to_vec(),
            sequence_ids: encoding.get_sequence_ids(),
            truncated_from,
        })
    }

    /// Pads the texts to one length, on the family's padding side.
    pub fn collate(&self, texts: &[&Encoded], device: &Device) -> Result<Batch> {
        let len = texts.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let rows = texts.len();
        let mut ids = Vec::with_capacity(rows * len);
        let mut mask = Vec::with_capacity(rows * len);
        let mut types = Vec::with_capacity(rows * len);
        for text in texts {
            let pad = len - text.ids.len();
            let padding = |ids: &mut Vec<u32>, mask: &mut Vec<u32>, types: &mut Vec<u32>| {
                ids.extend(std::iter::repeat_n(self.pad_id, pad));
                mask.extend(std::iter::repeat_n(0, pad));
                types.extend(std::iter::repeat_n(self.pad_type_id, pad));
            };
            if self.pad_left {
                padding(&mut ids, &mut mask, &mut types);
            }
            ids.extend(&text.ids);
            mask.extend(std::iter::repeat_n(1, text.ids.len()));
            types.extend(&text.type_ids);
            if !self.pad_left {
                padding(&mut ids, &mut mask, &mut types);
            }
        }
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (rows, len), device)?,
            attention_mask: Tensor::from_vec(mask, (rows, len), device)?,
            token_type_ids: Tensor::from_vec(types, (rows, len), device)?,
        })
    }

    /// Where a text's tokens start within a padded row of length `len`.
    pub fn first_token_index(&self, text: &Encoded, len: usize) -> usize {
        if self.pad_left {
            len - text.ids.len()
        } else {
            0
        }
    }

    /// The tokenizer's mask token, if it has one.
    pub fn mask_token(&self) -> Option<(String, u32)> {
        ["[MASK]", "<mask>"]
            .iter()
            .find_map(|t| self.plain.token_to_id(t).map(|id| (t.to_string(), id)))
    }
}
