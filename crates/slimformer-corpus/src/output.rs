//! Where a batch command's results go: JSON Lines on standard output, or a file
//! whose format its extension names — `.jsonl` (the same objects), `.npy`
//! (float32 [N, D], embeddings only) or `.parquet` (the input's id and text
//! columns, then the results as typed columns, and an `error` column). Rows are
//! written as they come, in input order; a file is filled under a temporary name
//! and renamed into place when the last row is written, so a reader never sees
//! half of one.

use crate::input::Row;
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use slimformer::io::PendingFile;
use slimformer::pipeline::{ClassifyOutput, EmbedOutput};
use slimformer::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the results are, known before the first one: columnar formats need it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Vectors of this many values.
    Embedding { dim: usize },
    /// A label and a score for each of these labels.
    Labels { names: Vec<String> },
    /// One score.
    Score,
    /// Nested objects (hidden states, tags, mask predictions): JSON Lines only.
    Records,
}

/// A result as a columnar format stores it.
pub enum Columns<'a> {
    Embedding(&'a [f32]),
    Labels {
        label: &'a str,
        scores: &'a BTreeMap<String, f32>,
    },
    Score(f32),
}

/// A task output that columnar formats can store; JSON Lines stores any output.
pub trait Columnar: Serialize {
    fn columns(&self) -> Option<Columns<'_>> {
        None
    }
}

impl Columnar for EmbedOutput {
    fn columns(&self) -> Option<Columns<'_>> {
        Some(Columns::Embedding(&self.embedding))
    }
}

impl Columnar for ClassifyOutput {
    fn columns(&self) -> Option<Columns<'_>> {
        Some(match self {
            ClassifyOutput::Labels { label, scores } => Columns::Labels { label, scores },
            ClassifyOutput::Regression { score } => Columns::Score(*score),
        })
    }
}

impl Columnar for slimformer::pipeline::EncodeOutput {}
impl Columnar for slimformer::pipeline::TagOutput {}
impl Columnar for slimformer::tagging::EntitiesOutput {}
impl Columnar for slimformer::pipeline::FillMaskOutput {}

/// Rows of a Parquet file kept before they are written as a row group: bounds
/// the writer's memory (the default row group holds a million rows).
const PARQUET_ROW_GROUP: usize = 4096;

/// The results' destination.
pub struct Writer {
    kind: Kind,
    with_id: bool,
}

enum Kind {
    Stdout(BufWriter<std::io::Stdout>),
    Jsonl {
        path: PathBuf,
        pending: PendingFile,
        out: BufWriter<File>,
    },
    Npy(Npy),
    Parquet(Box<Parquet>),
}

#[derive(Serialize)]
struct Record<'a, T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    text: &'a str,
    #[serde(flatten)]
    output: &'a T,
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    text: &'a str,
    error: &'a str,
}

impl Writer {
    /// JSON Lines on standard output (`path` None), or a file in the format of its
    /// extension. `with_id` adds the input's id to every row.
    pub fn create(path: Option<&Path>, shape: Shape, with_id: bool) -> Result<Writer> {
        let Some(path) = path else {
            return Ok(Writer {
                kind: Kind::Stdout(BufWriter::new(std::io::stdout())),
                with_id,
            });
        };
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let kind = match ext.as_str() {
            "jsonl" | "ndjson" | "json" => {
                let (pending, file) = PendingFile::create(path)?;
                Kind::Jsonl {
                    path: path.to_path_buf(),
                    pending,
                    out: BufWriter::new(file),
                }
            }
            "npy" => match shape {
                Shape::Embedding { dim } => Kind::Npy(Npy::create(path, dim)?),
                _ => {
                    return Err(Error::file(
                        path,
                        "a .npy output holds embeddings only: write .jsonl or .parquet",
                    ))
                }
            },
            "parquet" | "pq" => Kind::Parquet(Box::new(Parquet::create(path, shape, with_id)?)),
            _ => {
                return Err(Error::file(
                    path,
                    "unknown output format: the file name must end in .jsonl, .npy or .parquet",
                ))
            }
        };
        Ok(Writer { kind, with_id })
    }

    /// Writes one row's result, or its error.
    pub fn write<T: Columnar>(
        &mut self,
        row: &Row,
        result: std::result::Result<&T, &str>,
    ) -> Result<()> {
        let id = if self.with_id {
            Some(row.id.as_deref().unwrap_or(""))
        } else {
            None
        };
        match &mut self.kind {
            Kind::Stdout(out) => write_json(out, id, row, result)
                .map_err(|e| Error::Input(format!("standard output: cannot write: {e}"))),
            Kind::Jsonl { path, out, .. } => write_json(out, id, row, result)
                .map_err(|e| Error::file(path, format!("cannot write: {e}"))),
            Kind::Npy(npy) => npy.write(result.ok().and_then(|o| o.columns())),
            Kind::Parquet(parquet) => parquet.write(id, row, result),
        }
    }

