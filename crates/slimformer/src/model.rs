//! A loaded model of any family: its checkpoint, parsed config and encoder.

use crate::checkpoint::Checkpoint;
use crate::layers::Activation;
use crate::models::albert::{Albert, AlbertConfig};
use crate::models::bert::{Bert, BertConfig};
use crate::models::distilbert::{DistilBert, DistilBertConfig};
use crate::models::xlnet::{XLNet, XLNetConfig};
use crate::models::{roberta, Encoder, Family};
use crate::{Error, Result};
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
}

impl Model {
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let checkpoint = Checkpoint::open(dir)?;
        let config = match checkpoint.family {
            Family::Bert => FamilyConfig::Bert(checkpoint.family_config()?),
            Family::Roberta => FamilyConfig::Roberta(checkpoint.family_config()?),
            Family::DistilBert => FamilyConfig::DistilBert(checkpoint.family_config()?),
            Family::Albert => FamilyConfig::Albert(checkpoint.family_config()?),
            Family::XLNet => FamilyConfig::XLNet(checkpoint.family_config()?),
        };
        let vb = checkpoint.var_builder();
        let encoder: Result<Box<dyn Encoder>> = match &config {
            FamilyConfig::Bert(c) => Bert::load(vb, c).map(|m| Box::new(m) as _),
            FamilyConfig::Roberta(c) => roberta::load(vb, c).map(|m| Box::new(m) as _),
            FamilyConfig::DistilBert(c) => DistilBert::load(vb, c).map(|m| Box::new(m) as _),
            FamilyConfig::Albert(c) => Albert::load(vb, c).map(|m| Box::new(m) as _),
            FamilyConfig::XLNet(c) => XLNet::load(vb, c).map(|m| Box::new(m) as _),
        };
        let encoder = encoder.map_err(|e| match e {
            // Missing tensors and wrong shapes are problems of the weights file.
            Error::Candle(e) => Error::file(
                checkpoint.weights_path(),
                crate::error::first_line(&e.to_string()),
            ),
            other => other,
        })?;
        Ok(Self {
            checkpoint,
            config,
            encoder,
        })
    }

    pub fn family(&self) -> Family {
        self.checkpoint.family
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }
}
