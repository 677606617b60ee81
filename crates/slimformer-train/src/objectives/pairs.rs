//! Sentence-pair objectives: next-sentence prediction (BERT) and sentence-order
//! prediction (ALBERT).
//!
//! The corpus holds one paragraph per line, documents separated by an empty line.
//! Each document's (tokenized) paragraphs are gathered into chunks of up to
//! `max_tokens` tokens; a chunk is split at a paragraph boundary (or inside its only
//! paragraph) into segments A and B.
//! - NSP: half the time B is the actual continuation (label 0, "IsNext" as in
//!   transformers), otherwise B is taken from a random other document (label 1).
//! - SOP: half the time A B in order (label 0), otherwise swapped: B A (label 1).
//!
//! Over-long pairs lose tokens at the start of A and the end of B, so that A B stay
//! adjacent text.

use slimformer::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairTask {
    NextSentence,
    SentenceOrder,
}

/// Label 0: A then B is the real order (IsNext / in order); 1: not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePair {
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    pub label: u32,
}

/// Documents of paragraphs: one paragraph per non-empty line, empty lines between
/// documents.
pub fn parse_corpus(text: &str) -> Vec<Vec<String>> {
    let mut docs = Vec::new();
    let mut doc = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !doc.is_empty() {
                docs.push(std::mem::take(&mut doc));
            }
        } else {
            doc.push(line.to_string());
        }
    }
    if !doc.is_empty() {
        docs.push(doc);
    }
    docs
}

/// Pairs from tokenized documents (`docs[d][p]`: paragraph p of document d, without
/// special tokens). `max_tokens` bounds `a.len() + b.len()` (the sequence length less
/// the special tokens, 3 for `[CLS] A [SEP] B [SEP]`).
pub fn make_pairs(
    docs: &[Vec<Vec<u32>>],
    task: PairTask,
    max_tokens: usize,
    rng: &mut Rng,
) -> Vec<SentencePair> {
    assert!(max_tokens >= 2, "a pair needs room for two tokens");
    // Paragraphs longer than a whole pair are cut into pieces first.
    let docs: Vec<Vec<&[u32]>> = docs
        .iter()
        .map(|d| {
            d.iter()
                .flat_map(|p| p.chunks(max_tokens))
                .filter(|p| !p.is_empty())
                .collect()
        })
        .collect();
    let mut pairs = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        let mut chunk: Vec<&[u32]> = Vec::new();
        let mut len = 0;
        for (i, para) in doc.iter().enumerate() {
            chunk.push(para);
            len += para.len();
            if i + 1 == doc.len() || len >= max_tokens {
                if let Some(pair) = pair_from_chunk(&docs, d, &chunk, task, max_tokens, rng) {
                    pairs.push(pair);
                }
                chunk.clear();
                len = 0;
            }
        }
    }
    pairs
}

fn pair_from_chunk(
    docs: &[Vec<&[u32]>],
    d: usize,
    chunk: &[&[u32]],
    task: PairTask,
    max_tokens: usize,
    rng: &mut Rng,
) -> Option<SentencePair> {
    let (mut a, mut b): (Vec<u32>, Vec<u32>) = if chunk.len() >= 2 {
        let a_end = 1 + rng.below(chunk.len() - 1);
        (chunk[..a_end].concat(), chunk[a_end..].concat())
    } else {
        let only = chunk[0];
        if only.len() < 2 {
            return None;
        }
        let cut = 1 + rng.below(only.len() - 1);
        (only[..cut].to_vec(), only[cut..].to_vec())
    };
    let swap = rng.next_f32() < 0.5;
    let label = match task {
        PairTask::NextSentence if swap && docs.len() > 1 => {
            let mut other = rng.below(docs.len() - 1);
            if other >= d {
                other += 1;
            }
            let room = max_tokens.saturating_sub(a.len()).max(1);
            let doc = &docs[other];
            let start = rng.below(doc.len());
            b = doc[start..].concat();
            b.truncate(room);
            1
        }
        PairTask::SentenceOrder if swap => {
            std::mem::swap(&mut a, &mut b);
            1
        }
        _ => 0,
    };
    // Trim the longer side: A from its start, B from its end (keeps A B adjacent).
    while a.len() + b.len() > max_tokens {
        let a_first = if label == 1 && task == PairTask::SentenceOrder {
            // Swapped: the real text is B A, so trim B's start and A's end.
            if a.len() > b.len() {
                a.pop();
            } else {
                b.remove(0);
            }
            continue;
        } else {
            a.len() > b.len()
        };
        if a_first {
            a.remove(0);
        } else {
            b.pop();
        }
    }
    if a.is_empty() || b.is_empty() {
        return None;
    }
    Some(SentencePair { a, b, label })
}

