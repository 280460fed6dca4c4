//! Llama, Qwen 2, Qwen 3 and Phi-3 against an independent implementation: candle-transformers
//! 0.11's `quantized_llama`, `quantized_qwen2`, `quantized_qwen3` and `quantized_phi3` on CPU,
//! reading the same GGUF file.
//!
//! Each test writes a tiny model with random weights in llama.cpp's GGUF conventions (tensor
//! names, `{arch}.*` metadata, a small gpt2-style vocabulary), loads it with our `Engine` (so
//! the tokenizer and family loader run as for a real file) and with candle, and compares:
//! - the logits after a 7-token prompt and after each of 16 greedy decode steps;
//! - the greedy tokens themselves.
//!
//! Tolerance, in units of the logit spread (max - min over the vocabulary), with the measured
//! values printed by each run:
//! - F32 matrices (bound 2e-3, measured 5e-4 to 7e-4): both engines then multiply in f32 and
//!   differ by summation order and by our K/V cache holding f16-rounded values (llama.cpp's F16
//!   cache; candle keeps f32), a 2^-11 = 4.9e-4 relative change that passes through to the
//!   logits about unchanged. This is the tight check: a wrong RoPE layout, a missing bias or
//!   norm, or swapped halves of a fused tensor move logits by a large part of the spread.
//! - Q8_0 matrices (bound 3e-2, measured 1.2e-2 to 1.4e-2): both engines quantize activations
//!   to Q8_0 the same way (checked to the byte in quant_candle.rs), but the f16 cache's small
//!   perturbation moves some activations across a rounding boundary, and each such flip is a
//!   whole quantization step (1/127 of the block's largest value); over ~10 matrix products
//!   this adds up to about 1% of the spread. This is the realistic check (what files carry).
//!
//! Greedy tokens must agree at every step where candle's top-2 margin exceeds the bound; a
//! closer call is a tie either side may break, and the step continues with candle's token.
//! Enough steps must be decisive that the greedy comparison means something.

use std::path::{Path, PathBuf};

use backstop_engine::backend::BackendKind;
use backstop_engine::generate::{Engine, EngineOptions};
use backstop_engine::gguf::keys;
use backstop_engine::gguf::writer::GgufWriter;
use backstop_engine::quant::{self, GgmlType};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const N_EMBD: usize = 64;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const N_FF: usize = 128;
const N_LAYER: usize = 2;
const N_CTX: usize = 64;
const PROMPT: [u32; 7] = [5, 71, 200, 13, 256, 99, 42];
const N_STEPS: usize = 16;
/// Largest logit difference allowed, as a fraction of the logit spread (see the module doc).
const REL_TOL_F32: f32 = 2e-3;
const REL_TOL_Q8_0: f32 = 3e-2;

#[derive(Clone, Copy, PartialEq)]
enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Phi3,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
        }
    }
    /// Qwen 3 takes its head size from `attention.key_length`; make it differ from
    /// n_embd / n_head so that the test shows we read it.
    fn head_dim(self) -> usize {
        match self {
            Arch::Qwen3 => 32,
            _ => N_EMBD / N_HEAD,
        }
    }
}

/// gpt2-style byte-level vocabulary: the 256 byte symbols, three merges, one special token.
fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.
    let mut tokens = Vec::new();
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
        tokens.push(c.to_string());
    }
    let merges = vec!["Ġ t".to_string(), "h e".to_string(), "Ġt he".to_string()];
    tokens.extend(["Ġt", "he", "Ġthe"].map(String::from));
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1i32; tokens.len()];
    *types.last_mut().unwrap() = 3;
    (tokens, types, merges)
}

struct Builder {
    rng: StdRng,
    w: GgufWriter,
    /// Storage type of the weight matrices: F32 or Q8_0.
    ty: GgmlType,
}

impl Builder {
    fn uniform(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect()
    }

