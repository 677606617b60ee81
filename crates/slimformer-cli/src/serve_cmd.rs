//! `slimformer serve`: the REST service (see the slimformer-server crate).

use slimformer_server::http::ConnectionLimits;
use slimformer_server::{MemoryLimit, ModelSource, ModelSpec, ServerConfig, TlsFiles};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Every flag can also be set by its environment variable. text-embeddings-inference's
/// flag names work too (`--model-id`, `--hostname`, `--payload-limit`,
/// `--auto-truncate`), so a TEI command line runs unchanged.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The model folder to serve (or a hub id in the local cache).
    #[arg(env = "SLIMFORMER_MODEL", required_unless_present_any = ["registry", "model_id", "models"])]
    pub model: Option<String>,
    /// Serve several models: NAME=DIR (a model folder) or NAME=REGISTRY (a registry,
    /// followed as its pointer moves); repeat it. The first is the default of
    /// requests that name none; others are picked by `"model"` or `X-Model`.
    #[arg(
        long = "model",
        value_name = "NAME=DIR",
        conflicts_with_all = ["model", "model_id", "registry"]
    )]
    pub models: Vec<String>,
    /// The model, as TEI names it.
    #[arg(long, value_name = "MODEL", conflicts_with = "model")]
    pub model_id: Option<String>,
    /// Serve this registry's production version, following its pointer (it wins over
    /// MODEL, so an image's default model does not get in the way).
    #[arg(long, env = "SLIMFORMER_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// Address to bind (loopback unless told otherwise).
    #[arg(
        long,
        visible_alias = "hostname",
        env = "SLIMFORMER_HOST",
        default_value = "127.0.0.1"
    )]
    pub host: String,
    #[arg(long, env = "SLIMFORMER_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Tokens (padded length × texts) one forward pass may take.
    #[arg(long, env = "SLIMFORMER_MAX_BATCH_TOKENS", default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Requests in flight beyond which new ones get 429.
    #[arg(
        long,
        env = "SLIMFORMER_MAX_CONCURRENT_REQUESTS",
        default_value_t = 512
    )]
    pub max_concurrent_requests: usize,
    /// Inputs one request may carry.
    #[arg(long, env = "SLIMFORMER_MAX_CLIENT_BATCH_SIZE", default_value_t = 32)]
    pub max_client_batch_size: usize,
    /// Longest input in tokens (default: the model's limit).
    #[arg(long, env = "SLIMFORMER_MAX_INPUT_LENGTH")]
    pub max_input_length: Option<usize>,
    /// Answer 413 to longer inputs instead of truncating them.
    #[arg(long, env = "SLIMFORMER_NO_TRUNCATE")]
    pub no_truncate: bool,
    /// Truncate longer inputs (the default; TEI's flag for it).
    #[arg(long, conflicts_with = "no_truncate")]
    pub auto_truncate: bool,
    /// Largest request body in bytes.
    #[arg(long, visible_alias = "payload-limit", env = "SLIMFORMER_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a request may take before it gets 504.
    #[arg(long, env = "SLIMFORMER_REQUEST_TIMEOUT", default_value_t = 30.0)]
    pub request_timeout: f64,
    /// Require `Authorization: Bearer KEY` (not on health, ready, metrics); enables
    /// POST /admin/reload.
    #[arg(long, env = "SLIMFORMER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Log the texts of requests (off: only ids, sizes, statuses).
    #[arg(long, env = "SLIMFORMER_LOG_TEXTS")]
    pub log_texts: bool,
    /// Retrain on this schedule in the same service (needs --registry): a child process
    /// at low priority with --retrain-threads threads, so serving latency holds.
    #[arg(long, env = "SLIMFORMER_RETRAIN_CONFIG", requires = "registry")]
    pub retrain_config: Option<PathBuf>,
    /// Threads the retraining may use.
    #[arg(long, env = "SLIMFORMER_RETRAIN_THREADS", default_value_t = 1)]
    pub retrain_threads: usize,
    /// The prompt of the model's `prompts` (config_sentence_transformers.json) that
    /// embedding requests get when they name none.
    #[arg(
        long,
        env = "SLIMFORMER_DEFAULT_PROMPT_NAME",
        conflicts_with = "default_prompt"
    )]
    pub default_prompt_name: Option<String>,
    /// A prompt text that embedding requests get when they name none.
    #[arg(long, env = "SLIMFORMER_DEFAULT_PROMPT")]
    pub default_prompt: Option<String>,
    /// Seconds between checks of the registry's production pointer.
    #[arg(long, env = "SLIMFORMER_POLL_SECONDS", default_value_t = 2.0)]
    pub poll_seconds: f64,
    /// Seconds a client has to send a request's headers before its connection is closed.
    #[arg(long, env = "SLIMFORMER_HEADER_READ_TIMEOUT", default_value_t = 30.0)]
    pub header_read_timeout: f64,
    /// Seconds a client has to send a request's body before it gets 408.
    #[arg(long, env = "SLIMFORMER_BODY_READ_TIMEOUT", default_value_t = 30.0)]
    pub body_read_timeout: f64,
    /// Seconds a connection may sit without traffic and without a request in flight
    /// (behind a load balancer, set it above the balancer's own idle timeout).
    #[arg(long, env = "SLIMFORMER_IDLE_TIMEOUT", default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Connections open at once; beyond it new ones are closed on arrival.
    #[arg(long, env = "SLIMFORMER_MAX_CONNECTIONS", default_value_t = 16384)]
    pub max_connections: usize,
    /// The memory the server must stay within: `auto` (its cgroup's limit, as a
    /// container's --memory sets it), `none`, or a size (`2G`, `512M`). Under a limit the
    /// models and their forward passes are set aside at start (passes split smaller when
    /// needed) and each request reserves its memory: 429 when too little is free now,
    /// 413 when it could never fit
    #[arg(long, env = "SLIMFORMER_MEMORY_LIMIT", default_value = "auto")]
    pub memory_limit: MemoryLimit,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "SLIMFORMER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SLIMFORMER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// One `--model NAME=DIR|REGISTRY`.
