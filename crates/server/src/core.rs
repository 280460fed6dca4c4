//! The wire-neutral core of an answer: what a generation request is once its wire format has
//! been parsed away, what an answer reports (usage, timings, ids), and the interface each
//! wire format's encoder implements. The wire modules (`openai`, `anthropic`) build on this;
//! `local` runs a request through an encoder; nothing here knows a wire format.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use backstop_engine::chat::{ChatMessage, ToolSpec};
use backstop_engine::generate::{GenerateParams, Outcome};
use backstop_engine::grammar::Constraint;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::wire::Endpoint;

/// What the model reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A conversation for the chat template; `prefill` is text the assistant's answer starts
    /// with (Anthropic's trailing assistant message).
    Chat {
        messages: Vec<ChatMessage>,
        prefill: Option<String>,
        /// Tools the model may call (described to it by the template or the generic preamble).
        tools: Vec<ToolSpec>,
    },
    /// A raw completion prompt.
    Text(String),
    /// A completion prompt given as token ids.
    Tokens(Vec<u32>),
}

/// One generation request, parsed from either wire format.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub endpoint: Endpoint,
    /// The model name as requested (checked against the served names by the local layer).
    pub model: Option<String>,
    pub input: Input,
    /// `max_tokens` is `usize::MAX` when the request sets no budget (the context bounds it).
    pub params: GenerateParams,
    pub stream: bool,
    /// OpenAI's `stream_options.include_usage` (Anthropic streams always carry usage).
    pub include_usage: bool,
    pub tool_choice: ToolChoice,
    /// At most one tool call (OpenAI `parallel_tool_calls: false`, Anthropic
    /// `disable_parallel_tool_use`).
    pub single_call: bool,
    /// What the output must be (OpenAI `response_format` json_object / json_schema).
    pub constraint: Option<Constraint>,
}

/// Whether the model may call the request's tools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// It decides (OpenAI and Anthropic `auto`; the default when tools are given).
    #[default]
    Auto,
    /// It may not: the tools are not shown to it.
    None,
    /// It must call at least one (OpenAI `required`, Anthropic `any`).
    Required,
    /// It must call this one (OpenAI `{"type": "function", ...}`, Anthropic `tool`).
    Named(String),
}

impl ToolChoice {
    /// Whether the model sees the tools at all.
    pub fn shows_tools(&self) -> bool {
        *self != ToolChoice::None
    }

    /// Whether the answer must be tool calls (constrained to the call format).
    pub fn forces_call(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Named(_))
    }
}

/// A tool call in an answer; its id matches `^[A-Za-z0-9_-]+$` as both APIs' ids do.
#[derive(Clone, Debug, PartialEq)]
pub struct CallOut {
    pub id: String,
    pub name: String,
    /// A JSON object.
    pub arguments: Value,
}

/// Where an answer resumes: a cloud stream that broke after sending part of a message, which
/// the local model continues in the same stream.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// The assistant text already sent; the local answer continues it.
    pub text: String,
    /// The cloud's message id and model name, reused so the stream stays one message.
    pub id: Option<String>,
    pub model: Option<String>,
    /// Anthropic: the open content block (if any), whether it is text, and the next index.
    pub open_block: Option<u64>,
    pub open_block_is_text: bool,
    pub next_block: u64,
    /// Anthropic: the `tool_use` block the cloud broke inside, continued under its tool's
    /// schema; and the calls it completed before, which the local model is shown.
    pub open_tool: Option<OpenTool>,
    pub done_tools: Vec<OpenTool>,
    /// The `backstop` field of the final event: where and why the answer was continued.
    pub marker: Value,
}

/// A tool call a cloud stream sent: its id, the tool's name, and the argument JSON as sent
/// (a prefix of it while the call is open).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpenTool {
    pub id: String,
    pub name: String,
    pub json: String,
}

