//! Entity-level scores equal seqeval's (tests/reference/tagging.json, written by
//! scripts/make_tagging_reference.py with seqeval 1.2.2).

use slimformer_train::token_classification::{entities, tag_metrics};
use std::path::PathBuf;

fn strings(v: &serde_json::Value) -> Vec<Vec<&str>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn entities_and_scores_equal_seqeval() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/tagging.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = doc["seqeval"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for (i, case) in cases.iter().enumerate() {
        let (gold, pred) = (strings(&case["gold"]), strings(&case["pred"]));
        for (sentence, expected) in gold.iter().zip(case["gold_entities"].as_array().unwrap()) {
            let ours: Vec<serde_json::Value> = entities(sentence)
                .into_iter()
                .map(|(kind, start, end)| serde_json::json!([kind, start, end]))
                .collect();
            assert_eq!(
                &serde_json::Value::from(ours),
                expected,
                "case {i}: {sentence:?}"
            );
        }
        let tag_set: Vec<&str> = gold.iter().chain(&pred).flatten().copied().collect();
        let m = tag_metrics(&gold, &pred, tag_set);
        for key in ["precision", "recall", "f1"] {
            let want = case[key].as_f64().unwrap();
            assert!(
                (m[key] - want).abs() < 1e-12,
                "case {i}: {key} {} vs seqeval {want}",
                m[key]
            );
        }
    }
}
