//! Labelled text data for fine-tuning: CSV (RFC 4180), TSV, or JSON Lines, chosen by
//! the file's extension (`.csv`, `.tsv`, `.jsonl` / `.json`). Every error names the
//! file and the line at fault.

use slimformer::rng::Rng;
use slimformer::tokenize::TextInput;
use slimformer::{Error, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// Which columns hold the text, the optional second text, and the label.
#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    pub text_pair: Option<String>,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: "text".into(),
            text_pair: None,
            label: "label".into(),
        }
    }
}

/// Multi-label data names a text's labels in one field, separated by this (or, in
/// JSON Lines, as a list).
pub const LABEL_SEPARATOR: char = '|';

/// One labelled row, with the line of the file it started on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub input: TextInput,
    pub label: String,
    pub line: usize,
}

fn at(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::file(path, format!("line {line}: {message}"))
}

/// Reads a labelled data file.
pub fn read_rows(path: &Path, columns: &Columns) -> Result<Vec<Row>> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(path, "missing"),
        _ => Error::file(path, e),
    })?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::file(path, "empty file: no header and no rows"));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let rows = match ext.as_str() {
        "csv" => read_delimited(path, &bytes, b',', columns)?,
        "tsv" => read_delimited(path, &bytes, b'\t', columns)?,
        "jsonl" | "json" => read_jsonl(path, &bytes, columns)?,
        _ => {
            return Err(Error::file(
                path,
                "unknown data format: the file name must end in .csv, .tsv, .jsonl or .json",
            ))
        }
    };
    if rows.is_empty() {
        return Err(Error::file(path, "no data rows"));
    }
    Ok(rows)
}

fn make_row(
    path: &Path,
    line: usize,
    text: String,
    pair: Option<String>,
    label: String,
    columns: &Columns,
) -> Result<Row> {
    if text.trim().is_empty() {
        return Err(at(
            path,
            line,
            format!("empty text in column {:?}", columns.text),
        ));
    }
    if let (Some(p), Some(col)) = (&pair, &columns.text_pair) {
        if p.trim().is_empty() {
            return Err(at(path, line, format!("empty text in column {col:?}")));
        }
    }
    let input = match pair {
        Some(p) => TextInput::Pair(text, p),
        None => TextInput::Single(text),
    };
    Ok(Row {
        input,
        label: label.trim().to_string(),
        line,
    })
}

fn read_delimited(path: &Path, bytes: &[u8], delimiter: u8, columns: &Columns) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {
                let pos = record.position().expect("csv records have positions");
                records.push((pos.line() as usize, pos.byte() as usize, record.clone()));
            }
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                return Err(at(path, line, e));
            }
        }
    }
    // RFC 4180: quotes come in pairs within a record. The csv crate accepts a stray
    // quote, or reads an unterminated one to the end of the file; both are errors here.
    for (i, (line, start, _)) in records.iter().enumerate() {
        let end = records.get(i + 1).map(|r| r.1).unwrap_or(bytes.len());
        let quotes = bytes[*start..end].iter().filter(|&&b| b == b'"').count();
        if quotes % 2 == 1 {
            return Err(at(
                path,
                *line,
                "broken quoting: a quote is not closed (RFC 4180: quote the whole field \
                 and double quotes inside it)",
            ));
        }
    }
    let fields = |line: usize, rec: &csv::ByteRecord| -> Result<Vec<String>> {
        rec.iter()
            .map(|f| {
                String::from_utf8(f.to_vec())
                    .map_err(|_| at(path, line, "not valid UTF-8 (save the file as UTF-8)"))
            })
            .collect()
    };
    let mut iter = records.iter();
    let (hline, _, header) = iter
        .next()
        .ok_or_else(|| Error::file(path, "empty file: no header"))?;
    let header = fields(*hline, header)?;
    let find = |name: &str| -> Result<usize> {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            at(
                path,
                *hline,
                format!(
                    "no column {name:?} in the header (columns: {})",
                    header.join(", ")
                ),
            )
        })
    };
    let text_idx = find(&columns.text)?;
    let pair_idx = columns.text_pair.as_deref().map(find).transpose()?;
    let label_idx = find(&columns.label)?;
    let mut rows = Vec::new();
    for (line, _, rec) in iter {
        let values = fields(*line, rec)?;
        if values.len() == 1 && values[0].trim().is_empty() {
            continue;
        }
        if values.len() != header.len() {
            return Err(at(
                path,
                *line,
                format!(
                    "{} fields where the header has {} (check the quoting and delimiters)",
                    values.len(),
                    header.len()
                ),
            ));
        }
        rows.push(make_row(
            path,
            *line,
            values[text_idx].clone(),
            pair_idx.map(|i| values[i].clone()),
            values[label_idx].clone(),
            columns,
        )?);
    }
    Ok(rows)
}

