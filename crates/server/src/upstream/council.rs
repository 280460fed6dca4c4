//! Council mode: one request asked of several members at once (upstreams of the route and
//! the local model), within one deadline, and one answer chosen by the policy:
//! - `first`: the first complete answer wins; the others are cancelled;
//! - `primary`: the primary's answer if it comes within `primary_deadline`, else the first
//!   other complete answer (or the primary's, if it is still the first);
//! - `cross-check`: every answer within the deadline; the primary's is returned (the first
//!   other if the primary failed) with an agreement report comparing it to each other one.
//!
//! Members answer whole (streaming off), so answers can be compared; a client that asked
//! for a stream gets the chosen answer as a stream. The report goes in the
//! `x-backstop-council` header and in a `backstop.council` field of the body (Anthropic: of
//! the final `message_delta` event; OpenAI: of the last chunk). No member outlives the
//! deadline: a future dropped is a request cancelled, upstream or local.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use super::agreement::{compare, said};
use super::breaker::Permit;
use super::{outgoing, sanitize, translate, translate_whole, Upstreams, SERVED_BY};
use crate::config::{CouncilSpec, Policy, RouteSpec};
use crate::error::ApiError;
use crate::local;
use crate::log::RequestLog;
use crate::state::AppState;
use crate::wire::{Endpoint, Flavor};

/// A request asks for a council with this header: `first`, `primary`, `cross-check`, or
/// `off` to skip the route's own.
pub const HEADER: &str = "x-backstop-council";

/// Councils at once when no route configures one (header-only councils).
pub const HEADER_MAX_CONCURRENT: usize = 4;

#[derive(Default)]
pub struct Stats {
    pub runs: [AtomicU64; 3],
    pub disagreements: AtomicU64,
    /// Requests that wanted a council while `max_concurrent` were running (they took the
    /// route's chain instead).
    pub busy: AtomicU64,
    /// Councils with no answer within the deadline.
    pub unanswered: AtomicU64,
}

impl Stats {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP backstop_council_requests_total Requests answered by a council, by policy.\n\
             # TYPE backstop_council_requests_total counter"
        );
        for (i, p) in [Policy::First, Policy::Primary, Policy::CrossCheck]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "backstop_council_requests_total{{policy=\"{}\"}} {}",
                p.name(),
                self.runs[i].load(Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "backstop_council_disagreements_total",
                "Cross-checks where an answer disagreed with the chosen one.",
                &self.disagreements,
            ),
            (
                "backstop_council_busy_total",
                "Council requests sent down the chain because max_concurrent were running.",
                &self.busy,
            ),
            (
                "backstop_council_unanswered_total",
                "Councils with no answer within their deadline.",
                &self.unanswered,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}

fn policy_slot(p: Policy) -> usize {
    match p {
        Policy::First => 0,
        Policy::Primary => 1,
        Policy::CrossCheck => 2,
    }
}

/// The council this request gets: the header's policy over the route's council (or over
/// the route's chain and the local model), else the route's own; `None` = the chain.
pub fn wanted(
    ups: &Upstreams,
    route: &RouteSpec,
    headers: &HeaderMap,
) -> Result<Option<CouncilSpec>, ApiError> {
    let Some(h) = headers.get(HEADER) else {
        return Ok(route.council.clone());
    };
    let v = h.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if v == "off" || v == "none" {
        return Ok(None);
    }
    let policy = Policy::parse(&v).ok_or_else(|| {
        ApiError::invalid(
            None,
            format!("{HEADER} must be first, primary, cross-check or off, not {v:?}"),
        )
    })?;
    let spec = match &route.council {
        Some(c) => CouncilSpec {
            policy,
            ..c.clone()
        },
        None => {
            let deadline = ups.cfg.first_byte_timeout;
            CouncilSpec {
                policy,
                members: route.chain.clone(),
                local: true,
                primary: route.chain.first().copied(),
                deadline,
                primary_deadline: deadline / 2,
                max_concurrent: HEADER_MAX_CONCURRENT,
                text_agreement: 0.5,
            }
        }
    };
    // The local model alone is no council.
    Ok((spec.members.len() + usize::from(spec.local) >= 2).then_some(spec))
}

