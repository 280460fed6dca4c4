//! Anthropic's Messages API: parsing `/v1/messages` and `/v1/messages/count_tokens` bodies
//! into a core `GenRequest`, and encoding answers as a `message` or its event stream
//! (message_start, content_block_start, ping, content_block_delta…, content_block_stop,
//! message_delta, message_stop).
//!
//! A trailing assistant message is a prefill: the answer continues it, as Claude does.
//! Tools, `tool_use` and `tool_result` blocks reach the chat template; image and document
//! blocks are refused with a 400 naming the block, since this model reads text only.

use backstop_engine::chat::{ChatMessage, ToolCall, ToolSpec};
use backstop_engine::generate::{GenerateParams, Outcome, StopReason};
use backstop_engine::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core::{
    new_id, timings, CallOut, Encoder, Frame, GenRequest, Input, Resume, ToolChoice, Usage,
};
use crate::error::ApiError;
use crate::request::{in_range, max_tokens, parse_json, seed_or_random};
use crate::wire::{Endpoint, Flavor};

#[derive(Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<i64>,
    messages: Option<Vec<MessageIn>>,
    system: Option<Value>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    stream: Option<bool>,
    tools: Option<Vec<ToolIn>>,
    tool_choice: Option<Value>,
}

#[derive(Deserialize)]
struct CountRequest {
    model: Option<String>,
    messages: Option<Vec<MessageIn>>,
    system: Option<Value>,
    tools: Option<Vec<ToolIn>>,
}

#[derive(Deserialize)]
struct ToolIn {
    name: String,
    description: Option<String>,
    input_schema: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The request's custom tools; server tools (web search and the like) are Anthropic's own
/// and cannot run here.
fn tool_specs(tools: Option<Vec<ToolIn>>) -> Result<Vec<ToolSpec>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.into_iter().flatten().enumerate() {
        if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
            return Err(ApiError::invalid(
                Some("tools"),
                format!(
                    "tools.{i}: tools of type {kind:?} are not supported here (custom tools only)"
                ),
            ));
        }
        let Some(schema) = t.input_schema else {
            return Err(ApiError::invalid(
                Some("tools"),
                format!("tools.{i}.input_schema: Field required"),
            ));
        };
        out.push(ToolSpec {
            name: t.name,
            description: t.description,
            parameters: schema,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    content: Value,
}

/// Text of a `system` value: a string or an array of text blocks.
fn blocks_text(param: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                out.push(text_block(param, j, b)?);
            }
            Ok(out.join("\n"))
        }
        _ => Err(ApiError::invalid(
            Some(param),
            format!("{param}: expected a string or an array of content blocks"),
        )),
    }
}

/// A text block's text; any other block is refused, naming it.
fn text_block<'a>(param: &str, j: usize, b: &'a Value) -> Result<&'a str, ApiError> {
    let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
    match (ty, b.get("text").and_then(Value::as_str)) {
        ("text", Some(t)) => Ok(t),
        ("text", None) => Err(ApiError::invalid(
            Some(param),
            format!("{param}.{j}: a text block needs a 'text' string"),
        )),
        _ => Err(ApiError::invalid(
            Some(param),
            format!(
                "{param}.{j}: content blocks of type {ty:?} are not supported by this model \
                 (text, tool_use and tool_result only)"
            ),
        )),
    }
}

/// A `tool_result`'s content: a string, or text blocks.
fn tool_result_text(param: &str, b: &Value) -> Result<String, ApiError> {
    let text = match b.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(v) => blocks_text(&format!("{param}.content"), v)?,
    };
    Ok(
        if b.get("is_error").and_then(Value::as_bool) == Some(true) {
            format!("Error: {text}")
        } else {
            text
        },
    )
}

