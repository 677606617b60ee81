//! Operations: health, readiness, metrics, the OpenAPI document, and reload.

use super::{pick_model, ModelQuery};
use crate::config::ModelSource;
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::reload;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

pub(super) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when every model has a version loaded.
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let default = &state.models[0];
    let mut waiting = Vec::new();
    let mut models = Vec::with_capacity(state.models.len());
    for m in &state.models {
        match m.engine.current() {
            Some(e) => {
                models.push(serde_json::json!({"name": m.shown_name(&e), "version": e.version}))
            }
            None => waiting.push(m.name.clone()),
        }
    }
    if !waiting.is_empty() {
        let message = if state.models.len() == 1 {
            "no model is loaded yet".to_string()
        } else {
            format!("not loaded yet: {}", waiting.join(", "))
        };
        return ApiError::new(ErrorType::NotReady, message).into_response();
    }
    let engine = default.engine.current();
    Json(serde_json::json!({
        "status": "ready",
        "model": engine.as_ref().map(|e| default.shown_name(e)),
        "version": engine.as_ref().map(|e| e.version.clone()),
        "models": models,
    }))
    .into_response()
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.metrics.render();
    // The retraining figures of the default model's registry.
    if let ModelSource::Registry(dir) = &state.models[0].source {
        let dir = dir.clone();
        if let Ok(Some(extra)) =
            tokio::task::spawn_blocking(move || crate::metrics::retrain_metrics(&dir)).await
        {
            text.push_str(&extra);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The OpenAPI document of this server: its models' routes and sizes.
pub(super) async fn openapi(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let engines: Vec<_> = state
        .models
        .iter()
        .filter_map(|m| m.engine.current())
        .collect();
    let mut prompts: Option<Vec<String>> = None;
    for e in &engines {
        let names: Vec<String> = e.embed_settings.prompts.named.keys().cloned().collect();
        prompts = Some(match prompts {
            None => names,
            Some(shared) => shared.into_iter().filter(|n| names.contains(n)).collect(),
        });
    }
    let facts = crate::openapi::ServedFacts {
        tasks: engines.iter().map(|e| e.tasks()).collect(),
        embedding_size: engines.iter().map(|e| e.pipeline.model.hidden_size()).min(),
        vocab_size: engines
            .iter()
            .map(|e| e.pipeline.tokenizer.vocab_size())
            .min(),
        prompts: prompts.unwrap_or_default(),
        max_inputs: state.config.max_client_batch_size,
        mask_tokens: engines
            .iter()
            .filter(|e| e.tasks().contains(&"fill-mask"))
            .filter_map(|e| e.pipeline.tokenizer.mask_token())
            .map(|(token, _)| token)
            .collect(),
    };
    Json(crate::openapi::document_for(&facts))
}

pub(super) async fn docs() -> Html<&'static str> {
    Html(crate::openapi::DOCS_PAGE)
}

/// Reloads the model `?model=` names (or `X-Model`); with neither, every model:
/// one outcome for a lone model, `{"models": {NAME: outcome}}` for several.
pub(super) async fn admin_reload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ModelQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    if state.config.api_key.is_none() {
        return Err(ApiError::new(
            ErrorType::NotFound,
            "no such route: /admin/reload exists only when the server has an API key",
        ));
    }
    let named = query.model.is_some() || headers.contains_key("x-model");
    if named || state.models.len() == 1 {
        let model = pick_model(&state, &headers, query.model.as_deref())?;
        let force = matches!(model.source, ModelSource::Dir(_));
        return match reload::reload(&state, model, force).await {
            Ok(outcome) => Ok(Json(serde_json::to_value(outcome).unwrap_or_default())),
            Err(e) => Err(ApiError::new(ErrorType::ReloadFailed, e.to_string())),
        };
    }
    let mut outcomes = serde_json::Map::new();
    let mut refused = Vec::new();
    for (name, outcome) in reload::reload_all(&state).await {
        match outcome {
            Ok(o) => {
                outcomes.insert(name, serde_json::to_value(o).unwrap_or_default());
            }
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    if !refused.is_empty() {
        return Err(ApiError::new(ErrorType::ReloadFailed, refused.join("; ")));
    }
    Ok(Json(serde_json::json!({"models": outcomes})))
}
