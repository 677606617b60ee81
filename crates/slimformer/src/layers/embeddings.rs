use super::{Dropout, LayerNorm};
use crate::rng::TrainRng;
use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

/// How position ids are derived from the input ids.
#[derive(Debug, Clone, Copy)]
pub enum PositionIds {
    /// 0, 1, 2, … (BERT, ALBERT, DistilBERT).
    Absolute,
    /// RoBERTa: real tokens count from `padding_idx + 1`, padding keeps `padding_idx`.
    SkipPadding { padding_idx: u32 },
}

/// Names and sizes of the embedding tables.
pub struct EmbeddingsNames {
    pub vocab_size: usize,
    pub max_positions: usize,
    /// `None` for families without token types (DistilBERT).
    pub type_vocab_size: Option<usize>,
    /// Width of the tables (ALBERT's E; the hidden size elsewhere).
    pub size: usize,
    pub layer_norm_eps: f64,
    pub dropout: f32,
}

/// Word + position (+ token type) embeddings followed by LayerNorm, under the
/// names BERT, RoBERTa, ALBERT and DistilBERT all share.
#[derive(Debug, Clone)]
pub struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Option<Embedding>,
    norm: LayerNorm,
    position_ids: PositionIds,
    dropout: Dropout,
}

impl Embeddings {
    pub fn load(
        vb: VarBuilder,
        spec: &EmbeddingsNames,
        position_ids: PositionIds,
    ) -> crate::Result<Self> {
        let table = |name: &str, rows: usize| -> crate::Result<Embedding> {
            Ok(candle_nn::embedding(rows, spec.size, vb.pp(name))?)
        };
        Ok(Self {
            word: table("word_embeddings", spec.vocab_size)?,
            position: table("position_embeddings", spec.max_positions)?,
            token_type: match spec.type_vocab_size {
                Some(n) => Some(table("token_type_embeddings", n)?),
                None => None,
            },
            norm: LayerNorm::load(vb.pp("LayerNorm"), spec.size, spec.layer_norm_eps)?,
            position_ids,
            dropout: Dropout::new(spec.dropout),
        })
    }

    pub fn word_embeddings(&self) -> &Tensor {
        self.word.embeddings()
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        train: Option<&TrainRng>,
    ) -> candle_core::Result<Tensor> {
        let positions = position_ids(input_ids, self.position_ids)?;
        let mut xs = self
            .word
            .forward(input_ids)?
            .add(&self.position.forward(&positions)?)?;
        if let Some(token_type) = &self.token_type {
            xs = xs.add(&token_type.forward(token_type_ids)?)?;
        }
        self.dropout.forward(&self.norm.forward(&xs)?, train)
    }
}

fn position_ids(input_ids: &Tensor, kind: PositionIds) -> candle_core::Result<Tensor> {
    let (b, l) = input_ids.dims2()?;
    let device: &Device = input_ids.device();
    match kind {
        PositionIds::Absolute => Tensor::arange(0u32, l as u32, device)?
            .unsqueeze(0)?
            .broadcast_as((b, l))?
            .contiguous(),
        PositionIds::SkipPadding { padding_idx } => {
            let rows = input_ids
                .to_dtype(candle_core::DType::U32)?
                .to_vec2::<u32>()?;
            let ids: Vec<u32> = rows
                .iter()
                .flat_map(|row| {
                    let mut count = 0u32;
                    row.iter().map(move |&id| {
                        if id == padding_idx {
                            padding_idx
                        } else {
                            count += 1;
                            padding_idx + count
                        }
                    })
                })
                .collect();
            Tensor::from_vec(ids, (b, l), device)
        }
    }
}
