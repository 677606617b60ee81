//! Distillation, compression and quantization on the committed tiny checkpoints.

use candle_core::{DType, Device, Tensor};
use slimformer::checkpoint::Checkpoint;
use slimformer::heads::SequenceClassifier;
use slimformer::models::Family;
use slimformer::params::count_parameters;
use slimformer::tokenize::{TextInput, TextTokenizer};
use slimformer::{Error, Model};
use slimformer_train::data::Columns;
use slimformer_train::shrink::compress::{compress, CompressOptions, ShareInit, Sharing};
use slimformer_train::shrink::distill::{distill, DistillData, DistillOptions, StudentSpec};
use slimformer_train::shrink::embedding_fit::EmbeddingFitOptions;
use slimformer_train::shrink::losses::DistillWeights;
use slimformer_train::shrink::quantize::{quantize, quantize_rows, QuantMode};
use slimformer_train::shrink::student::{from_teacher_layers, write_checkpoint};
use slimformer_train::trainer::TrainConfig;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

const TEXTS: [&str; 3] = [
    "hello world, the river",
    "the dog and the fox",
    "bread costs not mountains",
];

/// Last hidden states and (if it has one) classifier logits of a model on TEXTS.
fn outputs(dir: &Path) -> (Tensor, Option<Tensor>) {
    let model = Model::load(dir).unwrap();
    let tok = TextTokenizer::load(dir, model.config.padding(), Some(32), true).unwrap();
    let enc: Vec<_> = TEXTS
        .iter()
        .map(|t| tok.encode(&TextInput::Single(t.to_string())).unwrap())
        .collect();
    let refs: Vec<_> = enc.iter().collect();
    let batch = tok.collate(&refs, &Device::Cpu).unwrap();
    let hidden = model.encoder.forward(&batch).unwrap();
    let logits = SequenceClassifier::load(&model)
        .ok()
        .map(|h| h.forward(&hidden).unwrap());
    (hidden, logits)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn layer_extraction_copies_the_chosen_teacher_tensors() {
    let teacher = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let student = from_teacher_layers(&teacher, &[1]).unwrap();
    assert_eq!(student.family, Family::DistilBert);
    assert_eq!(student.config["n_layers"], 1);
    let same = |s: &str, t: &str| {
        let d = max_diff(&student.tensors[s], &teacher.tensors[t]);
        assert_eq!(d, 0.0, "{s} is not {t}");
    };
    same(
        "transformer.layer.0.attention.q_lin.weight",
        "encoder.layer.1.attention.self.query.weight",
    );
    same(
        "transformer.layer.0.ffn.lin2.bias",
        "encoder.layer.1.output.dense.bias",
    );
    same(
        "transformer.layer.0.output_layer_norm.weight",
        "encoder.layer.1.output.LayerNorm.weight",
    );
    same("pre_classifier.weight", "pooler.dense.weight");
    same("classifier.weight", "classifier.weight");
    same(
        "embeddings.word_embeddings.weight",
        "embeddings.word_embeddings.weight",
    );
    // Token type 0 is folded into every position.
    let folded = teacher.tensors["embeddings.position_embeddings.weight"]
        .broadcast_add(
            &teacher.tensors["embeddings.token_type_embeddings.weight"]
                .narrow(0, 0, 1)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        max_diff(
            &student.tensors["embeddings.position_embeddings.weight"],
            &folded
        ),
        0.0
    );
    assert!(!student
        .tensors
        .keys()
        .any(|n| n.contains("layer.1.") || n.contains("token_type")));
}

#[test]
fn a_student_with_every_teacher_layer_computes_the_teachers_hidden_states() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let student = from_teacher_layers(&teacher, &[0, 1]).unwrap();
    let out = dir.path().join("student");
    write_checkpoint(&student, &out, &fixture("bert-seqcls")).unwrap();
    let (th, _) = outputs(&fixture("bert-seqcls"));
    let (sh, logits) = outputs(&out);
    assert!(max_diff(&th, &sh) < 1e-5, "{}", max_diff(&th, &sh));
    assert_eq!(logits.unwrap().dims(), &[3, 3]);
    // transformers will not be handed token types it cannot take.
    let tc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("tokenizer_config.json")).unwrap_or_else(|_| {
            br#"{"model_input_names":["input_ids","attention_mask"]}"#.to_vec()
        }),
    )
    .unwrap();
    assert_eq!(tc["model_input_names"][1], "attention_mask");
}

