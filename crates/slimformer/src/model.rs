//! A loaded model of any family: its checkpoint, parsed config and encoder.

use crate::checkpoint::Checkpoint;
use crate::layers::Activation;
use crate::models::albert::{Albert, AlbertConfig};
use crate::models::bert::{self, BertConfig};
use crate::models::distilbert::{self, DistilBertConfig};
use crate::models::xlnet::{XLNet, XLNetConfig};
use crate::models::{roberta, Encoder, Family};
use crate::{Error, Result};
use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use std::path::Path;

/// The family's parsed `config.json`.
#[derive(Debug, Clone)]
pub enum FamilyConfig {
    Bert(BertConfig),
    Roberta(BertConfig),
    DistilBert(DistilBertConfig),
    Albert(AlbertConfig),
    XLNet(XLNetConfig),
}

impl FamilyConfig {
    pub fn hidden_size(&self) -> usize {
        match self {
            FamilyConfig::Bert(c) | FamilyConfig::Roberta(c) => c.hidden_size,
            FamilyConfig::DistilBert(c) => c.dim,
            FamilyConfig::Albert(c) => c.hidden_size,
            FamilyConfig::XLNet(c) => c.d_model,
        }
    }

    /// The width of the feed-forward layer's inner activation.
    pub fn intermediate_size(&self) -> usize {
        match self {
            FamilyConfig::Bert(c) | FamilyConfig::Roberta(c) => c.intermediate_size,
            FamilyConfig::DistilBert(c) => c.hidden_dim,
            FamilyConfig::Albert(c) => c.intermediate_size,
            FamilyConfig::XLNet(c) => c.d_inner,
        }
    }

    pub fn attention_heads(&self) -> usize {
        match self {
            FamilyConfig::Bert(c) | FamilyConfig::Roberta(c) => c.num_attention_heads,
            FamilyConfig::DistilBert(c) => c.n_heads,
            FamilyConfig::Albert(c) => c.num_attention_heads,
            FamilyConfig::XLNet(c) => c.n_head,
        }
    }

    /// The longest input in tokens the positions allow (`None`: no limit).
    pub fn max_input_len(&self) -> Option<usize> {
        match self {
            FamilyConfig::Bert(c) => Some(c.max_position_embeddings),
            FamilyConfig::Roberta(c) => Some(roberta::max_input_len(c)),
            FamilyConfig::DistilBert(c) => Some(c.max_position_embeddings),
            FamilyConfig::Albert(c) => Some(c.max_position_embeddings),
            FamilyConfig::XLNet(_) => None,
        }
    }

    /// The id the model treats as padding (RoBERTa's positions depend on it).
    /// How this family pads a batch, for [`crate::tokenize::TextTokenizer::load`].
    pub fn padding(&self) -> crate::tokenize::Padding {
        crate::tokenize::Padding {
            id: self.pad_token_id(),
            type_id: self.pad_token_type_id(),
            left: self.pads_left(),
        }
    }

    pub fn pad_token_id(&self) -> u32 {
        match self {
            FamilyConfig::Bert(c) => c.pad_token_id.unwrap_or(0),
            FamilyConfig::Roberta(c) => c.pad_token_id.unwrap_or(roberta::DEFAULT_PAD_TOKEN_ID),
            FamilyConfig::DistilBert(c) => c.pad_token_id.unwrap_or(0),
            FamilyConfig::Albert(c) => c.pad_token_id.unwrap_or(0),
            FamilyConfig::XLNet(c) => c.pad_token_id.unwrap_or(5),
        }
    }

    pub fn layer_norm_eps(&self) -> f64 {
        match self {
            FamilyConfig::Bert(c) | FamilyConfig::Roberta(c) => c.layer_norm_eps,
            FamilyConfig::DistilBert(_) => 1e-12,
            FamilyConfig::Albert(c) => c.layer_norm_eps,
            FamilyConfig::XLNet(c) => c.layer_norm_eps,
        }
    }

