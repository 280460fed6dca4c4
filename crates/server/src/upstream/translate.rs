//! Prompt portability across wire formats: an Anthropic Messages request served by an
//! OpenAI-compatible (Chat Completions) upstream, and the reverse.
//!
//! Requests translate only when nothing the client asked for would be lost: anything without
//! an equivalent on the other side makes the request [`Untranslatable`], so the caller skips
//! that upstream rather than quietly sending a different request. What comes back (whole
//! responses, errors, streams) is translated best effort, since by then the upstream has
//! already answered and dropping a field beats dropping the answer.
//!
//! Everything here works on `serde_json::Value` and never panics on odd shapes: malformed
//! requests become `Untranslatable`, malformed answers lose only the malformed parts.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::core::{new_id, unix_now};
use crate::upstream::sse::parse_event;
use crate::wire::Flavor;

/// Why a request cannot go to an upstream of the other wire format (the upstream is skipped
/// with this reason; a request is never silently changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untranslatable(pub String);

pub struct RequestOptions<'a> {
    /// The model name to send (already mapped by the caller); None = keep the request's.
    pub model: Option<&'a str>,
    /// Anthropic requires max_tokens; used when an OpenAI request has neither max_tokens nor
    /// max_completion_tokens.
    pub default_max_tokens: u64,
}

const OPENAI: &str = "OpenAI";
const ANTHROPIC: &str = "Anthropic";

/// OpenAI's `stop` takes at most this many sequences.
const MAX_OPENAI_STOPS: usize = 4;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Translate a generation request body (`from` = the client's wire format: Anthropic = POST
/// /v1/messages body, OpenAI = POST /v1/chat/completions body) to the other format.
/// `from == to` returns the body with only the model replaced (if Some).
pub fn request(
    from: Flavor,
    to: Flavor,
    body: &Value,
    opts: &RequestOptions,
) -> Result<Value, Untranslatable> {
    let Some(req) = body.as_object() else {
        return Err(fail("the request body is not a JSON object"));
    };
    let mut out = match (from, to) {
        (Flavor::Anthropic, Flavor::OpenAi) => anthropic_request_to_openai(req)?,
        (Flavor::OpenAi, Flavor::Anthropic) => {
            openai_request_to_anthropic(req, opts.default_max_tokens)?
        }
        _ => req.clone(),
    };
    if let Some(model) = opts.model {
        out.insert("model".into(), model.into());
    }
    Ok(Value::Object(out))
}

/// Translate a whole (non-streamed, 2xx) response body from the upstream's format to the
/// client's.
pub fn response(from: Flavor, to: Flavor, body: &Value) -> Value {
    match (from, to) {
        (Flavor::OpenAi, Flavor::Anthropic) => openai_response_to_anthropic(body),
        (Flavor::Anthropic, Flavor::OpenAi) => anthropic_response_to_openai(body),
        _ => body.clone(),
    }
}

/// Translate an upstream error body (any status) into the client's error shape, keeping the
/// message. Anthropic shape: {"type":"error","error":{"type":T,"message":M}}; OpenAI:
/// {"error":{"message":M,"type":T,"param":null,"code":null}}. Unparseable bodies get a
/// generic message naming the status.
pub fn error_body(to: Flavor, status: u16, upstream_body: &[u8]) -> Value {
    let parsed = serde_json::from_slice::<Value>(upstream_body).ok();
    let message = parsed
        .as_ref()
        .and_then(error_message)
        .unwrap_or_else(|| format!("the upstream answered HTTP {status} with no readable error"));
    let upstream_type = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/type"))
        .and_then(Value::as_str);
    error_shape(to, status, upstream_type, &message)
}

// ---------------------------------------------------------------------------------------
// Small helpers shared by every direction.

fn fail(message: impl Into<String>) -> Untranslatable {
    Untranslatable(message.into())
}

fn field_untranslatable(field: &str, target: &str) -> Untranslatable {
    fail(format!("the `{field}` field has no {target} equivalent"))
}

fn block_untranslatable(ty: &str, target: &str) -> Untranslatable {
    fail(format!("`{ty}` blocks have no {target} equivalent"))
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A token count at a JSON pointer; absent or odd values count as none.
fn count(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// A field that is present and not null: clients send `null` to mean "not set".
fn given<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn required<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, Untranslatable> {
    str_at(v, key).ok_or_else(|| fail(format!("{what} without a string `{key}`")))
}

fn block_type(b: &Value) -> &str {
    str_at(b, "type").unwrap_or("untyped")
}

fn messages_of(req: &Map<String, Value>) -> Result<&[Value], Untranslatable> {
    req.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| fail("the request has no `messages` array"))
}

fn string_list(v: &Value, field: &str) -> Result<Vec<String>, Untranslatable> {
    let bad = || fail(format!("`{field}` must be a list of strings"));
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|s| s.as_str().map(str::to_owned).ok_or_else(bad))
        .collect()
}

/// Joins text blocks / text parts (both formats spell them `{"type":"text","text":..}`);
/// any other kind is refused through `other`.
fn join_text(
    blocks: &[Value],
    sep: &str,
    other: impl Fn(&str) -> Untranslatable,
) -> Result<String, Untranslatable> {
    let texts = blocks
        .iter()
        .map(|b| match block_type(b) {
            "text" => Ok(str_at(b, "text").unwrap_or_default()),
            ty => Err(other(ty)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(texts.join(sep))
}

/// The text of a response message's `content`, string or parts; non-text parts are skipped
/// because an answer is never refused.
fn loose_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| block_type(p) == "text")
            .filter_map(|p| str_at(p, "text"))
            .collect(),
        _ => String::new(),
    }
}

fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) => format!("msg_{id}"),
        None => new_id("msg_"),
    }
}

fn completion_id(id: Option<&str>) -> String {
    id.map_or_else(|| new_id("chatcmpl-"), |id| format!("chatcmpl-{id}"))
}

fn anthropic_stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

fn openai_finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// OpenAI usage -> Anthropic usage. Anthropic counts cached prompt tokens apart from
/// `input_tokens`, OpenAI inside `prompt_tokens`.
fn anthropic_usage(usage: Option<&Value>) -> Value {
    let u = usage.unwrap_or(&Value::Null);
    let prompt = count(u, "/prompt_tokens");
    let cached = count(u, "/prompt_tokens_details/cached_tokens");
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "output_tokens": count(u, "/completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// Anthropic usage -> OpenAI usage (the inverse of [`anthropic_usage`]).
fn openai_usage(usage: Option<&Value>) -> Value {
    let u = usage.unwrap_or(&Value::Null);
    let cached = count(u, "/cache_read_input_tokens");
    let prompt = count(u, "/input_tokens")
        .saturating_add(cached)
        .saturating_add(count(u, "/cache_creation_input_tokens"));
    let completion = count(u, "/output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn anthropic_sse(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

fn openai_sse(data: &Value) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

// ---------------------------------------------------------------------------------------
// Anthropic request -> OpenAI request.

fn anthropic_request_to_openai(
    req: &Map<String, Value>,
) -> Result<Map<String, Value>, Untranslatable> {
    let mut messages = Vec::new();
    if let Some(system) = given(req, "system") {
        messages.push(json!({"role": "system", "content": anthropic_system_text(system)?}));
    }
    for m in messages_of(req)? {
        anthropic_message_to_openai(m, &mut messages)?;
    }
    let tools = match given(req, "tools") {
        Some(t) => anthropic_tools_to_openai(t)?,
        None => Vec::new(),
    };
    let mut out = Map::new();
    for (key, value) in req.iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            "messages" | "system" | "tools" => {}
            "model" | "max_tokens" | "temperature" | "top_p" => {
                out.insert(key.clone(), value.clone());
            }
            "stream" => {
                out.insert(key.clone(), value.clone());
                // OpenAI reports usage in a stream only when asked; without it the client
                // would see no token counts.
                if value.as_bool() == Some(true) {
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "stop_sequences" => {
                let stops = string_list(value, key)?;
                if stops.len() > MAX_OPENAI_STOPS {
                    return Err(fail(format!(
                        "more than {MAX_OPENAI_STOPS} `stop_sequences` have no OpenAI equivalent"
                    )));
                }
                if !stops.is_empty() {
                    out.insert("stop".into(), json!(stops));
                }
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").filter(|u| !u.is_null()) {
                    out.insert("user".into(), user.clone());
                }
            }
            "tool_choice" => {
                // OpenAI rejects a tool_choice without tools; with none, it means nothing.
                if !tools.is_empty() {
                    anthropic_tool_choice_to_openai(value, &mut out)?;
                }
            }
            "thinking" if str_at(value, "type") == Some("disabled") => {}
            other => return Err(field_untranslatable(other, OPENAI)),
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(out)
}

fn anthropic_system_text(system: &Value) -> Result<String, Untranslatable> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => join_text(blocks, "\n", |ty| {
            fail(format!(
                "`{ty}` blocks in `system` have no OpenAI equivalent"
            ))
        }),
        _ => Err(fail("`system` must be a string or an array of text blocks")),
    }
}

fn anthropic_message_to_openai(m: &Value, out: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let content = m.get("content").unwrap_or(&Value::Null);
    match str_at(m, "role") {
        Some("user") => anthropic_user_to_openai(content, out),
        Some("assistant") => {
            out.push(anthropic_assistant_to_openai(content)?);
            Ok(())
        }
        other => Err(fail(format!(
            "a message with role `{}` has no OpenAI equivalent",
            other.unwrap_or("none")
        ))),
    }
}

fn anthropic_user_to_openai(content: &Value, out: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(fail(
                "a message's `content` must be a string or an array of blocks",
            ))
        }
    };
    let mut parts = Vec::new();
    let mut tool_results = 0;
    for b in blocks {
        match block_type(b) {
            // OpenAI answers tool calls with `tool` messages, which must directly follow the
            // assistant's call, so they go ahead of the rest of this turn.
            "tool_result" => {
                out.push(anthropic_tool_result_to_openai(b)?);
                tool_results += 1;
            }
            "text" => {
                parts.push(json!({"type": "text", "text": str_at(b, "text").unwrap_or_default()}))
            }
            "image" => parts.push(anthropic_image_to_openai(b)?),
            ty => return Err(block_untranslatable(ty, OPENAI)),
        }
    }
    if !parts.is_empty() || tool_results == 0 {
        out.push(json!({"role": "user", "content": openai_user_parts(parts)}));
    }
    Ok(())
}

/// Text-only content becomes one string, which every OpenAI-compatible server accepts (some
/// take no parts at all).
fn openai_user_parts(parts: Vec<Value>) -> Value {
    if parts.iter().all(|p| block_type(p) == "text") {
        let texts: Vec<&str> = parts.iter().filter_map(|p| str_at(p, "text")).collect();
        Value::from(texts.join("\n"))
    } else {
        Value::Array(parts)
    }
}

fn anthropic_tool_result_to_openai(b: &Value) -> Result<Value, Untranslatable> {
    let id = required(b, "tool_use_id", "a `tool_result` block")?;
    let mut text = match b.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(inner)) => join_text(inner, "\n", |ty| {
            fail(format!(
                "`{ty}` blocks inside a `tool_result` have no OpenAI equivalent"
            ))
        })?,
        Some(_) => {
            return Err(fail(
                "a `tool_result`'s `content` must be a string or blocks",
            ))
        }
    };
    // OpenAI's tool messages have no error flag; the prefix keeps the failure visible.
    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
        text.insert_str(0, "Error: ");
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

