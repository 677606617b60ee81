//! Fine-tuning for token classification (named entities, part-of-speech tags):
//! sentences of tagged words in, a Hugging Face `*ForTokenClassification` checkpoint
//! out. As transformers' token-classification recipe: each word's tag goes on its
//! first sub-token, the other sub-tokens and the special tokens are left out of the
//! loss and the scores, and a sentence longer than the token limit loses its last words.

use super::finetune::{self, FinetuneOptions, FinetuneReport};
use super::tagged::{self, TaggedSentence};
use super::trainer::{self, Metrics, RunOptions, TrainTask};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use slimformer::batching::{self, BatchLimits};
use slimformer::heads::{HeadKind, TokenClassifier};
use slimformer::model::Model;
use slimformer::rng::TrainRng;
use slimformer::save::save_classifier;
use slimformer::tokenize::{Encoded, TextTokenizer};
use slimformer::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One tokenized sentence: the tag id of each token that carries one (a word's first
/// sub-token), `None` for the rest.
#[derive(Debug, Clone)]
pub struct TokenExample {
    pub encoded: Encoded,
    pub labels: Vec<Option<u32>>,
}

/// Puts each word's tag on its first sub-token; words cut by truncation drop out.
pub fn align_tags(encoded: &Encoded, word_tags: &[u32]) -> Vec<Option<u32>> {
    let mut previous = None;
    encoded
        .word_ids
        .iter()
        .map(|&word| {
            let first = word.is_some() && word != previous;
            previous = word;
            word.filter(|_| first)
                .and_then(|w| word_tags.get(w as usize).copied())
        })
        .collect()
}

/// Token classification as a [`TrainTask`].
pub struct TokenClassificationTask {
    pub model: Model,
    pub varmap: VarMap,
    pub head: TokenClassifier,
    pub tokenizer: TextTokenizer,
    pub labels: Vec<String>,
    pub dev: Vec<TokenExample>,
    pub eval_batch: usize,
}

impl TokenClassificationTask {
    /// Logits [batch, len, tags]; `train` turns dropout on.
    pub fn logits(&self, batch: &[&TokenExample], train: Option<&TrainRng>) -> Result<Tensor> {
        let encoded: Vec<&Encoded> = batch.iter().map(|e| &e.encoded).collect();
        let inputs = self.tokenizer.collate(&encoded, &Device::Cpu)?;
        let hidden = self.model.encoder.forward_t(&inputs, train)?;
        self.head.forward_t(&hidden, train)
    }

    /// The labelled positions of a padded batch, as flat indices into its
    /// [batch · len] rows, with their tag ids.
    fn labelled(&self, batch: &[&TokenExample], len: usize) -> (Vec<u32>, Vec<u32>) {
        let mut positions = Vec::new();
        let mut tags = Vec::new();
        for (row, example) in batch.iter().enumerate() {
            let start = self.tokenizer.first_token_index(&example.encoded, len);
            for (k, label) in example.labels.iter().enumerate() {
                if let Some(tag) = label {
                    positions.push((row * len + start + k) as u32);
                    tags.push(*tag);
                }
            }
        }
        (positions, tags)
    }

    /// The logits of the labelled positions [n, tags] and their tag ids [n].
    fn labelled_logits(
        &self,
        batch: &[&TokenExample],
        train: Option<&TrainRng>,
    ) -> Result<(Tensor, Vec<u32>)> {
        let logits = self.logits(batch, train)?;
        let (rows, len, tags) = logits.dims3()?;
        let (positions, gold) = self.labelled(batch, len);
        let flat = logits.reshape((rows * len, tags))?;
        let picked = flat.index_select(&Tensor::new(positions, &Device::Cpu)?, 0)?;
        Ok((picked, gold))
    }

    /// Token accuracy, mean loss and — for entity tags — seqeval's entity-level
    /// precision, recall and F1 over `examples`, dropout off.
    pub fn evaluate_on(&self, examples: &[TokenExample]) -> Result<Metrics> {
        let mut predicted: Vec<Vec<u32>> = vec![Vec::new(); examples.len()];
        let mut loss_sum = 0f64;
        let mut scored = 0usize;
        let limits = BatchLimits::rows(self.eval_batch);
        let labelled_len = |e: &TokenExample| e.labels.iter().flatten().count();
        for (indices, batch) in batching::batches(examples, |e| e.encoded.ids.len(), limits) {
            if batch.iter().all(|e| labelled_len(e) == 0) {
                continue;
            }
            let (logits, gold) = self.labelled_logits(&batch, None)?;
            let loss =
                candle_nn::loss::cross_entropy(&logits, &Tensor::new(gold.clone(), &Device::Cpu)?)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * gold.len() as f64;
            scored += gold.len();
            let best = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
            let mut best = best.into_iter();
            for (i, example) in indices.into_iter().zip(&batch) {
                predicted[i] = best.by_ref().take(labelled_len(example)).collect();
            }
        }
        let name = |ids: &[u32]| -> Vec<&str> {
            ids.iter()
                .map(|&i| self.labels[i as usize].as_str())
                .collect()
        };
        let gold: Vec<Vec<&str>> = examples
            .iter()
            .map(|e| name(&e.labels.iter().flatten().copied().collect::<Vec<_>>()))
            .collect();
        let pred: Vec<Vec<&str>> = predicted.iter().map(|p| name(p)).collect();
        let mut values = tag_metrics(&gold, &pred, self.labels.iter().map(String::as_str));
        values.insert("loss".into(), loss_sum / scored.max(1) as f64);
        let primary = if values.contains_key("f1") {
            "f1"
        } else {
            "accuracy"
        };
        Ok(Metrics {
            values,
            primary: primary.into(),
            higher_is_better: true,
        })
    }
}

impl TrainTask for TokenClassificationTask {
    type Example = TokenExample;

    fn loss(&self, batch: &[&TokenExample], rng: &TrainRng) -> Result<Tensor> {
        let (logits, gold) = self.labelled_logits(batch, Some(rng))?;
        if gold.is_empty() {
            // Every word of the batch was cut: nothing to learn, and a mean over no
            // tokens would be NaN.
            return Ok((logits.sum_all()? * 0.0)?);
        }
        Ok(candle_nn::loss::cross_entropy(
            &logits,
            &Tensor::new(gold, &Device::Cpu)?,
        )?)
    }

    fn evaluate(&self) -> Result<Metrics> {
        self.evaluate_on(&self.dev)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_classifier(
            dir,
            &self.model,
            &self.varmap,
            &self.labels,
            HeadKind::TokenClassification,
            None,
        )
    }
}

/// An entity span as seqeval finds it: (type, first tag index, last tag index).
pub type Entity = (String, usize, usize);

/// The entities of a tag sequence with seqeval's default (lenient) rules: an `I-`
/// after `O` or after another type starts an entity, as in IOB1; `E-`/`S-` close one.
pub fn entities(tags: &[&str]) -> Vec<Entity> {
    let split = |t: &str| -> (char, String) {
        let prefix = t.chars().next().unwrap_or('O');
        let rest = &t[prefix.len_utf8()..];
        let kind = rest.split_once('-').map_or(rest, |(_, k)| k);
        (
            prefix,
            if kind.is_empty() {
                "_".into()
            } else {
                kind.into()
            },
        )
    };
    let mut found = Vec::new();
    let (mut prev_tag, mut prev_type) = ('O', String::new());
    let mut begin = 0;
    for (i, tag) in tags.iter().copied().chain(["O"]).enumerate() {
        let (tag, kind) = split(tag);
        if end_of_chunk(prev_tag, tag, &prev_type, &kind) {
            found.push((prev_type.clone(), begin, i - 1));
        }
        if start_of_chunk(prev_tag, tag, &prev_type, &kind) {
            begin = i;
        }
        (prev_tag, prev_type) = (tag, kind);
    }
    found
}

fn end_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_type != kind)
}

