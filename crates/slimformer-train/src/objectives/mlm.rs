//! Masked language modelling (BERT, RoBERTa, ALBERT, DistilBERT): which tokens to
//! predict and what the model sees in their place.
//!
//! 15% of the non-special tokens are selected (all pieces of a word together with
//! whole-word masking); of those 80% become the mask token, 10% a random non-special
//! token and 10% stay as they are. Labels hold the original id at selected positions
//! and [`IGNORE`] elsewhere. Masks are drawn once per example (static, BERT: the same
//! every epoch) or anew every time (dynamic, RoBERTa).

use slimformer::rng::Rng;

/// The label of a position that is not predicted (as in transformers).
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone)]
pub struct MlmConfig {
    /// Share of the non-special tokens (or words) selected: 0.15.
    pub select_prob: f32,
    /// Of the selected, the share replaced by the mask token: 0.8.
    pub mask_prob: f32,
    /// Of the selected, the share replaced by a random token: 0.1 (the rest unchanged).
    pub random_prob: f32,
    pub mask_token_id: u32,
    /// The ids a random replacement is drawn from: the non-special vocabulary.
    pub random_ids: Vec<u32>,
    /// Select whole words (a token and its continuation pieces) instead of tokens.
    pub whole_word: bool,
    pub mode: MaskingMode,
}

/// The ids below `vocab` that are not the tokenizer's special tokens: what a
/// random replacement is drawn from ([`MlmConfig::random_ids`]).
pub fn non_special_ids(tokenizer: &tokenizers::Tokenizer, vocab: u32) -> Vec<u32> {
    let specials: std::collections::BTreeSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| *id)
        .collect();
    (0..vocab).filter(|id| !specials.contains(id)).collect()
}

