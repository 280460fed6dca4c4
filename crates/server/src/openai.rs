//! OpenAI's wire format: parsing `/v1/chat/completions` and `/v1/completions` bodies into a
//! core `GenRequest`, and encoding answers as `chat.completion(.chunk)` / `text_completion`
//! objects and `/v1/models` lists.
//!
//! Fields that would change what the output must be and that we cannot honour (`n` > 1,
//! `logprobs`, `response_format` json, a required or named tool) are refused with a 400 that
//! names the field; unknown fields are ignored, as OpenAI does.

use std::collections::HashMap;

use backstop_engine::chat::{ChatMessage, ToolCall, ToolSpec};
use backstop_engine::generate::{GenerateParams, Outcome, StopReason};
use backstop_engine::grammar::Constraint;
use backstop_engine::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::core::{
    new_id, timings, unix_now, CallOut, Encoder, Frame, GenRequest, Input, Resume, ToolChoice,
    Usage,
};
use crate::error::ApiError;
use crate::request::{in_range, max_tokens, parse_json, seed_or_random};
use crate::wire::{Endpoint, Flavor};

#[derive(Deserialize, Default)]
struct SamplingFields {
    temperature: Option<f64>,
    top_p: Option<f64>,
    // llama.cpp extensions that its users send to OpenAI-compatible servers.
    top_k: Option<u32>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    seed: Option<i64>,
    logit_bias: Option<HashMap<String, f64>>,
    ignore_eos: Option<bool>,
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
    tools: Option<Vec<ToolIn>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    function_call: Option<Value>,
}

#[derive(Deserialize)]
struct ChatMessageIn {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Vec<ToolCallIn>>,
    tool_call_id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct ToolIn {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionIn>,
}

#[derive(Deserialize)]
struct FunctionIn {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct ToolCallIn {
    id: Option<String>,
    function: FunctionCallIn,
}

#[derive(Deserialize)]
struct FunctionCallIn {
    name: String,
    /// A JSON text, as the API sends it.
    arguments: Option<String>,
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

/// The generation settings within OpenAI's ranges; the vocabulary-dependent checks (top_k,
/// logit_bias ids) are the local layer's, which knows the model.
fn generate_params(s: SamplingFields, budget: Option<usize>) -> Result<GenerateParams, ApiError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::invalid(
                Some("n"),
                format!("'n' = {n} is not supported: this server returns one choice (n = 1)"),
            ));
        }
    }
    let mut p = SamplingParams {
        seed: seed_or_random(s.seed),
        ..SamplingParams::default()
    };
    if let Some(t) = in_range("temperature", s.temperature, 0.0, 2.0)? {
        p.temperature = t;
    }
    if let Some(t) = in_range("top_p", s.top_p, 0.0, 1.0)? {
        p.top_p = t;
    }
    if let Some(k) = s.top_k {
        p.top_k = k as usize;
    }
    if let Some(m) = in_range("min_p", s.min_p, 0.0, 1.0)? {
        p.min_p = m;
    }
    if let Some(r) = in_range("repeat_penalty", s.repeat_penalty, 0.01, 10.0)? {
        p.repeat_penalty = r;
    }
    if let Some(v) = in_range("presence_penalty", s.presence_penalty, -2.0, 2.0)? {
        p.presence_penalty = v;
    }
    if let Some(v) = in_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)? {
        p.frequency_penalty = v;
    }
    for (k, v) in s.logit_bias.unwrap_or_default() {
        let Ok(id) = k.parse::<u32>() else {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                format!("'logit_bias' key {k:?} is not a token id"),
            ));
        };
        let bias = in_range("logit_bias", Some(v), -100.0, 100.0)?.unwrap_or(0.0);
        p.logit_bias.push((id, bias));
    }
    // The same bias map must give the same sampler whatever the JSON object's order.
    p.logit_bias.sort_by_key(|&(id, _)| id);
    let stop = match s.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 16 {
        return Err(ApiError::invalid(
            Some("stop"),
            "'stop' may hold at most 16 sequences",
        ));
    }
    Ok(GenerateParams {
        max_tokens: budget.unwrap_or(usize::MAX),
        sampling: p,
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        ignore_eos: s.ignore_eos.unwrap_or(false),
    })
}

pub fn finish_reason(r: &StopReason) -> &'static str {
    match r {
        // A constrained answer closed early is complete and valid.
        StopReason::EndOfGeneration | StopReason::StopString(_) | StopReason::Closed => "stop",
        // Cut short (context full, or the server shutting down): the text is incomplete.
        StopReason::MaxTokens | StopReason::ContextFull | StopReason::Cancelled => "length",
    }
}

pub fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
    })
}