    /// A (n_out, n_in) matrix in `self.ty`, entries uniform with unit-variance outputs.
    fn matrix(&mut self, name: &str, n_in: usize, n_out: usize) {
        let v = self.uniform(n_in * n_out, (3.0 / n_in as f32).sqrt());
        let dims = [n_in as u64, n_out as u64];
        if self.ty == GgmlType::F32 {
            self.w.add_f32_tensor(name, &dims, &v).unwrap();
            return;
        }
        let mut bytes = vec![0u8; v.len() / self.ty.block_size() * self.ty.type_size()];
        quant::quantize_row(self.ty, &v, &mut bytes).unwrap();
        self.w.add_tensor(name, &dims, self.ty, bytes).unwrap();
    }

    /// A norm weight near 1 or a bias near 0, in F32.
    fn vector(&mut self, name: &str, n: usize, around: f32) {
        let v: Vec<f32> = self.uniform(n, 0.2).iter().map(|x| x + around).collect();
        self.w.add_f32_tensor(name, &[n as u64], &v).unwrap();
    }
}

/// A change to the generated file, for the tests of what the loader refuses.
#[derive(Clone, Copy)]
enum Edit<'a> {
    None,
    /// Leave out this tensor.
    Drop(&'a str),
    /// Add Phi-3's LongRoPE factors (`rope_factors_long/short.weight`).
    AddRopeFactors,
    /// Add Llama 3.1-style per-pair RoPE frequency factors (`rope_freqs.weight`).
    RopeFreqs(&'a [f32]),
}

/// Write a tiny `arch` model with random weights, changed by `edit`.
fn write_model(arch: Arch, ty: GgmlType, seed: u64, edit: Edit) -> PathBuf {
    let a = arch.name();
    let hd = arch.head_dim();
    let (qd, kvd) = (N_HEAD * hd, N_HEAD_KV * hd);
    let (tokens, types, merges) = vocab();
    let n_vocab = tokens.len();
    let mut b = Builder {
        rng: StdRng::seed_from_u64(seed),
        w: GgufWriter::new(),
        ty,
    };
    let k = |s: &str| format!("{a}.{s}");
    b.w.add(keys::GENERAL_ARCHITECTURE, a)
        .add(k("context_length"), N_CTX as u32)
        .add(k("embedding_length"), N_EMBD as u32)
        .add(k("block_count"), N_LAYER as u32)
        .add(k("feed_forward_length"), N_FF as u32)
        .add(k("attention.head_count"), N_HEAD as u32)
        .add(k("attention.head_count_kv"), N_HEAD_KV as u32)
        .add(k("attention.key_length"), hd as u32)
        .add(k("attention.value_length"), hd as u32)
        .add(k("attention.layer_norm_rms_epsilon"), 1e-6f32)
        .add(k("rope.freq_base"), 10_000f32)
        .add(k("rope.dimension_count"), hd as u32)
        .add(keys::TOKENIZER_MODEL, "gpt2")
        .add(keys::TOKENIZER_PRE, "qwen2")
        .add(keys::TOKENIZER_TOKENS, tokens)
        .add(keys::TOKENIZER_TOKEN_TYPE, types)
        .add(keys::TOKENIZER_MERGES, merges)
        .add(keys::TOKENIZER_BOS_ID, (n_vocab - 1) as u32)
        .add(keys::TOKENIZER_EOS_ID, (n_vocab - 1) as u32)
        .add(keys::TOKENIZER_ADD_BOS, false);
    b.matrix("token_embd.weight", N_EMBD, n_vocab);
    b.vector("output_norm.weight", N_EMBD, 1.0);
    // Qwen's small models tie the output to the embeddings; Phi-3 has its own (and candle's
    // phi3 requires it).
    if arch == Arch::Phi3 {
        b.matrix("output.weight", N_EMBD, n_vocab);
    }
    for l in 0..N_LAYER {
        let t = |s: &str| format!("blk.{l}.{s}");
        b.vector(&t("attn_norm.weight"), N_EMBD, 1.0);
        b.vector(&t("ffn_norm.weight"), N_EMBD, 1.0);
        b.matrix(&t("attn_output.weight"), qd, N_EMBD);
        b.matrix(&t("ffn_down.weight"), N_FF, N_EMBD);
        if arch == Arch::Phi3 {
            b.matrix(&t("attn_qkv.weight"), N_EMBD, qd + 2 * kvd);
            b.matrix(&t("ffn_up.weight"), N_EMBD, 2 * N_FF);
        } else {
            b.matrix(&t("attn_q.weight"), N_EMBD, qd);
            b.matrix(&t("attn_k.weight"), N_EMBD, kvd);
            b.matrix(&t("attn_v.weight"), N_EMBD, kvd);
            b.matrix(&t("ffn_gate.weight"), N_EMBD, N_FF);
            b.matrix(&t("ffn_up.weight"), N_EMBD, N_FF);
        }
        if arch == Arch::Qwen2 {
            b.vector(&t("attn_q.bias"), qd, 0.0);
            b.vector(&t("attn_k.bias"), kvd, 0.0);
            b.vector(&t("attn_v.bias"), kvd, 0.0);
        }
        if arch == Arch::Qwen3 {
            b.vector(&t("attn_q_norm.weight"), hd, 1.0);
            b.vector(&t("attn_k_norm.weight"), hd, 1.0);
        }
    }
    let tag = match edit {
        Edit::None => "full".to_string(),
        Edit::Drop(name) => {
            b.w = rebuild_without(&b.w, name);
            format!("no-{name}")
        }
        Edit::AddRopeFactors => {
            for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
                b.vector(name, hd / 2, 1.0);
            }
            "rope-factors".to_string()
        }
        Edit::RopeFreqs(f) => {
            b.w.add_f32_tensor("rope_freqs.weight", &[f.len() as u64], f)
                .unwrap();
            format!(
                "rope-freqs-{}",
                f.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            )
        }
    };
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tiny-{a}-{seed}-{tag}-{}.gguf", std::process::id()));
    b.w.write_path(&path).unwrap();
    path
}

