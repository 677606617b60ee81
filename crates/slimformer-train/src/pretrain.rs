//! Pretraining from scratch: a text corpus in, a Hugging Face pretraining checkpoint
//! out, through the [`super::trainer`] loop.
//!
//! | family     | objectives                          | saved as                 |
//! |------------|-------------------------------------|--------------------------|
//! | BERT       | MLM (static masks) + NSP            | `BertForPreTraining`     |
//! | RoBERTa    | MLM (dynamic masks)                 | `RobertaForMaskedLM`     |
//! | ALBERT     | MLM (static masks) + SOP            | `AlbertForPreTraining`   |
//! | DistilBERT | MLM (dynamic masks)                 | `DistilBertForMaskedLM`  |
//! | XLNet      | permutation LM (K = 6)              | `XLNetLMHeadModel`       |
//!
//! The corpus: UTF-8 text files, documents separated by an empty line, one paragraph
//! (or utterance) per line; a tab inside a line separates two paragraphs. Each file
//! starts a new document. MLM/PLM examples pack consecutive paragraphs of a document
//! into sequences of up to `seq_len` tokens; NSP/SOP examples are the sentence pairs
//! of [`pairs::make_pairs`]. The last `dev_fraction` of the examples (in corpus
//! order) are held out for evaluation.