/// A member: an upstream by index, or the local model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Upstream(usize),
    Local,
}

/// A member's whole answer in the client's format, or why it has none.
enum Outcome {
    Answered(Value),
    /// The local model refused the request (e.g. a 400): the client's own error, worth
    /// returning if nobody answers.
    Refused(Response),
    Failed(String),
}

struct Reply {
    who: Who,
    ms: u64,
    outcome: Outcome,
}

/// Run the council and respond with the chosen answer.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    st: &Arc<AppState>,
    ups: &Arc<Upstreams>,
    spec: &CouncilSpec,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    log: &RequestLog,
) -> Response {
    let flavor = ep.flavor();
    ups.council_stats.runs[policy_slot(spec.policy)].fetch_add(1, Relaxed);
    let (whole_body, stream, include_usage) = match whole_request(&body) {
        Some(x) => x,
        None => {
            return ApiError::invalid(None, "the request body is not a JSON object").respond(flavor)
        }
    };
    let started = Instant::now();
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + spec.deadline;
    let primary_deadline = t0 + spec.primary_deadline.min(spec.deadline);
    let primary = match spec.primary {
        Some(i) => Who::Upstream(i),
        None => Who::Local,
    };
    let mut members: Vec<Who> = spec.members.iter().map(|&i| Who::Upstream(i)).collect();
    if spec.local {
        members.push(Who::Local);
    }
    let mut pending: FuturesUnordered<BoxFuture<'_, Reply>> = FuturesUnordered::new();
    let mut replies: Vec<Reply> = Vec::new();
    for &who in &members {
        let whole_body = whole_body.clone();
        let fut: BoxFuture<'_, Reply> = match who {
            Who::Local => Box::pin(async move {
                let outcome = ask_local(st, ep, &whole_body, log).await;
                Reply {
                    who,
                    ms: started.elapsed().as_millis() as u64,
                    outcome,
                }
            }),
            Who::Upstream(i) => Box::pin(async move {
                let outcome = ask_upstream(ups, i, ep, uri, headers, &whole_body).await;
                Reply {
                    who,
                    ms: started.elapsed().as_millis() as u64,
                    outcome,
                }
            }),
        };
        pending.push(fut);
    }
    let chosen: Option<usize> = loop {
        let answered = |r: &Reply| matches!(r.outcome, Outcome::Answered(_));
        // Decide as soon as the policy allows.
        let decided = match spec.policy {
            Policy::First => replies.iter().position(answered),
            Policy::Primary => {
                let p = replies.iter().position(|r| r.who == primary && answered(r));
                let primary_out = replies.iter().any(|r| r.who == primary && !answered(r))
                    || tokio::time::Instant::now() >= primary_deadline;
                p.or_else(|| {
                    primary_out
                        .then(|| replies.iter().position(answered))
                        .flatten()
                })
            }
            Policy::CrossCheck => None,
        };
        if decided.is_some() {
            break decided;
        }
        let wait_until =
            if spec.policy == Policy::Primary && tokio::time::Instant::now() < primary_deadline {
                primary_deadline
            } else {
                deadline
            };
        match tokio::time::timeout_at(wait_until, pending.next()).await {
            Ok(Some(r)) => replies.push(r),
            Ok(None) => break pick(&replies, primary),
            Err(_) if wait_until == primary_deadline => continue,
            Err(_) => break pick(&replies, primary),
        }
    };
    // Whoever has not answered is cancelled here.
    let unfinished: Vec<Who> = members
        .iter()
        .copied()
        .filter(|w| !replies.iter().any(|r| r.who == *w))
        .collect();
    drop(pending);
    let Some(chosen) = chosen else {
        ups.council_stats.unanswered.fetch_add(1, Relaxed);
        return no_answer(ups, flavor, replies, &unfinished, started);
    };
    let report = report(ups, spec, flavor, &replies, chosen, &unfinished);
    if report["agree"] == false {
        ups.council_stats.disagreements.fetch_add(1, Relaxed);
        tracing::warn!(
            target: "backstop::council",
            report = %report,
            "council members disagree"
        );
    }
    let Outcome::Answered(answer) = &replies[chosen].outcome else {
        unreachable!("chosen replies answered")
    };
    respond(
        ups,
        flavor,
        answer,
        replies[chosen].who,
        stream,
        include_usage,
        &report,
    )
}