/// One message's text: a string, or text content parts joined.
fn content_text(i: usize, m: &ChatMessageIn) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match &m.content {
        None | Some(Value::Null) if m.role == "assistant" || m.role == "tool" => Ok(String::new()),
        None | Some(Value::Null) => Err(ApiError::invalid(
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
                            Some(&param),
                            format!("'{param}[{j}]' is a text part without a 'text' string"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
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
            Some(&param),
            format!("'{param}' must be a string or an array of content parts"),
        )),
    }
}

fn chat_messages(messages: Option<Vec<ChatMessageIn>>) -> Result<Vec<ChatMessage>, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid(Some("messages"), "'messages' is required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "'messages' must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    // The ids of the calls the latest assistant turn made: a tool message answers one of them.
    let mut open_calls: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            // OpenAI's newer name for the system role.
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    ApiError::invalid(
                        Some(&format!("messages[{i}].tool_call_id")),
                        format!("'messages[{i}].tool_call_id' is required for a tool message"),
                    )
                })?;
                if !open_calls.iter().any(|c| c == id) {
                    return Err(ApiError::invalid(
                        Some(&format!("messages[{i}].tool_call_id")),
                        format!(
                            "'messages[{i}]' with role 'tool' must answer a preceding message \
                             with 'tool_calls', and none has the id {id:?}"
                        ),
                    ));
                }
                out.push(ChatMessage::tool_result(
                    id,
                    m.name.clone(),
                    content_text(i, m)?,
                ));
                continue;
            }
            other => {
                return Err(ApiError::invalid(
                    Some(&format!("messages[{i}].role")),
                    format!(
                        "'messages[{i}].role' is {other:?}; supported roles are system, developer, \
                         user, assistant and tool"
                    ),
                ))
            }
        };
        let mut msg = ChatMessage::new(role, content_text(i, m)?);
        if role == "assistant" {
            open_calls.clear();
            for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                let text = c.function.arguments.as_deref().unwrap_or("{}");
                // Templates read arguments as an object, so a history whose arguments are
                // not one cannot be shown to the model as it was: refused, never altered.
                let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
                let args = match serde_json::from_str::<Value>(text) {
                    Ok(v) if v.is_object() => v,
                    Ok(_) => return Err(refuse(&param, "must be a JSON object")),
                    Err(e) => return Err(refuse(&param, &format!("is not valid JSON: {e}"))),
                };
                let id = c.id.clone().unwrap_or_else(|| format!("call_{i}_{j}"));
                open_calls.push(id.clone());
                msg.tool_calls
                    .push(ToolCall::new(id, c.function.name.as_str(), args));
            }
        }
        out.push(msg);
    }
    Ok(out)
}

/// The request's function tools.
fn tool_specs(tools: Option<Vec<ToolIn>>) -> Result<Vec<ToolSpec>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.into_iter().flatten().enumerate() {
        let param = format!("tools[{i}]");
        let f = match (t.kind.as_str(), t.function) {
            ("function", Some(f)) => f,
            (kind, _) => {
                return Err(ApiError::invalid(
                    Some(&param),
                    format!("'{param}' has type {kind:?}; only \"function\" tools are supported"),
                ))
            }
        };
        if f.name.is_empty() {
            return Err(ApiError::invalid(
                Some(&param),
                format!("'{param}.function.name' must not be empty"),
            ));
        }
        out.push(ToolSpec {
            name: f.name,
            description: f.description,
            parameters: f
                .parameters
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
    }
    Ok(out)
}

fn refuse(param: &str, why: &str) -> ApiError {
    ApiError::invalid(Some(param), format!("'{param}' {why}"))
}

/// Check the fields we cannot honour.
fn check_chat_unsupported(r: &ChatRequest) -> Result<(), ApiError> {
    if r.logprobs == Some(true) {
        return Err(refuse("logprobs", "is not supported by this server"));
    }
    if r.top_logprobs.is_some_and(|n| n > 0) {
        return Err(refuse("top_logprobs", "is not supported by this server"));
    }
    if r.function_call.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(refuse(
            "function_call",
            "(the deprecated functions API) is not supported; use 'tools' and 'tool_choice'",
        ));
    }
    Ok(())
}

/// `response_format`: text, any JSON object, or JSON valid against a schema.
fn constraint(rf: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let schema = rf
                .pointer("/json_schema/schema")
                .filter(|s| s.is_object() || s.is_boolean())
                .ok_or_else(|| {
                    refuse(
                        "response_format",
                        "of type \"json_schema\" needs 'json_schema.schema', a JSON Schema object",
                    )
                })?;
            Ok(Some(Constraint::JsonSchema(schema.clone())))
        }
        other => Err(refuse(
            "response_format",
            &format!(
                "of type {:?} is not supported (text, json_object or json_schema)",
                other.unwrap_or("")
            ),
        )),
    }
}

