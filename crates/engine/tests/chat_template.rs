//! Chat templates: SmolLM2's own template and Gemma 3's built-in one against llama.cpp's
//! rendering (recorded from `llama-server`'s `/apply-template` by
//! tests/data/record_chat_refs.py), and the template environment's Python-compatible helpers
//! and errors.

use std::path::PathBuf;

use backstop_engine::chat::{ChatError, ChatMessage, ChatTemplate, TemplateSource};
use backstop_engine::gguf::GgufFile;
use backstop_engine::tokenizer::Tokenizer;
use serde_json::Value;

fn open(model: &str) -> GgufFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(model);
    assert!(
        path.exists(),
        "test model {} is missing: run scripts/fetch-models first",
        path.display()
    );
    GgufFile::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn template_of(model: &str) -> (ChatTemplate, Tokenizer) {
    let file = open(model);
    let tk = Tokenizer::from_gguf(&file).expect("tokenizer");
    let tmpl = ChatTemplate::from_gguf(&file, &tk).expect("chat template");
    (tmpl, tk)
}

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(r, c)| ChatMessage::new(*r, *c))
        .collect()
}

fn custom(src: &str) -> Result<ChatTemplate, ChatError> {
    ChatTemplate::new(
        src.to_owned(),
        TemplateSource::Custom,
        "<s>".into(),
        "</s>".into(),
    )
}

/// The recorded conversations of `refs` (tests/data/record_chat_refs.py), rendered as the
/// prompt we tokenize (`render_prompt`: without the template's BOS when the tokenizer adds one,
/// as llama.cpp's `/apply-template` returns it), must equal llama.cpp's text byte for byte.
fn renders_as_recorded(tmpl: &ChatTemplate, tk: &Tokenizer, refs: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(refs);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 8, "{refs}: {} cases", cases.len());
    for case in cases {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let add_gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = tmpl
            .render_prompt(&messages, &[], add_gen, tk.add_bos())
            .expect("render");
        assert_eq!(
            got,
            case["prompt"].as_str().unwrap(),
            "{refs}: messages {messages:?}, add_generation_prompt {add_gen}"
        );
    }
}

