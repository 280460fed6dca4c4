//! The cost of constrained decoding on the real test models (skipped, saying so, when
//! scripts/fetch-models has not been run):
//! - `mask/{model}`: one decode step's grammar work (the mask over the whole vocabulary, then
//!   accepting the chosen token) while a forced call of an agent's tool set is written:
//!   SmolLM2's 49k vocabulary and Gemma 3's 262k.
//! - Before criterion runs, a table per model: that step's p50/p99/max over every step of
//!   the calls, and greedy decode tokens/s under each agent tool's JSON Schema against
//!   unconstrained decoding of the same prompts, in the same run.
//!
//! `cargo bench -p backstop-engine --bench grammar`

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backstop_engine::chat::{ChatMessage, ToolSpec};
use backstop_engine::generate::{Engine, EngineOptions, GenerateParams};
use backstop_engine::grammar::{Constraint, Grammar};
use backstop_engine::sampling::SamplingParams;
use backstop_engine::tools::{call_grammar, CallFormat, MAX_CALLS};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

const MODELS: [(&str, &str); 2] = [
    ("smollm2", "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3", "models/gemma-3-270m-q4_k_m.gguf"),
];

/// An agent's tools: file read/write/edit, a shell command, search, with nested objects,
/// enums, arrays, optional fields and anyOf; and a call of each, as compact JSON.
fn agent_tools() -> Vec<(ToolSpec, &'static str)> {
    let tool = |name: &str, parameters: Value, call: &'static str| {
        let spec = ToolSpec {
            name: name.into(),
            description: None,
            parameters,
        };
        (spec, call)
    };
    vec![
        tool(
            "read_file",
            json!({"type": "object", "properties": {"path": {"type": "string", "minLength": 1}},
                   "required": ["path"], "additionalProperties": false}),
            r#"{"path": "src/main.rs"}"#,
        ),
        tool(
            "write_file",
            json!({"type": "object", "properties": {"path": {"type": "string"},
                   "content": {"type": "string"}}, "required": ["path", "content"],
                   "additionalProperties": false}),
            r#"{"path": "notes.txt", "content": "Water the plants.\nFeed the cat."}"#,
        ),
        tool(
            "edit_file",
            json!({"type": "object", "properties": {"path": {"type": "string"},
                   "edits": {"type": "array", "items": {"type": "object", "properties": {
                       "old": {"type": "string"}, "new": {"type": "string"}},
                       "required": ["old", "new"], "additionalProperties": false}}},
                   "required": ["path", "edits"], "additionalProperties": false}),
            r#"{"path": "a.rs", "edits": [{"old": "fn main() {}", "new": "fn main() { run(); }"}]}"#,
        ),
        tool(
            "run_shell",
            json!({"type": "object", "properties": {"command": {"type": "string"},
                   "timeout_s": {"type": "integer", "minimum": 1, "maximum": 600}},
                   "required": ["command"], "additionalProperties": false}),
            r#"{"command": "cargo test --release", "timeout_s": 300}"#,
        ),
        tool(
            "search",
            json!({"type": "object", "properties": {"query": {"type": "string"},
                   "scope": {"enum": ["files", "symbols", "web"]},
                   "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
                   "required": ["query", "scope"], "additionalProperties": false}),
            r#"{"query": "fn main", "scope": "symbols", "limit": null}"#,
        ),
        tool(
            "create_task",
            json!({"type": "object", "properties": {"title": {"type": "string"},
                   "tags": {"type": "array", "items": {"type": "string"}},
                   "done": {"type": "boolean"},
                   "owner": {"type": "object", "properties": {"name": {"type": "string"}},
                             "required": ["name"], "additionalProperties": false}},
                   "required": ["title", "done", "owner"], "additionalProperties": false}),
            r#"{"title": "Ship it", "tags": ["release"], "done": false, "owner": {"name": "Ana"}}"#,
        ),
    ]
}

fn load(path: &str) -> Option<Engine> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    if !full.exists() {
        eprintln!("grammar bench: {path} is missing (scripts/fetch-models); skipped");
        return None;
    }
    let opts = EngineOptions {
        threads: 2,
        ..EngineOptions::default()
    };
    Some(Engine::load(&full, &opts).expect("model loads"))
}

