//! What `slimformer serve` is told.

use std::path::PathBuf;
use std::time::Duration;

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// One model folder; a reload reads it again.
    Dir(PathBuf),
    /// A registry: its production version, followed as the pointer changes.
    Registry(PathBuf),
}

/// One model the server serves.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The name requests pick it by (`"model"`, `X-Model`). `None` for the lone model
    /// of `serve DIR`, which answers to any name, as TEI's one model does.
    pub name: Option<String>,
    pub source: ModelSource,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The models, the first being the default of requests that name none.
    pub models: Vec<ModelSpec>,
    pub host: String,
    pub port: u16,
    /// Tokens (padded length × texts) one forward pass may take, per model: each
    /// model has its own queue and inference thread.
    pub max_batch_tokens: usize,
    /// Requests in flight beyond which new ones get 429.
    pub max_concurrent_requests: usize,
    /// Inputs one request may carry.
    pub max_client_batch_size: usize,
    /// Longest input in tokens (default: the model's limit).
    pub max_input_length: Option<usize>,
    /// Reject longer inputs with 413 instead of truncating them.
    pub no_truncate: bool,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Bearer token required on every route but health, ready and metrics; enables
    /// `POST /admin/reload`.
    pub api_key: Option<String>,
    /// Log request texts (off: only sizes and ids).
    pub log_texts: bool,
    /// How often the registry's production pointer is checked.
    pub poll_interval: Duration,
    /// Threads of the HTTP runtime (inference has its own).
    pub http_threads: usize,
    /// The prompt (one of the model's `prompts`) embedding requests get when they
    /// name none, as TEI's `--default-prompt-name`; a version without it is refused.
    pub default_prompt_name: Option<String>,
    /// A prompt text embedding requests get when they name none.
    pub default_prompt: Option<String>,
    /// Timeouts and the connection limit of the HTTP listener.
    pub connections: crate::http::ConnectionLimits,
    /// Serve HTTPS with this PEM certificate chain and PEM private key.
    pub tls: Option<TlsFiles>,
    /// The memory the server plans within (see [`crate::memory`]).
    pub memory_limit: MemoryLimit,
}

/// `--memory-limit`: `auto` (the cgroup's limit, if any), `none`, or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    Auto,
    None,
    Bytes(u64),
}

impl std::str::FromStr for MemoryLimit {
    type Err = String;

    /// `auto`, `none`, or a size: `2G`, `512M`, `1500000000` (powers of 1024 for K, M, G).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "auto" => return Ok(MemoryLimit::Auto),
            "none" => return Ok(MemoryLimit::None),
            _ => {}
        }
        let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => s.split_at(i),
            None => (s, ""),
        };
        let scale: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            "T" => 1 << 40,
            _ => {
                return Err(format!(
                    "{s:?}: expected auto, none, or a size such as 2G or 512M"
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?}: expected auto, none, or a size such as 2G or 512M"))?;
        n.checked_mul(scale)
            .filter(|&b| b > 0)
            .map(MemoryLimit::Bytes)
            .ok_or_else(|| format!("{s:?}: not a usable size"))
    }
}

/// `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    /// One unnamed model.
    pub fn new(source: ModelSource) -> Self {
        Self::with_models(vec![ModelSpec { name: None, source }])
    }

    pub fn with_models(models: Vec<ModelSpec>) -> Self {
        Self {
            models,
            host: "127.0.0.1".into(),
            port: 8080,
            max_batch_tokens: 16384,
            max_concurrent_requests: 512,
            max_client_batch_size: 32,
            max_input_length: None,
            no_truncate: false,
            max_body_bytes: 2 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            api_key: None,
            log_texts: false,
            poll_interval: Duration::from_secs(2),
            http_threads: 2,
            default_prompt_name: None,
            default_prompt: None,
            connections: crate::http::ConnectionLimits::default(),
            tls: None,
            memory_limit: MemoryLimit::Auto,
        }
    }
}
