//! Fine-tuning for sequence classification: labelled texts in, a Hugging Face
//! `*ForSequenceClassification` checkpoint out, through the [`super::trainer`] loop.

use super::data::{self, Columns, Row};
use super::trainer::{self, Metrics, RunOptions, TrainConfig, TrainOutcome, TrainTask};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::Serialize;
use slimformer::batching::{self, BatchLimits};
use slimformer::heads::{Labels, ProblemType, SequenceClassifier};
use slimformer::model::Model;
use slimformer::rng::{Rng, TrainRng};
use slimformer::save::{save_sequence_classifier, SEQUENCE_HEAD_PREFIXES};
use slimformer::tokenize::{Encoded, TextTokenizer};
use slimformer::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const DEFAULT_MAX_LEN: usize = 128;

/// Everything `slimformer finetune` takes.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub model_dir: PathBuf,
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    /// Carve this fraction of the training rows out as the dev set (when no `dev`).
    pub dev_split: Option<f64>,
    pub columns: Columns,
    /// Truncate texts to this many tokens (at most the model's position limit;
    /// `None`: 128, or the position limit when that is lower).
    pub max_len: Option<usize>,
    pub train_config: TrainConfig,
    pub out: PathBuf,
    pub overwrite: bool,
    pub progress: bool,
    /// Held-out test data, scored with the best checkpoint once training ends.
    pub test: Option<PathBuf>,
}

/// One tokenized, labelled text.
#[derive(Debug, Clone)]
pub struct Example {
    pub encoded: Encoded,
    pub label: u32,
}

/// Sequence classification as a [`TrainTask`].
pub struct ClassificationTask {
    pub model: Model,
    pub varmap: VarMap,
    pub head: SequenceClassifier,
    pub tokenizer: TextTokenizer,
    pub labels: Vec<String>,
    pub dev: Vec<Example>,
    pub eval_batch: usize,
}

impl ClassificationTask {
    /// Logits [batch, labels]; `train` turns dropout on.
    pub fn logits(&self, batch: &[&Example], train: Option<&TrainRng>) -> Result<Tensor> {
        let encoded: Vec<&Encoded> = batch.iter().map(|e| &e.encoded).collect();
        let inputs = self.tokenizer.collate(&encoded, &Device::Cpu)?;
        let hidden = self.model.encoder.forward_t(&inputs, train)?;
        self.head.forward_t(&hidden, train)
    }

    fn targets(batch: &[&Example]) -> Result<Tensor> {
        let ids: Vec<u32> = batch.iter().map(|e| e.label).collect();
        Ok(Tensor::new(ids, &Device::Cpu)?)
    }

    /// Accuracy, macro-F1, MCC and mean loss over `examples`, dropout off.
    pub fn evaluate_on(&self, examples: &[Example]) -> Result<Metrics> {
        let mut preds = vec![0u32; examples.len()];
        let mut loss_sum = 0f64;
        let limits = BatchLimits::rows(self.eval_batch);
        for (indices, batch) in batching::batches(examples, |e| e.encoded.ids.len(), limits) {
            let logits = self.logits(&batch, None)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &Self::targets(&batch)?)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
            for (i, row) in indices.into_iter().zip(logits.to_vec2::<f32>()?) {
                let best = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                    .unwrap_or(0);
                preds[i] = best as u32;
            }
        }
        let gold: Vec<u32> = examples.iter().map(|e| e.label).collect();
        let mut values = classification_metrics(&preds, &gold, self.labels.len());
        values.insert("loss".into(), loss_sum / examples.len().max(1) as f64);
        Ok(Metrics {
            values,
            primary: "accuracy".into(),
            higher_is_better: true,
        })
    }
}

impl TrainTask for ClassificationTask {
    type Example = Example;

    fn loss(&self, batch: &[&Example], rng: &TrainRng) -> Result<Tensor> {
        let logits = self.logits(batch, Some(rng))?;
        Ok(candle_nn::loss::cross_entropy(
            &logits,
            &Self::targets(batch)?,
        )?)
    }

    fn evaluate(&self) -> Result<Metrics> {
        self.evaluate_on(&self.dev)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_sequence_classifier(dir, &self.model, &self.varmap, &self.labels)
    }
}

