//! Hot reload: a new version is loaded beside the one serving, smoke-tested, and
//! switched to atomically; requests in flight keep the engine they started with (each
//! holds an `Arc`). A version that fails to load or the smoke test is refused and
//! the old one keeps serving. Triggers: the registry's production pointer changing
//! (polled), SIGHUP, and `POST /admin/reload`.

use crate::config::ModelSource;
use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::state::AppState;
use slimformer::pipeline::LengthLimit;
use std::path::PathBuf;
use std::sync::Arc;

/// Starts the server's state and loads the model. A model folder that cannot be
/// loaded stops the start; a registry without a loadable production version
/// starts not ready (503) and is polled until it has one.
pub async fn start(config: ServerConfig) -> Result<Arc<AppState>, ReloadError> {
    let state = Arc::new(AppState::new(config));
    if let Err(e) = reload(&state, true).await {
        match state.config.source {
            ModelSource::Dir(_) => return Err(e),
            ModelSource::Registry(_) => {
                tracing::error!(error = %e, "not ready: waiting for a loadable production version")
            }
        }
    }
    Ok(state)
}

/// The version and folder the source points at now.
pub fn resolve(source: &ModelSource) -> slimformer::Result<(String, PathBuf)> {
    match source {
        ModelSource::Dir(dir) => Ok(("local".into(), dir.clone())),
        ModelSource::Registry(reg) => slimformer_registry::production(reg),
    }
}

/// Why a reload did not switch.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The source does not point at a version (no registry, no PRODUCTION pointer).
    #[error("{0}")]
    Resolve(slimformer::Error),
    /// The version failed to load or failed the smoke test; the old one serves on.
    #[error("version {version} refused: {source}")]
    Refused {
        version: String,
        source: slimformer::Error,
    },
    /// The loading thread stopped (panicked) before it answered.
    #[error("the loader stopped: {0}")]
    LoaderStopped(String),
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    pub version: String,
    pub changed: bool,
}

/// Loads what the source points at, unless it is the version already serving and
/// `force` is off; switches to it if it loads and passes the smoke test.
pub async fn reload(state: &Arc<AppState>, force: bool) -> Result<ReloadOutcome, ReloadError> {
    let _one_at_a_time = state.engine.reloading.lock().await;
    let (version, dir) = resolve(&state.config.source).map_err(ReloadError::Resolve)?;
    if !force {
        if let Some(cur) = state.engine.current() {
            if cur.version == version && cur.dir == dir {
                return Ok(ReloadOutcome {
                    version,
                    changed: false,
                });
            }
        }
    }
    let limit = LengthLimit {
        max_len: state.config.max_input_length,
        no_truncate: state.config.no_truncate,
    };
    let v = version.clone();
    let default_prompt = state.config.default_prompt_name.clone();
    let loaded = tokio::task::spawn_blocking(move || -> slimformer::Result<Engine> {
        let engine = Engine::load(&dir, &v, limit)?;
        // A default prompt the version does not have would fail every request.
        engine
            .embed_settings
            .prompts
            .resolve(default_prompt.as_deref(), None)?;
        engine.smoke_test()?;
        Ok(engine)
    })
    .await
    .map_err(|e| ReloadError::LoaderStopped(e.to_string()))?;
    match loaded {
        Ok(engine) => {
            state.metrics.reloaded(&engine.name, &engine.version);
            tracing::info!(model = %engine.name, version = %engine.version, "serving a new version");
            state.engine.set(Arc::new(engine));
            Ok(ReloadOutcome {
                version,
                changed: true,
            })
        }
        Err(e) => {
            state.metrics.reload_failed();
            if state.engine.current().is_some() {
                tracing::error!(%version, error = %e, "refused a new version; the old one keeps serving");
            } else {
                tracing::error!(%version, error = %e, "cannot load the model");
            }
            Err(ReloadError::Refused { version, source: e })
        }
    }
}

/// The pointer poller (registries) and the SIGHUP handler.
pub fn spawn_watchers(state: Arc<AppState>) {
    if let ModelSource::Registry(_) = state.config.source {
        let s = state.clone();
        tokio::spawn(async move {
            let mut last_failed: Option<String> = None;
            loop {
                tokio::time::sleep(s.config.poll_interval).await;
                let Ok((version, _)) = resolve(&s.config.source) else {
                    continue;
                };
                let last_failed_ref = last_failed.as_deref();
                let serving = s.engine.current().map(|e| e.version.clone());
                // A refused version is not retried until the pointer moves again.
                if serving.as_deref() == Some(&version) || last_failed_ref == Some(&version) {
                    continue;
                }
                last_failed = reload(&s, false).await.err().map(|_| version);
            }
        });
    }
    // Registered before this returns (and before the address is announced), so an
    // early SIGHUP reloads instead of killing the process.
    #[cfg(unix)]
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    #[cfg(unix)]
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let force = matches!(state.config.source, ModelSource::Dir(_));
            let _ = reload(&state, force).await;
        }
    });
}
