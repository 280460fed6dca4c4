//! API errors, rendered in the wire format of the endpoint that raised them: OpenAI's
//! `{"error": {message, type, param, code}}` or Anthropic's `{"type": "error", "error":
//! {type, message}}`. One enum of causes keeps the status codes consistent across both.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Which provider's error shape (and overload status) a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

impl Flavor {
    /// Anthropic's routes live under `/v1/messages`; everything else speaks OpenAI.
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/v1/messages") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ErrorKind {
    /// The request is malformed or asks for something we refuse (400).
    InvalidRequest { param: Option<String> },
    /// The prompt does not fit the context (400, provider-specific wording and code).
    ContextLength { n_prompt: usize, n_ctx: usize },
    /// Missing or wrong API key (401).
    Authentication,
    /// Unknown model in strict mode (404).
    ModelNotFound,
    /// No such route (404).
    NoRoute,
    /// Body over the size limit (413).
    TooLarge { limit: usize },
    /// Not JSON (415).
    UnsupportedMediaType,
    /// Queue full, still loading or shutting down: try again (503 / Anthropic 529).
    Overloaded { retry_after_s: u64 },
    /// A bug or a failure of the engine (500).
    Internal,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub flavor: Flavor,
}

impl ApiError {
    pub fn new(flavor: Flavor, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            flavor,
        }
    }

    pub fn invalid(flavor: Flavor, param: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(
            flavor,
            ErrorKind::InvalidRequest {
                param: param.map(str::to_owned),
            },
            message,
        )
    }

    pub fn status(&self) -> StatusCode {
        match (&self.kind, self.flavor) {
            (ErrorKind::InvalidRequest { .. } | ErrorKind::ContextLength { .. }, _) => {
                StatusCode::BAD_REQUEST
            }
            (ErrorKind::Authentication, _) => StatusCode::UNAUTHORIZED,
            (ErrorKind::ModelNotFound | ErrorKind::NoRoute, _) => StatusCode::NOT_FOUND,
            (ErrorKind::TooLarge { .. }, _) => StatusCode::PAYLOAD_TOO_LARGE,
            (ErrorKind::UnsupportedMediaType, _) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            (ErrorKind::Overloaded { .. }, Flavor::OpenAi) => StatusCode::SERVICE_UNAVAILABLE,
            // Anthropic's own overload status, which its SDKs and gateways recognise.
            (ErrorKind::Overloaded { .. }, Flavor::Anthropic) => {
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            (ErrorKind::Internal, _) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        match self.flavor {
            Flavor::OpenAi => {
                let (ty, code, param) = match &self.kind {
                    ErrorKind::InvalidRequest { param } => {
                        ("invalid_request_error", None, param.clone())
                    }
                    ErrorKind::ContextLength { .. } => (
                        "invalid_request_error",
                        Some("context_length_exceeded"),
                        Some("messages".to_owned()),
                    ),
                    ErrorKind::Authentication => {
                        ("invalid_request_error", Some("invalid_api_key"), None)
                    }
                    ErrorKind::ModelNotFound => {
                        ("invalid_request_error", Some("model_not_found"), None)
                    }
                    ErrorKind::NoRoute => ("invalid_request_error", Some("unknown_url"), None),
                    ErrorKind::TooLarge { .. } => {
                        ("invalid_request_error", Some("request_too_large"), None)
                    }
                    ErrorKind::UnsupportedMediaType => (
                        "invalid_request_error",
                        Some("unsupported_media_type"),
                        None,
                    ),
                    ErrorKind::Overloaded { .. } => ("server_error", Some("overloaded"), None),
                    ErrorKind::Internal => ("server_error", None, None),
                };
                json!({"error": {"message": self.message, "type": ty, "param": param, "code": code}})
            }
            Flavor::Anthropic => {
                let ty = match &self.kind {
                    ErrorKind::InvalidRequest { .. }
                    | ErrorKind::ContextLength { .. }
                    | ErrorKind::UnsupportedMediaType => "invalid_request_error",
                    ErrorKind::Authentication => "authentication_error",
                    ErrorKind::ModelNotFound | ErrorKind::NoRoute => "not_found_error",
                    ErrorKind::TooLarge { .. } => "request_too_large",
                    ErrorKind::Overloaded { .. } => "overloaded_error",
                    ErrorKind::Internal => "api_error",
                };
                json!({"type": "error", "error": {"type": ty, "message": self.message}})
            }
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::Overloaded { retry_after_s } => Some(retry_after_s),
            _ => None,
        }
    }

    /// The context-length error in the words each provider uses, so clients that parse the
    /// message (to trim history and retry) recognise it.
    pub fn context_length(flavor: Flavor, n_prompt: usize, n_ctx: usize) -> Self {
        let message = match flavor {
            Flavor::OpenAi => format!(
                "This model's maximum context length is {n_ctx} tokens. However, your messages \
                 resulted in {n_prompt} tokens. Please reduce the length of the messages."
            ),
            Flavor::Anthropic => {
                format!("prompt is too long: {n_prompt} tokens > {n_ctx} maximum")
            }
        };
        Self::new(
            flavor,
            ErrorKind::ContextLength { n_prompt, n_ctx },
            message,
        )
    }

    pub fn overloaded(flavor: Flavor, retry_after_s: u64, message: impl Into<String>) -> Self {
        Self::new(flavor, ErrorKind::Overloaded { retry_after_s }, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_is_503_for_openai_and_529_for_anthropic_with_retry_after() {
        let o = ApiError::overloaded(Flavor::OpenAi, 2, "busy").into_response();
        assert_eq!(o.status(), 503);
        assert_eq!(o.headers()[header::RETRY_AFTER], "2");
        let a = ApiError::overloaded(Flavor::Anthropic, 2, "busy");
        assert_eq!(a.status().as_u16(), 529);
        assert_eq!(a.body()["error"]["type"], "overloaded_error");
    }

    #[test]
    fn context_errors_use_each_providers_wording() {
        let o = ApiError::context_length(Flavor::OpenAi, 9000, 2048);
        assert_eq!(o.body()["error"]["code"], "context_length_exceeded");
        assert!(o.message.contains("maximum context length is 2048"));
        let a = ApiError::context_length(Flavor::Anthropic, 9000, 2048);
        assert!(a.message.starts_with("prompt is too long"));
        assert_eq!(a.body()["type"], "error");
    }
}