/// The same file minus one tensor (by re-reading the image; the writer has no removal).
fn rebuild_without(w: &GgufWriter, drop: &str) -> GgufWriter {
    let bytes = w.to_bytes().unwrap();
    let h = backstop_engine::gguf::GgufHeader::parse(&bytes).unwrap();
    let mut out = GgufWriter::new();
    for (key, value) in &h.metadata {
        out.add(key.clone(), value.clone());
    }
    assert!(h.tensors.iter().any(|t| t.name == drop), "no tensor {drop}");
    for t in h.tensors.iter().filter(|t| t.name != drop) {
        let data = h.tensor_data(&bytes, t).unwrap().to_vec();
        out.add_tensor(t.name.clone(), &t.dims, t.ty, data).unwrap();
    }
    out
}

/// candle's model for `arch`, behind one interface: logits of the last of `ids` at `pos`.
enum Candle {
    Llama(candle_transformers::models::quantized_llama::ModelWeights),
    Qwen2(candle_transformers::models::quantized_qwen2::ModelWeights),
    Qwen3(candle_transformers::models::quantized_qwen3::ModelWeights),
    Phi3(candle_transformers::models::quantized_phi3::ModelWeights),
}

impl Candle {
    fn load(arch: Arch, path: &Path) -> Candle {
        let mut f = std::fs::File::open(path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let dev = Device::Cpu;
        use candle_transformers::models as m;
        match arch {
            Arch::Llama => Candle::Llama(
                m::quantized_llama::ModelWeights::from_gguf(ct, &mut f, &dev).unwrap(),
            ),
            Arch::Qwen2 => Candle::Qwen2(
                m::quantized_qwen2::ModelWeights::from_gguf(ct, &mut f, &dev).unwrap(),
            ),
            Arch::Qwen3 => Candle::Qwen3(
                m::quantized_qwen3::ModelWeights::from_gguf(ct, &mut f, &dev).unwrap(),
            ),
            Arch::Phi3 => Candle::Phi3(
                m::quantized_phi3::ModelWeights::from_gguf(false, ct, &mut f, &dev).unwrap(),
            ),
        }
    }

    fn forward(&mut self, ids: &[u32], pos: usize) -> Vec<f32> {
        let x = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let y = match self {
            Candle::Llama(m) => m.forward(&x, pos),
            Candle::Qwen2(m) => m.forward(&x, pos),
            Candle::Qwen3(m) => m.forward(&x, pos),
            Candle::Phi3(m) => m.forward(&x, pos),
        }
        .unwrap();
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }
}

fn argmax_and_margin(v: &[f32]) -> (u32, f32) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    (idx[0] as u32, v[idx[0]] - v[idx[1]])
}