/// One message's turns: text, the assistant's tool calls, and tool results (each a `tool`
/// turn, before the user's text, as the results answer the previous turn's calls).
/// `open_calls` holds the ids of the previous assistant turn's `tool_use` blocks, the only
/// ones a `tool_result` may answer; an assistant turn replaces them.
fn message_turns(
    i: usize,
    m: &MessageIn,
    open_calls: &mut Vec<String>,
    out: &mut Vec<ChatMessage>,
) -> Result<(), ApiError> {
    let param = format!("messages.{i}.content");
    let blocks = match &m.content {
        Value::String(s) => {
            out.push(ChatMessage::new(m.role.as_str(), s.as_str()));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(ApiError::invalid(
                Some(&param),
                format!("{param}: expected a string or an array of content blocks"),
            ))
        }
    };
    let mut text: Vec<&str> = Vec::new();
    let mut calls = Vec::new();
    let answerable = std::mem::take(open_calls);
    for (j, b) in blocks.iter().enumerate() {
        let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
        match (ty, m.role.as_str()) {
            ("tool_use", "assistant") => {
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    return Err(ApiError::invalid(
                        Some(&param),
                        format!("{param}.{j}: a tool_use block needs 'id' and 'name'"),
                    ));
                };
                let input = match b.get("input") {
                    None => json!({}),
                    Some(v) if v.is_object() => v.clone(),
                    Some(_) => {
                        return Err(ApiError::invalid(
                            Some(&param),
                            format!("{param}.{j}.input: Input should be a valid dictionary"),
                        ))
                    }
                };
                open_calls.push(id.to_owned());
                calls.push(ToolCall::new(id, name, input));
            }
            ("tool_result", "user") => {
                let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
                    return Err(ApiError::invalid(
                        Some(&param),
                        format!("{param}.{j}: a tool_result block needs 'tool_use_id'"),
                    ));
                };
                if !answerable.iter().any(|c| c == id) {
                    return Err(ApiError::invalid(
                        Some(&param),
                        format!(
                            "{param}.{j}: unexpected `tool_use_id` found in `tool_result` \
                             blocks: {id}. Each `tool_result` block must have a corresponding \
                             `tool_use` block in the previous message."
                        ),
                    ));
                }
                let content = tool_result_text(&format!("{param}.{j}"), b)?;
                out.push(ChatMessage::tool_result(id, None, content));
            }
            ("tool_use" | "tool_result", role) => {
                return Err(ApiError::invalid(
                    Some(&param),
                    format!("{param}.{j}: a {ty} block cannot be in a {role} message"),
                ))
            }
            _ => text.push(text_block(&param, j, b)?),
        }
    }
    if !text.is_empty() || !calls.is_empty() || blocks.is_empty() {
        let mut msg = ChatMessage::new(m.role.as_str(), text.join("\n"));
        msg.tool_calls = calls;
        out.push(msg);
    }
    Ok(())
}

/// The conversation for the template, and the assistant prefill if the last turn is one.
fn conversation(
    system: Option<&Value>,
    messages: Option<Vec<MessageIn>>,
    tools: Vec<ToolSpec>,
) -> Result<Input, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid(Some("messages"), "messages: Field required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
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
    let mut open_calls = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "user" && m.role != "assistant" {
            return Err(ApiError::invalid(
                Some("messages"),
                format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant', got {:?}",
                    m.role
                ),
            ));
        }
        message_turns(i, m, &mut open_calls, &mut out)?;
    }
    // A trailing assistant text (no tool calls) is a prefill the answer continues.
    let prefill = match out.last() {
        Some(m) if m.role == "assistant" && m.tool_calls.is_empty() => out.pop().map(|m| m.content),
        _ => None,
    };
    Ok(Input::Chat {
        messages: out,
        prefill,
        tools,
    })
}

pub fn stop_reason(r: &StopReason) -> (&'static str, Option<String>) {
    match r {
        // A constrained answer closed early is complete and valid.
        StopReason::EndOfGeneration | StopReason::Closed => ("end_turn", None),
        StopReason::StopString(s) => ("stop_sequence", Some(s.clone())),
        StopReason::MaxTokens | StopReason::ContextFull | StopReason::Cancelled => {
            ("max_tokens", None)
        }
    }
}

fn params(r: &MessagesRequest) -> Result<GenerateParams, ApiError> {
    let budget = match r.max_tokens {
        None => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                "max_tokens: Field required",
            ))
        }
        n => max_tokens("max_tokens", n)?,
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
    if let Some(t) = in_range("temperature", r.temperature, 0.0, 1.0)? {
        p.temperature = t;
    }
    if let Some(t) = in_range("top_p", r.top_p, 0.0, 1.0)? {
        p.top_p = t;
    }
    if let Some(k) = r.top_k {
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
        ignore_eos: false,
    })
}

