//! The batch commands' input and output flags; the readers and writers are in
//! `slimformer-corpus`.

use anyhow::bail;
use slimformer::batching::BatchLimits;
use slimformer::pipeline::StreamOptions;
use slimformer_corpus::{ColumnNames, Rows, Source};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct InputArgs {
    /// A text to process (repeatable).
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// A file of texts: .txt (a text per line), .csv, .tsv, .jsonl or .parquet
    /// (the texts in --text-col). Without --text or --input, standard input is
    /// read a text per line.
    #[arg(long, value_name = "FILE", conflicts_with = "texts")]
    pub input: Option<PathBuf>,
    /// Each input is a pair of texts: two tab-separated fields on a line, or
    /// --text-col and --pair-col of a columnar file.
    #[arg(long)]
    pub pairs: bool,
    /// The column (or JSON field) holding the texts of a columnar input.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_col: String,
    /// The column holding the second text of each pair (implies --pairs).
    #[arg(long, value_name = "NAME")]
    pub pair_col: Option<String>,
    /// A column carried to the output beside each result, as `id`.
    #[arg(long, value_name = "NAME")]
    pub id_col: Option<String>,
    /// Where results go, the format from the extension: .jsonl, .npy (float32
    /// [N, D]; embeddings only) or .parquet. Default: JSON Lines on standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Texts read ahead, tokenized and sorted by length together; memory is bounded
    /// by a few windows (default: 4096, or 256 for `encode`'s per-token states).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: Option<u64>,
    /// The most texts in one forward pass.
    #[arg(long, default_value_t = BatchLimits::DEFAULT.max_rows as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// The most tokens in one forward pass (texts × the longest's tokens).
    #[arg(long, default_value_t = BatchLimits::DEFAULT.max_tokens as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: u64,
}

impl InputArgs {
    /// Opens the input rows.
    pub fn rows(&self) -> anyhow::Result<Rows> {
        let source = if !self.texts.is_empty() {
            Source::Texts(self.texts.clone())
        } else if let Some(path) = &self.input {
            Source::File(path.clone())
        } else if std::io::stdin().is_terminal() {
            bail!("no input: give --text TEXT, --input FILE, or texts on standard input");
        } else {
            Source::Stdin
        };
        let columns = ColumnNames {
            text: self.text_col.clone(),
            pair: self.pair_col.clone(),
            id: self.id_col.clone(),
        };
        Ok(slimformer_corpus::input::open(
            &source,
            self.pairs || self.pair_col.is_some(),
            &columns,
        )?)
    }

    /// Read-ahead and batch sizes; `window` is the command's default window.
    pub fn stream_options(&self, window: usize) -> StreamOptions {
        StreamOptions {
            window: self.window.map_or(window, |w| w as usize),
            limits: BatchLimits {
                max_tokens: self.batch_tokens as usize,
                max_rows: self.batch_size as usize,
            },
        }
    }
}
