//! Chat prompts: the GGUF's `tokenizer.chat_template` rendered with `minijinja`, or a built-in
//! template for families whose files carry none (Gemma 3's test file), chosen by architecture.
//!
//! The environment matches what HF transformers and llama.cpp give templates: `trim_blocks`
//! and `lstrip_blocks` on, Python string/dict methods (`.strip()`, `.startswith()`,
//! `.split()`, `.items()` via minijinja-contrib's pycompat), `raise_exception`, `strftime_now`,
//! and a `tojson` that writes JSON as Python's `json.dumps` does (", " and ": " separators,
//! no HTML escaping), keys in insertion order as Python keeps them (minijinja's
//! `preserve_order`), so tool schemas dumped by a template read as the client wrote them.
//! A template that fails to compile or raises is an error naming where the template came
//! from; there is never a silent fallback.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;
use thiserror::Error;

use crate::gguf::{keys, GgufError, GgufHeader};
use crate::tokenizer::Tokenizer;
pub use crate::tools::{ToolCall, ToolSpec};

/// One message of a conversation, with the fields tool-aware templates read (HF
/// transformers' conventions): an assistant's `tool_calls`, and a `tool` message's
/// `tool_call_id` and `name`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant" or "tool".
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool's name, on a `tool` message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// A tool's result, answering the call `call_id`.
    pub fn tool_result(
        call_id: impl Into<String>,
        name: Option<String>,
        content: impl Into<String>,
    ) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            name,
            ..Self::new("tool", content)
        }
    }
}

/// Where the template came from, to report which one formatted a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// The file's `tokenizer.chat_template`.
    File,
    /// A template of ours, chosen by architecture because the file has none.
    BuiltIn(&'static str),
    /// Supplied by the caller (e.g. a `--chat-template` option).
    Custom,
}

impl fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File => f.write_str("the file's tokenizer.chat_template"),
            Self::BuiltIn(name) => write!(f, "built-in {name} template"),
            Self::Custom => f.write_str("custom template"),
        }
    }
}

#[derive(Debug, Error)]
pub enum ChatError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{template} does not compile: {detail}")]
    Syntax {
        template: TemplateSource,
        detail: String,
    },
    #[error("{template} failed to render: {detail}")]
    Render {
        template: TemplateSource,
        detail: String,
    },
}

/// Gemma's turn format (Google's Gemma 3 template): roles `user`/`model`, a system prompt
/// folded into the first user turn, turns closed by `<end_of_turn>`.
const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"#;

/// ChatML, llama.cpp's own fallback for files without a template.
const CHATML_TEMPLATE: &str = r#"{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"#;

