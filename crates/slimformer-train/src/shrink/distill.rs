//! Knowledge distillation (DistilBERT): a student learns from a teacher's soft
//! targets at temperature T, from gold labels (task distillation, labelled data) or
//! masked-LM labels (general distillation, raw text), and from the teacher's last
//! hidden states through a cosine loss — through the shared [`trainer`](crate::trainer).
//!
//! The run folder is the trainer's, plus `init/`: the student before training (made
//! from teacher layers, from a config, or handed over by `compress`).

use super::augment::{Neighbours, NEIGHBOURS, REPLACE_PROB};
use super::losses::{
    attention_loss, combine, cosine_loss, hidden_state_loss, soft_target_loss, DistillWeights,
    Terms,
};
use super::student::{
    evenly_spaced_layers, from_teacher_layers, layer_count, write_checkpoint, StudentCheckpoint,
};
use super::teacher_cache::{self, TeacherOutputs};
use crate::data::{self, Columns};
use crate::finetune::{
    evaluate_checkpoint, init_new_vars, ClassificationTask, Example, Target, DEFAULT_MAX_LEN,
};
use crate::objectives::masked_cross_entropy;
use crate::objectives::mlm::{self, MlmConfig, IGNORE};
use crate::trainer::{self, Metrics, RunOptions, TrainConfig, TrainOutcome, TrainTask};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use serde::Serialize;
use slimformer::batching::{self, BatchLimits};
use slimformer::heads::{Labels, MaskedLmHead, ProblemType, SequenceClassifier};
use slimformer::layers::Linear;
use slimformer::model::Model;
use slimformer::models::{Batch, Family, LayerStates};
use slimformer::rng::{Rng, TrainRng};
use slimformer::save::{
    hf_name, model_tensors, save_tensors, varmap_tensors, write_atomic, PRETRAINING_HEAD_PREFIXES,
    SEQUENCE_HEAD_PREFIXES, TRAINING_ONLY_PREFIX,
};
use slimformer::tokenize::{Encoded, TextInput, TextTokenizer};
use slimformer::{Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const INIT_DIR: &str = "init";

/// Where the student comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StudentSpec {
    /// K of the teacher's layers, evenly spaced, first and last included.
    Layers(usize),
    /// Exactly these teacher layers.
    TeacherLayers(Vec<usize>),
    /// Any shape from a config.json, randomly initialised.
    Config(PathBuf),
    /// A checkpoint folder made beforehand (by `compress`, or by a general
    /// distillation before a task one).
    Prepared(PathBuf),
}

/// What the student learns from.
#[derive(Debug, Clone)]
pub enum DistillData {
    /// Labelled data: soft targets on the teacher's classifier, gold labels.
    Task {
        train: PathBuf,
        dev: Option<PathBuf>,
        dev_split: Option<f64>,
        columns: Columns,
        test: Option<PathBuf>,
    },
    /// Raw text: masked-LM soft targets and labels, hidden states.
    General { corpus: Vec<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct DistillOptions {
    pub teacher: PathBuf,
    pub student: StudentSpec,
    pub data: DistillData,
    pub weights: DistillWeights,
    pub max_len: Option<usize>,
    pub train_config: TrainConfig,
    pub out: PathBuf,
    pub overwrite: bool,
    pub progress: bool,
    /// Where task distillation keeps the teacher's outputs (`None`: recompute).
    pub cache_dir: Option<PathBuf>,
    /// Task distillation: altered copies of each training text, labelled by the
    /// teacher (see [`super::augment`]); 0 for none.
    pub augment: usize,
}

/// One training text, its place in the data (the teacher cache is by index).
#[derive(Debug, Clone)]
pub struct DistillExample {
    pub index: usize,
    pub encoded: Encoded,
    pub label: u32,
}

/// The real (unpadded) tokens' rows of hidden states [b, l, h] → [tokens, h], row-major.
fn real_rows(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, l, h) = hidden.dims3()?;
    let flags: Vec<u32> = mask.flatten_all()?.to_vec1()?;
    let rows: Vec<u32> = (0..(b * l) as u32)
        .filter(|&i| flags[i as usize] == 1)
        .collect();
    let n = rows.len();
    Ok(hidden
        .reshape((b * l, h))?
        .index_select(&Tensor::from_vec(rows, n, &Device::Cpu)?, 0)?)
}

fn collate(tok: &TextTokenizer, batch: &[&Encoded]) -> Result<Batch> {
    tok.collate(batch, &Device::Cpu)
}

struct Teacher {
    model: Model,
    tokenizer: TextTokenizer,
}

impl Teacher {
    fn hidden(&self, texts: &[&Encoded]) -> Result<(Tensor, Batch)> {
        let batch = collate(&self.tokenizer, texts)?;
        Ok((self.model.encoder.forward(&batch)?, batch))
    }

