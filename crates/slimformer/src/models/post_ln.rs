//! The encoder BERT, RoBERTa and DistilBERT share: embeddings, then a stack of
//! post-LN transformer layers. The families differ only in how they load it.

use super::{Batch, Encoder, LayerStates};
use crate::layers::{attention_bias, Embeddings, TransformerLayer};
use crate::rng::TrainRng;
use crate::Result;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct PostLnEncoder {
    embeddings: Embeddings,
    layers: Vec<TransformerLayer>,
}

impl PostLnEncoder {
    pub fn new(embeddings: Embeddings, layers: Vec<TransformerLayer>) -> Self {
        Self { embeddings, layers }
    }

    /// The embeddings and the attention bias every layer takes.
    fn embed(&self, batch: &Batch, train: Option<&TrainRng>) -> Result<(Tensor, Tensor)> {
        let xs = self
            .embeddings
            .forward(&batch.input_ids, &batch.token_type_ids, train)?;
        let bias = attention_bias(&batch.attention_mask, xs.dtype())?;
        Ok((xs, bias))
    }
}

impl Encoder for PostLnEncoder {
    fn forward_t(&self, batch: &Batch, train: Option<&TrainRng>) -> Result<Tensor> {
        let (mut xs, bias) = self.embed(batch, train)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &bias, train)?;
        }
        Ok(xs)
    }

    fn word_embeddings(&self) -> &Tensor {
        self.embeddings.word_embeddings()
    }

    fn forward_layers(
        &self,
        batch: &Batch,
        train: Option<&TrainRng>,
        attention: bool,
    ) -> Result<LayerStates> {
        let (xs, bias) = self.embed(batch, train)?;
        LayerStates::run(xs, &self.layers, &bias, train, attention)
    }
}
