//! slimformer's REST service, in three parts as text-embeddings-inference does it:
//! the HTTP router ([`routes`]) apart from the batching queue ([`batcher`]) apart
//! from the compute backend ([`engine`]), plus hot reload ([`reload`]) and
//! Prometheus metrics ([`metrics`]).

pub mod batcher;
pub mod config;
pub mod engine;
pub mod errors;
pub mod heap;
pub mod http;
pub mod log_sink;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod reload;
pub mod routes;
pub mod state;

pub use config::{MemoryLimit, ModelSource, ModelSpec, ServerConfig, TlsFiles};

/// Loads the model, binds, prints one JSON line `{"listening": ADDR, ...}` on stdout,
/// and serves until SIGTERM or Ctrl-C (then stops accepting, drains, returns).
pub fn serve(config: ServerConfig) -> anyhow_like::Result<()> {
    http::raise_descriptor_limit();
    memory::spawn_returner();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(config.http_threads.max(1))
        .build()?;
    runtime.block_on(async move {
        // A bad certificate stops the start before any model is loaded.
        let tls = match &config.tls {
            Some(files) => Some(http::tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let state = reload::start(config.clone()).await?;
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
        let addr = listener.local_addr()?;
        reload::spawn_watchers(state.clone());
        println!("{}", announcement(&state, &config, addr));
        tracing::info!(%addr, "serving");
        let app = routes::router(state.clone());
        http::serve(
            listener,
            app,
            tls,
            config.connections,
            config.max_body_bytes,
            state.metrics.clone(),
            shutdown_signal(),
            config.request_timeout + std::time::Duration::from_secs(5),
        )
        .await;
        state.close();
        tracing::info!("stopped: every request in flight was answered");
        Ok(())
    })
}

/// The line that says where the server listens and what it serves. Its own function
/// so that the engines it looks at are let go at once: an engine held here would stay
/// in memory, weights and all, after a reload had replaced it.
fn announcement(
    state: &state::AppState,
    config: &ServerConfig,
    addr: std::net::SocketAddr,
) -> serde_json::Value {
    let default = &state.models[0];
    let engine = default.engine.current();
    let models: Vec<serde_json::Value> = state
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "version": m.engine.current().map(|e| e.version.clone()),
            })
        })
        .collect();
    serde_json::json!({
        "listening": addr.to_string(),
        "scheme": if config.tls.is_some() { "https" } else { "http" },
        "model": engine.as_ref().map(|e| default.shown_name(e)),
        "version": engine.as_ref().map(|e| e.version.clone()),
        "models": models,
        "memory": state.memory.get().map(|m| &m.plan),
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: no new connections, draining requests in flight");
}

/// The error type of [`serve`]: anything that stops the server from starting.
pub mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}