fn start_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != kind)
}

/// Token accuracy over the tagged tokens; for a tag set of entity spans, also
/// seqeval's micro-averaged entity precision, recall and F1 (an entity counts when
/// its type, start and end all match).
pub fn tag_metrics<'a>(
    gold: &[Vec<&str>],
    pred: &[Vec<&str>],
    tag_set: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, f64> {
    let (mut correct, mut total) = (0usize, 0usize);
    for (g, p) in gold.iter().zip(pred) {
        total += g.len();
        correct += g.iter().zip(p).filter(|(a, b)| a == b).count();
    }
    let mut values =
        BTreeMap::from([("accuracy".to_string(), correct as f64 / total.max(1) as f64)]);
    if tagged::is_span_scheme(tag_set) {
        // seqeval joins the sentences with an `O` between them; per-sentence spans
        // keyed by sentence are the same set.
        let spans = |seqs: &[Vec<&str>]| -> BTreeSet<(usize, Entity)> {
            seqs.iter()
                .enumerate()
                .flat_map(|(s, tags)| entities(tags).into_iter().map(move |e| (s, e)))
                .collect()
        };
        let (g, p) = (spans(gold), spans(pred));
        let hits = g.intersection(&p).count() as f64;
        let precision = if p.is_empty() {
            0.0
        } else {
            hits / p.len() as f64
        };
        let recall = if g.is_empty() {
            0.0
        } else {
            hits / g.len() as f64
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        values.insert("precision".into(), precision);
        values.insert("recall".into(), recall);
        values.insert("f1".into(), f1);
    }
    values
}

fn encode_sentences(
    tokenizer: &TextTokenizer,
    path: &Path,
    sentences: &[TaggedSentence],
    tag_ids: &[Vec<u32>],
) -> Result<Vec<TokenExample>> {
    sentences
        .iter()
        .zip(tag_ids)
        .map(|(sentence, tags)| {
            let encoded = tokenizer
                .encode_words(&sentence.words)
                .map_err(|e| Error::file(path, format!("line {}: {e}", sentence.line)))?;
            let labels = align_tags(&encoded, tags);
            Ok(TokenExample { encoded, labels })
        })
        .collect()
}

/// Loads the model and data and builds the task; returns it with the training examples.
pub fn prepare(opts: &FinetuneOptions) -> Result<(TokenClassificationTask, Vec<TokenExample>)> {
    let (train_sentences, dev_sentences, dev_path) =
        finetune::train_and_dev(opts, tagged::read_tagged)?;
    let (mut model, varmap) = Model::load_trainable(&opts.model_dir)?;
    let labels = tagged::tag_names(&train_sentences, finetune::model_labels(&model).as_deref());
    if labels.len() < 2 {
        return Err(Error::file(
            &opts.train,
            format!(
                "only one tag ({}): tagging needs at least two",
                labels.join(", ")
            ),
        ));
    }
    let train_ids = tagged::tag_ids(&opts.train, &train_sentences, &labels)?;
    let dev_ids = tagged::tag_ids(&dev_path, &dev_sentences, &labels)?;

    finetune::drop_mismatched_head(&mut model, &varmap, labels.len());
    let before = finetune::var_names(&varmap);
    let head = TokenClassifier::for_labels(&model, labels.clone())?;
    finetune::init_new_vars(
        &model.checkpoint.config,
        &varmap,
        &before,
        opts.train_config.seed,
    )?;

    let max_len = finetune::resolve_max_len(opts.max_len, &model)?;
    let tokenizer =
        TextTokenizer::load(&opts.model_dir, model.config.padding(), Some(max_len), true)?;
    let train = encode_sentences(&tokenizer, &opts.train, &train_sentences, &train_ids)?;
    let dev = encode_sentences(&tokenizer, &dev_path, &dev_sentences, &dev_ids)?;
    Ok((
        TokenClassificationTask {
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

/// Token accuracy, entity precision/recall/F1 and loss of a saved token classifier
/// on a tagged file, its tags named as in the checkpoint's `id2label`.
pub fn evaluate_checkpoint(
    model_dir: &Path,
    file: &Path,
    max_len: Option<usize>,
    batch: usize,
) -> Result<Metrics> {
    let model = Model::load(model_dir)?;
    let head = TokenClassifier::load(&model)?;
    let labels = head.labels.names.clone();
    let sentences = tagged::read_tagged(file)?;
    let ids = tagged::tag_ids(file, &sentences, &labels)?;
    let max_len = max_len.or_else(|| {
        model
            .config
            .max_input_len()
            .map(|m| m.min(finetune::DEFAULT_MAX_LEN))
    });
    let tokenizer = TextTokenizer::load(model_dir, model.config.padding(), max_len, true)?;
    let examples = encode_sentences(&tokenizer, file, &sentences, &ids)?;
    let task = TokenClassificationTask {
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

/// Fine-tunes `opts.model_dir` as a token classifier and writes the run folder `opts.out`.
pub fn finetune(opts: &FinetuneOptions) -> Result<FinetuneReport> {
    let (task, train) = prepare(opts)?;
    let run = RunOptions {
        out: opts.out.clone(),
        overwrite: opts.overwrite,
        task_info: finetune::task_info(opts, "token-classification", &task.labels),
        progress: opts.progress,
        keep: Vec::new(),
    };
    let outcome = trainer::train(&task, &train, &task.varmap, &opts.train_config, &run)?;
    let test = match &opts.test {
        Some(file) => Some(evaluate_checkpoint(
            &opts.out,
            file,
            task.tokenizer.max_len(),
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
    fn entities_follow_seqeval() {
        // seqeval.metrics.sequence_labeling.get_entities on the same sequences.
        assert_eq!(
            entities(&["B-PER", "I-PER", "O", "B-LOC"]),
            [("PER".into(), 0, 1), ("LOC".into(), 3, 3)]
        );
        // Lenient: I- after O starts an entity; a type change splits one.
        assert_eq!(
            entities(&["O", "I-PER", "I-PER", "I-LOC"]),
            [("PER".into(), 1, 2), ("LOC".into(), 3, 3)]
        );
        assert_eq!(
            entities(&["B-PER", "B-PER", "S-LOC", "B-ORG", "E-ORG"]),
            [
                ("PER".into(), 0, 0),
                ("PER".into(), 1, 1),
                ("LOC".into(), 2, 2),
                ("ORG".into(), 3, 4)
            ]
        );
    }

    #[test]
    fn metrics_count_exact_spans() {
        let gold = vec![vec!["B-PER", "I-PER", "O", "B-LOC"]];
        let pred = vec![vec!["B-PER", "O", "O", "B-LOC"]];
        let m = tag_metrics(&gold, &pred, ["O", "B-PER", "I-PER", "B-LOC"]);
        // One of two predicted spans is right, one of two gold spans found.
        assert_eq!(m["precision"], 0.5);
        assert_eq!(m["recall"], 0.5);
        assert_eq!(m["f1"], 0.5);
        assert_eq!(m["accuracy"], 0.75);
        let pos = tag_metrics(
            &[vec!["NOUN", "VERB"]],
            &[vec!["NOUN", "NOUN"]],
            ["NOUN", "VERB"],
        );
        assert_eq!(pos.get("f1"), None);
        assert_eq!(pos["accuracy"], 0.5);
    }
}
