//! OpenAI's wire format: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.
//!
//! Fields that would change what the output must be and that we cannot honour (`n` > 1,
//! `logprobs`, `response_format` json, a required or named tool) are refused with a 400 that
//! names the field; unknown fields are ignored, as OpenAI does.

use std::collections::HashMap;
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

use crate::error::{ApiError, ErrorKind, Flavor};
use crate::output::{collect, event_error, new_id, timings, unix_now};
use crate::request::{in_range, max_tokens, parse_json, seed_or_random};
use crate::scheduler::Event;
use crate::state::{Admitted, AppState};
use crate::upstream::{self, Endpoint};

const F: Flavor = Flavor::OpenAi;

#[derive(Deserialize, Default)]
pub struct SamplingFields {
    temperature: Option<f64>,
    top_p: Option<f64>,
    // llama.cpp extensions that its users send to OpenAI-compatible servers.
    top_k: Option<i64>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    seed: Option<i64>,
    logit_bias: Option<HashMap<String, f64>>,
    stop: Option<Stop>,
    n: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<ChatMessageIn>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    sampling: SamplingFields,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    response_format: Option<Value>,
    tool_choice: Option<Value>,
    function_call: Option<Value>,
}

#[derive(Deserialize)]
struct ChatMessageIn {
    role: String,
    content: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: Option<Value>,
    max_tokens: Option<i64>,
    #[serde(flatten)]
    sampling: SamplingFields,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<Value>,
    echo: Option<bool>,
    best_of: Option<i64>,
    suffix: Option<String>,
}

/// Build the generation settings; `n_vocab` bounds `logit_bias` keys.
fn generate_params(
    s: SamplingFields,
    budget: Option<usize>,
    n_vocab: usize,
) -> Result<GenerateParams, ApiError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::invalid(
                F,
                Some("n"),
                format!("'n' = {n} is not supported: this server returns one choice (n = 1)"),
            ));
        }
    }
    let mut p = SamplingParams {
        seed: seed_or_random(s.seed),
        ..SamplingParams::default()
    };
    if let Some(t) = in_range(F, "temperature", s.temperature, 0.0, 2.0)? {
        p.temperature = t;
    }
    if let Some(t) = in_range(F, "top_p", s.top_p, 0.0, 1.0)? {
        p.top_p = t;
    }
    if let Some(k) = s.top_k {
        if !(0..=n_vocab as i64).contains(&k) {
            return Err(ApiError::invalid(
                F,
                Some("top_k"),
                format!("'top_k' must be between 0 and {n_vocab}, got {k}"),
            ));
        }
        p.top_k = k as usize;
    }
    if let Some(m) = in_range(F, "min_p", s.min_p, 0.0, 1.0)? {
        p.min_p = m;
    }
    if let Some(r) = in_range(F, "repeat_penalty", s.repeat_penalty, 0.01, 10.0)? {
        p.repeat_penalty = r;
    }
    if let Some(v) = in_range(F, "presence_penalty", s.presence_penalty, -2.0, 2.0)? {
        p.presence_penalty = v;
    }
    if let Some(v) = in_range(F, "frequency_penalty", s.frequency_penalty, -2.0, 2.0)? {
        p.frequency_penalty = v;
    }
    for (k, v) in s.logit_bias.unwrap_or_default() {
        let id = k.parse::<u32>().ok().filter(|&id| (id as usize) < n_vocab);
        let Some(id) = id else {
            return Err(ApiError::invalid(
                F,
                Some("logit_bias"),
                format!("'logit_bias' key {k:?} is not a token id below {n_vocab}"),
            ));
        };
        let bias = in_range(F, "logit_bias", Some(v), -100.0, 100.0)?.unwrap_or(0.0);
        p.logit_bias.push((id, bias));
    }
    let stop = match s.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 16 {
        return Err(ApiError::invalid(
            F,
            Some("stop"),
            "'stop' may hold at most 16 sequences",
        ));
    }
    Ok(GenerateParams {
        max_tokens: budget.unwrap_or(usize::MAX),
        sampling: p,
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
    })
}

fn finish_reason(r: &StopReason) -> &'static str {
    match r {
        StopReason::EndOfGeneration | StopReason::StopString(_) => "stop",
        // Cut short (context full, or the server shutting down): the text is incomplete.
        StopReason::MaxTokens | StopReason::ContextFull | StopReason::Cancelled => "length",
    }
}

