//! The failover front: forward to the cloud while it works, answer locally the moment it
//! does not.
//!
//! A request goes to its own provider's upstream (`/v1/messages*` to Anthropic, the rest to
//! OpenAI) with the client's headers and body unchanged. Failures before the client has seen
//! a byte (connect errors, timeouts, 5xx/529, 429 when asked) fall back to the local model in
//! the same wire format; the client's own 4xx pass through. A streamed answer is held until
//! its first whole event arrives, so a stream that dies at once also falls back. When a stream
//! breaks after bytes went out, the local model continues the same message in the same stream
//! (see `continuation.rs`). One breaker per upstream stops an outage from costing a timeout
//! per request.

pub mod breaker;
mod continuation;
pub mod sse;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{FailoverConfig, UpstreamSpec};
use crate::local;
use crate::log::RequestLog;
use crate::state::AppState;
use crate::wire::{Endpoint, Flavor};
use breaker::{Breaker, Permit};
use sse::{is_error_event, Progress, Splitter};

/// The header that says which weights answered (`local; weights=FILE` or `cloud; upstream=NAME`).
pub const SERVED_BY: &str = "x-backstop-served-by";

pub struct Upstream {
    pub spec: UpstreamSpec,
    pub breaker: Breaker,
    client: reqwest::Client,
    pub cloud_answers: AtomicU64,
    pub fallbacks: AtomicU64,
    pub continued_midstream: AtomicU64,
}

pub struct Upstreams {
    list: Vec<Upstream>,
    pub cfg: FailoverConfig,
}

impl Upstreams {
    pub fn new(cfg: FailoverConfig) -> Result<Self, reqwest::Error> {
        let mut list = Vec::new();
        for spec in &cfg.upstreams {
            let client = reqwest::Client::builder()
                .connect_timeout(cfg.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()?;
            list.push(Upstream {
                spec: spec.clone(),
                breaker: Breaker::new(spec.name(), cfg.breaker_failures, cfg.breaker_cooldown),
                client,
                cloud_answers: AtomicU64::new(0),
                fallbacks: AtomicU64::new(0),
                continued_midstream: AtomicU64::new(0),
            });
        }
        Ok(Self { list, cfg })
    }

    pub fn get(&self, flavor: Flavor) -> Option<&Upstream> {
        self.list.iter().find(|u| u.spec.flavor == flavor)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// For `/backstop/status` (no secrets: URLs and counts only).
    pub fn status(&self) -> Value {
        Value::Array(
            self.list
                .iter()
                .map(|u| {
                    let s = u.breaker.snapshot();
                    json!({
                        "name": u.spec.name(),
                        "url": u.spec.base_url,
                        "breaker": s.state.name(),
                        "consecutive_failures": s.consecutive_failures,
                        "successes": s.successes,
                        "failures": s.failures,
                        "short_circuited": s.short_circuited,
                        "retry_in_s": s.retry_in_s,
                        "last_error": s.last_error,
                        "cloud_answers": u.cloud_answers.load(Relaxed),
                        "local_fallbacks": u.fallbacks.load(Relaxed),
                        "continued_midstream": u.continued_midstream.load(Relaxed),
                    })
                })
                .collect(),
        )
    }

    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        if self.list.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP backstop_upstream_breaker_state 0 closed, 1 open, 2 half-open.\n\
             # TYPE backstop_upstream_breaker_state gauge"
        );
        for u in &self.list {
            let v = match u.breaker.snapshot().state {
                breaker::State::Closed => 0,
                breaker::State::Open => 1,
                breaker::State::HalfOpen => 2,
            };
            let _ = writeln!(
                out,
                "backstop_upstream_breaker_state{{upstream=\"{}\"}} {v}",
                u.spec.name()
            );
        }
        let _ = writeln!(
            out,
            "# HELP backstop_upstream_answers_total Requests by who answered.\n\
             # TYPE backstop_upstream_answers_total counter"
        );
        for u in &self.list {
            let s = u.breaker.snapshot();
            for (who, n) in [
                ("cloud", u.cloud_answers.load(Relaxed)),
                ("local_fallback", u.fallbacks.load(Relaxed)),
                ("continued_midstream", u.continued_midstream.load(Relaxed)),
                ("short_circuited", s.short_circuited),
            ] {
                let _ = writeln!(
                    out,
                    "backstop_upstream_answers_total{{upstream=\"{}\",answered=\"{who}\"}} {n}",
                    u.spec.name()
                );
            }
        }
    }
}

