//! Training a tokenizer for a family from plain-text files, and saving it the way
//! HF `transformers` expects (`tokenizer.json`, `tokenizer_config.json`,
//! `special_tokens_map.json`).
//!
//! The pipelines mirror the ones `scripts/make_fixtures.py` trains for the test
//! fixtures:
//!
//! | family            | model           | normalizer                 | pre-tokenizer | post-processor |
//! |-------------------|-----------------|----------------------------|---------------|----------------|
//! | BERT, DistilBERT  | WordPiece (`##`)| BertNormalizer (lowercase) | Bert          | `[CLS] $A [SEP]` |
//! | RoBERTa           | byte-level BPE  | none                       | ByteLevel     | RobertaProcessing |
//! | ALBERT            | Unigram         | quotes, NFKD, StripAccents, Lowercase | WhitespaceSplit + Metaspace | `[CLS] $A [SEP]` |
//! | XLNet             | Unigram         | quotes, NFKD, StripAccents | WhitespaceSplit + Metaspace | `$A <sep> <cls>` |
//!
//! Special tokens come first in the vocabulary, with the ids of [`special_tokens`].
//!
//! ALBERT and XLNet differ from the fixtures (NFKC (+ Lowercase), Metaspace alone):
//! transformers 5 rebuilds the normalizer and pre-tokenizer of an `AlbertTokenizer` /
//! `XLNetTokenizer` from its own defaults (only the vocabulary and post-processor come
//! from `tokenizer.json`), so these are the pipelines it builds (two backticks or two
//! apostrophes become `"`, accents stripped, runs of whitespace collapsed), and
//! `AutoTokenizer` gives the same ids as `tokenizer.json`. They are also what the original ALBERT/XLNet
//! SentencePiece models do.
//!
//! # Determinism
//!
//! Training on the same files gives the same `tokenizer.json` on every run:
//!
//! - Words are counted by this module (in a `BTreeMap`), never in hash order.
//! - WordPiece and byte-level BPE are trained by the small BPE trainer below, not by
//!   `tokenizers`' `WordPieceTrainer` / `BpeTrainer`: those number the `##` forms of the
//!   alphabet in `HashMap` order (randomly seeded per map), and merge ties follow those
//!   ids; and equal-count heap entries of one pair pop in push order, which follows hash
//!   order too. Here the ids are fixed (specials, the sorted alphabet, its sorted `##`
//!   forms, then merges in order), and the best pair is the one with the highest count,
//!   ties going to the lowest ids. The WordPiece vocabulary is the BPE vocabulary.
//! - Unigram uses `tokenizers`' `UnigramTrainer`, fed the words in sorted order. Its
//!   scores still jitter in the last bits (parallel float sums), and the characters it
//!   adds at the end get scores `1e-4` apart in hash order. As in `make_fixtures.py`,
//!   pieces whose scores lie within `1e-3` of a neighbour share one score (the cluster
//!   mean, rounded to 4 decimals), and pieces sort by (score descending, piece).

use slimformer::hf_tokenizer::{special_tokens, SpecialToken};
use slimformer::models::Family;
use slimformer::{Error, Result};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::{BertNormalizer, Lowercase, Replace, Sequence, StripAccents, NFKD};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, NormalizerWrapper, OffsetReferential, OffsetType,
    PreTokenizedString, PreTokenizer, Tokenizer,
};

/// What to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerSpec {
    pub family: Family,
    /// Target size, special tokens included. BPE and WordPiece stop earlier when no
    /// pair is frequent enough; Unigram may end up a bit smaller.
    pub vocab_size: usize,
    /// BPE / WordPiece: merge only pairs seen at least this often (Unigram ignores it).
    pub min_frequency: u64,
    /// WordPiece: keep at most this many characters (the most frequent); the others
    /// become `[UNK]`. `None` keeps every character. Byte-level BPE always has 256.
    pub limit_alphabet: Option<usize>,
}

impl TokenizerSpec {
    pub fn new(family: Family, vocab_size: usize) -> Self {
        Self {
            family,
            vocab_size,
            min_frequency: 2,
            limit_alphabet: None,
        }
    }

