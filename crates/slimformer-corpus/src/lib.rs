//! Corpora in and results out for slimformer's batch commands (`embed`,
//! `classify`, `encode`, `tag`, `fill-mask`): [`input`] streams rows from text,
//! CSV/TSV, JSON Lines or Parquet files; [`output`] writes results, in input
//! order, as JSON Lines, NumPy `.npy` or Parquet that pandas, polars, DuckDB and
//! numpy read directly.

pub mod input;
pub mod output;

pub use input::{ColumnNames, Row, Rows, Source};
pub use output::{Columnar, Shape, Writer};
