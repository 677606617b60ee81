//! Where the texts of a batch command come from: repeated `--text`, standard
//! input, or a file whose format its extension names — `.txt` (a text per line;
//! any other extension reads the same way), `.csv`, `.tsv`, `.jsonl`/`.ndjson`
//! (a JSON object per line) or `.parquet`. Rows are streamed, never read whole,
//! so memory stays bounded however long the file. A row that cannot be used
//! (invalid UTF-8, a missing field) is returned with its error, naming the file
//! and the line or row, and the rows after it still come; a failure to read the
//! file at all ends the stream with an error.

use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use slimformer::tokenize::TextInput;
use slimformer::{Error, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Which fields hold the texts of a columnar input.
#[derive(Debug, Clone)]
pub struct ColumnNames {
    /// The text (for pairs, the first text). Default `text`.
    pub text: String,
    /// The second text of a pair, when the rows are pairs.
    pub pair: Option<String>,
    /// An id carried to the output.
    pub id: Option<String>,
}

impl Default for ColumnNames {
    fn default() -> Self {
        ColumnNames {
            text: "text".into(),
            pair: None,
            id: None,
        }
    }
}

/// Where texts come from.
#[derive(Debug, Clone)]
pub enum Source {
    Texts(Vec<String>),
    /// A file, its format from its extension.
    File(PathBuf),
    Stdin,
}

/// One input row: the text as given (a pair as its two texts with a tab between),
/// its id if the input has an id column, and the parsed input or why it is unusable.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: Option<String>,
    pub text: String,
    pub input: std::result::Result<TextInput, String>,
}

pub type Rows = Box<dyn Iterator<Item = Result<Row>> + Send>;

/// The file formats an input may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Lines,
    Delimited(u8),
    JsonLines,
    Parquet,
}

fn format_of(path: &Path) -> Format {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" => Format::Delimited(b','),
        "tsv" => Format::Delimited(b'\t'),
        "jsonl" | "ndjson" => Format::JsonLines,
        "parquet" | "pq" => Format::Parquet,
        _ => Format::Lines,
    }
}

/// Opens the rows of `source`. In a text-per-line input, `pairs` splits each line
/// at its first tab; a columnar input takes its texts from `columns` (with
/// `pairs`, the second text from `columns.pair`, `text_pair` unless named).
pub fn open(source: &Source, pairs: bool, columns: &ColumnNames) -> Result<Rows> {
    let mut columns = columns.clone();
    if pairs && columns.pair.is_none() {
        columns.pair = Some("text_pair".into());
    }
    match source {
        Source::Texts(texts) => {
            let texts = texts.clone();
            Ok(Box::new(texts.into_iter().map(move |t| {
                Ok(line_row(t.into_bytes(), pairs, "a given text", 0))
            })))
        }
        Source::Stdin => Ok(lines(
            Box::new(std::io::stdin()),
            "standard input".into(),
            pairs,
        )),
        Source::File(path) => {
            let file =
                File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
            match format_of(path) {
                Format::Lines => Ok(lines(Box::new(file), path.display().to_string(), pairs)),
                Format::Delimited(delimiter) => delimited(file, path, delimiter, &columns),
                Format::JsonLines => Ok(json_lines(file, path, columns)),
                Format::Parquet => parquet_rows(file, path, columns),
            }
        }
    }
}

/// A text per line; with `pairs`, two texts separated by a tab.
fn lines(reader: Box<dyn Read + Send>, source: String, pairs: bool) -> Rows {
    let mut reader = BufReader::new(reader);
    let mut number = 0usize;
    Box::new(std::iter::from_fn(move || {
        let mut bytes = Vec::new();
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) => None,
            Ok(_) => {
                number += 1;
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                Some(Ok(line_row(bytes, pairs, &source, number)))
            }
            Err(e) => Some(Err(Error::Input(format!(
                "{source}: read failed after line {number}: {e}"
            )))),
        }
    }))
}

fn line_row(bytes: Vec<u8>, pairs: bool, source: &str, number: usize) -> Row {
    let place = if number == 0 {
        String::new()
    } else {
        format!("{source} line {number}: ")
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return Row {
                id: None,
                text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                input: Err(format!("{place}not valid UTF-8")),
            }
        }
    };
    let input = if pairs {
        match text.split_once('\t') {
            Some((a, b)) => Ok(TextInput::Pair(a.to_string(), b.to_string())),
            None => Err(format!(
                "{place}expected a pair of texts separated by a tab"
            )),
        }
    } else {
        Ok(TextInput::Single(text.clone()))
    };
    Row {
        id: None,
        text,
        input,
    }
}

/// The fields of one record, by column, each found or missing.
struct Fields {
    id: Option<String>,
    text: std::result::Result<String, String>,
    pair: Option<std::result::Result<String, String>>,
}

/// A row from its fields: the place (file and line or row) prefixes any error.
fn record_row(fields: Fields, place: &str) -> Row {
    let Fields { id, text, pair } = fields;
    let shown = match (&text, &pair) {
        (Ok(a), Some(Ok(b))) => format!("{a}\t{b}"),
        (Ok(a), _) => a.clone(),
        (Err(_), _) => String::new(),
    };
    let input = match (text, pair) {
        (Err(e), _) | (_, Some(Err(e))) => Err(format!("{place}: {e}")),
        (Ok(a), Some(Ok(b))) => Ok(TextInput::Pair(a, b)),
        (Ok(a), None) => Ok(TextInput::Single(a)),
    };
    Row {
        id,
        text: shown,
        input,
    }
}