    /// Flushes standard output; a file is completed and moved into place.
    pub fn finish(self) -> Result<()> {
        match self.kind {
            Kind::Stdout(mut out) => out
                .flush()
                .map_err(|e| Error::Input(format!("standard output: cannot write: {e}"))),
            Kind::Jsonl { path, pending, out } => {
                let file = out
                    .into_inner()
                    .map_err(|e| Error::file(&path, format!("cannot write: {}", e.error())))?;
                pending.commit(file)
            }
            Kind::Npy(npy) => npy.finish(),
            Kind::Parquet(parquet) => parquet.finish(),
        }
    }
}

/// One JSON object on a line: the row's id and text, then the output's fields or
/// the row's error.
fn write_json<T: Serialize>(
    out: &mut impl Write,
    id: Option<&str>,
    row: &Row,
    result: std::result::Result<&T, &str>,
) -> std::io::Result<()> {
    let text = &row.text;
    match result {
        Ok(output) => serde_json::to_writer(&mut *out, &Record { id, text, output })?,
        Err(error) => serde_json::to_writer(&mut *out, &ErrorRecord { id, text, error })?,
    }
    out.write_all(b"\n")
}

/// NumPy's format, version 1.0: a header padded to a multiple of 64 bytes, then
/// the rows. The row count is known only at the end, so the header is written
/// with room for any count and rewritten then.
struct Npy {
    path: PathBuf,
    pending: PendingFile,
    out: BufWriter<File>,
    dim: usize,
    rows: u64,
    /// A row whose result failed is NaN; how many there were.
    failed: u64,
}

const NPY_HEADER_LEN: usize = 128;

fn npy_header(rows: u64, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let room = NPY_HEADER_LEN - header.len() - 2;
    let mut text = dict.into_bytes();
    text.resize(room - 1, b' ');
    text.push(b'\n');
    header.extend_from_slice(&(room as u16).to_le_bytes());
    header.extend_from_slice(&text);
    header
}

impl Npy {
    fn create(path: &Path, dim: usize) -> Result<Npy> {
        let (pending, file) = PendingFile::create(path)?;
        let mut out = BufWriter::new(file);
        out.write_all(&npy_header(0, dim))
            .map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        Ok(Npy {
            path: path.to_path_buf(),
            pending,
            out,
            dim,
            rows: 0,
            failed: 0,
        })
    }