/// The chosen reply once waiting is over: the primary's answer, else the first answer.
fn pick(replies: &[Reply], primary: Who) -> Option<usize> {
    let answered = |r: &Reply| matches!(r.outcome, Outcome::Answered(_));
    replies
        .iter()
        .position(|r| r.who == primary && answered(r))
        .or_else(|| replies.iter().position(answered))
}

/// The request with streaming off (members answer whole), and what the client asked for.
fn whole_request(body: &[u8]) -> Option<(Bytes, bool, bool)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object_mut()?;
    let stream = o.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = o
        .get("stream_options")
        .and_then(|s| s.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    o.remove("stream");
    o.remove("stream_options");
    Some((
        Bytes::from(serde_json::to_vec(&v).ok()?),
        stream,
        include_usage,
    ))
}

async fn ask_local(st: &Arc<AppState>, ep: Endpoint, body: &Bytes, log: &RequestLog) -> Outcome {
    let resp = match local::answer(st, ep, body, None, log).await {
        Ok(r) => r,
        Err(e) => return Outcome::Refused(e.respond(ep.flavor())),
    };
    if !resp.status().is_success() {
        return Outcome::Refused(resp);
    }
    match axum::body::to_bytes(resp.into_body(), 64 << 20).await {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(v) => Outcome::Answered(v),
            Err(_) => Outcome::Failed("local answer is not JSON".into()),
        },
        Err(e) => Outcome::Failed(format!("local answer broke: {e}")),
    }
}

