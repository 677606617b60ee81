//! Token classification through the real binary and server: entities grouped as
//! transformers' pipeline groups them (tests/reference/tagging.json, written by
//! scripts/make_tagging_reference.py), `POST /v1/tag`, and `finetune --task
//! token-classification` with `evaluate`, bad data named by file and line.

use super::common::{slimformer, stderr};
use super::serve::{cli, fixture, max_diff, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn reference() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/tagging.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The reference's entities and ours agree: every field equal, scores within 1e-4.
fn assert_entities_match(ours: &Value, theirs: &Value, what: &str) {
    let (a, b) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: {} entities, transformers {}\nours {ours}\ntheirs {theirs}",
        a.len(),
        b.len()
    );
    for (x, y) in a.iter().zip(b) {
        for key in ["entity", "entity_group", "index", "word", "start", "end"] {
            assert_eq!(
                x.get(key),
                y.get(key),
                "{what}: {key} differs\nours {x}\ntheirs {y}"
            );
        }
        let diff = max_diff(&x["score"], &y["score"]);
        assert!(
            diff <= 1e-4,
            "{what}: score differs by {diff}\nours {x}\ntheirs {y}"
        );
    }
}

#[test]
fn tag_aggregations_match_transformers_pipeline() {
    let doc = reference();
    let mut groups: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for case in doc["pipeline"].as_array().unwrap() {
        let key = (
            case["model"].as_str().unwrap().to_string(),
            case["aggregation"].as_str().unwrap().to_string(),
        );
        groups.entry(key).or_default().push(case);
    }
    assert_eq!(groups.len(), 15, "three models, five strategies");
    for ((model, aggregation), cases) in groups {
        let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
        let lines = cli(
            "tag",
            &fixture(&model),
            &texts,
            &["--aggregation", &aggregation],
        );
        for (line, case) in lines.iter().zip(&cases) {
            assert_eq!(line["text"], case["text"]);
            let what = format!("{model} {aggregation} {:?}", case["text"]);
            assert_entities_match(&line["entities"], &case["entities"], &what);
        }
    }
}

#[test]
fn v1_tag_answers_as_the_pipeline_and_refuses_what_it_cannot() {
    let doc = reference();
    let server = Server::start(&[fixture("bert-tokcls").to_str().unwrap()]);
    for aggregation in ["none", "simple", "first", "average", "max"] {
        let cases: Vec<&Value> = doc["pipeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["model"] == "bert-tokcls" && c["aggregation"] == aggregation)
            .collect();
        let texts: Vec<&Value> = cases.iter().map(|c| &c["text"]).collect();
        // transformers' own field name is accepted too.
        let field = if aggregation == "max" {
            "aggregation_strategy"
        } else {
            "aggregation"
        };
        let reply = server.post("/v1/tag", json!({"inputs": texts, field: aggregation}));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let records = reply.json();
        for (record, case) in records.as_array().unwrap().iter().zip(&cases) {
            assert_eq!(record["text"], case["text"]);
            assert_entities_match(
                &record["entities"],
                &case["entities"],
                &format!("/v1/tag {aggregation}"),
            );
        }
    }
    let bad = server.post("/v1/tag", json!({"inputs": "x", "aggregation": "longest"}));
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(
        bad.body.contains("longest") && bad.body.contains("simple"),
        "{}",
        bad.body
    );
    let empty = server.post("/v1/tag", json!({"inputs": []}));
    assert_eq!(empty.status, 422, "{}", empty.body);

    let classifier = Server::start(&[fixture("bert-seqcls").to_str().unwrap()]);
    let reply = classifier.post("/v1/tag", json!({"inputs": "hello"}));
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.error_type(), "unsupported_task");
    assert!(
        reply.body.contains("token-classification"),
        "{}",
        reply.body
    );
}

fn minilm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/all-MiniLM-L6-v2")
}