#[test]
fn smollm2_renders_exactly_as_llama_cpp() {
    let (tmpl, tk) = template_of("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(tmpl.source(), &TemplateSource::File);
    renders_as_recorded(&tmpl, &tk, "chat_refs_smollm2.json");
}

/// Gemma 3's file has no template; our built-in one must render as llama.cpp's own built-in
/// Gemma formatter (`llama-server --no-jinja --chat-template gemma`): system text folded into the
/// first user turn, contents trimmed, `model` as the assistant's role.
#[test]
fn gemma3_renders_exactly_as_llama_cpp_gemma_template() {
    let (tmpl, tk) = template_of("models/gemma-3-270m-q4_k_m.gguf");
    assert_eq!(tmpl.source(), &TemplateSource::BuiltIn("gemma"));
    renders_as_recorded(&tmpl, &tk, "chat_refs_gemma3.json");
}

#[test]
fn smollm2_prompt_tokenizes_with_single_special_tokens() {
    let (tmpl, tk) = template_of("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let prompt = tmpl
        .render_prompt(&msgs(&[("user", "Hi")]), &[], true, tk.add_bos())
        .unwrap();
    let ids = tk.encode(&prompt, true).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|>");
    assert_eq!(
        ids.iter().filter(|&&i| i == 1).count(),
        3,
        "system, user, assistant turns"
    );
}

#[test]
fn gemma3_uses_the_built_in_gemma_template() {
    let (tmpl, tk) = template_of("models/gemma-3-270m-q4_k_m.gguf");
    assert_eq!(tmpl.source(), &TemplateSource::BuiltIn("gemma"));
    assert_eq!(tmpl.source().to_string(), "built-in gemma template");
    let conversation = msgs(&[
        ("system", "Be brief."),
        ("user", " Hi "),
        ("assistant", "Hello."),
        ("user", "Bye"),
    ]);
    let text = tmpl.render(&conversation, true).unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    // The tokenizer adds BOS itself, so the prompt to encode drops the template's.
    let prompt = tmpl
        .render_prompt(&conversation, &[], true, tk.add_bos())
        .unwrap();
    assert!(prompt.starts_with("<start_of_turn>user\n"));
    let ids = tk.encode(&prompt, true).unwrap();
    assert_eq!(
        ids.iter().filter(|&&i| i == 2).count(),
        1,
        "exactly one <bos>"
    );
    assert_eq!(&ids[..2], &[2, 105], "<bos><start_of_turn>");
}

#[test]
fn gemma_template_rejects_roles_out_of_order() {
    let (tmpl, _) = template_of("models/gemma-3-270m-q4_k_m.gguf");
    let err = tmpl
        .render(&msgs(&[("assistant", "first?")]), true)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("built-in gemma template") && text.contains("alternate"),
        "{text}"
    );
}

#[test]
fn python_string_methods_and_helpers_work() {
    let t = custom(
        "{{ messages[0].content.strip().upper() }}|{{ messages[0].content.split(',') | length }}|\
         {{ messages[0].content.startswith(' a') }}|{{ bos_token }}{{ eos_token }}|{{ tools is none }}|\
         {{ strftime_now('%Y') | length }}",
    )
    .unwrap();
    let out = t.render(&msgs(&[("user", " a,b ")]), false).unwrap();
    assert_eq!(out, "A,B|2|True|<s></s>|True|4");
}

/// Python's separators, no HTML escaping, `None` as null. (Key order is minijinja's map
/// order: sorted, as the workspace builds minijinja without `preserve_order`; the keys here
/// are already sorted so the test states only what is guaranteed.)
#[test]
fn tojson_writes_python_style_json() {
    let t = custom("{{ {'a': [true, none, 'x<y', 1.5], 'b': 1} | tojson }}").unwrap();
    assert_eq!(
        t.render(&[], false).unwrap(),
        r#"{"a": [true, null, "x<y", 1.5], "b": 1}"#
    );
    let t = custom("{{ {'k': [1]} | tojson(indent=2) }}").unwrap();
    assert_eq!(
        t.render(&[], false).unwrap(),
        "{\n  \"k\": [\n    1\n  ]\n}"
    );
}

#[test]
fn block_tags_do_not_leave_newlines() {
    // trim_blocks + lstrip_blocks, as HF transformers and llama.cpp render.
    let t = custom("{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}").unwrap();
    assert_eq!(
        t.render(&msgs(&[("user", "x"), ("user", "y")]), false)
            .unwrap(),
        "[x]\n[y]\n"
    );
}

#[test]
fn template_errors_are_reported_not_swallowed() {
    let e = custom("{% for m in messages %}").unwrap_err();
    assert!(matches!(e, ChatError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("custom template"), "{e}");

    let t = custom("{{ raise_exception('no system role here') }}").unwrap();
    let e = t.render(&[], false).unwrap_err();
    assert!(
        matches!(e, ChatError::Render { .. }) && e.to_string().contains("no system role here"),
        "{e}"
    );
}

/// A Hermes/Qwen-style template reads `tools`, an assistant's `tool_calls` (arguments as an
/// object) and `tool` turns itself.
const TOOLS_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
Tools:{% for t in tools %} {{ t.function.name }}={{ t.function.parameters | tojson }}{% endfor %}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == "assistant" and m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}, "id": "{{ c.id }}"}</tool_call>{% endfor %}<|im_end|>
{% elif m.role == "tool" %}<|im_start|>user
<tool_response id="{{ m.tool_call_id }}">{{ m.content }}</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

fn tool_conversation() -> (Vec<ChatMessage>, Vec<backstop_engine::chat::ToolSpec>) {
    use backstop_engine::chat::{ToolCall, ToolSpec};
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls.push(ToolCall::new(
        "call_1",
        "read_file",
        serde_json::json!({"path": "a.txt"}),
    ));
    let messages = vec![
        ChatMessage::new("user", "What is in a.txt?"),
        call,
        ChatMessage::tool_result("call_1", Some("read_file".into()), "hello"),
    ];
    let tools = vec![ToolSpec {
        name: "read_file".into(),
        description: Some("Read a file".into()),
        parameters: serde_json::json!({"type": "object", "properties": {"path": {"type": "string"}}}),
    }];
    (messages, tools)
}

