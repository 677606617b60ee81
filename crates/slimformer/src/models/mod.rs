//! The five encoder families, one file each. They share the layers in
//! [`crate::layers`] and differ only where their papers do.

pub mod albert;
pub mod bert;
pub mod distilbert;
pub mod post_ln;
pub mod roberta;
pub mod xlnet;

use crate::rng::TrainRng;
use crate::Result;
use candle_core::Tensor;

/// One padded batch of token ids. All tensors are u32 [batch, len].
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    /// 1 for a real token, 0 for padding.
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

/// A loaded encoder of any family.
pub trait Encoder: Send + Sync {
    /// The last hidden state, [batch, len, hidden]. `train` brings the randomness
    /// of a training step (dropout on); `None` is inference.
    fn forward_t(&self, batch: &Batch, train: Option<&TrainRng>) -> Result<Tensor>;

    /// Inference: [`Encoder::forward_t`] with dropout off.
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        crate::layers::on_pool(|| self.forward_t(batch, None))
    }

    /// The input embedding table [vocab, width], which MLM decoders may be tied to.
    fn word_embeddings(&self) -> &Tensor;
}

/// The model families slimformer knows, by HF `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Bert,
    Roberta,
    DistilBert,
    Albert,
    XLNet,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Bert,
        Family::Roberta,
        Family::DistilBert,
        Family::Albert,
        Family::XLNet,
    ];

    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
    }

    /// HF's `model_type` value.
    pub fn model_type(&self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::DistilBert => "distilbert",
            Family::Albert => "albert",
            Family::XLNet => "xlnet",
        }
    }

    /// The attribute under which HF's task models keep the base model.
    pub fn weight_prefix(&self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
            Family::DistilBert => "distilbert.",
            Family::Albert => "albert.",
            Family::XLNet => "transformer.",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}
