//! Fitting ALBERT's factorized embeddings to BERT's embedding output before any
//! recovery training.
//!
//! The truncated SVD is the best rank-E approximation of the tables, but not of what
//! the first layer sees: BERT's LayerNorm over H, against ALBERT's over E followed by
//! the E→H map. On all-MiniLM at E = 128 the SVD start's embedding output is 0.89
//! (relative) off BERT's on the (token, position) pairs of real text, and the
//! compressed model scores below chance before recovery. Task distillation cannot repair that: only the words of its training
//! texts get gradients. So the tables and the map are first fitted directly, by
//! AdamW on the squared error of the embedding output over (token, position) pairs:
//! three quarters drawn from real text (the recovery data, so frequent words count
//! as often as they occur) and a quarter uniformly over the vocabulary, so no word is
//! left behind. It takes a minute or two on 2 cores and needs no teacher forward pass.

use crate::optim::{linear_schedule, AdamW, AdamWConfig};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarMap};
use slimformer::rng::Rng;
use slimformer::Result;
use std::collections::HashMap;

/// How long and on what the embeddings are fitted.
#[derive(Debug, Clone)]
pub struct EmbeddingFitOptions {
    pub steps: usize,
    /// (token, position) pairs per step.
    pub batch: usize,
    pub lr: f64,
    /// Token ids of real texts (position = index); empty: uniform pairs only.
    pub texts: Vec<Vec<u32>>,
    pub seed: u64,
}

impl EmbeddingFitOptions {
    pub fn new(steps: usize, texts: Vec<Vec<u32>>) -> Self {
        Self {
            steps,
            batch: 2048,
            lr: 2e-3,
            texts,
            seed: 42,
        }
    }
}

/// Relative errors of the embedding output before and after the fit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbeddingFitReport {
    pub steps: usize,
    /// On pairs drawn from the texts (absent without texts).
    pub text_error_before: Option<f64>,
    pub text_error_after: Option<f64>,
    /// On uniformly drawn tokens (at the texts' positions, where there are texts).
    pub random_error_before: f64,
    pub random_error_after: f64,
}

/// BERT's embedding tables and LayerNorm: the target.
pub(super) struct BertEmbeddings {
    pub words: Tensor,
    pub positions: Tensor,
    /// The token-type-0 row [H].
    pub type0: Tensor,
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f64,
}

/// ALBERT's: tables in E-space, LayerNorm(E) with unit scale and no shift (the map
/// absorbs both), the E→H map.
#[derive(Clone)]
pub(super) struct AlbertEmbeddings {
    pub words: Tensor,
    pub positions: Tensor,
    /// All token-type rows [T, E]; pairs use row 0.
    pub types: Tensor,
    pub map_weight: Tensor,
    pub map_bias: Tensor,
    pub eps: f64,
}

fn normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(slimformer::layers::rows::normalize(x, eps)?)
}

impl BertEmbeddings {
    fn output(&self, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let sum = (self.words.index_select(tokens, 0)?
            + self.positions.index_select(positions, 0)?)?
        .broadcast_add(&self.type0)?;
        Ok(normalize(&sum, self.eps)?
            .broadcast_mul(&self.gamma)?
            .broadcast_add(&self.beta)?)
    }
}

impl AlbertEmbeddings {
    fn output(&self, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let sum = (self.words.index_select(tokens, 0)?
            + self.positions.index_select(positions, 0)?)?
        .broadcast_add(&self.types.get(0)?)?;
        mapped(&sum, &self.map_weight, &self.map_bias, self.eps)
    }
}

/// ALBERT's embedding output from the sum of the E-space rows.
fn mapped(sum: &Tensor, map_weight: &Tensor, map_bias: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(normalize(sum, eps)?
        .matmul(&map_weight.t()?)?
        .broadcast_add(map_bias)?)
}

/// A table whose rows Adam updates only where a batch touched them ("lazy" Adam, as
/// for sparse embeddings): updating all 30k rows of a vocabulary every step cost
/// ten times the rest of the step.
struct SparseAdamTable {
    values: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    width: usize,
}

impl SparseAdamTable {
    fn new(table: &Tensor) -> Result<Self> {
        let values: Vec<f32> = table.flatten_all()?.to_vec1()?;
        Ok(Self {
            m: vec![0.0; values.len()],
            v: vec![0.0; values.len()],
            width: table.dim(1)?,
            values,
        })
    }

    fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        let w = self.width;
        let mut out = Vec::with_capacity(ids.len() * w);
        for &id in ids {
            out.extend_from_slice(&self.values[id as usize * w..][..w]);
        }
        Ok(Tensor::from_vec(out, (ids.len(), w), &Device::Cpu)?)
    }

    /// One Adam step (the `step`-th, 0-based) on the rows `ids`, whose gradients are
    /// the rows of `grads`; a row drawn twice gets the sum.
    fn step(
        &mut self,
        ids: &[u32],
        grads: &Tensor,
        lr: f64,
        step: usize,
        c: &AdamWConfig,
    ) -> Result<()> {
        let w = self.width;
        let g: Vec<f32> = grads.flatten_all()?.to_vec1()?;
        let mut summed: HashMap<u32, Vec<f32>> = HashMap::new();
        for (&id, g) in ids.iter().zip(g.chunks_exact(w)) {
            let acc = summed.entry(id).or_insert_with(|| vec![0.0; w]);
            acc.iter_mut().zip(g).for_each(|(a, &x)| *a += x);
        }
        let t = step as i32 + 1;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (id, g) in summed {
            let row = id as usize * w..(id as usize + 1) * w;
            let values = &mut self.values[row.clone()];
            for ((x, (m, v)), &g) in values
                .iter_mut()
                .zip(self.m[row.clone()].iter_mut().zip(&mut self.v[row]))
                .zip(&g)
            {
                let g = g as f64;
                let m1 = c.beta1 * *m as f64 + (1.0 - c.beta1) * g;
                let v1 = c.beta2 * *v as f64 + (1.0 - c.beta2) * g * g;
                (*m, *v) = (m1 as f32, v1 as f32);
                *x -= (lr * (m1 / bc1) / ((v1 / bc2).sqrt() + c.eps)) as f32;
            }
        }
        Ok(())
    }

    fn tensor(&self) -> Result<Tensor> {
        let rows = self.values.len() / self.width;
        Ok(Tensor::from_slice(
            &self.values,
            (rows, self.width),
            &Device::Cpu,
        )?)
    }
}

/// Where (token, position) pairs come from.
struct Pairs {
    text: Vec<(u32, u32)>,
    vocab: usize,
    positions: usize,
}

impl Pairs {
    fn new(texts: &[Vec<u32>], vocab: usize, positions: usize) -> Self {
        let text = texts
            .iter()
            .flat_map(|ids| {
                ids.iter()
                    .enumerate()
                    .take(positions)
                    .filter(|(_, &t)| (t as usize) < vocab)
                    .map(|(p, &t)| (t, p as u32))
            })
            .collect();
        Self {
            text,
            vocab,
            positions,
        }
    }

    /// One pair: from the texts with probability `text_share` (when there are any).
    fn draw(&self, rng: &mut Rng, text_share: f32) -> (u32, u32) {
        if !self.text.is_empty() && rng.next_f32() < text_share {
            return self.text[rng.below(self.text.len())];
        }
        // Positions as in real text where there is some: long positions are rare.
        let position = if self.text.is_empty() {
            rng.below(self.positions) as u32
        } else {
            self.text[rng.below(self.text.len())].1
        };
        (rng.below(self.vocab) as u32, position)
    }

    fn draw_many(&self, rng: &mut Rng, n: usize, text_share: f32) -> (Vec<u32>, Vec<u32>) {
        (0..n).map(|_| self.draw(rng, text_share)).unzip()
    }

    fn batch(&self, rng: &mut Rng, n: usize, text_share: f32) -> Result<(Tensor, Tensor)> {
        let (tokens, positions) = self.draw_many(rng, n, text_share);
        Ok((
            Tensor::from_vec(tokens, n, &Device::Cpu)?,
            Tensor::from_vec(positions, n, &Device::Cpu)?,
        ))
    }
}

/// ‖got − want‖² / ‖want‖² summed over the rows, as a scalar tensor.
fn relative_sq_error(got: &Tensor, want: &Tensor) -> Result<Tensor> {
    Ok((got - want)?
        .sqr()?
        .sum_all()?
        .broadcast_div(&want.sqr()?.sum_all()?)?)
}

fn relative_error(
    bert: &BertEmbeddings,
    albert: &AlbertEmbeddings,
    pairs: &(Tensor, Tensor),
) -> Result<f64> {
    let want = bert.output(&pairs.0, &pairs.1)?;
    let got = albert.output(&pairs.0, &pairs.1)?;
    Ok(relative_sq_error(&got, &want)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .sqrt())
}

/// The relative error of ALBERT's embedding output against BERT's on 4096 uniformly
/// drawn (token, position) pairs, token type 0.
pub(super) fn random_pair_error(bert: &BertEmbeddings, albert: &AlbertEmbeddings) -> Result<f64> {
    let (vocab, positions) = (bert.words.dim(0)?, bert.positions.dim(0)?);
    let pairs = Pairs::new(&[], vocab, positions).batch(&mut Rng::new(0x5EED), 4096, 0.0)?;
    relative_error(bert, albert, &pairs)
}