/// `tool_choice`: "auto", "none", "required", or `{"type": "function", "function": {"name"}}`.
fn tool_choice(v: Option<&Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    let choice =
        match v {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(refuse(
                        "tool_choice",
                        &format!(
                            "is {other:?}; expected \"auto\", \"none\", \"required\" or a function"
                        ),
                    ))
                }
            },
            Some(obj) => match obj.pointer("/function/name").and_then(Value::as_str) {
                Some(name) => ToolChoice::Named(name.to_owned()),
                None => return Err(refuse(
                    "tool_choice",
                    "must name a function: {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )),
            },
        };
    match &choice {
        ToolChoice::Required if tools.is_empty() => Err(refuse(
            "tool_choice",
            "is \"required\" but the request has no 'tools'",
        )),
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => Err(refuse(
            "tool_choice",
            &format!("names the function {n:?}, which is not in 'tools'"),
        )),
        _ => Ok(choice),
    }
}

/// Parse a `/v1/chat/completions` body.
pub fn parse_chat(bytes: &[u8]) -> Result<GenRequest, ApiError> {
    let req: ChatRequest = parse_json(bytes)?;
    check_chat_unsupported(&req)?;
    let budget = match req.max_completion_tokens {
        Some(n) => max_tokens("max_completion_tokens", Some(n))?,
        None => max_tokens("max_tokens", req.max_tokens)?,
    };
    let messages = chat_messages(req.messages)?;
    let tools = tool_specs(req.tools)?;
    let tool_choice = tool_choice(req.tool_choice.as_ref(), &tools)?;
    let constraint = constraint(req.response_format.as_ref())?;
    let params = generate_params(req.sampling, budget)?;
    Ok(GenRequest {
        endpoint: Endpoint::Chat,
        model: req.model,
        tool_choice,
        single_call: req.parallel_tool_calls == Some(false),
        constraint,
        input: Input::Chat {
            messages,
            prefill: None,
            tools,
        },
        params,
        stream: req.stream == Some(true),
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// The prompt of a legacy completion: a string, or one string or token list in an array.
fn completion_prompt(v: Option<Value>) -> Result<Input, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some("prompt"),
            "'prompt' must be a string, an array with one string, or an array of token ids",
        )
    };
    match v {
        None | Some(Value::Null) => Err(ApiError::invalid(Some("prompt"), "'prompt' is required")),
        Some(Value::String(s)) => Ok(Input::Text(s)),
        Some(Value::Array(items)) => {
            if items.len() == 1 {
                match &items[0] {
                    Value::String(s) => return Ok(Input::Text(s.clone())),
                    Value::Array(ids) => return token_ids(ids).map(Input::Tokens),
                    _ => {}
                }
            }
            if items.iter().all(Value::is_number) && !items.is_empty() {
                return token_ids(&items).map(Input::Tokens);
            }
            if items.len() > 1 {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    "several prompts in one request are not supported; send one per request",
                ));
            }
            Err(bad())
        }
        Some(_) => Err(bad()),
    }
}

fn token_ids(v: &[Value]) -> Result<Vec<u32>, ApiError> {
    v.iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(Some("prompt"), "token ids must be non-negative integers")
                })
        })
        .collect()
}

/// Parse a legacy `/v1/completions` body.
pub fn parse_completion(bytes: &[u8]) -> Result<GenRequest, ApiError> {
    let req: CompletionRequest = parse_json(bytes)?;
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
    let budget = max_tokens("max_tokens", req.max_tokens)?.or(Some(16));
    let input = completion_prompt(req.prompt)?;
    let params = generate_params(req.sampling, budget)?;
    Ok(GenRequest {
        endpoint: Endpoint::Completions,
        model: req.model,
        tool_choice: ToolChoice::None,
        single_call: false,
        constraint: None,
        input,
        params,
        stream: req.stream == Some(true),
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// One `/v1/models` entry.
pub fn model_object(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "backstop"})
}

/// The `/v1/models` list.
pub fn models_list(ids: &[&str], created: u64) -> Value {
    let data: Vec<Value> = ids.iter().map(|id| model_object(id, created)).collect();
    json!({"object": "list", "data": data})
}

fn fingerprint() -> &'static str {
    concat!("backstop-", env!("CARGO_PKG_VERSION"))
}

/// Chat or legacy completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// Encodes one answer as OpenAI objects: a `chat.completion` / `text_completion`, or their
/// stream of chunks ending in `[DONE]`.
pub struct OpenAiEncoder {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Continuing a cloud stream: no opening chunk, and the marker on the last one.
    resumed: Option<Value>,
    /// The answer called tools: its finish reason is "tool_calls" ("stop" when the request
    /// named the function, as OpenAI answers).
    called: bool,
    named_choice: bool,
}

