//! Constrained decoding on the real test models: whatever the prompt, greedy output under a
//! JSON Schema parses and validates, regexes and Lark grammars are obeyed, and a constraint
//! that does not compile is an error that says why.

mod common;

use backstop_engine::chat::ChatMessage;
use backstop_engine::generate::{Engine, EngineOptions, GenerateParams, StopReason};
use backstop_engine::grammar::{Constraint, GrammarError};
use backstop_engine::sampling::SamplingParams;
use serde_json::{json, Value};

fn load(file: &str) -> Engine {
    let opts = EngineOptions {
        threads: 2,
        ..EngineOptions::default()
    };
    Engine::load(&common::model_path(file), &opts).expect("model loads")
}

fn chat(engine: &Engine, user: &str) -> Vec<u32> {
    let t = engine.template.as_ref().unwrap();
    let text = t
        .render_prompt(
            &[ChatMessage::new("user", user)],
            &[],
            true,
            engine.tokenizer.add_bos(),
        )
        .unwrap();
    engine.tokenizer.encode(&text, true).unwrap()
}

fn generate(
    engine: &Engine,
    prompt: &[u32],
    c: &Constraint,
    max_tokens: usize,
) -> (String, StopReason) {
    let mut grammar = engine.compile_constraint(c).expect("constraint compiles");
    let mut session = engine.new_session(1024).unwrap();
    let params = GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        ignore_eos: false,
    };
    let mut text = String::new();
    let o = engine
        .generate_with(
            &mut session,
            prompt,
            &params,
            Some(&mut grammar),
            &mut |p| {
                text.push_str(p);
                true
            },
        )
        .unwrap();
    (text, o.stop_reason)
}

/// A validator for the subset of JSON Schema the tests use (type, properties, required,
/// additionalProperties: false, enum, items, anyOf, minimum/maximum, minLength/maxLength).
fn valid(v: &Value, s: &Value) -> bool {
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        return any.iter().any(|alt| valid(v, alt));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return false;
        }
    }
    let ty_ok = match s.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        // JSON Schema: any number with a zero fractional part (1e30 included).
        Some("integer") => v.as_f64().is_some_and(|n| n.fract() == 0.0),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("null") => v.is_null(),
        Some(_) => false,
    };
    if !ty_ok {
        return false;
    }
    if let (Some(n), Some(lo)) = (v.as_f64(), s.get("minimum").and_then(Value::as_f64)) {
        if n < lo {
            return false;
        }
    }
    if let (Some(n), Some(hi)) = (v.as_f64(), s.get("maximum").and_then(Value::as_f64)) {
        if n > hi {
            return false;
        }
    }
    if let Some(t) = v.as_str() {
        let n = t.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            return false;
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        if !arr.iter().all(|x| valid(x, items)) {
            return false;
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(req.as_str().unwrap_or("")) {
                return false;
            }
        }
        for (k, x) in obj {
            let ok = match props.and_then(|p| p.get(k)) {
                Some(ps) => valid(x, ps),
                None => s.get("additionalProperties") != Some(&json!(false)),
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// An agent's tool arguments: nested objects, enums, arrays, optional fields and anyOf.
fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {"path": {"type": "string", "minLength": 1}},
               "required": ["path"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
                  "command": {"type": "string"},
                  "timeout_s": {"type": "integer", "minimum": 1, "maximum": 600}},
               "required": ["command"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
                  "path": {"type": "string"},
                  "edits": {"type": "array", "items": {"type": "object", "properties": {
                      "old": {"type": "string"}, "new": {"type": "string"}},
                      "required": ["old", "new"], "additionalProperties": false}}},
               "required": ["path", "edits"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
                  "query": {"type": "string"},
                  "scope": {"enum": ["files", "symbols", "web"]},
                  "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
               "required": ["query", "scope"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
                  "city": {"type": "string", "maxLength": 40},
                  "unit": {"enum": ["celsius", "fahrenheit"]},
                  "days": {"type": "integer", "minimum": 1, "maximum": 7}},
               "required": ["city", "unit", "days"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
                  "title": {"type": "string"},
                  "tags": {"type": "array", "items": {"type": "string"}},
                  "done": {"type": "boolean"},
                  "owner": {"type": "object", "properties": {"name": {"type": "string"}},
                            "required": ["name"], "additionalProperties": false}},
               "required": ["title", "done", "owner"], "additionalProperties": false}),
    ]
}