/// The forced-call grammar of the whole tool set and the token ids of each tool's call, as
/// the model would write them.
fn calls(engine: &Engine) -> (Grammar, Vec<Vec<u32>>) {
    let tools = agent_tools();
    let specs: Vec<ToolSpec> = tools.iter().map(|(s, _)| s.clone()).collect();
    let lark = call_grammar(CallFormat::Hermes, &specs, None, MAX_CALLS, None);
    let g = engine
        .compile_constraint(&Constraint::Lark(lark))
        .expect("compiles");
    let texts = tools
        .iter()
        .map(|(s, args)| {
            let text = format!(
                "<tool_call>\n{{\"name\": \"{}\", \"arguments\": {args}}}\n</tool_call>",
                s.name
            );
            engine.tokenizer.encode_with(&text, false, false).unwrap()
        })
        .collect();
    (g, texts)
}

/// One decode step's grammar work: mask, then accept.
fn step(g: &mut Grammar, logits: &mut [f32], id: u32) {
    logits.iter_mut().for_each(|l| *l = 0.0);
    g.mask(logits).unwrap();
    assert!(logits[id as usize].is_finite(), "token {id} refused");
    g.accept(id).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Per-step mask times over every step of every call, five times over.
fn mask_table(name: &str, engine: &Engine) {
    let (fresh, texts) = calls(engine);
    let mut logits = vec![0.0f32; engine.n_vocab()];
    let mut times = Vec::new();
    for _ in 0..5 {
        for ids in &texts {
            let mut g = fresh.clone_state();
            for &id in ids {
                let t = Instant::now();
                step(&mut g, &mut logits, id);
                times.push(t.elapsed());
            }
        }
    }
    times.sort();
    println!(
        "mask step, {name} ({} tokens): {} steps, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        engine.n_vocab(),
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
}

/// Greedy decode tokens/s under each tool's schema and unconstrained, same prompts.
fn decode_table(name: &str, engine: &Engine) {
    let prompts = [
        "Read the file src/main.rs for me.",
        "Fix the typo in a.rs and run the tests.",
        "Find where main is defined.",
    ];
    let params = GenerateParams {
        max_tokens: 48,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        ignore_eos: false,
    };
    let (mut free, mut bound) = ((0usize, 0.0f64), (0usize, 0.0f64));
    let t = engine.template.as_ref().unwrap();
    for (spec, _) in agent_tools() {
        for p in prompts {
            let text = t
                .render_prompt(
                    &[ChatMessage::new("user", p)],
                    &[],
                    true,
                    engine.tokenizer.add_bos(),
                )
                .unwrap();
            let prompt = engine.tokenizer.encode(&text, true).unwrap();
            for constrained in [false, true] {
                let mut g = constrained.then(|| {
                    engine
                        .compile_constraint(&Constraint::JsonSchema(spec.parameters.clone()))
                        .unwrap()
                });
                let mut session = engine.new_session(512).unwrap();
                let o = engine
                    .generate_with(&mut session, &prompt, &params, g.as_mut(), &mut |_| true)
                    .unwrap();
                let acc = if constrained { &mut bound } else { &mut free };
                acc.0 += o.tokens.len().saturating_sub(1);
                acc.1 += o.gen_time.as_secs_f64();
            }
        }
    }
    let (f, b) = (free.0 as f64 / free.1, bound.0 as f64 / bound.1);
    println!(
        "decode, {name}, 2 threads, greedy: unconstrained {f:.1} tok/s ({} tokens), \
         JSON Schema {b:.1} tok/s ({} tokens): {:.0} %",
        free.0,
        bound.0,
        100.0 * b / f
    );
}

fn bench(c: &mut Criterion) {
    for (name, path) in MODELS {
        let Some(engine) = load(path) else { continue };
        mask_table(name, &engine);
        decode_table(name, &engine);
        let (fresh, texts) = calls(&engine);
        // The longest call: the grammar state at each of its steps, cycled.
        let ids = texts.iter().max_by_key(|t| t.len()).unwrap().clone();
        let mut logits = vec![0.0f32; engine.n_vocab()];
        let mut g = fresh.clone_state();
        let mut i = 0;
        c.bench_function(&format!("mask/{name}"), |b| {
            b.iter(|| {
                if i == ids.len() {
                    g = fresh.clone_state();
                    i = 0;
                }
                step(&mut g, black_box(&mut logits), ids[i]);
                i += 1;
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