#[test]
fn too_many_student_layers_is_a_clear_error() {
    let teacher = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let err = from_teacher_layers(&teacher, &[0, 2]).err().unwrap();
    assert!(err.to_string().contains("layer 2 does not exist"), "{err}");
    let err = slimformer_train::shrink::student::evenly_spaced_layers(2, 3)
        .err()
        .unwrap();
    assert!(err.to_string().contains("teacher has 2 layers"), "{err}");
}

fn compress_opts(e: Option<usize>, sharing: Sharing, groups: Option<usize>) -> CompressOptions {
    CompressOptions {
        embedding_size: e,
        sharing,
        groups,
        share_init: ShareInit::Mean,
        embedding_fit: None,
    }
}

#[test]
fn fitting_the_factorized_embeddings_lowers_their_output_error() {
    let teacher = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let mut opts = compress_opts(Some(8), Sharing::All, None);
    let (_, svd) = compress(&teacher, &opts).unwrap();
    assert!(svd.embedding_fit.is_none());
    // A skewed "corpus": 40 of the 300 tokens, at positions below 12.
    let texts: Vec<Vec<u32>> = (0..50)
        .map(|i| (0..12).map(|j| ((i * 7 + j * 3) % 40) as u32).collect())
        .collect();
    opts.embedding_fit = Some(EmbeddingFitOptions {
        batch: 256,
        ..EmbeddingFitOptions::new(300, texts)
    });
    let (student, fitted) = compress(&teacher, &opts).unwrap();
    let fit = fitted.embedding_fit.clone().unwrap();
    let (text_before, text_after) = (
        fit.text_error_before.unwrap(),
        fit.text_error_after.unwrap(),
    );
    assert!(text_after < 0.7 * text_before, "{fit:?}");
    assert!(fit.random_error_after < fit.random_error_before, "{fit:?}");
    // The saved tables are the fitted ones: a changed start, the same shapes.
    let words = &student.tensors["embeddings.word_embeddings.weight"];
    assert_eq!(words.dims(), &[300, 8]);
    // At E = H there is nothing to fit: the conversion stays exact.
    opts.embedding_size = None;
    opts.sharing = Sharing::None;
    let (_, exact) = compress(&teacher, &opts).unwrap();
    assert!(exact.embedding_fit.is_none() && exact.embedding_output_error < 1e-5);
}

#[test]
fn compression_at_full_width_without_sharing_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let (student, report) = compress(&teacher, &compress_opts(None, Sharing::None, None)).unwrap();
    assert!(report.embedding_output_error < 1e-5, "{report:?}");
    assert!(report.word_embedding_svd_error < 1e-6, "{report:?}");
    let out = dir.path().join("albert");
    write_checkpoint(&student, &out, &fixture("bert-seqcls")).unwrap();
    let (th, tl) = outputs(&fixture("bert-seqcls"));
    let (sh, sl) = outputs(&out);
    assert!(max_diff(&th, &sh) < 1e-4, "hidden {}", max_diff(&th, &sh));
    assert!(max_diff(&tl.unwrap(), &sl.unwrap()) < 1e-4);
}

