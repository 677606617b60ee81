//! `slimformer rerank`: cross-encoders against transformers' logits on fixture
//! checkpoints, the embedding fallback on the real MiniLM, and bad input.

use crate::common::{dir_str, fixture, json_lines, slimformer, stderr};
use serde_json::Value;
use std::path::Path;

/// transformers' logits for the fixture's (text, text_pair) cases, and the pairs.
fn reference_pairs(model: &Path) -> (Vec<(String, String)>, Vec<Vec<f32>>) {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("cases.json")).unwrap()).unwrap();
    let pairs = cases["pair"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    let bytes = std::fs::read(model.join("expected.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits = tensors.tensor("pair.logits").unwrap();
    let labels = logits.shape()[1];
    let values: Vec<f32> = logits
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (pairs, values.chunks(labels).map(<[f32]>::to_vec).collect())
}

fn rerank(model: &Path, query: &str, docs: &[&str], extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["rerank", dir_str(model), "--query", query];
    for d in docs {
        args.extend(["--text", d]);
    }
    args.extend_from_slice(extra);
    let out = slimformer(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&out)
}

#[test]
fn cross_encoder_scores_are_transformers_probabilities() {
    // One logit (BERT): sigmoid; two labels (RoBERTa): the second's softmax.
    for name in ["bert-regression", "roberta-rerank"] {
        let model = fixture(name);
        let (pairs, logits) = reference_pairs(&model);
        for ((query, doc), logits) in pairs.iter().zip(&logits) {
            let expected = match logits.as_slice() {
                [l] => 1.0 / (1.0 + (-l).exp()),
                [a, b] => 1.0 / (1.0 + (a - b).exp()),
                other => panic!("{other:?}"),
            };
            let got = rerank(&model, query, &[doc], &[]);
            let score = got[0]["score"].as_f64().unwrap() as f32;
            assert!(
                (score - expected).abs() < 1e-4,
                "{name}: {score} vs {expected}"
            );
            let raw = rerank(&model, query, &[doc], &["--raw-scores"]);
            let raw = raw[0]["score"].as_f64().unwrap() as f32;
            assert!(
                (raw - logits[logits.len() - 1]).abs() < 1e-4,
                "{name}: raw {raw}"
            );
        }
    }
}

#[test]
fn results_are_sorted_indexed_and_cut_to_top_n() {
    let model = fixture("roberta-rerank");
    let docs = [
        "a river",
        "the dog and the fox",
        "bread",
        "river banks flood",
    ];
    let all = rerank(&model, "rivers", &docs, &[]);
    assert_eq!(all.len(), docs.len());
    let scores: Vec<f64> = all.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    for r in &all {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["text"], docs[i]);
        // Each score is the pair's own: the same when the document is alone.
        let alone = rerank(&model, "rivers", &[docs[i]], &[]);
        assert!((alone[0]["score"].as_f64().unwrap() - r["score"].as_f64().unwrap()).abs() < 1e-5);
    }
    let top = rerank(&model, "rivers", &docs, &["--top-n", "2"]);
    assert_eq!(top, all[..2].to_vec());
}

#[test]
fn a_long_document_is_cut_on_the_document_side() {
    let model = fixture("bert-regression");
    let query = "where is the old mill by the river that runs past the quiet town";
    let out = slimformer(&["encode", dir_str(&model), "--text", query]);
    let query_tokens = json_lines(&out)[0]["ids"].as_array().unwrap().len();
    // Room for the whole query, its separator and one document token: two documents
    // that share their first word then score the same. Cutting both sides (longest
    // first) would keep several tokens of each, and they would differ.
    let max_len = (query_tokens + 2).to_string();
    let docs = [
        "river banks flood every spring and the fields turn to lakes",
        "river dogs bark at night while the children sleep",
    ];
    let cut = rerank(&model, query, &docs, &["--max-len", &max_len]);
    assert_eq!(cut[0]["score"], cut[1]["score"], "{cut:?}");
    let whole = rerank(&model, query, &docs, &[]);
    assert_ne!(whole[0]["score"], whole[1]["score"], "{whole:?}");
}

#[test]
fn an_embedding_model_ranks_by_cosine() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/all-MiniLM-L6-v2");
    let docs = ["I had pasta for lunch.", "Rivers flow into the sea."];
    let ranked = rerank(&model, "Where do rivers go?", &docs, &[]);
    assert_eq!(ranked[0]["index"], 1);
    // The score is the cosine of the two embeddings `embed` gives.
    let embed = |t: &str| -> Vec<f64> {
        let out = slimformer(&["embed", dir_str(&model), "--text", t]);
        json_lines(&out)[0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (q, d) = (embed("Where do rivers go?"), embed(docs[1]));
    let dot: f64 = q.iter().zip(&d).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cosine = dot / (norm(&q) * norm(&d));
    assert!((ranked[0]["score"].as_f64().unwrap() - cosine).abs() < 1e-5);
}

#[test]
fn bad_rerank_input_is_a_clear_error() {
    let model = fixture("roberta-rerank");
    let m = dir_str(&model);
    for (args, says) in [
        (
            vec!["rerank", m, "--query", " ", "--text", "d"],
            "--query is empty",
        ),
        (
            vec!["rerank", m, "--query", "q", "--text", "d", "--top-n", "0"],
            "--top-n",
        ),
        (
            vec!["rerank", m, "--query", "q", "--text", ""],
            "document 0 is empty",
        ),
        (
            vec![
                "rerank",
                dir_str(&fixture("bert-seqcls")),
                "--query",
                "q",
                "--text",
                "d",
            ],
            "this classifier has 3",
        ),
    ] {
        let out = slimformer(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("none.txt");
    std::fs::write(&empty, "").unwrap();
    let out = slimformer(&["rerank", m, "--query", "q", "--input", dir_str(&empty)]);
    assert!(stderr(&out).contains("no documents"), "{}", stderr(&out));
}
