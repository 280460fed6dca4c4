//! The native and candle backends on the real test models, on the CPU: the same prompt gives
//! the same logits within a bound, and greedy decoding gives the same tokens.
//!
//! The two are independent below the file reader's hyper-parameters: candle reads the weights
//! with its own GGUF reader and runs its own kernels (candle-transformers' quantized llama for
//! SmolLM2; our Gemma 3 forward pass written over candle's ops, since candle-transformers'
//! is wrong, see backend/candle/decoder.rs).
//!
//! Why the logits differ at all:
//! - the native KV cache holds f16-rounded keys and values (as llama.cpp's default cache);
//!   candle keeps f32. That 2^-11 relative change in every cached value is the largest term;
//! - both quantize activations to 8 bits before each quantized matrix product, so a small
//!   upstream difference that moves a value across a rounding boundary changes it by a whole
//!   step (1/127 of its block's largest value), and this compounds over 30 (SmolLM2) or 18
//!   (Gemma 3) layers;
//! - summation order in dot products, softmax and norms, and GELU through ggml's f16 table
//!   (native) against candle's tanh formula.
//!
//! Bounds, with what 4 prompts x 32 steps per model measured (each run prints its own):
//! - the log-probability of candle's top token, under each backend: within 0.35 nat (measured
//!   at most 0.21 on SmolLM2, 0.17 on Gemma 3). This is the tight check: a wrong norm, mask,
//!   RoPE layout or scale moves it by nats (candle-transformers' own Gemma 3 is 2.1 nats off);
//! - every logit: within 8% of the logit spread (max - min over the vocabulary; measured 3.6%
//!   and 4.5%: the tails of a 49k or 262k vocabulary move most);
//! - greedy: each backend is fed candle's token. Wherever both backends' top-2 margins exceed
//!   0.6 nat the two must pick the same token (measured: they differed only at margins under
//!   0.42). A closer step is a near-tie either may break (greedy_llamacpp.rs shows llama.cpp's
//!   own CPU paths disagreeing at such steps); at least 60% of steps must be decisive.

mod common;

use backstop_engine::backend::{BackendKind, DeviceSpec};
use backstop_engine::generate::{Engine, EngineOptions};

const REL_TOL: f32 = 0.08;
const LOGPROB_TOL: f32 = 0.35;
const DECISIVE_MARGIN: f32 = 0.6;
const N_STEPS: usize = 32;

fn load(file: &str, backend: BackendKind) -> Engine {
    let opts = EngineOptions {
        threads: 2,
        backend,
        device: DeviceSpec::Cpu,
        ..EngineOptions::default()
    };
    Engine::load(&common::model_path(file), &opts).expect("the model loads")
}

fn top2(v: &[f32]) -> (u32, f32) {
    let (mut a, mut b) = (0usize, usize::MAX);
    for i in 1..v.len() {
        if v[i] > v[a] {
            b = a;
            a = i;
        } else if b == usize::MAX || v[i] > v[b] {
            b = i;
        }
    }
    (a as u32, v[a] - v[b])
}

/// log softmax(v)[i], summed in f64.
fn log_softmax_at(v: &[f32], i: usize) -> f32 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z = v.iter().map(|x| ((x - m) as f64).exp()).sum::<f64>().ln();
    ((v[i] - m) as f64 - z) as f32
}

fn spread(v: &[f32]) -> f32 {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    hi - lo
}

