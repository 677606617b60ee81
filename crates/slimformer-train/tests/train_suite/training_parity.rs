//! Training step by step against PyTorch: from the same initial weights, on the
//! same examples in the same order, with dropout off, slimformer's trainer gives
//! PyTorch's loss at every one of 30 optimizer steps (AdamW with decoupled decay,
//! warm-up and linear decay, global-norm clipping, gradient accumulation over
//! micro-batches of unequal size) and its weights after them, for sequence
//! classification (single-label, multi-label, regression) and token classification.
//! The fixtures come from `scripts/make_training_fixtures.py`.

use candle_core::{DType, Device, Tensor};
use slimformer_train::data::Columns;
use slimformer_train::finetune::{self, FinetuneOptions};
use slimformer_train::token_classification;
use slimformer_train::trainer::{self, RunOptions, TrainConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// fp32 over 30 steps of a tiny model: the summation orders of the two sides
/// differ (candle's and torch's reductions, our kernels), nothing else.
const TOLERANCE: f64 = 1e-4;

/// The key projections' biases are left out of the weight comparison: a key bias
/// adds q·b to all of a query's scores alike, which the softmax cancels, so its
/// gradient is zero in exact arithmetic and only rounding noise on either side.
/// AdamW divides by that noise's own size and turns it into full-size steps of
/// random sign (measured: every other tensor within 1.2e-6, these 1–2e-2).
const ZERO_GRADIENT: [&str; 2] = [".attention.self.key.bias", ".attention.k_lin.bias"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

struct Reference {
    settings: serde_json::Value,
    losses: Vec<f64>,
    weights: HashMap<String, Tensor>,
}

fn reference(case: &str) -> Reference {
    let dir = fixture(case);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let losses = expected["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["loss"].as_f64().unwrap())
        .collect();
    let weights =
        candle_core::safetensors::load(dir.join("final.safetensors"), &Device::Cpu).unwrap();
    Reference {
        settings: expected["settings"].clone(),
        losses,
        weights,
    }
}

/// Fine-tunes the case's initial checkpoint with `train_config` (the reference's,
/// or one changed to show the comparison notices a difference). Returns the logged
/// loss of each step and the saved weights.
fn finetune_case(
    case: &str,
    reference: &Reference,
    out: &Path,
    train_config: TrainConfig,
) -> (Vec<f64>, HashMap<String, Tensor>) {
    let dir = fixture(case);
    let s = &reference.settings;
    let tagging = s["task"] == "token-classification";
    let train = dir.join(if tagging { "train.conll" } else { "train.csv" });
    let run = if tagging {
        token_classification::finetune
    } else {
        finetune::finetune
    };
    run(&FinetuneOptions {
        model_dir: dir.join("init"),
        train: train.clone(),
        dev: Some(train),
        dev_split: None,
        columns: Columns::default(),
        max_len: Some(s["max_len"].as_u64().unwrap() as usize),
        train_config,
        out: out.to_path_buf(),
        overwrite: true,
        progress: false,
        test: None,
        problem_type: None,
    })
    .unwrap();
    logged_run(out)
}

/// The case's training settings, as the reference script used them.
fn train_config(reference: &Reference) -> TrainConfig {
    let s = &reference.settings;
    let get = |k: &str| s[k].as_f64().unwrap();
    let steps = s["max_steps"].as_u64().unwrap() as usize;
    TrainConfig {
        max_steps: Some(steps),
        lr: get("lr"),
        batch: s["batch"].as_u64().unwrap() as usize,
        grad_accum: s["grad_accum"].as_u64().unwrap() as usize,
        warmup_ratio: get("warmup_ratio"),
        weight_decay: get("weight_decay"),
        clip: get("clip"),
        seed: s["seed"].as_u64().unwrap(),
        // One evaluation, at the end: the saved model is the last step's.
        eval_every: Some(steps),
        log_every: 1,
        ..Default::default()
    }
}

/// BERT's pretraining (masked LM + next-sentence prediction) on the case's examples,
/// from its initial checkpoint, with static masks drawn by slimformer's masking (which
/// the reference script reproduces): `pretrain`'s task, only its corpus reading left
/// out, so that both sides start from the same examples.
fn pretrain_case(
    case: &str,
    reference: &Reference,
    out: &Path,
    train_config: TrainConfig,
) -> (Vec<f64>, HashMap<String, Tensor>) {
    use slimformer::models::Family;
    use slimformer_train::objectives::mlm::{self, MaskingMode, MlmConfig};
    use slimformer_train::pretrain::{self, PretrainExample, PretrainTask};

    let init = fixture(case).join("init");
    let config = train_config;
    let examples: Vec<PretrainExample> =
        std::fs::read_to_string(fixture(case).join("examples.jsonl"))
            .unwrap()
            .lines()
            .enumerate()
            .map(|(index, line)| {
                let e: serde_json::Value = serde_json::from_str(line).unwrap();
                let u32s = |k: &str| -> Vec<u32> {
                    e[k].as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as u32)
                        .collect()
                };
                PretrainExample {
                    ids: u32s("ids"),
                    type_ids: u32s("type_ids"),
                    special: e["special"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_bool().unwrap())
                        .collect(),
                    word_starts: None,
                    pair_label: Some(e["pair_label"].as_u64().unwrap() as u32),
                    index: index as u64,
                }
            })
            .collect();
    let (model, varmap) = slimformer::Model::load_trainable(&init).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(init.join("tokenizer.json")).unwrap();
    let vocab = model.checkpoint.config["vocab_size"].as_u64().unwrap() as u32;
    let mut mlm_config = MlmConfig::new(
        reference.settings["mask_token_id"].as_u64().unwrap() as u32,
        mlm::non_special_ids(&tokenizer, vocab),
    );
    mlm_config.mode = MaskingMode::Static { seed: config.seed };
    let task = PretrainTask {
        family: Family::Bert,
        mlm_head: Some(slimformer::heads::MaskedLmHead::load(&model).unwrap()),
        pair_head: Some(slimformer_train::pretrain_heads::SentencePairHead::load(&model).unwrap()),
        plm_head: None,
        objectives: pretrain::objectives(Family::Bert),
        mlm: Some(mlm_config),
        plm: None,
        tokenizer,
        tokenizer_dir: Some(init),
        dev: examples.clone(),
        eval_batch: config.batch,
        seed: config.seed,
        model,
        varmap,
    };
    let run = RunOptions {
        out: out.to_path_buf(),
        overwrite: true,
        task_info: serde_json::json!({"case": case}),
        progress: false,
        keep: Vec::new(),
    };
    trainer::train(&task, &examples, &task.varmap, &config, &run).unwrap();
    logged_run(out)
}

/// Task distillation of the case's teacher into its prepared student on its labelled
/// rows (general: on its raw text), with the weights and temperature the reference
/// used, through `distill` itself.
fn distill_case(
    case: &str,
    reference: &Reference,
    out: &Path,
    train_config: TrainConfig,
) -> (Vec<f64>, HashMap<String, Tensor>) {
    use slimformer_train::shrink::distill::{self, DistillData, DistillOptions, StudentSpec};
    use slimformer_train::shrink::losses::DistillWeights;
    let dir = fixture(case);
    let s = &reference.settings;
    let data = if s["task"] == "general-distillation" {
        DistillData::General {
            corpus: vec![dir.join("corpus.txt")],
        }
    } else {
        let train = dir.join("train.csv");
        DistillData::Task {
            train: train.clone(),
            dev: Some(train),
            dev_split: None,
            columns: Columns::default(),
            test: None,
        }
    };
    distill::distill(&DistillOptions {
        teacher: dir.join("init/teacher"),
        student: StudentSpec::Prepared(dir.join("init/student")),
        data,
        weights: DistillWeights {
            temperature: s["temperature"].as_f64().unwrap(),
            alpha_ce: s["alpha_ce"].as_f64().unwrap(),
            alpha_hard: s["alpha_hard"].as_f64().unwrap(),
            alpha_cos: s["alpha_cos"].as_f64().unwrap(),
            alpha_hidden: s["alpha_hidden"].as_f64().unwrap_or(0.0),
            alpha_attention: s["alpha_attention"].as_f64().unwrap_or(0.0),
        },
        max_len: Some(s["max_len"].as_u64().unwrap() as usize),
        train_config,
        out: out.to_path_buf(),
        overwrite: true,
        progress: false,
        cache_dir: None,
        augment: 0,
    })
    .unwrap();
    logged_run(out)
}

/// The logged loss of each step of the run in `out`, and its saved weights.
fn logged_run(out: &Path) -> (Vec<f64>, HashMap<String, Tensor>) {
    let losses = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    let weights =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    (losses, weights)
}

/// The worst step's relative loss difference, and the worst weight's difference
/// relative to that tensor's largest value.
fn differences(
    reference: &Reference,
    losses: &[f64],
    weights: &HashMap<String, Tensor>,
) -> (f64, f64, String) {
    assert_eq!(
        losses.len(),
        reference.losses.len(),
        "one logged loss per step"
    );
    let loss_diff = losses
        .iter()
        .zip(&reference.losses)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1e-12))
        .fold(0f64, f64::max);
    let (mut worst, mut worst_name) = (0f64, String::new());
    for (name, theirs) in &reference.weights {
        if ZERO_GRADIENT.iter().any(|z| name.ends_with(z)) {
            continue;
        }
        let ours = weights
            .get(name)
            .unwrap_or_else(|| panic!("the trained checkpoint has no {name}"));
        assert_eq!(ours.dims(), theirs.dims(), "{name}");
        let as_f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let (o, t) = (as_f64(ours), as_f64(theirs));
        let diff = (&o - &t)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let scale = t
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .max(1e-12);
        if diff / scale > worst {
            (worst, worst_name) = (diff / scale, name.clone());
        }
    }
    (loss_diff, worst, worst_name)
}