fn anthropic_image_to_openai(b: &Value) -> Result<Value, Untranslatable> {
    let source = b.get("source").unwrap_or(&Value::Null);
    let url = match str_at(source, "type") {
        Some("base64") => format!(
            "data:{};base64,{}",
            required(source, "media_type", "an image source")?,
            required(source, "data", "an image source")?
        ),
        Some("url") => required(source, "url", "an image source")?.to_owned(),
        other => {
            return Err(fail(format!(
                "`{}` image sources have no OpenAI equivalent",
                other.unwrap_or("untyped")
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn anthropic_assistant_to_openai(content: &Value) -> Result<Value, Untranslatable> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(fail(
                "a message's `content` must be a string or an array of blocks",
            ))
        }
    };
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match block_type(b) {
            "text" => texts.push(str_at(b, "text").unwrap_or_default()),
            "tool_use" => calls.push(json!({
                "id": required(b, "id", "a `tool_use` block")?,
                "type": "function",
                "function": {
                    "name": required(b, "name", "a `tool_use` block")?,
                    "arguments": arguments_string(b.get("input")),
                },
            })),
            ty => return Err(block_untranslatable(ty, OPENAI)),
        }
    }
    let text = if texts.is_empty() {
        Value::Null
    } else {
        Value::from(texts.join("\n"))
    };
    let mut msg = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    Ok(msg)
}

/// A tool call's input as OpenAI's compact JSON-string `arguments`.
fn arguments_string(input: Option<&Value>) -> String {
    match input {
        Some(v) if !v.is_null() => v.to_string(),
        _ => "{}".to_owned(),
    }
}

fn anthropic_tools_to_openai(tools: &Value) -> Result<Vec<Value>, Untranslatable> {
    let tools = tools
        .as_array()
        .ok_or_else(|| fail("`tools` must be an array"))?;
    tools
        .iter()
        .map(|t| {
            // Server tools run inside Anthropic; an OpenAI upstream cannot run them.
            if let Some(ty) = str_at(t, "type").filter(|ty| *ty != "custom") {
                return Err(fail(format!(
                    "the server tool `{ty}` has no OpenAI equivalent"
                )));
            }
            let schema = t.get("input_schema").filter(|s| !s.is_null());
            let mut function = json!({
                "name": required(t, "name", "a tool")?,
                "parameters": schema.cloned().unwrap_or_else(empty_schema),
            });
            if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                function["description"] = d.clone();
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

fn anthropic_tool_choice_to_openai(
    choice: &Value,
    out: &mut Map<String, Value>,
) -> Result<(), Untranslatable> {
    let mapped = match str_at(choice, "type") {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({
            "type": "function",
            "function": {"name": required(choice, "name", "a `tool` tool_choice")?},
        }),
        other => {
            return Err(fail(format!(
                "the tool_choice `{}` has no OpenAI equivalent",
                other.unwrap_or("untyped")
            )))
        }
    };
    out.insert("tool_choice".into(), mapped);
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.insert("parallel_tool_calls".into(), false.into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// OpenAI request -> Anthropic request.

fn openai_request_to_anthropic(
    req: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Map<String, Value>, Untranslatable> {
    let (system, messages) = openai_messages_to_anthropic(messages_of(req)?)?;
    let mut out = Map::new();
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }
    out.insert("messages".into(), messages);
    let max_tokens = given(req, "max_completion_tokens")
        .or_else(|| given(req, "max_tokens"))
        .cloned()
        .unwrap_or_else(|| default_max_tokens.into());
    out.insert("max_tokens".into(), max_tokens);
    let tools = match given(req, "tools") {
        Some(t) => openai_tools_to_anthropic(t)?,
        None => Vec::new(),
    };
    let mut tool_choice = None;
    let mut serial = false;
    for (key, value) in req.iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            // `stream_options` only shapes the stream, which is rebuilt here anyway; `store`
            // and OpenAI's `metadata` concern OpenAI's own records.
            "messages"
            | "max_completion_tokens"
            | "max_tokens"
            | "tools"
            | "stream_options"
            | "store"
            | "metadata" => {}
            "model" | "top_p" | "stream" => {
                out.insert(key.clone(), value.clone());
            }
            "temperature" => {
                if value.as_f64().is_some_and(|t| t > 1.0) {
                    return Err(fail(
                        "a `temperature` above 1 has no Anthropic equivalent (its range is 0 to 1)",
                    ));
                }
                out.insert(key.clone(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![s.clone()],
                    _ => string_list(value, key)?,
                };
                if !stops.is_empty() {
                    out.insert("stop_sequences".into(), json!(stops));
                }
            }
            "user" => {
                out.insert("metadata".into(), json!({"user_id": value}));
            }
            "tool_choice" => tool_choice = Some(openai_tool_choice_to_anthropic(value)?),
            "parallel_tool_calls" => serial = value.as_bool() == Some(false),
            // The values that ask for nothing beyond the default are fine.
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value.as_bool() == Some(false) => {}
            "response_format" if str_at(value, "type") == Some("text") => {}
            "presence_penalty" | "frequency_penalty" if value.as_f64() == Some(0.0) => {}
            "logit_bias" if value.as_object().is_some_and(Map::is_empty) => {}
            "ignore_eos" if value.as_bool() == Some(false) => {}
            "modalities" if *value == json!(["text"]) => {}
            "service_tier" if matches!(value.as_str(), Some("auto" | "default")) => {}
            other => return Err(field_untranslatable(other, ANTHROPIC)),
        }
    }
    // Anthropic rejects a tool_choice without tools; with none, it means nothing.
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if serial {
            let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
            if str_at(choice, "type") != Some("none") {
                choice["disable_parallel_tool_use"] = true.into();
            }
        }
        if let Some(choice) = tool_choice {
            out.insert("tool_choice".into(), choice);
        }
    }
    Ok(out)
}

/// The leading system/developer texts, and the rest as alternating Anthropic turns.
fn openai_messages_to_anthropic(
    messages: &[Value],
) -> Result<(Vec<String>, Value), Untranslatable> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Value)> = Vec::new();
    for m in messages {
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, content) = match str_at(m, "role") {
            Some(role @ ("system" | "developer")) => {
                // Anthropic has one system prompt, ahead of the conversation.
                if !turns.is_empty() {
                    return Err(fail(format!(
                        "a `{role}` message after the conversation started has no Anthropic \
                         equivalent"
                    )));
                }
                system.push(openai_text(content, role)?);
                continue;
            }
            Some("user") => ("user", openai_user_to_anthropic(content)?),
            Some("assistant") => ("assistant", openai_assistant_to_anthropic(m)?),
            Some("tool") => (
                "user",
                json!([{
                    "type": "tool_result",
                    "tool_use_id": required(m, "tool_call_id", "a `tool` message")?,
                    "content": openai_text(content, "tool")?,
                }]),
            ),
            other => {
                return Err(fail(format!(
                    "a message with role `{}` has no Anthropic equivalent",
                    other.unwrap_or("none")
                )))
            }
        };
        push_turn(&mut turns, role, content);
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, Value::Array(turns)))
}

/// Anthropic wants roles to alternate: a turn of the same role as the last one is merged
/// into it.
fn push_turn(turns: &mut Vec<(&'static str, Value)>, role: &'static str, content: Value) {
    match turns.last_mut() {
        Some((last_role, last)) if *last_role == role => {
            let mut blocks = into_blocks(std::mem::take(last));
            blocks.extend(into_blocks(content));
            // Anthropic wants a user turn's tool results ahead of anything else in it.
            blocks.sort_by_key(|b| block_type(b) != "tool_result");
            *last = Value::Array(blocks);
        }
        _ => turns.push((role, content)),
    }
}

fn into_blocks(content: Value) -> Vec<Value> {
    match content {
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(blocks) => blocks,
        _ => Vec::new(),
    }
}

/// The text of a system, developer, tool or assistant message: a string or text parts.
fn openai_text(content: &Value, role: &str) -> Result<String, Untranslatable> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => join_text(parts, "\n", |ty| {
            fail(format!(
                "`{ty}` parts in `{role}` messages have no Anthropic equivalent"
            ))
        }),
        _ => Err(fail(format!(
            "a `{role}` message's `content` must be a string or an array of parts"
        ))),
    }
}

fn openai_user_to_anthropic(content: &Value) -> Result<Value, Untranslatable> {
    match content {
        Value::String(_) => Ok(content.clone()),
        Value::Array(parts) => parts
            .iter()
            // Anthropic rejects empty text blocks, and they say nothing.
            .filter(|p| {
                !(block_type(p) == "text" && str_at(p, "text").unwrap_or_default().is_empty())
            })
            .map(openai_part_to_anthropic)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Err(fail(
            "a `user` message's `content` must be a string or an array of parts",
        )),
    }
}

fn openai_part_to_anthropic(part: &Value) -> Result<Value, Untranslatable> {
    match block_type(part) {
        "text" => Ok(json!({"type": "text", "text": str_at(part, "text").unwrap_or_default()})),
        "image_url" => openai_image_to_anthropic(part),
        ty => Err(fail(format!(
            "`{ty}` content parts have no Anthropic equivalent"
        ))),
    }
}