/// Why the cloud did not answer.
#[derive(Debug)]
enum Failure {
    Connect(String),
    Timeout(&'static str),
    Status(StatusCode, Option<Duration>),
    Broken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "upstream unreachable: {e}"),
            Failure::Timeout(what) => write!(f, "upstream timed out waiting for the {what}"),
            Failure::Status(s, _) => write!(f, "upstream returned {}", s.as_u16()),
            Failure::Broken(e) => write!(f, "upstream response broke: {e}"),
        }
    }
}

enum Answer {
    /// A whole response (non-streamed, or any status we pass through).
    Whole(StatusCode, HeaderMap, Bytes),
    /// A stream whose first events arrived.
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        first: Vec<Vec<u8>>,
        splitter: Splitter,
        rest: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    },
}

/// Releases a half-open probe that ended without a verdict (the client left mid-attempt).
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.release_probe();
        }
    }
}

/// Forward to the cloud, or answer locally. `body` is the request as received; `model_id`
/// is the `{id}` of `GET /v1/models/{id}`.
#[allow(clippy::too_many_arguments)]
pub async fn front(
    st: &Arc<AppState>,
    ups: &Arc<Upstreams>,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    model_id: Option<&str>,
    log: &RequestLog,
) -> Response {
    let Some(up) = ups.get(ep.flavor()) else {
        return answer_locally(st, ep, &body, model_id, None, log).await;
    };
    let streaming = ep.generates() && wants_stream(&body);
    let permit = up.breaker.permit();
    let reason = if permit == Permit::Deny {
        "circuit open (the upstream failed recently)".to_owned()
    } else {
        let mut guard = ProbeGuard {
            breaker: &up.breaker,
            armed: permit == Permit::Probe,
        };
        let result = attempt_with_retries(ups, up, ep, uri, headers, &body, streaming).await;
        guard.armed = false;
        match result {
            Ok(answer) => {
                up.breaker.success();
                up.cloud_answers.fetch_add(1, Relaxed);
                return cloud_response(st, ups, ep, up, body, answer, log);
            }
            Err(f) => {
                let why = f.to_string();
                tracing::warn!(
                    target: "backstop::upstream",
                    upstream = up.spec.name(),
                    error = %why,
                    "upstream failed; answering locally"
                );
                up.breaker.failure(&why);
                why
            }
        }
    };
    up.fallbacks.fetch_add(1, Relaxed);
    answer_locally(st, ep, &body, model_id, Some(&reason), log).await
}

async fn answer_locally(
    st: &Arc<AppState>,
    ep: Endpoint,
    body: &[u8],
    model_id: Option<&str>,
    reason: Option<&str>,
    log: &RequestLog,
) -> Response {
    if let Some(r) = reason {
        log.fallback_reason(r);
    }
    let mut resp = match local::answer(st, ep, body, model_id, log).await {
        Ok(r) => r,
        Err(e) => e.respond(ep.flavor()),
    };
    if let Some(r) = reason {
        if let Ok(v) = HeaderValue::from_str(&sanitize(r)) {
            resp.headers_mut()
                .insert(HeaderName::from_static(FALLBACK_REASON), v);
        }
    }
    resp
}

/// The header that says why a request was answered locally.
pub const FALLBACK_REASON: &str = "x-backstop-fallback-reason";

/// Header-safe text: visible ASCII only.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

fn wants_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false)
}

