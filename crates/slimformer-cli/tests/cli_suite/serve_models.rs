//! Several models in one `slimformer serve`: picked by `"model"` or `X-Model`,
//! listed, labelled in the metrics, reloaded on their own; an unknown name is a
//! 404 naming the ones there are.

use super::common::slimformer;
use super::serve::{fixture, registry_with, wait_for, Server};
use serde_json::json;
use std::path::PathBuf;

fn minilm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/all-MiniLM-L6-v2")
}

fn dims(reply: &serde_json::Value) -> usize {
    reply["data"][0]["embedding"].as_array().unwrap().len()
}

#[test]
fn requests_pick_their_model_by_name_or_header() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("reg");
    registry_with(
        &reg,
        &[
            ("v1", &fixture("bert-seqcls")),
            ("v2", &fixture("distilbert-seqcls")),
        ],
    );
    std::fs::write(reg.join("PRODUCTION"), "v1\n").unwrap();
    let minilm = minilm();
    let arg = |name: &str, dir: &std::path::Path| format!("{name}={}", dir.display());
    let s = Server::start(&[
        "--model",
        &arg("minilm", &minilm),
        "--model",
        &arg("cls", &fixture("roberta-seqcls")),
        "--model",
        &arg("reg", &reg),
        "--poll-seconds",
        "0.1",
    ]);
    let listed = s.call("GET", "/v1/models", None, None).json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["minilm", "cls", "reg"]);
    assert_eq!(listed["data"][2]["version"], "v1");

    // OpenAI's "model" picks; no name is the first model.
    let openai = |model: Option<&str>| {
        let mut body = json!({"input": "hello world"});
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        s.post("/v1/embeddings", body)
    };
    let default = openai(None).json();
    assert_eq!(
        (dims(&default), default["model"].as_str()),
        (384, Some("minilm"))
    );
    let cls = openai(Some("cls")).json();
    assert_eq!(cls["model"], "cls");
    assert_ne!(dims(&cls), 384);
    let unknown = openai(Some("gpt-4"));
    assert_eq!(
        (unknown.status, unknown.error_type().as_str()),
        (404, "model_not_found")
    );
    assert!(
        unknown.body.contains("minilm, cls, reg"),
        "{}",
        unknown.body
    );

    // TEI's routes: X-Model, else the default.
    let tei = |headers: &[(&str, &str)]| {
        let r = s.post_with("/embed", json!({"inputs": "hello"}), headers);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()[0].as_array().unwrap().len()
    };
    assert_eq!(tei(&[]), 384);
    assert_eq!(tei(&[("X-Model", "cls")]), dims(&cls));
    let r = s.post_with("/embed", json!({"inputs": "hello"}), &[("X-Model", "nope")]);
    assert_eq!(r.status, 404);

    // Our routes take "model" too; a task the model lacks names the model.
    let classify = |model: &str| s.post("/v1/classify", json!({"inputs": "hi", "model": model}));
    assert_eq!(classify("cls").status, 200);
    assert_eq!(classify("reg").status, 200);
    let no_head = classify("minilm");
    assert_eq!(
        (no_head.status, no_head.error_type().as_str()),
        (422, "unsupported_task")
    );
    assert!(no_head.body.contains("minilm"), "{}", no_head.body);

    let info = s.call("GET", "/info?model=cls", None, None).json();
    assert_eq!(info["model_id"], "cls");
    assert!(info["model_type"]["classifier"].is_object(), "{info}");
    assert_eq!(info["models"], json!(["minilm", "cls", "reg"]));
    assert_eq!(s.call("GET", "/info?model=nope", None, None).status, 404);

    let metrics = s.call("GET", "/metrics", None, None).body;
    for needle in [
        "slimformer_model_requests_total{model=\"cls\"}",
        "slimformer_model_requests_total{model=\"minilm\"}",
        "slimformer_batch_tokens_bucket{model=\"cls\",le=",
        "slimformer_model_info{model=\"reg\",version=\"v1\"} 1",
        "slimformer_model_info{model=\"minilm\",version=\"local\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }

    // The registry model follows its pointer; the others keep serving as they were.
    std::fs::write(reg.join("PRODUCTION"), "v2\n").unwrap();
    let version_of = |name: &str| {
        s.call("GET", "/v1/models", None, None).json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == name)
            .unwrap()["version"]
            .clone()
    };
    assert!(wait_for(|| version_of("reg") == "v2"));
    assert_eq!(version_of("minilm"), "local");
    assert_eq!(dims(&openai(None).json()), 384);
    let ready = s.call("GET", "/ready", None, None).json();
    assert_eq!(ready["models"].as_array().unwrap().len(), 3, "{ready}");
}

#[test]
fn bad_model_flags_stop_the_start_with_the_reason() {
    let minilm = minilm();
    let m = format!("a={}", minilm.display());
    for (args, needle) in [
        (vec!["--model", "nameless"], "expected NAME=DIR"),
        (vec!["--model", "=/tmp"], "non-empty name"),
        (vec!["--model", "a=/no/such/folder"], "--model a"),
        (vec!["--model", &m, "--model", &m], "given twice"),
    ] {
        let mut all = vec!["serve", "--port", "0"];
        all.extend(args.iter().copied());
        let out = slimformer(&all);
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
