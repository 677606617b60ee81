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

    /// Every layer's output, for losses on the layers inside (a student learning
    /// its teacher's intermediate states): as [`Encoder::forward_t`], keeping the
    /// embeddings' output, each layer's, and with `attention` each layer's attention
    /// distribution. Slower than `forward_t`: it takes attention's composed path.
    fn forward_layers(
        &self,
        _batch: &Batch,
        _train: Option<&TrainRng>,
        _attention: bool,
    ) -> Result<LayerStates> {
        Err(crate::Error::Unsupported(
            "this family does not expose its intermediate layers (BERT, RoBERTa, \
             DistilBERT and ALBERT do)"
                .into(),
        ))
    }
}

/// What [`Encoder::forward_layers`] keeps.
#[derive(Debug, Clone, Default)]
pub struct LayerStates {
    /// The embeddings' output, then each layer's, in order: one more than the
    /// layers run, each [batch, len, hidden]; the last is `forward_t`'s result.
    pub hidden: Vec<Tensor>,
    /// Each layer's attention log-probabilities, [batch, heads, len, len] (padded
    /// keys at a very large negative value); empty unless asked for.
    pub attention: Vec<Tensor>,
}

impl LayerStates {
    /// Runs `layers` over the embeddings' output `xs`, keeping what was asked for.
    pub fn run<'a>(
        xs: Tensor,
        layers: impl IntoIterator<Item = &'a crate::layers::TransformerLayer>,
        bias: &Tensor,
        train: Option<&TrainRng>,
        attention: bool,
    ) -> Result<Self> {
        let mut states = Self {
            hidden: vec![xs],
            attention: Vec::new(),
        };
        for layer in layers {
            let xs = states.hidden.last().expect("the embeddings' output");
            let xs = if attention {
                let (out, log_probs) = layer.forward_keeping_attention(xs, bias, train)?;
                states.attention.push(log_probs);
                out
            } else {
                layer.forward(xs, bias, train)?
            };
            states.hidden.push(xs);
        }
        Ok(states)
    }
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
