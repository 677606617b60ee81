//! Tokenization with the checkpoint's own `tokenizer.json`, and collation of
//! encoded texts into padded batches the way each family pads.

use crate::models::Batch;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::sync::OnceLock;
use tokenizers::{
    EncodeInput, InputSequence, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

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
    /// Which word of its text each token belongs to (`None` for special tokens): the
    /// pre-tokenizer's words for a text, the given words for [`TextTokenizer::encode_words`].
    pub word_ids: Vec<Option<u32>>,
    /// The length before truncation, when the text was truncated.
    pub truncated_from: Option<usize>,
}

impl Encoded {
    fn from_encoding(encoding: &tokenizers::Encoding, truncated_from: Option<usize>) -> Encoded {
        Encoded {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            tokens: encoding.get_tokens().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
            special_tokens_mask: encoding.get_special_tokens_mask().to_vec(),
            sequence_ids: encoding.get_sequence_ids(),
            word_ids: encoding.get_word_ids().to_vec(),
            truncated_from,
        }
    }
}

/// How a family pads a batch: the pad token's id and type id, and on which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    pub id: u32,
    pub type_id: u32,
    /// XLNet pads on the left, so that its last token is the one it pools.
    pub left: bool,
}

/// Which end of a too-long text loses its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TruncationSide {
    #[default]
    Right,
    Left,
}

/// How one request wants a too-long input handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncation {
    /// Cut it (`Some(false)`: reject it; `None`: the tokenizer's own setting).
    pub enabled: Option<bool>,
    pub side: TruncationSide,
    /// Cut a pair's second text only (a reranked document, never its query); when
    /// the first text alone is too long, both.
    pub keep_first: bool,
}

/// The truncating copies of the tokenizer, made on first use: longest-first or
/// second-only, from the right or the left.
const TRUNCATING_KINDS: usize = 4;

pub struct TextTokenizer {
    plain: Tokenizer,
    truncating: [OnceLock<std::result::Result<Tokenizer, String>>; TRUNCATING_KINDS],
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
        Ok(Self {
            plain,
            truncating: Default::default(),
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
        self.encode_truncating(input, Truncation::default())
    }

    /// As [`TextTokenizer::encode`], but a pair too long loses tokens from its
    /// second text only (a query stays whole against its document); when the
    /// first text alone is too long, from both.
    pub fn encode_keeping_first(&self, input: &TextInput) -> Result<Encoded> {
        self.encode_truncating(
            input,
            Truncation {
                keep_first: true,
                ..Truncation::default()
            },
        )
    }

    /// Encodes with special tokens, a too-long input handled as `truncation` asks.
    pub fn encode_truncating(&self, input: &TextInput, truncation: Truncation) -> Result<Encoded> {
        let full = self.encode_plain(input, true)?;
        let Some(max) = self.max_len.filter(|&max| full.ids.len() > max) else {
            return Ok(full);
        };
        if !truncation.enabled.unwrap_or(self.truncate) {
            return Err(Error::TooLong {
                tokens: full.ids.len(),
                limit: max,
            });
        }
        let second_only = truncation.keep_first && matches!(input, TextInput::Pair(..));
        let cut = match self.cut(input, max, second_only, truncation.side) {
            // The first text alone does not fit: both lose tokens.
            Err(Error::Tokenizer(_)) if second_only => {
                self.cut(input, max, false, truncation.side)?
            }
            other => other?,
        };
        Ok(Encoded {
            truncated_from: Some(full.ids.len()),
            ..cut
        })
    }

    fn cut(
        &self,
        input: &TextInput,
        max_length: usize,
        second_only: bool,
        side: TruncationSide,
    ) -> Result<Encoded> {
        let encoding = self
            .truncating_tokenizer(max_length, second_only, side)?
            .encode_char_offsets(input.to_encode_input(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded::from_encoding(&encoding, None))
    }

    /// The copy of the tokenizer that truncates to `max_length` as asked.
    fn truncating_tokenizer(
        &self,
        max_length: usize,
        second_only: bool,
        side: TruncationSide,
    ) -> Result<&Tokenizer> {
        let kind = usize::from(second_only) * 2 + usize::from(side == TruncationSide::Left);
        let tokenizer = self.truncating[kind].get_or_init(|| {
            let mut t = self.plain.clone();
            t.with_truncation(Some(TruncationParams {
                max_length,
                strategy: if second_only {
                    TruncationStrategy::OnlySecond
                } else {
                    TruncationStrategy::LongestFirst
                },
                direction: match side {
                    TruncationSide::Right => TruncationDirection::Right,
                    TruncationSide::Left => TruncationDirection::Left,
                },
                ..Default::default()
            }))
            .map_err(|e| e.to_string())?;
            Ok(t)
        });
        tokenizer.as_ref().map_err(|e| Error::Tokenizer(e.clone()))
    }

    /// Encodes text already split into words (as transformers' `is_split_into_words`),
    /// with special tokens; `word_ids` says which word each token came from. Past
    /// `max_len` tokens the last words are cut (always: a tagged sentence is trained
    /// and scored on what fits, as transformers does).
    pub fn encode_words(&self, words: &[String]) -> Result<Encoded> {
        let input = || {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            EncodeInput::Single(InputSequence::from(words))
        };
        let full = self
            .plain
            .encode_char_offsets(input(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let Some(max) = self.max_len.filter(|&max| full.len() > max) else {
            return Ok(Encoded::from_encoding(&full, None));
        };
        let cut = self
            .truncating_tokenizer(max, false, TruncationSide::Right)?
            .encode_char_offsets(input(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded::from_encoding(&cut, Some(full.len())))
    }

    /// The whole input, never truncated; special tokens only when asked.
    pub fn encode_plain(&self, input: &TextInput, add_special_tokens: bool) -> Result<Encoded> {
        let encoding = self
            .plain
            .encode_char_offsets(input.to_encode_input(), add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded::from_encoding(&encoding, None))
    }

    /// The text of token ids, special tokens left out when asked.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.plain
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The number of ids the vocabulary has (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.plain.get_vocab_size(true)
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
