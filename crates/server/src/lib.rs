//! backstop-server: the OpenAI- and Anthropic-compatible HTTP tier over backstop-engine.
//!
//! The process binds first and loads the model after, so `/health` answers at once and
//! `/ready` says 503 until the weights are loaded and warm. Requests are admitted (model name,
//! context length, capacity) before any response byte; generation runs on the scheduler's
//! own threads, never on the async runtime's.

pub mod anthropic;
pub mod error;
pub mod metrics;
pub mod names;
pub mod openai;
pub mod output;
pub mod request;
pub mod scheduler;
pub mod state;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use thiserror::Error;

pub use error::{ApiError, Flavor};
pub use names::ModelNames;
pub use state::{AppState, ServeConfig};

use crate::error::ErrorKind;
use crate::state::RETRY_AFTER_S;

/// The header that says which weights answered (the failover front adds `cloud`).
pub const SERVED_BY: &str = "x-backstop-served-by";

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot load the model: {0}")]
    Load(#[from] backstop_engine::generate::EngineError),
    #[error("server error: {0}")]
    Io(std::io::Error),
    #[error("cannot set up the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The HTTP routes over a shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/backstop/status", get(status))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

/// Bind, load the model, serve until SIGINT/SIGTERM, then drain.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        // Two I/O threads are plenty: generation runs on the scheduler's own threads.
        .worker_threads(2)
        .thread_name("backstop-http")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(serve(config))
}

async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Io)?;
    eprintln!("backstop: listening on http://{local}");
    if !config.host.is_loopback() && config.api_keys.is_empty() {
        eprintln!(
            "backstop: warning: listening on {} with no --api-key: anyone who can reach this \
             address can use the model",
            config.host
        );
    }
    let grace = config.shutdown_grace;
    let upstreams = upstream::Upstreams::new(config.failover.clone())?;
    for u in &config.failover.upstreams {
        eprintln!(
            "backstop: {} requests go to {} first; the local model answers when it fails",
            u.name(),
            u.base_url
        );
    }
    let state = Arc::new(AppState::new(config, upstreams));

    let loader = Arc::clone(&state);
    let (load_tx, mut load_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        let r = loader.load();
        if r.is_ok() {
            eprintln!(
                "backstop: model {} loaded and warm in {:.2} s; ready",
                loader.weights,
                t0.elapsed().as_secs_f64()
            );
        }
        let _ = load_tx.send(r);
    });

    let app = router(Arc::clone(&state));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }
    });
    let server = tokio::spawn(async move { server.await });

    let workers;
    tokio::select! {
        r = &mut load_rx => match r {
            Ok(Ok(handles)) => workers = handles,
            Ok(Err(e)) => return Err(ServeError::Load(e)),
            Err(_) => return Err(ServeError::Io(std::io::Error::other("model loader vanished"))),
        },
        _ = shutdown_signal() => {
            eprintln!("backstop: stopping before the model finished loading");
            return Ok(());
        }
    }
    shutdown_signal().await;
    eprintln!(
        "backstop: shutting down: no new requests; in-flight ones get {:.1} s",
        grace.as_secs_f64()
    );
    state.draining.store(true, Ordering::Relaxed);
    state.scheduler.close();
    let _ = stop_tx.send(true);

    // In-flight generations may finish within the grace period; then they are cut short so
    // their streams end cleanly, and the process exits even if a client never reads.
    let sched = Arc::clone(&state.scheduler);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        sched.cancel_in_flight();
        // Streams end within a token of the cancel; this bound is for clients that stopped
        // reading, with room for a machine under heavy load.
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!("backstop: connections still open after the grace period; exiting");
        std::process::exit(0);
    });
    let _ = server.await;
    state.scheduler.cancel_in_flight();
    for w in workers {
        let _ = w.join();
    }
    eprintln!("backstop: stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 only when a request would be served now: loaded, warm, not draining, not full.
async fn ready(State(st): State<Arc<AppState>>) -> Response {
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

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut text = st
        .metrics
        .render(st.scheduler.running(), st.scheduler.queued(), st.is_ready());
    st.upstreams.render_metrics(&mut text);
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
async fn status(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "ready": st.is_ready(),
        "weights": st.weights,
        "running": st.scheduler.running(),
        "queued": st.scheduler.queued(),
        "upstreams": st.upstreams.status(),
    }))
}

async fn not_found(req: Request) -> ApiError {
    let path = req.uri().path();
    ApiError::new(
        Flavor::for_path(path),
        ErrorKind::NoRoute,
        format!("no route for {} {path}", req.method()),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path();
    let mut e = ApiError::invalid(
        Flavor::for_path(path),
        None,
        format!("method {} is not allowed on {path}", req.method()),
    )
    .into_response();
    *e.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    e
}

/// Paths that answer without a key: probes must work for whoever routes traffic here.
fn is_open(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/readyz")
}

/// `Authorization: Bearer KEY` (OpenAI) or `x-api-key: KEY` (Anthropic), when keys are set.
async fn authenticate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let keys = &st.config.api_keys;
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
    ApiError::new(flavor, ErrorKind::Authentication, msg).into_response()
}

/// How much of a rejected request's body is read so the connection stays usable; past either
/// bound the connection is closed instead.
const REJECTED_BODY_DRAIN_BYTES: usize = 1 << 20;
const REJECTED_BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Count every response by route and status, and say which weights answered.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = metrics::route_label(req.uri().path());
    let mut resp = next.run(req).await;
    st.metrics.count_request(route, resp.status().as_u16());
    // The failover front marks cloud answers itself; everything else came from here.
    if !resp.headers().contains_key(SERVED_BY) {
        if let Ok(v) = HeaderValue::from_str(&format!("local; weights={}", st.weights)) {
            resp.headers_mut().insert(SERVED_BY, v);
        }
    }
    resp
}