#[test]
fn svd_error_shrinks_as_e_grows() {
    let teacher = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let errors: Vec<(f64, f64)> = [4, 8, 16, 24, 32]
        .iter()
        .map(|&e| {
            let (_, r) = compress(&teacher, &compress_opts(Some(e), Sharing::All, None)).unwrap();
            (r.word_embedding_svd_error, r.embedding_output_error)
        })
        .collect();
    assert!(
        errors.windows(2).all(|w| w[1].0 < w[0].0),
        "svd errors {errors:?}"
    );
    assert!(
        errors.windows(2).all(|w| w[1].1 < w[0].1),
        "output errors {errors:?}"
    );
    assert!(errors[4].0 < 1e-6 && errors[4].1 < 1e-5);
    let err = compress(&teacher, &compress_opts(Some(33), Sharing::All, None))
        .err()
        .unwrap();
    assert!(
        matches!(&err, slimformer::Error::Setting { name: "embedding_size", value: Some(v), .. } if v == "33"),
        "{err}"
    );
}

#[test]
fn sharing_makes_the_parameter_count_the_formula() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let cfg = &teacher.config;
    let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (v, h, i, p, t, l) = (
        n("vocab_size"),
        n("hidden_size"),
        n("intermediate_size"),
        n("max_position_embeddings"),
        n("type_vocab_size"),
        n("num_hidden_layers"),
    );
    let labels = 3;
    let e = 8;
    let embeddings = (v + p + t) * e + 2 * e + e * h + h;
    let attention = 4 * (h * h + h) + 2 * h;
    let ffn = h * i + i + i * h + h + 2 * h;
    let heads = h * h + h + h * labels + labels;
    for (sharing, groups, want) in [
        (Sharing::All, 1, embeddings + attention + ffn + heads),
        (Sharing::None, l, embeddings + l * (attention + ffn) + heads),
        (
            Sharing::Attention,
            1,
            embeddings + attention + l * ffn + heads,
        ),
        (Sharing::Ffn, 1, embeddings + l * attention + ffn + heads),
    ] {
        let (student, report) =
            compress(&teacher, &compress_opts(Some(e), sharing, Some(groups))).unwrap();
        assert_eq!(report.groups, groups);
        let out = dir.path().join(format!("{sharing:?}"));
        write_checkpoint(&student, &out, &fixture("bert-seqcls")).unwrap();
        let loaded = Model::load(&out).unwrap();
        assert_eq!(
            count_parameters(&loaded.checkpoint).total,
            want,
            "{sharing:?}"
        );
        // Saved and loaded again: the same outputs.
        let (h1, l1) = outputs(&out);
        let copy = dir.path().join(format!("{sharing:?}-copy"));
        let again = Checkpoint::open(&out).unwrap();
        let student2 = slimformer_train::shrink::student::StudentCheckpoint {
            family: again.family,
            config: again.config.clone(),
            tensors: again.tensors.clone(),
        };
        write_checkpoint(&student2, &copy, &out).unwrap();
        let (h2, l2) = outputs(&copy);
        assert_eq!(max_diff(&h1, &h2), 0.0);
        assert_eq!(max_diff(&l1.unwrap(), &l2.unwrap()), 0.0);
    }
    let err = compress(&teacher, &compress_opts(None, Sharing::All, Some(3)))
        .err()
        .unwrap();
    assert!(err.to_string().contains("must divide"), "{err}");
}

