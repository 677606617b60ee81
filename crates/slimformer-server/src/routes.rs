//! The HTTP router: request parsing and validation, auth, request ids, metrics, and
//! the JSON shapes of each route. Inference goes through the [`Batcher`].

use crate::batcher::Job;
use crate::engine::{Engine, Task, TaskOutput};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::reload;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use slimformer::pipeline::ClassifyOutput;
use slimformer::pooling::{self, Pooling};
use slimformer::rerank::{self, Scorer};
use slimformer::tokenize::TextInput;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/embed", post(embed))
        .route("/v1/fill-mask", post(fill_mask))
        .route("/v1/tokenize", post(tokenize))
        .route("/v1/models", get(models))
        .route("/info", get(info))
        .route("/embed", post(tei_embed))
        .route("/predict", post(tei_predict))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/rerank", post(tei_rerank))
        .route("/v1/rerank", post(cohere_rerank))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .route("/admin/reload", post(admin_reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
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
    let mut response = next.run(req).await;
    state.metrics.in_flight_add(-1);
    let status = response.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    state.metrics.observe_request(&route, status, secs);
    tracing::info!(request_id = %id, %method, %route, status, ms = secs * 1e3, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
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
            TextInput::Single(t) => t.trim().is_empty(),
            TextInput::Pair(a, b) => a.trim().is_empty() || b.trim().is_empty(),
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

/// A tokenization failure of input `i`: 413 when it is too long with truncation off,
/// else 422.
fn encode_error(i: usize, e: slimformer::Error) -> ApiError {
    let kind = match e {
        slimformer::Error::TooLong { .. } => ErrorType::PayloadTooLarge,
        _ => ErrorType::InvalidInput,
    };
    ApiError::new(kind, format!("input {i}: {e}"))
}

fn engine_for(state: &AppState, task: &Task) -> ApiResult<Arc<Engine>> {
    let engine = state
        .engine
        .current()
        .ok_or_else(|| ApiError::new(ErrorType::NotReady, "no model is loaded yet"))?;
    let missing = match task {
        Task::Classify if engine.classifier.is_none() => Some("classification"),
        Task::FillMask { .. } if engine.mlm.is_none() => Some("masked-LM"),
        _ => None,
    };
    if let Some(head) = missing {
        return Err(ApiError::new(
            ErrorType::UnsupportedTask,
            format!(
                "the model {} has no {head} head (its tasks: {})",
                engine.name,
                engine.tasks().join(", ")
            ),
        ));
    }
    Ok(engine)
}

async fn run_task(state: &Arc<AppState>, task: Task, inputs: &[TextInput]) -> ApiResult<TaskRun> {
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
    let engine = engine_for(state, &task)?;
    let mut texts = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let encoded = engine
            .encode(&task, input)
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
    let tokens = texts.iter().map(|t| t.ids.len()).sum();
    let (tx, rx) = oneshot::channel();
    state.metrics.queue_add(1);
    let job = Job {
        engine: engine.clone(),
        task,
        texts,
        reply: tx,
    };
    if !state.batcher.submit(job) {
        state.metrics.queue_add(-1);
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

// ----- /v1 routes -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    inputs: Inputs,
}

async fn classify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: ClassifyRequest = parse_json(&state, &headers, &body)?;
    let inputs = req.inputs.into_vec();
    let run = run_task(&state, Task::Classify, &inputs).await?;
    Ok(records(&inputs, run.outputs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default)]
    pooling: Option<String>,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
}

/// What an embedding request may ask, on every embedding route.
#[derive(Default)]
struct EmbedOptions {
    pooling: Option<String>,
    normalize: Option<bool>,
    /// Matryoshka truncation: the first D values (then normalized if asked).
    dimensions: Option<usize>,
    /// One of the model's `prompts`, put before each text.
    prompt_name: Option<String>,
    /// A text put before each text (wins over `prompt_name`).
    prompt: Option<String>,
}

/// An embedding request's task, and the prompt to put before each input.
struct EmbedPlan {
    task: Task,
    prompt: Option<String>,
}

impl EmbedPlan {
    /// The inputs as the model sees them: the prompt before each (first) text.
    /// They are checked as the client sent them (an empty text stays an error).
    fn inputs(&self, state: &AppState, inputs: &[TextInput]) -> ApiResult<Vec<TextInput>> {
        validate_inputs(state, inputs)?;
        Ok(inputs
            .iter()
            .map(|input| match &self.prompt {
                Some(prompt) => input.clone().with_prefix(prompt),
                None => input.clone(),
            })
            .collect())
    }
}

fn embed_plan(state: &AppState, options: EmbedOptions) -> ApiResult<EmbedPlan> {
    let engine = state
        .engine
        .current()
        .ok_or_else(|| ApiError::new(ErrorType::NotReady, "no model is loaded yet"))?;
    let settings = &engine.embed_settings;
    let invalid = |e: slimformer::Error| ApiError::new(ErrorType::InvalidInput, e.to_string());
    let pooling = match options.pooling.as_deref() {
        Some(p) => vec![p
            .parse::<Pooling>()
            .map_err(|e| ApiError::new(ErrorType::InvalidInput, e))?],
        None => settings.pooling.clone(),
    };
    let normalize = options.normalize.unwrap_or(settings.normalize);
    let full = engine.embedding_size(&pooling);
    let dimensions = pooling::checked_dimensions(options.dimensions, full).map_err(invalid)?;
    // The request's prompt, else its prompt name, else the server's defaults, else
    // the model's default prompt name.
    let config = &state.config;
    let prompt = options.prompt.or_else(|| {
        options
            .prompt_name
            .is_none()
            .then(|| config.default_prompt.clone())
            .flatten()
    });
    let name = options.prompt_name.or(config.default_prompt_name.clone());
    let prompt = settings
        .prompts
        .resolve(name.as_deref(), prompt.as_deref())
        .map_err(invalid)?;
    Ok(EmbedPlan {
        task: Task::Embed {
            pooling,
            normalize,
            dimensions,
        },
        prompt,
    })
}

async fn embed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: EmbedRequest = parse_json(&state, &headers, &body)?;
    let inputs = req.inputs.into_vec();
    let options = EmbedOptions {
        pooling: req.pooling,
        normalize: req.normalize,
        dimensions: req.dimensions,
        prompt_name: req.prompt_name,
        prompt: req.prompt,
    };
    let plan = embed_plan(&state, options)?;
    let run = run_task(&state, plan.task.clone(), &plan.inputs(&state, &inputs)?).await?;
    Ok(records(&inputs, run.outputs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FillMaskRequest {
    inputs: Inputs,
    #[serde(default = "default_top_k")]
    top_k: usize,
}

fn default_top_k() -> usize {
    5
}

async fn fill_mask(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: FillMaskRequest = parse_json(&state, &headers, &body)?;
    if req.top_k == 0 {
        return Err(ApiError::new(
            ErrorType::InvalidInput,
            "top_k must be at least 1",
        ));
    }
    let inputs = req.inputs.into_vec();
    let run = run_task(&state, Task::FillMask { top_k: req.top_k }, &inputs).await?;
    Ok(records(&inputs, run.outputs))
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: ClassifyRequest = parse_json(&state, &headers, &body)?;
    let inputs = req.inputs.into_vec();
    validate_inputs(&state, &inputs)?;
    let engine = state
        .engine
        .current()
        .ok_or_else(|| ApiError::new(ErrorType::NotReady, "no model is loaded yet"))?;
    let mut out = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let e = engine
            .pipeline
            .tokenizer
            .encode(input)
            .map_err(|e| encode_error(i, e))?;
        out.push(serde_json::json!({
            "text": shown(input), "ids": e.ids, "tokens": e.tokens, "offsets": e.offsets,
            "truncated_from": e.truncated_from,
        }));
    }
    Ok(Json(out))
}

async fn models(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let e = state
        .engine
        .current()
        .ok_or_else(|| ApiError::new(ErrorType::NotReady, "no model is loaded yet"))?;
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": e.name,
            "object": "model",
            "version": e.version,
            "family": e.pipeline.model.family(),
            "parameters": e.params,
            "quantization": e.quantization,
            "tasks": e.tasks(),
            "rerank": e.reranker.as_ref().map(Scorer::kind).ok(),
            "max_input_length": e.pipeline.tokenizer.max_len(),
        }],
    })))
}

