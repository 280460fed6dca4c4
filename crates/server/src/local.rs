//! Local answers: a request parsed by its wire format, run on the local model and written by
//! that format's encoder, either fresh or as the continuation of a cloud stream that broke.
//! Both kinds of stream go through one driver (`drive`), so a continued stream has exactly
//! the shape of a fresh one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backstop_engine::chat::ToolSpec;
use backstop_engine::generate::{GenerateParams, StopReason};
use backstop_engine::grammar::{Constraint, Grammar};
use backstop_engine::tools::{auto_grammar, call_grammar, CallFormat, MAX_CALLS};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::anthropic::{self, AnthropicEncoder};
use crate::calls::CallWatch;
use crate::core::{
    unix_now, CallOut, Encoder, Frame, GenRequest, Input, Resume, ToolChoice, Usage, KEEP_ALIVE,
};
use crate::error::ApiError;
use crate::log::RequestLog;
use crate::openai::{self, OpenAiEncoder};
use crate::scheduler::Event;
use crate::state::{Admitted, AppState, RETRY_AFTER_S};
use crate::wire::{Endpoint, Flavor};

/// Bytes of a stream on their way to the client.
pub type StreamTx = mpsc::Sender<Result<Bytes, Infallible>>;

/// How long a stream may stay silent (a long prompt being read) before a keep-alive comment.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);

/// Answer a request with the local model. `model_id` is the `{id}` of `GET /v1/models/{id}`.
pub async fn answer(
    st: &Arc<AppState>,
    ep: Endpoint,
    body: &[u8],
    model_id: Option<&str>,
    log: &RequestLog,
) -> Result<Response, ApiError> {
    let req = match ep {
        Endpoint::Chat => openai::parse_chat(body)?,
        Endpoint::Completions => openai::parse_completion(body)?,
        Endpoint::Messages => anthropic::parse_messages(body)?,
        Endpoint::CountTokens => return count_tokens(st, body, log).await,
        Endpoint::Models => {
            let names = st.config.names.listed();
            return Ok(Json(openai::models_list(&names, unix_now())).into_response());
        }
        Endpoint::Model => {
            let id = model_id.unwrap_or_default();
            log.model(id);
            let id = st.checked_model(Some(id.to_owned()))?;
            return Ok(Json(openai::model_object(&id, unix_now())).into_response());
        }
    };
    log.stream(req.stream);
    let (stream, include_usage) = (req.stream, req.include_usage);
    let p = prepare(st, req, None, log).await?;
    let job = st.admit(p.prompt, p.params, p.grammar)?;
    let enc = encoder(ep, p.model, include_usage, p.named_choice, None);
    let calls = CallWatch::new(ep.flavor(), p.tools, p.call_format).forced(p.forced);
    if stream {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(drive(enc, job, calls, tx, log.clone()));
        return Ok(sse_response(rx));
    }
    whole(enc, job, calls, log).await
}

