//! text-embeddings-inference's routes, in its request and response shapes: a
//! client written for TEI works unchanged. The model is the default one unless
//! `X-Model` names another.

use super::embedding::{embed_plan, embeddings_of, EmbedOptions};
use super::{parse_json, pick_model, run_task, truncation, Direction};
use crate::engine::{Task, TaskOutput};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use slimformer::pipeline::ClassifyOutput;
use slimformer::tokenize::TextInput;
use std::sync::Arc;

/// A text or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum TeiTexts {
    One(String),
    Many(Vec<String>),
}

pub(super) fn tei_texts(t: TeiTexts) -> Vec<TextInput> {
    match t {
        TeiTexts::One(s) => vec![TextInput::Single(s)],
        TeiTexts::Many(v) => v.into_iter().map(TextInput::Single).collect(),
    }
}

#[derive(Deserialize)]
pub(super) struct EmbedRequest {
    inputs: TeiTexts,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

pub(super) async fn embed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<Vec<f32>>>> {
    let req: EmbedRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, None)?;
    let inputs = tei_texts(req.inputs);
    let options = EmbedOptions {
        normalize: Some(req.normalize),
        dimensions: req.dimensions,
        prompt_name: req.prompt_name,
        ..EmbedOptions::default()
    };
    let plan = embed_plan(&state, model, options)?;
    let prompted = plan.inputs(&state, &inputs)?;
    let cut = truncation(req.truncate, req.truncation_direction);
    let run = run_task(&state, model, plan.task, &prompted, cut).await?;
    Ok(Json(embeddings_of(run.outputs)))
}

#[derive(Deserialize)]
pub(super) struct EmbedAllRequest {
    inputs: TeiTexts,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    #[serde(default)]
    prompt_name: Option<String>,
}

/// Every token's last hidden state, special tokens included, as TEI gives them.
pub(super) async fn embed_all(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<Vec<Vec<f32>>>>> {
    let req: EmbedAllRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, None)?;
    let inputs = tei_texts(req.inputs);
    let options = EmbedOptions {
        prompt_name: req.prompt_name,
        ..EmbedOptions::default()
    };
    let plan = embed_plan(&state, model, options)?;
    let prompted = plan.inputs(&state, &inputs)?;
    let cut = truncation(req.truncate, req.truncation_direction);
    let run = run_task(&state, model, Task::EmbedAll, &prompted, cut).await?;
    Ok(Json(
        run.outputs
            .into_iter()
            .map(|o| match o {
                TaskOutput::Tokens(t) => t,
                _ => Vec::new(),
            })
            .collect(),
    ))
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
pub(super) struct PredictRequest {
    inputs: PredictInputs,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
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

pub(super) async fn predict(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let req: PredictRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, None)?;
    let (inputs, batched) = match req.inputs {
        PredictInputs::Text(t) => (vec![TextInput::Single(t)], false),
        PredictInputs::Sequence(v) => (vec![sequence(v)?], false),
        PredictInputs::Batch(b) => (
            b.into_iter().map(sequence).collect::<ApiResult<Vec<_>>>()?,
            true,
        ),
    };
    let cut = truncation(req.truncate, req.truncation_direction);
    let run = run_task(&state, model, Task::Classify, &inputs, cut).await?;
    let mut all: Vec<Vec<serde_json::Value>> = run.outputs.into_iter().map(label_scores).collect();
    Ok(Json(if batched {
        serde_json::json!(all)
    } else {
        serde_json::json!(all.pop().unwrap_or_default())
    }))
}

#[derive(Deserialize)]
pub(super) struct TokenizeRequest {
    inputs: TeiTexts,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    #[serde(default)]
    prompt_name: Option<String>,
}

/// Each text's tokens as TEI lists them: id, the text it covers, whether it is
/// special, and its byte offsets (none for special tokens). Never truncated.
pub(super) async fn tokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<Vec<serde_json::Value>>>> {
    let req: TokenizeRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, None)?;
    let inputs = tei_texts(req.inputs);
    let options = EmbedOptions {
        prompt_name: req.prompt_name,
        ..EmbedOptions::default()
    };
    let plan = embed_plan(&state, model, options)?;
    let prompted = plan.inputs(&state, &inputs)?;
    let engine = model.current()?;
    let mut out = Vec::with_capacity(prompted.len());
    for (i, input) in prompted.iter().enumerate() {
        let TextInput::Single(text) = input else {
            continue;
        };
        let e = engine
            .pipeline
            .tokenizer
            .encode_plain(input, req.add_special_tokens)
            .map_err(|e| ApiError::new(ErrorType::InvalidInput, format!("input {i}: {e}")))?;
        // Character offsets to byte offsets, as TEI reports them.
        let byte_at: Vec<usize> = text
            .char_indices()
            .map(|(b, _)| b)
            .chain([text.len()])
            .collect();
        let byte = |c: usize| byte_at.get(c).copied().unwrap_or(text.len());
        let tokens = e
            .ids
            .iter()
            .zip(&e.tokens)
            .zip(&e.offsets)
            .zip(&e.special_tokens_mask)
            .map(|(((id, token), &(start, stop)), special)| {
                if *special == 1 {
                    serde_json::json!({"id": id, "text": token, "special": true, "start": null, "stop": null})
                } else {
                    let (start, stop) = (byte(start), byte(stop));
                    let covered = text.get(start..stop).unwrap_or(token);
                    serde_json::json!({"id": id, "text": covered, "special": false, "start": start, "stop": stop})
                }
            })
            .collect();
        out.push(tokens);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DecodeIds {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
pub(super) struct DecodeRequest {
    ids: DecodeIds,
    #[serde(default = "yes")]
    skip_special_tokens: bool,
}

/// The text of each list of ids.
pub(super) async fn decode(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<String>>> {
    let req: DecodeRequest = parse_json(&state, &headers, &body)?;
    let model = pick_model(&state, &headers, None)?;
    let lists = match req.ids {
        DecodeIds::One(ids) => vec![ids],
        DecodeIds::Many(lists) => lists,
    };
    let limit = state.config.max_client_batch_size;
    if lists.len() > limit {
        return Err(ApiError::new(
            ErrorType::PayloadTooLarge,
            format!(
                "{} id lists, more than the server takes in one request ({limit})",
                lists.len()
            ),
        ));
    }
    let engine = model.current()?;
    let tokenizer = &engine.pipeline.tokenizer;
    let vocab = tokenizer.vocab_size();
    lists
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            if ids.is_empty() {
                return Err(ApiError::new(
                    ErrorType::InvalidInput,
                    format!("ids {i} is empty"),
                ));
            }
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::new(
                    ErrorType::InvalidInput,
                    format!("ids {i}: {bad} is not a token id (the vocabulary has {vocab})"),
                ));
            }
            tokenizer
                .decode(ids, req.skip_special_tokens)
                .map_err(|e| ApiError::new(ErrorType::InvalidInput, format!("ids {i}: {e}")))
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Json)
}