/// Compare our logits and greedy tokens with candle's on a random `arch` model whose matrices
/// are stored as `ty`; logits may differ by `rel_tol` times their spread (module doc).
fn compare_with_candle(arch: Arch, ty: GgmlType, seed: u64, rel_tol: f32) {
    compare_backend_with_candle(arch, ty, seed, rel_tol, BackendKind::Native);
}

fn compare_backend_with_candle(
    arch: Arch,
    ty: GgmlType,
    seed: u64,
    rel_tol: f32,
    backend: BackendKind,
) {
    let path = write_model(arch, ty, seed, Edit::None);
    let opts = EngineOptions {
        backend,
        ..EngineOptions::default()
    };
    let engine = Engine::load(&path, &opts).expect("our engine loads it");
    assert_eq!(engine.model.cfg.arch, arch.name());
    assert_eq!(engine.model.cfg.head_dim, arch.head_dim());
    let mut candle = Candle::load(arch, &path);
    let mut session = engine.new_session(N_CTX).unwrap();

    engine.eval(&mut session, &PROMPT).unwrap();
    let mut theirs = candle.forward(&PROMPT, 0);
    let (mut worst, mut decisive, mut ties) = (0f32, 0usize, 0usize);
    for step in 0..=N_STEPS {
        let ours = session.logits();
        assert_eq!(ours.len(), theirs.len());
        let lo = theirs.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = theirs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let spread = hi - lo;
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff / spread);
        assert!(
            diff <= rel_tol * spread,
            "{} step {step}: max |logit diff| {diff} > {rel_tol} x spread {spread}",
            arch.name()
        );
        if step == N_STEPS {
            break;
        }
        let (want, margin) = argmax_and_margin(&theirs);
        let (got, _) = argmax_and_margin(ours);
        if margin > rel_tol * spread {
            decisive += 1;
            assert_eq!(
                got,
                want,
                "{} greedy step {step} (candle margin {margin})",
                arch.name()
            );
        } else if got != want {
            ties += 1;
        }
        engine.eval(&mut session, &[want]).unwrap();
        // The token just chosen sits at position prompt + step.
        theirs = candle.forward(&[want], PROMPT.len() + step);
    }
    eprintln!(
        "{} ({}, {backend} backend): max |logit diff| / spread = {worst:.2e} over {} positions; greedy tokens equal at {decisive} decisive steps, {ties} near-ties broken differently",
        arch.name(),
        ty.name(),
        N_STEPS + 1
    );
    // Most steps must actually test the greedy choice, not be waved through as near-ties (the
    // Q8_0 bound is wider, so fewer of its steps are clear of it).
    let min_decisive = if ty == GgmlType::F32 {
        N_STEPS * 3 / 4
    } else {
        N_STEPS / 2
    };
    assert!(decisive >= min_decisive, "only {decisive} decisive steps");
    std::fs::remove_file(&path).ok();
}

#[test]
fn qwen2_matches_candle() {
    compare_with_candle(Arch::Qwen2, GgmlType::F32, 2, REL_TOL_F32);
    compare_with_candle(Arch::Qwen2, GgmlType::Q8_0, 2, REL_TOL_Q8_0);
}

#[test]
fn llama_matches_candle() {
    compare_with_candle(Arch::Llama, GgmlType::F32, 1, REL_TOL_F32);
    compare_with_candle(Arch::Llama, GgmlType::Q8_0, 1, REL_TOL_Q8_0);
}

