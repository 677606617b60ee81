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
    for code in [
        "400", "401", "404", "408", "413", "415", "422", "429", "503", "504",
    ] {
        r.insert(
            code.into(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(r)
}

/// A route of slimformer's own API: its bodies name only their own fields (an unknown
/// one is 400).
fn post(summary: &str, mut request: Value, response: Value) -> Value {
    request["additionalProperties"] = json!(false);
    post_compatible(summary, request, response)
}

/// A route of another server's API (text-embeddings-inference, OpenAI): as those servers
/// do, fields it does not know are ignored, so a client written for them works unchanged.
fn post_compatible(summary: &str, request: Value, response: Value) -> Value {
    let mut responses = errors();
    responses["200"] = response;
    json!({"post": {"summary": summary, "requestBody": body(request), "responses": responses}})
}

/// A route that also takes the `X-Model` header.
fn with_header(mut route: Value, parameters: &Value) -> Value {
    for op in route
        .as_object_mut()
        .into_iter()
        .flat_map(|o| o.values_mut())
    {
        op["parameters"] = parameters.clone();
    }
    route
}

/// What the served models allow, for the document to say it: a route for a task no
/// served model has is left out, and sizes are the models' own.
#[derive(Debug, Clone, Default)]
pub struct ServedFacts {
    /// `Engine::tasks` of each model.
    pub tasks: Vec<Vec<&'static str>>,
    /// The smallest embedding size (hidden size) of the models.
    pub embedding_size: Option<usize>,
    /// The smallest vocabulary of the models.
    pub vocab_size: Option<usize>,
    /// Prompt names every model defines.
    pub prompts: Vec<String>,
    /// `--max-client-batch-size`: the most inputs a request may carry.
    pub max_inputs: usize,
    /// The mask tokens of the models that fill masks: a fill-mask text holds one.
    pub mask_tokens: Vec<String>,
}

/// The largest integer a JSON number holds exactly: the bound of counts that have no
/// smaller one (an integer beyond the server's own types would be refused).
pub const LARGEST_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// The routes that need a task, by the task's name in `Engine::tasks`.
const ROUTE_TASKS: &[(&str, &str)] = &[
    ("/v1/classify", "classify"),
    ("/predict", "classify"),
    ("/v1/fill-mask", "fill-mask"),
    ("/v1/tag", "tag"),
    ("/rerank", "rerank"),
    ("/v1/rerank", "rerank"),
];

/// The document of this server: [`document`] narrowed to what its models allow.
pub fn document_for(facts: &ServedFacts) -> Value {
    let mut doc = document();
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (route, task) in ROUTE_TASKS {
            if !facts.tasks.iter().any(|t| t.contains(task)) {
                paths.remove(*route);
            }
        }
        for (route, op) in paths
            .iter_mut()
            .filter_map(|(route, r)| Some((route.as_str(), r.get_mut("post")?)))
        {
            let is_fill_mask = route == "/v1/fill-mask";
            let body = &mut op["requestBody"]["content"]["application/json"]["schema"];
            let Some(properties) = body.get_mut("properties").and_then(Value::as_object_mut) else {
                continue;
            };
            for list in ["inputs", "input", "texts", "documents"] {
                if let Some(p) = properties.get_mut(list) {
                    limit_items(p, facts.max_inputs);
                }
            }
            if let (Some(d), Some(size)) = (properties.get_mut("dimensions"), facts.embedding_size)
            {
                d["maximum"] = json!(size);
            }
            if properties.contains_key("prompt_name") {
                if facts.prompts.is_empty() {
                    properties.remove("prompt_name");
                } else {
                    properties["prompt_name"]["enum"] = json!(facts.prompts);
                }
            }
            if let (Some(k), Some(vocab)) = (properties.get_mut("top_k"), facts.vocab_size) {
                k["maximum"] = json!(vocab);
            }
            if let (Some(inputs), true) = (properties.get_mut("inputs"), is_fill_mask) {
                require_mask(inputs, &facts.mask_tokens);
            }
            if let (Some(ids), Some(vocab)) = (properties.get_mut("ids"), facts.vocab_size) {
                let most = json!(vocab.saturating_sub(1));
                for variant in ids["oneOf"].as_array_mut().into_iter().flatten() {
                    let items = &mut variant["items"];
                    if items["type"] == "array" {
                        items["items"]["maximum"] = most.clone();
                    } else {
                        items["maximum"] = most.clone();
                    }
                }
            }
        }
    }
    doc
}

/// A fill-mask text must hold a mask token (422 otherwise): the text schemas of its
/// inputs (a text, or the first text of a pair) get a pattern that finds one.
fn require_mask(inputs: &mut Value, mask_tokens: &[String]) {
    if mask_tokens.is_empty() {
        return;
    }
    let pattern: Vec<String> = mask_tokens.iter().map(|m| regex_escape(m)).collect();
    let pattern = json!(pattern.join("|"));
    fn visit(schema: &mut Value, pattern: &Value) {
        if schema["type"] == "string" {
            // The mask token is not blank, so this pattern also keeps the `\S` rule.
            schema["pattern"] = pattern.clone();
        }
        if let Some(first) = schema.pointer_mut("/properties/text") {
            visit(first, pattern);
        }
        if let Some(items) = schema.get_mut("items") {
            visit(items, pattern);
        }
        for variant in schema
            .get_mut("oneOf")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            visit(variant, pattern);
        }
    }
    visit(inputs, &pattern);
}

