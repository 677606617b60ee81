//! OpenAI's `/v1/embeddings`; its `"model"` picks the model.

use super::embedding::{embed_plan, embeddings_of, EmbedOptions};
use super::tei::{tei_texts, TeiTexts};
use super::{parse_json, pick_model, run_task};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use slimformer::tokenize::Truncation;
use std::sync::Arc;

#[derive(Deserialize)]
pub(super) struct EmbeddingsRequest {
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

pub(super) async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: EmbeddingsRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, req.model.as_deref())?;
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
    let plan = embed_plan(&state, model, options)?;
    let prompted = plan.inputs(&state, &inputs)?;
    let run = run_task(&state, model, plan.task, &prompted, Truncation::default()).await?;
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
        "model": req.model.unwrap_or_else(|| model.shown_name(&run.engine)),
        "usage": {"prompt_tokens": run.tokens, "total_tokens": run.tokens},
    })))
}
