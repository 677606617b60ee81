//! The OpenAPI document of the routes, and a docs page that renders it.

use crate::errors::ErrorType;
use serde_json::{json, Value};

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn errors() -> Value {
    let mut r = serde_json::Map::new();
    for code in ["400", "401", "413", "415", "422", "429", "503", "504"] {
        r.insert(
            code.into(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(r)
}

fn post(summary: &str, request: Value, response: Value) -> Value {
    let mut responses = errors();
    responses["200"] = response;
    json!({"post": {"summary": summary, "requestBody": body(request), "responses": responses}})
}

pub fn document() -> Value {
    let inputs = json!({"oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"oneOf": [
            {"type": "string"},
            {"type": "object", "properties": {"text": {"type": "string"}, "text_pair": {"type": "string"}}, "required": ["text", "text_pair"]}
        ]}}
    ]});
    let dimensions = json!({"type": "integer", "minimum": 1, "description": "keep the first D values (Matryoshka), then normalize if normalizing"});
    let prompt_name = json!({"type": "string", "description": "one of the model's prompts (config_sentence_transformers.json), put before each text"});
    let records =
        |extra: Value| json!({"type": "array", "items": {"type": "object", "properties": extra}});
    let error_types: Vec<&str> = ErrorType::ALL.iter().map(|t| t.name()).collect();
    json!({
        "openapi": "3.0.3",
        "info": {"title": "slimformer", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Transformer encoders served from Rust: classification, embeddings, fill-mask."},
        "paths": {
            "/v1/classify": post("Sequence classification (as `slimformer classify`)",
                json!({"type": "object", "properties": {"inputs": inputs}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"text": {"type": "string"}, "label": {"type": "string"}, "scores": {"type": "object"}})))),
            "/v1/embed": post("Sentence embeddings (as `slimformer embed`)",
                json!({"type": "object", "properties": {"inputs": inputs, "pooling": {"type": "string", "enum": ["mean", "cls", "max", "mean_sqrt_len"]}, "normalize": {"type": "boolean"}, "dimensions": dimensions.clone(), "prompt_name": prompt_name.clone(), "prompt": {"type": "string", "description": "a text put before each text; wins over prompt_name"}}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"text": {"type": "string"}, "embedding": {"type": "array", "items": {"type": "number"}}})))),
            "/v1/fill-mask": post("Top-k predictions for each mask token (as `slimformer fill-mask`)",
                json!({"type": "object", "properties": {"inputs": inputs, "top_k": {"type": "integer", "minimum": 1, "default": 5}}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"text": {"type": "string"}, "masks": {"type": "array"}})))),
            "/v1/tokenize": post("Token ids, tokens and character offsets",
                json!({"type": "object", "properties": {"inputs": inputs}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"ids": {"type": "array"}, "tokens": {"type": "array"}, "offsets": {"type": "array"}})))),
            "/embed": post("text-embeddings-inference compatible embeddings",
                json!({"type": "object", "properties": {"inputs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, "normalize": {"type": "boolean", "default": true}, "truncate": {"type": "boolean"}, "dimensions": dimensions.clone(), "prompt_name": prompt_name}, "required": ["inputs"]}),
                ok("one embedding per input", json!({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}))),
            "/predict": post("text-embeddings-inference compatible classification",
                json!({"type": "object", "properties": {"inputs": {"description": "a text, a pair [text, text_pair], or a batch of [text] / [text, text_pair]"}}, "required": ["inputs"]}),
                ok("labels with scores, best first (an array of them for a batch)", json!({"type": "array"}))),
            "/v1/embeddings": post("OpenAI compatible embeddings",
                json!({"type": "object", "properties": {"input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, "model": {"type": "string"}, "encoding_format": {"type": "string", "enum": ["float", "base64"], "description": "base64: the float32 values, little-endian"}, "dimensions": dimensions}, "required": ["input"]}),
                ok("OpenAI's embedding list", json!({"type": "object"}))),
            "/rerank": post("text-embeddings-inference compatible reranking: a cross-encoder's relevance, or an embedding model's cosine (see /v1/models)",
                json!({"type": "object", "properties": {"query": {"type": "string"}, "texts": {"type": "array", "items": {"type": "string"}}, "raw_scores": {"type": "boolean", "default": false}, "return_text": {"type": "boolean", "default": false}}, "required": ["query", "texts"]}),
                ok("documents best first", json!({"type": "array", "items": {"type": "object", "properties": {"index": {"type": "integer"}, "score": {"type": "number"}, "text": {"type": "string"}}}}))),
            "/v1/rerank": post("Cohere/Jina compatible reranking",
                json!({"type": "object", "properties": {"model": {"type": "string"}, "query": {"type": "string"}, "documents": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}]}}, "top_n": {"type": "integer", "minimum": 1}, "return_documents": {"type": "boolean", "default": false}}, "required": ["query", "documents"]}),
                ok("results best first", json!({"type": "object", "properties": {"results": {"type": "array"}, "model": {"type": "string"}, "usage": {"type": "object"}}}))),
            "/info": {"get": {"summary": "text-embeddings-inference's model and server information: model_id, model_dtype, model_type, max_input_length, max_batch_tokens, max_client_batch_size, version, ...", "responses": {"200": ok("info", json!({"type": "object"}))}}},
            "/v1/models": {"get": {"summary": "The model served: name, version, family, parameters, quantization, tasks", "responses": {"200": ok("model list", json!({"type": "object"}))}}},
            "/health": {"get": {"summary": "Alive (no auth)", "responses": {"200": ok("ok", json!({"type": "object"}))}}},
            "/ready": {"get": {"summary": "A model is loaded (no auth)", "responses": {"200": ok("ready", json!({"type": "object"})), "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (no auth)", "responses": {"200": {"description": "text exposition format"}}}},
            "/admin/reload": {"post": {"summary": "Load the production version (or the model folder) again; only when an API key is set", "responses": {"200": ok("reloaded", json!({"type": "object"})), "422": {"description": "the new version was refused; the old one keeps serving"}}}},
        },
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error", "type"], "properties": {
                "error": {"type": "string"},
                "type": {"type": "string", "enum": error_types},
            }}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

/// Swagger UI over /openapi.json (loaded from a CDN by the browser; the route list
/// shows without it).
pub const DOCS_PAGE: &str = r##"<!doctype html>
<html><head><meta charset="utf-8"><title>slimformer API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"><p>slimformer API: the OpenAPI document is at <a href="/openapi.json">/openapi.json</a>.</p></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>if (window.SwaggerUIBundle) { SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"}); }</script>
</body></html>
"##;