/// Llama 3.1+ files scale RoPE for long contexts by per-pair frequency factors in
/// `rope_freqs.weight`. Native applies them (ggml's formula is checked in ops/rope.rs); factors
/// of 1 change nothing, others change the logits; an unusable factor is refused; the candle
/// backend, whose llama ignores them, refuses the file with the reason.
#[test]
fn llama_rope_frequency_factors_are_applied_checked_or_refused() {
    let logits = |edit: Edit| {
        let path = write_model(Arch::Llama, GgmlType::F32, 9, edit);
        let e = Engine::load(&path, &EngineOptions::default()).unwrap();
        let mut s = e.new_session(N_CTX).unwrap();
        e.eval(&mut s, &PROMPT).unwrap();
        std::fs::remove_file(&path).ok();
        s.logits().to_vec()
    };
    let half = N_EMBD / N_HEAD / 2;
    let plain = logits(Edit::None);
    assert_eq!(logits(Edit::RopeFreqs(&vec![1.0; half])), plain);
    let llama3: Vec<f32> = (0..half).map(|i| 1.0 + i as f32).collect();
    let scaled = logits(Edit::RopeFreqs(&llama3));
    let diff = plain
        .iter()
        .zip(&scaled)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-3, "factors had no effect ({diff})");

    let mut zero = llama3.clone();
    zero[1] = 0.0;
    for (edit, backend, expect) in [
        (
            Edit::RopeFreqs(&zero),
            BackendKind::Native,
            "rope_freqs.weight",
        ),
        (
            Edit::RopeFreqs(&llama3[..half - 1]),
            BackendKind::Native,
            "rope_freqs.weight",
        ),
        (
            Edit::RopeFreqs(&llama3),
            BackendKind::Candle,
            "rope_freqs.weight",
        ),
    ] {
        let path = write_model(Arch::Llama, GgmlType::F32, 9, edit);
        let opts = EngineOptions {
            backend,
            ..EngineOptions::default()
        };
        let err = match Engine::load(&path, &opts) {
            Ok(_) => panic!("{path:?} loaded on {backend}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expect), "{err}");
        std::fs::remove_file(&path).ok();
    }
}

/// The candle backend runs Qwen 2 on our own forward pass over candle's ops (its
/// candle-transformers model cannot give each session its own cache). Against
/// candle-transformers' model both use f32 caches and candle's matrix kernels, so they differ
/// at most by summation order in attention and RoPE tables; measured: bit-identical logits.
#[test]
fn qwen2_candle_backend_matches_candle_transformers() {
    compare_backend_with_candle(Arch::Qwen2, GgmlType::F32, 5, 1e-5, BackendKind::Candle);
    compare_backend_with_candle(Arch::Qwen2, GgmlType::Q8_0, 5, 1e-5, BackendKind::Candle);
}

#[test]
fn qwen3_matches_candle() {
    compare_with_candle(Arch::Qwen3, GgmlType::F32, 3, REL_TOL_F32);
    compare_with_candle(Arch::Qwen3, GgmlType::Q8_0, 3, REL_TOL_Q8_0);
}

#[test]
fn phi3_matches_candle() {
    compare_with_candle(Arch::Phi3, GgmlType::F32, 4, REL_TOL_F32);
    compare_with_candle(Arch::Phi3, GgmlType::Q8_0, 4, REL_TOL_Q8_0);
}

/// What a family requires is required: a Qwen 2 file without a Q/K/V bias or a Qwen 3 file
/// without its key norm is refused with the tensor's name, not run as llama; a Phi-3 file
/// without `attn_qkv` needs the separate `attn_q` (llama.cpp accepts either), and one with
/// LongRoPE factors is refused as unsupported rather than run with plain RoPE.
#[test]
fn families_refuse_files_missing_what_they_need() {
    for (arch, edit, expect) in [
        (
            Arch::Qwen2,
            Edit::Drop("blk.1.attn_k.bias"),
            "blk.1.attn_k.bias",
        ),
        (
            Arch::Qwen3,
            Edit::Drop("blk.0.attn_k_norm.weight"),
            "blk.0.attn_k_norm.weight",
        ),
        (
            Arch::Phi3,
            Edit::Drop("blk.0.attn_qkv.weight"),
            "blk.0.attn_q.weight",
        ),
        (
            Arch::Phi3,
            Edit::AddRopeFactors,
            "rope_factors_long.weight (LongRoPE frequency factors), which is not supported",
        ),
    ] {
        let path = write_model(arch, GgmlType::Q8_0, 7, edit);
        let err = match Engine::load(&path, &EngineOptions::default()) {
            Ok(_) => panic!("{}: {path:?} loaded", arch.name()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expect), "{}: {err}", arch.name());
        std::fs::remove_file(&path).ok();
    }
}