/// `tool_choice`: auto, none, any, or a named tool; and whether parallel calls are off.
fn tool_choice(v: &Option<Value>, tools: &[ToolSpec]) -> Result<(ToolChoice, bool), ApiError> {
    let single = v
        .as_ref()
        .and_then(|v| v.get("disable_parallel_tool_use"))
        .and_then(Value::as_bool)
        == Some(true);
    let ty = v
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    let bad = |msg: String| ApiError::invalid(Some("tool_choice"), msg);
    let choice = match ty {
        None | Some("auto") => ToolChoice::Auto,
        Some("none") => ToolChoice::None,
        Some("any") if tools.is_empty() => {
            return Err(bad(
                "tool_choice: type \"any\" needs at least one tool".into()
            ))
        }
        Some("any") => ToolChoice::Required,
        Some("tool") => {
            let name = v
                .as_ref()
                .and_then(|v| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.name: Field required".into()))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(format!("tool_choice: tool {name:?} is not in 'tools'")));
            }
            ToolChoice::Named(name.to_owned())
        }
        Some(t) => {
            return Err(bad(format!(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', got {t:?}"
            )))
        }
    };
    Ok((choice, single))
}

/// Parse a `/v1/messages` body.
pub fn parse_messages(bytes: &[u8]) -> Result<GenRequest, ApiError> {
    let req: MessagesRequest = parse_json(bytes)?;
    if req.model.is_none() {
        return Err(ApiError::invalid(Some("model"), "model: Field required"));
    }
    let params = params(&req)?;
    let tools = tool_specs(req.tools)?;
    let (tool_choice, single_call) = tool_choice(&req.tool_choice, &tools)?;
    let input = conversation(req.system.as_ref(), req.messages, tools)?;
    Ok(GenRequest {
        endpoint: Endpoint::Messages,
        model: req.model,
        tool_choice,
        single_call,
        constraint: None,
        input,
        params,
        stream: req.stream == Some(true),
        include_usage: true,
    })
}

/// Parse a `/v1/messages/count_tokens` body: the model name and what would be read.
pub fn parse_count(bytes: &[u8]) -> Result<(Option<String>, Input), ApiError> {
    let req: CountRequest = parse_json(bytes)?;
    let tools = tool_specs(req.tools)?;
    let input = conversation(req.system.as_ref(), req.messages, tools)?;
    Ok((req.model, input))
}

/// `count_tokens`' answer.
pub fn count_body(n: usize) -> Value {
    json!({"input_tokens": n})
}

pub fn usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt - u.cached,
        "cache_read_input_tokens": u.cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": u.completion,
    })
}

/// Encodes one answer as an Anthropic `message` or its event stream.
pub struct AnthropicEncoder {
    id: String,
    model: String,
    /// The index of the text block the answer writes into.
    block: u64,
    /// The block open in the stream now, closed before an error event.
    open: Option<u64>,
    /// Continuing a cloud stream: what it left open, and the marker for `message_delta`.
    resume: Option<Resume>,
    /// The answer called tools: its stop reason is "tool_use".
    called: bool,
    /// Continuing inside the cloud's `tool_use` block: the text is the rest of its input
    /// JSON, written as `input_json_delta`s into that block.
    in_tool: bool,
}

impl AnthropicEncoder {
    pub fn new(model: String, resume: Option<&Resume>) -> Self {
        let in_tool = resume.is_some_and(|r| r.open_tool.is_some() && r.open_block.is_some());
        let block = match resume {
            Some(r) if (r.open_block_is_text || in_tool) && r.open_block.is_some() => {
                r.open_block.unwrap_or_default()
            }
            Some(r) => r.next_block,
            None => 0,
        };
        Self {
            id: resume
                .and_then(|r| r.id.clone())
                .unwrap_or_else(|| new_id("msg_")),
            model: resume.and_then(|r| r.model.clone()).unwrap_or(model),
            block,
            open: resume.and_then(|r| r.open_block),
            resume: resume.cloned(),
            called: false,
            in_tool,
        }
    }
}

