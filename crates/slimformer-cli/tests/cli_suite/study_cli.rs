//! `slimformer study` on micro models and a few dozen texts: every file, numbers equal
//! to the individual commands', and a resume after a kill that skips finished stages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn slimformer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slimformer"))
}

fn write_inputs(dir: &Path) -> PathBuf {
    let subj = ["the cat", "a dog", "the bird", "my friend", "the teacher"];
    let verb = ["sees", "likes", "finds", "watches", "follows"];
    let obj = ["the ball", "a tree", "the house", "the river", "a book"];
    let mut corpus = String::new();
    for d in 0..12usize {
        for p in 0..4usize {
            let k = d * 7 + p * 3;
            let (s, v, o) = (subj[k % 5], verb[(k / 5) % 5], obj[(k * 3 + d) % 5]);
            corpus.push_str(&format!("{s} {v} {o} . then {s} {v} {o} again .\n"));
        }
        corpus.push('\n');
    }
    std::fs::write(dir.join("corpus.txt"), corpus).unwrap();
    let mut csv = String::from("text,label\n");
    for i in 0..24 {
        let (t, l) = if i % 2 == 0 {
            (subj[i % 5], "pos")
        } else {
            (obj[i % 5], "neg")
        };
        csv.push_str(&format!("{t} {},{l}\n", verb[i % 5]));
    }
    std::fs::write(dir.join("data.csv"), csv).unwrap();
    let d = dir.display();
    let config = format!(
        r#"
corpus = ["{d}/corpus.txt"]
size = "tiny"
vocab_size = 320
seq_len = 32
pretrain_steps = 3
pretrain_batch = 4
pretrain_lr = 1e-3
finetune_max_steps = 2
finetune_batch = 8
max_len = 32
compare_runs = 1
compare_shapes = [[1, 8], [2, 16]]

[[datasets]]
name = "micro"
train = "{d}/data.csv"
dev = "{d}/data.csv"
test = "{d}/data.csv"
"#
    );
    let path = dir.join("study.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn a_micro_study_produces_every_file_and_resumes_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_inputs(tmp.path());
    let out = tmp.path().join("study");
    let args = [
        "study",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];

    // Killed once the first stage is recorded...
    let mut child = slimformer()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = out.join("stages/pretrain-bert.json");
    let started = Instant::now();
    while !first.exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.exists());
    let stamp = std::fs::metadata(&first).unwrap().modified().unwrap();

    // ...and run again: the recorded stage is skipped, the rest completes.
    let run = slimformer().args(args).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        stamp
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !stderr.contains("slimformer study: pretrain-bert\n"),
        "{stderr}"
    );

    for family in ["bert", "roberta", "xlnet", "albert", "distilbert"] {
        assert!(
            out.join(format!("stages/pretrain-{family}.json")).exists(),
            "{family}"
        );
        assert!(
            out.join(format!("finetune/micro/{family}/model.safetensors"))
                .exists(),
            "{family}"
        );
    }
    let report = out.join("compare/micro");
    for f in [
        "report.json",
        "report.csv",
        "report.md",
        "report.html",
        "parameters.svg",
        "parameters.png",
    ] {
        assert!(report.join(f).is_file(), "{f}");
    }
    let md = std::fs::read_to_string(out.join("study.md")).unwrap();
    assert!(md.contains("quoted, not measured"));
    assert!(md.contains("| distilbert |"));

    // The report's numbers are the commands' own.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    for m in json["models"].as_array().unwrap() {
        let m = &m["measurement"];
        let dir = m["path"].as_str().unwrap();
        let inspect: serde_json::Value = serde_json::from_slice(
            &slimformer()
                .args(["inspect", dir, "--json"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert_eq!(m["params"]["total"], inspect["params"]["total"], "{dir}");
        let eval = slimformer()
            .args([
                "evaluate",
                dir,
                "--data",
                tmp.path().join("data.csv").to_str().unwrap(),
                "--max-len",
                "32",
            ])
            .output()
            .unwrap();
        let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
        assert_eq!(m["metrics"]["accuracy"], eval["accuracy"], "{dir}");
    }
}
