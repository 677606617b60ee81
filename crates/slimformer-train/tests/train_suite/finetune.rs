//! Fine-tuning on the committed tiny checkpoints: learning, determinism, saving in
//! HF format, resuming, gradients, and the errors of bad data.

use slimformer::heads::SequenceClassifier;
use slimformer::Model;
use slimformer_train::data::{self, Columns};
use slimformer_train::finetune::{self, FinetuneOptions};
use slimformer_train::trainer::{self, RunOptions, TrainConfig, TrainTask};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// 32 texts from the tiny vocabulary; the label says which word set they use.
fn labelled_csv(dir: &Path) -> PathBuf {
    let pos = ["hello", "world", "bridge", "river", "bread"];
    let neg = ["dog", "fox", "not", "mountains", "costs"];
    let mut rng = slimformer::rng::Rng::new(7);
    let mut csv = String::from("text,label\n");
    for i in 0..32 {
        let (words, label) = if i % 2 == 0 {
            (&pos, "pos")
        } else {
            (&neg, "neg")
        };
        let text: Vec<&str> = (0..3).map(|_| words[rng.below(words.len())]).collect();
        csv.push_str(&format!("\"the {}\",{label}\n", text.join(" ")));
    }
    let path = dir.join("train.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

fn options(model: &str, train: &Path, out: &Path, max_steps: usize) -> FinetuneOptions {
    FinetuneOptions {
        model_dir: fixture(model),
        train: train.to_path_buf(),
        dev: Some(train.to_path_buf()),
        dev_split: None,
        columns: Columns::default(),
        max_len: Some(32),
        train_config: TrainConfig {
            max_steps: Some(max_steps),
            lr: 1e-3,
            batch: 8,
            log_every: 1,
            eval_every: Some(max_steps),
            ..Default::default()
        },
        out: out.to_path_buf(),
        overwrite: false,
        progress: false,
        test: None,
        problem_type: None,
    }
}

fn run_options(opts: &FinetuneOptions) -> RunOptions {
    RunOptions {
        out: opts.out.clone(),
        overwrite: opts.overwrite,
        task_info: serde_json::json!({"test": true}),
        progress: false,
        keep: Vec::new(),
    }
}

fn metrics_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn train_losses(out: &Path) -> Vec<(u64, f64)> {
    metrics_lines(out)
        .iter()
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn overfits_saves_and_reloads_with_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let train = labelled_csv(tmp.path());
    let out = tmp.path().join("run");
    let opts = options("bert-base", &train, &out, 80);
    let (task, examples) = finetune::prepare(&opts).unwrap();
    let outcome = trainer::train(
        &task,
        &examples,
        &task.varmap,
        &opts.train_config,
        &run_options(&opts),
    )
    .unwrap();
    let best = outcome.best.as_ref().unwrap();
    assert_eq!(best.values["accuracy"], 1.0, "{best:?}");
    assert_eq!(best.values["macro_f1"], 1.0);
    assert_eq!(best.values["mcc"], 1.0);
    assert_eq!(outcome.steps, 80);

    // The loss goes down: the last 5 logged steps average well below the first 5.
    let losses: Vec<f64> = train_losses(&out).iter().map(|l| l.1).collect();
    assert_eq!(losses.len(), 80);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    assert!(mean(&losses[75..]) < 0.5 * mean(&losses[..5]), "{losses:?}");

    // The best checkpoint (the last evaluation) reloads as an HF classifier with the
    // same logits as the model in memory.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["0"], "neg");
    assert_eq!(config["label2id"]["pos"], 1);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let names: Vec<String> =
        candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(names.contains(&"bert.pooler.dense.weight".to_string()));
    assert!(names.contains(&"classifier.weight".to_string()));
    assert!(names
        .iter()
        .all(|n| n.starts_with("bert.") || n.starts_with("classifier.")));

    let loaded = Model::load(&out).unwrap();
    let head = SequenceClassifier::load(&loaded).unwrap();
    assert_eq!(head.labels.names, vec!["neg", "pos"]);
    let batch: Vec<_> = task.dev.iter().take(8).collect();
    let mine = task.logits(&batch, None).unwrap();
    let encoded: Vec<_> = batch.iter().map(|e| &e.encoded).collect();
    let inputs = task
        .tokenizer
        .collate(&encoded, &candle_core::Device::Cpu)
        .unwrap();
    let theirs = head
        .forward(&loaded.encoder.forward(&inputs).unwrap())
        .unwrap();
    let diff = (mine - theirs)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "max |Δlogit| = {diff}");

    // Scoring the saved checkpoint on a file gives the dev metrics of the best step
    // (here the dev file is the training file).
    let scored =
        finetune::evaluate_checkpoint(&out, &train, &Columns::default(), Some(32), 8).unwrap();
    for key in ["accuracy", "macro_f1", "mcc"] {
        assert_eq!(scored.values[key], best.values[key], "{key}");
    }
    assert!((scored.values["loss"] - best.values["loss"]).abs() < 1e-5);
}

#[test]
fn same_seed_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let train = labelled_csv(tmp.path());
    let runs: Vec<Vec<(u64, f64)>> = ["a", "b"]
        .iter()
        .map(|name| {
            let mut opts = options("bert-base", &train, &tmp.path().join(name), 6);
            opts.train_config.grad_accum = 2;
            finetune::finetune(&opts).unwrap();
            train_losses(&opts.out)
        })
        .collect();
    assert_eq!(runs[0].len(), 6);
    assert_eq!(runs[0], runs[1]);
    // Another seed gives another run.
    let mut opts = options("bert-base", &train, &tmp.path().join("c"), 6);
    opts.train_config.grad_accum = 2;
    opts.train_config.seed = 7;
    finetune::finetune(&opts).unwrap();
    assert_ne!(train_losses(&opts.out), runs[0]);
}

