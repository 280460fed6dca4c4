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

/// How a format lays out a list of calls: around the list, around each call, between two
/// calls, and the key that holds a call's arguments.
struct Layout {
    list_open: &'static str,
    list_close: &'static str,
    call_open: &'static str,
    call_close: &'static str,
    sep: &'static str,
    args_key: &'static str,
}

impl CallFormat {
    fn layout(self) -> Layout {
        match self {
            CallFormat::Hermes => Layout {
                list_open: "",
                list_close: "",
                call_open: "<tool_call>\n",
                call_close: "\n</tool_call>",
                sep: "\n",
                args_key: "arguments",
            },
            CallFormat::Llama3 => Layout {
                list_open: "",
                list_close: "",
                call_open: "",
                call_close: "",
                sep: "; ",
                args_key: "parameters",
            },
            CallFormat::Mistral => Layout {
                list_open: "[",
                list_close: "]",
                call_open: "",
                call_close: "",
                sep: ", ",
                args_key: "arguments",
            },
        }
    }
}

fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The Lark rules of a forced answer: `calls` is 1 to `max_calls` calls in `format`, each
/// naming one of `tools` (or only `only`) with arguments valid against that tool's schema.
/// The name is fixed text, so the model writes it without a chance to misspell it; the
/// arguments are compact JSON, so it cannot pad them.
fn call_rules(
    format: CallFormat,
    tools: &[ToolSpec],
    only: Option<&str>,
    max_calls: usize,
) -> String {
    let l = format.layout();
    let mut rules = String::new();
    let mut alts = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if only.is_some_and(|n| n != t.name) {
            continue;
        }
        let head = format!("{{\"name\": {}, \"{}\": ", lit(&t.name), l.args_key);
        let schema = crate::grammar::schema_with_layout(t.parameters.clone());
        rules.push_str(&format!(
            "call_{i}: {} args_{i} \"}}\"\nargs_{i}: %json {schema}\n",
            lit(&head)
        ));
        alts.push(format!("call_{i}"));
    }
    let wrap = |s: &str| if s.is_empty() { String::new() } else { lit(s) };
    let block = format!(
        "block: {} ({}) {}\n",
        wrap(l.call_open),
        alts.join(" | "),
        wrap(l.call_close)
    );
    let lists: Vec<String> = (1..=max_calls.max(1))
        .map(|n| vec!["block"; n].join(&format!(" {} ", lit(l.sep))))
        .collect();
    format!(
        "calls: {} ({}) {}\n{block}{rules}",
        wrap(l.list_open),
        lists.join(" | "),
        wrap(l.list_close)
    )
}

/// A Lark grammar (for `grammar::Constraint::Lark`) whose sentences are 1 to `max_calls`
/// calls written in `format` (see `call_rules`). `trigger` is the control token the family
/// writes before its calls (Mistral's `[TOOL_CALLS]`), when the vocabulary has it: forced
/// first, so the model sees its calls begin as it was trained to.
pub fn call_grammar(
    format: CallFormat,
    tools: &[ToolSpec],
    only: Option<&str>,
    max_calls: usize,
    trigger: Option<u32>,
) -> String {
    let lead = trigger.map(|id| format!("<[{id}]> ")).unwrap_or_default();
    format!(
        "start: {lead}calls\n{}",
        call_rules(format, tools, only, max_calls)
    )
}

