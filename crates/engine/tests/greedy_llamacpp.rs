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
        let mut session = engine.new_session(2048).unwrap();
        let params = GenerateParams {
            max_tokens: want.len(),
            sampling: SamplingParams::greedy(),
            stop: vec![],
            ignore_eos: false,
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

/// Top-1 margin (nat) under which llama.cpp's own choice is noise.
const NEAR_TIE: f64 = 0.3;
/// The bound on our top-1 log-probability against llama.cpp's.
const MAX_LOGPROB_DIFF: f64 = 0.1;
/// Prompts that must meet [`MAX_LOGPROB_DIFF`] at every compared step (the number).
const MIN_CLOSE_PROMPTS: usize = 5;

/// The Gemma issue's criterion. Greedy decoding is compared with llama.cpp's only up to the
/// first step where llama.cpp's own top-1 margin is under [`NEAR_TIE`] nat: on this file
/// llama.cpp's CLI and server already pick different tokens at 0.17- and 0.22-nat margins, so
/// equality past such a step measures noise, not a bug. Up to there, on every prompt, our top-1
/// must be llama.cpp's and its log-probability (log-softmax of our logits) within [`NEAR_TIE`]
/// of llama.cpp's (a larger drift would make the token comparison meaningless); on at least
/// [`MIN_CLOSE_PROMPTS`] prompts (the number) it must be within [`MAX_LOGPROB_DIFF`] at
/// every compared step.
///
/// Why not every prompt within 0.1: ggml computes K-quant matrices with kernels whose float
/// summation differs from `ggml_vec_dot_*` (the Q4_K tensors are repacked to `q4_K_8x8` and run
/// through its gemv/gemm; Q6_K with 8+ tokens goes through ggml's tiled K-quant matmul). Our
/// K-quant dot products equal `ggml_vec_dot_q6_K_q8_K` bit for bit, but not those kernels, so
/// prompts of 8+ tokens drift by one or two ulps per matmul, which Gemma's large activations
/// amplify to up to ~0.2 nat by the last layer. The measured numbers are printed.
#[test]
fn gemma3_greedy_equals_llama_cpp_up_to_its_near_ties() {
    let r = check_up_to_near_ties(
        &common::model_path(common::GEMMA3),
        &common::data_path("gemma-3-270m-q4_k_m.greedy.json"),
    );
    assert!(r.n_prompts >= 8, "the issue asks for at least 8 prompts");
    assert!(
        r.n_close >= MIN_CLOSE_PROMPTS,
        "only {} prompts have every compared log-probability within {MAX_LOGPROB_DIFF} of llama.cpp's (want {MIN_CLOSE_PROMPTS})",
        r.n_close
    );
}

/// The slower suite (not run by default; `scripts/requantize` first, which needs llama.cpp's
/// tools): SmolLM2 requantized by llama-quantize to other formats, each against llama.cpp's
/// own greedy continuations on that file, by the same criterion as Gemma: top-1 equal and
/// log-probability within 0.3 nat at every step before llama.cpp's first near-tie. How many
/// prompts also stay within 0.1 is printed, not asserted. Measured (2026-11-23): Q8_0 0.0003 and
/// F16 0.006 nat at worst; Q4_0 0.13 (llama.cpp repacks it to `q4_0_8x8`), Q4_K_M 0.22; Q5_K_M
/// and Q6_K 0.38-0.39 on one prompt each, so this suite FAILS on those two until we reproduce
/// ggml's repacked and tiled K-quant matmuls (see the Gemma test): the bound states the target.
#[test]
#[ignore = "slow suite: needs scripts/requantize (llama.cpp's llama-quantize) and its references"]
fn smollm2_requantized_variants_equal_llama_cpp_up_to_near_ties() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/requant");
    let (mut summary, mut failed) = (Vec::new(), Vec::new());
    for ty in ["Q4_0", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16"] {
        let name = format!("SmolLM2-135M-Instruct.{ty}");
        let model = dir.join(format!("{name}.gguf"));
        let reference = dir.join(format!("{name}.greedy.json"));
        assert!(
            model.exists() && reference.exists(),
            "{} or its reference is missing: run scripts/requantize",
            model.display()
        );
        eprintln!("== {ty}");
        // Measure every variant before failing, so one run reports them all.
        let run = std::panic::catch_unwind(|| check_up_to_near_ties(&model, &reference));
        match run {
            Ok(r) => summary.push(format!(
                "{ty}: ok, {}/{} compared prompts within {MAX_LOGPROB_DIFF}, max |logprob diff| {:.4}",
                r.n_close, r.n_compared, r.worst
            )),
            Err(_) => {
                failed.push(ty);
                summary.push(format!("{ty}: FAILED (above)"));
            }
        }
    }
    eprintln!("{}", summary.join("\n"));
    assert!(failed.is_empty(), "variants that differ: {failed:?}");
}