    /// The last hidden state, and the layers inside when `transfer` needs them.
    fn states(
        &self,
        texts: &[&Encoded],
        transfer: Option<&LayerTransfer>,
    ) -> Result<(Tensor, Batch, Option<LayerStates>)> {
        let Some(transfer) = transfer else {
            let (hidden, batch) = self.hidden(texts)?;
            return Ok((hidden, batch, None));
        };
        let batch = collate(&self.tokenizer, texts)?;
        let states = slimformer::layers::on_pool(|| {
            self.model
                .encoder
                .forward_layers(&batch, None, transfer.attention)
        })?;
        Ok((last_hidden(&states), batch, Some(states)))
    }
}

fn last_hidden(states: &LayerStates) -> Tensor {
    states
        .hidden
        .last()
        .expect("the embeddings' output at least")
        .clone()
}

/// What the student's layers inside learn from the teacher's: each student layer's
/// output from one teacher layer's (TinyBERT's layer mapping), the embeddings' from
/// the embeddings', and with `attention` the attention distributions of the same
/// layers.
pub struct LayerTransfer {
    /// (student, teacher) indices into [`LayerStates::hidden`]; 0 is the embeddings.
    pub pairs: Vec<(usize, usize)>,
    pub attention: bool,
    /// Student width → teacher width where the widths differ: trained with the
    /// student, never saved into it.
    projection: Option<Linear>,
}

impl LayerTransfer {
    /// The hidden-state and attention terms; each the mean over the mapped layers.
    fn terms(
        &self,
        weights: &DistillWeights,
        student: (&LayerStates, &Tensor),
        teacher: (&LayerStates, &Tensor),
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ((s_states, s_mask), (t_states, t_mask)) = (student, teacher);
        let mean = |terms: Vec<Tensor>| -> Result<Option<Tensor>> {
            let n = terms.len() as f64;
            Ok(Some((Tensor::stack(&terms, 0)?.sum_all()? / n)?))
        };
        let hidden = if weights.alpha_hidden > 0.0 {
            let mut terms = Vec::with_capacity(self.pairs.len());
            for &(s, t) in &self.pairs {
                let projected = match &self.projection {
                    Some(p) => candle_core::Module::forward(p, &s_states.hidden[s])?,
                    None => s_states.hidden[s].clone(),
                };
                terms.push(hidden_state_loss(
                    &real_rows(&projected, s_mask)?,
                    &real_rows(&t_states.hidden[t], t_mask)?,
                )?);
            }
            mean(terms)?
        } else {
            None
        };
        let attention = if weights.alpha_attention > 0.0 {
            let terms = self
                .pairs
                .iter()
                .filter(|&&(s, t)| s > 0 && t > 0)
                .map(|&(s, t)| {
                    attention_loss(
                        &s_states.attention[s - 1],
                        &t_states.attention[t - 1],
                        s_mask,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            mean(terms)?
        } else {
            None
        };
        Ok((hidden, attention))
    }
}

/// The teacher layer each student layer learns from, as indices into
/// [`LayerStates::hidden`]: a student made of teacher layers from the layers it was
/// made of, any other the uniform map of TinyBERT (student layer m from teacher layer
/// m·N/M); the embeddings from the embeddings.
pub fn layer_map(
    student: &StudentSpec,
    teacher_layers: usize,
    student_layers: usize,
) -> Result<Vec<(usize, usize)>> {
    let from_teacher = match student {
        StudentSpec::Layers(k) => Some(evenly_spaced_layers(teacher_layers, *k)?),
        StudentSpec::TeacherLayers(layers) => Some(layers.clone()),
        StudentSpec::Config(_) | StudentSpec::Prepared(_) => None,
    };
    let mut pairs = vec![(0, 0)];
    match from_teacher {
        Some(layers) => pairs.extend(layers.iter().enumerate().map(|(k, &t)| (k + 1, t + 1))),
        None => pairs.extend(
            (1..=student_layers).map(|m| (m, (m * teacher_layers / student_layers).max(1))),
        ),
    }
    Ok(pairs)
}

enum Mode {
    Task {
        student: ClassificationTask,
        teacher_head: SequenceClassifier,
        cache: Option<TeacherOutputs>,
    },
    General {
        model: Model,
        varmap: VarMap,
        tokenizer: TextTokenizer,
        student_mlm: Option<MaskedLmHead>,
        teacher_mlm: Option<MaskedLmHead>,
        mlm: Option<MlmConfig>,
        dev: Vec<DistillExample>,
        side_files: PathBuf,
    },
}

/// Distillation as a [`TrainTask`].
pub struct DistillTask {
    teacher: Teacher,
    mode: Mode,
    weights: DistillWeights,
    eval_batch: usize,
    /// Set when a term compares the layers inside.
    transfer: Option<LayerTransfer>,
}

impl DistillTask {
    pub fn varmap(&self) -> &VarMap {
        match &self.mode {
            Mode::Task { student, .. } => &student.varmap,
            Mode::General { varmap, .. } => varmap,
        }
    }

    /// The student's last hidden state, and its layers inside when a term needs them.
    fn student_states(
        &self,
        model: &Model,
        inputs: &Batch,
        train: Option<&TrainRng>,
    ) -> Result<(Tensor, Option<LayerStates>)> {
        match &self.transfer {
            None => Ok((model.encoder.forward_t(inputs, train)?, None)),
            Some(transfer) => {
                let states = model
                    .encoder
                    .forward_layers(inputs, train, transfer.attention)?;
                Ok((last_hidden(&states), Some(states)))
            }
        }
    }

    /// The layer terms, where both sides kept their layers.
    fn layer_terms(
        &self,
        student: (Option<&LayerStates>, &Tensor),
        teacher: (Option<&LayerStates>, &Tensor),
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match (&self.transfer, student, teacher) {
            (Some(transfer), (Some(s), s_mask), (Some(t), t_mask)) => {
                transfer.terms(&self.weights, (s, s_mask), (t, t_mask))
            }
            _ => Ok((None, None)),
        }
    }

    fn task_loss(&self, batch: &[&DistillExample], rng: &TrainRng) -> Result<Tensor> {
        let Mode::Task {
            student,
            teacher_head,
            cache,
        } = &self.mode
        else {
            unreachable!("task mode")
        };
        let w = &self.weights;
        let texts: Vec<&Encoded> = batch.iter().map(|e| &e.encoded).collect();
        let inputs = collate(&student.tokenizer, &texts)?;
        let (hidden, s_layers) = self.student_states(&student.model, &inputs, Some(rng))?;
        let logits = student.head.forward_t(&hidden, Some(rng))?;
        let indices: Vec<usize> = batch.iter().map(|e| e.index).collect();
        let (t_logits, t_hidden, (layer_hidden, layer_attention)) = match cache {
            Some(c) => (c.logits_of(&indices)?, c.hidden_of(&indices)?, (None, None)),
            None => {
                let (h, b, t_layers) = self.teacher.states(&texts, self.transfer.as_ref())?;
                let rows = if w.alpha_cos > 0.0 {
                    Some(real_rows(&h, &b.attention_mask)?)
                } else {
                    None
                };
                let layer_terms = self.layer_terms(
                    (s_layers.as_ref(), &inputs.attention_mask),
                    (t_layers.as_ref(), &b.attention_mask),
                )?;
                (teacher_head.forward(&h)?, rows, layer_terms)
            }
        };
        let soft = (w.alpha_ce > 0.0)
            .then(|| soft_target_loss(&logits, &t_logits, w.temperature))
            .transpose()?;
        let labels: Vec<u32> = batch.iter().map(|e| e.label).collect();
        let hard = (w.alpha_hard > 0.0)
            .then(|| -> Result<Tensor> {
                Ok(candle_nn::loss::cross_entropy(
                    &logits,
                    &Tensor::new(labels.as_slice(), &Device::Cpu)?,
                )?)
            })
            .transpose()?;
        let cos = match (w.alpha_cos > 0.0, t_hidden) {
            (true, Some(t)) => Some(cosine_loss(
                &real_rows(&hidden, &inputs.attention_mask)?,
                &t,
            )?),
            _ => None,
        };
        let terms = Terms {
            soft,
            hard,
            cos,
            hidden: layer_hidden,
            attention: layer_attention,
        };
        Ok(combine(w, terms)?.total)
    }

    /// The student's and teacher's masked-LM logits on the masked positions and the
    /// cosine term, for general distillation; `train` draws masks and dropout.
    fn general_terms(
        &self,
        batch: &[&DistillExample],
        train: Option<&TrainRng>,
        want_cos: bool,
    ) -> Result<Terms> {
        let Mode::General {
            model,
            tokenizer,
            student_mlm,
            teacher_mlm,
            mlm,
            ..
        } = &self.mode
        else {
            unreachable!("general mode")
        };
        let w = &self.weights;
        let mut texts: Vec<Encoded> = Vec::with_capacity(batch.len());
        let mut labels: Vec<Vec<i64>> = Vec::with_capacity(batch.len());
        for ex in batch {
            let mut e = ex.encoded.clone();
            match (mlm, train) {
                (Some(cfg), Some(rng)) => {
                    let special: Vec<bool> =
                        e.special_tokens_mask.iter().map(|&s| s == 1).collect();
                    let m = rng.with(|r| {
                        mlm::mask_example(cfg, &e.ids, &special, None, ex.index as u64, r)
                    });
                    e.ids = m.input_ids;
                    labels.push(m.labels);
                }
                _ => labels.push(vec![IGNORE; e.ids.len()]),
            }
            texts.push(e);
        }
        let refs: Vec<&Encoded> = texts.iter().collect();
        let inputs = collate(tokenizer, &refs)?;
        let (hidden, s_layers) = self.student_states(model, &inputs, train)?;
        let (t_hidden, t_batch, t_layers) = self.teacher.states(&refs, self.transfer.as_ref())?;
        // Masked positions in the padded rows (both sides pad alike: same tokenizer).
        let len = hidden.dim(1)?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (k, (e, l)) in refs.iter().zip(&labels).enumerate() {
            let start = tokenizer.first_token_index(e, len);
            for (j, &label) in l.iter().enumerate() {
                if label != IGNORE {
                    rows.push((k * len + start + j) as u32);
                    targets.push(label);
                }
            }
        }
        let (mut soft, mut hard) = (None, None);
        if !rows.is_empty() {
            let n = rows.len();
            let idx = Tensor::from_vec(rows, n, &Device::Cpu)?;
            let pick = |h: &Tensor| -> Result<Tensor> {
                let (b, l, d) = h.dims3()?;
                Ok(h.reshape((b * l, d))?.index_select(&idx, 0)?)
            };
            if let Some(head) = student_mlm {
                let s_logits = head.forward(&pick(&hidden)?)?;
                if w.alpha_hard > 0.0 {
                    let t = Tensor::from_vec(targets, n, &Device::Cpu)?;
                    hard = Some(masked_cross_entropy(&s_logits, &t)?);
                }
                if let (Some(t_head), true) = (teacher_mlm, w.alpha_ce > 0.0) {
                    let t_logits = t_head.forward(&pick(&t_hidden)?)?;
                    soft = Some(soft_target_loss(&s_logits, &t_logits, w.temperature)?);
                }
            }
        }
        let cos = if w.alpha_cos > 0.0 || want_cos {
            Some(cosine_loss(
                &real_rows(&hidden, &inputs.attention_mask)?,
                &real_rows(&t_hidden, &t_batch.attention_mask)?,
            )?)
        } else {
            None
        };
        let (layer_hidden, layer_attention) = self.layer_terms(
            (s_layers.as_ref(), &inputs.attention_mask),
            (t_layers.as_ref(), &t_batch.attention_mask),
        )?;
        Ok(Terms {
            soft,
            hard,
            cos,
            hidden: layer_hidden,
            attention: layer_attention,
        })
    }

    fn evaluate_general(&self) -> Result<Metrics> {
        let Mode::General { dev, .. } = &self.mode else {
            unreachable!("general mode")
        };
        let (mut cos_sum, mut n) = (0f64, 0f64);
        let limits = BatchLimits::rows(self.eval_batch);
        for (_, batch) in batching::batches(dev, |e| e.encoded.ids.len(), limits) {
            let tokens: usize = batch.iter().map(|e| e.encoded.ids.len()).sum();
            if let Some(c) = self.general_terms(&batch, None, true)?.cos {
                cos_sum += (1.0 - c.to_scalar::<f32>()? as f64) * tokens as f64;
                n += tokens as f64;
            }
        }
        Ok(Metrics {
            values: [("cosine".to_string(), cos_sum / n.max(1.0))].into(),
            primary: "cosine".into(),
            higher_is_better: true,
        })
    }
}

impl TrainTask for DistillTask {
    type Example = DistillExample;

    fn loss(&self, batch: &[&DistillExample], rng: &TrainRng) -> Result<Tensor> {
        match &self.mode {
            Mode::Task { .. } => self.task_loss(batch, rng),
            Mode::General { .. } => {
                let terms = self.general_terms(batch, Some(rng), false)?;
                Ok(combine(&self.weights, terms)?.total)
            }
        }
    }

    fn evaluate(&self) -> Result<Metrics> {
        match &self.mode {
            Mode::Task { student, .. } => student.evaluate_on(&student.dev),
            Mode::General { .. } => self.evaluate_general(),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        match &self.mode {
            Mode::Task { student, .. } => student.save(dir),
            Mode::General {
                model,
                varmap,
                side_files,
                ..
            } => save_encoder(dir, model, varmap, side_files),
        }
    }
}

/// Saves a student encoder (with its masked-LM head, if any) and the side files.
fn save_encoder(dir: &Path, model: &Model, varmap: &VarMap, side_files: &Path) -> Result<()> {
    let heads: Vec<&str> = SEQUENCE_HEAD_PREFIXES
        .iter()
        .chain(PRETRAINING_HEAD_PREFIXES)
        .copied()
        .collect();
    let family = model.family();
    let canonical = model_tensors(varmap);
    let mut config = model.checkpoint.config.clone();
    config["architectures"] = serde_json::json!([super::student::architecture(family, &canonical)]);
    let tensors = canonical
        .into_iter()
        .map(|(n, t)| (hf_name(family, &n, &heads), t))
        .collect();
    save_tensors(&tensors, &dir.join("model.safetensors"))?;
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    write_atomic(
        &dir.join(slimformer::checkpoint::CONFIG_FILE),
        text.as_bytes(),
    )?;
    super::student::copy_side_files(
        side_files,
        dir,
        family == slimformer::models::Family::DistilBert,
    )
}

/// Builds the student's starting checkpoint in `out/init` (deterministic: rebuilt
/// on every start, so a resumed run sees the same one), or points at a prepared one.
fn build_student(opts: &DistillOptions, teacher: &Model) -> Result<PathBuf> {
    let init = opts.out.join(INIT_DIR);
    let student: StudentCheckpoint = match &opts.student {
        StudentSpec::Prepared(dir) => return Ok(dir.clone()),
        StudentSpec::Layers(k) => {
            let layers = evenly_spaced_layers(layer_count(&teacher.checkpoint)?, *k)?;
            tracing::info!("student layers from the teacher: {layers:?}");
            from_teacher_layers(&teacher.checkpoint, &layers)?
        }
        StudentSpec::TeacherLayers(layers) => from_teacher_layers(&teacher.checkpoint, layers)?,
        StudentSpec::Config(path) => {
            let config = slimformer::checkpoint::read_json(path)?;
            let vocab = |c: &serde_json::Value| c.get("vocab_size").and_then(|v| v.as_u64());
            let teacher_vocab = vocab(&teacher.checkpoint.config);
            if vocab(&config) != teacher_vocab {
                return Err(Error::file(
                    path,
                    format!(
                        "vocab_size {:?} differs from the teacher's {:?}: the student shares \
                         the teacher's tokenizer",
                        vocab(&config),
                        teacher_vocab
                    ),
                ));
            }
            let (model, varmap) =
                crate::init::init_trainable(config, DType::F32, opts.train_config.seed).map_err(
                    |e| match e {
                        Error::Config(m) => Error::file(path, m),
                        other => other,
                    },
                )?;
            let mut config = model.checkpoint.config.clone();
            let tensors = varmap_tensors(&varmap);
            config["architectures"] =
                serde_json::json!([super::student::architecture(model.family(), &tensors)]);
            StudentCheckpoint {
                family: model.family(),
                config,
                tensors,
            }
        }
    };
    let mut student = student;
    let w = &opts.weights;
    if matches!(opts.data, DistillData::General { .. }) && (w.alpha_hard > 0.0 || w.alpha_ce > 0.0)
    {
        let class = slimformer::save::class_prefix(student.family);
        student.config["architectures"] = serde_json::json!([format!("{class}ForMaskedLM")]);
    }
    write_checkpoint(&student, &init, &teacher.checkpoint.dir)?;
    Ok(init)
}

fn check_widths(weights: &DistillWeights, teacher: &Model, student: &Model) -> Result<()> {
    if weights.alpha_cos > 0.0 && teacher.hidden_size() != student.hidden_size() {
        return Err(Error::bad_value(
            "alpha_cos",
            weights.alpha_cos,
            format!(
                "the teacher's hidden size is {} and the student's {}: the cosine loss \
                 needs them equal (set its weight to 0)",
                teacher.hidden_size(),
                student.hidden_size()
            ),
        ));
    }
    Ok(())
}

fn max_len_for(opts: &DistillOptions, model: &Model) -> Result<usize> {
    let limit = model.config.max_input_len();
    if let (Some(asked), Some(most)) = (opts.max_len, limit) {
        if asked > most {
            return Err(Error::bad_value(
                "max_len",
                asked,
                format!("more than the model's position limit of {most}"),
            ));
        }
    }
    Ok(opts
        .max_len
        .unwrap_or_else(|| limit.map_or(DEFAULT_MAX_LEN, |m| m.min(DEFAULT_MAX_LEN))))
}

/// The teacher's logits (and real-token hidden states, f16) on `examples`, in
/// length-sorted batches.
fn teacher_outputs(
    teacher: &Teacher,
    head: &SequenceClassifier,
    examples: &[DistillExample],
    with_hidden: bool,
    batch: usize,
) -> Result<TeacherOutputs> {
    let mut logits: Vec<Option<Tensor>> = vec![None; examples.len()];
    let mut hidden: Vec<Option<Tensor>> = vec![None; examples.len()];
    let started = std::time::Instant::now();
    let (mut ran, limits) = (0, BatchLimits::rows(batch));
    let packed = batching::batches(examples, |e| e.encoded.ids.len(), limits);
    for (done, (indices, group)) in packed.enumerate() {
        let texts: Vec<&Encoded> = group.iter().map(|e| &e.encoded).collect();
        let (h, b) = teacher.hidden(&texts)?;
        let l = head.forward(&h)?;
        ran += indices.len();
        for (k, &i) in indices.iter().enumerate() {
            logits[i] = Some(l.get(k)?);
            if with_hidden {
                let one = real_rows(&h.narrow(0, k, 1)?, &b.attention_mask.narrow(0, k, 1)?)?;
                hidden[i] = Some(one.to_dtype(DType::F16)?);
            }
        }
        if done % 20 == 0 {
            tracing::info!(
                "teacher outputs: {}/{} examples ({:.0}s)",
                ran,
                examples.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let logits: Vec<Tensor> = logits
        .into_iter()
        .map(|t| t.expect("every example"))
        .collect();
    let mut offsets = vec![0usize];
    for e in examples {
        offsets.push(offsets.last().copied().unwrap_or(0) + e.encoded.ids.len());
    }
    let hidden = if with_hidden {
        let rows: Vec<Tensor> = hidden
            .into_iter()
            .map(|t| t.expect("every example"))
            .collect();
        Some(Tensor::cat(&rows, 0)?)
    } else {
        None
    };
    Ok(TeacherOutputs {
        logits: Tensor::stack(&logits, 0)?,
        hidden,
        offsets,
    })
}

/// `copies` altered copies of each example (see [`super::augment`]), indexed after
/// them, their labels still to be given by the teacher.
fn augmented(
    teacher: &Teacher,
    examples: &[DistillExample],
    copies: usize,
    seed: u64,
) -> Result<Vec<DistillExample>> {
    let started = std::time::Instant::now();
    let texts: Vec<&Encoded> = examples.iter().map(|e| &e.encoded).collect();
    let neighbours = Neighbours::of(
        teacher.model.encoder.word_embeddings(),
        teacher.tokenizer.inner(),
        &texts,
        NEIGHBOURS,
    )?;
    let mut rng = Rng::new(seed ^ 0xA0_6E);
    let mut out = Vec::with_capacity(examples.len() * copies);
    for example in examples {
        for encoded in neighbours.augment(&example.encoded, copies, REPLACE_PROB, &mut rng) {
            out.push(DistillExample {
                index: examples.len() + out.len(),
                encoded,
                label: example.label,
            });
        }
    }
    tracing::info!(
        "augmentation: {} altered copies of {} texts ({:.1}s)",
        out.len(),
        examples.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Gives each altered copy the teacher's top class as its label: the text changed,
/// so its original label may no longer hold.
fn label_by_teacher(
    teacher: &Teacher,
    head: &SequenceClassifier,
    copies: &mut [DistillExample],
    cache: Option<&TeacherOutputs>,
    batch: usize,
) -> Result<()> {
    let logits = match cache {
        Some(c) => {
            let indices: Vec<usize> = copies.iter().map(|e| e.index).collect();
            c.logits_of(&indices)?
        }
        None => teacher_outputs(teacher, head, copies, false, batch * 2)?.logits,
    };
    let top: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    for (example, label) in copies.iter_mut().zip(top) {
        example.label = label;
    }
    Ok(())
}

/// Loads teacher and student and builds the task; returns it with the training examples.
pub fn prepare(opts: &DistillOptions) -> Result<(DistillTask, Vec<DistillExample>)> {
    check_weights(&opts.weights)?;
    if opts.augment > 0 && matches!(opts.data, DistillData::General { .. }) {
        return Err(Error::bad_value(
            "augment",
            opts.augment,
            "augmentation makes labelled copies for task distillation (training data with \
             labels); general distillation learns from the raw text as it is",
        ));
    }
    let pair = load_pair(opts)?;
    let transfer = layer_transfer(opts, &pair)?;
    let (mut task, examples) = match &opts.data {
        DistillData::Task {
            train,
            dev,
            dev_split,
            columns,
            ..
        } => prepare_task(
            opts,
            pair,
            train,
            (dev.as_deref(), *dev_split),
            columns,
            transfer.is_none(),
        )?,
        DistillData::General { corpus } => prepare_general(opts, pair, corpus)?,
    };
    task.transfer = transfer;
    Ok((task, examples))
}

/// The layer terms' mapping and projection, where a weight asks for them.
fn layer_transfer(opts: &DistillOptions, pair: &Pair) -> Result<Option<LayerTransfer>> {
    let w = &opts.weights;
    if !w.uses_inner_layers() {
        return Ok(None);
    }
    let (teacher, student) = (&pair.teacher.model, &pair.student);
    let (name, value) = if w.alpha_hidden > 0.0 {
        ("alpha_hidden", w.alpha_hidden)
    } else {
        ("alpha_attention", w.alpha_attention)
    };
    if [teacher.family(), student.family()].contains(&Family::XLNet) {
        return Err(Error::bad_value(
            name,
            value,
            "the layer terms compare post-LN layers (BERT, RoBERTa, DistilBERT, ALBERT); \
             XLNet's two streams have no counterpart: set the weight to 0",
        ));
    }
    let (t_heads, s_heads) = (
        teacher.config.attention_heads(),
        student.config.attention_heads(),
    );
    if w.alpha_attention > 0.0 && t_heads != s_heads {
        return Err(Error::bad_value(
            "alpha_attention",
            w.alpha_attention,
            format!(
                "the teacher has {t_heads} attention heads and the student {s_heads}: \
                 attention distributions are compared head by head (set the weight to 0)"
            ),
        ));
    }
    let pairs = layer_map(
        &opts.student,
        layer_count(&teacher.checkpoint)?,
        layer_count(&student.checkpoint)?,
    )?;
    let (t_width, s_width) = (teacher.hidden_size(), student.hidden_size());
    let projection = if w.alpha_hidden > 0.0 && t_width != s_width {
        let vb = candle_nn::VarBuilder::from_varmap(&pair.varmap, DType::F32, &Device::Cpu);
        let name = format!("{TRAINING_ONLY_PREFIX}hidden_projection");
        Some(slimformer::layers::linear(&vb, &name, s_width, t_width)?)
    } else {
        None
    };
    tracing::info!("layer terms: student and teacher hidden states {pairs:?} (0: embeddings)");
    Ok(Some(LayerTransfer {
        pairs,
        attention: w.alpha_attention > 0.0,
        projection,
    }))
}

/// Every loss weight is a non-negative number, and the temperature positive.
fn check_weights(w: &DistillWeights) -> Result<()> {
    for (name, v) in [
        ("temperature", w.temperature),
        ("alpha_ce", w.alpha_ce),
        ("alpha_hard", w.alpha_hard),
        ("alpha_cos", w.alpha_cos),
        ("alpha_hidden", w.alpha_hidden),
        ("alpha_attention", w.alpha_attention),
    ] {
        if !(v >= 0.0 && v.is_finite()) || (name == "temperature" && v == 0.0) {
            return Err(Error::bad_value(name, v, "must be a positive number"));
        }
    }
    Ok(())
}

/// The teacher and the student built from it, with their tokenizers.
struct Pair {
    teacher: Teacher,
    student: Model,
    varmap: VarMap,
    tokenizer: TextTokenizer,
    /// The student's initial folder (its config, tokenizer and side files).
    init: PathBuf,
    max_len: usize,
}

fn load_pair(opts: &DistillOptions) -> Result<Pair> {
    if !opts.teacher.is_dir() {
        return Err(Error::file(&opts.teacher, "no such teacher model folder"));
    }
    let teacher_model = Model::load(&opts.teacher)?;
    let init = build_student(opts, &teacher_model)?;
    let (student, varmap) = Model::load_trainable(&init)?;
    check_widths(&opts.weights, &teacher_model, &student)?;
    let max_len = max_len_for(opts, &student)?;
    let teacher_tok = TextTokenizer::load(
        &opts.teacher,
        teacher_model.config.padding(),
        Some(max_len),
        true,
    )?;
    let tokenizer = TextTokenizer::load(&init, student.config.padding(), Some(max_len), true)?;
    Ok(Pair {
        teacher: Teacher {
            model: teacher_model,
            tokenizer: teacher_tok,
        },
        student,
        varmap,
        tokenizer,
        init,
        max_len,
    })
}

/// Task distillation: the teacher's classifier's soft targets on labelled rows
/// (cached when asked), the student's own head, a dev set to pick the best step.
fn prepare_task(
    opts: &DistillOptions,
    pair: Pair,
    train: &Path,
    (dev, dev_split): (Option<&Path>, Option<f64>),
    columns: &data::Columns,
    cacheable: bool,
) -> Result<(DistillTask, Vec<DistillExample>)> {
    let Pair {
        teacher,
        mut student,
        varmap,
        tokenizer,
        max_len,
        ..
    } = pair;
    let (w, batch) = (&opts.weights, opts.train_config.batch);
    let teacher_head = SequenceClassifier::load(&teacher.model).map_err(|e| {
        Error::file(
            &opts.teacher,
            format!(
                "the teacher has no sequence-classification head ({e}): fine-tune it \
                 first, or distill on raw text (a corpus) instead"
            ),
        )
    })?;
    // Soft targets are a softmax over the labels: one label a text.
    if teacher_head.labels.problem_type != ProblemType::SingleLabel {
        return Err(Error::file(
            &opts.teacher,
            format!(
                "the teacher is a {} model: task distillation takes a single-label \
                 classifier (distill a multi-label or regression model on raw text, \
                 then fine-tune the student)",
                teacher_head.labels.problem_type.config_name()
            ),
        ));
    }
    let labels = teacher_head.labels.names.clone();
    let rows = data::read_rows(train, columns)?;
    let (rows, dev_rows, dev_path) = match (dev, dev_split) {
        (Some(d), _) => (rows, data::read_rows(d, columns)?, d.to_path_buf()),
        (None, Some(f)) => {
            let (t, d) = data::split_dev(
                rows,
                f,
                data::HoldOut::Seeded(opts.train_config.seed),
                "dev_split",
            )?;
            (t, d, train.to_path_buf())
        }
        (None, None) => {
            return Err(Error::setting(
                "dev",
                "no dev data: give a dev file or a fraction of the training data to split off",
            ))
        }
    };
    let train_ids = data::label_ids(train, &rows, &labels)?;
    let dev_ids = data::label_ids(&dev_path, &dev_rows, &labels)?;
    let encode = |path: &Path, rows: &[data::Row], ids: &[usize]| {
        rows.iter()
            .zip(ids)
            .enumerate()
            .map(|(index, (row, &label))| {
                let encoded = tokenizer
                    .encode(&row.input)
                    .map_err(|e| Error::file(path, format!("line {}: {e}", row.line)))?;
                Ok(DistillExample {
                    index,
                    encoded,
                    label: label as u32,
                })
            })
            .collect::<Result<Vec<_>>>()
    };
    let mut examples = encode(train, &rows, &train_ids)?;
    let originals = examples.len();
    if opts.augment > 0 {
        examples.extend(augmented(
            &teacher,
            &examples,
            opts.augment,
            opts.train_config.seed,
        )?);
    }
    let dev_examples: Vec<Example> = encode(&dev_path, &dev_rows, &dev_ids)?
        .into_iter()
        .map(|e| Example {
            encoded: e.encoded,
            target: Target::Class(e.label),
        })
        .collect();
    let head = student_head(&mut student, &varmap, &labels, opts.train_config.seed)?;
    let with_hidden = w.alpha_cos > 0.0;
    // The cache keeps the last layer: layer terms run the teacher at every step.
    let cache = match opts.cache_dir.as_ref().filter(|_| cacheable) {
        Some(dir) => {
            let train_bytes = std::fs::read(train).map_err(|e| Error::file(train, e))?;
            let key = teacher_cache::cache_key(&[
                &teacher_cache::model_fingerprint(
                    &opts.teacher,
                    &teacher.model.checkpoint.weight_files,
                )?,
                &train_bytes,
                format!("{columns:?} max_len={max_len} dev_split={dev_split:?} seed={} hidden={with_hidden} augment={}", opts.train_config.seed, opts.augment).as_bytes(),
            ]);
            Some(teacher_cache::load_or_compute(Some(dir), &key, || {
                teacher_outputs(&teacher, &teacher_head, &examples, with_hidden, batch * 2)
            })?)
        }
        None => None,
    };
    if examples.len() > originals {
        label_by_teacher(
            &teacher,
            &teacher_head,
            &mut examples[originals..],
            cache.as_ref(),
            batch,
        )?;
    }
    let student = ClassificationTask {
        model: student,
        varmap,
        head,
        tokenizer,
        labels,
        dev: dev_examples,
        eval_batch: batch,
    };
    Ok((
        DistillTask {
            teacher,
            mode: Mode::Task {
                student,
                teacher_head,
                cache,
            },
            weights: *w,
            eval_batch: batch,
            transfer: None,
        },
        examples,
    ))
}

/// General distillation on raw text: soft masked-LM targets and the hidden
/// states' cosine, a held-out 2% (at most 500 texts) to evaluate on.
fn prepare_general(
    opts: &DistillOptions,
    pair: Pair,
    corpus: &[PathBuf],
) -> Result<(DistillTask, Vec<DistillExample>)> {
    let Pair {
        teacher,
        student,
        varmap,
        tokenizer,
        init,
        ..
    } = pair;
    let (w, batch) = (&opts.weights, opts.train_config.batch);
    let docs = crate::pretrain::read_corpus(corpus)?;
    let mut texts: Vec<String> = docs.into_iter().flatten().collect();
    texts.retain(|t| !t.trim().is_empty());
    let mut examples = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            Ok(DistillExample {
                index,
                encoded: tokenizer.encode(&TextInput::Single(text.clone()))?,
                label: 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Rng::new(opts.train_config.seed ^ 0xD157).shuffle(&mut examples);
    let dev_n = (examples.len() / 50)
        .clamp(1, 500)
        .min(examples.len().saturating_sub(1));
    let dev = examples.split_off(examples.len() - dev_n);
    let mlm_on = w.alpha_hard > 0.0 || w.alpha_ce > 0.0;
    let (student_mlm, teacher_mlm, mlm) = if mlm_on {
        let t_head = if w.alpha_ce > 0.0 {
            Some(MaskedLmHead::load(&teacher.model).map_err(|e| {
                Error::bad_value(
                    "alpha_ce",
                    w.alpha_ce,
                    format!(
                        "{}: the teacher has no masked-LM head for the soft targets ({e}); \
                         set this weight to 0 (and the masked-LM one too, to train on the \
                         cosine loss alone)",
                        opts.teacher.display()
                    ),
                )
            })?)
        } else {
            None
        };
        let before = var_names(&varmap);
        let s_head = MaskedLmHead::load(&student)?;
        init_new_vars(
            &student.checkpoint.config,
            &varmap,
            &before,
            opts.train_config.seed,
        )?;
        let (_, mask_id) = tokenizer.mask_token().ok_or_else(|| {
            Error::file(&init, "the tokenizer has no mask token for masked-LM terms")
        })?;
        let vocab = tokenizer.inner().get_vocab_size(true) as u32;
        let random_ids = mlm::non_special_ids(tokenizer.inner(), vocab);
        (
            Some(s_head),
            t_head,
            Some(MlmConfig::new(mask_id, random_ids)),
        )
    } else {
        (None, None, None)
    };
    Ok((
        DistillTask {
            teacher,
            mode: Mode::General {
                model: student,
                varmap,
                tokenizer,
                student_mlm,
                teacher_mlm,
                mlm,
                dev,
                side_files: init.clone(),
            },
            weights: *w,
            eval_batch: batch,
            transfer: None,
        },
        examples,
    ))
}

fn var_names(varmap: &VarMap) -> BTreeSet<String> {
    varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect()
}

/// The student's classifier: carried over from the teacher when its shape fits, else new.
fn student_head(
    student: &mut Model,
    varmap: &VarMap,
    labels: &[String],
    seed: u64,
) -> Result<SequenceClassifier> {
    if let Ok(head) = SequenceClassifier::load(student) {
        if head.labels.names.len() == labels.len() {
            return Ok(head);
        }
    }
    let before = var_names(varmap);
    let head = SequenceClassifier::for_labels(
        student,
        Labels {
            names: labels.to_vec(),
            problem_type: ProblemType::SingleLabel,
        },
    )?;
    init_new_vars(&student.checkpoint.config, varmap, &before, seed)?;
    Ok(head)
}

/// The run folder's entries made before training: `init/`, or a prepared student
/// that lives inside it (`compress` puts its output in `OUT/compressed`).
fn kept_entries(opts: &DistillOptions) -> Vec<String> {
    let mut keep = vec![INIT_DIR.to_string()];
    if let StudentSpec::Prepared(dir) = &opts.student {
        if dir.parent() == Some(opts.out.as_path()) {
            if let Some(name) = dir.file_name() {
                keep.push(name.to_string_lossy().into_owned());
            }
        }
    }
    keep
}

/// What `distill` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DistillReport {
    pub out: PathBuf,
    pub student_init: PathBuf,
    pub train_examples: usize,
    #[serde(flatten)]
    pub outcome: TrainOutcome,
    pub test: Option<Metrics>,
}

/// Distills `opts.teacher` into a student and writes the run folder `opts.out`.
pub fn distill(opts: &DistillOptions) -> Result<DistillReport> {
    let (task, examples) = prepare(opts)?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let data_info = match &opts.data {
        DistillData::Task {
            train,
            dev,
            dev_split,
            columns,
            ..
        } => serde_json::json!({
            "kind": "task", "train": abs(train), "dev": dev.as_deref().map(abs),
            "dev_split": dev_split, "text_col": columns.text,
            "text_pair_col": columns.text_pair, "label_col": columns.label,
        }),
        DistillData::General { corpus } => serde_json::json!({
            "kind": "general", "corpus": corpus.iter().map(|c| abs(c)).collect::<Vec<_>>(),
        }),
    };
    let task_info = serde_json::json!({
        "kind": "distillation",
        "teacher": abs(&opts.teacher),
        "student": opts.student,
        "data": data_info,
        "weights": opts.weights,
        "max_len": opts.max_len,
    });
    let run = RunOptions {
        out: opts.out.clone(),
        overwrite: opts.overwrite,
        task_info,
        progress: opts.progress,
        keep: kept_entries(opts),
    };
    let outcome = trainer::train(&task, &examples, task.varmap(), &opts.train_config, &run)?;
    let test = match &opts.data {
        DistillData::Task {
            test: Some(file),
            columns,
            ..
        } => Some(evaluate_checkpoint(
            &opts.out,
            file,
            columns,
            opts.max_len,
            opts.train_config.batch,
        )?),
        _ => None,
    };
    let student_init = match &opts.student {
        StudentSpec::Prepared(dir) => dir.clone(),
        _ => opts.out.join(INIT_DIR),
    };
    Ok(DistillReport {
        out: opts.out.clone(),
        student_init,
        train_examples: examples.len(),
        outcome,
        test,
    })
}