/// Continue a cloud stream that broke: the local model goes on from `resume.text` in the same
/// message, writing into the stream `tx`. If it cannot (the request needs what the local
/// model lacks, or the server is full), the stream still ends well-formed, with an error.
pub async fn continue_stream(
    st: &Arc<AppState>,
    ep: Endpoint,
    body: &[u8],
    resume: Resume,
    tx: &StreamTx,
    log: &RequestLog,
) {
    let parsed = match ep {
        Endpoint::Chat => openai::parse_chat(body),
        Endpoint::Completions => openai::parse_completion(body),
        Endpoint::Messages => anthropic::parse_messages(body),
        Endpoint::Models | Endpoint::Model | Endpoint::CountTokens => return,
    };
    let include_usage = parsed.as_ref().is_ok_and(|r| r.include_usage);
    let admitted = match parsed {
        Ok(req) => match prepare(st, req, Some(&resume), log).await {
            Ok(p) => {
                let named = p.named_choice;
                let calls = CallWatch::new(ep.flavor(), p.tools, p.call_format).forced(p.forced);
                st.admit(p.prompt, p.params, p.grammar)
                    .map(|job| (p.model, calls, named, job))
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match admitted {
        Ok((model, calls, named, job)) => {
            let enc = encoder(ep, model, include_usage, named, Some(&resume));
            drive(enc, job, calls, tx.clone(), log.clone()).await;
        }
        Err(e) => {
            let mut enc = encoder(ep, String::new(), include_usage, false, Some(&resume));
            let mut frames = Vec::new();
            enc.error(&e, &mut frames);
            log.finish("error");
            send(tx, &mut frames).await;
        }
    }
}

/// The frame that closes a stream whose last content already went out (the cloud broke
/// just before its closing event).
pub fn closing_frame(flavor: Flavor) -> Frame {
    match flavor {
        Flavor::OpenAi => Frame::done(),
        Flavor::Anthropic => anthropic::message_stop(),
    }
}

fn encoder(
    ep: Endpoint,
    model: String,
    include_usage: bool,
    named_choice: bool,
    resume: Option<&Resume>,
) -> Box<dyn Encoder> {
    match ep.flavor() {
        Flavor::OpenAi => Box::new(
            OpenAiEncoder::new(ep, model, include_usage, resume).named_choice(named_choice),
        ),
        Flavor::Anthropic => Box::new(AnthropicEncoder::new(model, resume)),
    }
}

/// A request ready to admit.
struct Prepared {
    model: String,
    prompt: Vec<u32>,
    params: GenerateParams,
    /// The tools the model was shown (none unless it may call them).
    tools: Vec<ToolSpec>,
    /// What the output must be: the call format when a call is forced, or the request's
    /// `response_format`.
    grammar: Option<Grammar>,
    /// The request named the tool to call.
    named_choice: bool,
    /// The answer must be tool calls.
    forced: bool,
    /// How the model writes calls: its family's format, or the generic one.
    call_format: CallFormat,
}

/// Check the model name and the sampling settings against the model, and tokenize; a
/// resumed answer's prompt ends with the text already sent.
async fn prepare(
    st: &Arc<AppState>,
    req: GenRequest,
    resume: Option<&Resume>,
    log: &RequestLog,
) -> Result<Prepared, ApiError> {
    if let Some(m) = &req.model {
        log.model(m);
    }
    let model = st.checked_model(req.model)?;
    let n_vocab = st.model()?.engine.n_vocab();
    req.params
        .sampling
        .validate(n_vocab)
        .map_err(|e| ApiError::invalid(Some(e.field.api_name()), e.to_string()))?;
    let (call_format, trigger) = {
        let model = st.model()?;
        let format = model
            .engine
            .template
            .as_ref()
            .map_or(CallFormat::Hermes, |t| t.call_format());
        // The control token Mistral writes before its calls, where the vocabulary has it.
        let trigger = (format == CallFormat::Mistral)
            .then(|| model.engine.tokenizer.token_id("[TOOL_CALLS]"))
            .flatten();
        (format, trigger)
    };
    let sent = resume.map(|r| r.text.clone()).filter(|t| !t.is_empty());
    // The cloud broke inside a tool call: the model finishes that call's arguments.
    let open_tool = resume.and_then(|r| r.open_tool.as_ref().map(|t| (t, &r.done_tools)));
    let mut tool_args: Option<Grammar> = None;
    let mut shown = Vec::new();
    let prompt = match req.input {
        Input::Chat {
            messages,
            prefill,
            tools,
        } => {
            let mut prefill = match (prefill, sent) {
                (Some(p), Some(s)) => Some(p + &s),
                (p, s) => p.or(s),
            };
            if let Some((open, done)) = open_tool {
                let spec = tools.iter().find(|t| t.name == open.name).ok_or_else(|| {
                    ApiError::internal(format!(
                        "the upstream broke inside a call of tool {:?}, which the request \
                         does not define",
                        open.name
                    ))
                })?;
                tool_args = Some(tool_arguments(st, spec, &open.json).await?);
                let done: Vec<(&str, &str)> = done
                    .iter()
                    .map(|t| (t.name.as_str(), t.json.as_str()))
                    .collect();
                let mut text = prefill.unwrap_or_default();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&call_format.partial_answer(&done, &open.name, &open.json));
                prefill = Some(text);
                shown = tools;
            } else if req.tool_choice.shows_tools() {
                shown = tools;
            }
            st.chat_prompt(messages, shown.clone(), prefill).await?
        }
        Input::Text(text) => st.raw_prompt(text + sent.as_deref().unwrap_or("")).await?,
        Input::Tokens(mut ids) => {
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n_vocab) {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!("token id {bad} is outside the vocabulary ({n_vocab} tokens)"),
                ));
            }
            if let Some(text) = sent {
                ids.extend(st.continuation_tokens(text).await?);
            }
            ids
        }
    };
    let max_calls = if req.single_call { 1 } else { MAX_CALLS };
    let grammar = if let Some(g) = tool_args {
        Some(g)
    } else if req.tool_choice.forces_call() {
        let only = match &req.tool_choice {
            ToolChoice::Named(n) => Some(n.as_str()),
            _ => None,
        };
        let lark = call_grammar(call_format, &shown, only, max_calls, trigger);
        Some(st.compile(Constraint::Lark(lark), "tools").await?)
    } else if let Some(c) = req.constraint {
        Some(st.compile(c, "response_format").await?)
    } else if let Some(lark) = (!shown.is_empty())
        .then(|| auto_grammar(call_format, &shown, max_calls, trigger))
        .flatten()
    {
        // `auto`: free until the model starts a call, then the call is forced well-formed.
        Some(
            st.compile(Constraint::Lark(lark), "tools")
                .await?
                .without_early_close(),
        )
    } else {
        None
    };
    if req.params.ignore_eos && grammar.is_some() {
        // A grammar's answer ends with end of generation, which ignore_eos never samples.
        return Err(ApiError::invalid(
            Some("ignore_eos"),
            "'ignore_eos' cannot be combined with tools or a JSON response_format",
        ));
    }
    // A finished call's arguments go out as they come, not parsed as a call of their own.
    if open_tool.is_some() {
        shown.clear();
    }
    Ok(Prepared {
        model,
        prompt,
        params: req.params,
        tools: shown,
        grammar,
        named_choice: matches!(req.tool_choice, ToolChoice::Named(_)),
        forced: req.tool_choice.forces_call(),
        call_format,
    })
}