/// Accuracy, macro-F1 (over the classes that occur in gold or predictions) and
/// Matthews' correlation coefficient (multi-class form; 0 when undefined).
pub fn classification_metrics(preds: &[u32], gold: &[u32], k: usize) -> BTreeMap<String, f64> {
    let n = gold.len();
    let k = k.max(
        preds
            .iter()
            .chain(gold)
            .map(|&c| c as usize + 1)
            .max()
            .unwrap_or(0),
    );
    let mut tp = vec![0f64; k];
    let mut pred_n = vec![0f64; k];
    let mut gold_n = vec![0f64; k];
    for (&p, &g) in preds.iter().zip(gold) {
        pred_n[p as usize] += 1.0;
        gold_n[g as usize] += 1.0;
        if p == g {
            tp[p as usize] += 1.0;
        }
    }
    let correct: f64 = tp.iter().sum();
    let present: Vec<usize> = (0..k).filter(|&c| pred_n[c] + gold_n[c] > 0.0).collect();
    let macro_f1 = if present.is_empty() {
        0.0
    } else {
        present
            .iter()
            .map(|&c| 2.0 * tp[c] / (pred_n[c] + gold_n[c]))
            .sum::<f64>()
            / present.len() as f64
    };
    let s = n as f64;
    let cov_pt = correct * s - (0..k).map(|c| pred_n[c] * gold_n[c]).sum::<f64>();
    let cov_pp = s * s - pred_n.iter().map(|p| p * p).sum::<f64>();
    let cov_tt = s * s - gold_n.iter().map(|t| t * t).sum::<f64>();
    let mcc = if cov_pp * cov_tt > 0.0 {
        cov_pt / (cov_pp * cov_tt).sqrt()
    } else {
        0.0
    };
    BTreeMap::from([
        ("accuracy".to_string(), correct / s.max(1.0)),
        ("macro_f1".to_string(), macro_f1),
        ("mcc".to_string(), mcc),
    ])
}

/// The model's own label names (from `id2label`, by id), if its config has them.
pub(crate) fn model_labels(model: &Model) -> Option<Vec<String>> {
    let map = model.checkpoint.config.get("id2label")?.as_object()?;
    let by_id: BTreeMap<usize, String> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    let names: Vec<String> = by_id.values().cloned().collect();
    (by_id.keys().copied().eq(0..names.len()) && !names.is_empty()).then_some(names)
}

/// Sets the variables a new head created: weights normal(0, 0.02), biases zero, drawn
/// from the seeded generator in name order (candle's own generator cannot be seeded).
pub fn init_new_vars(varmap: &VarMap, before: &BTreeSet<String>, seed: u64) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut new: Vec<(&String, &candle_core::Var)> =
        data.iter().filter(|(n, _)| !before.contains(*n)).collect();
    new.sort_by(|a, b| a.0.cmp(b.0));
    let mut rng = Rng::new(seed ^ 0x4EAD_1417);
    for (name, var) in new {
        let shape = var.shape().clone();
        let count = shape.elem_count();
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; count]
        } else {
            (0..count)
                .map(|_| rng.normal() * slimformer::layers::INIT_STD as f32)
                .collect()
        };
        var.set(&Tensor::from_vec(values, shape, &Device::Cpu)?)?;
    }
    Ok(())
}

fn encode_rows(
    tokenizer: &TextTokenizer,
    path: &Path,
    rows: &[Row],
    ids: &[usize],
) -> Result<Vec<Example>> {
    rows.iter()
        .zip(ids)
        .map(|(row, &label)| {
            let encoded = tokenizer
                .encode(&row.input)
                .map_err(|e| Error::file(path, format!("line {}: {e}", row.line)))?;
            Ok(Example {
                encoded,
                label: label as u32,
            })
        })
        .collect()
}