/// Fits `albert` to `bert` (see the module's comment).
pub(super) fn fit(
    bert: &BertEmbeddings,
    albert: &AlbertEmbeddings,
    opts: &EmbeddingFitOptions,
) -> Result<(AlbertEmbeddings, EmbeddingFitReport)> {
    let (vocab, positions) = (bert.words.dim(0)?, bert.positions.dim(0)?);
    let pairs = Pairs::new(&opts.texts, vocab, positions);
    let mut rng = Rng::new(opts.seed);
    let random_eval = pairs.batch(&mut Rng::new(0x5EED), 4096, 0.0)?;
    let text_eval = if pairs.text.is_empty() {
        None
    } else {
        Some(pairs.batch(&mut Rng::new(0x7E47), 4096, 1.0)?)
    };
    let errors = |a: &AlbertEmbeddings| -> Result<(Option<f64>, f64)> {
        Ok((
            text_eval
                .as_ref()
                .map(|t| relative_error(bert, a, t))
                .transpose()?,
            relative_error(bert, a, &random_eval)?,
        ))
    };
    let (text_before, random_before) = errors(albert)?;

    let config = AdamWConfig {
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut words = SparseAdamTable::new(&albert.words)?;
    let mut position_rows = SparseAdamTable::new(&albert.positions)?;
    // The small dense parameters: AdamW over a VarMap.
    let varmap = VarMap::new();
    let var = |name: &str, t: &Tensor| -> Result<Tensor> {
        let v = varmap.get(t.dims(), name, Init::Const(0.0), DType::F32, &Device::Cpu)?;
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        data[name].set(&t.to_dtype(DType::F32)?)?;
        Ok(v)
    };
    let types = var("types", &albert.types)?;
    let map_weight = var("map_weight", &albert.map_weight)?;
    let map_bias = var("map_bias", &albert.map_bias)?;
    let mut optimizer = AdamW::new(&varmap, config)?;
    let warmup = opts.steps / 20;
    let dev = &Device::Cpu;
    for step in 0..opts.steps {
        let (tok, pos) = pairs.draw_many(&mut rng, opts.batch, 0.75);
        let n = tok.len();
        let want = bert.output(
            &Tensor::from_slice(&tok, n, dev)?,
            &Tensor::from_slice(&pos, n, dev)?,
        )?;
        let word_rows = Var::from_tensor(&words.rows(&tok)?)?;
        let pos_rows = Var::from_tensor(&position_rows.rows(&pos)?)?;
        let sum = (word_rows.as_tensor() + pos_rows.as_tensor())?.broadcast_add(&types.get(0)?)?;
        let loss = relative_sq_error(&mapped(&sum, &map_weight, &map_bias, albert.eps)?, &want)?;
        let grads = loss.backward()?;
        let lr = linear_schedule(opts.lr, step, warmup, opts.steps);
        let grad_of = |v: &Var| {
            grads.get(v.as_tensor()).ok_or_else(|| {
                slimformer::Error::Input("embedding fit: a table got no gradient".into())
            })
        };
        words.step(&tok, grad_of(&word_rows)?, lr, step, &config)?;
        position_rows.step(&pos, grad_of(&pos_rows)?, lr, step, &config)?;
        let mut acc = optimizer.zero_grads();
        optimizer.accumulate(&mut acc, &grads)?;
        optimizer.apply(&acc, lr)?;
        if step % 200 == 0 {
            tracing::info!(step, loss = loss.to_scalar::<f32>()?, "embedding fit");
        }
    }
    let fitted = AlbertEmbeddings {
        words: words.tensor()?,
        positions: position_rows.tensor()?,
        types: types.detach().copy()?,
        map_weight: map_weight.detach().copy()?,
        map_bias: map_bias.detach().copy()?,
        eps: albert.eps,
    };
    let (text_after, random_after) = errors(&fitted)?;
    Ok((
        fitted,
        EmbeddingFitReport {
            steps: opts.steps,
            text_error_before: text_before,
            text_error_after: text_after,
            random_error_before: random_before,
            random_error_after: random_after,
        },
    ))
}

/// Token ids of the recovery data's texts (a task's training texts, or a corpus's
/// paragraphs, at most `limit` of them), cut at `max_len` tokens, for [`fit`].
pub fn token_ids(
    data: &super::distill::DistillData,
    model_dir: &std::path::Path,
    max_len: usize,
    limit: usize,
) -> Result<Vec<Vec<u32>>> {
    use super::distill::DistillData;
    use slimformer::tokenize::TextInput;
    let inputs: Vec<TextInput> = match data {
        DistillData::Task { train, columns, .. } => crate::data::read_rows(train, columns)?
            .into_iter()
            .take(limit)
            .map(|r| r.input)
            .collect(),
        DistillData::General { corpus } => crate::pretrain::read_corpus(corpus)?
            .into_iter()
            .flatten()
            .take(limit)
            .map(TextInput::Single)
            .collect(),
    };
    let path = model_dir.join(slimformer::tokenize::TOKENIZER_FILE);
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(&path).map_err(|e| slimformer::Error::file(&path, e))?;
    // Real tokens only: no padding to a stored length.
    tokenizer.with_padding(None);
    inputs
        .iter()
        .map(|input| {
            let encoding = tokenizer
                .encode(input.to_encode_input(), true)
                .map_err(|e| slimformer::Error::Tokenizer(e.to_string()))?;
            Ok(encoding.get_ids().iter().take(max_len).copied().collect())
        })
        .collect()
}