/// The grammar of `spec`'s arguments, advanced past `partial`, the argument JSON a cloud
/// sent before it broke. Compact JSON first (as Claude writes it), then JSON with free
/// whitespace; a prefix neither accepts (it breaks the schema) cannot be finished.
async fn tool_arguments(
    st: &Arc<AppState>,
    spec: &ToolSpec,
    partial: &str,
) -> Result<Grammar, ApiError> {
    let ids = st.continuation_tokens(partial.to_owned()).await?;
    let mut flexible = spec.parameters.clone();
    if let Some(obj) = flexible.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": true}));
    }
    for schema in [spec.parameters.clone(), flexible] {
        let mut g = st.compile(Constraint::JsonSchema(schema), "tools").await?;
        if g.accept_prefix(&ids)
            .map_err(|e| ApiError::internal(e.to_string()))?
        {
            return Ok(g);
        }
    }
    Err(ApiError::internal(format!(
        "the arguments of the {:?} call the upstream began do not fit the tool's schema, so \
         the call cannot be finished locally",
        spec.name
    )))
}

async fn count_tokens(
    st: &Arc<AppState>,
    body: &[u8],
    log: &RequestLog,
) -> Result<Response, ApiError> {
    let (model, input) = anthropic::parse_count(body)?;
    if let Some(m) = &model {
        log.model(m);
    }
    st.checked_model(model)?;
    let Input::Chat {
        messages,
        prefill,
        tools,
    } = input
    else {
        return Err(ApiError::internal(
            "count_tokens parsed to a non-chat input",
        ));
    };
    let prompt = st.chat_prompt(messages, tools, prefill).await?;
    Ok(Json(anthropic::count_body(prompt.len())).into_response())
}

