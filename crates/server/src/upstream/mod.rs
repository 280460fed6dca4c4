//! The failover front: forward to the cloud while it works, answer locally the moment it
//! does not.
//!
//! A request arriving in one wire format (`/v1/messages*` Anthropic, the rest OpenAI) takes
//! its route: a chain of upstreams tried in order, then the local model. An upstream of the
//! request's own format gets the client's headers and body unchanged (but for a mapped model
//! name and, where configured, the upstream's own key); one of the other format gets the
//! request translated (`translate.rs`) and its answer translated back, or is skipped with a
//! reason when something cannot be translated. Failures before the client has seen a byte
//! (connect errors, timeouts, 5xx/529, 429 when asked) move on down the chain; the client's
//! own 4xx pass through. A streamed answer is held until
//! its first whole event arrives, so a stream that dies at once also falls back. When a stream
//! breaks after bytes went out, the local model continues the same message in the same stream
//! (see `continuation.rs`). One breaker per upstream stops an outage from costing a timeout
//! per request; health checks (`probe.rs`) open it before a user pays for one. A council
//! (`council.rs`) asks several members at once instead of one after another.

mod agreement;
pub mod breaker;
mod continuation;
mod council;
pub mod probe;
pub mod sse;
pub mod translate;

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

use crate::config::{Credentials, FailoverConfig, UpstreamSpec};
use crate::local;
use crate::log::RequestLog;
use crate::state::AppState;
use crate::wire::{Endpoint, Flavor};
use breaker::{Breaker, Permit};
use sse::{is_error_event, Progress, Splitter};
use translate::StreamTranslator;

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
    councils: tokio::sync::Semaphore,
    pub council_stats: council::Stats,
}

impl Upstreams {
    pub fn new(cfg: FailoverConfig) -> Result<Self, reqwest::Error> {
        let mut list = Vec::new();
        for spec in &cfg.upstreams {
            let client = reqwest::Client::builder()
                .connect_timeout(cfg.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                // A redirect would carry the request, and an upstream's own key in
                // `x-api-key`, to a host nobody configured: a 3xx is a failure instead.
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            list.push(Upstream {
                spec: spec.clone(),
                breaker: Breaker::new(&spec.name, cfg.breaker_failures, cfg.breaker_cooldown),
                client,
                cloud_answers: AtomicU64::new(0),
                fallbacks: AtomicU64::new(0),
                continued_midstream: AtomicU64::new(0),
            });
        }
        let councils = [&cfg.anthropic, &cfg.openai]
            .iter()
            .filter_map(|r| r.council.as_ref())
            .map(|c| c.max_concurrent)
            .max()
            .unwrap_or(council::HEADER_MAX_CONCURRENT);
        Ok(Self {
            list,
            cfg,
            councils: tokio::sync::Semaphore::new(councils),
            council_stats: council::Stats::default(),
        })
    }

    pub fn at(&self, i: usize) -> &Upstream {
        &self.list[i]
    }

    pub fn all(&self) -> &[Upstream] {
        &self.list
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
                        "format": u.spec.format.name(),
                        "own_key": matches!(u.spec.credentials, Credentials::Key(_)),
                        "health_check": u.spec.probe.as_ref().map(|p| json!({
                            "path": p.path,
                            "interval_s": p.interval.as_secs_f64(),
                            "passed": s.checks_ok,
                            "failed": s.checks_failed,
                            "last_passed": s.last_check_ok,
                        })),
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
        let _ = writeln!(
            out,
            "# HELP backstop_upstream_health_checks_total Active health checks by outcome.\n\
             # TYPE backstop_upstream_health_checks_total counter"
        );
        for u in self.list.iter().filter(|u| u.spec.probe.is_some()) {
            let s = u.breaker.snapshot();
            for (result, n) in [("passed", s.checks_ok), ("failed", s.checks_failed)] {
                let _ = writeln!(
                    out,
                    "backstop_upstream_health_checks_total{{upstream=\"{}\",result=\"{result}\"}} {n}",
                    u.spec.name()
                );
            }
        }
        self.council_stats.render(out);
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
pub(crate) struct ProbeGuard<'a> {
    pub(crate) breaker: &'a Breaker,
    pub(crate) armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.release_probe();
        }
    }
}

