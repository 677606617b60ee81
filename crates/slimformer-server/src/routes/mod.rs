//! The HTTP router: request parsing and validation, auth, request ids, metrics,
//! which model a request is for, and the JSON shapes of each route family.
//! Inference goes through the chosen model's [`Batcher`](crate::batcher::Batcher).

mod embedding;
mod native;
mod openai;
mod ops;
mod rerank;
mod tei;

use crate::batcher::Job;
use crate::engine::{Engine, Task, TaskOutput};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::memory::{self, Held, Refusal};
use crate::state::{AppState, ServedModel};
use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use slimformer::tokenize::{TextInput, Truncation, TruncationSide};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use tracing::Instrument;

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/classify", post(native::classify))
        .route("/v1/embed", post(native::embed))
        .route("/v1/fill-mask", post(native::fill_mask))
        .route("/v1/tag", post(native::tag))
        .route("/v1/tokenize", post(native::tokenize))
        .route("/v1/models", get(native::models))
        .route("/info", get(native::info))
        .route("/embed", post(tei::embed))
        .route("/embed_all", post(tei::embed_all))
        .route("/predict", post(tei::predict))
        .route("/tokenize", post(tei::tokenize))
        .route("/decode", post(tei::decode))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/rerank", post(rerank::tei_rerank))
        .route("/v1/rerank", post(rerank::cohere_rerank))
        .route("/openapi.json", get(ops::openapi))
        .route("/docs", get(ops::docs))
        .route("/admin/reload", post(ops::admin_reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

// ----- middleware -----

/// Request id, structured log line, metrics by route and status.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:x}", state.next_id.fetch_add(1, Ordering::Relaxed)));
    let method = req.method().clone();
    state.metrics.in_flight_add(1);
    // Every log line of the request carries its id (the span), and so does an error
    // body (the task-local the error reads).
    let span = tracing::info_span!("request", request_id = %id);
    // The memory the request reserves stays reserved until its answer is sent.
    let held = Held::default();
    let mut response = crate::errors::REQUEST_ID
        .scope(id.clone(), held.scope(next.run(req).instrument(span)))
        .await;
    state.metrics.in_flight_add(-1);
    let status = response.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    state.metrics.observe_request(&route, status, secs);
    tracing::info!(request_id = %id, %method, %route, status, ms = secs * 1e3, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    held.attach(response)
}

/// Bearer API key on every route but health, ready and metrics.
async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                ErrorType::Unauthorized,
                "missing or wrong API key (Authorization: Bearer KEY)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorType::NotFound, "no such route (see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorType::MethodNotAllowed,
        "this route does not take that method",
    )
}

// ----- request bodies -----

/// A JSON body: content type checked (415), size limited (413), UTF-8 and JSON
/// syntax and types checked (400).
fn parse_json<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<T> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ApiError::new(
            ErrorType::UnsupportedMediaType,
            format!("expected Content-Type: application/json, got {content_type:?}"),
        ));
    }
    if body.len() > state.config.max_body_bytes {
        return Err(ApiError::new(
            ErrorType::PayloadTooLarge,
            format!(
                "the body has {} bytes, more than the limit of {}",
                body.len(),
                state.config.max_body_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            ErrorType::InvalidJson,
            format!("the body is not UTF-8: {e}"),
        )
    })?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::new(ErrorType::InvalidJson, format!("invalid request: {e}")))
}

/// The model a request is for: the body's `"model"`, else the `X-Model` header,
/// else the server's default model.
fn pick_model<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    named: Option<&str>,
) -> ApiResult<&'a Arc<ServedModel>> {
    let header = headers.get("x-model").and_then(|v| v.to_str().ok());
    state.model(named.or(header))
}

/// The model a request names in its `?model=` query, else the header or default.
#[derive(Deserialize, Default)]
struct ModelQuery {
    model: Option<String>,
}

/// text-embeddings-inference's `truncation_direction`: which end of a too-long
/// input is cut.
#[derive(Deserialize, Default, Clone, Copy)]
enum Direction {
    #[serde(rename = "right", alias = "Right")]
    #[default]
    Right,
    #[serde(rename = "left", alias = "Left")]
    Left,
}

/// A request's `truncate` (`false`: 413 for a too-long input; unset: the server's
/// setting) and `truncation_direction`.
fn truncation(truncate: Option<bool>, direction: Direction) -> Truncation {
    Truncation {
        enabled: truncate,
        side: match direction {
            Direction::Right => TruncationSide::Right,
            Direction::Left => TruncationSide::Left,
        },
        keep_first: false,
    }
}

/// One input of a `/v1` route: a text, or `{"text", "text_pair"}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum InputItem {
    Text(String),
    Pair { text: String, text_pair: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(InputItem),
    Many(Vec<InputItem>),
}

