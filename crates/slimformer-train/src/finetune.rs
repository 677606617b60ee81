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
use slimformer::rng::TrainRng;
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
    /// What the labels are (`None`: the model's `problem_type`, else one label a text).
    pub problem_type: Option<ProblemType>,
}

/// What a row's label is to a sequence classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The id of the text's one label.
    Class(u32),
    /// 1 for each of the text's labels, 0 for the others (multi-label).
    Classes(Vec<f32>),
    /// The number to predict (regression).
    Value(f32),
}

/// One tokenized, labelled text.
#[derive(Debug, Clone)]
pub struct Example {
    pub encoded: Encoded,
    pub target: Target,
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

    pub fn problem_type(&self) -> ProblemType {
        self.head.labels.problem_type
    }

    /// Metrics of the problem type over `examples`, dropout off, with the mean loss:
    /// accuracy, macro-F1 and MCC of one label a text; exact-match accuracy, micro-
    /// and macro-F1 of multi-label predictions (a label's sigmoid above 0.5); squared
    /// and absolute error and Pearson's and Spearman's correlation of a regression.
    pub fn evaluate_on(&self, examples: &[Example]) -> Result<Metrics> {
        let mut outputs = vec![Vec::new(); examples.len()];
        let mut loss_sum = 0f64;
        let limits = BatchLimits::rows(self.eval_batch);
        for (indices, batch) in batching::batches(examples, |e| e.encoded.ids.len(), limits) {
            let logits = self.logits(&batch, None)?;
            let loss = sequence_loss(self.problem_type(), &logits, &batch)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
            for (i, row) in indices.into_iter().zip(logits.to_vec2::<f32>()?) {
                outputs[i] = row;
            }
        }
        let targets: Vec<&Target> = examples.iter().map(|e| &e.target).collect();
        let (mut values, primary, higher_is_better) = match self.problem_type() {
            ProblemType::SingleLabel => {
                let preds: Vec<u32> = outputs.iter().map(|row| argmax(row) as u32).collect();
                let gold: Vec<u32> = targets.iter().map(|t| t.class()).collect::<Result<_>>()?;
                let m = classification_metrics(&preds, &gold, self.labels.len());
                (m, "accuracy", true)
            }
            ProblemType::MultiLabel => {
                let gold: Vec<&[f32]> =
                    targets.iter().map(|t| t.classes()).collect::<Result<_>>()?;
                (multi_label_metrics(&outputs, &gold), "micro_f1", true)
            }
            ProblemType::Regression => {
                let preds: Vec<f64> = outputs.iter().map(|row| row[0] as f64).collect();
                let gold: Vec<f64> = targets
                    .iter()
                    .map(|t| t.value().map(f64::from))
                    .collect::<Result<_>>()?;
                (regression_metrics(&preds, &gold), "mse", false)
            }
        };
        values.insert("loss".into(), loss_sum / examples.len().max(1) as f64);
        Ok(Metrics {
            values,
            primary: primary.into(),
            higher_is_better,
        })
    }
}

impl Target {
    fn class(&self) -> Result<u32> {
        match self {
            Target::Class(id) => Ok(*id),
            _ => Err(Error::Input("a single-label target was expected".into())),
        }
    }

    fn classes(&self) -> Result<&[f32]> {
        match self {
            Target::Classes(flags) => Ok(flags),
            _ => Err(Error::Input("a multi-label target was expected".into())),
        }
    }

    fn value(&self) -> Result<f32> {
        match self {
            Target::Value(v) => Ok(*v),
            _ => Err(Error::Input("a regression target was expected".into())),
        }
    }
}

