//! Every route's request body, through the server's own router (auth, request ids,
//! JSON extraction, validation, the batching queue, the models, the response shapes)
//! with five fixture models: an embedder, a sequence classifier, a token classifier, a
//! masked LM and a cross-encoder. The first byte picks the route, the second the model
//! named in `X-Model`; the rest is the body. Whatever the body, the answer is not a 5xx
//! and its body is JSON: a malformed request is the client's error, said in words.
#![no_main]
mod common;
use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use slimformer_server::{ModelSource, ModelSpec, ServerConfig};
use std::sync::OnceLock;
use tower::ServiceExt;

const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/v1/classify"),
    (Method::POST, "/v1/embed"),
    (Method::POST, "/v1/fill-mask"),
    (Method::POST, "/v1/tag"),
    (Method::POST, "/v1/tokenize"),
    (Method::POST, "/embed"),
    (Method::POST, "/embed_all"),
    (Method::POST, "/predict"),
    (Method::POST, "/tokenize"),
    (Method::POST, "/decode"),
    (Method::POST, "/v1/embeddings"),
    (Method::POST, "/rerank"),
    (Method::POST, "/v1/rerank"),
];

const MODELS: &[(&str, &str)] = &[
    ("emb", "bert-base"),
    ("cls", "bert-seqcls"),
    ("tag", "bert-tokcls"),
    ("mlm", "bert-mlm"),
    ("rerank", "roberta-rerank"),
];

struct Service {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let models = MODELS
            .iter()
            .map(|(name, fixture)| ModelSpec {
                name: Some((*name).into()),
                source: ModelSource::Dir(common::fixture(fixture)),
            })
            .collect();
        let config = ServerConfig::with_models(models);
        let state = runtime
            .block_on(slimformer_server::reload::start(config))
            .unwrap();
        let router = slimformer_server::routes::router(state);
        Service { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let [route, model, body @ ..] = data else {
        return;
    };
    let (method, path) = &ROUTES[*route as usize % ROUTES.len()];
    let (model, _) = MODELS[*model as usize % MODELS.len()];
    let service = service();
    let request = Request::builder()
        .method(method.clone())
        .uri(*path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-model", model)
        .body(Body::from(body.to_vec()))
        .unwrap();
    let response = service
        .runtime
        .block_on(service.router.clone().oneshot(request))
        .unwrap();
    let status = response.status();
    let bytes = service
        .runtime
        .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .unwrap();
    assert!(
        !status.is_server_error(),
        "{path} ({model}) answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
        "{path} ({model}) answered {status} with a body that is not JSON: {}",
        String::from_utf8_lossy(&bytes)
    );
});