    /// The activation inside the masked-LM head's transform.
    pub fn mlm_activation(&self) -> Activation {
        match self {
            FamilyConfig::Bert(c) => c.hidden_act,
            // RobertaLMHead hard-codes gelu.
            FamilyConfig::Roberta(_) => Activation::Gelu,
            FamilyConfig::DistilBert(c) => c.activation,
            FamilyConfig::Albert(c) => c.hidden_act,
            FamilyConfig::XLNet(c) => c.ff_activation,
        }
    }

    /// Dropout before classifiers, as each family's config names it.
    pub fn classifier_dropout(&self) -> f32 {
        match self {
            FamilyConfig::Bert(c) | FamilyConfig::Roberta(c) => {
                c.classifier_dropout.unwrap_or(c.hidden_dropout_prob)
            }
            FamilyConfig::DistilBert(c) => c.seq_classif_dropout,
            FamilyConfig::Albert(c) => c.classifier_dropout_prob,
            FamilyConfig::XLNet(c) => c.summary_last_dropout,
        }
    }

    /// XLNet pads on the left, with token type 3 for padding; the rest on the right with 0.
    pub fn pads_left(&self) -> bool {
        matches!(self, FamilyConfig::XLNet(_))
    }

    pub fn pad_token_type_id(&self) -> u32 {
        if self.pads_left() {
            3
        } else {
            0
        }
    }
}

/// A checkpoint with its encoder ready to run.
pub struct Model {
    pub checkpoint: Checkpoint,
    pub config: FamilyConfig,
    pub encoder: Box<dyn Encoder>,
    /// Where the encoder's weights came from; heads load from it too.
    pub vb: VarBuilder<'static>,
}

impl Model {
    /// For inference: the weights as stored, no gradients.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let checkpoint = Checkpoint::open(dir)?;
        let vb = checkpoint.var_builder();
        Self::build(checkpoint, vb)
    }

    /// For training: every weight becomes a variable of the returned VarMap, and
    /// heads the checkpoint lacks are created in it when they are loaded.
    pub fn load_trainable(dir: impl AsRef<Path>) -> Result<(Self, VarMap)> {
        let checkpoint = Checkpoint::open(dir)?;
        let varmap = VarMap::new();
        {
            let mut vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, tensor) in &checkpoint.tensors {
                let tensor = tensor.to_dtype(DType::F32)?;
                vars.insert(name.clone(), Var::from_tensor(&tensor)?);
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Ok((Self::build(checkpoint, vb)?, varmap))
    }

    pub fn build(checkpoint: Checkpoint, vb: VarBuilder<'static>) -> Result<Self> {
        let config = match checkpoint.family {
            Family::Bert => FamilyConfig::Bert(checkpoint.family_config()?),
            Family::Roberta => FamilyConfig::Roberta(checkpoint.family_config()?),
            Family::DistilBert => FamilyConfig::DistilBert(checkpoint.family_config()?),
            Family::Albert => FamilyConfig::Albert(checkpoint.family_config()?),
            Family::XLNet => FamilyConfig::XLNet(checkpoint.family_config()?),
        };
        let encoder: Result<Box<dyn Encoder>> = match &config {
            FamilyConfig::Bert(c) => bert::load(vb.clone(), c).map(|m| Box::new(m) as _),
            FamilyConfig::Roberta(c) => roberta::load(vb.clone(), c).map(|m| Box::new(m) as _),
            FamilyConfig::DistilBert(c) => {
                distilbert::load(vb.clone(), c).map(|m| Box::new(m) as _)
            }
            FamilyConfig::Albert(c) => Albert::load(vb.clone(), c).map(|m| Box::new(m) as _),
            FamilyConfig::XLNet(c) => XLNet::load(vb.clone(), c).map(|m| Box::new(m) as _),
        };
        let encoder = encoder.map_err(|e| checkpoint.weights_error(e))?;
        Ok(Self {
            checkpoint,
            config,
            encoder,
            vb,
        })
    }

    pub fn weights_error(&self, e: Error) -> Error {
        self.checkpoint.weights_error(e)
    }

    pub fn family(&self) -> Family {
        self.checkpoint.family
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }
}
