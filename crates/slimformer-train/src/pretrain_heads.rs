//! Pretraining heads beside the masked-LM head of [`slimformer::heads::MaskedLmHead`],
//! under transformers' tensor names so that they load from `*ForPreTraining` /
//! `XLNetLMHeadModel` checkpoints and are created in the VarMap when missing:
//! - BERT next-sentence prediction: `pooler.dense` (+ tanh) → `cls.seq_relationship`;
//! - ALBERT sentence-order prediction: `pooler` (+ tanh) → dropout →
//!   `sop_classifier.classifier`;
//! - XLNet permutation LM: the two-stream encoder → `lm_loss` (weight tied to
//!   `word_embedding`, own bias).

use candle_core::{IndexOp, Module, Tensor};
use slimformer::layers::{linear, Activation, Dropout, Linear};
use slimformer::model::{FamilyConfig, Model};
use slimformer::models::xlnet::XLNet;
use slimformer::models::{Batch, Family};
use slimformer::rng::TrainRng;
use slimformer::{Error, Result};

/// NSP (BERT) or SOP (ALBERT): two logits per sequence from the pooled first token.
pub struct SentencePairHead {
    pooler: Linear,
    classifier: Linear,
    dropout: Dropout,
}

impl SentencePairHead {
    pub fn load(model: &Model) -> Result<Self> {
        let (pooler, classifier, dropout) = match &model.config {
            FamilyConfig::Bert(_) => ("pooler.dense", "cls.seq_relationship", 0.0),
            FamilyConfig::Albert(c) => (
                "pooler",
                "sop_classifier.classifier",
                c.classifier_dropout_prob,
            ),
            _ => {
                return Err(Error::Input(format!(
                    "{} has no sentence-pair pretraining objective (only bert: NSP, albert: SOP)",
                    model.family()
                )))
            }
        };
        let h = model.hidden_size();
        let load = || -> Result<Self> {
            Ok(Self {
                pooler: linear(&model.vb, pooler, h, h)?,
                classifier: linear(&model.vb, classifier, h, 2)?,
                dropout: Dropout::new(dropout),
            })
        };
        load().map_err(|e| model.weights_error(e))
    }

    /// The pooled output [batch, hidden] (HF's `pooler_output`).
    pub fn pooled(&self, hidden: &Tensor) -> Result<Tensor> {
        let first = hidden.i((.., 0))?;
        Ok(Activation::Tanh.forward(&self.pooler.forward(&first)?)?)
    }

    /// Logits [batch, 2] from the last hidden state [batch, len, hidden].
    pub fn forward_t(&self, hidden: &Tensor, train: Option<&TrainRng>) -> Result<Tensor> {
        let pooled = self.dropout.forward(&self.pooled(hidden)?, train)?;
        Ok(self.classifier.forward(&pooled)?)
    }
}

/// XLNet's permutation-LM head: query-stream output · word_embedding^T + lm_loss.bias.
pub struct PlmHead {
    /// The model's XLNet again, over the same variables (its two-stream entry).
    xlnet: XLNet,
    bias: Tensor,
}

impl PlmHead {
    pub fn load(model: &Model) -> Result<Self> {
        let FamilyConfig::XLNet(cfg) = &model.config else {
            return Err(Error::Input(format!(
                "permutation LM is XLNet's objective, not {}'s",
                model.family()
            )));
        };
        debug_assert_eq!(model.family(), Family::XLNet);
        let load = || -> Result<Self> {
            Ok(Self {
                xlnet: XLNet::load(model.vb.clone(), cfg)?,
                bias: model.vb.get_with_hints(
                    cfg.vocab_size,
                    "lm_loss.bias",
                    candle_nn::Init::Const(0.0),
                )?,
            })
        };
        load().map_err(|e| model.weights_error(e))
    }

    pub fn xlnet(&self) -> &XLNet {
        &self.xlnet
    }

    /// Logits [batch, num_predict, vocab] at the target positions.
    pub fn forward_t(
        &self,
        batch: &Batch,
        perm_mask: &Tensor,
        target_mapping: &Tensor,
        train: Option<&TrainRng>,
    ) -> Result<Tensor> {
        use slimformer::models::Encoder;
        let g = self
            .xlnet
            .forward_two_stream(batch, perm_mask, target_mapping, train)?;
        let w = self.xlnet.word_embeddings();
        let logits = slimformer::layers::rows::matmul_last(&g, &w.t()?)?;
        Ok(slimformer::layers::rows::add_row(&logits, &self.bias)?)
    }
}
