use std::path::{Path, PathBuf};

/// Every failure the library reports. Messages name the file or field at fault and,
/// where possible, what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem with one file: missing, truncated, corrupt, or with wrong contents.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A configuration value that is missing, unknown or inconsistent.
    #[error("{0}")]
    Config(String),
    /// A text or request that cannot be processed.
    #[error("{0}")]
    Input(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl AsRef<Path>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Attaches a file path to errors of lower layers (candle, serde, io).
pub trait FileContext<T> {
    fn in_file(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T, E: std::fmt::Display> FileContext<T> for std::result::Result<T, E> {
    fn in_file(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, first_line(&e.to_string())))
    }
}

/// candle errors carry multi-line backtraces; users need the first line only.
pub(crate) fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}
