//! Tools for chat models: the tool list and the calls in the shape chat templates read
//! (HF transformers' conventions: `tools` as `[{type: function, function: {name, description,
//! parameters}}]`, an assistant's `tool_calls` with object `arguments`), and the generic call
//! format for templates that know nothing of tools (SmolLM2's, Gemma 3's): the tools are
//! described in the system prompt and a call is a JSON object between `<tool_call>` tags, as
//! Hermes-style models write it, so a model that has seen that format recognises it.

use serde::Serialize;
use serde_json::{json, Value};

use crate::chat::ChatMessage;

/// A tool the model may call: its name, what it does, and a JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub parameters: Value,
}

/// One call the model made, as templates read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON value (an object when the call was well-formed).
    pub arguments: Value,
}

impl ToolCall {
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: Value) -> Self {
        Self {
            id: id.into(),
            kind: "function",
            function: FunctionCall {
                name: name.into(),
                arguments,
            },
        }
    }
}

/// The opening and closing tags of a call in the generic format.
pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";

/// `tools` as templates read it.
pub fn template_tools(tools: &[ToolSpec]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| json!({"type": "function", "function": t}))
            .collect(),
    )
}

/// The system-prompt text that describes the tools and the generic call format.
pub fn preamble(tools: &[ToolSpec]) -> String {
    let mut s = String::from("You can call these tools:\n");
    for t in tools {
        s.push_str(&serde_json::to_string(t).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(
        "\nTo call a tool, write the call as a JSON object between tags, on lines of its own:\n\
         <tool_call>\n{\"name\": \"TOOL_NAME\", \"arguments\": {ARGUMENTS}}\n</tool_call>\n\
         Each result comes back between <tool_response> tags. When no tool is needed, answer \
         in plain text.",
    );
    s
}

/// One call written in the generic format.
pub fn format_call(name: &str, arguments: &Value) -> String {
    let body = json!({"name": name, "arguments": arguments});
    format!("{CALL_OPEN}\n{body}\n{CALL_CLOSE}")
}

/// The conversation for a template without tool support: the tools described in the system
/// prompt, calls and results written as text in the generic format, results in user turns
/// (as Hermes templates put them), and consecutive turns of one role merged so that
/// templates which insist on alternating roles accept the history.
pub fn lower_for_plain_template(messages: &[ChatMessage], tools: &[ToolSpec]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        out.push(ChatMessage::new("system", preamble(tools)));
    }
    for m in messages {
        let lowered = match m.role.as_str() {
            "tool" => {
                let who = m
                    .name
                    .as_deref()
                    .map(|n| format!(" name=\"{n}\""))
                    .unwrap_or_default();
                ChatMessage::new(
                    "user",
                    format!("<tool_response{who}>\n{}\n</tool_response>", m.content),
                )
            }
            "assistant" if !m.tool_calls.is_empty() => {
                let mut parts: Vec<String> = Vec::new();
                if !m.content.is_empty() {
                    parts.push(m.content.clone());
                }
                for c in &m.tool_calls {
                    parts.push(format_call(&c.function.name, &c.function.arguments));
                }
                ChatMessage::new("assistant", parts.join("\n"))
            }
            _ => ChatMessage::new(m.role.as_str(), m.content.as_str()),
        };
        let only_preamble = out.len() == 1 && !tools.is_empty();
        match out.last_mut() {
            Some(prev) if prev.role == lowered.role => {
                // The preamble goes after the caller's own system prompt.
                if prev.role == "system" && only_preamble {
                    let preamble = std::mem::take(&mut prev.content);
                    prev.content = format!("{}\n\n{preamble}", lowered.content);
                } else {
                    prev.content.push_str("\n\n");
                    prev.content.push_str(&lowered.content);
                }
            }
            _ => out.push(lowered),
        }
    }
    out
}

/// The most calls one forced answer may hold.
pub const MAX_CALLS: usize = 8;

/// A Lark grammar (for `grammar::Constraint::Lark`) whose sentences are 1 to `max_calls`
/// calls in the generic format, each naming one of `tools` (or only `only`) with arguments
/// valid against that tool's schema. The name is fixed text, so the model writes it without
/// a chance to misspell it; the arguments are compact JSON, so it cannot pad them.
pub fn call_grammar(tools: &[ToolSpec], only: Option<&str>, max_calls: usize) -> String {
    let lit = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut rules = String::new();
    let mut alts = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if only.is_some_and(|n| n != t.name) {
            continue;
        }
        let head = format!("{{\"name\": {}, \"arguments\": ", lit(&t.name));
        let schema = crate::grammar::schema_with_layout(t.parameters.clone());
        rules.push_str(&format!(
            "call_{i}: {} args_{i} \"}}\"\nargs_{i}: %json {schema}\n",
            lit(&head)
        ));
        alts.push(format!("call_{i}"));
    }
    let block = format!(
        "block: {} ({}) {}\n",
        lit(&format!("{CALL_OPEN}\n")),
        alts.join(" | "),
        lit(&format!("\n{CALL_CLOSE}"))
    );
    let starts: Vec<String> = (1..=max_calls.max(1))
        .map(|n| vec!["block"; n].join(" \"\\n\" "))
        .collect();
    format!("start: {}\n{block}{rules}", starts.join(" | "))
}

