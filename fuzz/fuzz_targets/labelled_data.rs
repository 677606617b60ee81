//! Labelled data for fine-tuning: CSV, TSV and JSON Lines (the first byte picks the format).
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use slimformer_train::data::{self, Columns};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let ext = ["csv", "tsv", "jsonl"][which as usize % 3];
    let path = common::file(&format!("data.{ext}"), body);
    if let Ok(rows) = data::read_rows(&path, &Columns::default()) {
        let names = data::label_names(rows.iter().map(|r| r.label.as_str()), None);
        let ids = data::label_ids(&path, &rows, &names);
        // A single-label text needs its label; every other label is in the label set.
        if rows.iter().all(|r| !r.label.is_empty()) {
            ids.expect("every label is in the label set");
        } else {
            assert!(ids.unwrap_err().to_string().contains("empty label"));
        }
    }
});