fn compare(file: &str, prompts: &[&str]) {
    let native = load(file, BackendKind::Native);
    let candle = load(file, BackendKind::Candle);
    let (mut worst_rel, mut worst_lp) = (0f32, 0f32);
    let (mut decisive, mut ties, mut steps) = (0usize, 0usize, 0usize);
    for prompt in prompts {
        let ids = native.tokenizer.encode(prompt, true).unwrap();
        let mut sn = native.new_session(256).unwrap();
        let mut sc = candle.new_session(256).unwrap();
        native.eval(&mut sn, &ids).unwrap();
        candle.eval(&mut sc, &ids).unwrap();
        let mut text = String::new();
        for step in 0..N_STEPS {
            let (ours, theirs) = (sn.logits(), sc.logits());
            assert_eq!(ours.len(), theirs.len());
            let s = spread(theirs);
            let diff = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst_rel = worst_rel.max(diff / s);
            assert!(
                diff <= REL_TOL * s,
                "{file} {prompt:?} step {step}: max |logit diff| {diff} > {REL_TOL} x spread {s}"
            );
            let (want, margin) = top2(theirs);
            let (got, margin_ours) = top2(ours);
            let w = want as usize;
            let lp = (log_softmax_at(ours, w) - log_softmax_at(theirs, w)).abs();
            worst_lp = worst_lp.max(lp);
            assert!(
                lp <= LOGPROB_TOL,
                "{file} {prompt:?} step {step}: log-prob of token {want} differs by {lp} nat after {text:?}"
            );
            steps += 1;
            if margin.min(margin_ours) > DECISIVE_MARGIN {
                decisive += 1;
                assert_eq!(
                    got, want,
                    "{file} {prompt:?} greedy step {step}: native {got}, candle {want} (margins {margin_ours}, {margin}) after {text:?}"
                );
            } else if got != want {
                ties += 1;
            }
            text.push_str(&String::from_utf8_lossy(
                native.tokenizer.token_piece(want, false),
            ));
            native.eval(&mut sn, &[want]).unwrap();
            candle.eval(&mut sc, &[want]).unwrap();
        }
        eprintln!("{file} {prompt:?} -> {text:?}");
    }
    eprintln!(
        "{file}: top-token log-prob differs by at most {worst_lp:.3} nat, any logit by {worst_rel:.3e} of the spread; greedy tokens equal at {decisive} of {steps} steps with margins over {DECISIVE_MARGIN}, {ties} near-ties broken differently"
    );
    assert!(
        decisive * 5 >= steps * 3,
        "only {decisive} of {steps} steps were decisive"
    );
}

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 4, 5,",
];

#[test]
fn smollm2_native_and_candle_agree() {
    compare(common::SMOLLM2, &PROMPTS);
}

#[test]
fn gemma3_native_and_candle_agree() {
    compare(common::GEMMA3, &PROMPTS);
}

/// The case candle-transformers' own quantized_gemma3 gets wrong by 2.1 nats: llama.cpp picks
/// " the capital" (greedy_llamacpp.rs checks native against llama.cpp on this prompt).
#[test]
fn gemma3_candle_continues_the_capital_of_france() {
    let e = load(common::GEMMA3, BackendKind::Candle);
    let mut s = e.new_session(64).unwrap();
    let ids = e
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    e.eval(&mut s, &ids).unwrap();
    let (id, _) = top2(s.logits());
    let piece = String::from_utf8_lossy(e.tokenizer.token_piece(id, false)).into_owned();
    assert_eq!(piece, " the");
    e.eval(&mut s, &[id]).unwrap();
    let (id, _) = top2(s.logits());
    let piece = String::from_utf8_lossy(e.tokenizer.token_piece(id, false)).into_owned();
    assert_eq!(piece, " capital");
}

/// A session rewound to a shorter prefix (the server reuses cached prefixes this way) gives
/// the logits a fresh session gives, on both kinds of candle model state: candle-transformers'
/// (reset and replay) and our own (rewritten in place).
#[test]
fn candle_sessions_rewind_to_a_prefix() {
    for file in [common::SMOLLM2, common::GEMMA3] {
        let e = load(file, BackendKind::Candle);
        let a = e
            .tokenizer
            .encode("The capital of France is", true)
            .unwrap();
        let b = e.tokenizer.encode("The capital of Italy is", true).unwrap();
        let common_len = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(common_len > 1 && common_len < b.len());
        let mut s = e.new_session(64).unwrap();
        e.eval(&mut s, &a).unwrap();
        s.truncate(common_len);
        e.eval(&mut s, &b[common_len..]).unwrap();
        let mut fresh = e.new_session(64).unwrap();
        e.eval(&mut fresh, &b).unwrap();
        let d = s
            .logits()
            .iter()
            .zip(fresh.logits())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-3 * spread(fresh.logits()),
            "{file}: rewound session differs by {d}"
        );
        assert_eq!(s.history(), &b[..]);
    }
}
