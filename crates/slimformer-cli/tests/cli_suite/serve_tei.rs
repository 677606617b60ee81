//! text-embeddings-inference's routes through the real server: its documented
//! request examples answered in its shapes, `/embed_all` and `/tokenize` as the
//! command line computes them, and the truncation fields.

use super::serve::{cli, fixture, max_diff, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn minilm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/all-MiniLM-L6-v2")
}

fn model_dir(name: &str) -> PathBuf {
    if name == "minilm" {
        minilm()
    } else {
        fixture(name)
    }
}

/// Whether `v` has `shape` (the language of tests/api/tei-examples.json).
fn conforms(v: &Value, shape: &Value) -> Result<(), String> {
    match shape {
        Value::String(t) => {
            let (t, nullable) = match t.strip_suffix('?') {
                Some(t) => (t, true),
                None => (t.as_str(), false),
            };
            let ok = match t {
                "number" => v.is_number(),
                "integer" => v.is_u64() || v.is_i64(),
                "string" => v.is_string(),
                "boolean" => v.is_boolean(),
                "object" => v.is_object(),
                _ => return Err(format!("unknown shape {t}")),
            };
            if ok || (nullable && v.is_null()) {
                Ok(())
            } else {
                Err(format!("{v} is not {t}"))
            }
        }
        Value::Array(items) => {
            let arr = v.as_array().ok_or(format!("{v} is not an array"))?;
            if arr.is_empty() {
                return Err("an empty array".into());
            }
            arr.iter().try_for_each(|x| conforms(x, &items[0]))
        }
        Value::Object(fields) => {
            let obj = v.as_object().ok_or(format!("{v} is not an object"))?;
            for (k, s) in fields {
                let x = obj.get(k).ok_or(format!("no field {k:?} in {v}"))?;
                conforms(x, s).map_err(|e| format!("{k}: {e}"))?;
            }
            Ok(())
        }
        _ => Err(format!("bad shape {shape}")),
    }
}

#[test]
fn tei_openapi_examples_are_answered_in_tei_shapes() {
    let file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/api/tei-examples.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let mut servers: BTreeMap<String, Server> = BTreeMap::new();
    for case in cases {
        let model = case["model"].as_str().unwrap();
        let server = servers
            .entry(model.to_string())
            .or_insert_with(|| Server::start(&[model_dir(model).to_str().unwrap()]));
        let route = case["route"].as_str().unwrap();
        let reply = match case["method"].as_str() {
            Some("GET") => server.call("GET", route, None, None),
            _ => server.post(route, case["request"].clone()),
        };
        let name = case["name"].as_str().unwrap();
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        let doc = server.call("GET", "/openapi.json", None, None).json();
        assert!(doc["paths"][route].is_object(), "{route} is not documented");
        let body = reply.json();
        if let Err(e) = conforms(&body, &case["shape"]) {
            panic!("{name}: {e}");
        }
        if let Some(n) = case["length"].as_u64() {
            assert_eq!(body.as_array().unwrap().len() as u64, n, "{name}");
        }
        if let Some(expected) = case.get("equals") {
            assert_eq!(&body, expected, "{name}");
        }
    }
}

#[test]
fn embed_all_tokenize_and_decode_agree_with_the_command_line() {
    let model = minilm();
    let s = Server::start(&[model.to_str().unwrap()]);
    let texts = ["What is Deep Learning?", "héllo wörld, naïve café"];
    let encoded = cli("encode", &model, &texts, &[]);
    let all = s.post("/embed_all", json!({"inputs": texts}));
    assert_eq!(all.status, 200, "{}", all.body);
    let all = all.json();
    for (i, e) in encoded.iter().enumerate() {
        // Every token's state, special tokens included, as `encode` gives them.
        assert!(
            max_diff(&all[i], &e["last_hidden_state"]) < 1e-5,
            "text {i}"
        );
    }

    let tokens = s.post("/tokenize", json!({"inputs": texts})).json();
    for (i, text) in texts.iter().enumerate() {
        let list = tokens[i].as_array().unwrap();
        let ids: Vec<Value> = list.iter().map(|t| t["id"].clone()).collect();
        assert_eq!(Value::Array(ids.clone()), encoded[i]["ids"], "text {i}");
        assert_eq!(list[0]["special"], true);
        assert!(list[0]["start"].is_null());
        for t in &list[1..list.len() - 1] {
            // Byte offsets into the text, covering the token's text.
            let (a, b) = (
                t["start"].as_u64().unwrap() as usize,
                t["stop"].as_u64().unwrap() as usize,
            );
            assert_eq!(&text[a..b], t["text"].as_str().unwrap(), "{t}");
        }
        // MiniLM's tokenizer lower-cases and strips accents.
        let decoded = s.post("/decode", json!({"ids": ids})).json();
        let expected = ["what is deep learning?", "hello world, naive cafe"][i];
        assert_eq!(decoded[0].as_str().unwrap(), expected);
    }
    let plain = s.post(
        "/tokenize",
        json!({"inputs": "test", "add_special_tokens": false}),
    );
    assert_eq!(
        plain.json(),
        json!([[{"id": 3231, "text": "test", "special": false, "start": 0, "stop": 4}]])
    );
}