    /// Trains on the lines of `files` (UTF-8 text).
    pub fn train(&self, files: &[PathBuf]) -> Result<Tokenizer> {
        let specials = special_tokens(self.family).all;
        if self.vocab_size <= specials.len() {
            return Err(Error::Config(format!(
                "vocab_size {} is too small: the {} special tokens alone take that much",
                self.vocab_size,
                specials.len()
            )));
        }
        let mut tok = pipeline(self.family)?;
        let words = count_words(&tok, files)?;
        match self.family {
            Family::Bert | Family::DistilBert => {
                let trained = train_bpe(&words, specials, &BTreeSet::new(), Some("##"), self)?;
                let vocab: tokenizers::models::bpe::Vocab = trained
                    .vocab
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| (t, i as u32))
                    .collect();
                let model = WordPiece::builder()
                    .vocab(vocab)
                    .unk_token("[UNK]".into())
                    .continuing_subword_prefix("##".into())
                    .max_input_chars_per_word(100)
                    .build()
                    .map_err(tok_err)?;
                tok.with_model(model);
            }
            Family::Roberta => {
                let alphabet: BTreeSet<char> = ByteLevel::alphabet().into_iter().collect();
                let trained = train_bpe(&words, specials, &alphabet, None, self)?;
                let vocab: tokenizers::models::bpe::Vocab = trained
                    .vocab
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| (t, i as u32))
                    .collect();
                let model = BPE::builder()
                    .vocab_and_merges(vocab, trained.merges)
                    .build()
                    .map_err(tok_err)?;
                tok.with_model(model);
            }
            Family::Albert | Family::XLNet => {
                let model = train_unigram(&words, specials, special_tokens(self.family).unk, self)?;
                tok.with_model(model);
            }
        }
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        tok.add_special_tokens(added).map_err(tok_err)?;
        for (i, s) in specials.iter().enumerate() {
            if tok.token_to_id(s) != Some(i as u32) {
                return Err(Error::Tokenizer(format!(
                    "special token {s} got id {:?}, expected {i}",
                    tok.token_to_id(s)
                )));
            }
        }
        Ok(tok)
    }
}

/// Trains `family`'s tokenizer on the lines of `files`, with default settings.
pub fn train_tokenizer(family: Family, files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    TokenizerSpec::new(family, vocab_size).train(files)
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// The family's normalizer, pre-tokenizer, post-processor and decoder, around a
/// placeholder model.
fn pipeline(family: Family) -> Result<Tokenizer> {
    let sp = special_tokens(family);
    let mut tok = Tokenizer::new(BPE::default());
    let template = |single: &str, pair: &str, tokens: &[SpecialToken]| {
        TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair))
            .map_err(tok_err)?
            .special_tokens(
                tokens
                    .iter()
                    .map(|t| (t.token.to_string(), t.id))
                    .collect::<Vec<_>>(),
            )
            .build()
            .map_err(tok_err)
    };
    let metaspace = || Metaspace::new('▁', PrependScheme::Always, true);
    match family {
        Family::Bert | Family::DistilBert => {
            tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
                .map_err(tok_err)?;
            tok.with_pre_tokenizer(Some(BertPreTokenizer));
            tok.with_post_processor(Some(template(
                "[CLS] $A [SEP]",
                "[CLS] $A [SEP] $B:1 [SEP]:1",
                &[sp.cls, sp.sep],
            )?));
            tok.with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
        }
        Family::Roberta => {
            tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
            tok.with_post_processor(Some(
                RobertaProcessing::new(
                    (sp.sep.token.into(), sp.sep.id),
                    (sp.cls.token.into(), sp.cls.id),
                )
                .trim_offsets(true)
                .add_prefix_space(false),
            ));
            tok.with_decoder(Some(ByteLevel::default()));
        }
        Family::Albert | Family::XLNet => {
            // What transformers' AlbertTokenizer / XLNetTokenizer build around the
            // vocabulary of tokenizer.json, so that AutoTokenizer gives the same ids.
            let mut steps: Vec<NormalizerWrapper> = vec![
                Replace::new("``", "\"").map_err(tok_err)?.into(),
                Replace::new("''", "\"").map_err(tok_err)?.into(),
                NFKD.into(),
                StripAccents.into(),
            ];
            if family == Family::Albert {
                steps.push(Lowercase.into());
            }
            tok.with_normalizer(Some(Sequence::new(steps)))
                .map_err(tok_err)?;
            tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
                WhitespaceSplit.into(),
                metaspace().into(),
            ])));
            tok.with_post_processor(Some(if family == Family::Albert {
                template(
                    "[CLS] $A [SEP]",
                    "[CLS] $A [SEP] $B:1 [SEP]:1",
                    &[sp.cls, sp.sep],
                )?
            } else {
                template(
                    "$A:0 <sep>:0 <cls>:2",
                    "$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2",
                    &[sp.sep, sp.cls],
                )?
            }));
            tok.with_decoder(Some(metaspace()));
        }
    }
    Ok(tok)
}

