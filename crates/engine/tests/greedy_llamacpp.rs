//! Greedy continuations equal llama.cpp's on the same file and prompts.
//! Reference: tests/data/*.greedy.json, recorded by scripts/record-reference (llama-server).

mod common;

use backstop_engine::generate::{Engine, EngineOptions, GenerateParams};
use backstop_engine::sampling::SamplingParams;
use serde_json::Value;

fn check_model(model: &str, reference: &str) {
    let engine = Engine::load(&common::model_path(model), &EngineOptions::default()).expect("load");
    let data: Value = serde_json::from_slice(
        &std::fs::read(common::data_path(reference)).expect("reference data"),
    )
    .unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let mut failures = Vec::new();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want_prompt: Vec<u32> = case["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let tokens = engine.tokenizer.encode(prompt, true).unwrap();
        assert_eq!(tokens, want_prompt, "prompt tokens of {prompt:?}");
        let mut session = engine.new_session(2048);
        let params = GenerateParams {
            max_tokens: want.len(),
            sampling: SamplingParams::greedy(),
            stop: vec![],
        };
        let out = engine
            .generate(&mut session, &tokens, &params, &mut |_| true)
            .unwrap();
        if out.tokens != want {
            let at = out
                .tokens
                .iter()
                .zip(&want)
                .take_while(|(a, b)| a == b)
                .count();
            let top = &case["top_logprobs"][at];
            failures.push(format!(
                "{prompt:?}: first difference at token {at}: ours {:?}, llama.cpp {:?} (llama.cpp top-5 there: {top})",
                out.tokens.get(at),
                want.get(at)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_greedy_64_tokens_equal_llama_cpp() {
    check_model(common::SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.greedy.json");
}

/// Not yet passing, so not run by default: 3 of the 8 prompts match; the other 5 part at
/// near-ties (0.002 to 0.2 nat) because the K-quant dot products, GELU and the pre-scaled query
/// do not yet follow ggml's arithmetic (the Gemma issue). Run with `-- --ignored`.
#[test]
#[ignore = "Gemma 3 parity with llama.cpp is not reached yet (3 of 8 prompts)"]
fn gemma3_greedy_64_tokens_equal_llama_cpp() {
    check_model(common::GEMMA3, "gemma-3-270m-q4_k_m.greedy.json");
}