/// `[CLS] A [SEP] B [SEP]`: ids, token types (0 for A, 1 for B) and special-token flags.
pub fn pair_input(pair: &SentencePair, cls: u32, sep: u32) -> (Vec<u32>, Vec<u32>, Vec<bool>) {
    let mut ids = vec![cls];
    ids.extend(&pair.a);
    ids.push(sep);
    let type0 = ids.len();
    ids.extend(&pair.b);
    ids.push(sep);
    let types = (0..ids.len()).map(|i| (i >= type0) as u32).collect();
    let special = (0..ids.len())
        .map(|i| i == 0 || i == type0 - 1 || i == ids.len() - 1)
        .collect();
    (ids, types, special)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Document d, paragraph p, token k has id d·10000 + p·100 + k: provenance is in the id.
    fn docs(rng: &mut Rng) -> Vec<Vec<Vec<u32>>> {
        (0..20)
            .map(|d| {
                (0..1 + rng.below(8))
                    .map(|p| {
                        (0..1 + rng.below(30))
                            .map(|k| (d * 10000 + p * 100 + k) as u32)
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    fn doc_of(t: u32) -> u32 {
        t / 10000
    }

    /// Whether `tokens` is one stretch of its document's text.
    fn contiguous(docs: &[Vec<Vec<u32>>], tokens: &[u32]) -> bool {
        let stream: Vec<u32> = docs[doc_of(tokens[0]) as usize].concat();
        stream.windows(tokens.len()).any(|w| w == tokens)
    }

    #[test]
    fn corpus_format() {
        let docs = parse_corpus("a b.\nc d.\n\n\nnext doc\n  \nthird\n");
        assert_eq!(
            docs,
            vec![vec!["a b.", "c d."], vec!["next doc"], vec!["third"]]
        );
    }

    #[test]
    fn sop_negatives_are_swapped_consecutive_segments() {
        let mut rng = Rng::new(4);
        let docs = docs(&mut rng);
        let pairs = make_pairs(&docs, PairTask::SentenceOrder, 40, &mut rng);
        assert!(pairs.len() > 30, "{} pairs", pairs.len());
        let negatives = pairs.iter().filter(|p| p.label == 1).count();
        assert!(negatives > pairs.len() / 4 && negatives < 3 * pairs.len() / 4);
        for p in &pairs {
            assert!(p.a.len() + p.b.len() <= 40 && !p.a.is_empty() && !p.b.is_empty());
            let same_doc = p.a.iter().chain(&p.b).all(|t| doc_of(*t) == doc_of(p.a[0]));
            assert!(same_doc, "SOP pairs come from one document");
            let real_order = if p.label == 0 {
                [p.a.clone(), p.b.clone()].concat()
            } else {
                [p.b.clone(), p.a.clone()].concat()
            };
            assert!(contiguous(&docs, &real_order), "{p:?} not consecutive");
        }
    }

    #[test]
    fn nsp_negatives_come_from_another_document() {
        let mut rng = Rng::new(5);
        let docs = docs(&mut rng);
        let pairs = make_pairs(&docs, PairTask::NextSentence, 40, &mut rng);
        let negatives = pairs.iter().filter(|p| p.label == 1).count();
        assert!(negatives > pairs.len() / 4 && negatives < 3 * pairs.len() / 4);
        for p in &pairs {
            assert!(p.a.len() + p.b.len() <= 40);
            let da = doc_of(p.a[0]);
            assert!(p.a.iter().all(|t| doc_of(*t) == da));
            if p.label == 0 {
                assert!(
                    contiguous(&docs, &[p.a.clone(), p.b.clone()].concat()),
                    "{p:?}"
                );
            } else {
                let db = doc_of(p.b[0]);
                assert_ne!(da, db, "random next segment from the same document");
                assert!(p.b.iter().all(|t| doc_of(*t) == db));
                assert!(contiguous(&docs, &p.a) && contiguous(&docs, &p.b));
            }
        }
        let (ids, types, special) = pair_input(&pairs[0], 2, 3);
        let n = pairs[0].a.len();
        assert_eq!((ids[0], ids[n + 1], *ids.last().unwrap()), (2, 3, 3));
        assert_eq!((types[n + 1], types[n + 2]), (0, 1));
        assert_eq!(special.iter().filter(|s| **s).count(), 3);
    }
}
