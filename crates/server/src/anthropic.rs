//! Anthropic's Messages API: `/v1/messages` (streaming with the real event names) and
//! `/v1/messages/count_tokens`.
//!
//! A trailing assistant message is a prefill: the answer continues it, as Claude does.
//! Image, document and tool blocks are refused with a 400 naming the block, since this model
//! reads text only; `tools` without a forced `tool_choice` are answered in text.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backstop_engine::chat::ChatMessage;
use backstop_engine::generate::{GenerateParams, Outcome, StopReason};
use backstop_engine::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, Flavor};
use crate::openai::{checked_model_as, Prepared};
use crate::output::{collect, event_error, new_id, timings};
use crate::request::{in_range, max_tokens, parse_json, seed_or_random};
use crate::scheduler::Event;
use crate::state::{Admitted, AppState};
use crate::upstream::{self, Endpoint};

const F: Flavor = Flavor::Anthropic;

#[derive(Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<i64>,
    messages: Option<Vec<MessageIn>>,
    system: Option<Value>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stream: Option<bool>,
    tool_choice: Option<Value>,
}

#[derive(Deserialize)]
struct CountRequest {
    model: Option<String>,
    messages: Option<Vec<MessageIn>>,
    system: Option<Value>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    content: Value,
}

/// Text of a `content` (or `system`) value: a string or an array of text blocks.
fn blocks_text(param: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
                match (ty, b.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => out.push(t),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            F,
                            Some(param),
                            format!("{param}.{j}: a text block needs a 'text' string"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            F,
                            Some(param),
                            format!(
                                "{param}.{j}: content blocks of type {ty:?} are not supported by \
                                 this model (text only)"
                            ),
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(ApiError::invalid(
            F,
            Some(param),
            format!("{param}: expected a string or an array of content blocks"),
        )),
    }
}

/// The conversation for the template, and the assistant prefill if the last turn is one.
fn conversation(
    system: Option<&Value>,
    messages: Option<Vec<MessageIn>>,
) -> Result<(Vec<ChatMessage>, Option<String>), ApiError> {
    let messages = messages
        .ok_or_else(|| ApiError::invalid(F, Some("messages"), "messages: Field required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            F,
            Some("messages"),
            "messages: at least one message is required",
        ));
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    match system {
        None | Some(Value::Null) => {}
        Some(s) => {
            let text = blocks_text("system", s)?;
            if !text.is_empty() {
                out.push(ChatMessage::new("system", text));
            }
        }
    }
    for (i, m) in messages.iter().enumerate() {
        if m.role != "user" && m.role != "assistant" {
            return Err(ApiError::invalid(
                F,
                Some("messages"),
                format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant', got {:?}",
                    m.role
                ),
            ));
        }
        out.push(ChatMessage::new(
            m.role.as_str(),
            blocks_text(&format!("messages.{i}.content"), &m.content)?,
        ));
    }
    let prefill = match out.last() {
        Some(m) if m.role == "assistant" => out.pop().map(|m| m.content),
        _ => None,
    };
    Ok((out, prefill))
}

pub fn stop_reason(r: &StopReason) -> (&'static str, Option<String>) {
    match r {
        StopReason::EndOfGeneration => ("end_turn", None),
        StopReason::StopString(s) => ("stop_sequence", Some(s.clone())),
        StopReason::MaxTokens | StopReason::ContextFull | StopReason::Cancelled => {
            ("max_tokens", None)
        }
    }
}

fn params(r: &MessagesRequest, n_vocab: usize) -> Result<GenerateParams, ApiError> {
    let budget = match r.max_tokens {
        None => {
            return Err(ApiError::invalid(
                F,
                Some("max_tokens"),
                "max_tokens: Field required",
            ))
        }
        n => max_tokens(F, "max_tokens", n)?,
    };
    let mut p = SamplingParams {
        // Anthropic's defaults: temperature 1 with no top-p/top-k cut unless asked.
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: seed_or_random(None),
        ..SamplingParams::default()
    };
    if let Some(t) = in_range(F, "temperature", r.temperature, 0.0, 1.0)? {
        p.temperature = t;
    }
    if let Some(t) = in_range(F, "top_p", r.top_p, 0.0, 1.0)? {
        p.top_p = t;
    }
    if let Some(k) = r.top_k {
        if !(0..=n_vocab as i64).contains(&k) {
            return Err(ApiError::invalid(
                F,
                Some("top_k"),
                format!("top_k: must be between 0 and {n_vocab}, got {k}"),
            ));
        }
        p.top_k = k as usize;
    }
    let stop: Vec<String> = r
        .stop_sequences
        .iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    Ok(GenerateParams {
        max_tokens: budget.unwrap_or(usize::MAX),
        sampling: p,
        stop,
    })
}