fn check_case(case: &str) {
    let reference = reference(case);
    let run_case = match reference.settings["task"].as_str() {
        Some("pretraining") => pretrain_case,
        Some("distillation" | "general-distillation") => distill_case,
        _ => finetune_case,
    };
    let tmp = tempfile::tempdir().unwrap();
    let (losses, weights) = run_case(
        case,
        &reference,
        &tmp.path().join("run"),
        train_config(&reference),
    );
    let (loss_diff, weight_diff, name) = differences(&reference, &losses, &weights);
    eprintln!(
        "{case}: {} steps, worst loss difference {loss_diff:.1e}, worst weight {weight_diff:.1e} ({name})",
        losses.len()
    );
    assert!(
        loss_diff <= TOLERANCE,
        "{case}: a step's loss differs from PyTorch's by {loss_diff:.2e} (relative)\nours:   {losses:?}\ntheirs: {:?}",
        reference.losses
    );
    assert!(
        weight_diff <= TOLERANCE,
        "{case}: {name} differs from PyTorch's after the last step by {weight_diff:.2e} (relative)"
    );

    // The comparison notices a real difference: without clipping (the reference
    // clipped 14 to 30 of its 30 steps), the run leaves the reference's path.
    let unclipped = TrainConfig {
        clip: 0.0,
        ..train_config(&reference)
    };
    let (losses, weights) = run_case(case, &reference, &tmp.path().join("unclipped"), unclipped);
    let (loss_diff, weight_diff, _) = differences(&reference, &losses, &weights);
    assert!(
        loss_diff > 100.0 * TOLERANCE && weight_diff > 100.0 * TOLERANCE,
        "{case}: turning clipping off went unnoticed ({loss_diff:.2e}, {weight_diff:.2e})"
    );
}