fn upstream_url(base: &str, uri: &Uri) -> String {
    let base = base.trim_end_matches('/');
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    // Accept a base given with or without its `/v1`.
    match (base.ends_with("/v1"), pq.strip_prefix("/v1")) {
        (true, Some(rest)) => format!("{base}{rest}"),
        _ => format!("{base}{pq}"),
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those we recompute.
fn is_hop_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn forward_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        // Ask for an uncompressed answer: we read the stream to continue it if it breaks.
        if !is_hop_header(k.as_str()) && k != header::ACCEPT_ENCODING {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

fn is_fallback_status(s: StatusCode, on_429: bool) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504 | 529) || (on_429 && s.as_u16() == 429)
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

async fn attempt_with_retries(
    ups: &Upstreams,
    up: &Upstream,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    streaming: bool,
) -> Result<Answer, Failure> {
    let cfg = &ups.cfg;
    let budget = if streaming {
        cfg.stream_first_byte_timeout
    } else {
        cfg.first_byte_timeout
    };
    let started = Instant::now();
    let mut tries = 0;
    loop {
        let left = budget.saturating_sub(started.elapsed());
        let result = attempt(
            up,
            ep,
            uri,
            headers,
            body,
            streaming,
            left,
            cfg.fallback_on_429,
        )
        .await;
        let Err(f) = result else { return result };
        tries += 1;
        if tries > cfg.retries {
            return Err(f);
        }
        // Honour Retry-After only while it fits inside this request's deadline.
        let wait = match &f {
            Failure::Status(_, ra) => ra.unwrap_or_default(),
            _ => Duration::ZERO,
        };
        if started.elapsed() + wait >= budget {
            return Err(f);
        }
        tokio::time::sleep(wait).await;
    }
}

/// One upstream request; everything it needs is the request as received.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    up: &Upstream,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    streaming: bool,
    budget: Duration,
    on_429: bool,
) -> Result<Answer, Failure> {
    let deadline = tokio::time::Instant::now() + budget;
    let method = if ep.is_get() {
        Method::GET
    } else {
        Method::POST
    };
    let mut req = up
        .client
        .request(method, upstream_url(&up.spec.base_url, uri))
        .headers(forward_headers(headers));
    if !ep.is_get() {
        req = req.body(body.clone());
    }
    let resp = match tokio::time::timeout_at(deadline, req.send()).await {
        Err(_) => return Err(Failure::Timeout("first byte")),
        Ok(Err(e)) if e.is_timeout() => return Err(Failure::Timeout("connection")),
        Ok(Err(e)) => return Err(Failure::Connect(error_chain(&e))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if is_fallback_status(status, on_429) {
        return Err(Failure::Status(status, retry_after(resp.headers())));
    }
    let headers = response_headers(resp.headers());
    if !streaming || !status.is_success() {
        return match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Err(_) => Err(Failure::Timeout("response body")),
            Ok(Err(e)) => Err(Failure::Broken(error_chain(&e))),
            Ok(Ok(b)) => Ok(Answer::Whole(status, headers, b)),
        };
    }
    // Hold the stream until its first whole event: a stream that dies before that is a
    // failure we can still answer locally with a clean status line.
    let mut rest = resp.bytes_stream().boxed();
    let mut splitter = Splitter::default();
    loop {
        match tokio::time::timeout_at(deadline, rest.next()).await {
            Err(_) => return Err(Failure::Timeout("first event")),
            Ok(None) => {
                return Err(Failure::Broken(
                    "stream ended before its first event".into(),
                ))
            }
            Ok(Some(Err(e))) => return Err(Failure::Broken(error_chain(&e))),
            Ok(Some(Ok(chunk))) => {
                let events = splitter
                    .push(&chunk)
                    .map_err(|e| Failure::Broken(e.into()))?;
                if let Some(msg) = events.iter().find_map(|e| is_error_event(e)) {
                    return Err(Failure::Broken(format!("error event: {msg}")));
                }
                if !events.is_empty() {
                    return Ok(Answer::Stream {
                        status,
                        headers,
                        first: events,
                        splitter,
                        rest,
                    });
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn response_headers(h: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        if !is_hop_header(k.as_str()) {
            if let (Ok(name), Ok(val)) = (
                HeaderName::from_bytes(k.as_str().as_bytes()),
                HeaderValue::from_bytes(v.as_bytes()),
            ) {
                out.append(name, val);
            }
        }
    }
    out
}

fn cloud_response(
    st: &Arc<AppState>,
    ups: &Arc<Upstreams>,
    ep: Endpoint,
    up: &Upstream,
    request: Bytes,
    answer: Answer,
    log: &RequestLog,
) -> Response {
    let served_by = HeaderValue::from_str(&format!("cloud; upstream={}", up.spec.name()))
        .unwrap_or(HeaderValue::from_static("cloud"));
    let (status, mut headers, body) = match answer {
        Answer::Whole(status, headers, bytes) => (status, headers, Body::from(bytes)),
        Answer::Stream {
            status,
            headers,
            first,
            splitter,
            rest,
        } => {
            log.stream(true);
            let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(32);
            let relay = Relay {
                st: Arc::clone(st),
                ups: Arc::clone(ups),
                ep,
                request,
                log: log.clone(),
            };
            tokio::spawn(relay.run(first, splitter, rest, tx));
            (status, headers, Body::from_stream(ReceiverStream::new(rx)))
        }
    };
    headers.insert(HeaderName::from_static(SERVED_BY), served_by);
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// What a relayed stream needs to continue locally if the cloud breaks.
struct Relay {
    st: Arc<AppState>,
    ups: Arc<Upstreams>,
    ep: Endpoint,
    request: Bytes,
    log: RequestLog,
}

impl Relay {
    /// Pass the cloud's stream through, whole events at a time; if it breaks before its
    /// proper end, continue the message locally in the same stream.
    async fn run(
        self,
        first: Vec<Vec<u8>>,
        mut splitter: Splitter,
        mut rest: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
        tx: local::StreamTx,
    ) {
        let flavor = self.ep.flavor();
        let idle = self.ups.cfg.stream_idle_timeout;
        let mut progress = Progress::default();
        let mut pending = first;
        let reason = 'relay: loop {
            for ev in pending.drain(..) {
                if !progress.finished {
                    if let Some(msg) = is_error_event(&ev) {
                        break 'relay format!("upstream sent an error event: {msg}");
                    }
                }
                progress.observe(flavor, &ev);
                if tx.send(Ok(Bytes::from(ev))).await.is_err() {
                    return; // the client left; dropping `rest` closes the upstream request
                }
            }
            match tokio::time::timeout(idle, rest.next()).await {
                Ok(Some(Ok(chunk))) => match splitter.push(&chunk) {
                    Ok(evs) => pending = evs,
                    Err(e) => break 'relay e.to_owned(),
                },
                Ok(None) if progress.finished => return,
                Ok(None) => break 'relay "upstream stream ended before its last event".to_owned(),
                Ok(Some(Err(_))) if progress.finished => return,
                Ok(Some(Err(e))) => {
                    break 'relay format!("upstream stream broke: {}", error_chain(&e))
                }
                Err(_) if progress.finished => return,
                Err(_) => break 'relay format!("upstream stream silent for {} s", idle.as_secs()),
            }
        };
        drop(rest);
        if let Some(up) = self.ups.get(flavor) {
            tracing::warn!(
                target: "backstop::upstream",
                upstream = up.spec.name(),
                error = %reason,
                sent_chars = progress.text.chars().count(),
                "upstream stream broke; continuing locally"
            );
            up.breaker.failure(&reason);
            up.continued_midstream.fetch_add(1, Relaxed);
        }
        self.log.fallback_reason(&reason);
        continuation::continue_locally(
            &self.st,
            self.ep,
            &self.request,
            &progress,
            &reason,
            &tx,
            &self.log,
        )
        .await;
    }
}