impl Inputs {
    fn into_vec(self) -> Vec<TextInput> {
        let item = |i: InputItem| match i {
            InputItem::Text(t) => TextInput::Single(t),
            InputItem::Pair { text, text_pair } => TextInput::Pair(text, text_pair),
        };
        match self {
            Inputs::One(i) => vec![item(i)],
            Inputs::Many(v) => v.into_iter().map(item).collect(),
        }
    }
}

fn shown(input: &TextInput) -> String {
    match input {
        TextInput::Single(t) => t.clone(),
        TextInput::Pair(a, b) => format!("{a}\t{b}"),
    }
}

// ----- running a task -----

struct TaskRun {
    engine: Arc<Engine>,
    outputs: Vec<TaskOutput>,
    tokens: usize,
}

fn validate_inputs(state: &AppState, inputs: &[TextInput]) -> ApiResult<()> {
    if inputs.is_empty() {
        return Err(ApiError::new(ErrorType::InvalidInput, "no inputs"));
    }
    if inputs.len() > state.config.max_client_batch_size {
        return Err(ApiError::new(
            ErrorType::PayloadTooLarge,
            format!(
                "{} inputs, more than the server takes in one request ({})",
                inputs.len(),
                state.config.max_client_batch_size
            ),
        ));
    }
    for (i, input) in inputs.iter().enumerate() {
        let empty = match input {
            TextInput::Single(t) => is_blank(t),
            TextInput::Pair(a, b) => is_blank(a) || is_blank(b),
        };
        if empty {
            return Err(ApiError::new(
                ErrorType::InvalidInput,
                format!("input {i} is empty"),
            ));
        }
    }
    Ok(())
}

/// Whether a text holds nothing but whitespace as JSON Schema's `\s` (ECMA-262) counts
/// it, so that the document's `"pattern": "\\S"` and the server agree on which texts
/// are blank: Rust's `char::is_whitespace` differs from it in U+0085 (not whitespace
/// there) and U+FEFF (whitespace there).
pub(super) fn is_blank(text: &str) -> bool {
    text.chars()
        .all(|c| c == '\u{feff}' || (c.is_whitespace() && c != '\u{85}'))
}

/// A tokenization failure of input `i`: 413 when it is too long with truncation off,
/// else 422.
fn encode_error(i: usize, e: slimformer::Error) -> ApiError {
    let kind = match e {
        slimformer::Error::TooLong { .. } => ErrorType::PayloadTooLarge,
        _ => ErrorType::InvalidInput,
    };
    ApiError::new(kind, format!("input {i}: {e}"))
}

/// The model's serving version, if it has the head `task` needs.
fn engine_for(model: &ServedModel, task: &Task) -> ApiResult<Arc<Engine>> {
    let engine = model.current()?;
    let missing = match task {
        Task::Classify if engine.classifier.is_none() => Some("classification"),
        Task::FillMask { .. } if engine.mlm.is_none() => Some("masked-LM"),
        Task::Tag { .. } if engine.tagger.is_none() => Some("token-classification"),
        _ => None,
    };
    if let Some(head) = missing {
        return Err(ApiError::new(
            ErrorType::UnsupportedTask,
            format!(
                "the model {} has no {head} head (its tasks: {})",
                model.shown_name(&engine),
                engine.tasks().join(", ")
            ),
        ));
    }
    Ok(engine)
}

/// Under a memory limit, reserves what the request's hidden states and answer will
/// hold, until the answer is sent: 413 when it can never fit, 429 when it does not
/// fit now.
fn reserve_memory(
    state: &AppState,
    engine: &Engine,
    task: &Task,
    texts: &[slimformer::tokenize::Encoded],
) -> ApiResult<()> {
    let Some(budget) = state.memory.get() else {
        return Ok(());
    };
    let shape = &engine.memory;
    let rows = texts.len() as u64;
    let tokens: u64 = texts.iter().map(|t| t.ids.len() as u64).sum();
    let longest = texts.iter().map(|t| t.ids.len() as u64).max().unwrap_or(0);
    // The numbers of the answer: a vector a text, a vector a token, or a few labels.
    let values = match task {
        Task::Embed { dimensions, .. } => rows * dimensions.map_or(shape.hidden, |d| d as u64),
        Task::EmbedAll => tokens * shape.hidden,
        Task::Tag { .. } => tokens * 16,
        Task::FillMask { top_k } => {
            // No more predictions than the vocabulary has.
            let top_k = (*top_k as u64).min(engine.pipeline.tokenizer.vocab_size() as u64);
            rows * (top_k + 1) * 16
        }
        Task::Classify | Task::Rerank { .. } => rows * 64,
    };
    let planned_len = engine
        .pipeline
        .tokenizer
        .max_len()
        .unwrap_or(memory::PLANNED_LEN_WITHOUT_LIMIT) as u64;
    let bytes = memory::request_bytes(shape, tokens, values)
        + memory::extra_forward_bytes(shape, planned_len, rows, longest);
    let refusal = match budget.reserve(bytes) {
        Ok(reservation) => {
            Held::keep(reservation);
            return Ok(());
        }
        Err(refusal) => refusal,
    };
    state
        .metrics
        .memory_refusals
        .fetch_add(1, Ordering::Relaxed);
    Err(match refusal {
        Refusal::TooLarge { needs, budget } => ApiError::new(
            ErrorType::PayloadTooLarge,
            format!(
                "this request needs about {} of memory, more than the {} the server's memory \
                 limit leaves for requests: send fewer or shorter inputs",
                memory::mb(needs),
                memory::mb(budget)
            ),
        ),
        Refusal::Busy { needs, free } => ApiError::new(
            ErrorType::Overloaded,
            format!(
                "not enough memory free for this request now (it needs about {}, {} is free): \
                 retry later",
                memory::mb(needs),
                memory::mb(free)
            ),
        ),
    })
}