/// The error for a job that ended without an outcome.
fn event_error(ev: Option<Event>) -> ApiError {
    match ev {
        Some(Event::ShuttingDown) => {
            ApiError::overloaded(RETRY_AFTER_S, "the server is shutting down")
        }
        Some(Event::Failed(why)) => ApiError::internal(format!("generation failed: {why}")),
        Some(Event::Text(_) | Event::Done(_)) => ApiError::internal("unexpected generation event"),
        None => ApiError::internal("generation failed: generation ended unexpectedly"),
    }
}

/// The wire-neutral finish for the log line.
fn finish_name(r: &StopReason, calls: &[CallOut]) -> &'static str {
    if !calls.is_empty() {
        return "tool_calls";
    }
    match r {
        StopReason::EndOfGeneration | StopReason::StopString(_) => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Cancelled => "cancelled",
        StopReason::Closed => "closed",
    }
}

/// Wait for the whole answer. Dropping the future (client gone) drops the job's receiver,
/// which cancels the generation.
async fn whole(
    enc: Box<dyn Encoder>,
    mut job: Admitted,
    calls: CallWatch,
    log: &RequestLog,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match job.events.recv().await {
            Some(Event::Text(t)) => {
                log.first_token();
                text.push_str(&t);
            }
            Some(Event::Done(o)) => {
                let u = Usage::of(job.n_prompt, &o);
                log.tokens(u.prompt, u.cached, u.completion);
                let (text, called) = calls.split(text);
                log.finish(finish_name(&o.stop_reason, &called));
                return Ok(Json(enc.whole(&text, &called, &u, &o)).into_response());
            }
            other => {
                log.finish("error");
                return Err(event_error(other));
            }
        }
    }
}

async fn send(tx: &StreamTx, frames: &mut Vec<Frame>) -> bool {
    for f in frames.drain(..) {
        if tx.send(Ok(f.to_bytes())).await.is_err() {
            return false;
        }
    }
    true
}

/// Turn a job's events into frames on `tx`. When the client disconnects the body stream is
/// dropped, the next send fails, this returns and drops the job's receiver, and the worker
/// stops generating.
pub(crate) async fn drive(
    mut enc: Box<dyn Encoder>,
    mut job: Admitted,
    mut calls: CallWatch,
    tx: StreamTx,
    log: RequestLog,
) {
    let mut frames = Vec::new();
    enc.start(job.n_prompt, &mut frames);
    loop {
        if !send(&tx, &mut frames).await {
            log.finish("disconnected");
            return;
        }
        let ev = match tokio::time::timeout(KEEP_ALIVE_EVERY, job.events.recv()).await {
            Ok(ev) => ev,
            Err(_) => {
                if tx.send(Ok(Bytes::from_static(KEEP_ALIVE))).await.is_err() {
                    log.finish("disconnected");
                    return;
                }
                continue;
            }
        };
        match ev {
            Some(Event::Text(t)) => {
                log.first_token();
                let now = calls.push(&t);
                if !now.is_empty() {
                    enc.text(&now, &mut frames);
                }
            }
            Some(Event::Done(o)) => {
                let u = Usage::of(job.n_prompt, &o);
                log.tokens(u.prompt, u.cached, u.completion);
                let (rest, called) = calls.end();
                if !rest.is_empty() {
                    enc.text(&rest, &mut frames);
                }
                enc.tool_calls(&called, &mut frames);
                log.finish(finish_name(&o.stop_reason, &called));
                enc.finish(&u, &o, &mut frames);
                send(&tx, &mut frames).await;
                return;
            }
            other => {
                log.finish("error");
                enc.error(&event_error(other), &mut frames);
                send(&tx, &mut frames).await;
                return;
            }
        }
    }
}

/// A `text/event-stream` response over the frames a driver writes.
pub fn sse_response(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let mut resp = Body::from_stream(ReceiverStream::new(rx)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