fn usage(n_prompt: usize, o: &Outcome) -> Value {
    json!({
        "prompt_tokens": n_prompt,
        "completion_tokens": o.tokens.len(),
        "total_tokens": n_prompt + o.tokens.len(),
        "prompt_tokens_details": {"cached_tokens": o.n_cached},
    })
}

/// One message's text: a string, or text content parts joined.
fn content_text(i: usize, m: &ChatMessageIn) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match &m.content {
        None | Some(Value::Null) if m.role == "assistant" => Ok(String::new()),
        None | Some(Value::Null) => Err(ApiError::invalid(
            F,
            Some(&param),
            format!("'{param}' is missing"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let ty = part.get("type").and_then(Value::as_str).unwrap_or("");
                match (ty, part.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => out.push(t),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            F,
                            Some(&param),
                            format!("'{param}[{j}]' is a text part without a 'text' string"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            F,
                            Some(&param),
                            format!(
                                "'{param}[{j}]' has type {ty:?}; this model accepts only text parts"
                            ),
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        Some(_) => Err(ApiError::invalid(
            F,
            Some(&param),
            format!("'{param}' must be a string or an array of content parts"),
        )),
    }
}

fn chat_messages(messages: Option<Vec<ChatMessageIn>>) -> Result<Vec<ChatMessage>, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid(F, Some("messages"), "'messages' is required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            F,
            Some("messages"),
            "'messages' must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            // OpenAI's newer name for the system role.
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    F,
                    Some(&format!("messages[{i}].role")),
                    format!(
                        "'messages[{i}].role' is {other:?}; supported roles are system, developer, \
                         user and assistant"
                    ),
                ))
            }
        };
        out.push(ChatMessage::new(role, content_text(i, m)?));
    }
    Ok(out)
}

fn refuse(param: &str, why: &str) -> ApiError {
    ApiError::invalid(F, Some(param), format!("'{param}' {why}"))
}

/// Check the fields we cannot honour.
fn check_chat_unsupported(r: &ChatRequest) -> Result<(), ApiError> {
    if r.logprobs == Some(true) {
        return Err(refuse("logprobs", "is not supported by this server"));
    }
    if r.top_logprobs.is_some_and(|n| n > 0) {
        return Err(refuse("top_logprobs", "is not supported by this server"));
    }
    if let Some(rf) = &r.response_format {
        let ty = rf.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != "text" {
            return Err(refuse(
                "response_format",
                &format!("of type {ty:?} is not supported (only \"text\")"),
            ));
        }
    }
    for (param, choice) in [
        ("tool_choice", &r.tool_choice),
        ("function_call", &r.function_call),
    ] {
        match choice {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "auto" || s == "none" => {}
            Some(_) => return Err(refuse(
                param,
                "requires a tool call, which this server does not make (use \"auto\" or \"none\")",
            )),
        }
    }
    Ok(())
}

/// A request checked and tokenized, ready to admit.
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parse and tokenize a chat request; `prefill` is assistant text the answer continues
/// (a cloud stream that broke half-way).
pub async fn prepare_chat(
    st: &Arc<AppState>,
    bytes: &[u8],
    prefill: Option<String>,
) -> Result<Prepared, ApiError> {
    let req: ChatRequest = parse_json(F, bytes)?;
    check_chat_unsupported(&req)?;
    let budget = match req.max_completion_tokens {
        Some(n) => max_tokens(F, "max_completion_tokens", Some(n))?,
        None => max_tokens(F, "max_tokens", req.max_tokens)?,
    };
    let messages = chat_messages(req.messages)?;
    let model = checked_model(st, req.model)?;
    let n_vocab = st.model(F)?.engine.model.cfg.n_vocab;
    let params = generate_params(req.sampling, budget, n_vocab)?;
    let prompt = st.chat_prompt(F, messages, prefill).await?;
    Ok(Prepared {
        prompt,
        params,
        model,
        stream: req.stream == Some(true),
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    upstream::route(&st, Endpoint::Chat, &headers, &uri, body).await
}

/// Answer with the local model.
pub async fn local(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let kind = match endpoint {
        Endpoint::Chat => Kind::Chat,
        Endpoint::Completions => Kind::Text,
        Endpoint::Models => return Ok(models_list(st).into_response()),
        Endpoint::Messages | Endpoint::CountTokens => {
            return crate::anthropic::local(st, endpoint, bytes).await
        }
    };
    let p = match kind {
        Kind::Chat => prepare_chat(st, bytes, None).await?,
        Kind::Text => prepare_completion(st, bytes, None).await?,
    };
    let job = st.admit(F, p.prompt, p.params)?;
    if p.stream {
        return Ok(stream(kind, p.model, job, p.include_usage));
    }
    let mut job = job;
    let (text, o) = collect(F, &mut job).await?;
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(&o.stop_reason),
        }),
        Kind::Text => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": finish_reason(&o.stop_reason),
        }),
    };
    let (id, object) = match kind {
        Kind::Chat => (new_id("chatcmpl-"), "chat.completion"),
        Kind::Text => (new_id("cmpl-"), "text_completion"),
    };
    Ok(Json(json!({
        "id": id,
        "object": object,
        "created": unix_now(),
        "model": p.model,
        "system_fingerprint": fingerprint(),
        "choices": [choice],
        "usage": usage(job.n_prompt, &o),
        "timings": timings(&o),
    }))
    .into_response())
}