fn named_model(spec: &str) -> anyhow::Result<ModelSpec> {
    let Some((name, path)) = spec.split_once('=') else {
        anyhow::bail!("--model {spec:?}: expected NAME=DIR (a model folder or a registry)");
    };
    let name = name.trim();
    if name.is_empty() || name.chars().any(|c| c.is_control() || c == '"') {
        anyhow::bail!("--model {spec:?}: the name before '=' must be a plain, non-empty name");
    }
    let dir = PathBuf::from(path);
    let source = if dir.join(slimformer_registry::PRODUCTION_FILE).exists()
        || dir.join(slimformer_registry::db_file()).exists()
        || dir.join("versions").is_dir()
    {
        ModelSource::Registry(dir)
    } else {
        ModelSource::Dir(slimformer::hub::resolve_model(path).map_err(|e| {
            anyhow::anyhow!("--model {name}: {e} (neither a model folder nor a registry)")
        })?)
    };
    Ok(ModelSpec {
        name: Some(name.to_string()),
        source,
    })
}

/// What to serve: several named models, one registry, or one folder.
fn model_specs(args: &ServeArgs) -> anyhow::Result<Vec<ModelSpec>> {
    if !args.models.is_empty() {
        let specs = args
            .models
            .iter()
            .map(|s| named_model(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.name == spec.name) {
                anyhow::bail!(
                    "--model: the name {:?} is given twice",
                    spec.name.as_deref().unwrap_or_default()
                );
            }
        }
        return Ok(specs);
    }
    let source = match (
        &args.registry,
        args.model.as_ref().or(args.model_id.as_ref()),
    ) {
        (Some(reg), _) => ModelSource::Registry(reg.clone()),
        (None, Some(model)) => ModelSource::Dir(slimformer::hub::resolve_model(model)?),
        (None, None) => anyhow::bail!("pass a MODEL folder, --registry DIR or --model NAME=DIR"),
    };
    Ok(vec![ModelSpec { name: None, source }])
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let models = model_specs(&args)?;
    for (name, v) in [
        ("--request-timeout", args.request_timeout),
        ("--poll-seconds", args.poll_seconds),
        ("--header-read-timeout", args.header_read_timeout),
        ("--body-read-timeout", args.body_read_timeout),
        ("--idle-timeout", args.idle_timeout),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            anyhow::bail!("{name} must be a positive number of seconds");
        }
    }
    let config = ServerConfig {
        host: args.host,
        port: args.port,
        max_batch_tokens: args.max_batch_tokens.max(1),
        max_concurrent_requests: args.max_concurrent_requests.max(1),
        max_client_batch_size: args.max_client_batch_size.max(1),
        max_input_length: args.max_input_length,
        no_truncate: args.no_truncate,
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        log_texts: args.log_texts,
        poll_interval: Duration::from_secs_f64(args.poll_seconds),
        default_prompt_name: args.default_prompt_name,
        default_prompt: args.default_prompt,
        connections: ConnectionLimits {
            header_read_timeout: Duration::from_secs_f64(args.header_read_timeout),
            body_read_timeout: Duration::from_secs_f64(args.body_read_timeout),
            idle_timeout: Duration::from_secs_f64(args.idle_timeout),
            max_connections: args.max_connections.max(1),
        },
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        },
        memory_limit: args.memory_limit,
        ..ServerConfig::with_models(models)
    };
    let retrainer = match &args.retrain_config {
        Some(path) => {
            // Checked now, so a bad file stops the start instead of a silent child.
            slimformer_retrain::RetrainConfig::load(path)?;
            Some(Retrainer::start(path, args.retrain_threads)?)
        }
        None => None,
    };
    let served = slimformer_server::serve(config).map_err(|e| anyhow::anyhow!("{e}"));
    drop(retrainer);
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The scheduled retraining beside the server: `slimformer retrain` as a child at
/// low priority (`nice`, where there is one), stopped with the server.
struct Retrainer(std::process::Child);

impl Retrainer {
    fn start(config: &std::path::Path, threads: usize) -> anyhow::Result<Retrainer> {
        let exe = std::env::current_exe()?;
        let has_nice = std::process::Command::new("nice")
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());
        let mut cmd = if has_nice {
            let mut c = std::process::Command::new("nice");
            c.args(["-n", "15"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        cmd.args([
            "--threads",
            &threads.max(1).to_string(),
            "retrain",
            "--config",
        ])
        .arg(config)
        .stdout(std::process::Stdio::null());
        Ok(Retrainer(cmd.spawn()?))
    }
}

impl Drop for Retrainer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