/// A stored classifier with another number of labels is replaced by a new head
/// (like transformers' `ignore_mismatched_sizes`), with a warning.
pub(crate) fn drop_mismatched_head(model: &mut Model, varmap: &VarMap, num_labels: usize) {
    let classifier = [
        "classifier.weight",
        "classifier.out_proj.weight",
        "logits_proj.weight",
    ]
    .into_iter()
    .find_map(|n| model.checkpoint.tensors.get(n));
    let Some(stored) = classifier.and_then(|t| t.dims().first().copied()) else {
        return;
    };
    if stored == num_labels {
        return;
    }
    tracing::warn!(
        "the checkpoint's classifier has {stored} labels, the data {num_labels}: \
         starting a new classification head"
    );
    let is_head = |n: &str| SEQUENCE_HEAD_PREFIXES.iter().any(|p| n.starts_with(p));
    model.checkpoint.tensors.retain(|n, _| !is_head(n));
    varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|n, _| !is_head(n));
}

/// The training data and the dev data (a file, or a seeded share of the training
/// data), each read by `read`; with the file the dev data came from.
pub(crate) fn train_and_dev<T>(
    opts: &FinetuneOptions,
    read: impl Fn(&Path) -> Result<Vec<T>>,
) -> Result<(Vec<T>, Vec<T>, PathBuf)> {
    let train = read(&opts.train)?;
    match (&opts.dev, opts.dev_split) {
        (Some(dev), _) => Ok((train, read(dev)?, dev.clone())),
        (None, Some(fraction)) => {
            let (t, d) = data::split_dev(
                train,
                fraction,
                data::HoldOut::Seeded(opts.train_config.seed),
                "dev_split",
            )?;
            Ok((t, d, opts.train.clone()))
        }
        (None, None) => Err(Error::setting(
            "dev",
            "no dev data: give a dev file or a fraction of the training data to split off",
        )),
    }
}

/// The names of a VarMap's variables (to tell a new head's from the checkpoint's).
pub(crate) fn var_names(varmap: &VarMap) -> BTreeSet<String> {
    varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect()
}

/// The token limit of training: the one asked for (at most the model's position
/// limit), else 128 or the position limit when that is lower.
pub(crate) fn resolve_max_len(asked: Option<usize>, model: &Model) -> Result<usize> {
    let limit = model.config.max_input_len();
    if let (Some(asked), Some(most)) = (asked, limit) {
        if asked > most {
            return Err(Error::bad_value(
                "max_len",
                asked,
                format!("more than the model's position limit of {most}"),
            ));
        }
    }
    Ok(asked.unwrap_or_else(|| limit.map_or(DEFAULT_MAX_LEN, |m| m.min(DEFAULT_MAX_LEN))))
}

/// Loads the model and data and builds the task; returns it with the training examples.
pub fn prepare(opts: &FinetuneOptions) -> Result<(ClassificationTask, Vec<Example>)> {
    let (train_rows, dev_rows, dev_path) =
        train_and_dev(opts, |path| data::read_rows(path, &opts.columns))?;

    let (mut model, varmap) = Model::load_trainable(&opts.model_dir)?;
    let labels = data::label_names(&train_rows, model_labels(&model).as_deref());
    if labels.len() < 2 {
        return Err(Error::file(
            &opts.train,
            format!(
                "only one label ({}): classification needs at least two",
                labels.join(", ")
            ),
        ));
    }
    let train_ids = data::label_ids(&opts.train, &train_rows, &labels)?;
    let dev_ids = data::label_ids(&dev_path, &dev_rows, &labels)?;

    drop_mismatched_head(&mut model, &varmap, labels.len());
    let before = var_names(&varmap);
    let head = SequenceClassifier::for_labels(
        &model,
        Labels {
            names: labels.clone(),
            problem_type: ProblemType::SingleLabel,
        },
    )?;
    init_new_vars(&varmap, &before, opts.train_config.seed)?;

    let max_len = resolve_max_len(opts.max_len, &model)?;
    let tokenizer =
        TextTokenizer::load(&opts.model_dir, model.config.padding(), Some(max_len), true)?;
    let train = encode_rows(&tokenizer, &opts.train, &train_rows, &train_ids)?;
    let dev = encode_rows(&tokenizer, &dev_path, &dev_rows, &dev_ids)?;
    Ok((
        ClassificationTask {
            model,
            varmap,
            head,
            tokenizer,
            labels,
            dev,
            eval_batch: opts.train_config.batch,
        },
        train,
    ))
}

