//! Teacher-labelled data augmentation for task distillation, after TinyBERT: each
//! training text is copied with some of its tokens replaced by near neighbours, and
//! the teacher labels the copies (its soft targets, and its top class as the gold
//! label). TinyBERT draws single-piece words from BERT's masked-LM predictions and
//! longer words from GloVe neighbours; a checkpoint without a masked-LM head (such as
//! all-MiniLM-L6-v2) has neither, so every replacement here is a neighbour by cosine
//! in the teacher's own word-embedding table, of the same kind (a word start is
//! replaced by a word start, a continuation piece by a continuation piece).

use slimformer::rng::Rng;
use slimformer::tokenize::Encoded;
use slimformer::Result;
use std::collections::{BTreeSet, HashMap};

use candle_core::{Tensor, D};

/// TinyBERT's settings: the probability of replacing a token, and the neighbours a
/// replacement is drawn from.
pub const REPLACE_PROB: f32 = 0.4;
pub const NEIGHBOURS: usize = 15;

/// How a token sits in a word, by its vocabulary string: WordPiece marks a
/// continuation with `##`, byte-level BPE a word start with `Ġ`, SentencePiece with `▁`.
fn token_kind(token: &str) -> u8 {
    if token.starts_with("##") {
        1
    } else if token.starts_with('Ġ') || token.starts_with('▁') {
        2
    } else {
        0
    }
}

/// Replacement candidates for the tokens that occur in `examples`.
pub struct Neighbours {
    by_token: HashMap<u32, Vec<u32>>,
}

impl Neighbours {
    /// The `k` nearest tokens by cosine in `embeddings` [vocab, width] of each
    /// non-special token of `examples`, among the non-special tokens of its kind.
    pub fn of(
        embeddings: &Tensor,
        tokenizer: &tokenizers::Tokenizer,
        examples: &[&Encoded],
        k: usize,
    ) -> Result<Self> {
        let vocab = embeddings.dim(0)?;
        let special: BTreeSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let kind: Vec<Option<u8>> = (0..vocab as u32)
            .map(|id| {
                let token = tokenizer.id_to_token(id)?;
                (!special.contains(&id)).then(|| token_kind(&token))
            })
            .collect();
        let wanted: Vec<u32> = examples
            .iter()
            .flat_map(|e| e.ids.iter().zip(&e.special_tokens_mask))
            .filter(|(&id, &s)| s == 0 && kind.get(id as usize).is_some_and(|k| k.is_some()))
            .map(|(&id, _)| id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let table = embeddings.to_dtype(candle_core::DType::F32)?;
        let norms = table.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let unit = table.broadcast_div(&(norms + 1e-12)?)?;
        let mut by_token = HashMap::with_capacity(wanted.len());
        // Blocks of queries keep the similarity matrix to a few tens of megabytes.
        for block in wanted.chunks(512) {
            let ids = Tensor::from_vec(block.to_vec(), block.len(), embeddings.device())?;
            let sims: Vec<Vec<f32>> = unit.index_select(&ids, 0)?.matmul(&unit.t()?)?.to_vec2()?;
            for (&id, row) in block.iter().zip(sims) {
                let own = kind[id as usize];
                let mut candidates: Vec<(u32, f32)> = row
                    .into_iter()
                    .enumerate()
                    .filter(|&(other, _)| other != id as usize && kind[other] == own)
                    .map(|(other, s)| (other as u32, s))
                    .collect();
                let k = k.min(candidates.len());
                if k == 0 {
                    continue;
                }
                candidates.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                candidates.truncate(k);
                candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                by_token.insert(id, candidates.into_iter().map(|(t, _)| t).collect());
            }
        }
        Ok(Self { by_token })
    }

    /// The candidates for `token` (empty for a token with none).
    pub fn of_token(&self, token: u32) -> &[u32] {
        self.by_token.get(&token).map_or(&[], Vec::as_slice)
    }

    /// `copies` altered copies of `example`: each non-special token replaced with
    /// probability `prob` by one of its neighbours. A copy that came out unchanged is
    /// drawn again (up to 16 times), since it would only repeat the original.
    pub fn augment(
        &self,
        example: &Encoded,
        copies: usize,
        prob: f32,
        rng: &mut Rng,
    ) -> Vec<Encoded> {
        (0..copies)
            .map(|_| {
                let mut copy = example.clone();
                for _ in 0..16 {
                    let mut changed = false;
                    for (i, &id) in example.ids.iter().enumerate() {
                        let candidates = self.of_token(id);
                        if example.special_tokens_mask[i] == 1 || candidates.is_empty() {
                            continue;
                        }
                        if rng.next_f32() < prob {
                            copy.ids[i] = candidates[rng.below(candidates.len())];
                            changed = true;
                        }
                    }
                    if changed {
                        break;
                    }
                }
                // The strings would name the original tokens: the ids are what runs.
                copy.tokens.clear();
                copy
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn token_kinds_follow_each_tokenizers_marks() {
        assert_eq!(token_kind("##ing"), 1);
        assert_eq!(token_kind("Ġthe"), 2);
        assert_eq!(token_kind("▁the"), 2);
        assert_eq!(token_kind("the"), 0);
    }

    #[test]
    fn neighbours_are_the_nearest_by_cosine_of_the_same_kind() {
        // A WordPiece vocabulary of 6: [PAD] special, "a", "b", "c", "##x", "##y".
        let vocab: Vec<(&str, u32)> = vec![
            ("[PAD]", 0),
            ("a", 1),
            ("b", 2),
            ("c", 3),
            ("##x", 4),
            ("##y", 5),
        ];
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab.iter().map(|(t, i)| (t.to_string(), *i)).collect())
            .unk_token("[PAD]".into())
            .build()
            .unwrap();
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer
            .add_special_tokens(vec![tokenizers::AddedToken::from("[PAD]", true)])
            .unwrap();
        // "a" points along x; "b" nearly so; "c" away; "##x" the same way as "a".
        let embeddings = Tensor::new(
            &[
                [1.0f32, 1.0],
                [1.0, 0.0],
                [0.9, 0.1],
                [0.0, 1.0],
                [1.0, 0.0],
                [0.5, 0.5],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let example = Encoded {
            ids: vec![0, 1, 4],
            type_ids: vec![0; 3],
            tokens: vec![],
            offsets: vec![(0, 0); 3],
            special_tokens_mask: vec![1, 0, 0],
            sequence_ids: vec![None, Some(0), Some(0)],
            word_ids: vec![None, Some(0), Some(0)],
            truncated_from: None,
        };
        let n = Neighbours::of(&embeddings, &tokenizer, &[&example], 2).unwrap();
        assert_eq!(n.of_token(1), &[2, 3]);
        assert_eq!(n.of_token(4), &[5]);
        assert!(
            n.of_token(0).is_empty(),
            "special tokens are never replaced"
        );

        let mut rng = Rng::new(3);
        let copies = n.augment(&example, 20, 0.4, &mut rng);
        assert_eq!(copies.len(), 20);
        for c in &copies {
            assert_eq!(c.ids[0], 0);
            assert!([1, 2, 3].contains(&c.ids[1]) && [4, 5].contains(&c.ids[2]));
            assert_ne!(c.ids, example.ids, "a copy differs from its original");
        }
    }
}