/// Sentences where who and where are told by the words around them.
fn write_conll(path: &Path, n: usize, seed: usize) {
    let people = ["Alice", "Bob", "Peter", "Mary", "John", "Emma", "Oliver"];
    let places = ["Paris", "London", "Berlin", "Rome", "Madrid", "Vienna"];
    let verbs = ["went to", "flew to", "lives in", "works in"];
    let mut text = String::new();
    for i in 0..n {
        let k = i * 7 + seed;
        let mut words: Vec<(&str, &str)> = Vec::new();
        if k.is_multiple_of(3) {
            words.extend([("Yesterday", "O"), (",", "O")]);
        }
        words.push((people[k % people.len()], "B-PER"));
        if k.is_multiple_of(2) {
            words.push(("Smith", "I-PER"));
        }
        for w in verbs[k % verbs.len()].split(" ") {
            words.push((w, "O"));
        }
        words.push((places[(k / 3) % places.len()], "B-LOC"));
        words.push((".", "O"));
        for (w, t) in words {
            text.push_str(&format!("{w}\t{t}\n"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn finetune_token_classification_learns_and_evaluate_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (train, dev) = (dir.path().join("train.conll"), dir.path().join("dev.conll"));
    write_conll(&train, 96, 0);
    write_conll(&dev, 24, 3);
    let out = dir.path().join("tagger");
    let run = slimformer(&[
        "finetune",
        minilm().to_str().unwrap(),
        "--task",
        "token-classification",
        "--train",
        train.to_str().unwrap(),
        "--dev",
        dev.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch",
        "16",
        "--lr",
        "2e-4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["labels"], json!(["B-LOC", "B-PER", "I-PER", "O"]));
    let f1 = report["dev"]["f1"].as_f64().unwrap();
    assert!(f1 >= 0.9, "entity F1 on dev {f1}: {report}");

    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        json!(["BertForTokenClassification"])
    );
    assert_eq!(config["id2label"]["1"], "B-PER");

    // evaluate scores the saved best checkpoint as the run scored it.
    let eval = slimformer(&[
        "evaluate",
        out.to_str().unwrap(),
        "--data",
        dev.to_str().unwrap(),
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let metrics: Value = serde_json::from_slice(&eval.stdout).unwrap();
    for key in ["f1", "precision", "recall", "accuracy", "loss"] {
        let (a, b) = (
            metrics[key].as_f64().unwrap(),
            report["dev"][key].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{key}: evaluate {a}, finetune {b}");
    }

    // The trained tagger finds the entities of a new sentence, with character spans.
    let lines = cli(
        "tag",
        &out,
        &["Yesterday , Emma Smith flew to Madrid ."],
        &["--aggregation", "first"],
    );
    let found: Vec<(String, u64, u64)> = lines[0]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["entity_group"].as_str().unwrap().to_string(),
                e["start"].as_u64().unwrap(),
                e["end"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [("PER".into(), 12, 22), ("LOC".into(), 31, 37)],
        "{}",
        lines[0]
    );
}

#[test]
fn bad_tagged_data_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("bert-tokcls");
    let run = |train: &Path| {
        slimformer(&[
            "finetune",
            model.to_str().unwrap(),
            "--task",
            "token-classification",
            "--train",
            train.to_str().unwrap(),
            "--out",
            dir.path().join("out").to_str().unwrap(),
        ])
    };
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "one-field.conll",
            "EU\tB-ORG\nrejects\n",
            &["one-field.conll", "line 2", "a word and its tag"],
        ),
        (
            "stray.conll",
            "EU B-ORG\nrejects PER\n",
            &["stray.conll", "line 2", "\"PER\""],
        ),
        (
            "lengths.jsonl",
            "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n",
            &["lengths.jsonl", "line 1", "2 tokens but 1 tags"],
        ),
        (
            "fields.conllu",
            "1\tDo\tdo\tAUX\n",
            &["fields.conllu", "line 1", "10 tab-separated fields"],
        ),
        ("plain.csv", "text,label\na,b\n", &["plain.csv", ".conll"]),
    ];
    for (name, text, needles) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(&path);
        assert!(!out.status.success(), "{name} was accepted");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{name}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{name}: {needle:?} not in {err}");
        }
    }
    // A dev tag the training data never had.
    let (train, dev) = (dir.path().join("t.conll"), dir.path().join("d.conll"));
    std::fs::write(&train, "Bob\tB-PER\nran\tO\n").unwrap();
    std::fs::write(&dev, "Rome\tB-LOC\nwaits\tO\n").unwrap();
    let out = slimformer(&[
        "finetune",
        model.to_str().unwrap(),
        "--task",
        "token-classification",
        "--train",
        train.to_str().unwrap(),
        "--dev",
        dev.to_str().unwrap(),
        "--out",
        dir.path().join("out2").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("d.conll") && err.contains("line 1") && err.contains("B-LOC"),
        "{err}"
    );
}