/// text-embeddings-inference's `/info`: what is served and the server's limits.
async fn info(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let e = state
        .engine
        .current()
        .ok_or_else(|| ApiError::new(ErrorType::NotReady, "no model is loaded yet"))?;
    let labels = |names: &[String]| {
        let id2label: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), serde_json::json!(n)))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), serde_json::json!(i)))
            .collect();
        serde_json::json!({"id2label": id2label, "label2id": label2id})
    };
    // As TEI names them: a one-logit classifier is a reranker.
    let model_type = match &e.classifier {
        Some(c) if c.labels.names.len() == 1 => {
            serde_json::json!({"reranker": labels(&c.labels.names)})
        }
        Some(c) => serde_json::json!({"classifier": labels(&c.labels.names)}),
        None => {
            let pooling: Vec<&str> = e.embed_settings.pooling.iter().map(|p| p.name()).collect();
            serde_json::json!({"embedding": {"pooling": pooling.join("+")}})
        }
    };
    let config = &state.config;
    let dtype = match slimformer::layers::precision() {
        slimformer::layers::Precision::Fp32 => "float32",
        slimformer::layers::Precision::Int8 => "int8",
        slimformer::layers::Precision::Bf16 => "bfloat16",
    };
    Ok(Json(serde_json::json!({
        "model_id": e.name,
        "model_sha": null,
        "model_version": e.version,
        "model_dtype": dtype,
        "model_type": model_type,
        "rerank": e.reranker.as_ref().map(Scorer::kind).ok(),
        "prompts": e.embed_settings.prompts.named,
        "max_concurrent_requests": config.max_concurrent_requests,
        "max_input_length": e.pipeline.tokenizer.max_len(),
        "max_batch_tokens": config.max_batch_tokens,
        "max_batch_requests": null,
        "max_client_batch_size": config.max_client_batch_size,
        "auto_truncate": !config.no_truncate,
        "tokenization_workers": config.http_threads,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
    })))
}

