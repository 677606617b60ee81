//! What every route shares: the configuration, the models being served (each with
//! its engine and its own batching queue), the metrics, and the admission limit.

use crate::batcher::Batcher;
use crate::config::{ModelSource, ModelSpec, ServerConfig};
use crate::engine::{Engine, EngineSlot};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::metrics::Metrics;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// One served model: where it comes from, the version serving now, and its queue.
/// A model has its own inference thread, so a model busy with long texts does not
/// hold up requests for another.
pub struct ServedModel {
    /// The name it is listed and labelled by.
    pub name: String,
    /// Whether requests must name it exactly; the lone unnamed model of `serve DIR`
    /// answers to any name.
    pub named: bool,
    pub source: ModelSource,
    pub engine: EngineSlot,
    pub batcher: Batcher,
}

impl ServedModel {
    /// The name responses carry: the configured one, else the loaded folder's.
    pub fn shown_name(&self, engine: &Engine) -> String {
        if self.named {
            self.name.clone()
        } else {
            engine.name.clone()
        }
    }

    /// The version serving now, or 503 until one has loaded.
    pub fn current(&self) -> ApiResult<Arc<Engine>> {
        self.engine.current().ok_or_else(|| {
            ApiError::new(
                ErrorType::NotReady,
                format!("the model {} is not loaded yet", self.name),
            )
        })
    }
}

pub struct AppState {
    pub config: ServerConfig,
    /// In the configuration's order; the first is the default.
    pub models: Vec<Arc<ServedModel>>,
    pub metrics: Arc<Metrics>,
    /// Requests admitted at once (`max_concurrent_requests`); past it, 429.
    pub(crate) permits: Arc<Semaphore>,
    /// The requests' memory budget, under a memory limit (set once the models load).
    pub memory: std::sync::OnceLock<crate::memory::MemoryBudget>,
    /// The next request id, for requests that bring none.
    pub(crate) next_id: AtomicU64,
}

impl AppState {
    /// Starts one inference thread per model; no engine is loaded yet.
    pub fn new(config: ServerConfig) -> AppState {
        let metrics = Arc::new(Metrics::default());
        let models = config
            .models
            .iter()
            .map(|spec| {
                let name = model_name(spec);
                Arc::new(ServedModel {
                    batcher: Batcher::start(config.max_batch_tokens, metrics.clone(), name.clone()),
                    named: spec.name.is_some(),
                    name,
                    source: spec.source.clone(),
                    engine: EngineSlot::default(),
                })
            })
            .collect();
        AppState {
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            memory: std::sync::OnceLock::new(),
            models,
            metrics,
            config,
            next_id: AtomicU64::new(1),
        }
    }

    /// The model a request names, else the default one; an unknown name is 404
    /// with the names there are.
    pub fn model(&self, name: Option<&str>) -> ApiResult<&Arc<ServedModel>> {
        let Some(name) = name else {
            return Ok(&self.models[0]);
        };
        if let Some(m) = self.models.iter().find(|m| m.name == name) {
            return Ok(m);
        }
        match self.models.as_slice() {
            [only] if !only.named => Ok(only),
            _ => Err(ApiError::new(
                ErrorType::ModelNotFound,
                format!(
                    "no model named {name:?}: this server has {}",
                    self.model_names().join(", ")
                ),
            )),
        }
    }

    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// Stops every inference thread once its queued jobs are done.
    pub fn close(&self) {
        for m in &self.models {
            m.batcher.close();
        }
    }
}

/// A model's name: the configured one, else its folder's (a registry's folder for
/// a registry).
fn model_name(spec: &ModelSpec) -> String {
    if let Some(name) = &spec.name {
        return name.clone();
    }
    let dir: &Path = match &spec.source {
        ModelSource::Dir(d) | ModelSource::Registry(d) => d,
    };
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