const PROMPTS: [&str; 4] = [
    "Read the file src/main.rs for me.",
    "What's the weather in Paris this week?",
    "Write a haiku about failover.",
    "Summarize the plot of Hamlet.",
];

#[test]
fn greedy_output_under_a_schema_always_parses_and_validates() {
    for file in [common::SMOLLM2, common::GEMMA3] {
        let engine = load(file);
        for schema in schemas() {
            for p in PROMPTS {
                let prompt = chat(&engine, p);
                let (text, stop) = generate(
                    &engine,
                    &prompt,
                    &Constraint::JsonSchema(schema.clone()),
                    256,
                );
                // Ended by the model, or closed early in the budget's last tokens.
                assert!(
                    matches!(stop, StopReason::EndOfGeneration | StopReason::Closed),
                    "{file} {p:?}: {stop:?} {text}"
                );
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{file} {p:?}: not JSON ({e}): {text}"));
                assert!(valid(&v, &schema), "{file} {p:?}: {text} against {schema}");
            }
        }
    }
}

#[test]
fn json_object_regex_and_lark() {
    let engine = load(common::SMOLLM2);
    let prompt = chat(&engine, "Describe a cat.");
    let (text, _) = generate(&engine, &prompt, &Constraint::JsonObject, 200);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v.is_object());

    let (text, stop) = generate(
        &engine,
        &prompt,
        &Constraint::Regex("(yes|no), [0-9]{2}".into()),
        20,
    );
    assert!(
        text.starts_with("yes, ") || text.starts_with("no, "),
        "{text}"
    );
    assert!(stop == StopReason::EndOfGeneration, "{text}");
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 2, "{text}");

    let lark = "start: \"Answer: \" WORD \".\"\nWORD: /[a-z]{1,12}/\n";
    let (text, _) = generate(&engine, &prompt, &Constraint::Lark(lark.into()), 30);
    assert!(
        text.starts_with("Answer: ") && text.ends_with('.'),
        "{text}"
    );
    assert!(text["Answer: ".len()..text.len() - 1]
        .chars()
        .all(|c| c.is_ascii_lowercase()));
}

#[test]
fn a_cut_answer_reports_the_budget_not_a_finished_value() {
    let engine = load(common::SMOLLM2);
    let prompt = chat(&engine, "List many animals.");
    let schema = json!({"type": "object", "properties": {
        "animals": {"type": "array", "items": {"type": "string"}}}, "required": ["animals"]});
    let (text, stop) = generate(&engine, &prompt, &Constraint::JsonSchema(schema), 3);
    assert_eq!(stop, StopReason::MaxTokens, "{text}");
}

#[test]
fn constraints_that_do_not_compile_say_why() {
    let engine = load(common::SMOLLM2);
    let bad = [
        Constraint::JsonSchema(json!({"type": "nope"})),
        Constraint::JsonSchema(json!({"properties": {"a": {"$ref": "#/$defs/missing"}}})),
        Constraint::Lark("start: <|no_such_token|>".into()),
        Constraint::Regex("(unclosed".into()),
    ];
    for c in bad {
        match engine.compile_constraint(&c) {
            Err(GrammarError::Compile { why, .. }) => assert!(!why.is_empty(), "{c:?}"),
            other => panic!("{c:?}: {other:?}"),
        }
    }
}