/// A Lark grammar for `tool_choice: auto`: the model is free to answer in prose, and once it
/// starts a call the call is forced to be well-formed, with nothing but further calls after
/// it. `None` when `format` has no way to tell the start of a call here (Mistral without its
/// `[TOOL_CALLS]` token in the vocabulary): then the answer runs free and is parsed after.
/// - Hermes/generic: free text up to the `<tool_call>` tag (a lazy lexeme: the shortest text
///   that ends with the tag), then calls; prose never holds the tag.
/// - Llama 3.x: the calls are the whole answer, so an answer starting with `{` is calls and
///   any other is prose.
/// - Mistral: prose, or the `[TOOL_CALLS]` token then the calls.
pub fn auto_grammar(
    format: CallFormat,
    tools: &[ToolSpec],
    max_calls: usize,
    trigger: Option<u32>,
) -> Option<String> {
    let rules = call_rules(format, tools, None, max_calls);
    let any = "/(.|\\n)*/";
    match format {
        CallFormat::Hermes => {
            // The first call's tag ends `head`; later calls keep theirs.
            let tag = lit(CALL_OPEN);
            let first = rules
                .lines()
                .find(|l| l.starts_with("block:"))
                .map(|l| {
                    l.replacen("block:", "first:", 1).replacen(
                        &lit(&format!("{CALL_OPEN}\n")),
                        "\"\\n\"",
                        1,
                    )
                })
                .unwrap_or_default();
            let starts: Vec<String> = (1..=max_calls.max(1))
                .map(|n| {
                    let mut parts = vec!["head first".to_owned()];
                    parts.extend(std::iter::repeat_n("block".to_owned(), n - 1));
                    parts.join(" \"\\n\" ")
                })
                .collect();
            Some(format!(
                "start: PROSE | {}\nhead[lazy]: ANY {tag}\nANY: {any}\n\
                 PROSE: {any} & ~/(.|\\n)*{}(.|\\n)*/\n{first}\n{rules}",
                starts.join(" | "),
                regex_escape(CALL_OPEN)
            ))
        }
        CallFormat::Llama3 => Some(format!(
            "start: PROSE | calls\nPROSE: /\\s*([^{{\\s](.|\\n)*)?/\n{rules}"
        )),
        CallFormat::Mistral => {
            let id = trigger?;
            Some(format!(
                "start: PROSE | <[{id}]> calls\nPROSE: {any}\n{rules}"
            ))
        }
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// How a model family writes its tool calls, detected from its chat template. Control tokens
/// (`<|python_tag|>`, `[TOOL_CALLS]`) do not reach the text, so the JSON after them is what
/// is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`: Hermes, Qwen 2.5/3, and
    /// the generic format of templates without tool support.
    Hermes,
    /// Llama 3.1+: the answer is `{"name": ..., "parameters": {...}}` (after
    /// `<|python_tag|>`), several separated by `;`.
    Llama3,
    /// Mistral: after `[TOOL_CALLS]`, a JSON array of `{"name": ..., "arguments": {...}}`.
    Mistral,
}

impl CallFormat {
    /// The family a tool-aware template writes calls in.
    pub fn detect(template: &str) -> Self {
        if template.contains("[TOOL_CALLS]") {
            CallFormat::Mistral
        } else if template.contains("<|python_tag|>") || template.contains("ipython") {
            CallFormat::Llama3
        } else {
            CallFormat::Hermes
        }
    }

    /// For formats whose calls are the whole answer: the character a call answer starts
    /// with (after whitespace). Hermes calls start at a tag anywhere (`CALL_OPEN`).
    pub fn leading(self) -> Option<char> {
        match self {
            CallFormat::Hermes => None,
            CallFormat::Llama3 => Some('{'),
            CallFormat::Mistral => Some('['),
        }
    }

    /// The prose before the calls, and the calls, when `text` holds whole, well-formed calls
    /// naming `tools`; `None` otherwise (then the text is an ordinary answer).
    pub fn parse(self, text: &str, tools: &[ToolSpec]) -> Option<(String, Vec<ParsedCall>)> {
        match self {
            CallFormat::Hermes => parse_calls(text, tools),
            CallFormat::Llama3 => {
                let body = text.trim().trim_start_matches("<|python_tag|>");
                let mut calls = Vec::new();
                for v in json_sequence(body, ';')? {
                    let args = v.get("parameters").or_else(|| v.get("arguments"));
                    calls.push(known_call(v.get("name"), args, tools)?);
                }
                (!calls.is_empty()).then(|| (String::new(), calls))
            }
            CallFormat::Mistral => {
                let body = text.trim().trim_start_matches("[TOOL_CALLS]");
                let list: Value = serde_json::from_str(body).ok()?;
                let mut calls = Vec::new();
                for v in list.as_array()? {
                    calls.push(known_call(v.get("name"), v.get("arguments"), tools)?);
                }
                (!calls.is_empty()).then(|| (String::new(), calls))
            }
        }
    }
}

impl CallFormat {
    /// The answer so far, in this format, of a model that made the calls `done` (name and
    /// argument JSON) and is writing a call of `open` whose argument JSON begins `partial`:
    /// what a model is shown to finish a call someone else began.
    pub fn partial_answer(self, done: &[(&str, &str)], open: &str, partial: &str) -> String {
        let l = self.layout();
        let call = |name: &str, args: &str| {
            format!(
                "{}{{\"name\": {}, \"{}\": {args}",
                l.call_open,
                lit(name),
                l.args_key
            )
        };
        let mut out = String::from(l.list_open);
        for (name, args) in done {
            out.push_str(&call(name, args));
            out.push('}');
            out.push_str(l.call_close);
            out.push_str(l.sep);
        }
        out.push_str(&call(open, partial));
        out
    }
}

/// JSON values one after another, separated by whitespace and `sep`; `None` unless the whole
/// text is such a sequence.
fn json_sequence(text: &str, sep: char) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next()?.ok()?;
        rest = rest[it.byte_offset()..].trim_start();
        rest = rest.strip_prefix(sep).unwrap_or(rest).trim_start();
        out.push(v);
    }
    Some(out)
}

