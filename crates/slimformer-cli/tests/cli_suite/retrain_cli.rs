//! `slimformer retrain` and `slimformer registry` as a user runs them: a good candidate
//! promoted (and served), a worse one rejected, corrupt data quarantined, rollback,
//! and a kill -9 in the middle of a run leaving the registry consistent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const WORDS: [[&str; 3]; 3] = [
    ["hello", "world", "bridge"],
    ["dog", "fox", "not"],
    ["river", "bread", "mountains"],
];
const LABELS: [&str; 3] = ["negative", "neutral", "positive"];

// Margins measured over 16 seeds of the base fine-tune and of retrain, with both
// dropout mask generators: 24 steps at 2e-3 on a clean batch of 54 cost at most 0.11
// of holdout accuracy (27 rows: one row is 0.037), while rotated labels cost 0.37 or
// more. Smaller batches, fewer steps or a tighter tolerance made the outcome depend
// on the seed (12 steps at 1e-3 on 27 rows left half the seeds' models unchanged).
const TOLERANCE: f64 = 0.15;
const BATCH: usize = 54;

/// Texts whose words give their label; `shuffle` assigns the labels wrongly.
fn labelled(path: &Path, n: usize, seed: usize, shuffle: bool) {
    let mut csv = String::from("text,label\n");
    for i in 0..n {
        let k = i % 3;
        let w = WORDS[k];
        let text = format!(
            "the {} {} {}",
            w[(i + seed) % 3],
            w[(i / 3 + seed) % 3],
            w[(i / 9) % 3]
        );
        let label = if shuffle {
            LABELS[(k + 1) % 3]
        } else {
            LABELS[k]
        };
        csv.push_str(&format!("\"{text}\",{label}\n"));
    }
    std::fs::write(path, csv).unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Setup {
    /// A registry whose production model already fits the task (100% on the holdout).
    fn new(tolerance: f64) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        labelled(&root.join("holdout.csv"), 27, 0, false);
        labelled(&root.join("base.csv"), 27, 1, false);
        let base = root.join("base-model");
        ok(slimformer(&[
            "finetune",
            fixture("bert-seqcls").to_str().unwrap(),
            "--train",
            root.join("base.csv").to_str().unwrap(),
            "--dev",
            root.join("holdout.csv").to_str().unwrap(),
            "--max-steps",
            "60",
            "--batch",
            "9",
            "--lr",
            "3e-3",
            "--eval-every",
            "60",
            "--out",
            base.to_str().unwrap(),
        ]));
        let reg = root.join("registry");
        ok(slimformer(&[
            "registry",
            "init",
            reg.to_str().unwrap(),
            "--model",
            base.to_str().unwrap(),
        ]));
        std::fs::create_dir_all(root.join("inbox")).unwrap();
        let config = root.join("retrain.toml");
        std::fs::write(
            &config,
            format!(
                "registry = \"{r}/registry\"\ninbox = \"{r}/inbox\"\nholdout = \"{r}/holdout.csv\"\n\
                 interval_seconds = 0.5\nmax_steps = 24\nbatch = 9\nlr = 2e-3\ntolerance = {tolerance}\nmax_len = 32\n",
                r = root.display()
            ),
        )
        .unwrap();
        Setup {
            _tmp: tmp,
            root,
            config,
        }
    }

    fn reg(&self) -> String {
        self.root.join("registry").to_string_lossy().into_owned()
    }

    fn once(&self) -> serde_json::Value {
        let out = ok(slimformer(&[
            "retrain",
            "--config",
            self.config.to_str().unwrap(),
            "--once",
        ]));
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    }

    fn production(&self) -> String {
        std::fs::read_to_string(self.root.join("registry/PRODUCTION"))
            .unwrap()
            .trim()
            .to_string()
    }
}

