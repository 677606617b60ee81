//! `slimformer finetune` as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn slimformer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(args)
        .output()
        .unwrap()
}

fn write_train(dir: &Path) -> PathBuf {
    let mut csv = String::from("text,label\n");
    for i in 0..16 {
        let (text, label) = if i % 2 == 0 {
            ("hello world bridge", "pos")
        } else {
            ("dog fox not", "neg")
        };
        csv.push_str(&format!("{text} {i},{label}\n"));
    }
    let path = dir.join("train.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn finetune_writes_a_run_and_prints_json() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_train(tmp.path());
    let out = tmp.path().join("run");
    let base = fixture("bert-base");
    let args = [
        "finetune",
        base.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--dev-split",
        "0.25",
        "--max-steps",
        "4",
        "--batch",
        "4",
        "--lr",
        "1e-3",
        "--out",
        out.to_str().unwrap(),
        "--test",
        train.to_str().unwrap(),
    ];
    let run = slimformer(&args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(run.stdout).unwrap().trim()).unwrap();
    assert_eq!(line["steps"], 4);
    assert_eq!(line["dev_examples"], 4);
    assert!(line["dev"]["accuracy"].as_f64().is_some());
    assert!(line["examples_per_s"].as_f64().unwrap() > 0.0);
    // --test scores the best checkpoint; `evaluate` gives the same numbers.
    let test_accuracy = line["test"]["accuracy"].as_f64().unwrap();
    let eval = slimformer(&[
        "evaluate",
        out.to_str().unwrap(),
        "--data",
        train.to_str().unwrap(),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let scored: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(scored["accuracy"].as_f64().unwrap(), test_accuracy);
    assert!(scored["macro_f1"].is_f64() && scored["mcc"].is_f64());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "train_config.json",
        "resume/state.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    // Same --out, another seed: refused without --overwrite, no panic.
    let mut other: Vec<&str> = args.to_vec();
    other.extend(["--seed", "1"]);
    let refused = slimformer(&other);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("different configuration") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_data_fails_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "text,label\nhello,pos\n\"unclosed,neg\n").unwrap();
    let base = fixture("bert-base");
    let out = tmp.path().join("run");
    let run = slimformer(&[
        "finetune",
        base.to_str().unwrap(),
        "--train",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("bad.csv") && err.contains("line 3"), "{err}");

    let missing = tmp.path().join("cols.tsv");
    std::fs::write(&missing, "sentence\tlabel\nhello\tpos\n").unwrap();
    let run = slimformer(&[
        "finetune",
        base.to_str().unwrap(),
        "--train",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("cols.tsv") && err.contains("line 1") && err.contains("sentence"),
        "{err}"
    );
}

/// Train-split losses logged in a run's metrics.jsonl.
fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn bf16_mixed_precision_trains_like_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_train(tmp.path());
    let base = fixture("bert-seqcls");
    let run = |precision: &str| {
        let out = tmp.path().join(precision);
        let done = slimformer(&[
            "--precision",
            precision,
            "finetune",
            base.to_str().unwrap(),
            "--train",
            train.to_str().unwrap(),
            "--dev-split",
            "0.25",
            "--max-steps",
            "40",
            "--batch",
            "4",
            "--lr",
            "3e-3",
            "--log-every",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        train_losses(&out)
    };
    let (f32_losses, bf16_losses) = (run("fp32"), run("bf16"));
    assert_eq!(bf16_losses.len(), 40);
    // The same weights, batches and dropout masks: the losses differ only by the
    // products' bf16 rounding...
    // ... and they do differ: the bf16 products ran.
    assert_ne!(f32_losses, bf16_losses);
    // Forty steps later the two runs still follow each other.
    let apart = f32_losses
        .iter()
        .zip(&bf16_losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(apart < 0.05, "f32 {f32_losses:?}\nbf16 {bf16_losses:?}");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&bf16_losses[..5]), mean(&bf16_losses[35..]));
    assert!(last < 0.5 * first, "bf16 losses {bf16_losses:?}");
}

/// `--problem-type multi-label`: the run's model scores each label with its own
/// sigmoid when `classify` loads it, and `evaluate` reports the multi-label metrics.
#[test]
fn multi_label_finetune_then_classify() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.csv");
    let mut csv = String::from("text,label\n");
    for i in 0..16 {
        let labels = ["water|stone", "animal", ""][i % 3];
        let text = ["the river bridge", "the dog fox", "hello world"][i % 3];
        csv.push_str(&format!("{text} {i},{labels}\n"));
    }
    std::fs::write(&train, csv).unwrap();
    let out = tmp.path().join("run");
    let base = fixture("bert-base");
    let (train, out_s) = (train.to_str().unwrap(), out.to_str().unwrap());
    let run = slimformer(&[
        "finetune",
        base.to_str().unwrap(),
        "--train",
        train,
        "--dev",
        train,
        "--problem-type",
        "multi-label",
        "--max-steps",
        "3",
        "--batch",
        "4",
        "--out",
        out_s,
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        line["labels"],
        serde_json::json!(["animal", "stone", "water"])
    );
    assert!(line["dev"]["micro_f1"].is_f64(), "{line}");

    let eval = slimformer(&["evaluate", out_s, "--data", train]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let scored: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert!(
        scored["micro_f1"].is_f64() && scored["accuracy"].is_f64(),
        "{scored}"
    );

    let classified = slimformer(&["classify", out_s, "--text", "the river bridge"]);
    assert!(
        classified.status.success(),
        "{}",
        String::from_utf8_lossy(&classified.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&classified.stdout).unwrap();
    let scores: Vec<f64> = record["scores"]
        .as_object()
        .unwrap_or_else(|| panic!("{record}"))
        .values()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 3, "{record}");
    // Independent sigmoids near 0.5 after 3 steps: their sum is far from a softmax's 1.
    assert!((scores.iter().sum::<f64>() - 1.0).abs() > 0.2, "{record}");
}

/// `--select last` keeps the last evaluation's checkpoint; a metric the task lacks
/// is refused by name at the first evaluation, with the task's metrics listed.
#[test]
fn select_picks_which_checkpoint_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_train(tmp.path());
    let base = fixture("bert-base");
    let run = |select: &str, out: &str| {
        slimformer(&[
            "finetune",
            base.to_str().unwrap(),
            "--train",
            train.to_str().unwrap(),
            "--dev",
            train.to_str().unwrap(),
            "--max-steps",
            "4",
            "--eval-every",
            "1",
            "--batch",
            "4",
            "--lr",
            "1e-3",
            "--select",
            select,
            "--out",
            tmp.path().join(out).to_str().unwrap(),
        ])
    };
    let last = run("last", "last");
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    assert_eq!(line["best_step"], 4, "{line}");
    assert_eq!(line["dev"], line["last_dev"], "{line}");

    let bad = run("f1", "bad");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("select") && err.contains("macro_f1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