/// The prompt of a legacy completion: a string, or one string or token list in an array.
fn completion_prompt(v: Option<Value>) -> Result<PromptIn, ApiError> {
    let bad = || {
        ApiError::invalid(
            F,
            Some("prompt"),
            "'prompt' must be a string, an array with one string, or an array of token ids",
        )
    };
    match v {
        None | Some(Value::Null) => {
            Err(ApiError::invalid(F, Some("prompt"), "'prompt' is required"))
        }
        Some(Value::String(s)) => Ok(PromptIn::Text(s)),
        Some(Value::Array(items)) => {
            if items.len() == 1 {
                match &items[0] {
                    Value::String(s) => return Ok(PromptIn::Text(s.clone())),
                    Value::Array(ids) => return token_ids(ids).map(PromptIn::Tokens),
                    _ => {}
                }
            }
            if items.iter().all(Value::is_number) && !items.is_empty() {
                return token_ids(&items).map(PromptIn::Tokens);
            }
            if items.len() > 1 {
                return Err(ApiError::invalid(
                    F,
                    Some("prompt"),
                    "several prompts in one request are not supported; send one per request",
                ));
            }
            Err(bad())
        }
        Some(_) => Err(bad()),
    }
}

enum PromptIn {
    Text(String),
    Tokens(Vec<u32>),
}

fn token_ids(v: &[Value]) -> Result<Vec<u32>, ApiError> {
    v.iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(F, Some("prompt"), "token ids must be non-negative integers")
                })
        })
        .collect()
}