#[test]
fn a_tool_aware_template_gets_tools_calls_and_results_as_variables() {
    let t = custom(TOOLS_TEMPLATE).unwrap();
    assert!(t.handles_tools());
    let (messages, tools) = tool_conversation();
    let out = t.render_with_tools(&messages, &tools, true).unwrap();
    assert!(
        out.contains("Tools: read_file={\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\"}}}"),
        "{out}"
    );
    assert!(
        out.contains("<tool_call>{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.txt\"}, \"id\": \"call_1\"}</tool_call>"),
        "{out}"
    );
    assert!(
        out.contains("<tool_response id=\"call_1\">hello</tool_response>"),
        "{out}"
    );
    assert!(out.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn templates_without_tools_get_the_generic_format_and_keep_every_turn() {
    let (messages, tools) = tool_conversation();
    for model in [
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models/gemma-3-270m-q4_k_m.gguf",
    ] {
        let (t, _) = template_of(model);
        assert!(!t.handles_tools(), "{model}");
        // Gemma's template insists on alternating roles; the lowered history must pass it.
        let out = t.render_with_tools(&messages, &tools, true).unwrap();
        assert!(out.contains("You can call these tools:"), "{model}: {out}");
        assert!(out.contains("\"name\":\"read_file\""), "{model}: {out}");
        assert!(out.contains("<tool_call>\n{\"name\":\"read_file\",\"arguments\":{\"path\":\"a.txt\"}}\n</tool_call>"), "{model}: {out}");
        assert!(out.contains("hello"), "{model}: {out}");
        assert!(out.contains("What is in a.txt?"), "{model}: {out}");
    }
}

/// A recorded message (OpenAI's shape, arguments as a JSON string) as templates read it.
fn recorded_message(m: &Value) -> ChatMessage {
    use backstop_engine::chat::ToolCall;
    let role = m["role"].as_str().unwrap();
    let content = m["content"].as_str().unwrap_or("");
    if role == "tool" {
        return ChatMessage::tool_result(m["tool_call_id"].as_str().unwrap(), None, content);
    }
    let mut msg = ChatMessage::new(role, content);
    for c in m["tool_calls"].as_array().into_iter().flatten() {
        let args: Value =
            serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
        msg.tool_calls.push(ToolCall::new(
            c["id"].as_str().unwrap(),
            c["function"]["name"].as_str().unwrap(),
            args,
        ));
    }
    msg
}

/// Real tool-calling templates of three families (tests/data/templates, sources in its
/// README), given tools, assistant tool calls and tool results, must render as llama.cpp's
/// `llama-server --jinja --chat-template-file` does (recorded over SmolLM2's vocabulary by
/// tests/data/record_chat_refs.py qwen25|llama32|mistral_nemo).
#[test]
fn tool_templates_of_qwen_llama_and_mistral_render_as_llama_cpp() {
    use backstop_engine::chat::ToolSpec;
    use backstop_engine::tools::CallFormat;
    let file = open("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tk = Tokenizer::from_gguf(&file).unwrap();
    let today = custom(r#"{{ strftime_now("%d %b %Y") }}"#)
        .unwrap()
        .render(&[], false)
        .unwrap();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for (name, template, format) in [
        (
            "qwen25",
            "Qwen-Qwen2.5-7B-Instruct.jinja",
            CallFormat::Hermes,
        ),
        (
            "llama32",
            "meta-llama-Llama-3.2-3B-Instruct.jinja",
            CallFormat::Llama3,
        ),
        (
            "mistral_nemo",
            "mistralai-Mistral-Nemo-Instruct-2407.jinja",
            CallFormat::Mistral,
        ),
    ] {
        let src = std::fs::read_to_string(data.join("templates").join(template)).unwrap();
        let tmpl = ChatTemplate::custom(src, &tk).unwrap();
        assert!(tmpl.handles_tools(), "{name}");
        assert_eq!(tmpl.call_format(), format, "{name}");
        let refs = data.join(format!("chat_refs_{name}.json"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(refs).unwrap()).unwrap();
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 8, "{name}");
        for case in cases {
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(recorded_message)
                .collect();
            let tools: Vec<ToolSpec> = case["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| ToolSpec {
                    name: t["function"]["name"].as_str().unwrap().to_owned(),
                    description: t["function"]["description"].as_str().map(str::to_owned),
                    parameters: t["function"]["parameters"].clone(),
                })
                .collect();
            let add_gen = case["add_generation_prompt"].as_bool().unwrap();
            let rendered = tmpl.render_prompt(&messages, &tools, add_gen, tk.add_bos());
            if let Some(why) = case["error"].as_str() {
                // The template refuses the conversation (Llama 3.2: one call per turn).
                let e = rendered.expect_err(name).to_string();
                let said = why.rsplit("Jinja Exception: ").next().unwrap().trim();
                assert!(e.contains(said), "{name}: {e} / {said}");
                continue;
            }
            let got = rendered.unwrap_or_else(|e| panic!("{name}: {e}"));
            // Templates that print today's date print the day they run.
            let want = case["prompt"]
                .as_str()
                .unwrap()
                .replace(doc["date"].as_str().unwrap(), &today);
            assert_eq!(
                got, want,
                "{name}: {messages:?}, add_generation_prompt {add_gen}"
            );
        }
    }
}
