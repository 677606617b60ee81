//! `slimformer serve` as a process, talked to over real HTTP on a loopback port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub(crate) struct Server {
    child: Child,
    base: String,
}

impl Server {
    pub(crate) fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_slimformer"));
        cmd.arg("serve").args(["--port", "0"]).args(args);
        Server::spawn(cmd).0
    }

    /// Runs `cmd` (a `slimformer serve` on port 0, perhaps behind a wrapper that
    /// `exec`s it) and waits for its first line: the server and that line.
    pub(crate) fn spawn(mut cmd: Command) -> (Server, serde_json::Value) {
        let mut child = cmd
            .env("SLIMFORMER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("no address line: {line:?}"));
        let server = Server {
            child,
            base: format!("http://{}", v["listening"].as_str().unwrap()),
        };
        (server, v)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not exited, not killed).
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Status, body and the Retry-After header of a request.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        key: Option<&str>,
    ) -> Reply {
        let mut req = ureq::request(method, &self.url(path)).timeout(Duration::from_secs(30));
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let result = match body {
            Some((content_type, bytes)) => req.set("Content-Type", content_type).send_bytes(bytes),
            None => req.call(),
        };
        match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => Reply {
                status: r.status(),
                retry_after: r.header("retry-after").map(str::to_string),
                body: r.into_string().unwrap(),
            },
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// A JSON POST with extra headers.
    pub(crate) fn post_with(
        &self,
        path: &str,
        json: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = ureq::post(&self.url(path))
            .timeout(Duration::from_secs(30))
            .set("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        match req.send_string(&json.to_string()) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => Reply {
                status: r.status(),
                retry_after: r.header("retry-after").map(str::to_string),
                body: r.into_string().unwrap(),
            },
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    pub(crate) fn post(&self, path: &str, json: serde_json::Value) -> Reply {
        self.call(
            "POST",
            path,
            Some(("application/json", json.to_string().as_bytes())),
            None,
        )
    }

    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    retry_after: Option<String>,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub(crate) fn error_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }
}

