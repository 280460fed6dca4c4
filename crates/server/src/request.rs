//! Reading request bodies: size limit, content type, JSON with the path of what is wrong
//! ("messages[0].content: invalid type ..."), and range checks shared by both APIs.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorKind};

/// Read and parse a JSON body of at most `limit` bytes.
/// Read a JSON request's bytes (content type and size checked, not parsed).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        // `application/json`, `application/json; charset=utf-8`, `application/vnd.x+json`.
        if !ct.contains("json") {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!("Content-Type must be application/json, got {ct:?}"),
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            ErrorKind::TooLarge { limit },
            format!("request body is larger than the {limit}-byte limit (--max-body-bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            too_large()
        } else {
            ApiError::invalid(None, format!("cannot read the request body: {e}"))
        }
    })
}

/// Whether reading a body failed because it passed the size limit (a body sent without a
/// `Content-Length`, or one longer than it declared).
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            None,
            "the request body is empty; expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request: {inner}")
        } else {
            format!("invalid value for '{path}': {inner}")
        };
        let param =
            (path != "." && path != "?" && !inner.is_syntax() && !inner.is_eof()).then_some(path);
        ApiError::invalid(param.as_deref(), what)
    })
}

/// Checks a number is finite and within `[lo, hi]`.
pub fn in_range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x as f32)),
        Some(x) => Err(ApiError::invalid(
            Some(name),
            format!("'{name}' must be between {lo} and {hi}, got {x}"),
        )),
    }
}

/// The most tokens a request may ask for: beyond any context we could hold, so larger values
/// are mistakes rather than wishes.
pub const MAX_TOKENS_LIMIT: i64 = 1 << 20;

/// A token budget: positive, not absurd. `None` = until the context is full.
pub fn max_tokens(name: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if (1..=MAX_TOKENS_LIMIT).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid(
            Some(name),
            format!("'{name}' must be between 1 and {MAX_TOKENS_LIMIT}, got {n}"),
        )),
    }
}

/// A fresh seed when the request names none.
pub fn seed_or_random(seed: Option<i64>) -> u64 {
    seed.map(|s| s as u64).unwrap_or_else(rand::random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct R {
        messages: Vec<M>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct M {
        role: String,
    }

    #[test]
    fn json_errors_name_the_path() {
        let e = parse_json::<R>(br#"{"messages":[{"role":5}]}"#).unwrap_err();
        assert!(e.message.contains("messages[0].role"), "{}", e.message);
        let e = parse_json::<R>(b"{\"messages\":").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_json::<R>(b"   ").unwrap_err();
        assert!(e.message.contains("empty"));
        let e = parse_json::<R>(b"{\"messages\":[{\"role\":\"\xff\"}]}").unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidRequest { .. }));
    }

    #[test]
    fn ranges() {
        assert!(in_range("temperature", Some(2.5), 0.0, 2.0).is_err());
        assert!(in_range("temperature", Some(f64::NAN), 0.0, 2.0).is_err());
        assert_eq!(in_range("top_p", Some(0.5), 0.0, 1.0).unwrap(), Some(0.5));
        assert!(max_tokens("max_tokens", Some(0)).is_err());
        assert!(max_tokens("max_tokens", Some(-3)).is_err());
        assert!(max_tokens("max_tokens", Some(1 << 40)).is_err());
        assert_eq!(max_tokens("max_tokens", Some(16)).unwrap(), Some(16));
    }
}