fn openai_image_to_anthropic(part: &Value) -> Result<Value, Untranslatable> {
    let url = part
        .get("image_url")
        .and_then(|i| i.as_str().or_else(|| str_at(i, "url")))
        .ok_or_else(|| fail("an `image_url` part without a url"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| fail("an image data URL without data"))?;
        let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
            fail("an image data URL that is not base64 has no Anthropic equivalent")
        })?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(fail(
        "an image URL that is neither data: nor http(s): has no Anthropic equivalent",
    ))
}

fn openai_assistant_to_anthropic(m: &Value) -> Result<Value, Untranslatable> {
    for field in ["refusal", "audio", "function_call"] {
        if m.get(field).is_some_and(|v| !v.is_null()) {
            return Err(fail(format!(
                "an assistant message's `{field}` has no Anthropic equivalent"
            )));
        }
    }
    let mut blocks = Vec::new();
    let text = openai_text(m.get("content").unwrap_or(&Value::Null), "assistant")?;
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    let calls = m.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        blocks.push(openai_call_to_tool_use(call)?);
    }
    // Anthropic rejects an assistant turn with no content, and dropping it would change
    // the conversation.
    if blocks.is_empty() {
        return Err(fail(
            "an assistant message with neither content nor tool calls has no Anthropic equivalent",
        ));
    }
    Ok(Value::Array(blocks))
}

fn openai_call_to_tool_use(call: &Value) -> Result<Value, Untranslatable> {
    if let Some(ty) = str_at(call, "type").filter(|ty| *ty != "function") {
        return Err(fail(format!(
            "`{ty}` tool calls have no Anthropic equivalent"
        )));
    }
    let function = call.get("function").unwrap_or(&Value::Null);
    let id = required(call, "id", "a tool call")?;
    let name = required(function, "name", "a tool call")?;
    let not_object = || {
        fail(format!(
            "the arguments of tool call `{id}` are not a JSON object, which Anthropic's \
             `tool_use.input` must be"
        ))
    };
    let input = match function.get("arguments") {
        None | Some(Value::Null) => json!({}),
        // Some clients record a call without arguments as "".
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(not_object)?,
        Some(v) if v.is_object() => v.clone(),
        Some(_) => return Err(not_object()),
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn openai_tools_to_anthropic(tools: &Value) -> Result<Vec<Value>, Untranslatable> {
    let tools = tools
        .as_array()
        .ok_or_else(|| fail("`tools` must be an array"))?;
    tools
        .iter()
        .map(|t| {
            if let Some(ty) = str_at(t, "type").filter(|ty| *ty != "function") {
                return Err(fail(format!("`{ty}` tools have no Anthropic equivalent")));
            }
            let function = t.get("function").unwrap_or(&Value::Null);
            // Strict mode promises arguments that match the schema; Anthropic makes no such
            // promise, so sending the tool without it would change the request.
            if function.get("strict").and_then(Value::as_bool) == Some(true) {
                return Err(fail("`strict` function tools have no Anthropic equivalent"));
            }
            let schema = function.get("parameters").filter(|p| !p.is_null());
            let mut tool = json!({
                "name": required(function, "name", "a function tool")?,
                "input_schema": schema.cloned().unwrap_or_else(empty_schema),
            });
            if let Some(d) = function.get("description").filter(|d| !d.is_null()) {
                tool["description"] = d.clone();
            }
            Ok(tool)
        })
        .collect()
}

fn openai_tool_choice_to_anthropic(choice: &Value) -> Result<Value, Untranslatable> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            other => Err(fail(format!(
                "the tool_choice `{other}` has no Anthropic equivalent"
            ))),
        },
        Value::Object(_) if str_at(choice, "type") == Some("function") => {
            let function = choice.get("function").unwrap_or(&Value::Null);
            let name = required(function, "name", "a function tool_choice")?;
            Ok(json!({"type": "tool", "name": name}))
        }
        _ => Err(fail(format!(
            "the tool_choice `{}` has no Anthropic equivalent",
            str_at(choice, "type").unwrap_or("untyped")
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Whole responses.

fn openai_response_to_anthropic(body: &Value) -> Value {
    let choice = body.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    let text = loose_text(message.get("content"));
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let function = call.get("function").unwrap_or(&Value::Null);
        content.push(json!({
            "type": "tool_use",
            "id": str_at(call, "id").map_or_else(|| new_id("toolu_"), str::to_owned),
            "name": str_at(function, "name").unwrap_or_default(),
            "input": parsed_arguments(function.get("arguments")),
        }));
    }
    json!({
        "id": message_id(str_at(body, "id")),
        "type": "message",
        "role": "assistant",
        "model": str_at(body, "model").unwrap_or_default(),
        "content": content,
        "stop_reason": anthropic_stop_reason(str_at(choice, "finish_reason")),
        "stop_sequence": null,
        "usage": anthropic_usage(body.get("usage")),
    })
}

/// A model's tool-call arguments as an object; what does not parse as one becomes `{}`,
/// since `tool_use.input` must be an object and the call itself is still worth passing on.
fn parsed_arguments(arguments: Option<&Value>) -> Value {
    let parsed = match arguments {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
        Some(v) => Some(v.clone()),
        None => None,
    };
    parsed.filter(Value::is_object).unwrap_or_else(|| json!({}))
}

fn anthropic_response_to_openai(body: &Value) -> Value {
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let text: String = blocks
        .iter()
        .filter(|b| block_type(b) == "text")
        .filter_map(|b| str_at(b, "text"))
        .collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| block_type(b) == "tool_use")
        .map(|b| {
            json!({
                "id": str_at(b, "id").unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": str_at(b, "name").unwrap_or_default(),
                    "arguments": arguments_string(b.get("input")),
                },
            })
        })
        .collect();
    let content = if text.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": completion_id(str_at(body, "id")),
        "object": "chat.completion",
        "created": unix_now(),
        "model": str_at(body, "model").unwrap_or_default(),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": openai_finish_reason(str_at(body, "stop_reason")),
        }],
        "usage": openai_usage(body.get("usage")),
    })
}

// ---------------------------------------------------------------------------------------
// Errors.

const ANTHROPIC_ERROR_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "billing_error",
    "timeout_error",
];

const OPENAI_ERROR_TYPES: &[&str] = &[
    "invalid_request_error",
    "server_error",
    "insufficient_quota",
    "requests",
    "tokens",
];