/// A call found in generated text: the tool's name and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: Value,
}

/// Split text in the generic format into the prose before the first call and the calls.
/// Only whole, well-formed calls naming a tool count; `None` when there is none, so prose
/// that merely contains `{` or a stray tag is never taken for a call.
pub fn parse_calls(text: &str, tools: &[ToolSpec]) -> Option<(String, Vec<ParsedCall>)> {
    let start = text.find(CALL_OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(open) = rest.find(CALL_OPEN) {
        let after = &rest[open + CALL_OPEN.len()..];
        let Some(close) = after.find(CALL_CLOSE) else {
            break;
        };
        let body = after[..close].trim();
        let v: Value = serde_json::from_str(body).ok()?;
        let name = v.get("name")?.as_str()?;
        if !tools.iter().any(|t| t.name == name) {
            return None;
        }
        let arguments = v.get("arguments").cloned().unwrap_or_else(|| json!({}));
        if !arguments.is_object() {
            return None;
        }
        calls.push(ParsedCall {
            name: name.to_owned(),
            arguments,
        });
        rest = &after[close + CALL_CLOSE.len()..];
    }
    if calls.is_empty() {
        return None;
    }
    Some((text[..start].trim_end().to_owned(), calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "read_file".into(),
            description: Some("Read a file".into()),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        }]
    }

    #[test]
    fn lowering_keeps_every_turn_and_alternates_roles() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls
            .push(ToolCall::new("c1", "read_file", json!({"path": "a.txt"})));
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Show a.txt"),
            call,
            ChatMessage::tool_result("c1", Some("read_file".into()), "hello"),
            ChatMessage::tool_result("c2", None, "second"),
        ];
        let out = lower_for_plain_template(&msgs, &tools());
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0]
            .content
            .starts_with("Be brief.\n\nYou can call these tools:"));
        assert!(out[0].content.contains("\"name\":\"read_file\""));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"read_file\",\"arguments\":{\"path\":\"a.txt\"}}\n</tool_call>"
        );
        assert!(out[3]
            .content
            .contains("<tool_response name=\"read_file\">\nhello\n"));
        assert!(out[3].content.contains("second"));
    }

    #[test]
    fn the_call_grammar_names_each_tool_once_per_alternative() {
        let mut t = tools();
        t.push(ToolSpec {
            name: "shell".into(),
            description: None,
            parameters: json!({"type": "object"}),
        });
        let g = call_grammar(&t, None, 2);
        assert!(g.starts_with("start: block | block \"\\n\" block\n"), "{g}");
        assert!(
            g.contains("block: \"<tool_call>\\n\" (call_0 | call_1) \"\\n</tool_call>\""),
            "{g}"
        );
        assert!(
            g.contains(
                "call_0: \"{\\\"name\\\": \\\"read_file\\\", \\\"arguments\\\": \" args_0 \"}\""
            ),
            "{g}"
        );
        assert!(g.contains("args_1: %json {"), "{g}");
        let one = call_grammar(&t, Some("shell"), 1);
        assert!(one.contains("(call_1)") && !one.contains("call_0"), "{one}");
    }

    #[test]
    fn calls_parse_only_when_whole_and_known() {
        let t = tools();
        let text = "Sure.\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"x\"}}\n</tool_call>";
        let (prose, calls) = parse_calls(text, &t).unwrap();
        assert_eq!(prose, "Sure.");
        assert_eq!(calls[0].name, "read_file");
        assert_eq!(calls[0].arguments, json!({"path": "x"}));
        assert!(parse_calls("a {\"name\": \"read_file\"} b", &t).is_none());
        assert!(parse_calls(
            "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>",
            &t
        )
        .is_none());
        assert!(parse_calls("<tool_call>{\"name\": \"read_file\"", &t).is_none());
    }
}