#[test]
fn bert_finetune_steps_match_pytorch() {
    check_case("train-bert-seqcls");
}

#[test]
fn distilbert_finetune_steps_match_pytorch() {
    check_case("train-distilbert-seqcls");
}

/// Token classification: tags on each word's first sub-token, the loss a mean over
/// the tagged tokens of a micro-batch.
#[test]
fn bert_token_classification_steps_match_pytorch() {
    check_case("train-bert-tokcls");
}

/// Multi-label: `|`-separated labels (none for some texts), binary cross-entropy on
/// each label's logit as transformers' `BCEWithLogitsLoss` (a mean over texts and
/// labels); the problem type comes from the model's config.
#[test]
fn bert_multi_label_steps_match_pytorch() {
    check_case("train-bert-multilabel");
}

/// Regression: a number a text, the squared error of the one output (`MSELoss`).
#[test]
fn bert_regression_steps_match_pytorch() {
    check_case("train-bert-regression");
}

/// BERT's pretraining step: masked LM (static masks, 15% and 80/10/10, the decoder
/// tied to the word embeddings) plus next-sentence prediction, summed.
#[test]
fn bert_pretraining_steps_match_pytorch() {
    check_case("train-bert-pretraining");
}

/// Task distillation with DistilBERT's losses at `distill`'s default weights: soft
/// targets (T²·KL at T = 2), gold labels, and the cosine between the last hidden
/// states at every real token, for a 1-layer student of a 2-layer teacher.
#[test]
fn bert_distillation_steps_match_pytorch() {
    check_case("train-bert-distill");
}

/// The same with the layer terms: the mean squared error of mapped layers' hidden
/// states (the embeddings' output included) and the KL of their attention
/// distributions, TinyBERT's uniform map from the 1-layer student to the teacher's
/// last layer.
#[test]
fn bert_distillation_with_layer_terms_matches_pytorch() {
    check_case("train-bert-distill-layers");
}

/// General distillation on raw text (`distill --corpus`) at its default weights:
/// soft targets and the masked-LM loss at the positions masked dynamically from each
/// micro-batch's generator (the reference draws the same masks), and the cosine
/// loss; both models read the masked input.
#[test]
fn bert_general_distillation_steps_match_pytorch() {
    check_case("train-bert-distill-general");
}