fn error_message(v: &Value) -> Option<String> {
    v.pointer("/error/message")
        .or_else(|| v.get("error"))
        .or_else(|| v.get("message"))
        .or_else(|| v.get("detail"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}

/// The client-format error; the upstream's type is kept when the client's format knows it,
/// otherwise the status decides.
fn error_shape(to: Flavor, status: u16, upstream_type: Option<&str>, message: &str) -> Value {
    match to {
        Flavor::Anthropic => {
            let ty = upstream_type
                .filter(|t| ANTHROPIC_ERROR_TYPES.contains(t))
                .unwrap_or(match status {
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    503 | 529 => "overloaded_error",
                    s if s >= 500 => "api_error",
                    _ => "invalid_request_error",
                });
            json!({"type": "error", "error": {"type": ty, "message": message}})
        }
        Flavor::OpenAi => {
            let ty = upstream_type
                .filter(|t| OPENAI_ERROR_TYPES.contains(t))
                .unwrap_or(match status {
                    429 => "rate_limit_error",
                    s if s >= 500 => "server_error",
                    _ => "invalid_request_error",
                });
            json!({"error": {"message": message, "type": ty, "param": null, "code": null}})
        }
    }
}

// ---------------------------------------------------------------------------------------
// Streams.

/// Translates a stream of upstream SSE events into the client's format, event by event.
pub struct StreamTranslator {
    mode: Mode,
}

enum Mode {
    Passthrough,
    ToAnthropic(ChunksToEvents),
    ToOpenAi(EventsToChunks),
}

impl StreamTranslator {
    /// `include_usage`: for an OpenAI client, whether it asked for
    /// `stream_options.include_usage` (then a final chunk with `choices: []` and `usage` goes
    /// before `[DONE]`).
    pub fn new(from: Flavor, to: Flavor, include_usage: bool) -> Self {
        let mode = match (from, to) {
            (Flavor::OpenAi, Flavor::Anthropic) => Mode::ToAnthropic(ChunksToEvents::default()),
            (Flavor::Anthropic, Flavor::OpenAi) => Mode::ToOpenAi(EventsToChunks {
                include_usage,
                ..EventsToChunks::default()
            }),
            _ => Mode::Passthrough,
        };
        Self { mode }
    }

    /// One whole upstream event in; zero or more whole client events out.
    pub fn push(&mut self, raw: &[u8]) -> Vec<Vec<u8>> {
        match &mut self.mode {
            Mode::Passthrough => vec![raw.to_vec()],
            Mode::ToAnthropic(t) => t.push(raw),
            Mode::ToOpenAi(t) => t.push(raw),
        }
    }

    /// The upstream stream ended: whatever must still be sent to end the client's stream
    /// properly, but only if the upstream had reached its end (OpenAI: a finish_reason was
    /// seen; Anthropic: message_delta/message_stop seen). A stream that broke early gets
    /// nothing, so the caller still sees it as unfinished.
    pub fn finish(&mut self) -> Vec<Vec<u8>> {
        match &mut self.mode {
            Mode::Passthrough => Vec::new(),
            Mode::ToAnthropic(t) => t.finish(),
            Mode::ToOpenAi(t) => t.finish(),
        }
    }
}

/// The Anthropic content block open in the translated stream.
#[derive(Clone, Copy)]
struct OpenBlock {
    index: u64,
    /// The OpenAI tool-call index feeding it; None for a text block.
    tool: Option<u64>,
}

/// OpenAI chunks -> Anthropic events.
#[derive(Default)]
struct ChunksToEvents {
    started: bool,
    open: Option<OpenBlock>,
    next_block: u64,
    /// OpenAI tool-call indices that already got a block: a closed block cannot reopen.
    tools_seen: Vec<u64>,
    stop_reason: Option<&'static str>,
    usage: Option<Value>,
    /// message_stop or an error went out; nothing more may follow.
    ended: bool,
}

impl ChunksToEvents {
    fn push(&mut self, raw: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        let (_, data) = parse_event(raw);
        if data.trim() == "[DONE]" {
            self.end_message(&mut out);
            return out;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
            return out;
        };
        if !chunk.is_object() {
            return out;
        }
        if let Some(error) = chunk.get("error").filter(|e| e.is_object()) {
            self.error(error, &mut out);
            return out;
        }
        self.start(&chunk, &mut out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(anthropic_usage(Some(usage)));
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = str_at(delta, "content").filter(|t| !t.is_empty()) {
            self.text(text, &mut out);
        }
        let calls = delta.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            self.tool_call(call, &mut out);
        }
        if let Some(reason) = str_at(choice, "finish_reason") {
            if self.stop_reason.is_none() {
                self.close_block(&mut out);
                self.stop_reason = Some(anthropic_stop_reason(Some(reason)));
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if !self.ended && self.stop_reason.is_some() {
            self.end_message(&mut out);
        }
        out
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<Vec<u8>>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(str_at(chunk, "id")),
            "type": "message",
            "role": "assistant",
            "model": str_at(chunk, "model").unwrap_or_default(),
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        out.push(anthropic_sse(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ));
    }

    fn open_block(&mut self, tool: Option<u64>, block: Value, out: &mut Vec<Vec<u8>>) -> u64 {
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some(OpenBlock { index, tool });
        out.push(anthropic_sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn close_block(&mut self, out: &mut Vec<Vec<u8>>) {
        if let Some(block) = self.open.take() {
            out.push(anthropic_sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": block.index}),
            ));
        }
    }

    fn delta(index: u64, delta: Value) -> Vec<u8> {
        anthropic_sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    }

    fn text(&mut self, text: &str, out: &mut Vec<Vec<u8>>) {
        let index = match self.open {
            Some(OpenBlock { index, tool: None }) => index,
            _ => {
                self.close_block(out);
                self.open_block(None, json!({"type": "text", "text": ""}), out)
            }
        };
        out.push(Self::delta(
            index,
            json!({"type": "text_delta", "text": text}),
        ));
    }

    fn tool_call(&mut self, call: &Value, out: &mut Vec<Vec<u8>>) {
        let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let function = call.get("function").unwrap_or(&Value::Null);
        let index = match self.open {
            Some(OpenBlock {
                index,
                tool: Some(t),
            }) if t == tool => index,
            _ => {
                // Anthropic blocks are sequential: pieces of a call whose block was already
                // closed (interleaved calls) have nowhere to go.
                if self.tools_seen.contains(&tool) {
                    return;
                }
                self.tools_seen.push(tool);
                self.close_block(out);
                let block = json!({
                    "type": "tool_use",
                    "id": str_at(call, "id").map_or_else(|| new_id("toolu_"), str::to_owned),
                    "name": str_at(function, "name").unwrap_or_default(),
                    "input": {},
                });
                self.open_block(Some(tool), block, out)
            }
        };
        if let Some(piece) = str_at(function, "arguments").filter(|p| !p.is_empty()) {
            out.push(Self::delta(
                index,
                json!({"type": "input_json_delta", "partial_json": piece}),
            ));
        }
    }

    fn end_message(&mut self, out: &mut Vec<Vec<u8>>) {
        self.ended = true;
        self.start(&Value::Null, out);
        self.close_block(out);
        let usage = self.usage.take().unwrap_or_else(|| anthropic_usage(None));
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage,
        });
        out.push(anthropic_sse("message_delta", &delta));
        out.push(anthropic_sse(
            "message_stop",
            &json!({"type": "message_stop"}),
        ));
    }

    fn error(&mut self, error: &Value, out: &mut Vec<Vec<u8>>) {
        // Closing the open block keeps what was received a well-formed partial message.
        self.close_block(out);
        self.ended = true;
        let message = str_at(error, "message").unwrap_or("the upstream stream failed");
        let body = error_shape(Flavor::Anthropic, 500, str_at(error, "type"), message);
        out.push(anthropic_sse("error", &body));
    }
}

/// What every OpenAI chunk of one answer repeats.
#[derive(Default)]
struct ChunkHead {
    id: String,
    created: u64,
    model: String,
}

impl ChunkHead {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    fn usage_chunk(&self, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        })
    }
}

/// Anthropic events -> OpenAI chunks.
#[derive(Default)]
struct EventsToChunks {
    include_usage: bool,
    head: ChunkHead,
    started: bool,
    /// Anthropic block index -> OpenAI tool-call index.
    tool_of_block: HashMap<u64, u64>,
    tool_calls: u64,
    /// Tool calls (OpenAI index) whose arguments have begun.
    calls_with_arguments: std::collections::HashSet<u64>,
    /// Anthropic usage so far (message_start's, updated by message_delta's).
    usage: Map<String, Value>,
    /// The finish chunk went out (message_delta seen).
    finished: bool,
    /// [DONE] or an error went out; nothing more may follow.
    ended: bool,
}

impl EventsToChunks {
    fn push(&mut self, raw: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        let (name, data) = parse_event(raw);
        let Ok(event) = serde_json::from_str::<Value>(&data) else {
            return out;
        };
        match str_at(&event, "type")
            .or(name.as_deref())
            .unwrap_or_default()
        {
            "message_start" => self.start(&event, &mut out),
            "content_block_start" => self.block_start(&event, &mut out),
            "content_block_delta" => self.block_delta(&event, &mut out),
            "message_delta" => self.message_delta(&event, &mut out),
            "message_stop" => {
                // A stop with no message_delta still deserves a finish_reason.
                self.message_delta(&Value::Null, &mut out);
                self.ended = true;
                out.push(DONE.to_vec());
            }
            "error" => {
                self.ended = true;
                let error = event.get("error").unwrap_or(&Value::Null);
                let message = str_at(error, "message").unwrap_or("the upstream stream failed");
                let body = error_shape(Flavor::OpenAi, 500, str_at(error, "type"), message);
                out.push(openai_sse(&body));
            }
            "content_block_stop" => {
                // A call without arguments streams none in Anthropic's format; OpenAI
                // clients parse the arguments they accumulated, and "" is not JSON.
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(&n) = self.tool_of_block.get(&index) {
                    if self.calls_with_arguments.insert(n) {
                        let call = json!({"index": n, "function": {"arguments": "{}"}});
                        self.emit(json!({"tool_calls": [call]}), &mut out);
                    }
                }
            }
            // ping: nothing to say in OpenAI's format.
            _ => {}
        }
        out
    }

    fn finish(&mut self) -> Vec<Vec<u8>> {
        if self.finished && !self.ended {
            self.ended = true;
            return vec![DONE.to_vec()];
        }
        Vec::new()
    }

    fn emit(&self, delta: Value, out: &mut Vec<Vec<u8>>) {
        out.push(openai_sse(&self.head.chunk(delta, None)));
    }

    fn merge_usage(&mut self, usage: Option<&Value>) {
        if let Some(Value::Object(u)) = usage {
            for (k, v) in u.iter().filter(|(_, v)| !v.is_null()) {
                self.usage.insert(k.clone(), v.clone());
            }
        }
    }

    fn start(&mut self, event: &Value, out: &mut Vec<Vec<u8>>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = event.get("message").unwrap_or(&Value::Null);
        self.head = ChunkHead {
            id: completion_id(str_at(message, "id")),
            created: unix_now(),
            model: str_at(message, "model").unwrap_or_default().to_owned(),
        };
        self.merge_usage(message.get("usage"));
        self.emit(json!({"role": "assistant", "content": ""}), out);
    }

    fn block_start(&mut self, event: &Value, out: &mut Vec<Vec<u8>>) {
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        let block = event.get("content_block").unwrap_or(&Value::Null);
        match block_type(block) {
            "tool_use" => {
                let n = self.tool_calls;
                self.tool_calls += 1;
                self.tool_of_block.insert(index, n);
                let call = json!({
                    "index": n,
                    "id": str_at(block, "id").unwrap_or_default(),
                    "type": "function",
                    "function": {"name": str_at(block, "name").unwrap_or_default(), "arguments": ""},
                });
                self.emit(json!({"tool_calls": [call]}), out);
            }
            "text" => {
                if let Some(text) = str_at(block, "text").filter(|t| !t.is_empty()) {
                    self.emit(json!({"content": text}), out);
                }
            }
            // thinking and server-side blocks have no place in a chat completion.
            _ => {}
        }
    }

    fn block_delta(&mut self, event: &Value, out: &mut Vec<Vec<u8>>) {
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        let delta = event.get("delta").unwrap_or(&Value::Null);
        match str_at(delta, "type") {
            Some("text_delta") => {
                if let Some(text) = str_at(delta, "text").filter(|t| !t.is_empty()) {
                    self.emit(json!({"content": text}), out);
                }
            }
            Some("input_json_delta") => {
                let piece = str_at(delta, "partial_json").filter(|p| !p.is_empty());
                if let (Some(piece), Some(&n)) = (piece, self.tool_of_block.get(&index)) {
                    self.calls_with_arguments.insert(n);
                    let call = json!({"index": n, "function": {"arguments": piece}});
                    self.emit(json!({"tool_calls": [call]}), out);
                }
            }
            _ => {}
        }
    }

    fn message_delta(&mut self, event: &Value, out: &mut Vec<Vec<u8>>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.merge_usage(event.get("usage"));
        let reason = event.pointer("/delta/stop_reason").and_then(Value::as_str);
        let finish = self
            .head
            .chunk(json!({}), Some(openai_finish_reason(reason)));
        out.push(openai_sse(&finish));
        if self.include_usage {
            let usage = openai_usage(Some(&Value::Object(self.usage.clone())));
            out.push(openai_sse(&self.head.usage_chunk(usage)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// A whole answer as a stream.

/// A whole client-format response rendered as the stream a streaming client expects (used
/// when an answer was obtained whole but the client asked for stream:true). `extra`: if
/// Some, added as a top-level field `"backstop": extra` to the final `message_delta` event
/// (Anthropic) or to the last chunk before [DONE] (OpenAI).
pub fn whole_to_stream(
    flavor: Flavor,
    body: &Value,
    include_usage: bool,
    extra: Option<&Value>,
) -> Vec<Vec<u8>> {
    match flavor {
        Flavor::Anthropic => anthropic_whole_to_stream(body, extra),
        Flavor::OpenAi => openai_whole_to_stream(body, include_usage, extra),
    }
}

fn anthropic_whole_to_stream(body: &Value, extra: Option<&Value>) -> Vec<Vec<u8>> {
    let usage = body
        .get("usage")
        .filter(|u| u.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"input_tokens": 0, "output_tokens": 0}));
    // As in a live stream, output is counted only once it has been produced.
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = 0.into();
    let mut message = body.as_object().cloned().unwrap_or_default();
    message.insert("content".into(), json!([]));
    message.insert("stop_reason".into(), Value::Null);
    message.insert("stop_sequence".into(), Value::Null);
    message.insert("usage".into(), start_usage);
    let mut out = vec![anthropic_sse(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    )];
    let blocks = body.get("content").and_then(Value::as_array);
    for (index, block) in blocks.into_iter().flatten().enumerate() {
        block_events(index, block, &mut out);
    }
    let mut delta = json!({
        "type": "message_delta",
        "delta": {
            "stop_reason": body.get("stop_reason").cloned().unwrap_or_else(|| "end_turn".into()),
            "stop_sequence": body.get("stop_sequence").cloned().unwrap_or(Value::Null),
        },
        "usage": usage,
    });
    if let Some(extra) = extra {
        delta["backstop"] = extra.clone();
    }
    out.push(anthropic_sse("message_delta", &delta));
    out.push(anthropic_sse(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    out
}

/// One content block as start, its content in one delta (or two, for a signed thinking
/// block), and stop.
fn block_events(index: usize, block: &Value, out: &mut Vec<Vec<u8>>) {
    let (start, deltas) = match block_type(block) {
        "text" => (
            json!({"type": "text", "text": ""}),
            vec![json!({"type": "text_delta", "text": str_at(block, "text").unwrap_or_default()})],
        ),
        "tool_use" => (
            json!({
                "type": "tool_use",
                "id": str_at(block, "id").unwrap_or_default(),
                "name": str_at(block, "name").unwrap_or_default(),
                "input": {},
            }),
            vec![
                json!({"type": "input_json_delta", "partial_json": arguments_string(block.get("input"))}),
            ],
        ),
        "thinking" => {
            let mut deltas = vec![json!({
                "type": "thinking_delta",
                "thinking": str_at(block, "thinking").unwrap_or_default(),
            })];
            if let Some(signature) = str_at(block, "signature") {
                deltas.push(json!({"type": "signature_delta", "signature": signature}));
            }
            (json!({"type": "thinking", "thinking": ""}), deltas)
        }
        // Blocks with no delta form (redacted thinking, server tool results) arrive whole in
        // their start event, as Anthropic sends them.
        _ => (block.clone(), Vec::new()),
    };
    out.push(anthropic_sse(
        "content_block_start",
        &json!({"type": "content_block_start", "index": index, "content_block": start}),
    ));
    for delta in deltas {
        out.push(ChunksToEvents::delta(index as u64, delta));
    }
    out.push(anthropic_sse(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    ));
}

fn openai_whole_to_stream(
    body: &Value,
    include_usage: bool,
    extra: Option<&Value>,
) -> Vec<Vec<u8>> {
    let head = ChunkHead {
        id: str_at(body, "id").unwrap_or_default().to_owned(),
        created: body
            .get("created")
            .and_then(Value::as_u64)
            .unwrap_or_else(unix_now),
        model: str_at(body, "model").unwrap_or_default().to_owned(),
    };
    let choice = body.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut out = vec![openai_sse(
        &head.chunk(json!({"role": "assistant", "content": ""}), None),
    )];
    let text = loose_text(message.get("content"));
    if !text.is_empty() {
        out.push(openai_sse(&head.chunk(json!({"content": text}), None)));
    }
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for (index, call) in calls.into_iter().flatten().enumerate() {
        let function = call.get("function").unwrap_or(&Value::Null);
        let call = json!({
            "index": index,
            "id": str_at(call, "id").unwrap_or_default(),
            "type": "function",
            "function": {
                "name": str_at(function, "name").unwrap_or_default(),
                "arguments": str_at(function, "arguments").unwrap_or("{}"),
            },
        });
        out.push(openai_sse(&head.chunk(json!({"tool_calls": [call]}), None)));
    }
    let reason = str_at(choice, "finish_reason").unwrap_or("stop");
    let mut last = head.chunk(json!({}), Some(reason));
    if include_usage {
        out.push(openai_sse(&last));
        let usage = body
            .get("usage")
            .filter(|u| u.is_object())
            .cloned()
            .unwrap_or_else(|| openai_usage(None));
        last = head.usage_chunk(usage);
    }
    if let Some(extra) = extra {
        last["backstop"] = extra.clone();
    }
    out.push(openai_sse(&last));
    out.push(DONE.to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::sse::{is_error_event, Splitter};

    fn opts(model: Option<&str>) -> RequestOptions<'_> {
        RequestOptions {
            model,
            default_max_tokens: 4096,
        }
    }

    fn to_openai(req: &Value) -> Result<Value, Untranslatable> {
        request(Flavor::Anthropic, Flavor::OpenAi, req, &opts(None))
    }

    fn to_anthropic(req: &Value) -> Result<Value, Untranslatable> {
        request(Flavor::OpenAi, Flavor::Anthropic, req, &opts(None))
    }

    fn with(base: &Value, key: &str, value: Value) -> Value {
        let mut v = base.clone();
        v[key] = value;
        v
    }

    fn oa(chunk: Value) -> Vec<u8> {
        format!("data: {chunk}\n\n").into_bytes()
    }

    fn an(event: Value) -> Vec<u8> {
        let name = event["type"].as_str().unwrap().to_owned();
        format!("event: {name}\ndata: {event}\n\n").into_bytes()
    }

    /// Every output is one whole SSE event, as the splitter the caller uses would cut it.
    fn assert_whole_events(out: &[Vec<u8>]) {
        let mut s = Splitter::default();
        let split = s.push(&out.concat()).unwrap();
        assert_eq!(split, out.to_vec());
        assert_eq!(s.pending(), 0);
    }

    /// Reassembles Anthropic events into the message they describe, with the event names.
    fn assemble_anthropic(out: &[Vec<u8>]) -> (Vec<String>, Value) {
        assert_whole_events(out);
        let mut names = Vec::new();
        let mut msg = Value::Null;
        let mut partial: HashMap<usize, String> = HashMap::new();
        for raw in out {
            let (name, data) = parse_event(raw);
            let v: Value = serde_json::from_str(&data).unwrap();
            let name = name.unwrap();
            assert_eq!(v["type"], name.as_str());
            let i = v["index"].as_u64().unwrap_or(0) as usize;
            match name.as_str() {
                "message_start" => msg = v["message"].clone(),
                "content_block_start" => {
                    let content = msg["content"].as_array_mut().unwrap();
                    assert_eq!(i, content.len(), "blocks are numbered in order");
                    content.push(v["content_block"].clone());
                }
                "content_block_delta" => {
                    let block = &mut msg["content"][i];
                    let d = &v["delta"];
                    match d["type"].as_str().unwrap() {
                        "text_delta" => {
                            let t = format!(
                                "{}{}",
                                block["text"].as_str().unwrap(),
                                d["text"].as_str().unwrap()
                            );
                            block["text"] = t.into();
                        }
                        "input_json_delta" => {
                            partial
                                .entry(i)
                                .or_default()
                                .push_str(d["partial_json"].as_str().unwrap());
                        }
                        "thinking_delta" => {
                            let t = format!(
                                "{}{}",
                                block["thinking"].as_str().unwrap(),
                                d["thinking"].as_str().unwrap()
                            );
                            block["thinking"] = t.into();
                        }
                        "signature_delta" => block["signature"] = d["signature"].clone(),
                        other => panic!("unexpected delta {other}"),
                    }
                }
                "content_block_stop" => {
                    if let Some(json) = partial.remove(&i) {
                        msg["content"][i]["input"] = serde_json::from_str(&json).unwrap();
                    }
                }
                "message_delta" => {
                    msg["stop_reason"] = v["delta"]["stop_reason"].clone();
                    msg["stop_sequence"] = v["delta"]["stop_sequence"].clone();
                    for (k, n) in v["usage"].as_object().unwrap() {
                        msg["usage"][k] = n.clone();
                    }
                    if let Some(x) = v.get("backstop") {
                        msg["backstop"] = x.clone();
                    }
                }
                "message_stop" | "error" => {}
                other => panic!("unexpected event {other}"),
            }
            names.push(name);
        }
        (names, msg)
    }

    /// What an OpenAI chunk stream says, reassembled into a chat.completion, and whether it
    /// ended with [DONE].
    fn assemble_openai(out: &[Vec<u8>]) -> (Value, bool) {
        assert_whole_events(out);
        let mut head = Value::Null;
        let mut text: Option<String> = None;
        let mut calls: Vec<Value> = Vec::new();
        let mut finish = Value::Null;
        let mut usage = None;
        let mut extra = None;
        let mut done = false;
        for raw in out {
            assert!(!done, "nothing follows [DONE]");
            let (name, data) = parse_event(raw);
            assert!(name.is_none());
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let c: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(c["object"], "chat.completion.chunk");
            if head.is_null() {
                head = json!({"id": c["id"], "created": c["created"], "model": c["model"]});
            }
            assert_eq!(c["id"], head["id"]);
            if let Some(x) = c.get("backstop") {
                extra = Some(x.clone());
            }
            if let Some(u) = c.get("usage") {
                assert_eq!(c["choices"], json!([]));
                usage = Some(u.clone());
                continue;
            }
            let choice = &c["choices"][0];
            if !choice["finish_reason"].is_null() {
                assert!(finish.is_null(), "one finish_reason");
                finish = choice["finish_reason"].clone();
            }
            let d = &choice["delta"];
            if let Some(t) = d["content"].as_str() {
                text.get_or_insert_with(String::new).push_str(t);
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let n = tc["index"].as_u64().unwrap() as usize;
                if n == calls.len() {
                    calls.push(json!({"id": tc["id"], "type": "function",
                                      "function": {"name": tc["function"]["name"], "arguments": ""}}));
                }
                let args = format!(
                    "{}{}",
                    calls[n]["function"]["arguments"].as_str().unwrap(),
                    tc["function"]["arguments"].as_str().unwrap_or_default()
                );
                calls[n]["function"]["arguments"] = args.into();
            }
        }
        let text = text.filter(|t| !t.is_empty());
        let mut message = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        let mut body = json!({
            "id": head["id"], "object": "chat.completion", "created": head["created"],
            "model": head["model"],
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        });
        if let Some(u) = usage {
            body["usage"] = u;
        }
        if let Some(x) = extra {
            body["backstop"] = x;
        }
        (body, done)
    }

    fn anthropic_tool_conversation() -> Value {
        json!({
            "model": "claude-x",
            "max_tokens": 512,
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Use tools."}
            ],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Paris", "day": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no forecast", "is_error": true}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "Current weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                       "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_p": 0.9,
            "metadata": {"user_id": "u-1"},
            "stream": true,
            "thinking": {"type": "disabled"}
        })
    }

    #[test]
    fn anthropic_request_maps_system_history_tools_and_choice_to_openai() {
        let req = anthropic_tool_conversation();
        let o = request(
            Flavor::Anthropic,
            Flavor::OpenAi,
            &req,
            &opts(Some("gpt-4o")),
        )
        .unwrap();
        assert_eq!(o["model"], "gpt-4o");
        assert_eq!(o["max_tokens"], 512);
        assert_eq!(
            o["messages"],
            json!([
                {"role": "system", "content": "Be brief.\nUse tools."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And tomorrow?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_2", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"day\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no forecast"}
            ])
        );
        assert_eq!(
            o["tools"],
            json!([{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
        );
        assert_eq!(o["tool_choice"], "required");
        assert_eq!(o["parallel_tool_calls"], false);
        assert_eq!(o["stop"], json!(["END"]));
        assert_eq!(o["temperature"], 0.2);
        assert_eq!(o["top_p"], 0.9);
        assert_eq!(o["user"], "u-1");
        assert_eq!(o["stream"], true);
        assert_eq!(o["stream_options"], json!({"include_usage": true}));
        for gone in ["system", "stop_sequences", "metadata", "thinking"] {
            assert!(o.get(gone).is_none(), "{gone} must not be sent to OpenAI");
        }
    }

    #[test]
    fn anthropic_tool_choices_and_image_urls_map_to_openai() {
        let base = json!({"model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "tools": [{"type": "custom", "name": "t", "input_schema": {"type": "object"}}]});
        let o = to_openai(&base).unwrap();
        assert_eq!(o["messages"], json!([{"role": "user", "content": "a\nb"}]));
        assert!(o.get("stream_options").is_none());
        assert_eq!(
            o["tools"][0]["function"],
            json!({"name": "t", "parameters": {"type": "object"}})
        );
        let cases = [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "t"}),
                json!({"type": "function", "function": {"name": "t"}}),
            ),
        ];
        for (choice, want) in cases {
            let o = to_openai(&with(&base, "tool_choice", choice)).unwrap();
            assert_eq!(o["tool_choice"], want);
            assert!(o.get("parallel_tool_calls").is_none());
        }
        let url = json!([{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]);
        let o = to_openai(&with(&base, "messages", url)).unwrap();
        assert_eq!(
            o["messages"][0]["content"],
            json!([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
        );
    }

    #[test]
    fn openai_request_maps_system_tools_and_merges_turns_to_anthropic() {
        let req = json!({
            "model": "gpt-4o",
            "max_completion_tokens": 300,
            "max_tokens": 999,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Which is warmer?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}
                ]},
                {"role": "user", "content": "Answer briefly."},
                {"role": "assistant", "content": [{"type": "text", "text": "Rome."}]}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "noop"}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "stop": "END",
            "temperature": 0.5,
            "top_p": 1,
            "user": "u-1",
            "stream": true,
            "stream_options": {"include_usage": true},
            "store": false,
            "metadata": {"k": "v"},
            "n": 1,
            "logprobs": false,
            "presence_penalty": 0,
            "response_format": {"type": "text"},
            "reasoning_effort": null,
            "service_tier": null
        });
        let a = request(
            Flavor::OpenAi,
            Flavor::Anthropic,
            &req,
            &opts(Some("claude-x")),
        )
        .unwrap();
        assert_eq!(a["model"], "claude-x");
        assert_eq!(a["system"], "Be brief.\n\nUse tools.");
        assert_eq!(
            a["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
                    {"type": "text", "text": "Which is warmer?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
                    {"type": "text", "text": "Answer briefly."}
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "Rome."}]}
            ])
        );
        assert_eq!(
            a["tools"],
            json!([
                {"name": "get_weather", "description": "Current weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "noop", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(
            a["tool_choice"],
            json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
        );
        assert_eq!(a["max_tokens"], 300);
        assert_eq!(a["stop_sequences"], json!(["END"]));
        assert_eq!(a["temperature"], 0.5);
        assert_eq!(a["top_p"], 1);
        assert_eq!(a["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(a["stream"], true);
        let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
        let allowed = [
            "model",
            "system",
            "messages",
            "tools",
            "tool_choice",
            "max_tokens",
            "stop_sequences",
            "temperature",
            "top_p",
            "metadata",
            "stream",
        ];
        assert!(
            keys.iter().all(|k| allowed.contains(&k.as_str())),
            "{keys:?}"
        );
    }

    #[test]
    fn openai_request_defaults_and_tool_choice_strings_map_to_anthropic() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                          "tools": [{"type": "function", "function": {"name": "t"}}]});
        let a = to_anthropic(&base).unwrap();
        assert_eq!(a["max_tokens"], 4096);
        assert!(a.get("system").is_none());
        assert!(a.get("tool_choice").is_none());
        assert_eq!(
            to_anthropic(&with(&base, "max_tokens", json!(7))).unwrap()["max_tokens"],
            7
        );
        let serial = to_anthropic(&with(&base, "parallel_tool_calls", json!(false))).unwrap();
        assert_eq!(
            serial["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        for (choice, want) in [("auto", "auto"), ("required", "any"), ("none", "none")] {
            let a = to_anthropic(&with(&base, "tool_choice", json!(choice))).unwrap();
            assert_eq!(a["tool_choice"], json!({"type": want}));
        }
        let stops = to_anthropic(&with(&base, "stop", json!(["a", "b"]))).unwrap();
        assert_eq!(stops["stop_sequences"], json!(["a", "b"]));
    }

    #[test]
    fn anthropic_request_survives_a_round_trip_through_openai() {
        let req = json!({
            "model": "claude-x",
            "max_tokens": 100,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "18C"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "18C."}]}
            ],
            "tools": [{"name": "w", "description": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"},
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "metadata": {"user_id": "u"},
            "stream": false
        });
        let there = to_openai(&req).unwrap();
        assert_eq!(to_anthropic(&there).unwrap(), req);
    }

    #[test]
    fn openai_request_survives_a_round_trip_through_anthropic() {
        let req = json!({
            "model": "gpt",
            "max_tokens": 100,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "18C"},
                {"role": "assistant", "content": "18C."}
            ],
            "tools": [{"type": "function", "function": {"name": "w", "description": "weather",
                                                         "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "stop": ["END"],
            "top_p": 0.5,
            "user": "u",
            "stream": false
        });
        let there = to_anthropic(&req).unwrap();
        assert_eq!(to_openai(&there).unwrap(), req);
    }

    #[test]
    fn same_flavor_replaces_only_the_model() {
        let body = json!({"model": "a", "messages": [], "whatever": {"x": 1}, "top_k": 3});
        for f in [Flavor::OpenAi, Flavor::Anthropic] {
            let out = request(f, f, &body, &opts(Some("b"))).unwrap();
            assert_eq!(out, with(&body, "model", json!("b")));
            assert_eq!(request(f, f, &body, &opts(None)).unwrap(), body);
        }
    }

    #[test]
    fn untranslatable_anthropic_requests_name_what_is_missing() {
        let base = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
        let user = |content: Value| json!([{"role": "user", "content": content}]);
        let cases = [
            ("top_k", json!(5), "top_k"),
            (
                "thinking",
                json!({"type": "enabled", "budget_tokens": 1024}),
                "thinking",
            ),
            ("service_tier", json!("auto"), "service_tier"),
            ("container", json!("c"), "container"),
            ("mcp_servers", json!([]), "mcp_servers"),
            ("frobnicate", json!(1), "frobnicate"),
            (
                "stop_sequences",
                json!(["1", "2", "3", "4", "5"]),
                "stop_sequences",
            ),
            (
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search"}]),
                "web_search_20250305",
            ),
            (
                "tools",
                json!([{"type": "bash_20250124", "name": "bash"}]),
                "bash_20250124",
            ),
            (
                "messages",
                json!([{"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"}]}]),
                "`thinking` blocks",
            ),
            (
                "messages",
                json!([{"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "x"}]}]),
                "redacted_thinking",
            ),
            (
                "messages",
                user(json!([{"type": "document", "source": {}}])),
                "document",
            ),
            (
                "messages",
                user(json!([{"type": "tool_result", "tool_use_id": "t",
                "content": [{"type": "image", "source": {}}]}])),
                "`image` blocks inside a `tool_result`",
            ),
            (
                "messages",
                user(json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}])),
                "file",
            ),
            (
                "messages",
                json!([{"role": "system", "content": "x"}]),
                "system",
            ),
        ];
        for (field, value, named) in cases {
            let err = to_openai(&with(&base, field, value)).unwrap_err();
            assert!(err.0.contains(named), "{field}: {err}");
        }
        assert!(to_openai(&with(&base, "thinking", json!({"type": "disabled"}))).is_ok());
        assert!(to_openai(&with(&base, "top_k", Value::Null)).is_ok());
    }

    #[test]
    fn untranslatable_openai_requests_name_what_is_missing() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let cases = [
            ("n", json!(2), "`n`"),
            ("logprobs", json!(true), "logprobs"),
            ("top_logprobs", json!(2), "top_logprobs"),
            (
                "response_format",
                json!({"type": "json_object"}),
                "response_format",
            ),
            ("presence_penalty", json!(0.5), "presence_penalty"),
            ("frequency_penalty", json!(-0.1), "frequency_penalty"),
            ("logit_bias", json!({"50256": -100}), "logit_bias"),
            ("ignore_eos", json!(true), "ignore_eos"),
            ("seed", json!(1), "seed"),
            ("audio", json!({"voice": "x"}), "audio"),
            ("modalities", json!(["text", "audio"]), "modalities"),
            (
                "prediction",
                json!({"type": "content", "content": "x"}),
                "prediction",
            ),
            ("web_search_options", json!({}), "web_search_options"),
            ("temperature", json!(1.5), "temperature"),
            ("reasoning_effort", json!("high"), "reasoning_effort"),
            ("service_tier", json!("flex"), "service_tier"),
            ("functions", json!([]), "functions"),
            (
                "tools",
                json!([{"type": "custom", "custom": {"name": "x"}}]),
                "custom",
            ),
            ("tool_choice", json!("sometimes"), "sometimes"),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "x", "strict": true}}]),
                "strict",
            ),
        ];
        for (field, value, named) in cases {
            let err = to_anthropic(&with(&base, field, value)).unwrap_err();
            assert!(err.0.contains(named), "{field}: {err}");
        }
        let msgs = |m: Value| with(&base, "messages", m);
        let message_cases = [
            (
                json!([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]),
                "`system`",
            ),
            (
                json!([{"role": "user", "content": "hi"}, {"role": "developer", "content": "late"}]),
                "`developer`",
            ),
            (
                json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
                "input_audio",
            ),
            (
                json!([{"role": "user", "content": [{"type": "file", "file": {}}]}]),
                "`file`",
            ),
            (
                json!([{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
                "arguments",
            ),
            (
                json!([{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]),
                "arguments",
            ),
            (
                json!([{"role": "assistant", "content": null, "refusal": "no"}]),
                "refusal",
            ),
            (
                json!([{"role": "assistant", "content": "x", "audio": {"id": "a"}}]),
                "audio",
            ),
            (
                json!([{"role": "function", "name": "f", "content": "x"}]),
                "function",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]),
                "image URL",
            ),
        ];
        for (messages, named) in message_cases {
            let err = to_anthropic(&msgs(messages)).unwrap_err();
            assert!(err.0.contains(named), "{named}: {err}");
        }
        for ok in [
            ("n", json!(1)),
            ("logprobs", json!(false)),
            ("presence_penalty", json!(0.0)),
            ("modalities", json!(["text"])),
            ("reasoning_effort", Value::Null),
            ("temperature", json!(1)),
            ("logit_bias", json!({})),
            ("ignore_eos", json!(false)),
        ] {
            assert!(to_anthropic(&with(&base, ok.0, ok.1)).is_ok(), "{}", ok.0);
        }
    }

    #[test]
    fn malformed_requests_are_refused_not_panicked_on() {
        let bad = [
            json!([]),
            json!("x"),
            json!({"model": "m"}),
            json!({"messages": "x"}),
            json!({"messages": [1, null, {"role": 3}]}),
            json!({"messages": [{"role": "user", "content": 5}]}),
            json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]}),
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            json!({"messages": [], "tools": "x"}),
            json!({"messages": [], "tools": [{"function": {}}]}),
            json!({"messages": [], "stop": 5}),
        ];
        for body in bad {
            assert!(to_openai(&body).is_err(), "{body}");
            assert!(to_anthropic(&body).is_err(), "{body}");
        }
    }

    #[test]
    fn openai_response_becomes_an_anthropic_message() {
        let body = json!({
            "id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.",
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "broken", "arguments": "{no"}}
                ]}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62,
                      "prompt_tokens_details": {"cached_tokens": 20}}
        });
        assert_eq!(
            response(Flavor::OpenAi, Flavor::Anthropic, &body),
            json!({
                "id": "msg_chatcmpl-7", "type": "message", "role": "assistant", "model": "gpt-4o",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "broken", "input": {}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 30, "output_tokens": 12,
                          "cache_read_input_tokens": 20, "cache_creation_input_tokens": 0}
            })
        );
        let reasons = [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("function_call", "tool_use"),
            ("content_filter", "refusal"),
            ("weird", "end_turn"),
        ];
        for (finish, stop) in reasons {
            let b = json!({"id": "msg_1", "choices": [{"finish_reason": finish, "message": {"content": ""}}]});
            let a = response(Flavor::OpenAi, Flavor::Anthropic, &b);
            assert_eq!(a["stop_reason"], stop);
            assert_eq!(a["id"], "msg_1");
            assert_eq!(a["content"], json!([]));
            assert_eq!(a["usage"]["input_tokens"], 0);
        }
    }

    #[test]
    fn anthropic_message_becomes_an_openai_completion() {
        let body = json!({
            "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5,
                      "cache_creation_input_tokens": 2, "output_tokens": 7}
        });
        let o = response(Flavor::Anthropic, Flavor::OpenAi, &body);
        assert!(o["created"].as_u64().unwrap() > 1_600_000_000);
        let mut o = o;
        o["created"] = json!(0);
        assert_eq!(
            o,
            json!({
                "id": "chatcmpl-msg_9", "object": "chat.completion", "created": 0, "model": "claude-x",
                "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "Let me check.",
                    "tool_calls": [{"id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
                "usage": {"prompt_tokens": 17, "completion_tokens": 7, "total_tokens": 24,
                          "prompt_tokens_details": {"cached_tokens": 5}}
            })
        );
        let reasons = [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
        ];
        for (stop, finish) in reasons {
            let b = json!({"id": "m", "content": [], "stop_reason": stop});
            let o = response(Flavor::Anthropic, Flavor::OpenAi, &b);
            assert_eq!(o["choices"][0]["finish_reason"], finish);
            assert!(o["choices"][0]["message"]["content"].is_null());
            assert!(o["choices"][0]["message"].get("tool_calls").is_none());
        }
        for junk in [json!(null), json!([1]), json!({"content": "x", "usage": 3})] {
            let _ = response(Flavor::Anthropic, Flavor::OpenAi, &junk);
            let _ = response(Flavor::OpenAi, Flavor::Anthropic, &junk);
        }
    }

    #[test]
    fn error_bodies_keep_the_message_in_the_clients_shape() {
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            error_body(Flavor::OpenAi, 529, anthropic),
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": null}})
        );
        assert_eq!(
            error_body(Flavor::Anthropic, 529, anthropic),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        let openai = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            error_body(Flavor::Anthropic, 429, openai),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
        );
        assert_eq!(
            error_body(Flavor::OpenAi, 429, openai)["error"]["type"],
            "requests"
        );
        let plain = error_body(Flavor::Anthropic, 400, br#"{"error":"bad thing"}"#);
        assert_eq!(plain["error"]["message"], "bad thing");
        assert_eq!(plain["error"]["type"], "invalid_request_error");
        for junk in [
            &b"<html>502 Bad Gateway</html>"[..],
            b"",
            b"{}",
            b"{\"error\":{\"message\":\"\"}}",
        ] {
            let a = error_body(Flavor::Anthropic, 502, junk);
            assert!(
                a["error"]["message"].as_str().unwrap().contains("502"),
                "{a}"
            );
            assert_eq!(a["error"]["type"], "api_error");
            let o = error_body(Flavor::OpenAi, 502, junk);
            assert!(
                o["error"]["message"].as_str().unwrap().contains("502"),
                "{o}"
            );
            assert_eq!(o["error"]["type"], "server_error");
        }
    }

    fn openai_stream() -> Vec<Vec<u8>> {
        let head = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"});
        let chunk = |delta: Value, finish: Value| {
            let mut c = head.clone();
            c["choices"] = json!([{"index": 0, "delta": delta, "finish_reason": finish}]);
            oa(c)
        };
        let call = |tc: Value| chunk(json!({"tool_calls": [tc]}), Value::Null);
        let mut usage = head.clone();
        usage["choices"] = json!([]);
        usage["usage"] = json!({"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
                                "prompt_tokens_details": {"cached_tokens": 5}});
        vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Let me "}), Value::Null),
            chunk(json!({}), Value::Null),
            chunk(json!({"content": "check."}), Value::Null),
            call(json!({"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}})),
            call(json!({"index": 0, "function": {"arguments": "{\"city\":"}})),
            call(json!({"index": 0, "function": {"arguments": "\"Paris\"}"}})),
            call(json!({"index": 1, "id": "call_2", "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"}})),
            chunk(json!({}), json!("tool_calls")),
            oa(usage),
            b"data: [DONE]\n\n".to_vec(),
        ]
    }

    fn expected_from_openai_stream() -> Value {
        json!({
            "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-x",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 15, "output_tokens": 9,
                      "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}
        })
    }

    #[test]
    fn openai_stream_becomes_anthropic_events() {
        let mut t = StreamTranslator::new(Flavor::OpenAi, Flavor::Anthropic, false);
        let out: Vec<Vec<u8>> = openai_stream().iter().flat_map(|e| t.push(e)).collect();
        assert!(t.finish().is_empty(), "[DONE] already ended the message");
        let (names, msg) = assemble_anthropic(&out);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(msg, expected_from_openai_stream());
        assert!(t.push(b"data: [DONE]\n\n").is_empty());
    }

    #[test]
    fn openai_stream_without_done_is_closed_by_finish_only_after_a_finish_reason() {
        let events = openai_stream();
        // The finish_reason arrived, then the connection closed before [DONE].
        let mut t = StreamTranslator::new(Flavor::OpenAi, Flavor::Anthropic, false);
        let mut out: Vec<Vec<u8>> = events[..events.len() - 1]
            .iter()
            .flat_map(|e| t.push(e))
            .collect();
        let tail = t.finish();
        let (names, _) = assemble_anthropic(&tail);
        assert_eq!(names, ["message_delta", "message_stop"]);
        out.extend(tail);
        assert_eq!(assemble_anthropic(&out).1, expected_from_openai_stream());
        assert!(t.finish().is_empty(), "never twice");

        // Broken mid-tool-call: no closing events, so the caller sees an unfinished stream.
        let mut t = StreamTranslator::new(Flavor::OpenAi, Flavor::Anthropic, false);
        let out: Vec<Vec<u8>> = events[..6].iter().flat_map(|e| t.push(e)).collect();
        assert!(t.finish().is_empty());
        let (names, msg) = assemble_anthropic(&out);
        assert!(!names
            .iter()
            .any(|n| n == "message_delta" || n == "message_stop"));
        assert_eq!(names.last().unwrap(), "content_block_delta");
        assert_eq!(msg["content"][0]["text"], "Let me check.");
    }

    fn anthropic_stream() -> Vec<Vec<u8>> {
        vec![
            an(json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 12, "cache_read_input_tokens": 4, "output_tokens": 1}}})),
            an(json!({"type": "ping"})),
            an(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            an(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            ),
            an(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
            ),
            an(json!({"type": "content_block_stop", "index": 0})),
            an(
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            ),
            an(
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            an(
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " there"}}),
            ),
            an(json!({"type": "content_block_stop", "index": 1})),
            an(
                json!({"type": "content_block_start", "index": 2, "content_block":
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
            ),
            an(
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            an(
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            ),
            an(
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            ),
            an(json!({"type": "content_block_stop", "index": 2})),
            an(
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                      "usage": {"output_tokens": 30}}),
            ),
            an(json!({"type": "message_stop"})),
        ]
    }

    /// The first chunks' kinds: role, content, tool start, tool args, finish, usage, done.
    fn chunk_kinds(out: &[Vec<u8>]) -> Vec<&'static str> {
        out.iter()
            .map(|raw| {
                let (_, data) = parse_event(raw);
                if data == "[DONE]" {
                    return "done";
                }
                let c: Value = serde_json::from_str(&data).unwrap();
                let d = &c["choices"][0]["delta"];
                if c.get("usage").is_some() {
                    "usage"
                } else if !c["choices"][0]["finish_reason"].is_null() {
                    "finish"
                } else if d.get("role").is_some() {
                    "role"
                } else if d.get("content").is_some() {
                    "content"
                } else if d["tool_calls"][0].get("id").is_some() {
                    "tool"
                } else if d.get("tool_calls").is_some() {
                    "args"
                } else {
                    "other"
                }
            })
            .collect()
    }

    #[test]
    fn anthropic_stream_becomes_openai_chunks() {
        for include_usage in [true, false] {
            let mut t = StreamTranslator::new(Flavor::Anthropic, Flavor::OpenAi, include_usage);
            let out: Vec<Vec<u8>> = anthropic_stream().iter().flat_map(|e| t.push(e)).collect();
            assert!(
                t.finish().is_empty(),
                "message_stop already ended the stream"
            );
            let mut want = vec![
                "role", "content", "content", "tool", "args", "args", "finish",
            ];
            if include_usage {
                want.push("usage");
            }
            want.push("done");
            assert_eq!(chunk_kinds(&out), want);
            let (body, done) = assemble_openai(&out);
            assert!(done);
            assert_eq!(body["id"], "chatcmpl-msg_1");
            assert_eq!(body["model"], "claude-x");
            let choice = &body["choices"][0];
            assert_eq!(choice["finish_reason"], "tool_calls");
            assert_eq!(choice["message"]["content"], "Hello there");
            assert_eq!(
                choice["message"]["tool_calls"],
                json!([{"id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
            );
            if include_usage {
                assert_eq!(
                    body["usage"],
                    json!({"prompt_tokens": 16, "completion_tokens": 30, "total_tokens": 46,
                           "prompt_tokens_details": {"cached_tokens": 4}})
                );
            } else {
                assert!(body.get("usage").is_none());
            }
        }
    }

    #[test]
    fn a_call_without_arguments_streams_as_an_empty_object_to_openai() {
        let mut t = StreamTranslator::new(Flavor::Anthropic, Flavor::OpenAi, false);
        let events = [
            an(
                json!({"type": "message_start", "message": {"id": "m", "model": "x", "content": [],
                "usage": {"input_tokens": 1, "output_tokens": 0}}}),
            ),
            an(
                json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": "t1", "name": "now", "input": {}}}),
            ),
            an(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": ""}})),
            an(json!({"type": "content_block_stop", "index": 0})),
            an(
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 3}}),
            ),
            an(json!({"type": "message_stop"})),
        ];
        let out: Vec<Vec<u8>> = events.iter().flat_map(|e| t.push(e)).collect();
        let (body, done) = assemble_openai(&out);
        assert!(done);
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
    }

    #[test]
    fn anthropic_stream_is_closed_by_finish_only_after_message_delta() {
        let events = anthropic_stream();
        let mut t = StreamTranslator::new(Flavor::Anthropic, Flavor::OpenAi, true);
        let out: Vec<Vec<u8>> = events[..events.len() - 1]
            .iter()
            .flat_map(|e| t.push(e))
            .collect();
        assert!(!assemble_openai(&out).1);
        assert_eq!(t.finish(), vec![DONE.to_vec()]);
        assert!(t.finish().is_empty(), "never twice");

        let mut t = StreamTranslator::new(Flavor::Anthropic, Flavor::OpenAi, true);
        let out: Vec<Vec<u8>> = events[..13].iter().flat_map(|e| t.push(e)).collect();
        assert!(t.finish().is_empty());
        let (body, done) = assemble_openai(&out);
        assert!(!done);
        assert!(body["choices"][0]["finish_reason"].is_null());
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":"
        );
    }

    #[test]
    fn in_stream_errors_translate_and_leave_the_stream_unfinished() {
        let mut t = StreamTranslator::new(Flavor::OpenAi, Flavor::Anthropic, false);
        let events = openai_stream();
        let mut out: Vec<Vec<u8>> = events[..2].iter().flat_map(|e| t.push(e)).collect();
        out.extend(t.push(&oa(
            json!({"error": {"message": "boom", "type": "server_error"}}),
        )));
        let (names, _) = assemble_anthropic(&out);
        assert_eq!(names[names.len() - 2..], ["content_block_stop", "error"]);
        assert_eq!(is_error_event(out.last().unwrap()).as_deref(), Some("boom"));
        assert!(t.push(&events[8]).is_empty());
        assert!(t.finish().is_empty());

        let mut t = StreamTranslator::new(Flavor::Anthropic, Flavor::OpenAi, false);
        let events = anthropic_stream();
        let _ = t.push(&events[0]);
        let out = t.push(&an(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
        assert_eq!(out.len(), 1);
        assert_eq!(is_error_event(&out[0]).as_deref(), Some("Overloaded"));
        assert!(t.push(&events[15]).is_empty());
        assert!(t.finish().is_empty());
    }

    #[test]
    fn streams_survive_garbage_events() {
        let junk: [&[u8]; 9] = [
            b"",
            b": comment\n\n",
            b"data: not json\n\n",
            b"data: 42\n\n",
            b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":\"x\"},7]},\"finish_reason\":5}]}\n\n",
            b"event: content_block_delta\ndata: {\"index\":-1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"x\"}}\n\n",
            b"event: content_block_start\ndata: {\"index\":\"a\",\"content_block\":7}\n\n",
            b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":18446744073709551615,\"input_tokens\":18446744073709551615}}\n\n",
            b"\xff\xfe\n\n",
        ];
        for (from, to) in [
            (Flavor::OpenAi, Flavor::Anthropic),
            (Flavor::Anthropic, Flavor::OpenAi),
        ] {
            let mut t = StreamTranslator::new(from, to, true);
            for raw in junk {
                let out = t.push(raw);
                assert_whole_events(&out);
            }
            let _ = t.finish();
        }
        // Passthrough changes nothing.
        let mut t = StreamTranslator::new(Flavor::OpenAi, Flavor::OpenAi, true);
        assert_eq!(t.push(b"data: x\n\n"), vec![b"data: x\n\n".to_vec()]);
        assert!(t.finish().is_empty());
    }

    #[test]
    fn anthropic_whole_to_stream_reassembles_to_the_body() {
        let body = json!({
            "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking the weather."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "n": [1, 2]}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 7}
        });
        let out = whole_to_stream(Flavor::Anthropic, &body, false, None);
        let (names, msg) = assemble_anthropic(&out);
        assert_eq!(names.first().unwrap(), "message_start");
        assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
        assert_eq!(msg, body);

        let extra = json!({"served_by": "local"});
        let out = whole_to_stream(Flavor::Anthropic, &body, false, Some(&extra));
        let (_, data) = parse_event(&out[out.len() - 2]);
        let delta: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(delta["backstop"], extra);
        assert_eq!(delta["usage"]["output_tokens"], 7);
        let mut want = body.clone();
        want["backstop"] = extra;
        assert_eq!(assemble_anthropic(&out).1, want);
    }

    #[test]
    fn openai_whole_to_stream_reassembles_to_the_body() {
        let body = json!({
            "id": "chatcmpl-3", "object": "chat.completion", "created": 123, "model": "gpt-x",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}},
                    {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}}
                ]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
        });
        let extra = json!({"continued_after_chars": 3});
        for include_usage in [true, false] {
            let out = whole_to_stream(Flavor::OpenAi, &body, include_usage, Some(&extra));
            let mut want = vec!["role", "content", "tool", "tool", "finish"];
            if include_usage {
                want.push("usage");
            }
            want.push("done");
            assert_eq!(chunk_kinds(&out), want);
            let (_, data) = parse_event(&out[out.len() - 2]);
            let last: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(
                last["backstop"], extra,
                "extra rides on the last chunk before [DONE]"
            );
            let (got, done) = assemble_openai(&out);
            assert!(done);
            let mut want = body.clone();
            want["backstop"] = extra.clone();
            if !include_usage {
                want.as_object_mut().unwrap().remove("usage");
            }
            assert_eq!(got, want);
        }
        let plain = json!({"id": "x", "created": 1, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]});
        let out = whole_to_stream(Flavor::OpenAi, &plain, false, None);
        assert_eq!(chunk_kinds(&out), ["role", "content", "finish", "done"]);
        assert!(out
            .iter()
            .all(|e| !String::from_utf8_lossy(e).contains("backstop")));
    }

    #[test]
    fn translated_whole_responses_stream_like_translated_streams() {
        // The same answer reached by either path looks the same to the client.
        let whole = response(
            Flavor::OpenAi,
            Flavor::Anthropic,
            &json!({
                "id": "chatcmpl-1", "model": "gpt-x",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "Let me check.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                    ]}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 5}}
            }),
        );
        assert_eq!(whole, expected_from_openai_stream());
        let (_, streamed) =
            assemble_anthropic(&whole_to_stream(Flavor::Anthropic, &whole, false, None));
        assert_eq!(streamed, whole);
    }
}