#[test]
fn int8_checkpoints_load_back_as_their_scaled_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8");
    let report = quantize(&fixture("bert-seqcls"), &out, QuantMode::Int8).unwrap();
    assert!(
        report.quantized_tensors > 0 && report.size_ratio < 0.5,
        "{report:?}"
    );
    let fp32 = Checkpoint::open(fixture("bert-seqcls")).unwrap();
    let int8 = Checkpoint::open(&out).unwrap();
    assert_eq!(int8.quantization.as_deref(), Some("int8"));
    let name = "encoder.layer.0.attention.self.query.weight";
    let (q, s) = quantize_rows(&fp32.tensors[name]).unwrap();
    let cols = fp32.tensors[name].dim(1).unwrap();
    let want: Vec<f32> = q
        .iter()
        .enumerate()
        .map(|(k, v)| *v as f32 * s[k / cols])
        .collect();
    let got: Vec<f32> = int8.tensors[name].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want);
    assert_eq!(int8.tensors[name].dtype(), DType::F32);
    let (h32, l32) = outputs(&fixture("bert-seqcls"));
    let (h8, l8) = outputs(&out);
    let relative = |a: &Tensor, b: &Tensor| {
        let d = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let n = a
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (d / n).sqrt()
    };
    assert!(relative(&h32, &h8) < 0.02, "{}", relative(&h32, &h8));
    assert!(relative(&l32.unwrap(), &l8.unwrap()) < 0.05);
    let err = quantize(&out, &dir.path().join("again"), QuantMode::Int8)
        .err()
        .unwrap();
    assert!(err.to_string().contains("already quantized"), "{err}");
    let bf16 = dir.path().join("bf16");
    let r = quantize(&fixture("bert-seqcls"), &bf16, QuantMode::Bf16).unwrap();
    assert!(r.size_ratio < 0.75, "{r:?}");
    let (hb, _) = outputs(&bf16);
    assert!(max_diff(&h32, &hb) < 0.05);
}

fn labelled_csv(dir: &Path, name: &str) -> PathBuf {
    let words = [
        ["hello", "world", "bridge"],
        ["dog", "fox", "not"],
        ["river", "bread", "mountains"],
    ];
    let labels = ["negative", "neutral", "positive"];
    let mut rng = slimformer::rng::Rng::new(11);
    let mut csv = String::from("text,label\n");
    for i in 0..24 {
        let k = i % 3;
        let t: Vec<&str> = (0..3).map(|_| words[k][rng.below(3)]).collect();
        csv.push_str(&format!("\"the {}\",{}\n", t.join(" "), labels[k]));
    }
    let path = dir.join(name);
    std::fs::write(&path, csv).unwrap();
    path
}

fn distill_opts(
    dir: &Path,
    student: StudentSpec,
    data: DistillData,
    weights: DistillWeights,
) -> DistillOptions {
    DistillOptions {
        teacher: fixture("bert-seqcls"),
        student,
        data,
        weights,
        max_len: Some(32),
        train_config: TrainConfig {
            max_steps: Some(4),
            eval_every: Some(4),
            lr: 1e-3,
            batch: 8,
            log_every: 1,
            ..Default::default()
        },
        out: dir.join("run"),
        overwrite: false,
        progress: false,
        cache_dir: Some(dir.join("cache")),
        augment: 0,
    }
}

fn task_data(train: &Path) -> DistillData {
    DistillData::Task {
        train: train.to_path_buf(),
        dev: Some(train.to_path_buf()),
        dev_split: None,
        columns: Columns::default(),
        test: Some(train.to_path_buf()),
    }
}

#[test]
fn task_distillation_trains_a_distilbert_student_and_caches_the_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let train = labelled_csv(dir.path(), "train.csv");
    let opts = distill_opts(
        dir.path(),
        StudentSpec::Layers(1),
        task_data(&train),
        DistillWeights::default(),
    );
    let report = distill(&opts).unwrap();
    assert_eq!(report.outcome.steps, 4);
    assert!(report.test.is_some());
    let metrics = std::fs::read_to_string(opts.out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    let best = Model::load(&opts.out).unwrap();
    assert_eq!(best.family(), Family::DistilBert);
    // One evaluation, at the end: the saved best checkpoint is the final state, tensor
    // for tensor (HF names on disk, read back to the trainer's).
    let state =
        candle_core::safetensors::load(opts.out.join("resume/model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(state.len(), best.checkpoint.tensors.len());
    for (name, t) in &state {
        assert_eq!(max_diff(t, &best.checkpoint.tensors[name]), 0.0, "{name}");
    }
    assert_eq!(
        SequenceClassifier::load(&best).unwrap().labels.names.len(),
        3
    );
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1);

    // Same teacher and data: the cache is read, not extended; other data: a new entry.
    let again = DistillOptions {
        overwrite: true,
        ..opts.clone()
    };
    distill(&again).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
        1
    );
    let other = labelled_csv(dir.path(), "other.csv");
    std::fs::write(
        &other,
        std::fs::read_to_string(&other).unwrap() + "\"the dog\",neutral\n",
    )
    .unwrap();
    let changed = DistillOptions {
        data: task_data(&other),
        out: dir.path().join("changed"),
        ..opts.clone()
    };
    distill(&changed).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
        2
    );

    // Cached and on-the-fly teachers give the same first loss (f16 hidden states in
    // the cache: close, not bit-identical).
    let first_loss = |out: &Path| {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let live = DistillOptions {
        cache_dir: None,
        augment: 0,
        overwrite: true,
        data: task_data(&train),
        out: dir.path().join("live"),
        ..opts.clone()
    };
    distill(&live).unwrap();
    let (a, b) = (first_loss(&opts.out), first_loss(&live.out));
    assert!((a - b).abs() < 1e-3 * a.abs(), "cached {a} vs live {b}");
}

