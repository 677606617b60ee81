//! What every route shares: the configuration, the engine being served, the
//! batching queue, the metrics, and the admission limit.

use crate::batcher::Batcher;
use crate::config::ServerConfig;
use crate::engine::EngineSlot;
use crate::metrics::Metrics;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct AppState {
    pub config: ServerConfig,
    pub engine: EngineSlot,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    /// Requests admitted at once (`max_concurrent_requests`); past it, 429.
    pub(crate) permits: Arc<Semaphore>,
    /// The next request id, for requests that bring none.
    pub(crate) next_id: AtomicU64,
}

impl AppState {
    /// Starts the inference thread; no engine is loaded yet.
    pub fn new(config: ServerConfig) -> AppState {
        let metrics = Arc::new(Metrics::default());
        AppState {
            batcher: Batcher::start(config.max_batch_tokens, metrics.clone()),
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            engine: EngineSlot::default(),
            metrics,
            config,
            next_id: AtomicU64::new(1),
        }
    }
}