fn read_jsonl(path: &Path, bytes: &[u8], columns: &Columns) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = std::str::from_utf8(raw)
            .map_err(|_| at(path, line, "not valid UTF-8 (save the file as UTF-8)"))?;
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| at(path, line, format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| at(path, line, "expected a JSON object"))?;
        let get = |name: &str, what: &str| -> Result<String> {
            match obj.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Ok(v.to_string())
                }
                Some(_) => Err(at(path, line, format!("{what} {name:?} is not a string"))),
                None => {
                    let keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
                    Err(at(
                        path,
                        line,
                        format!("no column {name:?} (columns: {})", keys.join(", ")),
                    ))
                }
            }
        };
        let t = get(&columns.text, "column")?;
        let p = columns
            .text_pair
            .as_deref()
            .map(|c| get(c, "column"))
            .transpose()?;
        let l = match obj.get(&columns.label) {
            // A multi-label row's labels, as a list of names.
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        at(
                            path,
                            line,
                            format!(
                                "the list {:?} holds a value that is not a string",
                                columns.label
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?
                .join(&LABEL_SEPARATOR.to_string()),
            _ => get(&columns.label, "column")?,
        };
        rows.push(make_row(path, line, t, p, l, columns)?);
    }
    Ok(rows)
}

/// The label set: the model's own labels when it has `id2label` naming exactly the
/// labels of the data (in the model's order), else the data's labels sorted (as
/// numbers when they all are integers).
pub fn label_names<'a>(
    train: impl IntoIterator<Item = &'a str>,
    model_labels: Option<&[String]>,
) -> Vec<String> {
    let set: BTreeSet<&str> = train.into_iter().filter(|l| !l.is_empty()).collect();
    if let Some(own) = model_labels {
        let own_set: BTreeSet<&str> = own.iter().map(|s| s.as_str()).collect();
        if own_set == set && own_set.len() == own.len() {
            return own.to_vec();
        }
    }
    let mut names: Vec<String> = set.into_iter().map(String::from).collect();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or_default());
    }
    names
}

/// Each row's label id; a label outside `names` is an error naming the file and line.
pub fn label_ids(path: &Path, rows: &[Row], names: &[String]) -> Result<Vec<usize>> {
    rows.iter()
        .map(|r| {
            if r.label.is_empty() {
                return Err(at(path, r.line, "empty label: each text needs one"));
            }
            names.iter().position(|n| *n == r.label).ok_or_else(|| {
                at(
                    path,
                    r.line,
                    format!(
                        "unknown label {:?}: the training data's labels are {}",
                        r.label,
                        names.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// Which items a dev split holds out.
#[derive(Debug, Clone, Copy)]
pub enum HoldOut {
    /// A seeded random choice, the rest kept in order: labelled rows are
    /// independent, and a file is often sorted (by label, by date).
    Seeded(u64),
    /// The last items: pretraining examples are cut from documents in order, and
    /// a random choice would put parts of one document on both sides.
    Tail,
}

/// Splits `fraction` of `items` off as a dev set (at least one item), as `how`
/// says; `setting` names the option that asked for it, for the error.
pub fn split_dev<T>(
    items: Vec<T>,
    fraction: f64,
    how: HoldOut,
    setting: &'static str,
) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
        return Err(Error::bad_value(
            setting,
            fraction,
            "expected a fraction between 0 and 1 (exclusive)",
        ));
    }
    let n = items.len();
    let dev_n = ((n as f64 * fraction).round() as usize).max(1);
    if dev_n >= n {
        return Err(Error::bad_value(
            setting,
            fraction,
            format!("leaves no training items out of {n}"),
        ));
    }
    let mut is_dev = vec![false; n];
    match how {
        HoldOut::Tail => is_dev[n - dev_n..].fill(true),
        HoldOut::Seeded(seed) => {
            let mut order: Vec<usize> = (0..n).collect();
            Rng::new(seed ^ 0xD5E7_5B1D).shuffle(&mut order);
            for &i in &order[..dev_n] {
                is_dev[i] = true;
            }
        }
    }
    let (mut train, mut dev) = (Vec::new(), Vec::new());
    for (item, d) in items.into_iter().zip(is_dev) {
        if d {
            dev.push(item)
        } else {
            train.push(item)
        }
    }
    Ok((train, dev))
}