/// A call naming one of `tools`, its arguments an object (or a string holding one, as some
/// models write them).
fn known_call(
    name: Option<&Value>,
    args: Option<&Value>,
    tools: &[ToolSpec],
) -> Option<ParsedCall> {
    let name = name?.as_str()?;
    if !tools.iter().any(|t| t.name == name) {
        return None;
    }
    let arguments = match args {
        None => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(v) => v.clone(),
    };
    arguments.is_object().then(|| ParsedCall {
        name: name.to_owned(),
        arguments,
    })
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
        let g = call_grammar(CallFormat::Hermes, &t, None, 2, None);
        assert!(
            g.starts_with("start: calls\ncalls:  (block | block \"\\n\" block) \n"),
            "{g}"
        );
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
        let one = call_grammar(CallFormat::Hermes, &t, Some("shell"), 1, None);
        assert!(one.contains("(call_1)") && !one.contains("call_0"), "{one}");
        // Llama 3.x: bare objects with "parameters", separated by "; ".
        let llama = call_grammar(CallFormat::Llama3, &t, None, 2, None);
        assert!(llama.contains("(block | block \"; \" block)"), "{llama}");
        assert!(llama.contains("\\\"parameters\\\": "), "{llama}");
        // Mistral: a JSON array after the [TOOL_CALLS] control token.
        let mistral = call_grammar(CallFormat::Mistral, &t, None, 2, Some(5));
        assert!(
            mistral
                .starts_with("start: <[5]> calls\ncalls: \"[\" (block | block \", \" block) \"]\""),
            "{mistral}"
        );
        assert!(auto_grammar(CallFormat::Mistral, &t, 2, None).is_none());
    }

    #[test]
    fn a_partial_answer_is_the_format_up_to_the_open_arguments() {
        let done = [("read_file", "{\"path\": \"a\"}")];
        assert_eq!(
            CallFormat::Hermes.partial_answer(&done, "shell", "{\"cmd"),
            "<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"shell\", \"arguments\": {\"cmd"
        );
        assert_eq!(
            CallFormat::Llama3.partial_answer(&[], "shell", "{"),
            "{\"name\": \"shell\", \"parameters\": {"
        );
        assert_eq!(
            CallFormat::Mistral.partial_answer(&done, "shell", ""),
            "[{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}, {\"name\": \"shell\", \"arguments\": "
        );
    }

    #[test]
    fn golden_transcripts_of_each_family_parse_into_calls() {
        let t = tools();
        let want = ParsedCall {
            name: "read_file".into(),
            arguments: json!({"path": "a.txt"}),
        };
        // Qwen 2.5 / Hermes 2 Pro.
        let qwen = "<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.txt\"}}\n</tool_call>";
        assert_eq!(
            CallFormat::Hermes.parse(qwen, &t).unwrap().1,
            vec![want.clone()]
        );
        // Llama 3.1 (the <|python_tag|> control token does not reach the text), two calls.
        let llama = "{\"name\": \"read_file\", \"parameters\": {\"path\": \"a.txt\"}}; {\"name\": \"read_file\", \"parameters\": {\"path\": \"a.txt\"}}";
        assert_eq!(
            CallFormat::Llama3.parse(llama, &t).unwrap().1,
            vec![want.clone(), want.clone()]
        );
        // Mistral v0.3, arguments as an object or as a JSON string.
        let mistral = "[{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.txt\"}}, {\"name\": \"read_file\", \"arguments\": \"{\\\"path\\\": \\\"a.txt\\\"}\"}]";
        assert_eq!(
            CallFormat::Mistral.parse(mistral, &t).unwrap().1,
            vec![want.clone(), want]
        );
        // Ordinary answers are not calls.
        for f in [CallFormat::Hermes, CallFormat::Llama3, CallFormat::Mistral] {
            assert!(f.parse("The answer is {x} [y].", &t).is_none(), "{f:?}");
            assert!(
                f.parse("{\"name\": \"Paris\", \"population\": 2}", &t)
                    .is_none(),
                "{f:?}"
            );
            assert!(f.parse("[1, 2, 3]", &t).is_none(), "{f:?}");
        }
        assert_eq!(
            CallFormat::detect("{% if tools %}<tool_call>{% endif %}"),
            CallFormat::Hermes
        );
        assert_eq!(
            CallFormat::detect("<|python_tag|>{{ tool_call }}"),
            CallFormat::Llama3
        );
        assert_eq!(
            CallFormat::detect("[TOOL_CALLS] [{...}]"),
            CallFormat::Mistral
        );
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