/// Tokenizes the inputs, queues them on the model's batcher and waits for the
/// outputs, under the admission limit and the request timeout.
async fn run_task(
    state: &AppState,
    model: &ServedModel,
    task: Task,
    inputs: &[TextInput],
    truncation: Truncation,
) -> ApiResult<TaskRun> {
    validate_inputs(state, inputs)?;
    let _permit = state.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorType::Overloaded,
            format!(
                "more than {} requests in flight: retry later",
                state.config.max_concurrent_requests
            ),
        )
    })?;
    let engine = engine_for(model, &task)?;
    let mut texts = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let encoded = engine
            .encode(&task, input, truncation)
            .map_err(|e| encode_error(i, e))?;
        if let Some(n) = encoded.truncated_from {
            tracing::debug!(input = i, tokens = n, "input truncated");
        }
        texts.push(encoded);
    }
    if state.config.log_texts {
        let shown: Vec<String> = inputs.iter().map(shown).collect();
        tracing::info!(texts = ?shown, "inputs");
    }
    reserve_memory(state, &engine, &task, &texts)?;
    let tokens = texts.iter().map(|t| t.ids.len()).sum();
    let (tx, rx) = oneshot::channel();
    state.metrics.model_request(&model.name);
    state.metrics.queue_add(&model.name, 1);
    let job = Job {
        engine: engine.clone(),
        task,
        texts,
        reply: tx,
    };
    if !model.batcher.submit(job) {
        state.metrics.queue_add(&model.name, -1);
        return Err(ApiError::new(
            ErrorType::NotReady,
            "the server is shutting down",
        ));
    }
    let too_long = || {
        ApiError::new(
            ErrorType::Timeout,
            "the request took longer than the server's timeout",
        )
    };
    let deadline = tokio::time::Instant::now() + state.config.request_timeout;
    let reply = tokio::time::timeout_at(deadline, rx)
        .await
        .map_err(|_| too_long())?;
    // The timer ticks in milliseconds: an answer that came after the deadline
    // between two ticks is late too.
    if tokio::time::Instant::now() > deadline {
        return Err(too_long());
    }
    let reply = reply.map_err(|_| {
        ApiError::new(
            ErrorType::Internal,
            "the inference thread dropped the request",
        )
    })?;
    let outputs = reply.map_err(|e| ApiError::new(ErrorType::Internal, e))?;
    Ok(TaskRun {
        engine,
        outputs,
        tokens,
    })
}

/// `[{"text", ...output}]`, the command line's objects.
fn records(inputs: &[TextInput], outputs: Vec<TaskOutput>) -> Json<Vec<serde_json::Value>> {
    Json(
        inputs
            .iter()
            .zip(outputs)
            .map(|(input, out)| {
                let mut v = serde_json::json!({"text": shown(input)});
                if let (Some(obj), serde_json::Value::Object(fields)) = (
                    v.as_object_mut(),
                    serde_json::to_value(out).unwrap_or_default(),
                ) {
                    obj.extend(fields);
                }
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::is_blank;

    #[test]
    fn blank_texts_are_those_json_schema_calls_whitespace() {
        assert!(is_blank(" \t\n\u{a0}\u{2028}\u{3000}\u{feff}"));
        // U+0085 is whitespace to Rust, not to ECMA-262's `\s`: a text.
        assert!(!is_blank("\u{85}"));
        assert!(!is_blank(" a "));
        assert!(is_blank(""));
    }
}
