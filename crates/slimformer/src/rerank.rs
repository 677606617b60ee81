//! Reranking: documents scored against a query. A cross-encoder is a sequence
//! classifier over (query, document) pairs; an embedding model ranks by the cosine
//! similarity of the query's and each document's embedding.

use crate::heads::SequenceClassifier;
use crate::pooling::{self, EmbeddingSettings};
use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// How a model scores a (query, document) pair.
pub enum Scorer {
    /// One logit: sigmoid(logit); two: the second label's probability.
    CrossEncoder(SequenceClassifier),
    /// Cosine similarity of the two embeddings.
    Embedding(EmbeddingSettings),
}

impl Scorer {
    /// The model's classifier when it has one (of one or two labels), else its
    /// sentence embeddings.
    pub fn new(
        classifier: Option<SequenceClassifier>,
        embedding: EmbeddingSettings,
    ) -> Result<Scorer> {
        match classifier {
            Some(head) => match head.labels.names.len() {
                1 | 2 => Ok(Scorer::CrossEncoder(head)),
                n => Err(Error::Unsupported(format!(
                    "rerank needs a cross-encoder with one or two labels (a relevance logit, \
                     or not-relevant/relevant); this classifier has {n}"
                ))),
            },
            None => Ok(Scorer::Embedding(embedding)),
        }
    }

    /// What the scores are, for users: "cross-encoder" or "embedding-cosine".
    pub fn kind(&self) -> &'static str {
        match self {
            Scorer::CrossEncoder(_) => "cross-encoder",
            Scorer::Embedding(_) => "embedding-cosine",
        }
    }
}

/// A cross-encoder's score for each pair's hidden states [n_tokens, hidden]: the
/// relevance probability, or the raw logit with `raw`.
pub fn cross_scores(head: &SequenceClassifier, hidden: Vec<Tensor>, raw: bool) -> Result<Vec<f32>> {
    hidden
        .iter()
        .map(|h| {
            let logits: Vec<f32> = head.forward(&h.unsqueeze(0)?)?.squeeze(0)?.to_vec1()?;
            Ok(score_of_logits(&logits, raw))
        })
        .collect()
}

/// One logit: sigmoid (as sentence-transformers' CrossEncoder); two: softmax's
/// second (the relevant label); `raw` keeps the logit itself.
fn score_of_logits(logits: &[f32], raw: bool) -> f32 {
    let relevant = logits[logits.len() - 1];
    match (logits.len(), raw) {
        (_, true) => relevant,
        (1, false) => 1.0 / (1.0 + (-relevant).exp()),
        (_, false) => 1.0 / (1.0 + (logits[0] - relevant).exp()),
    }
}

/// An embedding of each text's hidden states, unnormalized (cosine needs none).
pub fn embeddings(settings: &EmbeddingSettings, hidden: Vec<Tensor>) -> Result<Vec<Vec<f32>>> {
    let settings = EmbeddingSettings {
        normalize: false,
        ..settings.clone()
    };
    hidden
        .iter()
        .map(|h| {
            Ok(pooling::embed(h, &settings)?
                .to_dtype(DType::F32)?
                .to_vec1()?)
        })
        .collect()
}

/// Cosine similarity, with the zero vector at similarity 0.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        (dot / denominator) as f32
    }
}

/// The indices of `scores`, best first (ties keep input order), at most `top_n`.
pub fn ranked(scores: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(top_n.unwrap_or(scores.len()));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_label_count() {
        assert!((score_of_logits(&[0.0], false) - 0.5).abs() < 1e-7);
        assert!((score_of_logits(&[2.0], true) - 2.0).abs() < 1e-7);
        let two = score_of_logits(&[1.0, 3.0], false);
        let softmax = 3f32.exp() / (1f32.exp() + 3f32.exp());
        assert!((two - softmax).abs() < 1e-6);
    }

    #[test]
    fn ranking_is_best_first_and_stable() {
        assert_eq!(ranked(&[0.1, 0.9, 0.5, 0.9], None), [1, 3, 2, 0]);
        assert_eq!(ranked(&[0.1, 0.9, 0.5], Some(2)), [1, 2]);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.70710677).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