fn event(name: &'static str, data: Value) -> Frame {
    Frame::json(Some(name), &data)
}

impl Encoder for AnthropicEncoder {
    fn start(&mut self, n_prompt: usize, out: &mut Vec<Frame>) {
        let text_block = json!({"type": "content_block_start", "index": self.block,
                                "content_block": {"type": "text", "text": ""}});
        match &self.resume {
            None => {
                out.push(event(
                    "message_start",
                    json!({"type": "message_start", "message": {
                        "id": self.id, "type": "message", "role": "assistant",
                        "model": self.model, "content": [], "stop_reason": null,
                        "stop_sequence": null,
                        "usage": {"input_tokens": n_prompt, "output_tokens": 0},
                    }}),
                ));
                out.push(event("content_block_start", text_block));
                out.push(event("ping", json!({"type": "ping"})));
                self.open = Some(self.block);
            }
            // The cloud's text or tool_use block is still open: write on into it.
            Some(r) if r.open_block_is_text && r.open_block.is_some() => {}
            Some(_) if self.in_tool => {}
            Some(r) => {
                // Close what the cloud left open (a tool_use or thinking block), then open
                // a text block for the continuation.
                if let Some(i) = r.open_block {
                    out.push(event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": i}),
                    ));
                }
                out.push(event("content_block_start", text_block));
                self.open = Some(self.block);
            }
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<Frame>) {
        if self.in_tool {
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.block,
                       "delta": {"type": "input_json_delta", "partial_json": text}}),
            ));
            return;
        }
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.block,
                   "delta": {"type": "text_delta", "text": text}}),
        ));
    }

    fn tool_calls(&mut self, calls: &[CallOut], out: &mut Vec<Frame>) {
        if calls.is_empty() {
            return;
        }
        self.called = true;
        if let Some(i) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            ));
        }
        for c in calls {
            self.block += 1;
            let i = self.block;
            out.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": i,
                       "content_block": {"type": "tool_use", "id": c.id, "name": c.name,
                                         "input": {}}}),
            ));
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i,
                       "delta": {"type": "input_json_delta",
                                 "partial_json": c.arguments.to_string()}}),
            ));
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            ));
        }
    }

    fn finish(&mut self, u: &Usage, o: &Outcome, out: &mut Vec<Frame>) {
        // A continued tool_use block whose input the grammar completed is a call; one cut
        // by the budget is not.
        let tool_done = self.in_tool
            && matches!(
                o.stop_reason,
                StopReason::EndOfGeneration | StopReason::Closed
            );
        let (reason, seq) = if self.called || tool_done {
            ("tool_use", None)
        } else {
            stop_reason(&o.stop_reason)
        };
        if let Some(i) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            ));
        }
        let mut delta = json!({"type": "message_delta",
                               "delta": {"stop_reason": reason, "stop_sequence": seq},
                               "usage": usage(u), "timings": timings(o)});
        if let Some(r) = &self.resume {
            delta["backstop"] = r.marker.clone();
        }
        out.push(event("message_delta", delta));
        out.push(event("message_stop", json!({"type": "message_stop"})));
    }

    fn error(&mut self, e: &ApiError, out: &mut Vec<Frame>) {
        // Close the open block so what was received stays a whole message.
        if let Some(i) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            ));
        }
        let mut body = e.body(Flavor::Anthropic);
        if let Some(r) = &self.resume {
            body["backstop"] = r.marker.clone();
        }
        out.push(event("error", body));
    }

    fn whole(&self, text: &str, calls: &[CallOut], u: &Usage, o: &Outcome) -> Value {
        let (reason, seq) = if calls.is_empty() {
            stop_reason(&o.stop_reason)
        } else {
            ("tool_use", None)
        };
        let mut content = Vec::new();
        if !text.is_empty() || calls.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for c in calls {
            content.push(json!({"type": "tool_use", "id": c.id, "name": c.name,
                                "input": c.arguments}));
        }
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": seq,
            "usage": usage(u),
            "timings": timings(o),
        })
    }
}

/// The event that ends a Messages stream.
pub fn message_stop() -> Frame {
    event("message_stop", json!({"type": "message_stop"}))
}
