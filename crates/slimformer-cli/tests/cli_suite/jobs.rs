//! Whole batch jobs as a user runs them: files of texts of every length in each
//! input format, results written to each output format and read back, bad rows
//! in the middle of a file, and the order of the results.

use crate::common::{dir_str, fixture, json_lines, slimformer, stderr};
use arrow_array::{Array, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// Texts of 1 to 50 words in a shuffled order (a fixed permutation), so that
/// sorting by length moves nearly every text.
fn shuffled_texts(n: usize) -> Vec<String> {
    const WORDS: [&str; 12] = [
        "the", "film", "was", "quiet", "and", "long", "but", "every", "scene", "felt", "true",
        "again",
    ];
    (0..n)
        .map(|i| {
            let words = 1 + (i * 7919 + 13) % 50;
            (0..words)
                .map(|w| WORDS[(i + w * 5) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn embedding(line: &Value) -> Vec<f64> {
    line["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {line}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn shuffled_lengths_come_back_in_input_order_as_if_each_ran_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    let texts = shuffled_texts(300);
    write_lines(&file, &texts);
    let model = fixture("bert-base");
    // Small windows and budgets: many windows, many packed batches of mixed rows.
    let packed = slimformer(&[
        "embed",
        dir_str(&model),
        "--input",
        dir_str(&file),
        "--window",
        "37",
        "--batch-tokens",
        "300",
    ]);
    let alone = slimformer(&[
        "embed",
        dir_str(&model),
        "--input",
        dir_str(&file),
        "--window",
        "1",
        "--batch-size",
        "1",
    ]);
    assert!(packed.status.success(), "{}", stderr(&packed));
    assert!(alone.status.success(), "{}", stderr(&alone));
    let (packed, alone) = (json_lines(&packed), json_lines(&alone));
    assert_eq!(packed.len(), texts.len());
    assert_eq!(alone.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(packed[i]["text"], text.as_str(), "row {i} out of order");
        assert_eq!(alone[i]["text"], text.as_str(), "row {i} out of order");
        let diff = max_diff(&embedding(&packed[i]), &embedding(&alone[i]));
        assert!(diff <= 1e-5, "row {i}: packed differs from alone by {diff}");
    }
}

#[test]
fn bad_rows_mid_file_fail_in_place_and_the_rest_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"text\": \"a good first row\"}\n",
            "{\"body\": \"no text field\"}\n",
            "this line is not json\n",
            "{\"text\": 5}\n",
            "{\"text\": \"a good last row\", \"other\": 1}\n",
        ),
    )
    .unwrap();
    let out = slimformer(&[
        "embed",
        dir_str(&fixture("bert-base")),
        "--input",
        dir_str(&file),
    ]);
    assert!(
        !out.status.success(),
        "bad rows must make the exit code non-zero"
    );
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("3 of 5 texts failed"), "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["text"], "a good first row");
    assert_eq!(embedding(&lines[0]).len(), 32);
    for (row, needle) in [
        (1, "no field \"text\""),
        (2, "not JSON"),
        (3, "not a string"),
    ] {
        let error = lines[row]["error"].as_str().unwrap_or_default();
        let place = format!("rows.jsonl line {}", row + 1);
        assert!(
            error.contains(&place) && error.contains(needle),
            "row {row}: {error}"
        );
    }
    assert_eq!(lines[4]["text"], "a good last row");
    assert_eq!(embedding(&lines[4]).len(), 32);

    // A CSV row of invalid UTF-8 fails alone too.
    let csv = dir.path().join("rows.csv");
    let mut bytes = b"id,text\n1,fine\n2,\"bad \xff byte\"\n3,\"also, fine\"\n".to_vec();
    bytes.extend_from_slice(b"4,last\n");
    std::fs::write(&csv, bytes).unwrap();
    let out = slimformer(&[
        "classify",
        dir_str(&fixture("bert-seqcls")),
        "--input",
        dir_str(&csv),
        "--id-col",
        "id",
    ]);
    assert!(!out.status.success());
    let lines = json_lines(&out);
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4"]);
    assert_eq!(lines[2]["text"], "also, fine");
    assert!(lines[0]["label"].is_string() && lines[3]["label"].is_string());
    let error = lines[1]["error"].as_str().unwrap();
    assert!(
        error.contains("rows.csv line 3") && error.contains("UTF-8"),
        "{error}"
    );
}

#[test]
fn a_missing_column_is_a_clear_error_and_leaves_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("reviews.csv");
    std::fs::write(&csv, "review,stars\ngood film,5\n").unwrap();
    let output = dir.path().join("out.jsonl");
    std::fs::write(&output, "the previous results\n").unwrap();
    let out = slimformer(&[
        "embed",
        dir_str(&fixture("bert-base")),
        "--input",
        dir_str(&csv),
        "--output",
        dir_str(&output),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in [
        "reviews.csv",
        "no column \"text\"",
        "review, stars",
        "--text-col",
    ] {
        assert!(
            err.contains(needle),
            "stderr does not name {needle:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "the previous results\n"
    );
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 2, "a temporary file was left behind");

    let out = slimformer(&[
        "embed",
        dir_str(&fixture("bert-base")),
        "--input",
        dir_str(&csv),
        "--text-col",
        "review",
        "--output",
        dir_str(&output),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&output).unwrap();
    let line: Value = serde_json::from_str(written.lines().next().unwrap()).unwrap();
    assert_eq!(line["text"], "good film");
}

/// The rows of a float32 C-order .npy file, with its shape.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"));
    let shape = header[header.find("'shape': (").unwrap() + 10..]
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let data = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (shape, data)
}

#[test]
fn npy_output_holds_the_embeddings_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    let mut texts = shuffled_texts(40);
    texts[7] = "\u{FFFD}".into(); // replaced below by an invalid byte
    write_lines(&file, &texts);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(3)
        .position(|w| w == "\u{FFFD}".as_bytes())
        .unwrap();
    bytes.splice(at..at + 3, [0xffu8]);
    std::fs::write(&file, bytes).unwrap();
    let model = fixture("bert-base");
    let npy = dir.path().join("embeddings.npy");
    let out = slimformer(&[
        "embed",
        dir_str(&model),
        "--input",
        dir_str(&file),
        "--output",
        dir_str(&npy),
    ]);
    assert!(!out.status.success(), "line 8 is not UTF-8");
    assert!(stderr(&out).contains("line 8"), "{}", stderr(&out));
    let jsonl = slimformer(&["embed", dir_str(&model), "--input", dir_str(&file)]);
    let lines = json_lines(&jsonl);
    let (shape, data) = read_npy(&npy);
    assert_eq!(shape, [40, 32]);
    for (i, row) in data.chunks_exact(32).enumerate() {
        if i == 7 {
            assert!(row.iter().all(|v| v.is_nan()), "a failed row is NaN");
            continue;
        }
        let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        assert!(max_diff(&row, &embedding(&lines[i])) <= 1e-6, "row {i}");
    }
}

fn write_parquet(path: &Path, ids: &[i64], texts: &[String]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(texts.to_vec())),
        ],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// The row groups of a Parquet file, as record batches.
fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

fn column<'a, A: 'static>(batch: &'a RecordBatch, name: &str) -> &'a A {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<A>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

fn strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c: &StringArray = column(b, name);
            (0..c.len())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn vectors(batches: &[RecordBatch], name: &str) -> Vec<Vec<f64>> {
    batches
        .iter()
        .flat_map(|b| {
            let c: &FixedSizeListArray = column(b, name);
            (0..c.len())
                .map(|i| {
                    let row = c.value(i);
                    let row = row.as_any().downcast_ref::<Float32Array>().unwrap();
                    row.values().iter().map(|&v| v as f64).collect()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn parquet_in_and_out_keeps_ids_texts_and_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.parquet");
    let texts = shuffled_texts(600);
    let ids: Vec<i64> = (0..texts.len() as i64).map(|i| 1000 + 3 * i).collect();
    write_parquet(&input, &ids, &texts);
    let model = fixture("bert-base");
    let output = dir.path().join("embedded.parquet");
    let args = [
        "--input",
        dir_str(&input),
        "--text-col",
        "body",
        "--id-col",
        "doc_id",
    ];
    let out = slimformer(
        &[
            &["embed", dir_str(&model)],
            &args[..],
            &["--output", dir_str(&output)],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let batches = read_parquet(&output);
    assert_eq!(
        strings(&batches, "id"),
        ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(strings(&batches, "text"), texts);
    let vectors = vectors(&batches, "embedding");
    assert_eq!(vectors.len(), texts.len());
    let jsonl = json_lines(&slimformer(
        &[&["embed", dir_str(&model)], &args[..]].concat(),
    ));
    for i in [0, 1, 299, 599] {
        assert_eq!(vectors[i].len(), 32);
        assert!(
            max_diff(&vectors[i], &embedding(&jsonl[i])) <= 1e-6,
            "row {i}"
        );
        assert_eq!(jsonl[i]["id"], ids[i].to_string().as_str());
    }

    // A classifier's results: the label and one score column per label.
    let output = dir.path().join("classified.parquet");
    let out = slimformer(
        &[
            &["classify", dir_str(&fixture("bert-seqcls"))],
            &args[..],
            &["--output", dir_str(&output)],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let batches = read_parquet(&output);
    let labels = strings(&batches, "label");
    assert_eq!(labels.len(), texts.len());
    assert!(labels
        .iter()
        .all(|l| ["negative", "neutral", "positive"].contains(&l.as_str())));
    for name in ["score_negative", "score_neutral", "score_positive"] {
        let scores: &Float32Array = column(&batches[0], name);
        assert!((0.0..=1.0).contains(&scores.value(0)), "{name}");
    }
}

#[test]
fn shards_concatenated_are_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    let texts = shuffled_texts(103);
    write_lines(&file, &texts);
    let model = fixture("bert-base");
    let run = |extra: &[&str]| {
        let mut args = vec!["embed", dir_str(&model), "--input", dir_str(&file)];
        args.extend_from_slice(extra);
        let out = slimformer(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    let lines = |bytes: Vec<u8>| -> Vec<Value> {
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let whole = lines(run(&[]));
    let shards: Vec<Vec<Value>> = (0..4)
        .map(|k| lines(run(&["--shard", &format!("{k}/4")])))
        .collect();
    // Shard sizes differ by at most one row: 103 = 26 + 26 + 26 + 25.
    let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
    assert_eq!(sizes, [26, 26, 26, 25]);
    let merged: Vec<Value> = shards.into_iter().flatten().collect();
    assert_eq!(merged.len(), whole.len());
    for (i, (m, w)) in merged.iter().zip(&whole).enumerate() {
        assert_eq!(m["text"], w["text"], "row {i} out of order");
        // Batches are formed within each shard, so padding differs: rounding only.
        let diff = max_diff(&embedding(m), &embedding(w));
        assert!(
            diff <= 1e-5,
            "row {i}: the shard's embedding differs by {diff}"
        );
    }

    let err = slimformer(&["embed", dir_str(&model), "--text", "x", "--shard", "0/2"]);
    assert!(!err.status.success());
    assert!(stderr(&err).contains("--shard needs --input FILE"));
    let err = slimformer(&[
        "embed",
        dir_str(&model),
        "--input",
        dir_str(&file),
        "--shard",
        "2/2",
    ]);
    assert!(stderr(&err).contains("below the shard count"));
}
