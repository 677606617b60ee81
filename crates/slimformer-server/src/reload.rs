//! Hot reload: a new version is loaded beside the one serving, smoke-tested, and
//! switched to atomically; requests in flight keep the engine they started with (each
//! holds an `Arc`). A version that fails to load or the smoke test is refused and
//! the old one keeps serving. Triggers: the registry's production pointer changing
//! (polled), SIGHUP, and `POST /admin/reload`.

use crate::config::ModelSource;
use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::state::{AppState, ServedModel};
use slimformer::pipeline::LengthLimit;
use std::path::PathBuf;
use std::sync::Arc;

/// Starts the server's state and loads every model. A model folder that cannot be
/// loaded stops the start; a registry without a loadable production version
/// starts not ready (503) and is polled until it has one.
pub async fn start(config: ServerConfig) -> Result<Arc<AppState>, ReloadError> {
    let state = Arc::new(AppState::new(config));
    for model in &state.models {
        if let Err(e) = reload(&state, model, true).await {
            match model.source {
                ModelSource::Dir(_) => return Err(e),
                ModelSource::Registry(_) => {
                    tracing::error!(model = %model.name, error = %e, "not ready: waiting for a loadable production version")
                }
            }
        }
    }
    plan_memory(&state)?;
    Ok(state)
}

/// Under a memory limit, sets the requests' budget and lowers the forward passes'
/// tokens where the limit needs it (see [`crate::memory`]).
fn plan_memory(state: &AppState) -> Result<(), ReloadError> {
    use crate::config::MemoryLimit;
    use crate::memory::{self, PlannedModel, PLANNED_LEN_WITHOUT_LIMIT};
    let limit = match state.config.memory_limit {
        MemoryLimit::None => return Ok(()),
        MemoryLimit::Bytes(b) => b,
        MemoryLimit::Auto => match memory::cgroup_limit() {
            Some(b) => b,
            None => return Ok(()),
        },
    };
    let loaded: Vec<PlannedModel> = state
        .models
        .iter()
        .filter_map(|m| m.engine.current())
        .map(|e| PlannedModel {
            shape: e.memory,
            max_len: e
                .pipeline
                .tokenizer
                .max_len()
                .unwrap_or(PLANNED_LEN_WITHOUT_LIMIT) as u64,
        })
        .collect();
    if loaded.len() < state.models.len() {
        tracing::warn!("the memory plan counts only the models loaded at start");
    }
    let resident = memory::resident_bytes().unwrap_or(0);
    let plan = memory::plan(
        limit,
        resident,
        &loaded,
        state.config.max_batch_tokens,
        state.config.max_client_batch_size,
    )
    .map_err(ReloadError::Memory)?;
    if plan.max_batch_tokens < state.config.max_batch_tokens {
        tracing::warn!(
            limit = %memory::mb(limit),
            max_batch_tokens = plan.max_batch_tokens,
            "forward passes split to fit the memory limit (--max-batch-tokens {} would not)",
            state.config.max_batch_tokens
        );
    }
    for model in &state.models {
        model.batcher.set_max_batch_tokens(plan.max_batch_tokens);
    }
    tracing::info!(
        limit = %memory::mb(limit),
        request_budget = %memory::mb(plan.request_budget_bytes),
        max_batch_tokens = plan.max_batch_tokens,
        "memory planned"
    );
    let _ = state
        .memory
        .set(memory::MemoryBudget::new(plan, state.metrics.clone()));
    Ok(())
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
    /// The models do not fit the memory limit.
    #[error("{0}")]
    Memory(String),
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

/// Loads what the model's source points at, unless it is the version already
/// serving and `force` is off; switches to it if it loads and passes the smoke test.
pub async fn reload(
    state: &AppState,
    model: &ServedModel,
    force: bool,
) -> Result<ReloadOutcome, ReloadError> {
    let _one_at_a_time = model.engine.reloading.lock().await;
    let (version, dir) = resolve(&model.source).map_err(ReloadError::Resolve)?;
    if !force {
        if let Some(cur) = model.engine.current() {
            if cur.version == version && cur.dir == dir {
                return Ok(ReloadOutcome {
                    version,
                    changed: false,
                });
            }
        }
    }
    let config: &ServerConfig = &state.config;
    let limit = LengthLimit {
        max_len: config.max_input_length,
        no_truncate: config.no_truncate,
    };
    let v = version.clone();
    // The server's default prompt name is asked of the default model only.
    let is_default = std::ptr::eq(model, &*state.models[0]);
    let default_prompt = config.default_prompt_name.clone().filter(|_| is_default);
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
            state.metrics.reloaded(&model.name, &engine.version);
            tracing::info!(model = %model.name, version = %engine.version, "serving a new version");
            model.engine.set(Arc::new(engine));
            Ok(ReloadOutcome {
                version,
                changed: true,
            })
        }
        Err(e) => {
            state.metrics.reload_failed();
            if model.engine.current().is_some() {
                tracing::error!(model = %model.name, %version, error = %e, "refused a new version; the old one keeps serving");
            } else {
                tracing::error!(model = %model.name, %version, error = %e, "cannot load the model");
            }
            Err(ReloadError::Refused { version, source: e })
        }
    }
}

/// Reloads every model (SIGHUP, `POST /admin/reload` without a model): folders
/// always, registries when their pointer moved.
pub async fn reload_all(state: &AppState) -> Vec<(String, Result<ReloadOutcome, ReloadError>)> {
    let mut outcomes = Vec::with_capacity(state.models.len());
    for model in &state.models {
        let force = matches!(model.source, ModelSource::Dir(_));
        outcomes.push((model.name.clone(), reload(state, model, force).await));
    }
    outcomes
}

/// The pointer poller of each registry model, and the SIGHUP handler.
pub fn spawn_watchers(state: Arc<AppState>) {
    for model in state.models.iter().cloned() {
        if let ModelSource::Registry(_) = model.source {
            let s = state.clone();
            tokio::spawn(async move {
                let mut last_failed: Option<String> = None;
                loop {
                    tokio::time::sleep(s.config.poll_interval).await;
                    let Ok((version, _)) = resolve(&model.source) else {
                        continue;
                    };
                    let serving = model.engine.current().map(|e| e.version.clone());
                    // A refused version is not retried until the pointer moves again.
                    if serving.as_deref() == Some(&version)
                        || last_failed.as_deref() == Some(&version)
                    {
                        continue;
                    }
                    last_failed = reload(&s, &model, false).await.err().map(|_| version);
                }
            });
        }
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
            reload_all(&state).await;
        }
    });
}
