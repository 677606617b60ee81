//! `slimformer compare` as a user runs it: every report file, numbers equal to the
//! individual commands', a broken model reported without stopping the others.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn slimformer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(args)
        .output()
        .unwrap()
}

/// The command's JSON: its whole output, or its last line.
fn json_line(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|_| serde_json::from_str(text.lines().last().unwrap()).unwrap())
}

#[test]
fn compare_writes_every_report_file_with_the_commands_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let eval = tmp.path().join("eval.csv");
    std::fs::write(
        &eval,
        "text,label\n\"hello world\",positive\n\"the dog\",negative\n\"river bread\",neutral\n\"the fox\",negative\n",
    )
    .unwrap();
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let out = tmp.path().join("report");
    let (a, b) = (fixture("bert-seqcls"), fixture("distilbert-seqcls"));
    let run = slimformer(&[
        "compare",
        &a,
        broken.to_str().unwrap(),
        &b,
        "--eval",
        eval.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--runs",
        "3",
        "--warmup",
        "1",
        "--shapes",
        "1x16,2x32",
    ]);
    // One model failed: non-zero exit, but the report covers all three.
    assert!(!run.status.success());
    assert_eq!(json_line(&run)["failed"], 1);
    for f in ["report.json", "report.csv", "report.md", "report.html"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    for chart in ["accuracy_vs_latency", "accuracy_vs_size", "parameters"] {
        let svg = std::fs::read_to_string(out.join(format!("{chart}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart}.svg"
        );
        let png = std::fs::read(out.join(format!("{chart}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{chart}.png");
        let (w, h) = (
            u32::from_be_bytes(png[16..20].try_into().unwrap()),
            u32::from_be_bytes(png[20..24].try_into().unwrap()),
        );
        assert_eq!((w, h), (800, 500));
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    assert!(
        models[1]["error"].as_str().unwrap().contains("broken"),
        "{}",
        models[1]
    );
    for (i, path) in [(0, &a), (2, &b)] {
        let m = &models[i]["measurement"];
        let inspect = json_line(&slimformer(&["inspect", path, "--json"]));
        assert_eq!(m["params"]["total"], inspect["params"]["total"]);
        assert_eq!(m["size_bytes"], inspect["size_bytes"]);
        let eval_cmd = json_line(&slimformer(&[
            "evaluate",
            path,
            "--data",
            eval.to_str().unwrap(),
        ]));
        assert_eq!(m["metrics"]["accuracy"], eval_cmd["accuracy"]);
        assert_eq!(m["latency"].as_array().unwrap().len(), 2);
        assert!(m["peak_rss_mib"].as_f64().unwrap() > 0.0);
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("bert-seqcls"));
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
}