#[test]
fn good_data_is_promoted_bad_data_rejected_corrupt_data_quarantined() {
    let s = Setup::new(TOLERANCE);
    // Nothing new: skipped.
    assert_eq!(s.once()["outcome"], "skipped");

    // Clean new data: promoted.
    labelled(&s.root.join("inbox/batch1.csv"), BATCH, 2, false);
    let run = s.once();
    assert_eq!(run["outcome"], "promoted", "{run}");
    assert_eq!(run["candidate"], "v2");
    assert_eq!(s.production(), "v2");
    assert!(s.root.join("inbox/processed").read_dir().unwrap().count() == 1);

    // Shuffled labels and a corrupt file: rejected, quarantined, production stays.
    labelled(&s.root.join("inbox/batch2.csv"), BATCH, 3, true);
    std::fs::write(
        s.root.join("inbox/broken.csv"),
        "words,nothing\n\"unterminated\n",
    )
    .unwrap();
    let run = s.once();
    assert_eq!(run["outcome"], "rejected", "{run}");
    assert_eq!(s.production(), "v2");
    assert_eq!(run["quarantined"].as_array().unwrap().len(), 1, "{run}");
    assert!(run["quarantined"][0]["error"]
        .as_str()
        .unwrap()
        .contains("broken.csv"));
    assert_eq!(
        s.root.join("inbox/quarantine").read_dir().unwrap().count(),
        1
    );

    let list: serde_json::Value =
        serde_json::from_str(&ok(slimformer(&["registry", "list", &s.reg(), "--json"]))).unwrap();
    let status: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        status,
        vec![
            ("v1".into(), "retired".into()),
            ("v2".into(), "production".into()),
            ("v3".into(), "rejected".into())
        ]
    );
    let err = slimformer(&["registry", "promote", &s.reg(), "v3"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("rejected"));

    // A model trained elsewhere comes in as a candidate, promoted by hand.
    let model = crate::common::fixture("bert-seqcls");
    let added: serde_json::Value = serde_json::from_str(&ok(slimformer(&[
        "registry",
        "add",
        &s.reg(),
        "--model",
        model.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(added["added"], "v4");
    let err = slimformer(&["registry", "add", &s.reg(), "--model", &s.reg()]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("config.json: missing"));
    let err = slimformer(&[
        "registry",
        "add",
        &s.reg(),
        "--model",
        model.to_str().unwrap(),
        "--version",
        "v4",
    ]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("a version of that name exists"));

    // Rollback, and the history of runs.
    ok(slimformer(&["registry", "rollback", &s.reg()]));
    assert_eq!(s.production(), "v1");
    let history: serde_json::Value = serde_json::from_str(&ok(slimformer(&[
        "registry",
        "history",
        &s.reg(),
        "--json",
    ])))
    .unwrap();
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["skipped", "promoted", "rejected"]);
}

#[test]
fn a_kill_during_a_run_leaves_the_registry_consistent() {
    let s = Setup::new(TOLERANCE);
    labelled(&s.root.join("inbox/batch1.csv"), BATCH, 2, false);
    let mut child = Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(["retrain", "--config", s.config.to_str().unwrap(), "--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed while the candidate is being built.
    let staging = s.root.join("registry/.staging");
    let started = Instant::now();
    while !staging.exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s.production(), "v1");
    // The next run cleans up, takes the lock over, and completes.
    let run = s.once();
    assert_eq!(run["outcome"], "promoted", "{run}");
    assert_eq!(s.production(), "v2");
    assert!(!staging.exists());
}

#[test]
fn serving_with_scheduled_retraining_swaps_with_no_failed_request() {
    let s = Setup::new(TOLERANCE);
    let mut server = Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args([
            "serve",
            "--registry",
            &s.reg(),
            "--port",
            "0",
            "--poll-seconds",
            "0.1",
        ])
        .arg("--retrain-config")
        .arg(&s.config)
        .env("SLIMFORMER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: serde_json::Value = serde_json::from_str(&line).unwrap();
    let base = format!("http://{}", addr["listening"].as_str().unwrap());
    let version = || -> String {
        let v: serde_json::Value = ureq::get(&format!("{base}/v1/models"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        v["data"][0]["version"].as_str().unwrap().to_string()
    };
    assert_eq!(version(), "v1");
    // Clients keep asking while new data arrives and the service retrains itself.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (base, stop, failures, answered) = (
                base.clone(),
                stop.clone(),
                failures.clone(),
                answered.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = ureq::post(&format!("{base}/v1/classify"))
                        .set("Content-Type", "application/json")
                        .send_string(r#"{"inputs": ["the dog fox", "hello world"]}"#);
                    match r {
                        Ok(_) => answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    labelled(&s.root.join("inbox/batch1.csv"), BATCH, 2, false);
    let started = Instant::now();
    while version() != "v2" && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(version(), "v2");
    assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(answered.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("slimformer_retrain_last_outcome{outcome=\"promoted\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("slimformer_retrain_holdout_accuracy{model=\"candidate\"}"));
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    assert!(server.wait().unwrap().success());
}

#[test]
fn a_write_that_fails_part_way_leaves_the_old_state() {
    let s = Setup::new(TOLERANCE);
    labelled(&s.root.join("inbox/batch1.csv"), BATCH, 2, false);
    // No file may grow past 16 KiB: the candidate's weights cannot be written.
    let failed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -f 16; exec '{}' retrain --config '{}' --once",
            env!("CARGO_BIN_EXE_slimformer"),
            s.config.display()
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&failed.stdout);
    assert!(
        !failed.status.success() || said.contains("\"outcome\":\"failed\""),
        "{said}"
    );
    assert_eq!(s.production(), "v1");
    let list: serde_json::Value =
        serde_json::from_str(&ok(slimformer(&["registry", "list", &s.reg(), "--json"]))).unwrap();
    assert_eq!(list[0]["status"], "production");
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["name"] == "v1" || v["status"] != "production"));
    // The same data is still in the inbox and the next run completes.
    let run = s.once();
    assert_eq!(run["outcome"], "promoted", "{run}");
    assert_eq!(s.production(), "v2");
}

#[test]
fn a_crash_at_each_step_of_a_retrain_or_promotion_leaves_a_consistent_registry() {
    for step in [
        "candidate-trained",
        "version-moved",
        "version-recorded",
        "pointer-written",
    ] {
        let s = Setup::new(TOLERANCE);
        labelled(&s.root.join("inbox/batch1.csv"), BATCH, 2, false);
        let crashed = Command::new(env!("CARGO_BIN_EXE_slimformer"))
            .args(["retrain", "--config", s.config.to_str().unwrap(), "--once"])
            .env("SLIMFORMER_FAULT", step)
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{step}: the fault did not fire");
        // Whatever the step, the registry opens consistent: one production version,
        // the one the pointer names, and it is a version that passed the gate or v1.
        let list: serde_json::Value =
            serde_json::from_str(&ok(slimformer(&["registry", "list", &s.reg(), "--json"])))
                .unwrap();
        let production: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["status"] == "production")
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(production, vec![s.production().as_str()], "{step}: {list}");
        let expected = if step == "pointer-written" {
            "v2"
        } else {
            "v1"
        };
        assert_eq!(s.production(), expected, "{step}");
        // And the next run completes.
        let run = s.once();
        let outcome = run["outcome"].as_str().unwrap();
        if step == "pointer-written" {
            // The data was already taken into the promoted version: nothing new to learn.
            assert_eq!(outcome, "skipped", "{step}: {run}");
        } else {
            // Either retrained from the data, or (version-recorded) the recorded
            // candidate gated now.
            assert_eq!(outcome, "promoted", "{step}: {run}");
        }
        assert!(!s.root.join("registry/.staging").exists(), "{step}");
    }
}

#[test]
fn a_quantized_candidate_is_what_gets_scored_and_served() {
    let s = Setup::new(TOLERANCE);
    let text = std::fs::read_to_string(&s.config).unwrap() + "quantize = \"int8\"\n";
    std::fs::write(&s.config, text).unwrap();
    labelled(&s.root.join("inbox/batch1.csv"), BATCH, 2, false);
    let run = s.once();
    assert_eq!(run["outcome"], "promoted", "{run}");
    let inspect = ok(slimformer(&[
        "inspect",
        s.root.join("registry/versions/v2").to_str().unwrap(),
    ]));
    assert!(inspect.contains("int8 weights"), "{inspect}");
}

#[test]
fn a_candidate_can_be_distilled_before_the_gate() {
    let s = Setup::new(0.5);
    let text = std::fs::read_to_string(&s.config).unwrap() + "distill_layers = 1\n";
    std::fs::write(&s.config, text).unwrap();
    labelled(&s.root.join("inbox/batch1.csv"), BATCH, 2, false);
    let run = s.once();
    assert!(run["candidate_score"].is_number(), "{run}");
    let inspect = ok(slimformer(&[
        "inspect",
        s.root.join("registry/versions/v2").to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["family"], "distilbert");
    assert_eq!(v["config"]["n_layers"], 1);
}