async fn ask_upstream(
    ups: &Upstreams,
    i: usize,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Outcome {
    let up = ups.at(i);
    let out = match outgoing(&ups.cfg, up, ep, uri, headers, body, false) {
        Ok(o) => o,
        Err(skip) => return Outcome::Failed(format!("skipped: {skip}")),
    };
    let permit = up.breaker.permit();
    if permit == Permit::Deny {
        return Outcome::Failed("circuit open (the upstream failed recently)".into());
    }
    let mut guard = super::ProbeGuard {
        breaker: &up.breaker,
        armed: permit == Permit::Probe,
    };
    let sent = out
        .client
        .request(out.method.clone(), &out.url)
        .headers(out.headers.clone())
        .body(out.body.clone())
        .send()
        .await;
    guard.armed = false;
    let (status, b) = match sent {
        Err(e) => {
            let why = super::error_chain(&e.without_url());
            up.breaker.failure(&why);
            return Outcome::Failed(why);
        }
        Ok(r) => {
            let status = r.status();
            match r.bytes().await {
                Err(e) => {
                    let why = super::error_chain(&e.without_url());
                    up.breaker.failure(&why);
                    return Outcome::Failed(why);
                }
                Ok(b) => (status, b),
            }
        }
    };
    if !status.is_success() {
        let why = format!("upstream returned {}", status.as_u16());
        // Only the upstream's own failures count against it; a client's bad request is
        // the client's, and worth returning if nobody answers.
        if super::is_fallback_status(status, ups.cfg.fallback_on_429) || out.is_ours(status) {
            up.breaker.failure(&why);
            return Outcome::Failed(why);
        }
        let body = match out.translate {
            Some(from) => Bytes::from(translate_whole(from, ep.flavor(), status, &b)),
            None => b,
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Outcome::Refused(resp);
    }
    match serde_json::from_slice::<Value>(&b) {
        Ok(v) => {
            up.breaker.success();
            up.cloud_answers.fetch_add(1, Relaxed);
            Outcome::Answered(match out.translate {
                Some(from) => translate::response(from, ep.flavor(), &v),
                None => v,
            })
        }
        Err(_) => {
            up.breaker.failure("answer is not JSON");
            Outcome::Failed("answer is not JSON".into())
        }
    }
}

fn name_of(ups: &Upstreams, who: Who) -> String {
    match who {
        Who::Upstream(i) => ups.at(i).spec.name.clone(),
        Who::Local => "local".into(),
    }
}

/// The agreement report: each member's outcome, and how each other answer compares to the
/// chosen one.
fn report(
    ups: &Upstreams,
    spec: &CouncilSpec,
    flavor: Flavor,
    replies: &[Reply],
    chosen: usize,
    unfinished: &[Who],
) -> Value {
    let mut members: Vec<Value> = replies
        .iter()
        .map(|r| {
            let name = name_of(ups, r.who);
            match &r.outcome {
                Outcome::Answered(_) => json!({"name": name, "outcome": "answered", "ms": r.ms}),
                Outcome::Refused(resp) => json!({"name": name, "outcome": "failed", "ms": r.ms,
                    "error": format!("refused with {}", resp.status().as_u16())}),
                Outcome::Failed(e) => json!({"name": name, "outcome": "failed", "ms": r.ms,
                    "error": sanitize(e)}),
            }
        })
        .collect();
    let late = if spec.policy == Policy::CrossCheck {
        "late"
    } else {
        "cancelled"
    };
    members.extend(
        unfinished
            .iter()
            .map(|&w| json!({"name": name_of(ups, w), "outcome": late})),
    );
    let Outcome::Answered(a) = &replies[chosen].outcome else {
        return json!({});
    };
    let mine = said(flavor, a);
    let comparisons: Vec<Value> = replies
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != chosen)
        .filter_map(|(_, r)| match &r.outcome {
            Outcome::Answered(v) => {
                let mut c = compare(&mine, &said(flavor, v), spec.text_agreement);
                c["member"] = json!(name_of(ups, r.who));
                Some(c)
            }
            _ => None,
        })
        .collect();
    let agree = if comparisons.is_empty() {
        Value::Null
    } else {
        Value::Bool(comparisons.iter().all(|c| c["agree"] == true))
    };
    json!({
        "policy": spec.policy.name(),
        "chosen": name_of(ups, replies[chosen].who),
        "agree": agree,
        "members": members,
        "comparisons": comparisons,
    })
}

fn respond(
    ups: &Upstreams,
    flavor: Flavor,
    answer: &Value,
    who: Who,
    stream: bool,
    include_usage: bool,
    report: &Value,
) -> Response {
    let extra = json!({"council": report});
    let (body, content_type) = if stream {
        let events = translate::whole_to_stream(flavor, answer, include_usage, Some(&extra));
        (Body::from(events.concat()), "text/event-stream")
    } else {
        let mut v = answer.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("backstop".into(), extra);
        }
        (
            Body::from(serde_json::to_vec(&v).unwrap_or_default()),
            "application/json",
        )
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if stream {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Ok(v) = HeaderValue::from_str(&ascii_json(report)) {
        h.insert(HeaderName::from_static(HEADER), v);
    }
    // A local answer is marked by the router as every local answer is.
    if let Who::Upstream(i) = who {
        if let Ok(v) = HeaderValue::from_str(&format!("cloud; upstream={}", ups.at(i).spec.name)) {
            h.insert(HeaderName::from_static(SERVED_BY), v);
        }
    }
    resp
}

/// Compact JSON with every non-ASCII character escaped, fit for a header.
fn ascii_json(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            for u in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// Nobody answered: the local model's own refusal if it gave one (the client's error), else
/// a 504 naming each member's failure.
fn no_answer(
    ups: &Upstreams,
    flavor: Flavor,
    replies: Vec<Reply>,
    unfinished: &[Who],
    started: Instant,
) -> Response {
    let mut why: Vec<String> = Vec::new();
    let mut refusal = None;
    for r in replies {
        match r.outcome {
            Outcome::Refused(resp) => refusal = Some(resp),
            Outcome::Failed(e) => why.push(format!("{}: {e}", name_of(ups, r.who))),
            Outcome::Answered(_) => {}
        }
    }
    if let Some(resp) = refusal {
        return resp;
    }
    for &w in unfinished {
        why.push(format!("{}: no answer in time", name_of(ups, w)));
    }
    let msg = format!(
        "no council member answered within {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        why.join("; ")
    );
    let body = match flavor {
        Flavor::Anthropic => {
            json!({"type": "error", "error": {"type": "timeout_error", "message": msg}})
        }
        Flavor::OpenAi => {
            json!({"error": {"message": msg, "type": "timeout_error", "param": null, "code": null}})
        }
    }
    .to_string();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