/// The CLI's JSON line for each text.
pub(crate) fn cli(
    command: &str,
    model: &Path,
    texts: &[&str],
    extra: &[&str],
) -> Vec<serde_json::Value> {
    let mut args = vec![command.to_string(), model.to_string_lossy().into_owned()];
    for t in texts {
        args.push("--text".into());
        args.push(t.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Largest difference between two JSON documents' numbers (structure must match).
pub(crate) fn max_diff(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs(),
        (Array(x), Array(y)) => {
            assert_eq!(x.len(), y.len());
            x.iter()
                .zip(y)
                .map(|(p, q)| max_diff(p, q))
                .fold(0.0, f64::max)
        }
        (Object(x), Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            x.iter()
                .map(|(k, v)| max_diff(v, &y[k]))
                .fold(0.0, f64::max)
        }
        _ => {
            assert_eq!(a, b);
            0.0
        }
    }
}

const TEXTS: [&str; 4] = [
    "hello world",
    "the dog and the fox",
    "bread costs not mountains",
    "river",
];

#[test]
fn routes_answer_as_the_command_line_does() {
    let model = fixture("bert-seqcls");
    let s = Server::start(&[model.to_str().unwrap()]);
    assert_eq!(s.call("GET", "/health", None, None).status, 200);
    let ready = s.call("GET", "/ready", None, None);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["model"], "bert-seqcls");

    let got = s.post("/v1/classify", serde_json::json!({"inputs": TEXTS}));
    assert_eq!(got.status, 200, "{}", got.body);
    let want = cli("classify", &model, &TEXTS, &[]);
    assert!(max_diff(&got.json(), &serde_json::json!(want)) < 1e-5);

    let got = s.post("/v1/embed", serde_json::json!({"inputs": TEXTS}));
    let want = cli("embed", &model, &TEXTS, &[]);
    assert!(max_diff(&got.json(), &serde_json::json!(want)) < 1e-5);
    let got = s.post(
        "/v1/embed",
        serde_json::json!({"inputs": "river", "pooling": "cls", "normalize": true}),
    );
    let want = cli(
        "embed",
        &model,
        &["river"],
        &["--pooling", "cls", "--normalize"],
    );
    assert!(max_diff(&got.json(), &serde_json::json!(want)) < 1e-5);

    // Pairs, as the CLI's tab-separated --pairs lines.
    let pair = s.post(
        "/v1/classify",
        serde_json::json!({"inputs": [{"text": "hello", "text_pair": "world"}]}),
    );
    assert_eq!(pair.json()[0]["text"], "hello\tworld");

    let tok = s.post("/v1/tokenize", serde_json::json!({"inputs": "hello world"}));
    assert_eq!(
        tok.json()[0]["ids"],
        cli("encode", &model, &["hello world"], &[])[0]["ids"]
    );

    // TEI and OpenAI shapes.
    let e = s
        .post(
            "/embed",
            serde_json::json!({"inputs": ["hello world", "river"]}),
        )
        .json();
    assert_eq!(e.as_array().unwrap().len(), 2);
    let norm: f64 = e[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-4, "TEI normalizes by default");
    let p = s
        .post("/predict", serde_json::json!({"inputs": "hello world"}))
        .json();
    let scores = &cli("classify", &model, &["hello world"], &[])[0]["scores"];
    assert_eq!(p[0]["label"], "positive");
    assert!((p[0]["score"].as_f64().unwrap() - scores["positive"].as_f64().unwrap()).abs() < 1e-5);
    let batch = s
        .post(
            "/predict",
            serde_json::json!({"inputs": [["hello"], ["hello", "world"]]}),
        )
        .json();
    assert_eq!(batch.as_array().unwrap().len(), 2);
    let o = s
        .post(
            "/v1/embeddings",
            serde_json::json!({"input": ["a river", "the dog"], "model": "x"}),
        )
        .json();
    assert_eq!(o["object"], "list");
    assert_eq!(o["data"][1]["index"], 1);
    assert!(o["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let m = s.call("GET", "/v1/models", None, None).json();
    assert_eq!(m["data"][0]["family"], "bert");
    assert!(m["data"][0]["parameters"]["total"].as_u64().unwrap() > 0);
    let doc = s.call("GET", "/openapi.json", None, None).json();
    assert!(doc["paths"]["/v1/classify"].is_object());
    // The document is this server's: no route for a head the model lacks, its own sizes.
    assert!(doc["paths"].get("/v1/fill-mask").is_none());
    assert!(doc["paths"].get("/v1/tag").is_none());
    let embed_body = &doc["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"];
    let width = s
        .post("/v1/embed", serde_json::json!({"inputs": "a river"}))
        .json()[0]["embedding"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(embed_body["dimensions"]["maximum"], width);
    assert!(
        embed_body.get("prompt_name").is_none(),
        "the model has no prompts"
    );
    assert!(
        doc["components"]["schemas"]["Error"]["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("overloaded"))
    );
    assert_eq!(s.call("GET", "/docs", None, None).status, 200);
    let metrics = s.call("GET", "/metrics", None, None).body;
    assert!(metrics.contains("slimformer_requests_total{route=\"/v1/classify\",status=\"200\"}"));
    assert!(metrics.contains("slimformer_batch_tokens_bucket"));
    assert!(metrics.contains("slimformer_model_info{model=\"bert-seqcls\",version=\"local\"} 1"));
    // Without an API key there is no admin route.
    assert_eq!(s.post("/admin/reload", serde_json::json!({})).status, 404);
    assert!(s.stop().success());
}

#[test]
fn fill_mask_route() {
    let model = fixture("bert-mlm");
    let s = Server::start(&[model.to_str().unwrap()]);
    let got = s.post(
        "/v1/fill-mask",
        serde_json::json!({"inputs": ["the [MASK] river"], "top_k": 3}),
    );
    let want = cli(
        "fill-mask",
        &model,
        &["the [MASK] river"],
        &["--top-k", "3"],
    );
    assert!(max_diff(&got.json(), &serde_json::json!(want)) < 1e-5);
    let no_mask = s.post(
        "/v1/fill-mask",
        serde_json::json!({"inputs": "no mask here"}),
    );
    assert_eq!(
        (no_mask.status, no_mask.error_type().as_str()),
        (422, "invalid_input")
    );
    let no_head = s.post("/v1/classify", serde_json::json!({"inputs": "x"}));
    assert_eq!(no_head.status, 422);
    assert_eq!(no_head.error_type(), "unsupported_task");
}

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let model = fixture("bert-seqcls");
    let s = Server::start(&[
        model.to_str().unwrap(),
        "--max-client-batch-size",
        "4",
        "--max-body-bytes",
        "2000",
        "--max-input-length",
        "8",
        "--no-truncate",
    ]);
    let json = "application/json";
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, Vec<u8>)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/classify",
            Some((json, b"{not json".to_vec())),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/classify",
            Some((json, br#"{"inputs": 3}"#.to_vec())),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/classify",
            Some((json, br#"{"texts": ["a"]}"#.to_vec())),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/classify",
            Some((json, b"{\"inputs\": \"\xff\xfe\"}".to_vec())),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/classify",
            Some(("text/plain", br#"{"inputs": "a"}"#.to_vec())),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/classify",
            Some((json, br#"{"inputs": []}"#.to_vec())),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/classify",
            Some((json, br#"{"inputs": ["a", "  "]}"#.to_vec())),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/classify",
            Some((json, br#"{"inputs": ["a","b","c","d","e"]}"#.to_vec())),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/v1/classify",
            Some((
                json,
                format!(r#"{{"inputs": "{}"}}"#, "a ".repeat(1500)).into_bytes(),
            )),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/v1/classify",
            Some((
                json,
                br#"{"inputs": "hello world river bread dog fox not the"}"#.to_vec(),
            )),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/v1/embed",
            Some((json, br#"{"inputs": "a", "pooling": "median"}"#.to_vec())),
            422,
            "invalid_input",
        ),
        ("GET", "/v1/nothing", None, 404, "not_found"),
        ("DELETE", "/v1/classify", None, 405, "method_not_allowed"),
        ("GET", "/v1/classify", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, status, kind) in cases {
        let r = s.call(
            method,
            path,
            body.as_ref().map(|(c, b)| (*c, b.as_slice())),
            None,
        );
        assert_eq!(
            (r.status, r.error_type()),
            (status, kind.to_string()),
            "{method} {path}: {}",
            r.body
        );
        assert!(!r.json()["error"].as_str().unwrap().is_empty());
    }
    let fine = s.post("/v1/classify", serde_json::json!({"inputs": "hello world"}));
    assert_eq!(fine.status, 200);
}

#[test]
fn api_key_guards_every_route_but_health_ready_metrics() {
    let model = fixture("bert-seqcls");
    let s = Server::start(&[model.to_str().unwrap(), "--api-key", "s3cret"]);
    let body = br#"{"inputs": "hello"}"#;
    let r = s.call(
        "POST",
        "/v1/classify",
        Some(("application/json", body)),
        None,
    );
    assert_eq!((r.status, r.error_type().as_str()), (401, "unauthorized"));
    let r = s.call(
        "POST",
        "/v1/classify",
        Some(("application/json", body)),
        Some("wrong"),
    );
    assert_eq!(r.status, 401);
    let r = s.call(
        "POST",
        "/v1/classify",
        Some(("application/json", body)),
        Some("s3cret"),
    );
    assert_eq!(r.status, 200);
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(s.call("GET", open, None, None).status, 200, "{open}");
    }
    assert_eq!(s.call("GET", "/v1/models", None, None).status, 401);
    let r = s.call("POST", "/admin/reload", None, Some("s3cret"));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Threads firing requests, and the counts of answers: ok, refused, and the bodies
/// of refusals.
type Load = (
    Vec<std::thread::JoinHandle<()>>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
);

/// Fires `n` threads of requests until `stop`; counts statuses.
fn load(s: &Arc<Server>, n: usize, stop: Arc<AtomicBool>, body: serde_json::Value) -> Load {
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles = (0..n)
        .map(|_| {
            let (s, stop, ok, bad, errors, body) = (
                s.clone(),
                stop.clone(),
                ok.clone(),
                bad.clone(),
                errors.clone(),
                body.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = s.post("/v1/classify", body.clone());
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{} retry-after={:?}", r.body, r.retry_after));
                    }
                }
            })
        })
        .collect();
    (handles, ok, bad, errors)
}

#[test]
fn concurrent_clients_get_the_unbatched_answers() {
    let model = fixture("bert-seqcls");
    let s = Arc::new(Server::start(&[model.to_str().unwrap()]));
    let want: Vec<serde_json::Value> = TEXTS
        .iter()
        .map(|t| cli("classify", &model, &[t], &[])[0].clone())
        .collect();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (s, want) = (s.clone(), want.clone());
            std::thread::spawn(move || {
                for k in 0..10 {
                    let t = (i + k) % TEXTS.len();
                    let got = s.post("/v1/classify", serde_json::json!({"inputs": [TEXTS[t]]}));
                    assert_eq!(got.status, 200);
                    assert!(max_diff(&got.json()[0], &want[t]) < 1e-5);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let metrics = s.call("GET", "/metrics", None, None).body;
    assert!(
        metrics.contains("slimformer_requests_total{route=\"/v1/classify\",status=\"200\"} 160"),
        "{metrics}"
    );
}

#[test]
fn overload_gets_429_with_retry_after() {
    let model = fixture("bert-seqcls");
    let s = Arc::new(Server::start(&[
        model.to_str().unwrap(),
        "--max-concurrent-requests",
        "1",
    ]));
    let long: Vec<String> = (0..32)
        .map(|i| format!("the dog and the fox {i} ").repeat(6))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, ok, _bad, errors) =
        load(&s, 16, stop.clone(), serde_json::json!({"inputs": long}));
    let started = Instant::now();
    while errors.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(!errors.is_empty(), "no request was refused");
    assert!(
        errors.iter().all(|e| e.contains("\"type\":\"overloaded\"")),
        "{errors:?}"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert!(
        errors
            .iter()
            .all(|e| e.ends_with("retry-after=Some(\"1\")")),
        "{errors:?}"
    );
}

pub(crate) fn registry_with(dir: &Path, versions: &[(&str, &Path)]) {
    for (name, src) in versions {
        let dest = dir.join("versions").join(name);
        std::fs::create_dir_all(&dest).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dest.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
}

pub(crate) fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn hot_reload_under_load_and_a_broken_version_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path();
    registry_with(
        reg,
        &[
            ("v1", &fixture("bert-seqcls")),
            ("v2", &fixture("distilbert-seqcls")),
            ("v3", &fixture("bert-seqcls")),
        ],
    );
    // v3 is broken: its weights are cut short.
    let weights = reg.join("versions/v3/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();

    // No production version yet: not ready.
    let s = Arc::new(Server::start(&[
        "--registry",
        reg.to_str().unwrap(),
        "--poll-seconds",
        "0.1",
    ]));
    assert_eq!(s.call("GET", "/ready", None, None).status, 503);
    let r = s.post("/v1/classify", serde_json::json!({"inputs": "hello"}));
    assert_eq!((r.status, r.error_type().as_str()), (503, "not_ready"));
    std::fs::write(reg.join("PRODUCTION"), "v1\n").unwrap();
    assert!(wait_for(
        || s.call("GET", "/ready", None, None).status == 200
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let (handles, ok, bad, errors) =
        load(&s, 8, stop.clone(), serde_json::json!({"inputs": TEXTS}));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(reg.join("PRODUCTION.tmp"), "v2\n").unwrap();
    std::fs::rename(reg.join("PRODUCTION.tmp"), reg.join("PRODUCTION")).unwrap();
    let version =
        |s: &Server| s.call("GET", "/v1/models", None, None).json()["data"][0]["version"].clone();
    assert!(wait_for(|| version(&s) == "v2"));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(reg.join("PRODUCTION"), "v3\n").unwrap();
    assert!(wait_for(|| s
        .call("GET", "/metrics", None, None)
        .body
        .contains("slimformer_reload_failures_total 1")));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "{:?}",
        errors.lock().unwrap()
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(version(&s), "v2", "the broken v3 must not replace v2");
    assert!(s
        .call("GET", "/metrics", None, None)
        .body
        .contains("version=\"v2\""));
}

/// A reload lets the version it replaces go, the one loaded at the start included:
/// the server holds one version per model once the old one's requests are answered.
#[test]
fn a_replaced_version_leaves_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path();
    registry_with(
        reg,
        &[
            ("v1", &fixture("bert-seqcls")),
            ("v2", &fixture("distilbert-seqcls")),
        ],
    );
    std::fs::write(reg.join("PRODUCTION"), "v1\n").unwrap();
    let s = Server::start(&["--registry", reg.to_str().unwrap(), "--poll-seconds", "0.1"]);
    let in_memory = |s: &Server| {
        let body = s.call("GET", "/metrics", None, None).body;
        body.lines()
            .find_map(|l| l.strip_prefix("slimformer_model_versions_in_memory "))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(in_memory(&s).as_deref(), Some("1"));
    let version =
        |s: &Server| s.call("GET", "/v1/models", None, None).json()["data"][0]["version"].clone();
    for next in ["v2", "v1", "v2"] {
        std::fs::write(reg.join("PRODUCTION.tmp"), format!("{next}\n")).unwrap();
        std::fs::rename(reg.join("PRODUCTION.tmp"), reg.join("PRODUCTION")).unwrap();
        assert!(wait_for(|| version(&s) == next));
        let r = s.post("/v1/classify", serde_json::json!({"inputs": "hello"}));
        assert_eq!(r.status, 200);
        assert!(
            wait_for(|| in_memory(&s).as_deref() == Some("1")),
            "after the switch to {next}: {:?} versions in memory",
            in_memory(&s)
        );
    }
}

/// One request on `stream`, kept open (HTTP/1.1 keep-alive); the answer's body length.
fn post_kept_alive(stream: &mut std::net::TcpStream, path: &str, body: &str) -> usize {
    use std::io::{Read, Write};
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = Some(v.trim().parse::<usize>().unwrap());
        }
    }
    let length = length.expect("a Content-Length header");
    let mut answer = vec![0u8; length];
    reader.read_exact(&mut answer).unwrap();
    length
}

/// What the allocator has handed out, from /metrics.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use(s: &Server) -> usize {
    let body = s.call("GET", "/metrics", None, None).body;
    body.lines()
        .find_map(|l| l.strip_prefix("slimformer_heap_in_use_bytes "))
        .expect("the heap gauge")
        .trim()
        .parse()
        .unwrap()
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn kept_alive_connections_hold_no_copy_of_their_answers() {
    let model = fixture("bert-seqcls");
    let s = Server::start(&[model.to_str().unwrap()]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let texts: Vec<String> = (0..32)
        .map(|i| format!("the dog and the fox {i} ").repeat(20))
        .collect();
    let body = serde_json::json!({"inputs": texts, "truncate": true}).to_string();
    // Once on its own, so that what the first request builds is there before measuring.
    post_kept_alive(
        &mut std::net::TcpStream::connect(&addr).unwrap(),
        "/embed_all",
        &body,
    );
    let before = heap_in_use(&s);
    let mut connections: Vec<_> = (0..16)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let answered: usize = connections
        .iter_mut()
        .map(|c| post_kept_alive(c, "/embed_all", &body))
        .sum();
    // The lowest of a few readings: the last answer's own buffers may still be on their
    // way out when its final byte arrives.
    let after = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            heap_in_use(&s)
        })
        .min()
        .unwrap();
    assert!(answered > 8 << 20, "answers of {answered} bytes");
    // Copied into each connection's write buffer, they would all still be there (at
    // least the bytes sent: 12.1 MB of 11.5 MB in a build that copied them).
    assert!(
        after < before + answered / 2,
        "16 open connections hold {} of the {answered} bytes they were sent",
        after.saturating_sub(before)
    );
    drop(connections);
}

#[test]
fn graceful_shutdown_answers_requests_in_flight() {
    let model = fixture("bert-seqcls");
    let s = Arc::new(Server::start(&[model.to_str().unwrap()]));
    let base = s.base.clone();
    let long: Vec<String> = (0..32)
        .map(|i| format!("the dog and the fox {i} ").repeat(6))
        .collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (base, answered, failed, long) =
                (base.clone(), answered.clone(), failed.clone(), long.clone());
            std::thread::spawn(move || {
                for _ in 0..20 {
                    match ureq::post(&format!("{base}/v1/classify"))
                        .set("Content-Type", "application/json")
                        .send_string(&serde_json::json!({"inputs": long}).to_string())
                    {
                        Ok(_) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        // After shutdown new connections are refused: expected.
                        Err(ureq::Error::Transport(_)) => break,
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    assert!(wait_for(|| answered.load(Ordering::Relaxed) >= 8));
    let server = Arc::try_unwrap(s).ok();
    let status = match server {
        Some(server) => server.stop(),
        None => panic!("server still shared"),
    };
    for h in handles {
        h.join().unwrap();
    }
    assert!(status.success(), "{status:?}");
    assert!(
        failed.lock().unwrap().is_empty(),
        "{:?}",
        failed.lock().unwrap()
    );
}

#[test]
fn a_request_past_the_timeout_gets_504_and_sighup_reloads() {
    let model = fixture("bert-seqcls");
    let s = Server::start(&[model.to_str().unwrap(), "--request-timeout", "0.000001"]);
    let r = s.post("/v1/classify", serde_json::json!({"inputs": TEXTS}));
    assert_eq!((r.status, r.error_type().as_str()), (504, "timeout"));
    let reloads = |s: &Server| {
        s.call("GET", "/metrics", None, None)
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix("slimformer_reloads_total ")
                    .map(|v| v.parse::<u64>().unwrap())
            })
            .unwrap()
    };
    assert_eq!(reloads(&s), 1);
    let _ = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status();
    assert!(wait_for(|| reloads(&s) == 2));
    assert_eq!(s.call("GET", "/ready", None, None).status, 200);
}

#[test]
fn probe_exits_zero_only_on_a_200() {
    let model = fixture("bert-seqcls");
    let s = Server::start(&[model.to_str().unwrap()]);
    let probe = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_slimformer"))
            .args(["probe", url, "--timeout", "5"])
            .output()
            .unwrap()
    };
    let ready = probe(&s.url("/ready"));
    assert!(ready.status.success(), "{ready:?}");
    let missing = probe(&s.url("/no-such-route"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered 404"));
    // The port of a server that has stopped: nothing listens there any more.
    let url = s.url("/ready");
    assert!(s.stop().success());
    let refused = probe(&url);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot connect"));
}

#[test]
fn json_logs_are_one_object_per_line_on_stdout() {
    let model = fixture("bert-seqcls");
    let mut child = Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(["serve", "--port", "0", model.to_str().unwrap()])
        .env("SLIMFORMER_LOG_FORMAT", "json")
        .env_remove("SLIMFORMER_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let base = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "stdout ended: {lines:?}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        lines.push(v.clone());
        if let Some(addr) = v["listening"].as_str() {
            break format!("http://{addr}");
        }
    };
    let reply = ureq::post(&format!("{base}/v1/classify"))
        .send_json(serde_json::json!({"inputs": "hello world"}))
        .unwrap();
    assert_eq!(reply.status(), 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for line in stdout.lines() {
        let line = line.unwrap();
        lines.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")));
    }
    assert!(child.wait().unwrap().success());
    let events: Vec<_> = lines.iter().filter(|v| v.get("level").is_some()).collect();
    assert!(events.iter().all(|v| v["timestamp"].is_string()));
    assert!(
        events
            .iter()
            .any(|v| v.to_string().contains("/v1/classify")),
        "no request line among {lines:?}"
    );
}

/// A copy of the `bert-base` fixture with sentence-transformers prompts.
fn model_with_prompts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("bert-base")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null}"#,
    )
    .unwrap();
    dir
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn unit(v: &[f64]) -> Vec<f64> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[test]
fn matryoshka_dimensions_base64_and_prompts() {
    let model = model_with_prompts();
    let dir = model.path().to_str().unwrap();
    let s = Server::start(&[dir]);
    let embed = |body: serde_json::Value| floats(&s.post("/v1/embed", body).json()[0]["embedding"]);
    let full = embed(serde_json::json!({"inputs": "a river", "normalize": false}));
    assert_eq!(full.len(), 32);
    let first8 = &full[..8];
    let cut = embed(serde_json::json!({"inputs": "a river", "normalize": false, "dimensions": 8}));
    assert!(close(&cut, first8), "{cut:?} vs {first8:?}");
    // Truncated first, normalized after, on every embedding route.
    let cut_unit =
        embed(serde_json::json!({"inputs": "a river", "normalize": true, "dimensions": 8}));
    assert!(close(&cut_unit, &unit(first8)));
    let tei = s.post(
        "/embed",
        serde_json::json!({"inputs": "a river", "dimensions": 8}),
    );
    assert!(close(&floats(&tei.json()[0]), &unit(first8)));
    let openai = s
        .post(
            "/v1/embeddings",
            serde_json::json!({"input": "a river", "dimensions": 8}),
        )
        .json();
    let vector = floats(&openai["data"][0]["embedding"]);
    assert!(close(&vector, &unit(first8)));
    // OpenAI's vectors are unit length without `dimensions` too.
    let whole = s
        .post("/v1/embeddings", serde_json::json!({"input": "a river"}))
        .json();
    assert!(close(&floats(&whole["data"][0]["embedding"]), &unit(&full)));
    // usage counts the input's tokens, special tokens included.
    let ids = &cli("encode", model.path(), &["a river"], &[])[0]["ids"];
    let n = ids.as_array().unwrap().len() as u64;
    assert_eq!(openai["usage"]["prompt_tokens"], n);
    assert_eq!(openai["usage"]["total_tokens"], n);

    // base64: the same float32 values, little-endian.
    let b64 = s
        .post(
            "/v1/embeddings",
            serde_json::json!({"input": "a river", "dimensions": 8, "encoding_format": "base64"}),
        )
        .json();
    let bytes = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap())
            .unwrap()
    };
    let decoded: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect();
    let as_f32: Vec<f64> = vector.iter().map(|&v| v as f32 as f64).collect();
    assert_eq!(decoded, as_f32);

    // Prompts: named, given, or unknown; the answer shows the text as sent.
    let plain_query = embed(serde_json::json!({"inputs": "query: a river"}));
    let named = s
        .post(
            "/v1/embed",
            serde_json::json!({"inputs": "a river", "prompt_name": "query"}),
        )
        .json();
    assert_eq!(named[0]["text"], "a river");
    assert!(close(&floats(&named[0]["embedding"]), &plain_query));
    let given = embed(serde_json::json!({"inputs": "a river", "prompt": "query: "}));
    assert!(close(&given, &plain_query));
    let tei_named = s.post(
        "/embed",
        serde_json::json!({"inputs": "a river", "prompt_name": "query", "normalize": false}),
    );
    assert!(close(&floats(&tei_named.json()[0]), &plain_query));

    // Bad values: 422 with the field named.
    for (route, body, says) in [
        (
            "/v1/embed",
            serde_json::json!({"inputs": "x", "dimensions": 0}),
            "dimensions 0: must be between 1 and 32",
        ),
        (
            "/embed",
            serde_json::json!({"inputs": "x", "dimensions": 33}),
            "dimensions 33: must be between 1 and 32",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"input": "x", "dimensions": 64}),
            "must be between 1 and 32",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"input": "x", "encoding_format": "hex"}),
            "is not supported: \\\"float\\\" or \\\"base64\\\"",
        ),
        (
            "/v1/embed",
            serde_json::json!({"inputs": "x", "prompt_name": "nope"}),
            "prompt_name \\\"nope\\\": not among the model's prompts: passage, query",
        ),
        (
            "/v1/embed",
            serde_json::json!({"inputs": "", "prompt_name": "query"}),
            "input 0 is empty",
        ),
    ] {
        let reply = s.post(route, body);
        assert_eq!(reply.status, 422, "{route}: {}", reply.body);
        assert!(reply.body.contains(says), "{route}: {}", reply.body);
    }
    assert!(s.stop().success());

    // The command line: the same truncation and prompts, the same errors by flag.
    let cli_cut = &cli("embed", model.path(), &["a river"], &["--dimensions", "8"])[0];
    assert!(close(&floats(&cli_cut["embedding"]), first8));
    let cli_query = &cli(
        "embed",
        model.path(),
        &["a river"],
        &["--prompt-name", "query"],
    )[0];
    assert_eq!(cli_query["text"], "a river");
    assert!(close(&floats(&cli_query["embedding"]), &plain_query));
    for (flags, says) in [
        (
            &["--dimensions", "0"][..],
            "--dimensions 0: must be between 1 and 32",
        ),
        (
            &["--prompt-name", "nope"][..],
            "--prompt-name \"nope\": not among the model's prompts",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_slimformer"))
            .args(["embed", dir, "--text", "a river"])
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }

    // A server default prompt applies when a request names none; one the model
    // lacks stops the server at start.
    let s = Server::start(&[dir, "--default-prompt-name", "query"]);
    let defaulted = floats(
        &s.post("/v1/embed", serde_json::json!({"inputs": "a river"}))
            .json()[0]["embedding"],
    );
    assert!(close(&defaulted, &plain_query));
    assert!(s.stop().success());
    let out = Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(["serve", "--port", "0", dir, "--default-prompt-name", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt_name \"nope\""));
}

#[test]
fn rerank_routes_rank_as_the_command_line_does() {
    let model = fixture("roberta-rerank");
    let s = Server::start(&[model.to_str().unwrap()]);
    let docs = [
        "a river",
        "the dog and the fox",
        "bread",
        "river banks flood",
    ];
    let cli_ranked = cli("rerank", &model, &docs, &["--query", "rivers"]);
    let tei = s
        .post(
            "/rerank",
            serde_json::json!({"query": "rivers", "texts": docs, "return_text": true}),
        )
        .json();
    assert_eq!(tei.as_array().unwrap().len(), docs.len());
    for (hit, want) in tei.as_array().unwrap().iter().zip(&cli_ranked) {
        assert_eq!(hit["index"], want["index"]);
        assert_eq!(hit["text"], want["text"]);
        assert!((hit["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs() < 1e-5);
    }
    let plain = s
        .post(
            "/rerank",
            serde_json::json!({"query": "rivers", "texts": docs}),
        )
        .json();
    assert!(plain[0].get("text").is_none(), "text only with return_text");
    let raw = s
        .post(
            "/rerank",
            serde_json::json!({"query": "rivers", "texts": ["a river"], "raw_scores": true}),
        )
        .json();
    let cli_raw = cli(
        "rerank",
        &model,
        &["a river"],
        &["--query", "rivers", "--raw-scores"],
    );
    assert!(
        (raw[0]["score"].as_f64().unwrap() - cli_raw[0]["score"].as_f64().unwrap()).abs() < 1e-5
    );

    let cohere = s
        .post(
            "/v1/rerank",
            serde_json::json!({"model": "reranker", "query": "rivers",
                "documents": ["a river", {"text": "the dog and the fox"}, "bread", "river banks flood"],
                "top_n": 2, "return_documents": true}),
        )
        .json();
    assert_eq!(cohere["model"], "reranker");
    let results = cohere["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (hit, want) in results.iter().zip(&cli_ranked) {
        assert_eq!(hit["index"], want["index"]);
        assert_eq!(hit["document"]["text"], want["text"]);
        assert!(
            (hit["relevance_score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs()
                < 1e-5
        );
    }
    assert!(cohere["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // A top_n above the number of documents gives them all, as Cohere's API does.
    let all = s.post(
        "/v1/rerank",
        serde_json::json!({"query": "rivers", "documents": ["a river", "bread"], "top_n": 5}),
    );
    assert_eq!(
        all.json()["results"].as_array().unwrap().len(),
        2,
        "{}",
        all.body
    );
    let models = s.call("GET", "/v1/models", None, None).json();
    assert_eq!(models["data"][0]["rerank"], "cross-encoder");

    for (route, body, status, says) in [
        (
            "/rerank",
            serde_json::json!({"query": " ", "texts": ["d"]}),
            422,
            "the query is empty",
        ),
        (
            "/rerank",
            serde_json::json!({"query": "q", "texts": []}),
            422,
            "no documents",
        ),
        (
            "/rerank",
            serde_json::json!({"query": "q", "texts": ["d", ""]}),
            422,
            "input 1 is empty",
        ),
        (
            "/v1/rerank",
            serde_json::json!({"query": "q", "documents": ["d"], "top_n": 0}),
            422,
            "top_n must be at least 1",
        ),
        (
            "/v1/rerank",
            serde_json::json!({"query": "q"}),
            400,
            "missing field `documents`",
        ),
    ] {
        let reply = s.post(route, body);
        assert_eq!(reply.status, status, "{route}: {}", reply.body);
        assert!(reply.body.contains(says), "{route}: {}", reply.body);
    }
    assert!(s.stop().success());

    // A three-label classifier is no cross-encoder; a model without one ranks by cosine.
    let s = Server::start(&[fixture("bert-seqcls").to_str().unwrap()]);
    let reply = s.post("/rerank", serde_json::json!({"query": "q", "texts": ["d"]}));
    assert_eq!(reply.error_type(), "unsupported_task", "{}", reply.body);
    assert!(reply.body.contains("this classifier has 3"));
    assert!(s.stop().success());
    let base = fixture("bert-base");
    let s = Server::start(&[base.to_str().unwrap()]);
    assert_eq!(
        s.call("GET", "/v1/models", None, None).json()["data"][0]["rerank"],
        "embedding-cosine"
    );
    let served = s
        .post(
            "/rerank",
            serde_json::json!({"query": "rivers", "texts": docs}),
        )
        .json();
    let cli_cosine = cli("rerank", &base, &docs, &["--query", "rivers"]);
    for (hit, want) in served.as_array().unwrap().iter().zip(&cli_cosine) {
        assert_eq!(hit["index"], want["index"]);
        assert!((hit["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs() < 1e-5);
    }
    assert!(s.stop().success());
}

#[test]
fn tei_flag_names_and_info() {
    let reranker = fixture("bert-regression");
    // A TEI command line runs unchanged.
    let s = Server::start(&[
        "--model-id",
        reranker.to_str().unwrap(),
        "--hostname",
        "127.0.0.1",
        "--payload-limit",
        "2000",
        "--auto-truncate",
    ]);
    let info = s.call("GET", "/info", None, None).json();
    assert_eq!(info["model_id"], "bert-regression");
    assert_eq!(info["model_dtype"], "float32");
    assert_eq!(info["model_type"]["reranker"]["id2label"]["0"], "LABEL_0");
    assert_eq!(info["rerank"], "cross-encoder");
    assert_eq!(info["max_batch_tokens"], 16384);
    assert_eq!(info["max_client_batch_size"], 32);
    assert_eq!(info["auto_truncate"], true);
    assert!(info["max_input_length"].as_u64().unwrap() > 0);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let big = "word ".repeat(1000);
    let reply = s.post("/embed", serde_json::json!({"inputs": big}));
    assert_eq!(
        reply.status, 413,
        "--payload-limit is the body limit: {}",
        reply.body
    );
    assert!(s.stop().success());

    for (name, kind, key, value) in [
        (
            "bert-base",
            "embedding",
            "pooling",
            serde_json::json!("mean"),
        ),
        (
            "bert-seqcls",
            "classifier",
            "id2label",
            serde_json::json!({"0": "negative", "1": "neutral", "2": "positive"}),
        ),
    ] {
        let s = Server::start(&[fixture(name).to_str().unwrap()]);
        let info = s.call("GET", "/info", None, None).json();
        assert_eq!(info["model_type"][kind][key], value, "{name}: {info}");
        assert!(s.stop().success());
    }
}