use super::data::{split_dev, HoldOut};
use super::init::{init_trainable, initialize};
use super::objectives::mlm::{self, MaskingMode, MlmConfig, WordBoundary, IGNORE};
use super::objectives::pairs::{self, PairTask};
use super::objectives::plm::{plm_targets, PlmConfig};
use super::objectives::{masked_cross_entropy, plm_loss, sentence_pair_loss};
use super::pretrain_heads::{PlmHead, SentencePairHead};
use super::tokenizer::train_tokenizer;
use super::trainer::{self, Metrics, RunOptions, TrainConfig, TrainOutcome, TrainTask};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use serde::Serialize;
use slimformer::heads::MaskedLmHead;
use slimformer::hf_tokenizer::{save_tokenizer, special_tokens};
use slimformer::model::Model;
use slimformer::models::{Batch, Family};
use slimformer::rng::{Rng, TrainRng};
use slimformer::save::{
    hf_name, save_tensors, save_tokenizer_files, varmap_tensors, write_atomic,
    PRETRAINING_HEAD_PREFIXES,
};
use slimformer::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A model size of `--size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub name: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// ALBERT's factorized embedding width (E < hidden).
    pub albert_embedding: usize,
}

/// The sizes `--size` offers.
pub const SIZES: &[Size] = &[
    Size {
        name: "tiny",
        hidden: 128,
        layers: 2,
        heads: 2,
        intermediate: 512,
        albert_embedding: 64,
    },
    Size {
        name: "mini",
        hidden: 256,
        layers: 4,
        heads: 4,
        intermediate: 1024,
        albert_embedding: 128,
    },
    Size {
        name: "small",
        hidden: 512,
        layers: 4,
        heads: 8,
        intermediate: 2048,
        albert_embedding: 128,
    },
];

pub fn size(name: &str) -> Result<Size> {
    SIZES
        .iter()
        .copied()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = SIZES.iter().map(|s| s.name).collect();
            Error::Config(format!(
                "unknown size {name:?}: one of {}",
                names.join(", ")
            ))
        })
}

/// Where the model's shape comes from.
#[derive(Debug, Clone)]
pub enum ModelShape {
    Size(Size),
    /// A `config.json` (its `vocab_size` and `pad_token_id` follow the tokenizer).
    Config(PathBuf),
}

/// Where the tokenizer comes from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// Trained on the corpus with the family's tokenizer kind.
    Train { vocab_size: usize },
    /// A folder with `tokenizer.json` (and possibly its side files).
    Dir(PathBuf),
}

/// Everything `slimformer pretrain` takes.
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    pub family: Family,
    pub corpus: Vec<PathBuf>,
    pub tokenizer: TokenizerSource,
    pub shape: ModelShape,
    /// Tokens per sequence, special tokens included.
    pub seq_len: usize,
    pub whole_word_mask: bool,
    pub dev_fraction: f64,
    pub train_config: TrainConfig,
    pub out: PathBuf,
    pub overwrite: bool,
    pub progress: bool,
}

/// The objectives of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Objectives {
    /// Masked LM, and how masks are drawn (static: BERT, ALBERT).
    pub mlm: Option<bool>,
    pub pair: Option<PairTask>,
    pub plm: bool,
}

pub fn objectives(family: Family) -> Objectives {
    match family {
        Family::Bert => Objectives {
            mlm: Some(true),
            pair: Some(PairTask::NextSentence),
            plm: false,
        },
        Family::Albert => Objectives {
            mlm: Some(true),
            pair: Some(PairTask::SentenceOrder),
            plm: false,
        },
        Family::Roberta | Family::DistilBert => Objectives {
            mlm: Some(false),
            pair: None,
            plm: false,
        },
        Family::XLNet => Objectives {
            mlm: None,
            pair: None,
            plm: true,
        },
    }
}

/// The transformers class a family's pretraining checkpoint is saved as.
pub fn architecture(family: Family) -> &'static str {
    match family {
        Family::Bert => "BertForPreTraining",
        Family::Albert => "AlbertForPreTraining",
        Family::Roberta => "RobertaForMaskedLM",
        Family::DistilBert => "DistilBertForMaskedLM",
        Family::XLNet => "XLNetLMHeadModel",
    }
}

/// `config.json` of a `--size` model.
pub fn size_config(
    family: Family,
    size: Size,
    vocab_size: usize,
    seq_len: usize,
    pad: u32,
) -> serde_json::Value {
    let Size {
        hidden: h,
        layers: l,
        heads: a,
        intermediate: i,
        albert_embedding: e,
        ..
    } = size;
    match family {
        Family::Bert => serde_json::json!({
            "model_type": "bert", "vocab_size": vocab_size, "hidden_size": h,
            "num_hidden_layers": l, "num_attention_heads": a, "intermediate_size": i,
            "hidden_act": "gelu", "max_position_embeddings": seq_len, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pad_token_id": pad,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        }),
        Family::Roberta => serde_json::json!({
            "model_type": "roberta", "vocab_size": vocab_size, "hidden_size": h,
            "num_hidden_layers": l, "num_attention_heads": a, "intermediate_size": i,
            "hidden_act": "gelu", "max_position_embeddings": seq_len + 2, "type_vocab_size": 1,
            "layer_norm_eps": 1e-5, "initializer_range": 0.02, "pad_token_id": pad,
            "bos_token_id": 0, "eos_token_id": 2,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        }),
        Family::DistilBert => serde_json::json!({
            "model_type": "distilbert", "vocab_size": vocab_size, "dim": h, "n_layers": l,
            "n_heads": a, "hidden_dim": i, "activation": "gelu",
            "max_position_embeddings": seq_len, "sinusoidal_pos_embds": false,
            "initializer_range": 0.02, "pad_token_id": pad, "dropout": 0.1,
            "attention_dropout": 0.1, "tie_weights_": true,
        }),
        Family::Albert => serde_json::json!({
            "model_type": "albert", "vocab_size": vocab_size, "embedding_size": e,
            "hidden_size": h, "num_hidden_layers": l, "num_hidden_groups": 1,
            "inner_group_num": 1, "num_attention_heads": a, "intermediate_size": i,
            "hidden_act": "gelu_new", "max_position_embeddings": seq_len, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pad_token_id": pad,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "classifier_dropout_prob": 0.1,
        }),
        Family::XLNet => serde_json::json!({
            "model_type": "xlnet", "vocab_size": vocab_size, "d_model": h, "n_layer": l,
            "n_head": a, "d_head": h / a.max(1), "d_inner": i, "ff_activation": "gelu",
            "untie_r": true, "attn_type": "bi", "bi_data": false, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, "dropout": 0.1, "mem_len": null, "reuse_len": null,
            "pad_token_id": pad, "bos_token_id": 1, "eos_token_id": 2,
        }),
    }
}

/// One pretraining example, unpadded, special tokens included.
#[derive(Debug, Clone)]
pub struct PretrainExample {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub special: Vec<bool>,
    /// For whole-word masking.
    pub word_starts: Option<Vec<bool>>,
    /// NSP / SOP label (0: in order / is next).
    pub pair_label: Option<u32>,
    /// Position in the corpus (seeds static masks).
    pub index: u64,
}

/// A padded batch with per-position labels.
struct Padded {
    batch: Batch,
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    special: Vec<Vec<bool>>,
    /// MLM labels, [`IGNORE`] where not predicted and on padding.
    labels: Vec<i64>,
}

/// Where a pass draws its masks and permutations: the run's generator (training) or
/// one of its own (evaluation, the same draws every time).
enum Draws<'a> {
    Run(&'a TrainRng),
    Own(&'a mut Rng),
}

impl Draws<'_> {
    fn with<T>(&mut self, f: impl FnOnce(&mut Rng) -> T) -> T {
        match self {
            Draws::Run(r) => r.with(f),
            Draws::Own(r) => f(r),
        }
    }
}

/// Pretraining as a [`TrainTask`].
pub struct PretrainTask {
    pub family: Family,
    pub model: Model,
    pub varmap: VarMap,
    pub mlm_head: Option<MaskedLmHead>,
    pub pair_head: Option<SentencePairHead>,
    pub plm_head: Option<PlmHead>,
    pub objectives: Objectives,
    pub mlm: Option<MlmConfig>,
    /// Permutation LM's targets and order (with `plm_head`).
    pub plm: Option<PlmConfig>,
    pub tokenizer: Tokenizer,
    pub tokenizer_dir: Option<PathBuf>,
    pub dev: Vec<PretrainExample>,
    pub eval_batch: usize,
    pub seed: u64,
}

/// The sums of one pass.
#[derive(Default)]
struct Sums {
    mlm_loss: f64,
    mlm_batches: f64,
    mlm_correct: f64,
    mlm_total: f64,
    pair_loss: f64,
    pair_correct: f64,
    pair_total: f64,
    plm_loss: f64,
    plm_correct: f64,
    plm_total: f64,
    plm_batches: f64,
}

fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits
        .argmax(D::Minus1)?
        .flatten_all()?
        .to_dtype(DType::U32)?
        .to_vec1()?)
}

impl PretrainTask {
    fn pad(&self, rows: Vec<(Vec<u32>, &PretrainExample, Vec<i64>)>) -> Result<Padded> {
        let cfg = &self.model.config;
        let (pad_id, pad_type, left) =
            (cfg.pad_token_id(), cfg.pad_token_type_id(), cfg.pads_left());
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let n = rows.len();
        let mut out = Padded {
            batch: Batch {
                input_ids: Tensor::zeros((1, 1), DType::U32, &Device::Cpu)?,
                attention_mask: Tensor::zeros((1, 1), DType::U32, &Device::Cpu)?,
                token_type_ids: Tensor::zeros((1, 1), DType::U32, &Device::Cpu)?,
            },
            ids: Vec::with_capacity(n),
            mask: Vec::with_capacity(n),
            special: Vec::with_capacity(n),
            labels: Vec::with_capacity(n * len),
        };
        let mut types_all = Vec::with_capacity(n * len);
        for (ids, ex, labels) in rows {
            let p = len - ids.len();
            let place = |real: Vec<u32>, fill: u32| -> Vec<u32> {
                let padding = std::iter::repeat_n(fill, p);
                if left {
                    padding.chain(real).collect()
                } else {
                    real.into_iter().chain(padding).collect()
                }
            };
            let real_mask = vec![1u32; ids.len()];
            out.ids.push(place(ids, pad_id));
            out.mask.push(place(real_mask, 0));
            types_all.extend(place(ex.type_ids.clone(), pad_type));
            let special = ex.special.iter().copied();
            let pads = std::iter::repeat_n(false, p);
            out.special.push(if left {
                pads.chain(special).collect()
            } else {
                special.chain(pads).collect()
            });
            let pads = std::iter::repeat_n(IGNORE, p);
            if left {
                out.labels.extend(pads.chain(labels));
            } else {
                out.labels.extend(labels.into_iter().chain(pads));
            }
        }
        out.batch = Batch {
            input_ids: Tensor::from_vec(out.ids.concat(), (n, len), &Device::Cpu)?,
            attention_mask: Tensor::from_vec(out.mask.concat(), (n, len), &Device::Cpu)?,
            token_type_ids: Tensor::from_vec(types_all, (n, len), &Device::Cpu)?,
        };
        Ok(out)
    }

    /// The losses of a batch (summed into the returned total) and, for evaluation,
    /// the counts. `mask_rng` draws dynamic masks and permutations; `cfg` masks.
    fn forward(
        &self,
        batch: &[&PretrainExample],
        cfg: Option<&MlmConfig>,
        draws: &mut Draws,
        train: Option<&TrainRng>,
        sums: Option<&mut Sums>,
    ) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(batch.len());
        for ex in batch {
            let (ids, labels) = match cfg {
                Some(cfg) => {
                    let m = draws.with(|rng| {
                        mlm::mask_example(
                            cfg,
                            &ex.ids,
                            &ex.special,
                            ex.word_starts.as_deref(),
                            ex.index,
                            rng,
                        )
                    });
                    (m.input_ids, m.labels)
                }
                None => (ex.ids.clone(), vec![IGNORE; ex.ids.len()]),
            };
            rows.push((ids, *ex, labels));
        }
        let padded = self.pad(rows)?;
        let mut sums = sums;
        let mut total: Option<Tensor> = None;
        let mut add = |t: Tensor| -> Result<()> {
            total = Some(match total.take() {
                Some(s) => (s + t)?,
                None => t,
            });
            Ok(())
        };
        if let (Some(plm), Some(cfg)) = (&self.plm_head, &self.plm) {
            let t = draws.with(|rng| {
                plm_targets(
                    &padded.ids,
                    &padded.mask,
                    &padded.special,
                    cfg,
                    rng,
                    &Device::Cpu,
                )
            })?;
            let (b, l) = padded.batch.input_ids.dims2()?;
            let batch = Batch {
                input_ids: Tensor::from_vec(t.input_ids.concat(), (b, l), &Device::Cpu)?,
                attention_mask: padded.batch.attention_mask.clone(),
                token_type_ids: padded.batch.token_type_ids.clone(),
            };
            let logits = plm.forward_t(&batch, &t.perm_mask, &t.target_mapping, train)?;
            let loss = plm_loss(&logits, &t.labels)?;
            if let Some(s) = sums {
                let labels: Vec<i64> = t.labels.flatten_all()?.to_vec1()?;
                let preds = argmax_rows(&logits)?;
                for (p, l) in preds.iter().zip(&labels) {
                    if *l >= 0 {
                        s.plm_total += 1.0;
                        s.plm_correct += (*p as i64 == *l) as u8 as f64;
                    }
                }
                s.plm_loss += loss.to_scalar::<f32>()? as f64;
                s.plm_batches += 1.0;
            }
            add(loss)?;
            return Ok(total.expect("loss"));
        }
        let hidden = self.model.encoder.forward_t(&padded.batch, train)?;
        if let Some(head) = &self.mlm_head {
            let (b, l, h) = hidden.dims3()?;
            let (rows, targets): (Vec<u32>, Vec<i64>) = padded
                .labels
                .iter()
                .enumerate()
                .filter(|(_, l)| **l >= 0)
                .map(|(i, l)| (i as u32, *l))
                .unzip();
            if !rows.is_empty() {
                let n = rows.len();
                let flat = hidden.reshape((b * l, h))?;
                let picked = flat.index_select(&Tensor::from_vec(rows, n, &Device::Cpu)?, 0)?;
                let logits = head.forward(&picked)?;
                let labels = Tensor::from_vec(targets.clone(), n, &Device::Cpu)?;
                let loss = masked_cross_entropy(&logits, &labels)?;
                if let Some(s) = sums.as_deref_mut() {
                    let preds = argmax_rows(&logits)?;
                    s.mlm_total += n as f64;
                    s.mlm_correct += preds
                        .iter()
                        .zip(&targets)
                        .filter(|(p, t)| **p as i64 == **t)
                        .count() as f64;
                    s.mlm_loss += loss.to_scalar::<f32>()? as f64;
                    s.mlm_batches += 1.0;
                }
                add(loss)?;
            }
        }
        if let Some(head) = &self.pair_head {
            let labels: Vec<u32> = batch.iter().map(|e| e.pair_label.unwrap_or(0)).collect();
            let logits = head.forward_t(&hidden, train)?;
            let target = Tensor::new(labels.as_slice(), &Device::Cpu)?;
            let loss = sentence_pair_loss(&logits, &target)?;
            if let Some(s) = sums {
                let preds = argmax_rows(&logits)?;
                s.pair_total += labels.len() as f64;
                s.pair_correct += preds.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64;
                s.pair_loss += loss.to_scalar::<f32>()? as f64 * labels.len() as f64;
            }
            add(loss)?;
        }
        match total {
            Some(t) => Ok(t),
            // No masked position in the whole batch: a zero loss on the graph.
            None => Ok((hidden.sum_all()? * 0.0)?),
        }
    }

    /// The dev metrics on `examples`, dropout off, with masks and permutations drawn
    /// the same way at every evaluation.
    pub fn evaluate_on(&self, examples: &[PretrainExample]) -> Result<Metrics> {
        let cfg = self.mlm.clone().map(|mut c| {
            c.mode = MaskingMode::Static {
                seed: self.seed ^ 0xDE5E_7000,
            };
            c
        });
        let mut rng = Rng::new(self.seed ^ 0x0E7A_1000);
        let mut draws = Draws::Own(&mut rng);
        let mut sums = Sums::default();
        let refs: Vec<&PretrainExample> = examples.iter().collect();
        for chunk in refs.chunks(self.eval_batch.max(1)) {
            self.forward(chunk, cfg.as_ref(), &mut draws, None, Some(&mut sums))?;
        }
        let mut values = BTreeMap::new();
        let mut loss = 0.0;
        if self.objectives.mlm.is_some() {
            let l = sums.mlm_loss / sums.mlm_batches.max(1.0);
            values.insert("mlm_loss".to_string(), l);
            values.insert(
                "mlm_accuracy".to_string(),
                sums.mlm_correct / sums.mlm_total.max(1.0),
            );
            values.insert("masked_tokens".to_string(), sums.mlm_total);
            loss += l;
        }
        if let Some(task) = self.objectives.pair {
            let name = match task {
                PairTask::NextSentence => "nsp",
                PairTask::SentenceOrder => "sop",
            };
            let l = sums.pair_loss / sums.pair_total.max(1.0);
            values.insert(format!("{name}_loss"), l);
            values.insert(
                format!("{name}_accuracy"),
                sums.pair_correct / sums.pair_total.max(1.0),
            );
            loss += l;
        }
        if self.objectives.plm {
            let l = sums.plm_loss / sums.plm_batches.max(1.0);
            values.insert("plm_loss".to_string(), l);
            values.insert(
                "plm_accuracy".to_string(),
                sums.plm_correct / sums.plm_total.max(1.0),
            );
            loss += l;
        }
        values.insert("loss".to_string(), loss);
        Ok(Metrics {
            values,
            primary: "loss".into(),
            higher_is_better: false,
        })
    }
}

impl TrainTask for PretrainTask {
    type Example = PretrainExample;

    fn loss(&self, batch: &[&PretrainExample], rng: &TrainRng) -> Result<Tensor> {
        let mut draws = Draws::Run(rng);
        self.forward(batch, self.mlm.as_ref(), &mut draws, Some(rng), None)
    }

    fn evaluate(&self) -> Result<Metrics> {
        self.evaluate_on(&self.dev)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_pretrained(
            dir,
            &self.model,
            &self.varmap,
            &self.tokenizer,
            self.tokenizer_dir.as_deref(),
        )
    }
}

/// Saves a pretrained model to `dir` as the family's transformers pretraining class
/// (see [`architecture`]): the base model's tensors with the family prefix, the heads'
/// without (tied decoders are not stored); `config.json` with `architectures`; and the
/// tokenizer files (copied from `tokenizer_dir` when given, else written from `tok`).
pub fn save_pretrained(
    dir: &Path,
    model: &Model,
    varmap: &VarMap,
    tok: &Tokenizer,
    tokenizer_dir: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let family = model.family();
    let tensors: HashMap<String, Tensor> = varmap_tensors(varmap)
        .into_iter()
        .map(|(n, t)| (hf_name(family, &n, PRETRAINING_HEAD_PREFIXES), t))
        .collect();
    save_tensors(&tensors, &dir.join("model.safetensors"))?;
    let mut config = model.checkpoint.config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!([architecture(family)]),
        );
    }
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    write_atomic(
        &dir.join(slimformer::checkpoint::CONFIG_FILE),
        text.as_bytes(),
    )?;
    match tokenizer_dir {
        Some(src) => save_tokenizer_files(src, dir, model),
        None => {
            let max_len = model.config.max_input_len().unwrap_or(1_000_000);
            save_tokenizer(tok, family, dir, max_len)
        }
    }
}

/// Documents of paragraphs from the corpus files; each file starts a new document.
pub fn read_corpus(files: &[PathBuf]) -> Result<Vec<Vec<String>>> {
    if files.is_empty() {
        return Err(Error::setting("corpus", "no corpus file given"));
    }
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let before = docs.len();
        let mut doc: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                if !doc.is_empty() {
                    docs.push(std::mem::take(&mut doc));
                }
                continue;
            }
            doc.extend(
                line.split('\t')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from),
            );
        }
        if !doc.is_empty() {
            docs.push(doc);
        }
        if docs.len() == before {
            return Err(Error::file(path, "the corpus file has no text"));
        }
    }
    Ok(docs)
}

fn special_id(tok: &Tokenizer, token: &str, source: &str) -> Result<u32> {
    tok.token_to_id(token).ok_or_else(|| {
        Error::Tokenizer(format!(
            "{source} has no {token} token, which the family needs"
        ))
    })
}

/// Loads/trains the tokenizer, builds the model and the examples, and the task;
/// returns it with the training examples.
pub fn prepare(opts: &PretrainOptions) -> Result<(PretrainTask, Vec<PretrainExample>)> {
    let family = opts.family;
    let docs = read_corpus(&opts.corpus)?;
    let (tok, tokenizer_dir, source) = load_tokenizer(opts)?;
    let sp = special_tokens(family);
    let specials = Specials {
        cls: special_id(&tok, sp.cls.token, &source)?,
        sep: special_id(&tok, sp.sep.token, &source)?,
        mask: special_id(&tok, sp.mask.token, &source)?,
        pad: special_id(&tok, sp.pad.token, &source)?,
    };
    let vocab_size = tok.get_vocab_size(true);
    let min_len = if family == Family::XLNet { 4 } else { 8 };
    if opts.seq_len < min_len {
        return Err(Error::bad_value(
            "seq_len",
            opts.seq_len,
            format!("too short (at least {min_len})"),
        ));
    }

    let config = model_config(opts, vocab_size, specials.pad)?;
    let seed = opts.train_config.seed;
    let (model, varmap) = init_trainable(config, DType::F32, seed)?;
    if let Some(most) = model.config.max_input_len() {
        if opts.seq_len > most {
            return Err(Error::bad_value(
                "seq_len",
                opts.seq_len,
                format!("more than the model's position limit of {most}"),
            ));
        }
    }
    let objectives = objectives(family);
    let mlm_head = objectives
        .mlm
        .map(|_| MaskedLmHead::load(&model))
        .transpose()?;
    let pair_head = objectives
        .pair
        .map(|_| SentencePairHead::load(&model))
        .transpose()?;
    let plm_head = objectives.plm.then(|| PlmHead::load(&model)).transpose()?;
    // The heads' variables were created with candle's (unseeded) init: seed them all.
    initialize(&varmap, &model.checkpoint.config, seed, |_| true)?;

    let mlm = objectives.mlm.map(|static_masks| {
        let mut c = MlmConfig::new(specials.mask, mlm::non_special_ids(&tok, vocab_size as u32));
        c.whole_word = opts.whole_word_mask;
        if static_masks {
            c.mode = MaskingMode::Static { seed };
        }
        c
    });
    let plm = objectives.plm.then(|| PlmConfig::new(specials.mask));

    let tokenized = tokenize_corpus(&tok, &docs)?;
    let examples = make_examples(opts, &tok, &tokenized, objectives.pair, specials);
    let (train, dev) = split_dev(examples, opts.dev_fraction, HoldOut::Tail, "dev_fraction")?;
    Ok((
        PretrainTask {
            family,
            model,
            varmap,
            mlm_head,
            pair_head,
            plm_head,
            objectives,
            mlm,
            plm,
            tokenizer: tok,
            tokenizer_dir,
            dev,
            eval_batch: opts.train_config.batch,
            seed,
        },
        train,
    ))
}

/// The ids of the special tokens the examples are built with.
#[derive(Debug, Clone, Copy)]
struct Specials {
    cls: u32,
    sep: u32,
    mask: u32,
    pad: u32,
}

/// The tokenizer to pretrain with: trained on the corpus, or read from a folder
/// (padding and truncation dropped); with that folder and a name for errors.
fn load_tokenizer(opts: &PretrainOptions) -> Result<(Tokenizer, Option<PathBuf>, String)> {
    Ok(match &opts.tokenizer {
        TokenizerSource::Train { vocab_size } => (
            train_tokenizer(opts.family, &opts.corpus, *vocab_size)?,
            None,
            "the trained tokenizer".to_string(),
        ),
        TokenizerSource::Dir(dir) => {
            let path = dir.join(slimformer::tokenize::TOKENIZER_FILE);
            let mut tok = Tokenizer::from_file(&path).map_err(|e| Error::file(&path, e))?;
            tok.with_padding(None);
            tok.with_truncation(None)
                .map_err(|e| Error::file(&path, e))?;
            (tok, Some(dir.clone()), path.display().to_string())
        }
    })
}

/// The new model's `config.json`: a named size, or a given config of the same
/// family, with the tokenizer's vocabulary size and pad id.
fn model_config(opts: &PretrainOptions, vocab_size: usize, pad: u32) -> Result<serde_json::Value> {
    let family = opts.family;
    let mut config = match &opts.shape {
        ModelShape::Size(s) => size_config(family, *s, vocab_size, opts.seq_len, pad),
        ModelShape::Config(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
            let mut v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::file(path, e))?;
            let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
            if Family::from_model_type(mt) != Some(family) {
                return Err(Error::file(
                    path,
                    format!(
                        "model_type {mt:?} is not the family {:?}",
                        family.model_type()
                    ),
                ));
            }
            let obj = v
                .as_object_mut()
                .ok_or_else(|| Error::file(path, "not a JSON object"))?;
            obj.insert("vocab_size".into(), vocab_size.into());
            obj.insert("pad_token_id".into(), pad.into());
            v
        }
    };
    if let Some(obj) = config.as_object_mut() {
        obj.remove("architectures");
    }
    Ok(config)
}

/// Every non-empty paragraph's ids (no special tokens), by document; empty
/// documents dropped.
fn tokenize_corpus(tok: &Tokenizer, docs: &[Vec<String>]) -> Result<Vec<Vec<Vec<u32>>>> {
    let flat: Vec<String> = docs.iter().flatten().cloned().collect();
    let encodings = tok
        .encode_batch(flat, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut it = encodings.into_iter();
    Ok(docs
        .iter()
        .map(|d| {
            d.iter()
                .map(|_| it.next().expect("encoding").get_ids().to_vec())
                .filter(|ids| !ids.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|d: &Vec<Vec<u32>>| !d.is_empty())
        .collect())
}

/// The examples: sentence pairs for a pair objective (NSP, SOP), else the
/// documents packed into sequences of at most `seq_len` tokens.
fn make_examples(
    opts: &PretrainOptions,
    tok: &Tokenizer,
    tokenized: &[Vec<Vec<u32>>],
    pair_task: Option<PairTask>,
    Specials { cls, sep, .. }: Specials,
) -> Vec<PretrainExample> {
    let boundary = if tok.get_vocab(true).keys().any(|t| t.starts_with("##")) {
        WordBoundary::ContinuationPrefix
    } else {
        WordBoundary::StartMarker
    };
    let word_starts = |ids: &[u32], special: &[bool]| -> Option<Vec<bool>> {
        opts.whole_word_mask.then(|| {
            let tokens: Vec<String> = ids
                .iter()
                .map(|i| tok.id_to_token(*i).unwrap_or_default())
                .collect();
            mlm::word_starts(&tokens, special, boundary)
        })
    };
    let mut examples = Vec::new();
    if let Some(task) = pair_task {
        let mut rng = Rng::new(opts.train_config.seed ^ 0x9A1_25EED);
        for pair in pairs::make_pairs(tokenized, task, opts.seq_len - 3, &mut rng) {
            let (ids, type_ids, special) = pairs::pair_input(&pair, cls, sep);
            let index = examples.len() as u64;
            examples.push(PretrainExample {
                word_starts: word_starts(&ids, &special),
                ids,
                type_ids,
                special,
                pair_label: Some(pair.label),
                index,
            });
        }
        return examples;
    }
    for body in pack_documents(tokenized, opts.seq_len - 2) {
        let n = body.len();
        let (ids, type_ids, special): (Vec<u32>, Vec<u32>, Vec<bool>) =
            if opts.family == Family::XLNet {
                let ids = body.into_iter().chain([sep, cls]).collect();
                let types = (0..n + 2).map(|i| if i == n + 1 { 2 } else { 0 }).collect();
                let special = (0..n + 2).map(|i| i >= n).collect();
                (ids, types, special)
            } else {
                let ids = std::iter::once(cls).chain(body).chain([sep]).collect();
                let special = (0..n + 2).map(|i| i == 0 || i == n + 1).collect();
                (ids, vec![0; n + 2], special)
            };
        let index = examples.len() as u64;
        examples.push(PretrainExample {
            word_starts: word_starts(&ids, &special),
            ids,
            type_ids,
            special,
            pair_label: None,
            index,
        });
    }
    examples
}

/// Each document's paragraphs packed in order into bodies of at most `budget`
/// tokens (a longer paragraph is cut); bodies never span two documents.
fn pack_documents(tokenized: &[Vec<Vec<u32>>], budget: usize) -> Vec<Vec<u32>> {
    let mut packed: Vec<Vec<u32>> = Vec::new();
    for doc in tokenized {
        let mut current: Vec<u32> = Vec::new();
        for piece in doc.iter().flat_map(|p| p.chunks(budget)) {
            if !current.is_empty() && current.len() + piece.len() > budget {
                packed.push(std::mem::take(&mut current));
            }
            current.extend_from_slice(piece);
        }
        if !current.is_empty() {
            packed.push(current);
        }
    }
    packed
}

/// What `pretrain` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainReport {
    pub out: PathBuf,
    pub family: Family,
    pub architecture: &'static str,
    pub vocab_size: usize,
    pub parameters: usize,
    pub train_examples: usize,
    pub dev_examples: usize,
    #[serde(flatten)]
    pub outcome: TrainOutcome,
}

/// Pretrains a model from scratch and writes the run folder `opts.out`.
pub fn pretrain(opts: &PretrainOptions) -> Result<PretrainReport> {
    let (task, train) = prepare(opts)?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let task_info = serde_json::json!({
        "kind": "pretraining",
        "family": opts.family.model_type(),
        "corpus": opts.corpus.iter().map(|p| abs(p)).collect::<Vec<_>>(),
        "tokenizer": match &opts.tokenizer {
            TokenizerSource::Train { vocab_size } => serde_json::json!({"train": vocab_size}),
            TokenizerSource::Dir(d) => serde_json::json!({"dir": abs(d)}),
        },
        "model": match &opts.shape {
            ModelShape::Size(s) => serde_json::json!({"size": s.name}),
            ModelShape::Config(p) => serde_json::json!({"config": abs(p)}),
        },
        "seq_len": opts.seq_len,
        "whole_word_mask": opts.whole_word_mask,
        "dev_fraction": opts.dev_fraction,
    });
    let run = RunOptions {
        out: opts.out.clone(),
        overwrite: opts.overwrite,
        task_info,
        progress: opts.progress,
        keep: Vec::new(),
    };
    let outcome = trainer::train(&task, &train, &task.varmap, &opts.train_config, &run)?;
    let parameters = varmap_tensors(&task.varmap)
        .values()
        .map(|t| t.elem_count())
        .sum();
    Ok(PretrainReport {
        out: opts.out.clone(),
        family: opts.family,
        architecture: architecture(opts.family),
        vocab_size: task.tokenizer.get_vocab_size(true),
        parameters,
        train_examples: train.len(),
        dev_examples: task.dev.len(),
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_split_is_the_tail() {
        let tail = |items: Vec<i32>, f| split_dev(items, f, HoldOut::Tail, "dev_fraction");
        let (t, d) = tail((0..20).collect(), 0.1).unwrap();
        assert_eq!(t, (0..18).collect::<Vec<_>>());
        assert_eq!(d, vec![18, 19]);
        let (_, d) = tail(vec![1, 2, 3], 0.01).unwrap();
        assert_eq!(d, vec![3]);
        assert!(tail(vec![1], 0.5).is_err());
        assert!(tail(vec![1, 2], 1.5).is_err());
    }

    #[test]
    fn corpus_documents_paragraphs_and_tabs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.txt");
        let b = tmp.path().join("b.txt");
        std::fs::write(&a, "one\ntwo\tthree\t\n\n\n  \nfour\n").unwrap();
        std::fs::write(&b, "five\n").unwrap();
        let docs = read_corpus(&[a.clone(), b]).unwrap();
        let want: Vec<Vec<&str>> = vec![vec!["one", "two", "three"], vec!["four"], vec!["five"]];
        assert_eq!(docs, want);
        let empty = tmp.path().join("empty.txt");
        std::fs::write(&empty, "\n \n").unwrap();
        let err = read_corpus(&[a, empty.clone()]).unwrap_err().to_string();
        assert!(
            err.contains(&*empty.to_string_lossy()) && err.contains("no text"),
            "{err}"
        );
    }

    #[test]
    fn sizes_are_consistent() {
        for s in SIZES {
            assert_eq!(s.hidden % s.heads, 0, "{}", s.name);
            assert!(s.albert_embedding < s.hidden);
        }
        assert!(size("huge").is_err());
    }
}