// ----- TEI- and OpenAI-compatible routes -----

#[derive(Deserialize)]
#[serde(untagged)]
enum TeiTexts {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct TeiEmbedRequest {
    inputs: TeiTexts,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

fn tei_texts(t: TeiTexts) -> Vec<TextInput> {
    match t {
        TeiTexts::One(s) => vec![TextInput::Single(s)],
        TeiTexts::Many(v) => v.into_iter().map(TextInput::Single).collect(),
    }
}

fn embeddings_of(outputs: Vec<TaskOutput>) -> Vec<Vec<f32>> {
    outputs
        .into_iter()
        .map(|o| match o {
            TaskOutput::Embed(e) => e.embedding,
            _ => Vec::new(),
        })
        .collect()
}

async fn tei_embed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<Vec<f32>>>> {
    let req: TeiEmbedRequest = parse_json(&state, &headers, &body)?;
    if req.truncate == Some(false) && !state.config.no_truncate {
        tracing::debug!(
            "truncate=false asked, but this server truncates long inputs (it was not started with truncation off)"
        );
    }
    let inputs = tei_texts(req.inputs);
    let options = EmbedOptions {
        normalize: Some(req.normalize),
        dimensions: req.dimensions,
        prompt_name: req.prompt_name,
        ..EmbedOptions::default()
    };
    let plan = embed_plan(&state, options)?;
    let run = run_task(&state, plan.task.clone(), &plan.inputs(&state, &inputs)?).await?;
    Ok(Json(embeddings_of(run.outputs)))
}

/// TEI's `/predict` inputs: a text, a pair `[a, b]`, or a batch of `[a]` / `[a, b]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PredictInputs {
    Text(String),
    Sequence(Vec<String>),
    Batch(Vec<Vec<String>>),
}

#[derive(Deserialize)]
struct PredictRequest {
    inputs: PredictInputs,
}

fn sequence(v: Vec<String>) -> ApiResult<TextInput> {
    let mut it = v.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), None, None) => Ok(TextInput::Single(a)),
        (Some(a), Some(b), None) => Ok(TextInput::Pair(a, b)),
        _ => Err(ApiError::new(
            ErrorType::InvalidInput,
            "a sequence is [text] or [text, text_pair]",
        )),
    }
}

