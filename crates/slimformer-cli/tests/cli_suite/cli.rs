//! The command line as a user runs it: the real binary on the committed tiny
//! checkpoints, JSON Lines parsed back, and every bad input of the contract.

use crate::common::{dir_str, fixture, json_lines, run_with_stdin, slimformer, stderr};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn assert_fails_naming(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure, got success");
    let err = stderr(out);
    assert!(!err.contains("panicked"), "panic: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr does not name {needle:?}: {err}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn encode_prints_ids_and_hidden_states_in_input_order() {
    let model = fixture("bert-base");
    let out = slimformer(&[
        "encode",
        dir_str(&model),
        "--text",
        "hello world",
        "--text",
        "a",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["text"], "hello world");
    assert_eq!(lines[1]["text"], "a");
    let ids = lines[0]["ids"].as_array().unwrap();
    let states = lines[0]["last_hidden_state"].as_array().unwrap();
    assert_eq!(ids.len(), states.len());
    assert_eq!(states[0].as_array().unwrap().len(), 32);
}

#[test]
fn batching_does_not_change_results() {
    let model = fixture("roberta-seqcls");
    let texts = "short\na much longer text with many more words in it\nmiddle sized text\n";
    let batched = run_with_stdin(
        &["encode", dir_str(&model), "--batch-size", "3"],
        Some(texts),
    );
    let single = run_with_stdin(
        &["encode", dir_str(&model), "--batch-size", "1"],
        Some(texts),
    );
    assert!(batched.status.success() && single.status.success());
    let (a, b) = (json_lines(&batched), json_lines(&single));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["ids"], y["ids"]);
        let flat = |v: &Value| -> Vec<f64> {
            v["last_hidden_state"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|f| f.as_f64().unwrap()))
                .collect()
        };
        let diff = flat(x)
            .iter()
            .zip(flat(y))
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-5, "batched differs by {diff}");
    }
}

#[test]
fn classify_gives_labels_and_probabilities() {
    let out = slimformer(&[
        "classify",
        dir_str(&fixture("bert-seqcls")),
        "--text",
        "good film",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = &json_lines(&out)[0];
    let scores = line["scores"].as_object().unwrap();
    let names: Vec<&str> = scores.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["negative", "neutral", "positive"]);
    let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-5);
    assert!(scores.contains_key(line["label"].as_str().unwrap()));
}