/// Parse and tokenize a legacy completion; `extra` is text already generated (appended).
pub async fn prepare_completion(
    st: &Arc<AppState>,
    bytes: &[u8],
    extra: Option<String>,
) -> Result<Prepared, ApiError> {
    let req: CompletionRequest = parse_json(F, bytes)?;
    if req.echo == Some(true) {
        return Err(refuse("echo", "is not supported by this server"));
    }
    if req.best_of.is_some_and(|n| n > 1) {
        return Err(refuse("best_of", "greater than 1 is not supported"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(refuse("suffix", "is not supported by this server"));
    }
    if req.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(refuse("logprobs", "is not supported by this server"));
    }
    // OpenAI's default for the legacy endpoint.
    let budget = max_tokens(F, "max_tokens", req.max_tokens)?.or(Some(16));
    let prompt_in = completion_prompt(req.prompt)?;
    let model = checked_model(st, req.model)?;
    let n_vocab = st.model(F)?.engine.model.cfg.n_vocab;
    let params = generate_params(req.sampling, budget, n_vocab)?;
    let prompt = match prompt_in {
        PromptIn::Text(t) => st.raw_prompt(F, t + extra.as_deref().unwrap_or("")).await?,
        PromptIn::Tokens(mut ids) => {
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n_vocab) {
                return Err(ApiError::invalid(
                    F,
                    Some("prompt"),
                    format!("token id {bad} is outside the vocabulary ({n_vocab} tokens)"),
                ));
            }
            if let Some(text) = extra {
                ids.extend(st.continuation_tokens(F, text).await?);
            }
            ids
        }
    };
    Ok(Prepared {
        prompt,
        params,
        model,
        stream: req.stream == Some(true),
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

pub async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    upstream::route(&st, Endpoint::Completions, &headers, &uri, body).await
}

pub async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    if st.upstreams.get(F).is_some() {
        let empty = axum::body::Bytes::new();
        return upstream::front(&st, Endpoint::Models, &uri, &headers, empty).await;
    }
    models_list(&st).into_response()
}

fn models_list(st: &AppState) -> Json<Value> {
    let created = unix_now();
    let data: Vec<Value> = st
        .config
        .names
        .listed()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "backstop"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// The requested name, echoed in responses as the cloud would; 404 in strict mode.
pub fn checked_model(st: &AppState, model: Option<String>) -> Result<String, ApiError> {
    checked_model_as(F, st, model)
}

pub fn checked_model_as(
    flavor: Flavor,
    st: &AppState,
    model: Option<String>,
) -> Result<String, ApiError> {
    if !st.config.names.accepts(model.as_deref()) {
        let m = model.unwrap_or_default();
        return Err(ApiError::new(
            flavor,
            ErrorKind::ModelNotFound,
            format!(
                "The model '{m}' does not exist or you do not have access to it (this server \
                 serves {:?})",
                st.config.names.listed()
            ),
        ));
    }
    Ok(model.unwrap_or_else(|| st.config.names.served.clone()))
}

fn fingerprint() -> String {
    concat!("backstop-", env!("CARGO_PKG_VERSION")).to_owned()
}

#[derive(Clone, Copy)]
pub enum Kind {
    Chat,
    Text,
}

/// Server-sent events in OpenAI's chunk format. A forwarding task turns job events into
/// chunks; when the client disconnects the body stream is dropped, the task's send fails,
/// it drops the job's receiver, and the worker stops generating.
pub fn stream(kind: Kind, model: String, mut job: Admitted, include_usage: bool) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(16);
    let id = new_id(match kind {
        Kind::Chat => "chatcmpl-",
        Kind::Text => "cmpl-",
    });
    let created = unix_now();
    tokio::spawn(async move {
        let chunk = |delta: Option<&str>, role: bool, finish: Option<&str>| -> Value {
            let mut v = match kind {
                Kind::Chat => {
                    let mut d = serde_json::Map::new();
                    if role {
                        d.insert("role".into(), "assistant".into());
                    }
                    if let Some(t) = delta {
                        d.insert("content".into(), t.into());
                    }
                    json!({
                        "id": id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "system_fingerprint": fingerprint(),
                        "choices": [{"index": 0, "delta": d, "logprobs": null,
                                     "finish_reason": finish}],
                    })
                }
                Kind::Text => json!({
                    "id": id, "object": "text_completion", "created": created,
                    "model": model, "system_fingerprint": fingerprint(),
                    "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null,
                                 "finish_reason": finish}],
                }),
            };
            if include_usage {
                v["usage"] = Value::Null;
            }
            v
        };
        let send = |v: Value| tx.send(Ok(SseEvent::default().data(v.to_string())));
        if matches!(kind, Kind::Chat) && send(chunk(Some(""), true, None)).await.is_err() {
            return;
        }
        loop {
            match job.events.recv().await {
                Some(Event::Text(t)) => {
                    if send(chunk(Some(&t), false, None)).await.is_err() {
                        return;
                    }
                }
                Some(Event::Done(o)) => {
                    let delta = matches!(kind, Kind::Text).then_some("");
                    let mut last = chunk(delta, false, Some(finish_reason(&o.stop_reason)));
                    // llama-server puts its timings on the last chunk; clients read them there.
                    last["timings"] = timings(&o);
                    if send(last).await.is_err() {
                        return;
                    }
                    if include_usage {
                        let u = json!({
                            "id": id, "object": match kind {
                                Kind::Chat => "chat.completion.chunk",
                                Kind::Text => "text_completion",
                            },
                            "created": created, "model": model,
                            "system_fingerprint": fingerprint(),
                            "choices": [], "usage": usage(job.n_prompt, &o),
                            "timings": timings(&o),
                        });
                        if send(u).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
                other => {
                    let ev = other.unwrap_or(Event::Failed("generation ended unexpectedly".into()));
                    let err = event_error(F, ev);
                    if send(err.body()).await.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