#[test]
fn resumes_after_a_kill_and_refuses_another_config() {
    let tmp = tempfile::tempdir().unwrap();
    let train = labelled_csv(tmp.path());
    let out = tmp.path().join("run");
    let mut opts = options("distilbert-seqcls", &train, &out, 6);
    opts.train_config.eval_every = Some(3);
    let first = finetune::finetune(&opts).unwrap();
    assert_eq!(first.outcome.steps, 6);
    assert_eq!(first.outcome.resumed_from, None);
    // A write interrupted by a kill leaves a temporary folder and file behind.
    std::fs::create_dir_all(out.join(".resume.tmp-999999")).unwrap();
    std::fs::write(out.join(".resume.tmp-999999/model.safetensors"), b"half").unwrap();
    std::fs::write(out.join(".model.safetensors.tmp-999999"), b"half").unwrap();

    opts.train_config.max_steps = Some(10);
    let second = finetune::finetune(&opts).unwrap();
    assert_eq!(second.outcome.resumed_from, Some(6));
    assert_eq!(second.outcome.steps, 10);
    assert!(!out.join(".resume.tmp-999999").exists());
    assert!(!out.join(".model.safetensors.tmp-999999").exists());
    let steps: Vec<u64> = train_losses(&out).iter().map(|l| l.0).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("resume/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 10);
    // The run folder is a valid checkpoint.
    let model = Model::load(&out).unwrap();
    assert_eq!(
        SequenceClassifier::load(&model).unwrap().labels.names.len(),
        2
    );

    // Another learning rate is another run: refused, unless --overwrite.
    opts.train_config.lr = 2e-3;
    let err = finetune::finetune(&opts).unwrap_err().to_string();
    assert!(
        err.contains("different configuration") && err.contains("lr"),
        "{err}"
    );
    opts.overwrite = true;
    let fresh = finetune::finetune(&opts).unwrap();
    assert_eq!(fresh.outcome.resumed_from, None);
}

#[test]
fn every_parameter_gets_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let train = labelled_csv(tmp.path());
    let opts = options("bert-base", &train, &tmp.path().join("run"), 1);
    let (task, examples) = finetune::prepare(&opts).unwrap();
    let batch: Vec<_> = examples.iter().take(8).collect();
    let rng = slimformer::rng::TrainRng::new(1);
    let grads = task.loss(&batch, &rng).unwrap().backward().unwrap();
    let vars = task.varmap.data().lock().unwrap();
    assert!(vars.contains_key("classifier.weight"));
    assert!(vars.contains_key("pooler.dense.weight"));
    for (name, var) in vars.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn new_heads_come_from_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let train = labelled_csv(tmp.path());
    let head = |seed| {
        let mut opts = options("bert-base", &train, &tmp.path().join("run"), 1);
        opts.train_config.seed = seed;
        let (task, _) = finetune::prepare(&opts).unwrap();
        let w = task.varmap.data().lock().unwrap()["classifier.weight"]
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        w
    };
    assert_eq!(head(1), head(1));
    assert_ne!(head(1), head(2));
    // Drawn at the config's initializer_range, as transformers' _init_weights draws.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("bert-base").join("config.json")).unwrap(),
    )
    .unwrap();
    let range = config["initializer_range"].as_f64().unwrap();
    let values: Vec<f64> = head(1).concat().into_iter().map(f64::from).collect();
    let sd = (values.iter().map(|v| v * v).sum::<f64>() / values.len() as f64).sqrt();
    assert!(
        (0.7..1.3).contains(&(sd / range)),
        "sd {sd} for initializer_range {range}"
    );
}