/// Token counts of one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, the cached ones included.
    pub prompt: usize,
    /// Prompt tokens whose KV was reused rather than computed.
    pub cached: usize,
    pub completion: usize,
}

impl Usage {
    pub fn of(n_prompt: usize, o: &Outcome) -> Self {
        Self {
            prompt: n_prompt,
            cached: o.n_cached.min(n_prompt),
            completion: o.tokens.len(),
        }
    }
}

/// llama-server's `timings` object, which its users' dashboards read.
pub fn timings(o: &Outcome) -> Value {
    json!({
        "cache_n": o.n_cached,
        "prompt_n": o.n_prompt - o.n_cached.min(o.n_prompt),
        "prompt_ms": o.prompt_time.as_secs_f64() * 1e3,
        "prompt_per_second": o.prompt_tps(),
        "predicted_n": o.tokens.len(),
        "predicted_ms": o.gen_time.as_secs_f64() * 1e3,
        "predicted_per_second": o.gen_tps(),
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id with a provider-style prefix (`chatcmpl-…`, `msg_…`).
pub fn new_id(prefix: &str) -> String {
    let a: u64 = rand::random();
    let b: u32 = rand::random();
    format!("{prefix}{a:016x}{b:08x}")
}

/// One server-sent event: an optional `event:` name and its `data:` (JSON, or `[DONE]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub event: Option<&'static str>,
    pub data: String,
}

impl Frame {
    pub fn json(event: Option<&'static str>, data: &Value) -> Self {
        Self {
            event,
            data: data.to_string(),
        }
    }

    /// OpenAI's end-of-stream sentinel.
    pub fn done() -> Self {
        Self {
            event: None,
            data: "[DONE]".into(),
        }
    }

    /// The bytes on the wire. Every stream this server writes (fresh local answers and
    /// continuations of a cloud stream) is framed here, so they cannot drift apart.
    pub fn to_bytes(&self) -> Bytes {
        let mut s = String::with_capacity(self.data.len() + 32);
        if let Some(n) = self.event {
            s.push_str("event: ");
            s.push_str(n);
            s.push('\n');
        }
        // JSON text holds no raw newlines; `[DONE]` neither. Split anyway so the frame stays
        // valid SSE whatever the data.
        for line in self.data.split('\n') {
            s.push_str("data: ");
            s.push_str(line);
            s.push('\n');
        }
        s.push('\n');
        Bytes::from(s)
    }
}

/// An SSE comment that keeps idle proxies from closing a slow stream.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// A wire format's encoder of one answer. Streaming calls `start`, `text` for each piece,
/// then `finish` or `error`; a whole answer is one `whole`. A resumed encoder (built from a
/// `Resume`) writes only what continues the cloud's stream.
pub trait Encoder: Send {
    fn start(&mut self, n_prompt: usize, out: &mut Vec<Frame>);
    fn text(&mut self, text: &str, out: &mut Vec<Frame>);
    /// The answer's tool calls, after its text and before `finish` (whose reason becomes
    /// the provider's "called a tool").
    fn tool_calls(&mut self, calls: &[CallOut], out: &mut Vec<Frame>);
    fn finish(&mut self, usage: &Usage, o: &Outcome, out: &mut Vec<Frame>);
    /// The stream cannot go on: end it well-formed with an error event.
    fn error(&mut self, e: &ApiError, out: &mut Vec<Frame>);
    /// A non-streamed answer's body.
    fn whole(&self, text: &str, calls: &[CallOut], usage: &Usage, o: &Outcome) -> Value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_sse() {
        let f = Frame::json(Some("ping"), &json!({"type": "ping"}));
        assert_eq!(
            &f.to_bytes()[..],
            b"event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
        assert_eq!(&Frame::done().to_bytes()[..], b"data: [DONE]\n\n");
        let two = Frame {
            event: None,
            data: "a\nb".into(),
        };
        assert_eq!(&two.to_bytes()[..], b"data: a\ndata: b\n\n");
    }
}