#[test]
fn general_distillation_on_raw_text_with_the_cosine_loss() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let lines: Vec<String> = (0..40)
        .map(|i| format!("the {} and the {}", TEXTS[i % 3], TEXTS[(i + 1) % 3]))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let opts = DistillOptions {
        teacher: fixture("bert-mlm"),
        ..distill_opts(
            dir.path(),
            StudentSpec::TeacherLayers(vec![0]),
            DistillData::General {
                corpus: vec![corpus.clone()],
            },
            DistillWeights::default(),
        )
    };
    let report = distill(&opts).unwrap();
    let best = report.outcome.best.unwrap();
    let cosine = best.values["cosine"];
    assert!(cosine > 0.0 && cosine <= 1.0 + 1e-6, "{cosine}");
    let student = Model::load(&opts.out).unwrap();
    assert_eq!(student.family(), Family::DistilBert);
    assert!(student
        .checkpoint
        .tensors
        .contains_key("vocab_projector.bias"));

    // A teacher without a masked-LM head cannot give MLM soft targets.
    let no_head = DistillOptions {
        teacher: fixture("bert-base"),
        overwrite: true,
        ..opts.clone()
    };
    let err = distill(&no_head).err().unwrap();
    assert!(
        matches!(
            &err,
            Error::Setting {
                name: "alpha_ce",
                ..
            }
        ) && err.to_string().contains("masked-LM head"),
        "{err}"
    );
    let cos_only = DistillOptions {
        weights: DistillWeights {
            alpha_ce: 0.0,
            alpha_hard: 0.0,
            ..DistillWeights::default()
        },
        ..no_head
    };
    distill(&cos_only).unwrap();
}