/// Counts the pre-tokenized words of every line of `files`, normalized and split by
/// `tok`'s normalizer and pre-tokenizer.
fn count_words(tok: &Tokenizer, files: &[PathBuf]) -> Result<BTreeMap<String, u64>> {
    if files.is_empty() {
        return Err(Error::Input(
            "no training files given for the tokenizer".into(),
        ));
    }
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read training text: {e}")))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(lines.len().div_ceil(256))
            .max(1);
        let chunk = lines.len().div_ceil(threads).max(1);
        let counted: Vec<Result<HashMap<String, u64>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = lines
                .chunks(chunk)
                .map(|part| scope.spawn(move || count_lines(tok, part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("tokenizer word counting panicked"))
                .collect()
        });
        let mut words_in_file = 0u64;
        for part in counted {
            for (word, n) in part.map_err(|e| Error::file(path, e))? {
                words_in_file += n;
                *total.entry(word).or_default() += n;
            }
        }
        if words_in_file == 0 {
            return Err(Error::file(
                path,
                "no text to train the tokenizer on (the file is empty)",
            ));
        }
    }
    Ok(total)
}

fn count_lines(tok: &Tokenizer, lines: &[&str]) -> Result<HashMap<String, u64>> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for line in lines {
        let mut normalized = NormalizedString::from(*line);
        if let Some(n) = tok.get_normalizer() {
            n.normalize(&mut normalized).map_err(tok_err)?;
        }
        let mut pre = PreTokenizedString::from(normalized);
        if let Some(p) = tok.get_pre_tokenizer() {
            p.pre_tokenize(&mut pre).map_err(tok_err)?;
        }
        for (word, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::None) {
            if !word.is_empty() {
                *counts.entry(word.to_string()).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

struct TrainedBpe {
    /// Tokens in id order.
    vocab: Vec<String>,
    merges: Vec<(String, String)>,
}

type Pair = (u32, u32);

/// A deterministic BPE trainer. `prefix` marks non-initial symbols (`##` for
/// WordPiece); `initial` characters are always in the alphabet.
fn train_bpe(
    words: &BTreeMap<String, u64>,
    specials: &[&str],
    initial: &BTreeSet<char>,
    prefix: Option<&str>,
    spec: &TokenizerSpec,
) -> Result<TrainedBpe> {
    let mut vocab = Vocab::with_specials(specials);
    let alphabet = alphabet(words, initial, spec.limit_alphabet);
    for c in &alphabet {
        vocab.intern(c.to_string());
    }
    if let Some(prefix) = prefix {
        for c in &alphabet {
            vocab.intern(format!("{prefix}{c}"));
        }
    }
    if vocab.tokens.len() > spec.vocab_size {
        return Err(Error::Config(format!(
            "vocab_size {} is too small: the special tokens and the {} characters of the \
             training text take {}; raise vocab_size{}",
            spec.vocab_size,
            alphabet.len(),
            vocab.tokens.len(),
            if prefix.is_some() {
                " or set limit_alphabet"
            } else {
                ""
            }
        )));
    }

    // Words as symbol ids (characters outside the alphabet are dropped, as in `tokenizers`).
    let mut symbols: Vec<Vec<u32>> = Vec::with_capacity(words.len());
    let mut counts: Vec<u64> = Vec::with_capacity(words.len());
    for (word, n) in words {
        let mut s = Vec::new();
        for (i, c) in word.chars().enumerate() {
            if !alphabet.contains(&c) {
                continue;
            }
            let token = match prefix {
                Some(p) if i > 0 => format!("{p}{c}"),
                _ => c.to_string(),
            };
            s.push(vocab.ids[&token]);
        }
        symbols.push(s);
        counts.push(*n);
    }

    let mut pairs = PairIndex::new(&symbols, &counts);
    let min_count = spec.min_frequency.max(1);
    let mut merges = Vec::new();
    while vocab.tokens.len() < spec.vocab_size {
        let Some((count, Reverse(pair))) = pairs.queue.pop_last() else {
            break;
        };
        if count < min_count {
            break;
        }
        let left = vocab.tokens[pair.0 as usize].clone();
        let right = vocab.tokens[pair.1 as usize].clone();
        let right_part = match prefix {
            Some(p) => right.strip_prefix(p).unwrap_or(&right),
            None => &right,
        };
        let new_id = vocab.intern(format!("{left}{right_part}"));
        merges.push((left, right));
        pairs.merge(pair, new_id, &mut symbols, &counts);
    }
    Ok(TrainedBpe {
        vocab: vocab.tokens,
        merges,
    })
}

/// Tokens in id order, and their ids.
struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// The special tokens first, at ids 0, 1, …
    fn with_specials(specials: &[&str]) -> Self {
        let tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        let ids = (0u32..).zip(&tokens).map(|(i, t)| (t.clone(), i)).collect();
        Self { tokens, ids }
    }

    /// The token's id, added at the end when it is new.
    fn intern(&mut self, token: String) -> u32 {
        if let Some(&id) = self.ids.get(&token) {
            return id;
        }
        let id = self.tokens.len() as u32;
        self.ids.insert(token.clone(), id);
        self.tokens.push(token);
        id
    }
}

/// The alphabet: the `initial` characters and every other one of the words (or
/// the most frequent, up to `limit` in all), sorted.
fn alphabet(
    words: &BTreeMap<String, u64>,
    initial: &BTreeSet<char>,
    limit: Option<usize>,
) -> BTreeSet<char> {
    let mut char_counts: BTreeMap<char, u64> = BTreeMap::new();
    for (word, n) in words {
        for c in word.chars() {
            *char_counts.entry(c).or_default() += n;
        }
    }
    let mut alphabet: BTreeSet<char> = initial.clone();
    let mut seen: Vec<(char, u64)> = char_counts
        .into_iter()
        .filter(|(c, _)| !initial.contains(c))
        .collect();
    if let Some(limit) = limit {
        seen.sort_by_key(|&(c, n)| (Reverse(n), c));
        seen.truncate(limit.saturating_sub(alphabet.len()));
    }
    alphabet.extend(seen.into_iter().map(|(c, _)| c));
    alphabet
}

/// Adjacent symbol pairs: their counts over the words, the words they occur in,
/// and a queue that pops the best pair (highest count, then lowest ids).
struct PairIndex {
    counts: HashMap<Pair, u64>,
    words: HashMap<Pair, Vec<usize>>,
    queue: BTreeSet<(u64, Reverse<Pair>)>,
}

impl PairIndex {
    fn new(symbols: &[Vec<u32>], word_counts: &[u64]) -> Self {
        let mut counts: HashMap<Pair, u64> = HashMap::new();
        let mut words: HashMap<Pair, Vec<usize>> = HashMap::new();
        for (w, s) in symbols.iter().enumerate() {
            for p in s.windows(2) {
                let pair = (p[0], p[1]);
                *counts.entry(pair).or_default() += word_counts[w];
                let list = words.entry(pair).or_default();
                if list.last() != Some(&w) {
                    list.push(w);
                }
            }
        }
        let queue = counts
            .iter()
            .map(|(&pair, &n)| (n, Reverse(pair)))
            .collect();
        Self {
            counts,
            words,
            queue,
        }
    }

    /// Replaces `pair` by `new_id` in every word that has it, and updates the
    /// counts, word lists and queue of the pairs that change.
    fn merge(&mut self, pair: Pair, new_id: u32, symbols: &mut [Vec<u32>], word_counts: &[u64]) {
        // Old counts of the pairs whose counts change, taken out of the queue.
        let mut touched: HashMap<Pair, u64> = HashMap::new();
        let mut word_list = self.words.remove(&pair).unwrap_or_default();
        word_list.sort_unstable();
        word_list.dedup();
        for w in word_list {
            let s = &mut symbols[w];
            if !s.windows(2).any(|p| (p[0], p[1]) == pair) {
                continue;
            }
            let n = word_counts[w];
            for p in s.windows(2) {
                let q = (p[0], p[1]);
                let c = self.counts.get_mut(&q).expect("pair count");
                touched.entry(q).or_insert(*c);
                *c -= n;
            }
            let mut merged = Vec::with_capacity(s.len());
            let mut i = 0;
            while i < s.len() {
                if i + 1 < s.len() && (s[i], s[i + 1]) == pair {
                    merged.push(new_id);
                    i += 2;
                } else {
                    merged.push(s[i]);
                    i += 1;
                }
            }
            *s = merged;
            for p in s.windows(2) {
                let q = (p[0], p[1]);
                let c = self.counts.entry(q).or_default();
                touched.entry(q).or_insert(*c);
                *c += n;
                if q.0 == new_id || q.1 == new_id {
                    let list = self.words.entry(q).or_default();
                    if list.last() != Some(&w) {
                        list.push(w);
                    }
                }
            }
        }
        touched.entry(pair).or_insert(0);
        for (q, old) in touched {
            if q != pair {
                self.queue.remove(&(old, Reverse(q)));
            }
            match self.counts.get(&q).copied() {
                Some(0) | None => {
                    self.counts.remove(&q);
                    self.words.remove(&q);
                }
                Some(n) => {
                    self.queue.insert((n, Reverse(q)));
                }
            }
        }
    }
}

/// Unigram with `tokenizers`' trainer, made reproducible (see the module docs).
fn train_unigram(
    words: &BTreeMap<String, u64>,
    specials: &[&str],
    unk: SpecialToken,
    spec: &TokenizerSpec,
) -> Result<Unigram> {
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(spec.vocab_size.min(u32::MAX as usize) as u32)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .unk_token(Some(unk.token.to_string()))
        .build()
        .map_err(tok_err)?;
    let sentences: Vec<(String, u32)> = words
        .iter()
        .map(|(w, n)| (w.clone(), (*n).min(u32::MAX as u64) as u32))
        .collect();
    let mut model = Unigram::default();
    trainer
        .do_train(sentences, &mut model)
        .map_err(|e| Error::Config(format!("training the Unigram tokenizer: {e}")))?;

    let trained: Vec<(String, f64)> = model.iter().cloned().collect();
    let n_sp = specials.len();
    if trained.len() < n_sp
        || trained[..n_sp]
            .iter()
            .map(|(p, _)| p.as_str())
            .ne(specials.iter().copied())
    {
        return Err(Error::Tokenizer(
            "Unigram trainer did not put the special tokens first".into(),
        ));
    }
    let mut items: Vec<(String, f64)> = trained[n_sp..].to_vec();
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut rest: Vec<(String, f64)> = Vec::with_capacity(items.len());
    let mut start = 0;
    for i in 1..=items.len() {
        if i == items.len() || items[i - 1].1 - items[i].1 >= 1e-3 {
            let cluster = &items[start..i];
            let mean = cluster.iter().map(|(_, s)| s).sum::<f64>() / cluster.len() as f64;
            let mean = (mean * 1e4).round() / 1e4;
            rest.extend(cluster.iter().map(|(p, _)| (p.clone(), mean)));
            start = i;
        }
    }
    rest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let vocab: Vec<(String, f64)> = specials
        .iter()
        .map(|s| (s.to_string(), 0.0))
        .chain(rest)
        .collect();
    Unigram::from(vocab, Some(unk.id as usize), false).map_err(tok_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use slimformer::hf_tokenizer::{
        save_tokenizer, SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE,
    };
    use tokenizers::EncodeInput;

    const CORPUS: &str = "\
The quick brown fox jumps over the lazy dog. The dog did not seem to mind.
Machine learning models learn patterns from data. A transformer encoder reads the sentence.
In the old town there is a small café where the owner serves coffee, tea and cakes.
Prices went up again this year: a loaf of bread costs $3.50, and the stadium cost 1,000,000.
How old are you? I am six years old. Where do you live? We live in the city near the park.
Tokyo (東京) is the capital of Japan. Many travellers say déjà vu when they return.
Children were playing near the wooden bridge while their parents talked about work.
Hello world! Transformers are neural networks. Attention is all you need.
";

    fn corpus_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.txt");
        std::fs::write(&path, CORPUS.repeat(3)).unwrap();
        (dir, path)
    }

    fn encode(tok: &Tokenizer, input: EncodeInput) -> (Vec<String>, Vec<u32>, Vec<u32>) {
        let e = tok.encode(input, true).unwrap();
        (
            e.get_tokens().to_vec(),
            e.get_ids().to_vec(),
            e.get_type_ids().to_vec(),
        )
    }

    fn check_family(family: Family) {
        let (dir, corpus) = corpus_dir();
        let sp = special_tokens(family);
        let tok = train_tokenizer(family, std::slice::from_ref(&corpus), 300).unwrap();
        let again = train_tokenizer(family, std::slice::from_ref(&corpus), 300).unwrap();
        assert_eq!(
            tok.to_string(true).unwrap(),
            again.to_string(true).unwrap(),
            "{family:?}: training is not deterministic"
        );
        assert!(
            tok.get_vocab_size(true) > 100,
            "{family:?}: vocab too small"
        );
        assert!(tok.get_vocab_size(true) <= 300);

        let out = dir.path().join("tok");
        save_tokenizer(&tok, family, &out, 128).unwrap();
        for f in [
            "tokenizer.json",
            TOKENIZER_CONFIG_FILE,
            SPECIAL_TOKENS_MAP_FILE,
        ] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(TOKENIZER_CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(config["model_max_length"], 128);
        assert_eq!(config["mask_token"], sp.mask.token);
        let side = if family == Family::XLNet {
            "left"
        } else {
            "right"
        };
        assert_eq!(config["padding_side"], side);

        let loaded = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        assert!(loaded.get_padding().is_none() && loaded.get_truncation().is_none());
        assert_eq!(
            loaded.to_string(true).unwrap(),
            tok.to_string(true).unwrap()
        );
        for (i, s) in sp.all.iter().enumerate() {
            assert_eq!(loaded.token_to_id(s), Some(i as u32), "{family:?} {s}");
        }

        let (tokens, ids, types) = encode(&loaded, "hello world".into());
        let (ptokens, pids, ptypes) = encode(&loaded, ("hello world", "the dog").into());
        let n = tokens.len();
        let na = n - 2;
        let nb = pids.len() - n - 1;
        assert!(na >= 2 && nb >= 2, "{tokens:?} {ptokens:?}");
        match family {
            Family::XLNet => {
                assert_eq!(&ids[n - 2..], &[sp.sep.id, sp.cls.id]);
                assert_eq!(&types[n - 2..], &[0, 2]);
                assert!(types[..n - 2].iter().all(|&t| t == 0));
                let m = pids.len();
                assert_eq!(pids[na], sp.sep.id);
                assert_eq!(&pids[m - 2..], &[sp.sep.id, sp.cls.id]);
                assert!(ptypes[..=na].iter().all(|&t| t == 0));
                assert!(ptypes[na + 1..m - 1].iter().all(|&t| t == 1));
                assert_eq!(ptypes[m - 1], 2);
            }
            _ => {
                assert_eq!(ids[0], sp.cls.id);
                assert_eq!(ids[n - 1], sp.sep.id);
                assert!(types.iter().all(|&t| t == 0));
                assert_eq!(pids[0], sp.cls.id);
                assert_eq!(pids[n - 1], sp.sep.id);
                assert_eq!(*pids.last().unwrap(), sp.sep.id);
                if family == Family::Roberta {
                    // <s> A </s></s> B </s>
                    assert_eq!(pids[n], sp.sep.id);
                } else {
                    assert!(ptypes[..n].iter().all(|&t| t == 0));
                    assert!(ptypes[n..].iter().all(|&t| t == 1));
                }
            }
        }
        let decoded = loaded.decode(&ids, true).unwrap();
        assert_eq!(decoded.trim(), "hello world", "{family:?}");

        // A character never seen in training.
        let (tokens, ids, _) = encode(&loaded, "hello ☃".into());
        if family == Family::Roberta {
            // Byte-level: no unknown characters; the snowman is 3 byte symbols.
            assert!(!ids.contains(&sp.unk.id), "{tokens:?}");
            assert_eq!(loaded.decode(&ids, true).unwrap(), "hello ☃");
        } else {
            assert!(ids.contains(&sp.unk.id), "{family:?}: {tokens:?}");
        }
    }

    #[test]
    fn bert() {
        check_family(Family::Bert);
    }

    #[test]
    fn distilbert() {
        check_family(Family::DistilBert);
    }

    #[test]
    fn roberta() {
        check_family(Family::Roberta);
    }

    #[test]
    fn albert() {
        check_family(Family::Albert);
    }

    #[test]
    fn xlnet() {
        check_family(Family::XLNet);
    }

    #[test]
    fn wordpiece_splits_words_with_continuation_prefix() {
        let (_dir, corpus) = corpus_dir();
        let tok = train_tokenizer(Family::Bert, &[corpus], 300).unwrap();
        let e = tok.encode("Transformers doglike café", false).unwrap();
        let tokens = e.get_tokens();
        assert!(tokens.iter().any(|t| t.starts_with("##")), "{tokens:?}");
        assert!(!tokens.contains(&"[UNK]".to_string()), "{tokens:?}");
        // Lowercased, accents stripped.
        assert_eq!(
            tok.decode(e.get_ids(), true).unwrap(),
            "transformers doglike cafe"
        );
    }

    #[test]
    fn sentencepiece_families_strip_accents_and_collapse_spaces() {
        let (_dir, corpus) = corpus_dir();
        for family in [Family::Albert, Family::XLNet] {
            let tok = train_tokenizer(family, std::slice::from_ref(&corpus), 300).unwrap();
            let ids = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
            assert_eq!(
                ids("Café  naïve\tdéjà"),
                ids("Cafe naive deja"),
                "{family:?}"
            );
            assert_eq!(ids("``quoted''"), ids("\"quoted\""), "{family:?}");
            let lower = ids("the dog") == ids("THE DOG");
            assert_eq!(lower, family == Family::Albert, "{family:?}");
        }
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.txt");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n  \n").unwrap();
        for family in Family::ALL {
            for path in [&missing, &empty] {
                let err = train_tokenizer(family, std::slice::from_ref(path), 300).unwrap_err();
                match &err {
                    Error::File { path: p, .. } => assert_eq!(p, path),
                    other => panic!("{family:?}: unexpected error {other}"),
                }
                assert!(err.to_string().contains(path.to_str().unwrap()));
            }
        }
        assert!(train_tokenizer(Family::Bert, &[], 300).is_err());
    }

    #[test]
    fn too_small_vocab_is_a_clear_error() {
        let (_dir, corpus) = corpus_dir();
        let err = train_tokenizer(Family::Bert, &[corpus], 20).unwrap_err();
        assert!(
            err.to_string().contains("vocab_size 20 is too small"),
            "{err}"
        );
    }

    #[test]
    fn special_token_ids_per_family() {
        let b = special_tokens(Family::Bert);
        assert_eq!(
            (b.pad.id, b.unk.id, b.cls.id, b.sep.id, b.mask.id),
            (0, 1, 2, 3, 4)
        );
        let r = special_tokens(Family::Roberta);
        assert_eq!(
            (r.cls.token, r.pad.id, r.sep.id, r.unk.id),
            ("<s>", 1, 2, 3)
        );
        assert_eq!(
            r.mask,
            SpecialToken {
                token: "<mask>",
                id: 4
            }
        );
        let a = special_tokens(Family::Albert);
        assert_eq!(
            (a.pad.id, a.unk.id, a.cls.id, a.sep.id, a.mask.id),
            (0, 1, 2, 3, 4)
        );
        let x = special_tokens(Family::XLNet);
        assert_eq!(
            (x.unk.id, x.cls.id, x.sep.id, x.pad.id, x.mask.id),
            (0, 3, 4, 5, 6)
        );
    }
}