impl MlmConfig {
    /// transformers' defaults (15%, 80/10/10), token-level, dynamic.
    pub fn new(mask_token_id: u32, random_ids: Vec<u32>) -> Self {
        Self {
            select_prob: 0.15,
            mask_prob: 0.8,
            random_prob: 0.1,
            mask_token_id,
            random_ids,
            whole_word: false,
            mode: MaskingMode::Dynamic,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskingMode {
    /// BERT: each example's mask comes from a generator seeded by (seed, example index),
    /// so every epoch sees the same mask.
    Static { seed: u64 },
    /// RoBERTa: drawn from the run's generator each time the example is used.
    Dynamic,
}

/// One example after masking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedExample {
    pub input_ids: Vec<u32>,
    /// Original id where selected, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
}

/// How a tokenizer marks word boundaries, for whole-word masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordBoundary {
    /// WordPiece: continuation pieces start with `##`.
    ContinuationPrefix,
    /// Metaspace (`▁`) or byte-level (`Ġ`): a word's first piece starts with the marker.
    StartMarker,
}

impl WordBoundary {
    /// `##` pieces mean WordPiece; otherwise start markers.
    pub fn detect<S: AsRef<str>>(tokens: &[S]) -> Self {
        if tokens.iter().any(|t| t.as_ref().starts_with("##")) {
            WordBoundary::ContinuationPrefix
        } else {
            WordBoundary::StartMarker
        }
    }
}

/// Whether each token starts a word. Special tokens are words of their own, and so
/// is the first token after one (a text's first word often lacks the start marker).
pub fn word_starts<S: AsRef<str>>(
    tokens: &[S],
    special: &[bool],
    boundary: WordBoundary,
) -> Vec<bool> {
    (0..tokens.len())
        .map(|i| {
            let t = tokens[i].as_ref();
            if special[i] || i == 0 || special[i - 1] {
                return true;
            }
            match boundary {
                WordBoundary::ContinuationPrefix => !t.starts_with("##"),
                WordBoundary::StartMarker => t.starts_with('▁') || t.starts_with('Ġ'),
            }
        })
        .collect()
}

/// Masks one example. `special[i]`: never selected. `word_starts` is needed only with
/// whole-word masking (`None` there means every token is a word). `index` is the
/// example's index in the corpus (static masking), `rng` the run's generator (dynamic).
pub fn mask_example(
    cfg: &MlmConfig,
    ids: &[u32],
    special: &[bool],
    word_starts: Option<&[bool]>,
    index: u64,
    rng: &mut Rng,
) -> MaskedExample {
    match cfg.mode {
        MaskingMode::Static { seed } => {
            let mut own = Rng::new(example_seed(seed, index));
            mask_with(cfg, ids, special, word_starts, &mut own)
        }
        MaskingMode::Dynamic => mask_with(cfg, ids, special, word_starts, rng),
    }
}

/// A seed per (run seed, example), well mixed so neighbouring examples differ.
pub fn example_seed(seed: u64, index: u64) -> u64 {
    Rng::new(seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

fn mask_with(
    cfg: &MlmConfig,
    ids: &[u32],
    special: &[bool],
    word_starts: Option<&[bool]>,
    rng: &mut Rng,
) -> MaskedExample {
    assert_eq!(
        ids.len(),
        special.len(),
        "ids and special mask differ in length"
    );
    let mut selected = vec![false; ids.len()];
    let mut word_selected = false;
    for i in 0..ids.len() {
        if special[i] {
            continue;
        }
        let starts = !cfg.whole_word || word_starts.is_none_or(|w| w[i]);
        if starts {
            word_selected = rng.next_f32() < cfg.select_prob;
        }
        selected[i] = word_selected;
    }
    let mut input_ids = ids.to_vec();
    let mut labels = vec![IGNORE; ids.len()];
    for i in (0..ids.len()).filter(|&i| selected[i]) {
        labels[i] = ids[i] as i64;
        let r = rng.next_f32();
        if r < cfg.mask_prob {
            input_ids[i] = cfg.mask_token_id;
        } else if r < cfg.mask_prob + cfg.random_prob && !cfg.random_ids.is_empty() {
            input_ids[i] = cfg.random_ids[rng.below(cfg.random_ids.len())];
        }
    }
    MaskedExample { input_ids, labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: u32 = 4;
    const VOCAB: u32 = 1000;

    fn corpus(rng: &mut Rng, n: usize) -> (Vec<u32>, Vec<bool>) {
        // 0..5 are special; every 50th token is a special one.
        let ids: Vec<u32> = (0..n)
            .map(|i| {
                if i % 50 == 0 {
                    2
                } else {
                    5 + rng.below(VOCAB as usize - 5) as u32
                }
            })
            .collect();
        let special = ids.iter().map(|&i| i < 5).collect();
        (ids, special)
    }

    fn config(mode: MaskingMode) -> MlmConfig {
        MlmConfig {
            mode,
            ..MlmConfig::new(MASK, (5..VOCAB).collect())
        }
    }

    #[test]
    fn masking_statistics_match_15_and_80_10_10() {
        let mut rng = Rng::new(1);
        let (ids, special) = corpus(&mut rng, 200_000);
        let m = mask_example(
            &config(MaskingMode::Dynamic),
            &ids,
            &special,
            None,
            0,
            &mut rng,
        );
        let candidates = special.iter().filter(|s| !**s).count() as f64;
        let selected: Vec<usize> = (0..ids.len()).filter(|&i| m.labels[i] != IGNORE).collect();
        let n = selected.len() as f64;
        let masked = selected.iter().filter(|&&i| m.input_ids[i] == MASK).count() as f64;
        let kept = selected
            .iter()
            .filter(|&&i| m.input_ids[i] == ids[i])
            .count() as f64;
        let random = n - masked - kept;
        let (sel, mk, rd, kp) = (n / candidates, masked / n, random / n, kept / n);
        eprintln!("selected {sel:.4}, mask {mk:.4}, random {rd:.4}, unchanged {kp:.4}");
        assert!((sel - 0.15).abs() < 0.005, "selected {sel}");
        assert!((mk - 0.8).abs() < 0.01, "mask {mk}");
        // A random replacement equal to the original (1 in 995) counts as unchanged.
        assert!((rd - 0.1).abs() < 0.01, "random {rd}");
        assert!((kp - 0.1).abs() < 0.01, "unchanged {kp}");
        for i in 0..ids.len() {
            if special[i] {
                assert_eq!(
                    (m.input_ids[i], m.labels[i]),
                    (ids[i], IGNORE),
                    "special {i}"
                );
            } else if m.labels[i] == IGNORE {
                assert_eq!(m.input_ids[i], ids[i]);
            } else {
                assert_eq!(m.labels[i], ids[i] as i64);
                assert!(
                    m.input_ids[i] >= 4,
                    "random replacement must not be special"
                );
            }
        }
    }

    #[test]
    fn static_masks_repeat_dynamic_differ() {
        let mut rng = Rng::new(2);
        let (ids, special) = corpus(&mut rng, 500);
        let stat = config(MaskingMode::Static { seed: 9 });
        let a = mask_example(&stat, &ids, &special, None, 3, &mut rng);
        let b = mask_example(&stat, &ids, &special, None, 3, &mut rng);
        let other = mask_example(&stat, &ids, &special, None, 4, &mut rng);
        assert_eq!(a, b, "static masks must be the same every epoch");
        assert_ne!(a, other, "different examples get different masks");
        let dynamic = config(MaskingMode::Dynamic);
        let c = mask_example(&dynamic, &ids, &special, None, 3, &mut rng);
        let d = mask_example(&dynamic, &ids, &special, None, 3, &mut rng);
        assert_ne!(c, d, "dynamic masks are drawn anew");
        // ... but repeat exactly from the same run seed.
        let (mut r1, mut r2) = (Rng::new(5), Rng::new(5));
        assert_eq!(
            mask_example(&dynamic, &ids, &special, None, 0, &mut r1),
            mask_example(&dynamic, &ids, &special, None, 0, &mut r2)
        );
    }

    #[test]
    fn whole_words_are_masked_together() {
        let wordpiece = [
            "[CLS]", "un", "##believ", "##able", "cat", "##s", "run", "[SEP]",
        ];
        let special: Vec<bool> = wordpiece.iter().map(|t| t.starts_with('[')).collect();
        let boundary = WordBoundary::detect(&wordpiece);
        assert_eq!(boundary, WordBoundary::ContinuationPrefix);
        let starts = word_starts(&wordpiece, &special, boundary);
        assert_eq!(starts, [true, true, false, false, true, false, true, true]);
        let bpe = ["<s>", "Hello", "Ġwor", "ld", "Ġ!", "</s>"];
        let sp: Vec<bool> = bpe.iter().map(|t| t.starts_with('<')).collect();
        assert_eq!(
            word_starts(&bpe, &sp, WordBoundary::detect(&bpe)),
            [true, true, true, false, true, true]
        );
        let meta = ["[CLS]", "▁the", "▁cat", "s", "[SEP]"];
        let sp: Vec<bool> = meta.iter().map(|t| t.starts_with('[')).collect();
        assert_eq!(
            word_starts(&meta, &sp, WordBoundary::StartMarker),
            [true, true, true, false, true]
        );

        // Statistics over many words: pieces of a word are selected all or none.
        let mut rng = Rng::new(3);
        let n = 30_000;
        let ids: Vec<u32> = (0..n).map(|_| 5 + rng.below(900) as u32).collect();
        let special = vec![false; n];
        let starts: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let cfg = MlmConfig {
            whole_word: true,
            ..config(MaskingMode::Dynamic)
        };
        let m = mask_example(&cfg, &ids, &special, Some(&starts), 0, &mut rng);
        let mut words = 0;
        for w in (0..n).step_by(3) {
            let sel: Vec<bool> = (w..w + 3).map(|i| m.labels[i] != IGNORE).collect();
            assert!(
                sel.iter().all(|s| *s == sel[0]),
                "word at {w} partly selected"
            );
            words += sel[0] as usize;
        }
        let share = words as f64 / (n / 3) as f64;
        assert!((share - 0.15).abs() < 0.015, "words selected {share}");
    }
}