/// The index of a row's largest value (the first of equal ones).
fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// transformers' loss of a `*ForSequenceClassification` for its problem type, a mean
/// over the batch: cross-entropy; binary cross-entropy on each label's logit (as
/// `BCEWithLogitsLoss`: a mean over texts and labels); or the squared error of the
/// one output (`MSELoss`).
pub fn sequence_loss(problem: ProblemType, logits: &Tensor, batch: &[&Example]) -> Result<Tensor> {
    let device = logits.device();
    match problem {
        ProblemType::SingleLabel => {
            let ids: Vec<u32> = batch
                .iter()
                .map(|e| e.target.class())
                .collect::<Result<_>>()?;
            Ok(candle_nn::loss::cross_entropy(
                logits,
                &Tensor::new(ids, device)?,
            )?)
        }
        ProblemType::MultiLabel => {
            let flags: Vec<f32> = batch
                .iter()
                .map(|e| e.target.classes().map(<[f32]>::to_vec))
                .collect::<Result<Vec<_>>>()?
                .concat();
            let targets = Tensor::from_vec(flags, logits.dims(), device)?;
            binary_cross_entropy_with_logits(logits, &targets)
        }
        ProblemType::Regression => {
            let values: Vec<f32> = batch
                .iter()
                .map(|e| e.target.value())
                .collect::<Result<_>>()?;
            let targets = Tensor::from_vec(values, batch.len(), device)?;
            Ok(candle_nn::loss::mse(&logits.flatten_all()?, &targets)?)
        }
    }
}

/// The mean of −[y·log σ(x) + (1−y)·log(1−σ(x))], computed as
/// max(x, 0) − x·y + log(1 + e^−|x|) so that large logits neither overflow nor
/// take the log of 0 (the form PyTorch's `BCEWithLogitsLoss` uses).
fn binary_cross_entropy_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let softplus_of_minus_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let loss = ((logits.relu()? - (logits * targets)?)? + softplus_of_minus_abs)?;
    Ok(loss.mean_all()?)
}

impl TrainTask for ClassificationTask {
    type Example = Example;

    fn loss(&self, batch: &[&Example], rng: &TrainRng) -> Result<Tensor> {
        let logits = self.logits(batch, Some(rng))?;
        sequence_loss(self.problem_type(), &logits, batch)
    }

    fn evaluate(&self) -> Result<Metrics> {
        self.evaluate_on(&self.dev)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_sequence_classifier(dir, &self.model, &self.varmap, &self.head.labels)
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

/// Multi-label metrics, as scikit-learn computes them on 0/1 label matrices: a label
/// is predicted when its logit is above 0 (sigmoid above 0.5); `accuracy` is the share
/// of texts whose predicted set is exactly the gold set, `micro_f1` counts every
/// (text, label) decision alike, `macro_f1` averages the F1 of the labels that occur
/// in gold or predictions.
pub fn multi_label_metrics(logits: &[Vec<f32>], gold: &[&[f32]]) -> BTreeMap<String, f64> {
    let k = gold.first().map_or(0, |g| g.len());
    let (mut tp, mut predicted, mut actual) = (vec![0f64; k], vec![0f64; k], vec![0f64; k]);
    let mut exact = 0usize;
    for (row, flags) in logits.iter().zip(gold) {
        let mut all_right = true;
        for c in 0..k {
            let (p, g) = (row[c] > 0.0, flags[c] > 0.5);
            predicted[c] += p as u8 as f64;
            actual[c] += g as u8 as f64;
            tp[c] += (p && g) as u8 as f64;
            all_right &= p == g;
        }
        exact += all_right as usize;
    }
    let f1 = |tp: f64, predicted: f64, actual: f64| {
        if predicted + actual > 0.0 {
            2.0 * tp / (predicted + actual)
        } else {
            0.0
        }
    };
    let present: Vec<usize> = (0..k).filter(|&c| predicted[c] + actual[c] > 0.0).collect();
    let macro_f1 = if present.is_empty() {
        0.0
    } else {
        present
            .iter()
            .map(|&c| f1(tp[c], predicted[c], actual[c]))
            .sum::<f64>()
            / present.len() as f64
    };
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    BTreeMap::from([
        (
            "accuracy".to_string(),
            exact as f64 / gold.len().max(1) as f64,
        ),
        (
            "micro_f1".to_string(),
            f1(sum(&tp), sum(&predicted), sum(&actual)),
        ),
        ("macro_f1".to_string(), macro_f1),
    ])
}

/// Regression metrics: mean squared and absolute error, Pearson's correlation and
/// Spearman's (Pearson's of the ranks, ties given their mean rank); a correlation is
/// 0 where one side is constant.
pub fn regression_metrics(preds: &[f64], gold: &[f64]) -> BTreeMap<String, f64> {
    let n = gold.len().max(1) as f64;
    let mse = preds
        .iter()
        .zip(gold)
        .map(|(p, g)| (p - g).powi(2))
        .sum::<f64>()
        / n;
    let mae = preds
        .iter()
        .zip(gold)
        .map(|(p, g)| (p - g).abs())
        .sum::<f64>()
        / n;
    BTreeMap::from([
        ("mse".to_string(), mse),
        ("mae".to_string(), mae),
        ("pearson".to_string(), pearson(preds, gold)),
        ("spearman".to_string(), pearson(&ranks(preds), &ranks(gold))),
    ])
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().max(1) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va > 0.0 && vb > 0.0 {
        cov / (va * vb).sqrt()
    } else {
        0.0
    }
}

/// 1-based ranks, equal values sharing the mean of their ranks.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0f64; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = mean_rank;
        }
        start = end;
    }
    ranks
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

