//! slimformer's own `/v1` routes (the command line's objects), `/v1/models` and
//! TEI's `/info`.

use super::embedding::{embed_plan, EmbedOptions};
use super::{
    encode_error, parse_json, pick_model, records, run_task, shown, truncation, validate_inputs,
    Direction, Inputs, ModelQuery,
};
use crate::engine::{Engine, Task};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::state::{AppState, ServedModel};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use slimformer::rerank::Scorer;
use slimformer::tagging::Aggregation;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClassifyRequest {
    inputs: Inputs,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
}

pub(super) async fn classify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: ClassifyRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, req.model.as_deref())?;
    let inputs = req.inputs.into_vec();
    let run = run_task(
        &state,
        model,
        Task::Classify,
        &inputs,
        truncation(req.truncate, req.truncation_direction),
    )
    .await?;
    Ok(records(&inputs, run.outputs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbedRequest {
    inputs: Inputs,
    #[serde(default)]
    model: Option<String>,
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
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
}

pub(super) async fn embed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: EmbedRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, req.model.as_deref())?;
    let inputs = req.inputs.into_vec();
    let options = EmbedOptions {
        pooling: req.pooling,
        normalize: req.normalize,
        dimensions: req.dimensions,
        prompt_name: req.prompt_name,
        prompt: req.prompt,
    };
    let plan = embed_plan(&state, model, options)?;
    let prompted = plan.inputs(&state, &inputs)?;
    let run = run_task(
        &state,
        model,
        plan.task,
        &prompted,
        truncation(req.truncate, req.truncation_direction),
    )
    .await?;
    Ok(records(&inputs, run.outputs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FillMaskRequest {
    inputs: Inputs,
    #[serde(default)]
    model: Option<String>,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
}

fn default_top_k() -> usize {
    5
}

pub(super) async fn fill_mask(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: FillMaskRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, req.model.as_deref())?;
    let vocab = model.current()?.pipeline.tokenizer.vocab_size();
    if req.top_k == 0 || req.top_k > vocab {
        return Err(ApiError::new(
            ErrorType::InvalidInput,
            format!("top_k must be between 1 and the vocabulary's size, {vocab}"),
        ));
    }
    let inputs = req.inputs.into_vec();
    let task = Task::FillMask { top_k: req.top_k };
    let run = run_task(
        &state,
        model,
        task,
        &inputs,
        truncation(req.truncate, req.truncation_direction),
    )
    .await?;
    Ok(records(&inputs, run.outputs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TagRequest {
    inputs: Inputs,
    #[serde(default)]
    model: Option<String>,
    /// transformers' `aggregation_strategy`: none (default), simple, first, average, max.
    #[serde(default, alias = "aggregation_strategy")]
    aggregation: Option<String>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
}

pub(super) async fn tag(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: TagRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, req.model.as_deref())?;
    let aggregation = match req.aggregation.as_deref() {
        None => Aggregation::None,
        Some(name) => name.parse::<Aggregation>().map_err(|_| {
            ApiError::new(
                ErrorType::InvalidInput,
                format!(
                    "aggregation {name:?} is unknown: expected none, simple, first, average or max"
                ),
            )
        })?,
    };
    let inputs = req.inputs.into_vec();
    let run = run_task(
        &state,
        model,
        Task::Tag { aggregation },
        &inputs,
        truncation(req.truncate, req.truncation_direction),
    )
    .await?;
    Ok(records(&inputs, run.outputs))
}

pub(super) async fn tokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let req: ClassifyRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, req.model.as_deref())?;
    let inputs = req.inputs.into_vec();
    validate_inputs(&state, &inputs)?;
    let engine = model.current()?;
    let mut out = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let e = engine
            .pipeline
            .tokenizer
            .encode_truncating(input, truncation(req.truncate, req.truncation_direction))
            .map_err(|e| encode_error(i, e))?;
        out.push(serde_json::json!({
            "text": shown(input), "ids": e.ids, "tokens": e.tokens, "offsets": e.offsets,
            "truncated_from": e.truncated_from,
        }));
    }
    Ok(Json(out))
}

/// One model's entry in `/v1/models`.
fn model_entry(model: &ServedModel, e: &Engine) -> serde_json::Value {
    serde_json::json!({
        "id": model.shown_name(e),
        "object": "model",
        "version": e.version,
        "family": e.pipeline.model.family(),
        "parameters": e.params,
        "quantization": e.quantization,
        "tasks": e.tasks(),
        "rerank": e.reranker.as_ref().map(Scorer::kind).ok(),
        "max_input_length": e.pipeline.tokenizer.max_len(),
    })
}

/// Every model the server has, loaded or not (a registry still waiting for a
/// loadable version is listed with `"loaded": false`).
pub(super) async fn models(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<serde_json::Value>> {
    let mut data = Vec::with_capacity(state.models.len());
    for model in &state.models {
        data.push(match model.engine.current() {
            Some(e) => model_entry(model, &e),
            None => serde_json::json!({"id": model.name, "object": "model", "loaded": false}),
        });
    }
    if data.iter().all(|d| d.get("loaded").is_some()) {
        return Err(ApiError::new(ErrorType::NotReady, "no model is loaded yet"));
    }
    Ok(Json(serde_json::json!({"object": "list", "data": data})))
}

/// text-embeddings-inference's `/info` of the default model, or of `?model=`.
pub(super) async fn info(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ModelQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let model = pick_model(&state, &headers, query.model.as_deref())?;
    let e = model.current()?;
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
        "model_id": model.shown_name(&e),
        "model_sha": null,
        "model_version": e.version,
        "model_dtype": dtype,
        "model_type": model_type,
        "models": state.model_names(),
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