/// What [`check_up_to_near_ties`] measured.
struct NearTieReport {
    n_prompts: usize,
    /// Prompts whose first step is not already a near-tie (so at least one step compared).
    n_compared: usize,
    /// Prompts with every compared step within [`MAX_LOGPROB_DIFF`].
    n_close: usize,
    worst: f64,
}

/// Greedy decoding of `model` against llama.cpp's reference (scripts/record_reference.py),
/// compared only up to the first step where llama.cpp's own top-1 margin is under
/// [`NEAR_TIE`]. Up to there, on every prompt, our top-1 must be llama.cpp's and its
/// log-probability within [`NEAR_TIE`] of llama.cpp's (panics otherwise); returns how many
/// prompts stay within [`MAX_LOGPROB_DIFF`] at every compared step, after printing them all.
fn check_up_to_near_ties(model: &std::path::Path, reference: &std::path::Path) -> NearTieReport {
    let engine = Engine::load(model, &EngineOptions::default()).expect("load");
    let data: Value =
        serde_json::from_slice(&std::fs::read(reference).expect("reference")).unwrap();
    let cases = data["cases"].as_array().unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let (mut n_steps, mut worst, mut n_close, mut n_compared) = (0usize, 0f64, 0usize, 0usize);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want_top1 = ids(&case["top1"]);
        let want_lp = floats(&case["top1_logprob"]);
        let margin = floats(&case["margin"]);
        let tokens = engine.tokenizer.encode(prompt, true).unwrap();
        assert_eq!(
            tokens,
            ids(&case["prompt_tokens"]),
            "prompt tokens of {prompt:?}"
        );
        let cut = margin
            .iter()
            .position(|&m| m < NEAR_TIE)
            .unwrap_or(margin.len());
        let mut session = engine.new_session(2048).unwrap();
        engine.eval(&mut session, &tokens).unwrap();
        let mut case_worst = 0f64;
        for step in 0..cut {
            let (ours, ours_lp) = top1_logprob(session.logits());
            let diff = (ours_lp - want_lp[step]).abs();
            case_worst = case_worst.max(diff);
            if ours != want_top1[step] || diff > NEAR_TIE {
                failures.push(format!(
                    "{prompt:?} step {step}: ours {ours} ({ours_lp:.4}), llama.cpp {} ({:.4}, margin {:.3})",
                    want_top1[step], want_lp[step], margin[step]
                ));
                break;
            }
            n_steps += 1;
            engine.eval(&mut session, &[want_top1[step]]).unwrap();
        }
        worst = worst.max(case_worst);
        n_compared += usize::from(cut > 0);
        if cut > 0 && case_worst <= MAX_LOGPROB_DIFF {
            n_close += 1;
        }
        report.push(format!(
            "{prompt:?}: {cut} steps compared, max |logprob diff| {case_worst:.4}"
        ));
    }
    eprintln!(
        "{}\n{n_steps} steps compared; max |logprob diff| {worst:.4}; {n_close} of {} prompts within {MAX_LOGPROB_DIFF} at every step",
        report.join("\n"),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ before llama.cpp's first near-tie:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    NearTieReport {
        n_prompts: cases.len(),
        n_compared,
        n_close,
        worst,
    }
}

/// Our top-1 token and its log-probability, log-softmax computed in f64.
fn top1_logprob(logits: &[f32]) -> (u32, f64) {
    let (best, &max) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .unwrap();
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max as f64).exp()).sum();
    (best as u32, -sum.ln())
}