/// Sets the variables a new head created as transformers' `_init_weights` does:
/// weights normal(0, the config's `initializer_range`), biases 0, LayerNorm weights
/// 1, drawn from seeded generators (candle's own cannot be seeded).
pub fn init_new_vars(
    config: &serde_json::Value,
    varmap: &VarMap,
    before: &BTreeSet<String>,
    seed: u64,
) -> Result<()> {
    crate::init::initialize(varmap, config, seed ^ 0x4EAD_1417, |name| {
        !before.contains(name)
    })
}

fn encode_rows(
    tokenizer: &TextTokenizer,
    path: &Path,
    rows: &[Row],
    targets: Vec<Target>,
) -> Result<Vec<Example>> {
    rows.iter()
        .zip(targets)
        .map(|(row, target)| {
            let encoded = tokenizer
                .encode(&row.input)
                .map_err(|e| Error::file(path, format!("line {}: {e}", row.line)))?;
            Ok(Example { encoded, target })
        })
        .collect()
}

/// A multi-label row's label names (none when its field is empty).
fn split_labels(field: &str) -> impl Iterator<Item = &str> {
    field
        .split(data::LABEL_SEPARATOR)
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

/// The head's labels: the data's (in the model's order when its `id2label` names the
/// same ones), or the one output of a regression.
fn label_set(
    problem_type: ProblemType,
    train: &Path,
    rows: &[Row],
    model: &Model,
) -> Result<Vec<String>> {
    let own = model_labels(model);
    let labels = match problem_type {
        ProblemType::SingleLabel => {
            data::label_names(rows.iter().map(|r| r.label.as_str()), own.as_deref())
        }
        ProblemType::MultiLabel => data::label_names(
            rows.iter().flat_map(|r| split_labels(&r.label)),
            own.as_deref(),
        ),
        ProblemType::Regression => {
            return Ok(own
                .filter(|o| o.len() == 1)
                .unwrap_or_else(|| vec!["LABEL_0".into()]))
        }
    };
    let least = if problem_type == ProblemType::MultiLabel {
        1
    } else {
        2
    };
    if labels.len() < least {
        return Err(Error::file(
            train,
            match labels.len() {
                0 => "no labels: every label field is empty".to_string(),
                _ => format!(
                    "only one label ({}): classification needs at least two \
                     (a number to predict is --problem-type regression)",
                    labels.join(", ")
                ),
            },
        ));
    }
    Ok(labels)
}

/// Each row's target: its label's id; 1/0 flags of its `|`-separated labels; or its
/// number. A label outside `names`, or a value that is not a number, is an error
/// naming the file and line.
fn targets(
    problem_type: ProblemType,
    path: &Path,
    rows: &[Row],
    names: &[String],
) -> Result<Vec<Target>> {
    let at =
        |row: &Row, message: String| Error::file(path, format!("line {}: {message}", row.line));
    match problem_type {
        ProblemType::SingleLabel => Ok(data::label_ids(path, rows, names)?
            .into_iter()
            .map(|id| Target::Class(id as u32))
            .collect()),
        ProblemType::MultiLabel => rows
            .iter()
            .map(|row| {
                let mut flags = vec![0f32; names.len()];
                for label in split_labels(&row.label) {
                    let id = names.iter().position(|n| n == label).ok_or_else(|| {
                        at(
                            row,
                            format!(
                                "unknown label {label:?}: the training data's labels are {}",
                                names.join(", ")
                            ),
                        )
                    })?;
                    flags[id] = 1.0;
                }
                Ok(Target::Classes(flags))
            })
            .collect(),
        ProblemType::Regression => rows
            .iter()
            .map(|row| match row.label.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(Target::Value(v)),
                _ => Err(at(
                    row,
                    format!(
                        "label {:?} is not a number (a regression predicts one)",
                        row.label
                    ),
                )),
            })
            .collect(),
    }
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
    let problem_type = opts
        .problem_type
        .or_else(|| ProblemType::from_config(&model.checkpoint.config))
        .unwrap_or(ProblemType::SingleLabel);
    let labels = label_set(problem_type, &opts.train, &train_rows, &model)?;
    let train_targets = targets(problem_type, &opts.train, &train_rows, &labels)?;
    let dev_targets = targets(problem_type, &dev_path, &dev_rows, &labels)?;

    drop_mismatched_head(&mut model, &varmap, labels.len());
    let before = var_names(&varmap);
    let head = SequenceClassifier::for_labels(
        &model,
        Labels {
            names: labels.clone(),
            problem_type,
        },
    )?;
    init_new_vars(
        &model.checkpoint.config,
        &varmap,
        &before,
        opts.train_config.seed,
    )?;

    let max_len = resolve_max_len(opts.max_len, &model)?;
    let tokenizer =
        TextTokenizer::load(&opts.model_dir, model.config.padding(), Some(max_len), true)?;
    let train = encode_rows(&tokenizer, &opts.train, &train_rows, train_targets)?;
    let dev = encode_rows(&tokenizer, &dev_path, &dev_rows, dev_targets)?;
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

/// The metrics of a saved sequence classifier's problem type (see
/// [`ClassificationTask::evaluate_on`]) on a labelled file, its labels named as in
/// the checkpoint's `id2label`.
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
    let targets = targets(head.labels.problem_type, file, &rows, &labels)?;
    let max_len = max_len.or_else(|| model.config.max_input_len().map(|m| m.min(DEFAULT_MAX_LEN)));
    let tokenizer = TextTokenizer::load(model_dir, model.config.padding(), max_len, true)?;
    let examples = encode_rows(&tokenizer, file, &rows, targets)?;
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

    #[test]
    fn multi_label_metrics_on_a_known_case() {
        // Gold {0}, {0,1}, {}; predicted (logit > 0) {0}, {0}, {1}.
        let logits = vec![vec![2.0, -1.0], vec![0.5, -0.2], vec![-3.0, 0.1]];
        let gold: [&[f32]; 3] = [&[1.0, 0.0], &[1.0, 1.0], &[0.0, 0.0]];
        let m = multi_label_metrics(&logits, &gold);
        // sklearn: accuracy_score 1/3; f1_score micro: tp 2, predicted 3, gold 3 → 2/3;
        // macro: label 0 F1 = 2·2/(2+2) = 1, label 1 F1 = 0/(1+1) = 0 → 0.5.
        assert!((m["accuracy"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((m["micro_f1"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["macro_f1"] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn regression_metrics_on_a_known_case() {
        let m = regression_metrics(&[1.0, 2.0, 4.0], &[1.0, 3.0, 2.0]);
        assert!((m["mse"] - 5.0 / 3.0).abs() < 1e-12);
        assert!((m["mae"] - 1.0).abs() < 1e-12);
        // scipy.stats.pearsonr([1,2,4],[1,3,2]) = 0.3273268..., spearmanr = 0.5.
        assert!((m["pearson"] - 0.327_326_835_353_988_5).abs() < 1e-12);
        assert!((m["spearman"] - 0.5).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
    }
}