/// A tool call as OpenAI writes it (`arguments` a JSON text).
fn call_json(c: &CallOut) -> Value {
    json!({"id": c.id, "type": "function",
           "function": {"name": c.name, "arguments": c.arguments.to_string()}})
}

impl OpenAiEncoder {
    /// `model` is the name echoed back; a resumed answer keeps the cloud's id and model.
    pub fn new(
        endpoint: Endpoint,
        model: String,
        include_usage: bool,
        resume: Option<&Resume>,
    ) -> Self {
        let kind = match endpoint {
            Endpoint::Completions => Kind::Text,
            _ => Kind::Chat,
        };
        let prefix = match kind {
            Kind::Chat => "chatcmpl-",
            Kind::Text => "cmpl-",
        };
        Self {
            kind,
            id: resume
                .and_then(|r| r.id.clone())
                .unwrap_or_else(|| new_id(prefix)),
            model: resume.and_then(|r| r.model.clone()).unwrap_or(model),
            created: unix_now(),
            include_usage,
            resumed: resume.map(|r| r.marker.clone()),
            called: false,
            named_choice: false,
        }
    }

    /// The request named the function to call (`tool_choice: {"type": "function", ...}`).
    pub fn named_choice(mut self, named: bool) -> Self {
        self.named_choice = named;
        self
    }

    fn tool_finish(&self) -> &'static str {
        if self.named_choice {
            "stop"
        } else {
            "tool_calls"
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// A stream chunk with one choice: `text` as its content, `role` on the first.
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut d = Map::new();
                if role {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    d.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                                 "finish_reason": finish}),
        };
        let mut v = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "system_fingerprint": fingerprint(),
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

impl Encoder for OpenAiEncoder {
    fn start(&mut self, _n_prompt: usize, out: &mut Vec<Frame>) {
        // The cloud already sent the role chunk of a resumed stream.
        if self.kind == Kind::Chat && self.resumed.is_none() {
            out.push(Frame::json(None, &self.chunk(Some(""), true, None)));
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<Frame>) {
        out.push(Frame::json(None, &self.chunk(Some(text), false, None)));
    }

    fn tool_calls(&mut self, calls: &[CallOut], out: &mut Vec<Frame>) {
        if self.kind != Kind::Chat || calls.is_empty() {
            return;
        }
        self.called = true;
        for (i, c) in calls.iter().enumerate() {
            // The id, type and name once, then the arguments (here in one fragment).
            let mut head = self.chunk(None, false, None);
            head["choices"][0]["delta"] = json!({"tool_calls": [{
                "index": i, "id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": ""}}]});
            out.push(Frame::json(None, &head));
            let mut args = self.chunk(None, false, None);
            args["choices"][0]["delta"] = json!({"tool_calls": [{
                "index": i, "function": {"arguments": c.arguments.to_string()}}]});
            out.push(Frame::json(None, &args));
        }
    }

    fn finish(&mut self, u: &Usage, o: &Outcome, out: &mut Vec<Frame>) {
        let text = (self.kind == Kind::Text).then_some("");
        let reason = if self.called {
            self.tool_finish()
        } else {
            finish_reason(&o.stop_reason)
        };
        let mut last = self.chunk(text, false, Some(reason));
        // llama-server puts its timings on the last chunk; clients read them there.
        last["timings"] = timings(o);
        if let Some(marker) = &self.resumed {
            last["backstop"] = marker.clone();
        }
        out.push(Frame::json(None, &last));
        if self.include_usage {
            let u = json!({
                "id": self.id, "object": self.object(true), "created": self.created,
                "model": self.model, "system_fingerprint": fingerprint(),
                "choices": [], "usage": usage(u), "timings": timings(o),
            });
            out.push(Frame::json(None, &u));
        }
        out.push(Frame::done());
    }

    fn error(&mut self, e: &ApiError, out: &mut Vec<Frame>) {
        let mut body = e.body(Flavor::OpenAi);
        if let Some(marker) = &self.resumed {
            body["backstop"] = marker.clone();
        }
        out.push(Frame::json(None, &body));
        out.push(Frame::done());
    }

    fn whole(&self, text: &str, calls: &[CallOut], u: &Usage, o: &Outcome) -> Value {
        let choice = match self.kind {
            Kind::Chat if !calls.is_empty() => json!({
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": if text.is_empty() { Value::Null } else { Value::from(text) },
                    "refusal": null,
                    "tool_calls": calls.iter().map(call_json).collect::<Vec<_>>(),
                },
                "logprobs": null,
                "finish_reason": self.tool_finish(),
            }),
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
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint(),
            "choices": [choice],
            "usage": usage(u),
            "timings": timings(o),
        })
    }
}