/// Whether `lark` lets the model write `lead` tokens then `text`, token by token.
fn accepts(engine: &Engine, lark: &str, lead: &[u32], text: &str) -> bool {
    let mut g = engine
        .compile_constraint(&Constraint::Lark(lark.to_owned()))
        .expect("compiles");
    let mut ids = lead.to_vec();
    ids.extend(engine.tokenizer.encode_with(text, false, false).unwrap());
    let mut logits = vec![0.0f32; engine.n_vocab()];
    for &id in &ids {
        logits.iter_mut().for_each(|l| *l = 0.0);
        g.mask(&mut logits).unwrap();
        if !logits[id as usize].is_finite() {
            return false;
        }
        g.accept(id).unwrap();
    }
    true
}

fn read_file_tool() -> Vec<backstop_engine::chat::ToolSpec> {
    vec![backstop_engine::chat::ToolSpec {
        name: "read_file".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}},
                           "required": ["path"], "additionalProperties": false}),
    }]
}

#[test]
fn auto_mode_grammar_is_free_until_the_tag_then_forces_a_call() {
    use backstop_engine::tools::{auto_grammar, CallFormat};
    let engine = load(common::SMOLLM2);
    let lark = auto_grammar(CallFormat::Hermes, &read_file_tool(), 2, None).unwrap();
    let accepts = |text: &str| accepts(&engine, &lark, &[], text);
    assert!(accepts("Plain prose, with {braces} and <tags>."));
    assert!(accepts(
        "<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}\n</tool_call>"
    ));
    assert!(accepts("Let me look.\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}\n</tool_call>"));
    assert!(
        !accepts("<tool_call>\n{\"name\": \"rm_rf\""),
        "an unknown tool after the tag"
    );
    assert!(!accepts(
        "<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"nope\""
    ));
    assert!(!accepts("<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}\n</tool_call> and more prose"));
}

#[test]
fn each_family_writes_forced_and_auto_calls_in_its_own_format() {
    use backstop_engine::tools::{auto_grammar, call_grammar, CallFormat};
    let engine = load(common::SMOLLM2);
    let tools = read_file_tool();
    // Llama 3.x: the answer is the call, `{"name": ..., "parameters": ...}`.
    let llama_call = "{\"name\": \"read_file\", \"parameters\": {\"path\": \"a\"}}";
    let forced = call_grammar(CallFormat::Llama3, &tools, None, 2, None);
    assert!(accepts(&engine, &forced, &[], llama_call));
    assert!(accepts(
        &engine,
        &forced,
        &[],
        &format!("{llama_call}; {llama_call}")
    ));
    assert!(!accepts(
        &engine,
        &forced,
        &[],
        "{\"name\": \"read_file\", \"arguments\""
    ));
    assert!(!accepts(&engine, &forced, &[], "<tool_call>"));
    let auto = auto_grammar(CallFormat::Llama3, &tools, 2, None).unwrap();
    assert!(accepts(&engine, &auto, &[], "It is sunny, {probably}."));
    assert!(accepts(&engine, &auto, &[], llama_call));
    assert!(!accepts(&engine, &auto, &[], "{\"name\": \"rm_rf\""));
    assert!(!accepts(
        &engine,
        &auto,
        &[],
        &format!("{llama_call} and prose")
    ));

    // Mistral: the control token, then a JSON array of calls. SmolLM2 has no [TOOL_CALLS],
    // so another control token stands in for it.
    let trigger = engine.tokenizer.token_id("<|im_start|>").unwrap();
    let mistral_call = "[{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}]";
    let forced = call_grammar(CallFormat::Mistral, &tools, None, 2, Some(trigger));
    assert!(accepts(&engine, &forced, &[trigger], mistral_call));
    assert!(
        !accepts(&engine, &forced, &[], mistral_call),
        "the token comes first"
    );
    let auto = auto_grammar(CallFormat::Mistral, &tools, 2, Some(trigger)).unwrap();
    assert!(accepts(
        &engine,
        &auto,
        &[],
        "Plain prose [with] {brackets}."
    ));
    assert!(accepts(&engine, &auto, &[trigger], mistral_call));
    assert!(!accepts(
        &engine,
        &auto,
        &[trigger],
        "[{\"name\": \"rm_rf\""
    ));
}
