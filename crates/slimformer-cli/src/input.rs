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
    /// Process only shard I of N (0-based): the I-th of N contiguous, equal runs
    /// of the input's rows, so the outputs of shards 0..N, concatenated in that
    /// order, are the whole input's output. For batch jobs spread over machines
    /// (a Kubernetes Indexed Job's `$JOB_COMPLETION_INDEX/N`).
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// The most tokens in one forward pass (texts × the longest's tokens).
    #[arg(long, default_value_t = BatchLimits::DEFAULT.max_tokens as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: u64,
}

/// One of N contiguous runs of an input's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The rows `[start, end)` of this shard when the input has `rows` rows: the
    /// first `rows % count` shards take one row more than the others.
    pub fn range(self, rows: usize) -> (usize, usize) {
        let (base, extra) = (rows / self.count, rows % self.count);
        let start = self.index * base + self.index.min(extra);
        let len = base + usize::from(self.index < extra);
        (start, start + len)
    }
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    let (index, count) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected I/N, such as 0/4"))?;
    let number = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{text:?}: {v:?} is not a whole number"))
    };
    let (index, count) = (number(index)?, number(count)?);
    if count == 0 || index >= count {
        return Err(format!(
            "{text:?}: the shard index must be below the shard count (0/{count} to {}/{count})",
            count.saturating_sub(1)
        ));
    }
    Ok(Shard { index, count })
}

impl InputArgs {
    /// Opens the input rows: all of them, or this shard's.
    pub fn rows(&self) -> anyhow::Result<Rows> {
        let Some(shard) = self.shard else {
            return self.all_rows();
        };
        if self.input.is_none() {
            bail!("--shard needs --input FILE: each shard reads the same file");
        }
        // A first pass counts the rows (reading only; no model work), so each
        // shard knows its run without any coordination.
        let total = self.all_rows()?.count();
        let (start, end) = shard.range(total);
        Ok(Box::new(self.all_rows()?.skip(start).take(end - start)))
    }

    fn all_rows(&self) -> anyhow::Result<Rows> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_in_order() {
        for rows in [0, 1, 5, 12, 13] {
            for count in 1..=5 {
                let ranges: Vec<_> = (0..count)
                    .map(|index| Shard { index, count }.range(rows))
                    .collect();
                assert_eq!(ranges[0].0, 0);
                assert_eq!(ranges[count - 1].1, rows);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].1, pair[1].0);
                }
                let sizes: Vec<_> = ranges.iter().map(|(s, e)| e - s).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn shard_flags_are_checked() {
        assert_eq!(parse_shard("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert!(parse_shard("4/4")
            .unwrap_err()
            .contains("below the shard count"));
        assert!(parse_shard("0/0").is_err());
        assert!(parse_shard("1").unwrap_err().contains("expected I/N"));
        assert!(parse_shard("a/2")
            .unwrap_err()
            .contains("not a whole number"));
    }
}