/// A column's position in a header, or an error listing the header's columns.
/// Where column `name` sits in `header`; when it is missing, the error names the
/// columns there are, as a fault of `setting` (the option that named the column).
fn position(path: &Path, header: &[String], name: &str, setting: &'static str) -> Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| {
        Error::setting(
            setting,
            format!(
                "{}: no column {name:?} (columns: {})",
                path.display(),
                header.join(", ")
            ),
        )
    })
}

/// Where the text, pair and id columns sit in `header`.
fn positions(
    path: &Path,
    header: &[String],
    columns: &ColumnNames,
) -> Result<(usize, Option<usize>, Option<usize>)> {
    let optional = |name: &Option<String>, flag| {
        name.as_ref()
            .map(|name| position(path, header, name, flag))
            .transpose()
    };
    Ok((
        position(path, header, &columns.text, "text_col")?,
        optional(&columns.pair, "pair_col")?,
        optional(&columns.id, "id_col")?,
    ))
}

fn delimited(file: File, path: &Path, delimiter: u8, columns: &ColumnNames) -> Result<Rows> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(BufReader::new(file));
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(|e| Error::file(path, format!("cannot read the header: {e}")))?
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let (text, pair, id) = positions(path, &header, columns)?;
    let path = path.to_path_buf();
    let mut records = reader.into_byte_records();
    Ok(Box::new(std::iter::from_fn(move || {
        let record = records.next()?;
        Some(match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                let field = |i: usize| match record.get(i) {
                    None => Err(format!("no field {} (the row is short)", i + 1)),
                    Some(bytes) => std::str::from_utf8(bytes)
                        .map(str::to_string)
                        .map_err(|_| format!("field {} is not valid UTF-8", i + 1)),
                };
                let fields = Fields {
                    id: id.and_then(|i| field(i).ok()),
                    text: field(text),
                    pair: pair.map(field),
                };
                Ok(record_row(
                    fields,
                    &format!("{} line {line}", path.display()),
                ))
            }
            // csv's errors carry their line; malformed quoting ends a file.
            Err(e) => Err(Error::file(&path, e)),
        })
    })))
}

fn json_lines(file: File, path: &Path, columns: ColumnNames) -> Rows {
    let mut reader = BufReader::new(file);
    let path = path.to_path_buf();
    let mut number = 0usize;
    Box::new(std::iter::from_fn(move || loop {
        let mut bytes = Vec::new();
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) => return None,
            Ok(_) => {
                number += 1;
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue; // blank lines separate nothing in JSON Lines
                }
                let place = format!("{} line {number}", path.display());
                return Some(Ok(json_row(&bytes, &columns, &place)));
            }
            Err(e) => {
                return Some(Err(Error::file(
                    &path,
                    format!("read failed after line {number}: {e}"),
                )))
            }
        }
    }))
}

fn json_row(bytes: &[u8], columns: &ColumnNames, place: &str) -> Row {
    let object = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => return error_row(bytes, format!("{place}: expected a JSON object")),
        Err(e) => return error_row(bytes, format!("{place}: not JSON: {e}")),
    };
    let field = |name: &str| match object.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Null) | None => Err(format!("no field {name:?}")),
        Some(_) => Err(format!("field {name:?} is not a string")),
    };
    let id = columns.id.as_ref().and_then(|name| match object.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    });
    let fields = Fields {
        id,
        text: field(&columns.text),
        pair: columns.pair.as_deref().map(field),
    };
    record_row(fields, place)
}

fn error_row(bytes: &[u8], error: String) -> Row {
    Row {
        id: None,
        text: String::from_utf8_lossy(bytes).trim_end().to_string(),
        input: Err(error),
    }
}

/// Rows a Parquet file is read in: the reader holds one batch of them at a time.
const PARQUET_BATCH_ROWS: usize = 1024;

fn parquet_rows(file: File, path: &Path, columns: ColumnNames) -> Result<Rows> {
    let bad =
        |e: &dyn std::fmt::Display| Error::file(path, format!("not a readable Parquet file: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
    let schema = builder.schema().clone();
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let (text, pair, id) = positions(path, &header, &columns)?;
    // Read only the columns used; the projected batch keeps the file's order.
    let mut wanted: Vec<usize> = [Some(text), pair, id].into_iter().flatten().collect();
    wanted.sort_unstable();
    wanted.dedup();
    let projected = |i: usize| wanted.iter().position(|&w| w == i).expect("projected");
    let (text, pair, id) = (projected(text), pair.map(projected), id.map(projected));
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| bad(&e))?;
    let path = path.to_path_buf();
    let mut number = 0usize;
    let batches = reader.flat_map(move |batch| {
        let rows: Vec<Result<Row>> = match batch {
            Err(e) => vec![Err(Error::file(
                &path,
                format!("read failed after row {number}: {e}"),
            ))],
            Ok(batch) => (0..batch.num_rows())
                .map(|r| {
                    number += 1;
                    let place = format!("{} row {number}", path.display());
                    let fields = Fields {
                        id: id.and_then(|c| cell(&batch, c, r).ok()),
                        text: cell(&batch, text, r),
                        pair: pair.map(|c| cell(&batch, c, r)),
                    };
                    Ok(record_row(fields, &place))
                })
                .collect(),
        };
        rows
    });
    Ok(Box::new(batches))
}

/// One cell as text: strings as they are, integers as digits; nulls and other
/// types are the row's error.
fn cell(batch: &RecordBatch, column: usize, row: usize) -> std::result::Result<String, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
    use arrow_schema::DataType;
    let array = batch.column(column);
    let name = batch.schema().field(column).name().clone();
    if array.is_null(row) {
        return Err(format!("{name:?} is null"));
    }
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_string(),
        DataType::Utf8View => array.as_string_view().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).to_string(),
        other => return Err(format!("{name:?} is {other}, not text")),
    })
}