fn label_scores(out: TaskOutput) -> Vec<serde_json::Value> {
    match out {
        TaskOutput::Classify(ClassifyOutput::Labels { scores, .. }) => {
            let mut pairs: Vec<(String, f32)> = scores.into_iter().collect();
            pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
            pairs
                .into_iter()
                .map(|(label, score)| serde_json::json!({"label": label, "score": score}))
                .collect()
        }
        TaskOutput::Classify(ClassifyOutput::Regression { score }) => {
            vec![serde_json::json!({"label": "score", "score": score})]
        }
        _ => Vec::new(),
    }
}

async fn tei_predict(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: PredictRequest = parse_json(&state, &headers, &body)?;
    let (inputs, batched) = match req.inputs {
        PredictInputs::Text(t) => (vec![TextInput::Single(t)], false),
        PredictInputs::Sequence(v) => (vec![sequence(v)?], false),
        PredictInputs::Batch(b) => (
            b.into_iter().map(sequence).collect::<ApiResult<Vec<_>>>()?,
            true,
        ),
    };
    let run = run_task(&state, Task::Classify, &inputs).await?;
    let mut all: Vec<Vec<serde_json::Value>> = run.outputs.into_iter().map(label_scores).collect();
    Ok(Json(if batched {
        serde_json::json!(all)
    } else {
        serde_json::json!(all.pop().unwrap_or_default())
    }))
}

#[derive(Deserialize)]
struct OpenAiRequest {
    input: TeiTexts,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// An embedding as OpenAI's `encoding_format: "base64"` has it: the float32 values,
/// little-endian, in standard base64.
fn base64_floats(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: OpenAiRequest = parse_json(&state, &headers, &body)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::new(
                ErrorType::InvalidInput,
                format!("encoding_format {f:?} is not supported: \"float\" or \"base64\""),
            ))
        }
    };
    let inputs = tei_texts(req.input);
    // OpenAI's vectors are unit length, truncated or not.
    let options = EmbedOptions {
        normalize: Some(true),
        dimensions: req.dimensions,
        ..EmbedOptions::default()
    };
    let plan = embed_plan(&state, options)?;
    let run = run_task(&state, plan.task.clone(), &plan.inputs(&state, &inputs)?).await?;
    let data: Vec<serde_json::Value> = embeddings_of(run.outputs)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64 {
                serde_json::json!(base64_floats(&e))
            } else {
                serde_json::json!(e)
            };
            serde_json::json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| run.engine.name.clone()),
        "usage": {"prompt_tokens": run.tokens, "total_tokens": run.tokens},
    })))
}

// ----- reranking -----

/// Each document's score against the query, in document order, and the tokens read.
async fn rerank_scores(
    state: &Arc<AppState>,
    query: &str,
    documents: &[String],
    raw: bool,
) -> ApiResult<(Vec<f32>, usize, Arc<Engine>)> {
    let invalid = |m: &str| ApiError::new(ErrorType::InvalidInput, m.to_string());
    if query.trim().is_empty() {
        return Err(invalid("the query is empty"));
    }
    if documents.is_empty() {
        return Err(invalid("no documents to rank"));
    }
    let engine = state
        .engine
        .current()
        .ok_or_else(|| ApiError::new(ErrorType::NotReady, "no model is loaded yet"))?;
    let embedding = match &engine.reranker {
        Err(why) => return Err(ApiError::new(ErrorType::UnsupportedTask, why.clone())),
        Ok(Scorer::CrossEncoder(_)) => None,
        Ok(Scorer::Embedding(settings)) => Some(settings.clone()),
    };
    let Some(settings) = embedding else {
        let pairs: Vec<TextInput> = documents
            .iter()
            .map(|d| TextInput::Pair(query.into(), d.clone()))
            .collect();
        let run = run_task(state, Task::Rerank { raw }, &pairs).await?;
        let scores = run
            .outputs
            .into_iter()
            .map(|o| match o {
                TaskOutput::Score(s) => s,
                _ => f32::NAN,
            })
            .collect();
        return Ok((scores, run.tokens, run.engine));
    };
    // An embedding model: the cosine of the query's and each document's embedding.
    let task = Task::Embed {
        pooling: settings.pooling.clone(),
        normalize: false,
        dimensions: None,
    };
    let docs: Vec<TextInput> = documents.iter().cloned().map(TextInput::Single).collect();
    let query_run = run_task(state, task.clone(), &[TextInput::Single(query.into())]).await?;
    let docs_run = run_task(state, task, &docs).await?;
    let query_vector = embeddings_of(query_run.outputs).remove(0);
    let scores = embeddings_of(docs_run.outputs)
        .iter()
        .map(|d| rerank::cosine(&query_vector, d))
        .collect();
    Ok((scores, query_run.tokens + docs_run.tokens, docs_run.engine))
}

