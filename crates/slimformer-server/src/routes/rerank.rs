//! Reranking: TEI's `/rerank` and the Cohere/Jina `/v1/rerank`. A cross-encoder
//! scores each (query, document) pair; an embedding model ranks by cosine.

use super::embedding::embeddings_of;
use super::{parse_json, pick_model, run_task, truncation, Direction};
use crate::engine::{Engine, Task, TaskOutput};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::state::{AppState, ServedModel};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use slimformer::rerank::{self, Scorer};
use slimformer::tokenize::{TextInput, Truncation};
use std::sync::Arc;

/// The scores, in document order, with the tokens read and the engine that ran.
struct Scored {
    scores: Vec<f32>,
    tokens: usize,
    engine: Arc<Engine>,
}

/// Each document's score against the query. A cross-encoder's documents are cut to
/// fit beside the query, never the query.
async fn rerank_scores(
    state: &AppState,
    model: &ServedModel,
    query: &str,
    documents: &[String],
    raw: bool,
    cut: Truncation,
) -> ApiResult<Scored> {
    let invalid = |m: &str| ApiError::new(ErrorType::InvalidInput, m.to_string());
    if super::is_blank(query) {
        return Err(invalid("the query is empty"));
    }
    if documents.is_empty() {
        return Err(invalid("no documents to rank"));
    }
    let engine = model.current()?;
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
        let run = run_task(state, model, Task::Rerank { raw }, &pairs, cut).await?;
        let scores = run
            .outputs
            .into_iter()
            .map(|o| match o {
                TaskOutput::Score(s) => s,
                _ => f32::NAN,
            })
            .collect();
        return Ok(Scored {
            scores,
            tokens: run.tokens,
            engine: run.engine,
        });
    };
    // An embedding model: the cosine of the query's and each document's embedding.
    let task = Task::Embed {
        pooling: settings.pooling.clone(),
        normalize: false,
        dimensions: None,
    };
    let docs: Vec<TextInput> = documents.iter().cloned().map(TextInput::Single).collect();
    let query_input = [TextInput::Single(query.into())];
    let query_run = run_task(state, model, task.clone(), &query_input, cut).await?;
    let docs_run = run_task(state, model, task, &docs, cut).await?;
    let query_vector = embeddings_of(query_run.outputs).remove(0);
    let scores = embeddings_of(docs_run.outputs)
        .iter()
        .map(|d| rerank::cosine(&query_vector, d))
        .collect();
    Ok(Scored {
        scores,
        tokens: query_run.tokens + docs_run.tokens,
        engine: docs_run.engine,
    })
}

/// text-embeddings-inference's `/rerank` request.
#[derive(Deserialize)]
pub(super) struct TeiRerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
}

pub(super) async fn tei_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: TeiRerankRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, None)?;
    let cut = truncation(req.truncate, req.truncation_direction);
    let scored = rerank_scores(&state, model, &req.query, &req.texts, req.raw_scores, cut).await?;
    let scores = &scored.scores;
    let ranked: Vec<serde_json::Value> = rerank::ranked(scores, None)
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
pub(super) struct CohereRerankRequest {
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<RerankDocument>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: bool,
}

pub(super) async fn cohere_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: CohereRerankRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, req.model.as_deref())?;
    let documents: Vec<String> = req
        .documents
        .into_iter()
        .map(|d| match d {
            RerankDocument::Text(t) | RerankDocument::Object { text: t } => t,
        })
        .collect();
    // A top_n above the number of documents gives them all, as Cohere's API does.
    match req.top_n {
        Some(0) => {
            return Err(ApiError::new(
                ErrorType::InvalidInput,
                "top_n must be at least 1",
            ))
        }
        // The document's bound: the largest integer every JSON client holds exactly.
        Some(n) if n as u64 > crate::openapi::LARGEST_EXACT_INTEGER => {
            return Err(ApiError::new(
                ErrorType::InvalidInput,
                format!(
                    "top_n must be at most {}",
                    crate::openapi::LARGEST_EXACT_INTEGER
                ),
            ))
        }
        _ => {}
    }
    let cut = Truncation::default();
    let scored = rerank_scores(&state, model, &req.query, &documents, false, cut).await?;
    let scores = &scored.scores;
    let results: Vec<serde_json::Value> = rerank::ranked(scores, req.top_n)
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
        "model": req.model.unwrap_or_else(|| model.shown_name(&scored.engine)),
        "results": results,
        "usage": {"total_tokens": scored.tokens},
    })))
}