/// The built-in template for an architecture whose file has no template: Gemma's turn format
/// for the Gemma family, ChatML otherwise (as llama.cpp falls back to ChatML).
pub fn builtin_template(arch: &str) -> (&'static str, &'static str) {
    match arch {
        "gemma" | "gemma2" | "gemma3" | "gemma3n" => ("gemma", GEMMA_TEMPLATE),
        _ => ("chatml", CHATML_TEMPLATE),
    }
}

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template with the model's BOS/EOS texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: TemplateSource,
    /// The template reads `tools` and `tool_calls` itself.
    tools_aware: bool,
    /// How the model writes calls (for templates that handle tools; else the generic one).
    call_format: crate::tools::CallFormat,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The model's BOS and EOS texts, as templates read them.
    fn bos_eos(tokenizer: &Tokenizer) -> (String, String) {
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or("")
                .to_owned()
        };
        (text(tokenizer.bos_id()), text(tokenizer.eos_id()))
    }

    /// A template the caller supplies in place of the file's.
    pub fn custom(template: String, tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let (bos, eos) = Self::bos_eos(tokenizer);
        Self::new(template, TemplateSource::Custom, bos, eos)
    }

    /// The file's template, or the built-in one for its architecture when it has none.
    pub fn from_gguf(header: &GgufHeader, tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let (bos, eos) = Self::bos_eos(tokenizer);
        if header.get(keys::TOKENIZER_CHAT_TEMPLATE).is_some() {
            let src = header.get_str(keys::TOKENIZER_CHAT_TEMPLATE)?;
            return Self::new(src.to_owned(), TemplateSource::File, bos, eos);
        }
        let arch = match header.get(keys::GENERAL_ARCHITECTURE) {
            Some(_) => header.get_str(keys::GENERAL_ARCHITECTURE)?,
            None => "",
        };
        let (name, src) = builtin_template(arch);
        Self::new(src.to_owned(), TemplateSource::BuiltIn(name), bos, eos)
    }

    /// Compile `template`; a syntax error is reported now, not at the first request.
    pub fn new(
        template: String,
        source: TemplateSource,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, ChatError> {
        let tools_aware = template.contains("tools") && template.contains("tool_calls");
        let call_format = if tools_aware {
            crate::tools::CallFormat::detect(&template)
        } else {
            crate::tools::CallFormat::Hermes
        };
        let mut env = Environment::new();
        // HF transformers and llama.cpp both render with these on; templates are written
        // for them (a `{% if %}` line would otherwise leave its newline in the prompt).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, template)
            .map_err(|e| ChatError::Syntax {
                template: source.clone(),
                detail: format!("{e:#}"),
            })?;
        Ok(Self {
            env,
            source,
            tools_aware,
            call_format,
            bos_token,
            eos_token,
        })
    }

    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// Whether the template itself renders a `tools` list and assistants' `tool_calls`
    /// (Qwen, Hermes, Llama 3.x, Mistral templates do; SmolLM2's and Gemma 3's do not). For
    /// the others, `render_with_tools` describes the tools and lowers the tool turns itself.
    pub fn handles_tools(&self) -> bool {
        self.tools_aware
    }

    /// How the model writes tool calls: its family's format when the template handles tools,
    /// the generic `<tool_call>` format (the one `render_with_tools` describes) otherwise.
    pub fn call_format(&self) -> crate::tools::CallFormat {
        self.call_format
    }

    /// Render the conversation exactly as the template says (BOS text included if the
    /// template writes `bos_token`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Render with a list of tools the model may call. A template that handles tools gets
    /// them as its `tools` variable and the tool turns as they are; for one that does not,
    /// the tools are described in the system prompt in the generic call format
    /// (`crate::tools`) and the tool turns are written as text in that format, so nothing in
    /// the history is dropped.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let has_tool_turns = messages
            .iter()
            .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        if !self.tools_aware && (has_tool_turns || !tools.is_empty()) {
            let lowered = crate::tools::lower_for_plain_template(messages, tools);
            return self.render_raw(&lowered, None, add_generation_prompt);
        }
        let tools = (!tools.is_empty()).then(|| crate::tools::template_tools(tools));
        self.render_raw(messages, tools, add_generation_prompt)
    }

    fn render_raw(
        &self,
        messages: &[ChatMessage],
        tools: Option<serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let render_err = |e: minijinja::Error| ChatError::Render {
            template: self.source.clone(),
            detail: format!("{e:#}"),
        };
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(render_err)?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => tools.map_or(Value::from(()), |t| Value::from_serialize(&t)),
        };
        tmpl.render(ctx).map_err(render_err)
    }

    /// The prompt to tokenize: the rendering without a leading BOS text when the tokenizer
    /// adds BOS itself, so the model does not see two (llama.cpp's chat code does the same).
    pub fn render_prompt(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
        tokenizer_adds_bos: bool,
    ) -> Result<String, ChatError> {
        let text = self.render_with_tools(messages, tools, add_generation_prompt)?;
        if tokenizer_adds_bos && !self.bos_token.is_empty() {
            if let Some(rest) = text.strip_prefix(self.bos_token.as_str()) {
                return Ok(rest.to_owned());
            }
        }
        Ok(text)
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time, for templates that print today's date.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A small strftime over UTC seconds: the directives chat templates use (%Y %y %m %d %e %H
/// %I %M %S %p %b %B %a %A %j %%, and glibc's `%-d`-style no-padding flag).
fn strftime(secs: i64, format: &str) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let pad = if spec == Some('-') {
            spec = chars.next();
            false
        } else {
            true
        };
        let num = |v: i64, width: usize| {
            if pad {
                format!("{v:0width$}")
            } else {
                v.to_string()
            }
        };
        match spec {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year % 100, 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num(hour12, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `tojson` as HF transformers defines it: `json.dumps(value, ensure_ascii=False,
/// indent=indent, separators=separators, sort_keys=sort_keys)`.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = match indent {
        Some(v) if !v.is_none() => Some(usize::try_from(v)?),
        _ => kwargs.get::<Option<usize>>("indent")?,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // Python's defaults: (", ", ": ") without indent, (",", ": ") with it.
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(seps) => {
            let item: String = seps.get_item(&Value::from(0))?.to_string();
            let key: String = seps.get_item(&Value::from(1))?.to_string();
            (item, key)
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let _ = kwargs.get::<Option<bool>>("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(value, &style, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(
    value: &Value,
    style: &JsonStyle,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let json_err =
        |e: serde_json::Error| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string());
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&serde_json::to_string(value).map_err(json_err)?),
        ValueKind::String => {
            out.push_str(&serde_json::to_string(value.as_str().unwrap_or("")).map_err(json_err)?)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json(item, style, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                let key_text = match key.as_str() {
                    Some(s) => s.to_owned(),
                    None => key.to_string(),
                };
                out.push_str(&serde_json::to_string(&key_text).map_err(json_err)?);
                out.push_str(&style.key_sep);
                write_json(&value.get_item(key)?, style, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&value.to_string()).map_err(json_err)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_a_known_instant() {
        // 2024-02-29 13:05:09 UTC, a Thursday in a leap year.
        let t = 1_709_211_909;
        assert_eq!(strftime(t, "%Y-%m-%d %H:%M:%S"), "2024-02-29 13:05:09");
        assert_eq!(strftime(t, "%d %b %Y"), "29 Feb 2024");
        assert_eq!(
            strftime(t, "%A %B %-d, %I%p, day %j"),
            "Thursday February 29, 01PM, day 060"
        );
    }
}