fn error_of(file: &str, contents: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(file);
    std::fs::write(&path, contents).unwrap();
    data::read_rows(&path, &Columns::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_data_errors_name_file_and_line() {
    let e = error_of("a.csv", b"sentence,label\nhello,pos\n");
    assert!(
        e.contains("a.csv") && e.contains("line 1") && e.contains("no column \"text\""),
        "{e}"
    );
    assert!(e.contains("sentence, label"), "{e}");
    let e = error_of("b.csv", b"");
    assert!(e.contains("b.csv") && e.contains("empty"), "{e}");
    let e = error_of("c.csv", b"text,label\nhello,pos\n\"broken,neg\nworld,pos\n");
    assert!(
        e.contains("c.csv") && e.contains("line 3") && e.contains("quot"),
        "{e}"
    );
    let e = error_of("d.csv", b"text,label\nhello,pos\nw\xffrld,neg\n");
    assert!(
        e.contains("d.csv") && e.contains("line 3") && e.contains("UTF-8"),
        "{e}"
    );
    let e = error_of("e.tsv", b"text\tlabel\nhello\tpos\n\tneg\n");
    assert!(
        e.contains("e.tsv") && e.contains("line 3") && e.contains("empty text"),
        "{e}"
    );
    let e = error_of(
        "f.jsonl",
        b"{\"text\":\"hi\",\"label\":1}\n{\"txt\":\"x\",\"label\":0}\n",
    );
    assert!(
        e.contains("f.jsonl") && e.contains("line 2") && e.contains("no column"),
        "{e}"
    );
    let e = error_of("g.csv", b"text,label\nhello,pos,extra\n");
    assert!(
        e.contains("g.csv") && e.contains("line 2") && e.contains("3 fields"),
        "{e}"
    );
    let e = error_of("h.txt", b"text,label\n");
    assert!(e.contains("h.txt") && e.contains(".csv"), "{e}");

    // RFC 4180 quoting works: commas, doubled quotes and newlines inside fields.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ok.csv");
    std::fs::write(&path, "label,text\npos,\"a, \"\"b\"\"\nc\"\n").unwrap();
    let rows = data::read_rows(&path, &Columns::default()).unwrap();
    assert_eq!(
        rows[0].input,
        slimformer::tokenize::TextInput::Single("a, \"b\"\nc".into())
    );

    // A dev label the training data lacks.
    let train = labelled_csv(tmp.path());
    let dev = tmp.path().join("dev.csv");
    std::fs::write(&dev, "text,label\nhello,pos\nworld,maybe\n").unwrap();
    let mut opts = options("bert-base", &train, &tmp.path().join("run"), 1);
    opts.dev = Some(dev);
    let e = finetune::prepare(&opts).err().unwrap().to_string();
    assert!(
        e.contains("dev.csv") && e.contains("line 3") && e.contains("unknown label \"maybe\""),
        "{e}"
    );
}

#[test]
fn dev_split_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = data::read_rows(&labelled_csv(tmp.path()), &Columns::default()).unwrap();
    let (t1, d1) =
        data::split_dev(rows.clone(), 0.25, data::HoldOut::Seeded(3), "dev_split").unwrap();
    let (_, d2) =
        data::split_dev(rows.clone(), 0.25, data::HoldOut::Seeded(3), "dev_split").unwrap();
    let (_, d3) = data::split_dev(rows, 0.25, data::HoldOut::Seeded(4), "dev_split").unwrap();
    assert_eq!((t1.len(), d1.len()), (24, 8));
    assert_eq!(d1, d2);
    assert_ne!(d1, d3);
}

/// Multi-label and regression fine-tunes from a base model (`--problem-type`): the
/// saved config names the problem type, so the reloaded head gives sigmoid scores
/// or the raw number; the metrics are the problem's; bad labels name file and line.
#[test]
fn multi_label_and_regression_train_save_and_reload() {
    use slimformer::heads::ProblemType;
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("multi.jsonl");
    let mut lines = String::new();
    for i in 0..24 {
        let (text, labels) = match i % 3 {
            0 => ("the river and the bridge", r#"["water", "stone"]"#),
            1 => ("the dog and the fox", r#"["animal"]"#),
            _ => ("hello world", "[]"),
        };
        lines.push_str(&format!("{{\"text\": \"{text}\", \"label\": {labels}}}\n"));
    }
    std::fs::write(&train, lines).unwrap();
    let mut opts = options("bert-base", &train, &tmp.path().join("multi"), 40);
    opts.problem_type = Some(ProblemType::MultiLabel);
    opts.train_config.lr = 5e-3;
    let report = finetune::finetune(&opts).unwrap();
    assert_eq!(report.labels, ["animal", "stone", "water"]);
    let dev = report.outcome.last.unwrap();
    assert_eq!(dev.primary, "micro_f1");
    assert!(dev.values["micro_f1"] > 0.9, "{:?}", dev.values);
    assert!(dev.values.contains_key("accuracy") && dev.values.contains_key("macro_f1"));
    let saved = Model::load(&opts.out).unwrap();
    let head = SequenceClassifier::load(&saved).unwrap();
    assert_eq!(head.labels.problem_type, ProblemType::MultiLabel);

    let train = tmp.path().join("scores.csv");
    let mut csv = String::from("text,label\n");
    for i in 0..24 {
        let (text, value) = if i % 2 == 0 {
            ("the river and the bridge", "2.5")
        } else {
            ("the dog and the fox", "-1.0")
        };
        csv.push_str(&format!("{text},{value}\n"));
    }
    std::fs::write(&train, csv).unwrap();
    let mut opts = options("bert-base", &train, &tmp.path().join("reg"), 60);
    opts.problem_type = Some(ProblemType::Regression);
    opts.train_config.lr = 5e-3;
    let report = finetune::finetune(&opts).unwrap();
    let dev = report.outcome.last.unwrap();
    assert_eq!((dev.primary.as_str(), dev.higher_is_better), ("mse", false));
    assert!(
        dev.values["mse"] < 0.5 && dev.values["pearson"] > 0.9,
        "{:?}",
        dev.values
    );
    let head = SequenceClassifier::load(&Model::load(&opts.out).unwrap()).unwrap();
    assert_eq!(head.labels.problem_type, ProblemType::Regression);
    assert_eq!(head.labels.names.len(), 1);

    // A label that is not a number, for a regression.
    std::fs::write(&train, "text,label\nhello,1.5\nworld,high\n").unwrap();
    opts.out = tmp.path().join("bad");
    let e = finetune::prepare(&opts).err().unwrap().to_string();
    assert!(
        e.contains("scores.csv") && e.contains("line 3") && e.contains("not a number"),
        "{e}"
    );
    // A single-label text needs its label.
    std::fs::write(&train, "text,label\nhello,pos\nworld,\nthe,neg\n").unwrap();
    opts.problem_type = None;
    let e = finetune::prepare(&opts).err().unwrap().to_string();
    assert!(
        e.contains("scores.csv") && e.contains("line 3") && e.contains("empty label"),
        "{e}"
    );
}
