//! `slimformer distill`, `compress` and `quantize` as a user runs them.

use std::path::{Path, PathBuf};
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
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("slimformer-cli-tests"),
        )
        .output()
        .unwrap()
}

fn ok(out: &Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_train(dir: &Path) -> String {
    let labels = ["negative", "neutral", "positive"];
    let words = ["hello world", "dog fox", "river bread"];
    let mut csv = String::from("text,label\n");
    for i in 0..18 {
        csv.push_str(&format!("the {} {i},{}\n", words[i % 3], labels[i % 3]));
    }
    let path = dir.join("train.csv");
    std::fs::write(&path, csv).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn distill_compress_quantize_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_train(tmp.path());
    let p = |n: &str| tmp.path().join(n).to_string_lossy().into_owned();
    let teacher = fixture("bert-seqcls");
    let common = [
        "--train",
        &train,
        "--dev",
        &train,
        "--max-steps",
        "3",
        "--batch",
        "6",
    ];

    let mut args = vec!["distill", "--teacher", &teacher, "--student-layers", "1"];
    let out = p("distil");
    args.extend(common);
    args.extend(["--out", &out, "--test", &train]);
    let report = ok(&slimformer(&args));
    assert_eq!(report["steps"], 3);
    assert!(report["test"]["accuracy"].is_number());
    let classify = slimformer(&["classify", &out, "--text", "the dog fox"]);
    assert!(ok(&classify)["scores"]["neutral"].is_number());

    // That student distilled again with the layer terms and teacher-labelled copies.
    let mut args = vec!["distill", "--teacher", &teacher, "--student", &out];
    let again = p("distil-again");
    args.extend(common);
    args.extend([
        "--alpha-hidden",
        "1",
        "--alpha-attention",
        "1",
        "--augment",
        "2",
    ]);
    args.extend(["--out", &again]);
    let report = ok(&slimformer(&args));
    assert_eq!(report["steps"], 3);
    assert_eq!(report["train_examples"], 3 * 18);

    // Compression without data: the compressed model only.
    let albert = p("albert");
    let c = ok(&slimformer(&[
        "compress",
        &teacher,
        "--embedding-size",
        "16",
        "--share",
        "all",
        "--groups",
        "1",
        "--out",
        &albert,
    ]));
    assert!(c["parameter_ratio"].as_f64().unwrap() < 0.6);
    let inspect = slimformer(&["inspect", &albert]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("sharing      2 layers sharing 1 distinct layer(s); E=16"),
        "{text}"
    );

    // With data: compression, then recovery by distillation.
    let recovered = p("albert-recovered");
    let mut args = vec![
        "compress",
        &teacher,
        "--share",
        "ffn",
        "--embedding-size",
        "16",
        "--embedding-fit-steps",
        "100",
        "--out",
        &recovered,
    ];
    args.extend(common);
    let r = ok(&slimformer(&args));
    assert_eq!(r["steps"], 3);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&recovered).join("compressed/compress_report.json"))
            .unwrap(),
    )
    .unwrap();
    // The embeddings were fitted on the recovery texts before recovery.
    let fit = &report["report"]["embedding_fit"];
    assert_eq!(fit["steps"], 100);
    assert!(fit["text_error_after"].as_f64().unwrap() < fit["text_error_before"].as_f64().unwrap());
    let inspect = slimformer(&["inspect", &recovered]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("transformers cannot load it"), "{text}");

    let int8 = p("int8");
    let q = ok(&slimformer(&["quantize", &out, "--out", &int8]));
    assert!(q["size_ratio"].as_f64().unwrap() < 0.5);
    for cmd in ["classify", "encode", "embed"] {
        ok(&slimformer(&[cmd, &int8, "--text", "the river bread"]));
    }
    let int8_mlm = p("int8-mlm");
    ok(&slimformer(&[
        "quantize",
        &fixture("bert-mlm"),
        "--out",
        &int8_mlm,
    ]));
    let fill = ok(&slimformer(&[
        "fill-mask",
        &int8_mlm,
        "--text",
        "the [MASK] river",
    ]));
    let fp32 = ok(&slimformer(&[
        "fill-mask",
        &fixture("bert-mlm"),
        "--text",
        "the [MASK] river",
    ]));
    // int8 weights keep the top prediction of this model.
    assert_eq!(fill["masks"][0][0]["token"], fp32["masks"][0][0]["token"]);
}

#[test]
fn bad_shrink_settings_fail_with_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_train(tmp.path());
    let out = tmp.path().join("o").to_string_lossy().into_owned();
    let teacher = fixture("bert-seqcls");
    let err = failed(&slimformer(&[
        "distill",
        "--teacher",
        &teacher,
        "--student-layers",
        "9",
        "--train",
        &train,
        "--out",
        &out,
    ]));
    assert!(err.contains("the teacher has 2 layers"), "{err}");
    let err = failed(&slimformer(&[
        "distill",
        "--teacher",
        "/no/such/teacher",
        "--student-layers",
        "1",
        "--train",
        &train,
        "--out",
        &out,
    ]));
    assert!(err.contains("/no/such/teacher"), "{err}");
    let err = failed(&slimformer(&[
        "distill",
        "--teacher",
        &teacher,
        "--student",
        "/no/such/student",
        "--train",
        &train,
        "--out",
        &out,
    ]));
    assert!(
        err.contains("--student /no/such/student: not a model folder"),
        "{err}"
    );
    let err = failed(&slimformer(&[
        "distill",
        "--teacher",
        &teacher,
        "--student-layers",
        "1",
        "--out",
        &out,
    ]));
    assert!(
        err.contains("--train FILE") && err.contains("--corpus"),
        "{err}"
    );
    let err = failed(&slimformer(&[
        "compress",
        &teacher,
        "--embedding-size",
        "64",
        "--out",
        &out,
    ]));
    assert!(err.contains("--embedding-size 64"), "{err}");
    let err = failed(&slimformer(&[
        "compress",
        &fixture("roberta-seqcls"),
        "--out",
        &out,
    ]));
    assert!(err.contains("compress takes a BERT checkpoint"), "{err}");
    let err = failed(&slimformer(&[
        "quantize", &teacher, "--out", &out, "--mode", "int4",
    ]));
    assert!(err.contains("int4"), "{err}");
}