/// `text` as a regular expression that matches it literally.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\^$.|?*+()[]{}/".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// `maxItems` on the outer list of a request's inputs (a schema or its `oneOf` variants).
/// (A list already held shorter, such as `/predict`'s pair, keeps its own limit.)
fn limit_items(schema: &mut Value, most: usize) {
    let limit = |list: &mut Value| {
        if list["type"] == "array" && list["maxItems"].as_u64().is_none_or(|m| m > most as u64) {
            list["maxItems"] = json!(most);
        }
    };
    limit(schema);
    // `get_mut`, not indexing: an index into a missing key would insert a null `oneOf`.
    let variants = schema.get_mut("oneOf").and_then(Value::as_array_mut);
    for variant in variants.into_iter().flatten() {
        limit(variant);
    }
}

pub fn document() -> Value {
    // Texts are never blank (422: see `routes::is_blank`), and a list holds at least one.
    let text = json!({"type": "string", "minLength": 1, "pattern": "\\S"});
    let inputs = json!({"oneOf": [
        text.clone(),
        {"type": "array", "minItems": 1, "items": {"oneOf": [
            text.clone(),
            {"type": "object", "properties": {"text": text.clone(), "text_pair": text.clone()}, "required": ["text", "text_pair"]}
        ]}}
    ]});
    let dimensions = json!({"type": "integer", "nullable": true, "minimum": 1, "description": "keep the first D values (Matryoshka), then normalize if normalizing"});
    let prompt_name = json!({"type": "string", "minLength": 1, "nullable": true, "description": "one of the model's prompts (config_sentence_transformers.json), put before each text"});
    let model = json!({"type": "string", "nullable": true, "description": "which model (see /v1/models); the default model when absent"});
    let truncate = json!({"type": "boolean", "nullable": true, "description": "cut inputs longer than the model's limit (false: 413 for them; absent: the server's setting)"});
    let direction = json!({"type": "string", "enum": ["right", "left", "Right", "Left"], "default": "right", "description": "which end of a too-long input is cut"});
    let texts =
        json!({"oneOf": [text.clone(), {"type": "array", "minItems": 1, "items": text.clone()}]});
    let x_model = json!([{"name": "X-Model", "in": "header", "required": false, "schema": {"type": "string"}, "description": "which model (the default model when absent)"}]);
    let records =
        |extra: Value| json!({"type": "array", "items": {"type": "object", "properties": extra}});
    let error_types: Vec<&str> = ErrorType::ALL.iter().map(|t| t.name()).collect();
    json!({
        "openapi": "3.0.3",
        "info": {"title": "slimformer", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Transformer encoders served from Rust: classification, embeddings, reranking, entity tagging, fill-mask, tokenization; one model or several."},
        "paths": {
            "/v1/classify": with_header(post("Sequence classification (as `slimformer classify`)",
                json!({"type": "object", "properties": {"inputs": inputs, "model": model, "truncate": truncate, "truncation_direction": direction}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"text": {"type": "string"}, "label": {"type": "string"}, "scores": {"type": "object"}})))), &x_model),
            "/v1/embed": with_header(post("Sentence embeddings (as `slimformer embed`)",
                json!({"type": "object", "properties": {"inputs": inputs, "model": model, "pooling": {"type": "string", "nullable": true, "enum": ["mean", "cls", "max", "mean_sqrt_len", null]}, "normalize": {"type": "boolean", "nullable": true}, "dimensions": dimensions.clone(), "prompt_name": prompt_name.clone(), "prompt": {"type": "string", "nullable": true, "description": "a text put before each text; wins over prompt_name"}, "truncate": truncate, "truncation_direction": direction}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"text": {"type": "string"}, "embedding": {"type": "array", "items": {"type": "number"}}})))), &x_model),
            "/v1/fill-mask": with_header(post("Top-k predictions for each mask token (as `slimformer fill-mask`)",
                json!({"type": "object", "properties": {"inputs": inputs, "model": model, "top_k": {"type": "integer", "minimum": 1, "maximum": LARGEST_EXACT_INTEGER, "default": 5, "description": "at most the vocabulary's size"}, "truncate": truncate, "truncation_direction": direction}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"text": {"type": "string"}, "masks": {"type": "array"}})))), &x_model),
            "/v1/tag": with_header(post("Token classification: entities with character spans, grouped as transformers' pipeline groups them (as `slimformer tag --aggregation`)",
                json!({"type": "object", "properties": {"inputs": inputs, "model": model, "aggregation": {"type": "string", "nullable": true, "enum": ["none", "simple", "first", "average", "max", null], "default": "none", "description": "transformers' aggregation_strategy (also accepted under that name)"}, "truncate": truncate, "truncation_direction": direction}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"text": {"type": "string"}, "entities": {"type": "array", "items": {"type": "object", "properties": {"entity": {"type": "string", "description": "the token's tag (aggregation none)"}, "entity_group": {"type": "string", "description": "the entity type (other aggregations)"}, "score": {"type": "number"}, "index": {"type": "integer"}, "word": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}}}}})))), &x_model),
            "/v1/tokenize": with_header(post("Token ids, tokens and character offsets, truncated as a request would be",
                json!({"type": "object", "properties": {"inputs": inputs, "model": model, "truncate": truncate, "truncation_direction": direction}, "required": ["inputs"]}),
                ok("one record per input", records(json!({"ids": {"type": "array"}, "tokens": {"type": "array"}, "offsets": {"type": "array"}})))), &x_model),
            "/embed": with_header(post_compatible("text-embeddings-inference compatible embeddings",
                json!({"type": "object", "properties": {"inputs": texts, "normalize": {"type": "boolean", "default": true}, "truncate": truncate, "truncation_direction": direction, "dimensions": dimensions.clone(), "prompt_name": prompt_name}, "required": ["inputs"]}),
                ok("one embedding per input", json!({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}))), &x_model),
            "/embed_all": with_header(post_compatible("text-embeddings-inference compatible per-token vectors (the last hidden state, special tokens included)",
                json!({"type": "object", "properties": {"inputs": texts, "truncate": truncate, "truncation_direction": direction, "prompt_name": prompt_name}, "required": ["inputs"]}),
                ok("per input, one vector per token", json!({"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}))), &x_model),
            "/predict": with_header(post_compatible("text-embeddings-inference compatible classification",
                json!({"type": "object", "properties": {"inputs": {"description": "a text, a pair [text, text_pair], or a batch of [text] / [text, text_pair]", "oneOf": [
                    text.clone(),
                    {"type": "array", "minItems": 1, "maxItems": 2, "items": text.clone()},
                    {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": text.clone()}}
                ]}, "truncate": truncate, "truncation_direction": direction}, "required": ["inputs"]}),
                ok("labels with scores, best first (an array of them for a batch)", json!({"type": "array"}))), &x_model),
            "/tokenize": with_header(post_compatible("text-embeddings-inference compatible tokenization (never truncated)",
                json!({"type": "object", "properties": {"inputs": texts, "add_special_tokens": {"type": "boolean", "default": true}, "prompt_name": prompt_name}, "required": ["inputs"]}),
                ok("per input, its tokens: id, text, special, and byte offsets (null for special tokens)", json!({"type": "array", "items": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "text": {"type": "string"}, "special": {"type": "boolean"}, "start": {"type": "integer", "nullable": true}, "stop": {"type": "integer", "nullable": true}}}}}))), &x_model),
            "/decode": with_header(post_compatible("text-embeddings-inference compatible decoding of token ids",
                json!({"type": "object", "properties": {"ids": {"oneOf": [{"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": 4294967295u64}}, {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": 4294967295u64}}}]}, "skip_special_tokens": {"type": "boolean", "default": true}}, "required": ["ids"]}),
                ok("one text per list of ids", json!({"type": "array", "items": {"type": "string"}}))), &x_model),
            "/v1/embeddings": with_header(post_compatible("OpenAI compatible embeddings (unit length)",
                json!({"type": "object", "properties": {"input": texts, "model": model, "encoding_format": {"type": "string", "nullable": true, "enum": ["float", "base64", null], "description": "base64: the float32 values, little-endian"}, "dimensions": dimensions}, "required": ["input"]}),
                ok("OpenAI's embedding list", json!({"type": "object"}))), &x_model),
            "/rerank": with_header(post_compatible("text-embeddings-inference compatible reranking: a cross-encoder's relevance, or an embedding model's cosine (see /v1/models)",
                json!({"type": "object", "properties": {"query": text.clone(), "texts": {"type": "array", "minItems": 1, "items": text.clone()}, "raw_scores": {"type": "boolean", "default": false}, "return_text": {"type": "boolean", "default": false}, "truncate": truncate, "truncation_direction": direction}, "required": ["query", "texts"]}),
                ok("documents best first", json!({"type": "array", "items": {"type": "object", "properties": {"index": {"type": "integer"}, "score": {"type": "number"}, "text": {"type": "string"}}}}))), &x_model),
            "/v1/rerank": with_header(post_compatible("Cohere/Jina compatible reranking",
                json!({"type": "object", "properties": {"model": model, "query": text.clone(), "documents": {"type": "array", "minItems": 1, "items": {"oneOf": [text.clone(), {"type": "object", "properties": {"text": text.clone()}, "required": ["text"]}]}}, "top_n": {"type": "integer", "nullable": true, "minimum": 1, "maximum": LARGEST_EXACT_INTEGER, "description": "the best this many documents (all of them when there are fewer)"}, "return_documents": {"type": "boolean", "default": false}}, "required": ["query", "documents"]}),
                ok("results best first", json!({"type": "object", "properties": {"results": {"type": "array"}, "model": {"type": "string"}, "usage": {"type": "object"}}}))), &x_model),
            "/info": {"get": {"summary": "text-embeddings-inference's model and server information of the default model or of ?model=: model_id, model_dtype, model_type, max_input_length, max_batch_tokens, max_client_batch_size, version, models, ...",
                "parameters": [{"name": "model", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": {"200": ok("info", json!({"type": "object"})), "401": {"description": "missing or wrong API key"}, "404": {"description": "no such model"}}}},
            "/v1/models": {"get": {"summary": "The models served: name, version, family, parameters, quantization, tasks", "responses": {"200": ok("model list", json!({"type": "object"})), "401": {"description": "missing or wrong API key"}}}},
            "/health": {"get": {"summary": "Alive (no auth)", "security": [], "responses": {"200": ok("ok", json!({"type": "object"}))}}},
            "/ready": {"get": {"summary": "Every model is loaded (no auth)", "security": [], "responses": {"200": ok("ready", json!({"type": "object"})), "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (no auth)", "security": [], "responses": {"200": {"description": "text exposition format"}}}},
            "/admin/reload": {"post": {"summary": "Load the production version (or the model folder) again, of ?model= or of every model; only when an API key is set",
                "parameters": [{"name": "model", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": {"200": ok("reloaded", json!({"type": "object"})), "401": {"description": "missing or wrong API key"}, "404": {"description": "no such model"}, "422": {"description": "the new version was refused; the old one keeps serving"}}}},
        },
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error", "type"], "properties": {
                "error": {"type": "string"},
                "type": {"type": "string", "enum": error_types},
                "request_id": {"type": "string", "description": "the request's id, as in the X-Request-Id header and the log lines"},
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fill_mask_server() -> ServedFacts {
        ServedFacts {
            tasks: vec![vec!["embed", "fill-mask"]],
            embedding_size: Some(32),
            vocab_size: Some(1000),
            prompts: Vec::new(),
            max_inputs: 8,
            mask_tokens: vec!["[MASK]".into()],
        }
    }

    fn body<'a>(doc: &'a Value, route: &str) -> &'a Value {
        &doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["properties"]
    }

    #[test]
    fn fill_mask_texts_must_hold_the_mask_token() {
        let doc = document_for(&fill_mask_server());
        let inputs = &body(&doc, "/v1/fill-mask")["inputs"];
        let one_text = &inputs["oneOf"][0];
        assert_eq!(one_text["pattern"], "\\[MASK\\]");
        let in_list = &inputs["oneOf"][1]["items"]["oneOf"];
        assert_eq!(in_list[0]["pattern"], "\\[MASK\\]");
        assert_eq!(in_list[1]["properties"]["text"]["pattern"], "\\[MASK\\]");
        // Only the first text of a pair needs it, and other routes keep the plain rule.
        assert_eq!(in_list[1]["properties"]["text_pair"]["pattern"], "\\S");
        assert_eq!(
            body(&doc, "/v1/embed")["inputs"]["oneOf"][0]["pattern"],
            "\\S"
        );
    }

    #[test]
    fn counts_have_a_maximum_the_server_holds() {
        let doc = document_for(&fill_mask_server());
        assert_eq!(body(&doc, "/v1/fill-mask")["top_k"]["maximum"], 1000);
        let doc = document_for(&ServedFacts {
            tasks: vec![vec!["rerank"]],
            ..fill_mask_server()
        });
        let top_n = body(&doc, "/v1/rerank")["top_n"]["maximum"]
            .as_u64()
            .unwrap();
        assert!(top_n <= usize::MAX as u64 && top_n == LARGEST_EXACT_INTEGER);
    }

    #[test]
    fn regex_escape_matches_literally() {
        assert_eq!(regex_escape("<mask>"), "<mask>");
        assert_eq!(regex_escape("[MASK]"), "\\[MASK\\]");
        assert_eq!(regex_escape("a.b|c"), "a\\.b\\|c");
    }
}