/// text-embeddings-inference's `/rerank` request.
#[derive(Deserialize)]
struct TeiRerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    /// Documents are always cut to fit beside the query, so TEI's `truncate`
    /// (ignored with the other fields this route does not use) changes nothing.
    #[serde(default)]
    return_text: bool,
}

async fn tei_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: TeiRerankRequest = parse_json(&state, &headers, &body)?;
    let (scores, _, _) = rerank_scores(&state, &req.query, &req.texts, req.raw_scores).await?;
    let ranked: Vec<serde_json::Value> = rerank::ranked(&scores, None)
        .into_iter()
        .map(|i| {
            let mut hit = serde_json::json!({"index": i, "score": scores[i]});
            if req.return_text {
                hit["text"] = serde_json::json!(req.texts[i]);
            }
            hit
        })
        .collect();
    Ok(Json(serde_json::json!(ranked)))
}

/// A Cohere/Jina document: a text, or an object holding one.
#[derive(Deserialize)]
#[serde(untagged)]
enum RerankDocument {
    Text(String),
    Object { text: String },
}

/// The Cohere/Jina `/v1/rerank` request.
#[derive(Deserialize)]
struct CohereRerankRequest {
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<RerankDocument>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: bool,
}

async fn cohere_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: CohereRerankRequest = parse_json(&state, &headers, &body)?;
    let documents: Vec<String> = req
        .documents
        .into_iter()
        .map(|d| match d {
            RerankDocument::Text(t) | RerankDocument::Object { text: t } => t,
        })
        .collect();
    match req.top_n {
        Some(0) => {
            return Err(ApiError::new(
                ErrorType::InvalidInput,
                "top_n must be at least 1",
            ))
        }
        Some(n) if n > documents.len() => {
            return Err(ApiError::new(
                ErrorType::InvalidInput,
                format!("top_n {n} is more than the {} documents", documents.len()),
            ))
        }
        _ => {}
    }
    let (scores, tokens, engine) = rerank_scores(&state, &req.query, &documents, false).await?;
    let results: Vec<serde_json::Value> = rerank::ranked(&scores, req.top_n)
        .into_iter()
        .map(|i| {
            let mut hit = serde_json::json!({"index": i, "relevance_score": scores[i]});
            if req.return_documents {
                hit["document"] = serde_json::json!({"text": documents[i]});
            }
            hit
        })
        .collect();
    Ok(Json(serde_json::json!({
        "model": req.model.unwrap_or_else(|| engine.name.clone()),
        "results": results,
        "usage": {"total_tokens": tokens},
    })))
}

// ----- operations -----

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.engine.current() {
        Some(e) => {
            Json(serde_json::json!({"status": "ready", "model": e.name, "version": e.version}))
                .into_response()
        }
        None => ApiError::new(ErrorType::NotReady, "no model is loaded yet").into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.metrics.render();
    if let crate::config::ModelSource::Registry(dir) = &state.config.source {
        let dir = dir.clone();
        if let Ok(Some(extra)) =
            tokio::task::spawn_blocking(move || crate::metrics::retrain_metrics(&dir)).await
        {
            text.push_str(&extra);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn docs() -> Html<&'static str> {
    Html(crate::openapi::DOCS_PAGE)
}

async fn admin_reload(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    if state.config.api_key.is_none() {
        return Err(ApiError::new(
            ErrorType::NotFound,
            "no such route: /admin/reload exists only when the server has an API key",
        ));
    }
    let force = matches!(state.config.source, crate::config::ModelSource::Dir(_));
    match reload::reload(&state, force).await {
        Ok(outcome) => Ok(Json(serde_json::to_value(outcome).unwrap_or_default())),
        Err(e) => Err(ApiError::new(ErrorType::ReloadFailed, e.to_string())),
    }
}
