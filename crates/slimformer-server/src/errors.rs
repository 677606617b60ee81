//! Every failure as `{"error": "...", "type": "..."}` with its status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The `type` values of error bodies (listed in the OpenAPI document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidJson,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unauthorized,
    NotFound,
    ModelNotFound,
    MethodNotAllowed,
    UnsupportedTask,
    Overloaded,
    NotReady,
    Timeout,
    /// The client did not send its request body in time.
    RequestTimeout,
    ReloadFailed,
    Internal,
}

impl ErrorType {
    pub const ALL: [ErrorType; 15] = [
        ErrorType::InvalidJson,
        ErrorType::InvalidInput,
        ErrorType::PayloadTooLarge,
        ErrorType::UnsupportedMediaType,
        ErrorType::Unauthorized,
        ErrorType::NotFound,
        ErrorType::ModelNotFound,
        ErrorType::MethodNotAllowed,
        ErrorType::UnsupportedTask,
        ErrorType::Overloaded,
        ErrorType::NotReady,
        ErrorType::Timeout,
        ErrorType::RequestTimeout,
        ErrorType::ReloadFailed,
        ErrorType::Internal,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            ErrorType::InvalidJson => "invalid_json",
            ErrorType::InvalidInput => "invalid_input",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::UnsupportedMediaType => "unsupported_media_type",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::NotFound => "not_found",
            ErrorType::ModelNotFound => "model_not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::UnsupportedTask => "unsupported_task",
            ErrorType::Overloaded => "overloaded",
            ErrorType::NotReady => "not_ready",
            ErrorType::Timeout => "timeout",
            ErrorType::RequestTimeout => "request_timeout",
            ErrorType::ReloadFailed => "reload_failed",
            ErrorType::Internal => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ErrorType::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorType::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::NotFound | ErrorType::ModelNotFound => StatusCode::NOT_FOUND,
            ErrorType::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorType::UnsupportedTask => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorType::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorType::ReloadFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorType,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

tokio::task_local! {
    /// The id of the request being answered (set by the router's `observe` layer).
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.message, "type": self.kind.name()});
        if let Ok(id) = REQUEST_ID.try_with(|id| id.clone()) {
            body["request_id"] = id.into();
        }
        let mut response = (self.kind.status(), axum::Json(body)).into_response();
        if self.kind == ErrorType::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;