fn check_tool_choice(v: &Option<Value>) -> Result<(), ApiError> {
    let ty = v
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    match ty {
        None | Some("auto") | Some("none") => Ok(()),
        Some(t) => Err(ApiError::invalid(
            F,
            Some("tool_choice"),
            format!(
                "tool_choice: type {t:?} requires a tool call, which this server does not make \
                 (use \"auto\" or \"none\")"
            ),
        )),
    }
}

/// Parse and tokenize a Messages request; `more_prefill` is assistant text already streamed
/// by a cloud that broke half-way, which the local answer continues.
pub async fn prepare_messages(
    st: &Arc<AppState>,
    bytes: &[u8],
    more_prefill: Option<String>,
) -> Result<Prepared, ApiError> {
    let req: MessagesRequest = parse_json(F, bytes)?;
    if req.model.is_none() {
        return Err(ApiError::invalid(F, Some("model"), "model: Field required"));
    }
    check_tool_choice(&req.tool_choice)?;
    let model = checked_model_as(F, st, req.model.clone())?;
    let n_vocab = st.model(F)?.engine.model.cfg.n_vocab;
    let gen = params(&req, n_vocab)?;
    let (conv, mut prefill) = conversation(req.system.as_ref(), req.messages)?;
    if let Some(more) = more_prefill {
        prefill.get_or_insert_with(String::new).push_str(&more);
    }
    let prompt = st.chat_prompt(F, conv, prefill).await?;
    Ok(Prepared {
        prompt,
        params: gen,
        model,
        stream: req.stream == Some(true),
        include_usage: true,
    })
}

pub async fn messages(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    upstream::route(&st, Endpoint::Messages, &headers, &uri, body).await
}

/// Answer `/v1/messages` or `/v1/messages/count_tokens` with the local model.
pub async fn local(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    if endpoint == Endpoint::CountTokens {
        let req: CountRequest = parse_json(F, bytes)?;
        checked_model_as(F, st, req.model)?;
        let (conv, prefill) = conversation(req.system.as_ref(), req.messages)?;
        let prompt = st.chat_prompt(F, conv, prefill).await?;
        return Ok(Json(json!({"input_tokens": prompt.len()})).into_response());
    }
    let p = prepare_messages(st, bytes, None).await?;
    let job = st.admit(F, p.prompt, p.params)?;
    if p.stream {
        return Ok(stream(p.model, job));
    }
    let mut job = job;
    let (text, o) = collect(F, &mut job).await?;
    let (reason, seq) = stop_reason(&o.stop_reason);
    Ok(Json(json!({
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": p.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": usage(job.n_prompt, &o),
        "timings": timings(&o),
    }))
    .into_response())
}

pub fn usage(n_prompt: usize, o: &Outcome) -> Value {
    json!({
        "input_tokens": n_prompt - o.n_cached,
        "cache_read_input_tokens": o.n_cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": o.tokens.len(),
    })
}

pub async fn count_tokens(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    upstream::route(&st, Endpoint::CountTokens, &headers, &uri, body).await
}

fn event(name: &str, data: Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

/// The Messages stream: message_start, content_block_start, ping, content_block_delta…,
/// content_block_stop, message_delta (stop reason, usage), message_stop.
fn stream(model: String, mut job: Admitted) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(16);
    tokio::spawn(async move {
        let send = |ev: SseEvent| tx.send(Ok(ev));
        let start = [
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": new_id("msg_"), "type": "message", "role": "assistant",
                    "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": job.n_prompt, "output_tokens": 0},
                }}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", json!({"type": "ping"})),
        ];
        for ev in start {
            if send(ev).await.is_err() {
                return;
            }
        }
        loop {
            match job.events.recv().await {
                Some(Event::Text(t)) => {
                    let ev = event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": t}}),
                    );
                    if send(ev).await.is_err() {
                        return;
                    }
                }
                Some(Event::Done(o)) => {
                    let (reason, seq) = stop_reason(&o.stop_reason);
                    let end = [
                        event(
                            "content_block_stop",
                            json!({"type": "content_block_stop", "index": 0}),
                        ),
                        event(
                            "message_delta",
                            json!({"type": "message_delta",
                                   "delta": {"stop_reason": reason, "stop_sequence": seq},
                                   "usage": usage(job.n_prompt, &o),
                                   "timings": timings(&o)}),
                        ),
                        event("message_stop", json!({"type": "message_stop"})),
                    ];
                    for ev in end {
                        if send(ev).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                other => {
                    let ev = other.unwrap_or(Event::Failed("generation ended unexpectedly".into()));
                    let err = event_error(F, ev);
                    let _ = send(event("error", err.body())).await;
                    return;
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
