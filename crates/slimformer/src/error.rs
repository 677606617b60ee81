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
    /// A setting (an option of the caller's, named as the library's option field,
    /// e.g. `max_len`) whose value cannot work. Front ends name it their way: the
    /// command line as `--max-len`, the server as its config field.
    #[error("{name}{}: {problem}", value.as_ref().map(|v| format!(" {v}")).unwrap_or_default())]
    Setting {
        name: &'static str,
        /// The value given, when the problem is with it.
        value: Option<String>,
        problem: String,
    },
    /// A text longer than the tokenizer's limit, with truncation turned off.
    #[error("text has {tokens} tokens, more than the limit of {limit} (truncation is off)")]
    TooLong { tokens: usize, limit: usize },
    /// A checkpoint of a family or layout this library does not run.
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// [`Error::Setting`]: `name` is the option's field name, `problem` says what
    /// is wrong with its value.
    pub fn setting(name: &'static str, problem: impl std::fmt::Display) -> Self {
        Error::Setting {
            name,
            value: None,
            problem: problem.to_string(),
        }
    }

    /// [`Error::Setting`] with the value that does not work.
    pub fn bad_value(
        name: &'static str,
        value: impl std::fmt::Display,
        problem: impl std::fmt::Display,
    ) -> Self {
        Error::Setting {
            name,
            value: Some(value.to_string()),
            problem: problem.to_string(),
        }
    }

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
pub fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}