/// Forward along the route's chain, or answer locally. `body` is the request as received;
/// `model_id` is the `{id}` of `GET /v1/models/{id}`.
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
    let route = ups.cfg.route(ep.flavor());
    // Councils compare chat answers; legacy completions have no stream to render them in.
    if matches!(ep, Endpoint::Chat | Endpoint::Messages) {
        match council::wanted(ups, route, headers) {
            Ok(Some(spec)) => {
                if let Ok(_slot) = ups.councils.try_acquire() {
                    return council::run(st, ups, &spec, ep, uri, headers, body, log).await;
                }
                ups.council_stats.busy.fetch_add(1, Relaxed);
            }
            Ok(None) => {}
            Err(e) => return e.respond(ep.flavor()),
        }
    }
    let streaming = ep.generates() && wants_stream(&body);
    let mut reasons: Vec<(String, String)> = Vec::new();
    // Upstreams that failed or were skipped by their breaker: counted as local fallbacks
    // only if no later one answers.
    let mut passed: Vec<usize> = Vec::new();
    for &i in &route.chain {
        let up = ups.at(i);
        let out = match outgoing(&ups.cfg, up, ep, uri, headers, &body, streaming) {
            Ok(o) => o,
            Err(skip) => {
                reasons.push((up.spec.name.clone(), format!("skipped: {skip}")));
                continue;
            }
        };
        let permit = up.breaker.permit();
        if permit == Permit::Deny {
            reasons.push((
                up.spec.name.clone(),
                "circuit open (the upstream failed recently)".to_owned(),
            ));
            passed.push(i);
            continue;
        }
        let mut guard = ProbeGuard {
            breaker: &up.breaker,
            armed: permit == Permit::Probe,
        };
        let result = attempt_with_retries(ups, &out, ep, streaming).await;
        guard.armed = false;
        match result {
            Ok(answer) => {
                up.breaker.success();
                up.cloud_answers.fetch_add(1, Relaxed);
                let relay = RelaySpec {
                    upstream: i,
                    translate: out.translate,
                    include_usage: include_usage(&body),
                };
                return cloud_response(st, ups, ep, relay, body, answer, log);
            }
            Err(f) => {
                let why = f.to_string();
                tracing::warn!(
                    target: "backstop::upstream",
                    upstream = up.spec.name(),
                    error = %why,
                    "upstream failed; trying the next in the chain or the local model"
                );
                up.breaker.failure(&why);
                passed.push(i);
                reasons.push((up.spec.name.clone(), why));
            }
        }
    }
    for &i in &passed {
        ups.at(i).fallbacks.fetch_add(1, Relaxed);
    }
    if reasons.is_empty() {
        return answer_locally(st, ep, &body, model_id, None, log).await;
    }
    // One upstream keeps its bare reason (what clients of one cloud have always seen).
    let reason = if route.chain.len() == 1 {
        reasons.remove(0).1
    } else {
        reasons
            .iter()
            .map(|(n, r)| format!("{n}: {r}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    answer_locally(st, ep, &body, model_id, Some(&reason), log).await
}

/// One upstream request, built for one upstream from the client's request.
pub(crate) struct Outgoing {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    /// The upstream's format when it is not the client's: answers are translated back.
    translate: Option<Flavor>,
    client: reqwest::Client,
    on_429: bool,
    /// The upstream uses its own key.
    own_key: bool,
}

impl Outgoing {
    /// Whether a 4xx is ours rather than the client's (which passes through): its own key
    /// refused (a revoked key or a login outage is an outage, not the client's fault), or
    /// any 4xx to a translated request (the error may be the translation's, e.g. a model
    /// name the other provider lacks). Then the chain moves on.
    fn is_ours(&self, status: StatusCode) -> bool {
        status.is_client_error()
            && (self.translate.is_some() || (self.own_key && matches!(status.as_u16(), 401 | 403)))
    }
}

/// The request `up` gets for this one, or why `up` cannot serve it.
pub(crate) fn outgoing(
    cfg: &FailoverConfig,
    up: &Upstream,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    streaming: bool,
) -> Result<Outgoing, String> {
    let from = ep.flavor();
    let to = up.spec.format;
    let method = if ep.is_get() {
        Method::GET
    } else {
        Method::POST
    };
    let mut hdrs = forward_headers(headers);
    let (url, body, translate) = if from == to {
        let body = match ep
            .generates()
            .then(|| remap_model(&up.spec, body))
            .flatten()
        {
            Some(b) => b,
            None => body.clone(),
        };
        (upstream_url(&up.spec.base_url, uri), body, None)
    } else {
        let path = match ep {
            Endpoint::Messages => "/v1/chat/completions",
            Endpoint::Chat => "/v1/messages",
            _ => {
                return Err(format!(
                    "{} cannot be translated to the {} format",
                    uri.path(),
                    to.name()
                ))
            }
        };
        let v: Value =
            serde_json::from_slice(body).map_err(|_| "the request body is not JSON".to_owned())?;
        let model = v.get("model").and_then(Value::as_str).unwrap_or("");
        let opts = translate::RequestOptions {
            model: up.spec.map_model(model),
            default_max_tokens: cfg.default_max_tokens,
        };
        let t = translate::request(from, to, &v, &opts).map_err(|e| e.0)?;
        hdrs.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let uri: Uri = path.parse().expect("static path");
        (
            upstream_url(&up.spec.base_url, &uri),
            Bytes::from(serde_json::to_vec(&t).unwrap_or_default()),
            Some(to),
        )
    };
    set_credentials(&mut hdrs, &up.spec, from);
    if streaming && translate.is_some() {
        hdrs.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    Ok(Outgoing {
        method,
        url,
        headers: hdrs,
        body,
        translate,
        client: up.client.clone(),
        on_429: cfg.fallback_on_429,
        own_key: matches!(up.spec.credentials, Credentials::Key(_)),
    })
}

/// The body with its `model` replaced as the upstream's map says; `None` leaves the
/// client's bytes untouched (no mapping applies).
fn remap_model(spec: &UpstreamSpec, body: &[u8]) -> Option<Bytes> {
    if spec.models.is_empty() {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let to = spec.map_model(v.get("model")?.as_str()?)?.to_owned();
    v["model"] = Value::String(to);
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The credentials an upstream gets. Its own key replaces everything the client sent to
/// identify itself. A client's own credentials go only to an upstream of the client's own
/// format: a key a Claude client holds is for Anthropic, never for an OpenAI-format provider,
/// so a translated request without an upstream key carries none (keyless OpenAI-compatible
/// servers answer it; others refuse it and the chain moves on). Anthropic needs a version
/// header a client of the other format never sends.
fn set_credentials(h: &mut HeaderMap, spec: &UpstreamSpec, from: Flavor) {
    let to = spec.format;
    let key = match &spec.credentials {
        Credentials::Key(k) => Some(k.clone()),
        Credentials::Forward if from != to => None,
        Credentials::Forward => return,
    };
    for name in CLIENT_IDENTITY {
        h.remove(*name);
    }
    if from != to {
        // Headers of the client's provider mean nothing (or something else) to this one.
        for name in ["anthropic-version", "anthropic-beta"] {
            h.remove(name);
        }
    }
    own_auth(h, to, key.as_deref());
}

/// An upstream's own key in the header its format reads, and Anthropic's version header if
/// the request lacks one (requests and health checks alike).
pub(crate) fn own_auth(h: &mut HeaderMap, format: Flavor, key: Option<&str>) {
    if let Some(k) = key.filter(|k| !k.is_empty()) {
        let (name, value) = match format {
            Flavor::Anthropic => (HeaderName::from_static("x-api-key"), k.to_owned()),
            Flavor::OpenAi => (header::AUTHORIZATION, format!("Bearer {k}")),
        };
        if let Ok(mut v) = HeaderValue::from_str(&value) {
            v.set_sensitive(true);
            h.insert(name, v);
        }
    }
    if format == Flavor::Anthropic && !h.contains_key("anthropic-version") {
        h.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static("2023-06-01"),
        );
    }
}

/// Headers by which a client identifies itself to its provider; none of them reach an
/// upstream that uses its own key or speaks the other format.
const CLIENT_IDENTITY: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "openai-organization",
    "openai-project",
    "x-goog-api-key",
];

/// Whether an OpenAI client asked for the usage chunk of a stream.
fn include_usage(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
        })
        .unwrap_or(false)
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
pub(crate) fn sanitize(s: &str) -> String {
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
        if !is_hop_header(k.as_str())
            && k != header::ACCEPT_ENCODING
            && !k.as_str().starts_with("x-backstop-")
        {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

fn is_fallback_status(s: StatusCode, on_429: bool) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504 | 529)
        || (on_429 && s.as_u16() == 429)
        || s.is_redirection()
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
    out: &Outgoing,
    ep: Endpoint,
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
        let result = attempt(out, ep, streaming, left).await;
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

/// One upstream request.
async fn attempt(
    out: &Outgoing,
    ep: Endpoint,
    streaming: bool,
    budget: Duration,
) -> Result<Answer, Failure> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut req = out
        .client
        .request(out.method.clone(), &out.url)
        .headers(out.headers.clone());
    if !ep.is_get() {
        req = req.body(out.body.clone());
    }
    let resp = match tokio::time::timeout_at(deadline, req.send()).await {
        Err(_) => return Err(Failure::Timeout("first byte")),
        Ok(Err(e)) if e.is_timeout() => return Err(Failure::Timeout("connection")),
        // Without the URL: reasons reach response headers, and hostnames are not the
        // client's business.
        Ok(Err(e)) => return Err(Failure::Connect(error_chain(&e.without_url()))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if is_fallback_status(status, out.on_429) || out.is_ours(status) {
        return Err(Failure::Status(status, retry_after(resp.headers())));
    }
    let headers = response_headers(resp.headers());
    if !streaming || !status.is_success() {
        return match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Err(_) => Err(Failure::Timeout("response body")),
            Ok(Err(e)) => Err(Failure::Broken(error_chain(&e.without_url()))),
            // A translated answer must parse, or there is nothing to translate.
            Ok(Ok(b))
                if out.translate.is_some()
                    && status.is_success()
                    && serde_json::from_slice::<Value>(&b).is_err() =>
            {
                Err(Failure::Broken("answer is not JSON".into()))
            }
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

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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

/// Which upstream answered, and how its answer reaches the client.
#[derive(Clone, Copy)]
struct RelaySpec {
    upstream: usize,
    /// The upstream's format, when it is not the client's.
    translate: Option<Flavor>,
    /// The OpenAI client asked for a usage chunk (kept when translating a stream).
    include_usage: bool,
}

fn cloud_response(
    st: &Arc<AppState>,
    ups: &Arc<Upstreams>,
    ep: Endpoint,
    spec: RelaySpec,
    request: Bytes,
    answer: Answer,
    log: &RequestLog,
) -> Response {
    let up = ups.at(spec.upstream);
    let served_by = HeaderValue::from_str(&format!("cloud; upstream={}", up.spec.name()))
        .unwrap_or(HeaderValue::from_static("cloud"));
    let (status, mut headers, body) = match answer {
        Answer::Whole(status, mut headers, bytes) => {
            let bytes = match spec.translate {
                None => bytes,
                Some(from) => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Bytes::from(translate_whole(from, ep.flavor(), status, &bytes))
                }
            };
            (status, headers, Body::from(bytes))
        }
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
                upstream: spec.upstream,
                translator: spec
                    .translate
                    .map(|from| StreamTranslator::new(from, ep.flavor(), spec.include_usage)),
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

/// A whole upstream body in the client's format: an answer, or an error (the client's own
/// 4xx, passed through) in the client's error shape.
pub(crate) fn translate_whole(
    from: Flavor,
    to: Flavor,
    status: StatusCode,
    bytes: &[u8],
) -> Vec<u8> {
    let v = if status.is_success() {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => translate::response(from, to, &v),
            Err(_) => translate::error_body(to, 502, b"upstream answer is not JSON"),
        }
    } else {
        translate::error_body(to, status.as_u16(), bytes)
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// What a relayed stream needs to continue locally if the cloud breaks.
struct Relay {
    st: Arc<AppState>,
    ups: Arc<Upstreams>,
    ep: Endpoint,
    request: Bytes,
    log: RequestLog,
    upstream: usize,
    /// Upstream events to the client's format, when they differ.
    translator: Option<StreamTranslator>,
}

impl Relay {
    /// Pass the cloud's stream through (translated, where the formats differ), whole events
    /// at a time; if it breaks before its proper end, continue the message locally in the
    /// same stream.
    async fn run(
        mut self,
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
                let out = match &mut self.translator {
                    None => vec![ev],
                    Some(t) => t.push(&ev),
                };
                for ev in out {
                    progress.observe(flavor, &ev);
                    if tx.send(Ok(Bytes::from(ev))).await.is_err() {
                        return; // the client left; dropping `rest` closes the upstream request
                    }
                }
            }
            let broke = match tokio::time::timeout(idle, rest.next()).await {
                Ok(Some(Ok(chunk))) => match splitter.push(&chunk) {
                    Ok(evs) => {
                        pending = evs;
                        continue;
                    }
                    Err(e) => e.to_owned(),
                },
                Ok(None) => "upstream stream ended before its last event".to_owned(),
                Ok(Some(Err(e))) => {
                    format!("upstream stream broke: {}", error_chain(&e.without_url()))
                }
                Err(_) => format!("upstream stream silent for {} s", idle.as_secs()),
            };
            // A translated stream may have said all it had to before it broke (an OpenAI
            // stream's finish_reason, with its [DONE] lost): then the client is owed only
            // the closing events, not a continuation.
            if let Some(t) = &mut self.translator {
                for ev in t.finish() {
                    progress.observe(flavor, &ev);
                    if tx.send(Ok(Bytes::from(ev))).await.is_err() {
                        return;
                    }
                }
            }
            if progress.finished {
                return;
            }
            break 'relay broke;
        };
        drop(rest);
        let up = self.ups.at(self.upstream);
        tracing::warn!(
            target: "backstop::upstream",
            upstream = up.spec.name(),
            error = %reason,
            sent_chars = progress.text.chars().count(),
            "upstream stream broke; continuing locally"
        );
        up.breaker.failure(&reason);
        up.continued_midstream.fetch_add(1, Relaxed);
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