    fn write(&mut self, columns: Option<Columns<'_>>) -> Result<()> {
        let values = match columns {
            Some(Columns::Embedding(v)) if v.len() == self.dim => v,
            Some(Columns::Embedding(v)) => {
                return Err(Error::file(
                    &self.path,
                    format!(
                        "an embedding of {} values in a file of {}",
                        v.len(),
                        self.dim
                    ),
                ))
            }
            _ => {
                self.failed += 1;
                &[][..]
            }
        };
        let mut bytes = Vec::with_capacity(self.dim * 4);
        if values.is_empty() {
            bytes.extend(std::iter::repeat_n(f32::NAN.to_le_bytes(), self.dim).flatten());
        } else {
            bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        self.rows += 1;
        self.out
            .write_all(&bytes)
            .map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }

    fn finish(self) -> Result<()> {
        let fail =
            |e: &dyn std::fmt::Display| Error::file(&self.path, format!("cannot write: {e}"));
        let mut file = self.out.into_inner().map_err(|e| fail(&e.error()))?;
        file.rewind().map_err(|e| fail(&e))?;
        file.write_all(&npy_header(self.rows, self.dim))
            .map_err(|e| fail(&e))?;
        if self.failed > 0 {
            eprintln!(
                "slimformer: {}: {} of {} rows failed and hold NaN",
                self.path.display(),
                self.failed,
                self.rows
            );
        }
        self.pending.commit(file)
    }
}

/// Columns: `id` (when the input has ids), `text`, the results by [`Shape`]
/// (`embedding` as a fixed-size list of float32; `label` and one `score_<label>`
/// float32 column per label; `score`), and `error`, null where the row ran.
struct Parquet {
    path: PathBuf,
    pending: PendingFile,
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    shape: Shape,
    with_id: bool,
    ids: StringBuilder,
    texts: StringBuilder,
    embeddings: Option<FixedSizeListBuilder<Float32Builder>>,
    labels: StringBuilder,
    scores: Vec<Float32Builder>,
    errors: StringBuilder,
    buffered: usize,
}

impl Parquet {
    fn create(path: &Path, shape: Shape, with_id: bool) -> Result<Parquet> {
        let mut fields = Vec::new();
        if with_id {
            fields.push(Field::new("id", DataType::Utf8, true));
        }
        fields.push(Field::new("text", DataType::Utf8, false));
        let mut embeddings = None;
        let mut scores = Vec::new();
        match &shape {
            Shape::Embedding { dim } => {
                let item = Field::new("item", DataType::Float32, false);
                let list = DataType::FixedSizeList(Arc::new(item.clone()), *dim as i32);
                fields.push(Field::new("embedding", list, true));
                embeddings = Some(
                    FixedSizeListBuilder::new(Float32Builder::new(), *dim as i32).with_field(item),
                );
            }
            Shape::Labels { names } => {
                fields.push(Field::new("label", DataType::Utf8, true));
                for name in names {
                    fields.push(Field::new(format!("score_{name}"), DataType::Float32, true));
                    scores.push(Float32Builder::new());
                }
            }
            Shape::Score => {
                fields.push(Field::new("score", DataType::Float32, true));
                scores.push(Float32Builder::new());
            }
            Shape::Records => {
                return Err(Error::file(
                    path,
                    "this command's results are nested objects: write .jsonl",
                ))
            }
        }
        fields.push(Field::new("error", DataType::Utf8, true));
        let schema = Arc::new(Schema::new(fields));
        let (pending, file) = PendingFile::create(path)?;
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))
            .map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        Ok(Parquet {
            path: path.to_path_buf(),
            pending,
            writer,
            schema,
            shape,
            with_id,
            ids: StringBuilder::new(),
            texts: StringBuilder::new(),
            embeddings,
            labels: StringBuilder::new(),
            scores,
            errors: StringBuilder::new(),
            buffered: 0,
        })
    }

    fn write<T: Columnar>(
        &mut self,
        id: Option<&str>,
        row: &Row,
        result: std::result::Result<&T, &str>,
    ) -> Result<()> {
        if self.with_id {
            self.ids.append_option(id);
        }
        self.texts.append_value(&row.text);
        let columns = match result {
            Ok(output) => output.columns(),
            Err(_) => None,
        };
        match (columns, &mut self.embeddings) {
            (Some(Columns::Embedding(v)), Some(list)) => {
                list.values().append_slice(v);
                list.append(true);
            }
            (Some(Columns::Labels { label, scores }), None) => {
                self.labels.append_value(label);
                let Shape::Labels { names } = &self.shape else {
                    unreachable!("labels come with a labels shape")
                };
                for (builder, name) in self.scores.iter_mut().zip(names) {
                    builder.append_option(scores.get(name).copied());
                }
            }
            (Some(Columns::Score(score)), None) => self.scores[0].append_value(score),
            (_, Some(list)) => {
                let dim = list.value_length() as usize;
                list.values().append_nulls(dim);
                list.append(false);
            }
            (_, None) => {
                if matches!(self.shape, Shape::Labels { .. }) {
                    self.labels.append_null();
                }
                self.scores.iter_mut().for_each(|b| b.append_null());
            }
        }
        self.errors.append_option(result.err());
        self.buffered += 1;
        if self.buffered == PARQUET_ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buffered == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.with_id {
            columns.push(Arc::new(self.ids.finish()));
        }
        columns.push(Arc::new(self.texts.finish()));
        if let Some(list) = &mut self.embeddings {
            columns.push(Arc::new(list.finish()));
        }
        if matches!(self.shape, Shape::Labels { .. }) {
            columns.push(Arc::new(self.labels.finish()));
        }
        for b in &mut self.scores {
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(self.errors.finish()));
        self.buffered = 0;
        let fail =
            |e: &dyn std::fmt::Display| Error::file(&self.path, format!("cannot write: {e}"));
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| fail(&e))?;
        self.writer.write(&batch).map_err(|e| fail(&e))
    }

    fn finish(mut self) -> Result<()> {
        self.flush()?;
        let fail =
            |e: &dyn std::fmt::Display| Error::file(&self.path, format!("cannot write: {e}"));
        let file = self.writer.into_inner().map_err(|e| fail(&e))?;
        self.pending.commit(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn row(i: usize) -> Row {
        Row {
            id: Some(format!("id{i}")),
            text: format!("text {i}"),
            input: Err(String::new()),
        }
    }

    #[test]
    fn a_large_parquet_output_is_written_in_bounded_row_groups_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let rows = PARQUET_ROW_GROUP + 904;
        let mut writer = Writer::create(Some(&path), Shape::Embedding { dim: 3 }, true).unwrap();
        for i in 0..rows {
            let output = EmbedOutput {
                embedding: vec![i as f32, 0.5, -1.0],
            };
            // One row in the middle failed: it keeps its place, with its error.
            let result = if i == 7 { Err("too long") } else { Ok(&output) };
            writer.write(&row(i), result).unwrap();
        }
        assert!(!path.exists(), "the file appears only when it is complete");
        writer.finish().unwrap();

        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        assert_eq!(builder.metadata().num_row_groups(), 2);
        let mut seen = 0;
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("id").unwrap();
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let vectors = batch.column_by_name("embedding").unwrap();
            let vectors = vectors
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .unwrap();
            let errors = batch.column_by_name("error").unwrap();
            let errors = errors.as_any().downcast_ref::<StringArray>().unwrap();
            for j in 0..batch.num_rows() {
                let i = seen + j;
                assert_eq!(ids.value(j), format!("id{i}"));
                if i == 7 {
                    assert!(vectors.is_null(j));
                    assert_eq!(errors.value(j), "too long");
                } else {
                    let v = vectors.value(j);
                    let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
                    assert_eq!(v.values(), &[i as f32, 0.5, -1.0]);
                    assert!(errors.is_null(j));
                }
            }
            seen += batch.num_rows();
        }
        assert_eq!(seen, rows);
    }
}
