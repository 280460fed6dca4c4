//! The HTTP routes: one handler for every API endpoint (read the body, then the failover
//! front, which answers locally when no upstream serves the endpoint's wire format), the
//! probes, metrics and status, and the middleware for keys, metrics and the request log.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use crate::error::{ApiError, ErrorKind};
use crate::log::RequestLog;
use crate::metrics;
use crate::request::read_body;
use crate::state::{AppState, RETRY_AFTER_S};
use crate::upstream::{self, Upstreams, SERVED_BY};
use crate::wire::{Endpoint, Flavor};

/// What the handlers share: the local model's state and the upstreams in front of it.
pub struct App {
    pub state: Arc<AppState>,
    pub upstreams: Arc<Upstreams>,
}

type Shared = State<Arc<App>>;

/// The HTTP routes over a shared state.
pub fn router(app: Arc<App>) -> Router {
    let api = |ep: Endpoint| {
        move |State(app): Shared,
              Extension(log): Extension<RequestLog>,
              headers: HeaderMap,
              uri: Uri,
              body: Body| async move { endpoint(app, ep, log, headers, uri, body, None).await }
    };
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/ready", get(ready))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/backstop/status", get(status))
        .route("/v1/models", get(api(Endpoint::Models)))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(api(Endpoint::Chat)))
        .route("/v1/completions", post(api(Endpoint::Completions)))
        .route("/v1/messages", post(api(Endpoint::Messages)))
        .route(
            "/v1/messages/count_tokens",
            post(api(Endpoint::CountTokens)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            authenticate,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), observe))
        .with_state(app)
}

/// Every API endpoint: read the body (size and type checked), then the failover front.
async fn endpoint(
    app: Arc<App>,
    ep: Endpoint,
    log: RequestLog,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
    model_id: Option<String>,
) -> Response {
    let bytes = if ep.is_get() {
        Bytes::new()
    } else {
        match read_body(&headers, body, app.state.config.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => return e.respond(ep.flavor()),
        }
    };
    upstream::front(
        &app.state,
        &app.upstreams,
        ep,
        &uri,
        &headers,
        bytes,
        model_id.as_deref(),
        &log,
    )
    .await
}

/// `GET /v1/models/{id}` (ids may hold a `/`, as `OWNER/REPO` names do).
async fn model(
    State(app): Shared,
    Extension(log): Extension<RequestLog>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    endpoint(
        app,
        Endpoint::Model,
        log,
        headers,
        uri,
        Body::empty(),
        Some(id),
    )
    .await
}

/// Readiness as llama-server answers it (gateways and scripts written for it poll this
/// before sending work): 503 while the model loads or the server drains, 200 when a request
/// would be served. A full queue is not "unhealthy": that is `/ready`'s business.
async fn health(State(app): Shared) -> Response {
    let st = &app.state;
    let why = if st.draining.load(Ordering::Relaxed) {
        "Shutting down"
    } else if st.loaded.get().is_none() {
        "Loading model"
    } else {
        return Json(json!({"status": "ok"})).into_response();
    };
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": 503, "message": why, "type": "unavailable_error"}})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    resp
}

/// Liveness: 200 while the process runs, whatever it is doing.
async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// 200 only when a request would be served now: loaded, warm, not draining, not full.
async fn ready(State(app): Shared) -> Response {
    let st = &app.state;
    let (status, why) = if st.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if st.loaded.get().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else if st.scheduler.is_full() {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    } else {
        (StatusCode::OK, "ready")
    };
    let mut resp = (
        status,
        Json(json!({
            "status": why,
            "model": st.weights,
            "running": st.scheduler.running(),
            "queued": st.scheduler.queued(),
        })),
    )
        .into_response();
    if status != StatusCode::OK {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    resp
}

async fn metrics(State(app): Shared) -> Response {
    let st = &app.state;
    let mut text = st
        .metrics
        .render(st.scheduler.running(), st.scheduler.queued(), st.is_ready());
    app.upstreams.render_metrics(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The failover front's state: each upstream's breaker, counts and last error.
async fn status(State(app): Shared) -> Json<serde_json::Value> {
    let st = &app.state;
    Json(json!({
        "ready": st.is_ready(),
        "weights": st.weights,
        "running": st.scheduler.running(),
        "queued": st.scheduler.queued(),
        "kv_budget_tokens": st.scheduler.kv_budget(),
        "kv_used_tokens": st.metrics.kv_used_tokens.load(std::sync::atomic::Ordering::Relaxed),
        "upstreams": app.upstreams.status(),
    }))
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    ApiError::new(
        ErrorKind::NoRoute,
        format!("no route for {} {path}", req.method()),
    )
    .respond(Flavor::for_path(path))
}

async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path();
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("method {} is not allowed on {path}", req.method()),
    )
    .respond(Flavor::for_path(path))
}

/// Paths that answer without a key: probes must work for whoever routes traffic here.
fn is_open(path: &str) -> bool {
    matches!(path, "/health" | "/livez" | "/ready" | "/readyz")
}

/// `Authorization: Bearer KEY` (OpenAI) or `x-api-key: KEY` (Anthropic), when keys are set.
async fn authenticate(State(app): Shared, req: Request, next: Next) -> Response {
    let keys = &app.state.config.api_keys;
    if keys.is_empty() || is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let h = req.headers();
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let x_api_key = h.get("x-api-key").and_then(|v| v.to_str().ok());
    let ok = [bearer, x_api_key].into_iter().flatten().any(|given| {
        keys.iter()
            .any(|k| constant_time_eq(k.as_bytes(), given.trim().as_bytes()))
    });
    if ok {
        return next.run(req).await;
    }
    let flavor = Flavor::for_path(req.uri().path());
    let msg = if bearer.is_none() && x_api_key.is_none() {
        "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
    } else {
        "invalid API key"
    };
    // Read the unread body (bounded in size and time) before answering: hyper closes a
    // keep-alive connection whose request body was left unread, which made a client's next
    // request on it fail with a broken pipe whenever the body had not fully arrived yet.
    let body = req.into_body();
    let _ = tokio::time::timeout(
        REJECTED_BODY_DRAIN_TIME,
        axum::body::to_bytes(body, REJECTED_BODY_DRAIN_BYTES),
    )
    .await;
    ApiError::new(ErrorKind::Authentication, msg).respond(flavor)
}

/// How much of a rejected request's body is read so the connection stays usable; past either
/// bound the connection is closed instead.
const REJECTED_BODY_DRAIN_BYTES: usize = 1 << 20;
const REJECTED_BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Count every response by route and status, say which weights answered, and start the
/// request's log line (written when the last handle on it drops: for a stream, at its end).
async fn observe(State(app): Shared, mut req: Request, next: Next) -> Response {
    let st = &app.state;
    let route = metrics::route_label(req.uri().path());
    let log = RequestLog::new(req.method().as_str(), route, metrics::is_probe(route));
    req.extensions_mut().insert(log.clone());
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    st.metrics.count_request(route, status);
    log.status(status);
    // The failover front marks cloud answers itself; everything else came from here.
    if !resp.headers().contains_key(SERVED_BY) {
        if let Ok(v) = HeaderValue::from_str(&format!("local; weights={}", st.weights)) {
            resp.headers_mut().insert(SERVED_BY, v);
        }
    }
    if let Some(who) = resp.headers().get(SERVED_BY).and_then(|v| v.to_str().ok()) {
        log.served_by(who);
    }
    resp
}