/// What `finetune` reports.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneReport {
    pub out: PathBuf,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub dev_examples: usize,
    #[serde(flatten)]
    pub outcome: TrainOutcome,
    /// The best checkpoint's metrics on `FinetuneOptions::test`.
    pub test: Option<Metrics>,
}

/// Accuracy, macro-F1, MCC and loss of a saved sequence classifier on a labelled
/// file, its labels named as in the checkpoint's `id2label`.
pub fn evaluate_checkpoint(
    model_dir: &Path,
    file: &Path,
    columns: &Columns,
    max_len: Option<usize>,
    batch: usize,
) -> Result<Metrics> {
    let model = Model::load(model_dir)?;
    let head = SequenceClassifier::load(&model)?;
    let labels = head.labels.names.clone();
    let rows = data::read_rows(file, columns)?;
    let ids = data::label_ids(file, &rows, &labels)?;
    let max_len = max_len.or_else(|| model.config.max_input_len().map(|m| m.min(DEFAULT_MAX_LEN)));
    let tokenizer = TextTokenizer::load(model_dir, model.config.padding(), max_len, true)?;
    let examples = encode_rows(&tokenizer, file, &rows, &ids)?;
    let task = ClassificationTask {
        model,
        varmap: VarMap::new(),
        head,
        tokenizer,
        labels,
        dev: Vec::new(),
        eval_batch: batch,
    };
    task.evaluate_on(&examples)
}

/// What a fine-tune is (recorded in `train_config.json`; a resume must match it).
pub(crate) fn task_info(
    opts: &FinetuneOptions,
    kind: &str,
    labels: &[String],
) -> serde_json::Value {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    serde_json::json!({
        "kind": kind,
        "model": abs(&opts.model_dir),
        "train": abs(&opts.train),
        "dev": opts.dev.as_deref().map(abs),
        "dev_split": opts.dev_split,
        "text_col": opts.columns.text,
        "text_pair_col": opts.columns.text_pair,
        "label_col": opts.columns.label,
        "max_len": opts.max_len,
        "labels": labels,
    })
}

/// Fine-tunes `opts.model_dir` and writes the run folder `opts.out`.
pub fn finetune(opts: &FinetuneOptions) -> Result<FinetuneReport> {
    let (task, train) = prepare(opts)?;
    let run = RunOptions {
        out: opts.out.clone(),
        overwrite: opts.overwrite,
        task_info: task_info(opts, "sequence-classification", &task.labels),
        progress: opts.progress,
        keep: Vec::new(),
    };
    let outcome = trainer::train(&task, &train, &task.varmap, &opts.train_config, &run)?;
    let test = match &opts.test {
        Some(file) => Some(evaluate_checkpoint(
            &opts.out,
            file,
            &opts.columns,
            Some(task.tokenizer.max_len().unwrap_or(DEFAULT_MAX_LEN)),
            opts.train_config.batch,
        )?),
        None => None,
    };
    Ok(FinetuneReport {
        test,
        out: opts.out.clone(),
        labels: task.labels.clone(),
        train_examples: train.len(),
        dev_examples: task.dev.len(),
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_a_known_case() {
        // sklearn: accuracy 0.5, macro-F1 (0.5+0.5)/2... computed by hand below.
        let gold = [0, 0, 1, 1];
        let pred = [0, 1, 1, 1];
        let m = classification_metrics(&pred, &gold, 2);
        assert!((m["accuracy"] - 0.75).abs() < 1e-12);
        // F1(0) = 2·1/(1+2) = 2/3; F1(1) = 2·2/(3+2) = 4/5.
        assert!((m["macro_f1"] - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-12);
        // Binary MCC = (TP·TN − FP·FN)/√(...) = (2·1 − 1·0)/√(3·1·2·2) = 2/√12.
        assert!((m["mcc"] - 2.0 / 12f64.sqrt()).abs() < 1e-12);
        let perfect = classification_metrics(&gold, &gold, 2);
        assert_eq!(perfect["mcc"], 1.0);
        assert_eq!(perfect["macro_f1"], 1.0);
    }
}
