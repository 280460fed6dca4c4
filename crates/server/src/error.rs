//! API errors: one enum of causes, rendered in the wire format of the route that answers:
//! OpenAI's `{"error": {message, type, param, code}}` or Anthropic's `{"type": "error",
//! "error": {type, message}}`. An error carries no flavour of its own; the route supplies it
//! when the response is written (`ApiError::respond`), so status codes and wording stay
//! consistent across both formats.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::wire::Flavor;

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
    /// A method the route does not take (405).
    MethodNotAllowed,
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
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::InvalidRequest {
                param: param.map(str::to_owned),
            },
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn overloaded(retry_after_s: u64, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overloaded { retry_after_s }, message)
    }

    /// The prompt does not fit; the message is worded per provider when rendered.
    pub fn context_length(n_prompt: usize, n_ctx: usize) -> Self {
        Self::new(ErrorKind::ContextLength { n_prompt, n_ctx }, String::new())
    }

    pub fn status(&self, flavor: Flavor) -> StatusCode {
        match (&self.kind, flavor) {
            (ErrorKind::InvalidRequest { .. } | ErrorKind::ContextLength { .. }, _) => {
                StatusCode::BAD_REQUEST
            }
            (ErrorKind::Authentication, _) => StatusCode::UNAUTHORIZED,
            (ErrorKind::ModelNotFound | ErrorKind::NoRoute, _) => StatusCode::NOT_FOUND,
            (ErrorKind::MethodNotAllowed, _) => StatusCode::METHOD_NOT_ALLOWED,
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

    /// The message as the provider words it. Clients that parse the context-length message
    /// (to trim history and retry) recognise each provider's own sentence.
    pub fn message(&self, flavor: Flavor) -> String {
        match (&self.kind, flavor) {
            (ErrorKind::ContextLength { n_prompt, n_ctx }, Flavor::OpenAi) => format!(
                "This model's maximum context length is {n_ctx} tokens. However, your messages \
                 resulted in {n_prompt} tokens. Please reduce the length of the messages."
            ),
            (ErrorKind::ContextLength { n_prompt, n_ctx }, Flavor::Anthropic) => {
                format!("prompt is too long: {n_prompt} tokens > {n_ctx} maximum")
            }
            _ => self.message.clone(),
        }
    }

    pub fn body(&self, flavor: Flavor) -> Value {
        let message = self.message(flavor);
        match flavor {
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
                    ErrorKind::MethodNotAllowed => ("invalid_request_error", None, None),
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
                json!({"error": {"message": message, "type": ty, "param": param, "code": code}})
            }
            Flavor::Anthropic => {
                let ty = match &self.kind {
                    ErrorKind::InvalidRequest { .. }
                    | ErrorKind::ContextLength { .. }
                    | ErrorKind::UnsupportedMediaType
                    | ErrorKind::MethodNotAllowed => "invalid_request_error",
                    ErrorKind::Authentication => "authentication_error",
                    ErrorKind::ModelNotFound | ErrorKind::NoRoute => "not_found_error",
                    ErrorKind::TooLarge { .. } => "request_too_large",
                    ErrorKind::Overloaded { .. } => "overloaded_error",
                    ErrorKind::Internal => "api_error",
                };
                json!({"type": "error", "error": {"type": ty, "message": message}})
            }
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::Overloaded { retry_after_s } => Some(retry_after_s),
            _ => None,
        }
    }

    /// The HTTP response in `flavor`'s shape, with `Retry-After` when there is one.
    pub fn respond(&self, flavor: Flavor) -> Response {
        let mut resp = (self.status(flavor), axum::Json(self.body(flavor))).into_response();
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
        let e = ApiError::overloaded(2, "busy");
        let o = e.respond(Flavor::OpenAi);
        assert_eq!(o.status(), 503);
        assert_eq!(o.headers()[header::RETRY_AFTER], "2");
        let a = e.respond(Flavor::Anthropic);
        assert_eq!(a.status().as_u16(), 529);
        assert_eq!(a.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            e.body(Flavor::Anthropic)["error"]["type"],
            "overloaded_error"
        );
    }

    #[test]
    fn context_errors_use_each_providers_wording() {
        let e = ApiError::context_length(9000, 2048);
        let o = e.body(Flavor::OpenAi);
        assert_eq!(o["error"]["code"], "context_length_exceeded");
        let m = o["error"]["message"].as_str().unwrap();
        assert!(m.contains("maximum context length is 2048"), "{m}");
        let a = e.body(Flavor::Anthropic);
        assert!(a["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long"));
        assert_eq!(a["type"], "error");
    }
}
