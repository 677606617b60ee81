//! `slimformer pretrain` as a user runs it: each family on a micro corpus and a micro
//! model, a few steps at a high learning rate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn slimformer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(args)
        .output()
        .unwrap()
}

/// Twelve short documents of four paragraphs from a tiny grammar, some lines holding
/// two tab-separated utterances.
fn write_corpus(dir: &Path) -> PathBuf {
    let subj = ["the cat", "a dog", "the bird", "my friend", "the teacher"];
    let verb = ["sees", "likes", "finds", "watches", "follows"];
    let obj = ["the ball", "a tree", "the house", "the river", "a book"];
    let mut text = String::new();
    for d in 0..12usize {
        for p in 0..4usize {
            let k = d * 7 + p * 3;
            let (s, v, o) = (subj[k % 5], verb[(k / 5) % 5], obj[(k * 3 + d) % 5]);
            text.push_str(&format!("{s} {v} {o} . then {s} {v} {o} again ."));
            if p == 1 && d % 3 == 0 {
                text.push_str(&format!("\tyes , {o} ."));
            }
            text.push('\n');
        }
        text.push('\n');
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn micro_config(family: &str) -> serde_json::Value {
    match family {
        "bert" => serde_json::json!({"model_type": "bert", "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "max_position_embeddings": 32}),
        "roberta" => serde_json::json!({"model_type": "roberta", "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "max_position_embeddings": 34, "type_vocab_size": 1}),
        "albert" => serde_json::json!({"model_type": "albert", "embedding_size": 16,
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 32}),
        "distilbert" => serde_json::json!({"model_type": "distilbert", "dim": 32,
            "n_layers": 1, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 32}),
        "xlnet" => serde_json::json!({"model_type": "xlnet", "d_model": 32, "n_layer": 1,
            "n_head": 2, "d_inner": 64}),
        _ => unreachable!(),
    }
}

fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn pretrain_family(family: &str, architecture: &str, dev_metric: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path());
    let config = tmp.path().join("config.json");
    std::fs::write(&config, micro_config(family).to_string()).unwrap();
    let out = tmp.path().join("run");
    // Byte-level BPE starts from 256 byte symbols.
    let vocab = if family == "roberta" { "300" } else { "120" };
    let run = slimformer(&[
        "pretrain",
        "--family",
        family,
        "--corpus",
        corpus.to_str().unwrap(),
        "--vocab-size",
        vocab,
        "--config",
        config.to_str().unwrap(),
        "--steps",
        "30",
        "--seq-len",
        "32",
        "--batch",
        "8",
        "--lr",
        "3e-3",
        "--log-every",
        "5",
        "--eval-every",
        "15",
        "--dev-fraction",
        "0.1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{family}: {err}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(run.stdout).unwrap().trim()).unwrap();
    assert_eq!(line["steps"], 30, "{line}");
    assert_eq!(line["architecture"], architecture);
    assert!(line["dev"][dev_metric].as_f64().is_some(), "{line}");
    assert!(line["dev"]["loss"].as_f64().unwrap().is_finite(), "{line}");
    assert!(line["minutes"].as_f64().is_some() && line["examples_per_s"].as_f64().is_some());

    let losses = train_losses(&out);
    assert_eq!(losses.len(), 6, "{losses:?}");
    assert!(
        losses[5] < losses[0] - 0.3,
        "{family}: training loss did not go down: {losses:?}"
    );

    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "train_config.json",
        "resume/state.json",
    ] {
        assert!(out.join(f).exists(), "{family}: no {f}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["architectures"][0], architecture);

    let model = slimformer::Model::load(&out).unwrap();
    assert_eq!(model.family().model_type(), family);
    let names = slimformer::checkpoint::Checkpoint::open(&out)
        .unwrap()
        .tensors
        .into_keys()
        .collect::<Vec<_>>();
    let head = match family {
        "bert" => "cls.seq_relationship.weight",
        "albert" => "sop_classifier.classifier.weight",
        "roberta" => "lm_head.dense.weight",
        "distilbert" => "vocab_transform.weight",
        _ => "lm_loss.bias",
    };
    assert!(names.iter().any(|n| n == head), "{family}: no {head}");

    if family != "xlnet" {
        let mask = match family {
            "roberta" => "<mask>",
            _ => "[MASK]",
        };
        let text = format!("the cat sees {mask} ball .");
        let fill = slimformer(&["fill-mask", out.to_str().unwrap(), "--text", &text]);
        let err = String::from_utf8_lossy(&fill.stderr);
        assert!(fill.status.success(), "{family} fill-mask: {err}");
        let v: serde_json::Value = serde_json::from_str(
            String::from_utf8(fill.stdout)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert!(v.to_string().contains("score"), "{v}");
    }
}

#[test]
fn pretrain_bert_mlm_nsp() {
    pretrain_family("bert", "BertForPreTraining", "nsp_accuracy");
}

#[test]
fn pretrain_roberta_mlm() {
    pretrain_family("roberta", "RobertaForMaskedLM", "mlm_accuracy");
}

#[test]
fn pretrain_albert_mlm_sop() {
    pretrain_family("albert", "AlbertForPreTraining", "sop_accuracy");
}

#[test]
fn pretrain_distilbert_mlm() {
    pretrain_family("distilbert", "DistilBertForMaskedLM", "mlm_accuracy");
}

#[test]
fn pretrain_xlnet_plm() {
    pretrain_family("xlnet", "XLNetLMHeadModel", "plm_loss");
}

#[test]
fn bad_corpus_fails_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let missing = tmp.path().join("nope.txt");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n\n").unwrap();
    for (file, why) in [(&missing, "No such file"), (&empty, "no text")] {
        let run = slimformer(&[
            "pretrain",
            "--family",
            "bert",
            "--corpus",
            file.to_str().unwrap(),
            "--vocab-size",
            "100",
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!run.status.success());
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains(why),
            "{err}"
        );
    }
}