#[test]
fn classify_multilabel_uses_sigmoid_and_regression_a_score() {
    let out = slimformer(&[
        "classify",
        dir_str(&fixture("bert-multilabel")),
        "--text",
        "x y",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let scores = json_lines(&out)[0]["scores"].as_object().unwrap().clone();
    assert_eq!(scores.len(), 4);
    assert!(scores
        .values()
        .all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
    let out = slimformer(&[
        "classify",
        dir_str(&fixture("bert-regression")),
        "--text",
        "x y",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json_lines(&out)[0]["score"].is_f64());
}

#[test]
fn classify_pairs_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.txt");
    std::fs::write(&file, "the first\tthe second\nno tab here\n").unwrap();
    let out = slimformer(&[
        "classify",
        dir_str(&fixture("albert-shared")),
        "--pairs",
        "--input",
        dir_str(&file),
    ]);
    assert!(!out.status.success(), "a line without a tab must fail");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["label"].is_string());
    assert!(lines[1]["error"].as_str().unwrap().contains("tab"));
}

#[test]
fn tag_gives_character_offsets() {
    let text = "Café in Paris";
    let out = slimformer(&["tag", dir_str(&fixture("bert-tokcls")), "--text", text]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens = json_lines(&out)[0]["tokens"].as_array().unwrap().clone();
    assert!(!tokens.is_empty());
    let chars: Vec<char> = text.chars().collect();
    for t in &tokens {
        let (start, end) = (
            t["start"].as_u64().unwrap() as usize,
            t["end"].as_u64().unwrap() as usize,
        );
        assert!(start < end && end <= chars.len(), "{t}");
        assert!(t["label"].is_string() && t["score"].is_f64());
    }
    // The first token of "Café" starts at character 0.
    assert_eq!(tokens[0]["start"], 0);
}

#[test]
fn fill_mask_returns_top_k_per_mask_and_flags_texts_without_one() {
    let model = fixture("bert-mlm");
    let out = slimformer(&[
        "fill-mask",
        dir_str(&model),
        "--top-k",
        "3",
        "--text",
        "the [MASK] sat on the [MASK]",
        "--text",
        "no mask here",
    ]);
    assert!(!out.status.success(), "the text without a mask must fail");
    let lines = json_lines(&out);
    let masks = lines[0]["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 2);
    for predictions in masks {
        let p = predictions.as_array().unwrap();
        assert_eq!(p.len(), 3);
        assert!(p[0]["score"].as_f64() >= p[1]["score"].as_f64());
        assert!(p[0]["token"].is_string() && p[0]["id"].is_u64());
    }
    assert!(lines[1]["error"].as_str().unwrap().contains("[MASK]"));
}

#[test]
fn fill_mask_on_xlnet_is_a_clear_error() {
    let out = slimformer(&[
        "fill-mask",
        dir_str(&fixture("xlnet-base")),
        "--text",
        "a <mask>",
    ]);
    assert_fails_naming(&out, &["XLNet", "masked-LM"]);
}

#[test]
fn classify_on_a_token_classifier_names_the_right_command() {
    let out = slimformer(&["classify", dir_str(&fixture("bert-tokcls")), "--text", "a"]);
    assert_fails_naming(&out, &["config.json", "ForTokenClassification"]);
}

#[test]
fn inspect_json_counts_parameters() {
    let out = slimformer(&["inspect", dir_str(&fixture("albert-shared")), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["family"], "albert");
    let p = &report["params"];
    let total = p["total"].as_u64().unwrap();
    assert_eq!(
        total,
        p["embeddings"].as_u64().unwrap()
            + p["encoder"].as_u64().unwrap()
            + p["heads"].as_u64().unwrap()
    );
    assert_eq!(report["dtype"], "float32");
    assert!(report["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["config"]["model_type"], "albert");
}

#[test]
fn inspect_counts_tied_weights_once() {
    let json = |name: &str| -> Value {
        let out = slimformer(&["inspect", dir_str(&fixture(name)), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mlm = json("bert-mlm");
    let expected = mlm["config"]["expected_num_parameters"].as_u64();
    if let Some(expected) = expected {
        assert_eq!(mlm["params"]["total"].as_u64().unwrap(), expected);
    }
    // The tied decoder (vocab × hidden) is not counted among the head's parameters.
    let vocab = mlm["config"]["vocab_size"].as_u64().unwrap();
    let hidden = mlm["config"]["hidden_size"].as_u64().unwrap();
    assert!(mlm["params"]["heads"].as_u64().unwrap() < vocab * hidden);
}

#[test]
fn bench_json_reports_each_shape() {
    let out = slimformer(&[
        "bench",
        dir_str(&fixture("bert-base")),
        "--json",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--shapes",
        "1x16,2x8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["shape"], "1x16");
    assert_eq!(results[0]["precision"], "fp32");
    assert_eq!(results[0]["threads"], 1);
    assert_eq!(results[0]["runs"], 3);
    assert!(results[1]["median_ms"].as_f64().unwrap() > 0.0);
}

// ---- bad input ----

#[test]
fn missing_model_folder() {
    let out = slimformer(&["encode", "/no/such/model", "--text", "a"]);
    assert_fails_naming(&out, &["/no/such/model", "no such directory"]);
}

#[test]
fn missing_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(&out, &["config.json", "missing"]);
}

#[test]
fn missing_weights() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(&out, &["no weights", "model.safetensors"]);
}

#[test]
fn truncated_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(&out, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn corrupt_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[8..40] {
        *b = b'#';
    }
    std::fs::write(&path, &bytes).unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(&out, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn truncated_pytorch_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-pth"), dir.path());
    let path = dir.path().join("pytorch_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(&out, &["pytorch_model.bin"]);
}

#[test]
fn unknown_model_type() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"bert\"", "\"gpt2\"");
    std::fs::write(&path, config).unwrap();
    let out = slimformer(&["inspect", dir_str(dir.path())]);
    assert_fails_naming(&out, &["config.json", "unknown model_type \"gpt2\""]);
}

#[test]
fn unknown_activation() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["hidden_act"] = "mish".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let out = slimformer(&["inspect", dir_str(dir.path())]);
    assert_fails_naming(&out, &["config.json", "unsupported activation \"mish\""]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["intermediate_size"] = 48.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(&out, &["model.safetensors", "shape"]);
}

#[test]
fn many_truncated_texts_warn_a_few_times_then_give_a_count() {
    let model = fixture("bert-base");
    let long = "word ".repeat(200);
    let mut args = vec!["encode", dir_str(&model), "--text", "fine"];
    for _ in 0..7 {
        args.extend(["--text", long.as_str()]);
    }
    let out = slimformer(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("tokens, truncated to 64").count(), 5, "{err}");
    assert!(
        err.contains("7 of 8 texts were truncated to 64 tokens"),
        "{err}"
    );
    assert_eq!(json_lines(&out).len(), 8);
}

#[test]
fn too_long_text_is_truncated_with_a_warning_or_rejected() {
    let model = fixture("bert-base");
    let long = "word ".repeat(200);
    let out = slimformer(&["encode", dir_str(&model), "--text", &long]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("truncated to 64"), "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["ids"].as_array().unwrap().len(), 64);

    let out = slimformer(&[
        "encode",
        dir_str(&model),
        "--no-truncate",
        "--text",
        &long,
        "--text",
        "fine",
    ]);
    assert!(!out.status.success());
    let lines = json_lines(&out);
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .contains("more than the limit of 64"));
    assert!(lines[1]["ids"].is_array(), "the other texts still run");

    let out = slimformer(&[
        "encode",
        dir_str(&model),
        "--max-len",
        "8",
        "--text",
        "one two three four five six seven",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["ids"].as_array().unwrap().len(), 8);
}

#[test]
fn empty_input() {
    let model = fixture("bert-base");
    let out = run_with_stdin(&["encode", dir_str(&model)], Some(""));
    assert_fails_naming(&out, &["no input texts"]);
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = slimformer(&["encode", dir_str(&model), "--input", dir_str(&empty)]);
    assert_fails_naming(&out, &["no input texts"]);
    let out = slimformer(&["encode", dir_str(&model), "--input", "/no/such/file.txt"]);
    assert_fails_naming(&out, &["/no/such/file.txt", "cannot open"]);
}

#[test]
fn non_utf8_line_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, b"good line\n\xff\xfe bad\nanother good one\n").unwrap();
    let out = slimformer(&[
        "encode",
        dir_str(&fixture("bert-base")),
        "--input",
        dir_str(&file),
    ]);
    assert!(!out.status.success());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["ids"].is_array() && lines[2]["ids"].is_array());
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("line 2: not valid UTF-8"));
}

#[test]
fn missing_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(&out, &["tokenizer.json", "missing"]);
}

#[test]
fn invalid_config_json() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-base"), dir.path());
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"bert\",").unwrap();
    let out = slimformer(&["inspect", dir_str(dir.path())]);
    assert_fails_naming(&out, &["config.json", "invalid JSON"]);
}

#[test]
fn missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bert-sharded"), dir.path());
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("model-0000") && n.ends_with(".safetensors"))
        .unwrap();
    std::fs::remove_file(dir.path().join(&shard)).unwrap();
    let out = slimformer(&["encode", dir_str(dir.path()), "--text", "a"]);
    assert_fails_naming(
        &out,
        &[
            shard.as_str(),
            "missing (listed in model.safetensors.index.json)",
        ],
    );
}

#[test]
fn int8_and_bf16_precisions_stay_close_to_fp32_and_others_are_a_clear_error() {
    let model = fixture("bert-base");
    let texts = [
        "hello world",
        "a longer sentence, with several words and a comma",
    ];
    let states = |precision: &str| -> Vec<Vec<f64>> {
        let out = slimformer(&[
            "--precision",
            precision,
            "encode",
            dir_str(&model),
            "--text",
            texts[0],
            "--text",
            texts[1],
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        json_lines(&out)
            .iter()
            .map(|line| {
                line["last_hidden_state"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                    .collect()
            })
            .collect()
    };
    let fp32 = states("fp32");
    for (precision, low) in [("int8", states("int8")), ("bf16", states("bf16"))] {
        for (a, b) in fp32.iter().zip(&low) {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let cosine = dot / (norm(a) * norm(b));
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f64, f64::max);
            assert!(
                cosine > 0.999,
                "{precision} hidden states: cosine {cosine} to fp32"
            );
            assert!(
                worst > 0.0,
                "{precision} gave exactly the fp32 states: its kernels did not run"
            );
        }
    }
    let out = slimformer(&[
        "--precision",
        "fp16",
        "encode",
        dir_str(&model),
        "--text",
        "a",
    ]);
    assert_fails_naming(&out, &["fp16", "fp32, int8 or bf16"]);
}
