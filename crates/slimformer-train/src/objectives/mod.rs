//! Pretraining objectives of the five families: masked LM (BERT, RoBERTa, ALBERT,
//! DistilBERT), next-sentence and sentence-order prediction (BERT, ALBERT) and
//! permutation LM (XLNet): building the examples, and the losses.

pub mod mlm;
pub mod pairs;
pub mod plm;

use candle_core::{DType, Tensor, D};
use slimformer::Result;

pub use mlm::IGNORE;

/// Mean cross-entropy over the positions whose label is not negative ([`IGNORE`]),
/// as transformers' `CrossEntropyLoss(ignore_index=-100)`. `logits` [..., classes],
/// `labels` integer [...]. Only the kept rows go through log-softmax; every op has a
/// backward pass. With no labelled position the loss is 0 (still on the graph).
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let classes = logits.dim(D::Minus1)?;
    let flat = logits.reshape(((), classes))?;
    let labels: Vec<i64> = labels.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    let (rows, targets): (Vec<u32>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, l)| (i as u32, *l as u32))
        .unzip();
    if rows.is_empty() {
        return Ok((flat.sum_all()? * 0.0)?);
    }
    let n = rows.len();
    let device = logits.device();
    let picked = flat.index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    let log_probs = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
    let targets = Tensor::from_vec(targets, (n, 1), device)?;
    Ok(log_probs.gather(&targets, 1)?.neg()?.mean_all()?)
}

/// MLM loss: logits [batch, len, vocab], labels [batch, len] with [`IGNORE`].
pub fn mlm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    masked_cross_entropy(logits, labels)
}

/// NSP / SOP loss: logits [batch, 2], labels [batch] (0 = in order / is next).
pub fn sentence_pair_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    masked_cross_entropy(logits, labels)
}

/// PLM loss: logits [batch, num_predict, vocab], labels [batch, num_predict] with
/// [`IGNORE`] in the rows that pad an example's targets.
pub fn plm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    masked_cross_entropy(logits, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn cross_entropy_matches_by_hand_and_ignores() -> Result<()> {
        let logits = Var::from_vec(vec![1.0f64, 2.0, 0.5, 0.0, 3.0, -1.0], (2, 3), &Device::Cpu)?;
        let labels = Tensor::new(&[1i64, IGNORE], &Device::Cpu)?;
        let loss = masked_cross_entropy(logits.as_tensor(), &labels)?.to_scalar::<f64>()?;
        let lse = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
        assert!((loss - (lse - 2.0)).abs() < 1e-12, "{loss}");
        let grads = masked_cross_entropy(logits.as_tensor(), &labels)?.backward()?;
        let g: Vec<Vec<f64>> = grads.get(logits.as_tensor()).unwrap().to_vec2()?;
        assert!(g[1].iter().all(|x| *x == 0.0), "ignored row has gradient");
        let p1 = 2f64.exp() / lse.exp();
        assert!((g[0][1] - (p1 - 1.0)).abs() < 1e-12);
        let none = Tensor::new(&[IGNORE, IGNORE], &Device::Cpu)?;
        assert_eq!(
            masked_cross_entropy(logits.as_tensor(), &none)?.to_scalar::<f64>()?,
            0.0
        );
        Ok(())
    }
}