#[test]
fn bad_distillation_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let train = labelled_csv(dir.path(), "train.csv");
    let base = distill_opts(
        dir.path(),
        StudentSpec::Layers(1),
        task_data(&train),
        DistillWeights::default(),
    );
    let missing = DistillOptions {
        teacher: dir.path().join("nope"),
        ..base.clone()
    };
    let err = distill(&missing).err().unwrap();
    assert!(err.to_string().contains("nope"), "{err}");
    let deep = DistillOptions {
        student: StudentSpec::Layers(5),
        ..base.clone()
    };
    let err = distill(&deep).err().unwrap();
    assert!(err.to_string().contains("teacher has 2 layers"), "{err}");
    // A narrower student cannot take the cosine loss.
    let mut config = Checkpoint::open(fixture("distilbert-seqcls"))
        .unwrap()
        .config;
    config["vocab_size"] = 300.into();
    config["dim"] = 16.into();
    config["n_heads"] = 2.into();
    let config_path = dir.path().join("student.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let narrow = DistillOptions {
        student: StudentSpec::Config(config_path.clone()),
        ..base.clone()
    };
    let err = distill(&narrow).err().unwrap();
    assert!(
        matches!(
            &err,
            Error::Setting {
                name: "alpha_cos",
                ..
            }
        ),
        "{err}"
    );
    let no_cos = DistillOptions {
        weights: DistillWeights {
            alpha_cos: 0.0,
            ..DistillWeights::default()
        },
        overwrite: true,
        ..narrow
    };
    distill(&no_cos).unwrap();

    // The hidden-state term reaches the teacher's width through a projection that
    // trains with the student and stays out of the saved model.
    let layers = DistillOptions {
        weights: DistillWeights {
            alpha_cos: 0.0,
            alpha_hidden: 1.0,
            ..DistillWeights::default()
        },
        ..no_cos.clone()
    };
    distill(&layers).unwrap();
    let saved =
        candle_core::safetensors::load(layers.out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(
        saved.keys().all(|k| !k.contains("training_only")),
        "{:?}",
        saved.keys().collect::<Vec<_>>()
    );
    assert!(Model::load(&layers.out).is_ok());
    // Attention distributions compare head by head: 2 heads cannot learn from 4.
    let attention = DistillOptions {
        weights: DistillWeights {
            alpha_cos: 0.0,
            alpha_attention: 1.0,
            ..DistillWeights::default()
        },
        ..no_cos
    };
    let err = distill(&attention).err().unwrap();
    assert!(
        matches!(
            &err,
            Error::Setting {
                name: "alpha_attention",
                ..
            }
        ) && err
            .to_string()
            .contains("4 attention heads and the student 2"),
        "{err}"
    );
}

/// Augmented task distillation: N altered copies of every training text, labelled by
/// the teacher, with the teacher's outputs cached or not; refused on raw text.
#[test]
fn augmentation_adds_teacher_labelled_copies() {
    let dir = tempfile::tempdir().unwrap();
    let train = labelled_csv(dir.path(), "train.csv");
    let base = distill_opts(
        dir.path(),
        StudentSpec::Layers(1),
        task_data(&train),
        DistillWeights::default(),
    );
    for cache_dir in [Some(dir.path().join("cache")), None] {
        let opts = DistillOptions {
            augment: 3,
            cache_dir,
            overwrite: true,
            ..base.clone()
        };
        let report = distill(&opts).unwrap();
        assert_eq!(report.train_examples, 24 * 4);
    }
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "the dog and the fox\nthe river and the bridge\n").unwrap();
    let general = DistillOptions {
        data: DistillData::General {
            corpus: vec![corpus],
        },
        augment: 2,
        overwrite: true,
        ..base
    };
    let err = distill(&general).err().unwrap();
    assert!(
        matches!(
            &err,
            Error::Setting {
                name: "augment",
                ..
            }
        ),
        "{err}"
    );
}

/// TinyBERT's uniform map for students not made of teacher layers; the layers a
/// student was made of otherwise.
#[test]
fn layer_terms_map_student_layers_to_teacher_layers() {
    use slimformer_train::shrink::distill::layer_map;
    let config = StudentSpec::Config("student.json".into());
    assert_eq!(
        layer_map(&config, 6, 3).unwrap(),
        vec![(0, 0), (1, 2), (2, 4), (3, 6)]
    );
    assert_eq!(
        layer_map(&StudentSpec::TeacherLayers(vec![0, 2, 5]), 6, 3).unwrap(),
        vec![(0, 0), (1, 1), (2, 3), (3, 6)]
    );
    assert_eq!(
        layer_map(&StudentSpec::Layers(2), 6, 2).unwrap(),
        vec![(0, 0), (1, 1), (2, 6)]
    );
    // A shared-layer model runs as many layers as its teacher: one to one.
    let prepared = StudentSpec::Prepared("compressed".into());
    assert_eq!(
        layer_map(&prepared, 2, 2).unwrap(),
        vec![(0, 0), (1, 1), (2, 2)]
    );
}