#[test]
fn truncation_fields_choose_the_side_and_whether_to_cut() {
    let model = minilm();
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let s = Server::start(&[model.to_str().unwrap(), "--max-input-length", "8"]);
    let tokens = |extra: Value| {
        let mut body = json!({"inputs": long});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = s.post("/v1/tokenize", body);
        assert_eq!(r.status, 200, "{}", r.body);
        let t: Vec<String> = r.json()[0]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        t
    };
    let right = tokens(json!({}));
    assert_eq!(right.len(), 8);
    assert_eq!(right[1], "one");
    let left = tokens(json!({"truncation_direction": "left"}));
    assert_eq!(left.len(), 8);
    assert_eq!((left[0].as_str(), left[6].as_str()), ("[CLS]", "twelve"));
    assert_eq!(tokens(json!({"truncation_direction": "Left"})), left);

    // truncate: false turns a too-long input into a 413 on every route.
    for (route, body) in [
        ("/embed", json!({"inputs": long, "truncate": false})),
        ("/embed_all", json!({"inputs": long, "truncate": false})),
        ("/v1/embed", json!({"inputs": long, "truncate": false})),
    ] {
        let r = s.post(route, body);
        assert_eq!(
            (r.status, r.error_type().as_str()),
            (413, "payload_too_large"),
            "{route}: {}",
            r.body
        );
        assert!(r.body.contains("14 tokens"), "{}", r.body);
    }
    let r = s.post(
        "/embed",
        json!({"inputs": long, "truncation_direction": "up"}),
    );
    assert_eq!((r.status, r.error_type().as_str()), (400, "invalid_json"));
    drop(s);

    // A server that rejects long inputs cuts them for a request that asks.
    let strict = Server::start(&[
        model.to_str().unwrap(),
        "--max-input-length",
        "8",
        "--no-truncate",
    ]);
    assert_eq!(strict.post("/embed", json!({"inputs": long})).status, 413);
    let cut = strict.post("/embed", json!({"inputs": long, "truncate": true}));
    assert_eq!(cut.status, 200, "{}", cut.body);
}

#[test]
fn bad_tokenize_and_decode_requests_get_clear_errors() {
    let model = minilm();
    let s = Server::start(&[model.to_str().unwrap()]);
    for (route, body, status, needle) in [
        ("/decode", json!({"ids": []}), 422, "ids 0 is empty"),
        (
            "/decode",
            json!({"ids": [[101], []]}),
            422,
            "ids 1 is empty",
        ),
        ("/decode", json!({"ids": [99999999]}), 422, "not a token id"),
        ("/decode", json!({"ids": "101"}), 400, "invalid request"),
        ("/tokenize", json!({"inputs": ""}), 422, "input 0 is empty"),
        ("/tokenize", json!({"inputs": []}), 422, "no inputs"),
        (
            "/embed_all",
            json!({"inputs": "a", "prompt_name": "nope"}),
            422,
            "nope",
        ),
        ("/embed_all", json!({"inputs": ""}), 422, "input 0 is empty"),
    ] {
        let r = s.post(route, body.clone());
        assert_eq!(r.status, status, "{route} {body}: {}", r.body);
        assert!(r.body.contains(needle), "{route} {body}: {}", r.body);
    }
    let many: Vec<Vec<u32>> = vec![vec![101]; 33];
    let r = s.post("/decode", json!({ "ids": many }));
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (413, "payload_too_large")
    );
}
