//! The candle backend: candle-transformers' quantized llama, qwen3 and phi3, and our own forward
//! pass over candle's ops for Gemma 3 and Qwen 2 ([`decoder`] says why), on a candle device.
//!
//! The file is opened and checked by our own loader first (the native [`Decoder`] maps it
//! without reading the weights), so a file that candle could not run correctly is refused
//! with a reason before candle reads anything ([`check_supported`]).
//!
//! candle-transformers' models keep their KV cache inside the model value. Its weights are
//! reference-counted, so a session is a clone of the loaded model; rewinding a session to a
//! shorter prefix (which those models cannot do) resets the clone and replays the kept tokens
//! on the next forward call.

pub mod decoder;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_phi3, quantized_qwen3};
use thiserror::Error;

use super::DeviceSpec;
use crate::models::{Decoder, DecoderConfig};
use crate::ops::rope::RopeLayout;

#[derive(Debug, Error)]
pub enum CandleError {
    #[error("the candle backend cannot run this file: {0}")]
    Unsupported(String),
    #[error("--device {device} needs a backstop built with `--features {feature}`; this build has no {feature} support")]
    NotBuilt {
        device: DeviceSpec,
        feature: &'static str,
    },
    #[error("cannot use device {device}: {why}")]
    NoDevice { device: DeviceSpec, why: String },
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: String },
    #[error("candle: {0}")]
    Candle(String),
    #[error("candle returned {got} logits, the vocabulary has {n_vocab}")]
    BadLogits { got: usize, n_vocab: usize },
}

impl From<candle_core::Error> for CandleError {
    fn from(e: candle_core::Error) -> Self {
        CandleError::Candle(first_line(&e))
    }
}

/// candle appends a multi-line backtrace to its errors when RUST_BACKTRACE is set; a user
/// gets the message only.
fn first_line(e: &candle_core::Error) -> String {
    let e = match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.as_ref(),
        e => e,
    };
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Tokens per forward call during prefill, as the native backend does.
const N_UBATCH: usize = crate::models::decoder::N_UBATCH;

enum Family {
    Llama(quantized_llama::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
    /// Gemma 3 and Qwen 2.
    Own(decoder::CandleDecoder),
}

pub struct CandleModel {
    pub device: DeviceSpec,
    dev: Device,
    n_vocab: usize,
    /// Longest context the model's tables allow (candle-transformers' llama precomputes RoPE
    /// for 4096 positions; the others for the training context).
    max_ctx: usize,
    family: Family,
}

enum State {
    /// A clone of a candle-transformers model: its KV cache lives inside.
    Llama(quantized_llama::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
    Own(decoder::Cache),
}

pub struct CandleSession {
    pub n_ctx: usize,
    history: Vec<u32>,
    pub logits: Vec<f32>,
    state: State,
    /// The model's internal cache holds more than `history` (after a rewind): reset and replay.
    stale: bool,
}

impl CandleSession {
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    pub fn truncate(&mut self, n: usize) {
        if n < self.history.len() {
            self.history.truncate(n);
            // Our own cache is written by position, so it rewinds in place.
            if !matches!(self.state, State::Own(_)) {
                self.stale = true;
            }
        }
    }
}

/// Refuse, with the reason, a file whose architecture or hyper-parameters the candle models
/// would silently get wrong.
pub fn check_supported(cfg: &DecoderConfig, has_rope_freqs: bool) -> Result<(), CandleError> {
    let arch = cfg.arch.as_str();
    let unsupported = |what: String| Err(CandleError::Unsupported(what));
    if !matches!(arch, "llama" | "qwen2" | "qwen3" | "phi3" | "gemma3") {
        return unsupported(format!("architecture {arch}"));
    }
    if cfg.rope_freq_scale != 1.0 {
        return unsupported(format!(
            "{arch} with linear RoPE scaling (factor {}), which candle-transformers ignores",
            1.0 / cfg.rope_freq_scale
        ));
    }
    if has_rope_freqs {
        return unsupported(format!(
            "{arch} with per-dimension RoPE factors (rope_freqs.weight, Llama 3.1-style long context), which candle-transformers ignores"
        ));
    }
    if cfg.rope_dims != cfg.head_dim && arch != "llama" {
        return unsupported(format!(
            "{arch} with partial rotary embeddings ({} of {} dimensions)",
            cfg.rope_dims, cfg.head_dim
        ));
    }
    let expected_layout = match arch {
        "llama" => RopeLayout::Normal,
        _ => RopeLayout::Neox,
    };
    if cfg.rope_layout != expected_layout {
        return unsupported(format!("{arch} with a {:?} RoPE layout", cfg.rope_layout));
    }
    if cfg.final_logit_softcap.is_some() && arch != "gemma3" {
        return unsupported(format!("{arch} with final logit soft-capping"));
    }
    Ok(())
}

fn open_device(spec: DeviceSpec) -> Result<Device, CandleError> {
    let no_device = |e: candle_core::Error| CandleError::NoDevice {
        device: spec,
        why: first_line(&e),
    };
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if cfg!(feature = "cuda") {
                Device::new_cuda(n).map_err(no_device)
            } else {
                Err(CandleError::NotBuilt {
                    device: spec,
                    feature: "cuda",
                })
            }
        }
        DeviceSpec::Metal => {
            if cfg!(feature = "metal") {
                Device::new_metal(0).map_err(no_device)
            } else {
                Err(CandleError::NotBuilt {
                    device: spec,
                    feature: "metal",
                })
            }
        }
    }
}

impl CandleModel {
    /// Load `path` (already opened and checked as `model`) onto `device`.
    pub fn load(path: &Path, model: &Decoder, device: DeviceSpec) -> Result<Self, CandleError> {
        let cfg = &model.cfg;
        check_supported(cfg, model.file.tensor("rope_freqs.weight").is_some())?;
        let dev = open_device(device)?;
        let read_err = |why: String| CandleError::Read {
            path: path.display().to_string(),
            why,
        };
        let mut r = BufReader::new(File::open(path).map_err(|e| read_err(e.to_string()))?);
        let ct = gguf_file::Content::read(&mut r).map_err(|e| read_err(e.to_string()))?;
        let (family, max_ctx) = match cfg.arch.as_str() {
            "llama" => (
                Family::Llama(quantized_llama::ModelWeights::from_gguf(ct, &mut r, &dev)?),
                quantized_llama::MAX_SEQ_LEN.min(cfg.n_ctx_train),
            ),
            "qwen2" | "gemma3" => (
                Family::Own(decoder::CandleDecoder::load(cfg, &ct, &mut r, &dev)?),
                cfg.n_ctx_train,
            ),
            "qwen3" => (
                Family::Qwen3(quantized_qwen3::ModelWeights::from_gguf(ct, &mut r, &dev)?),
                cfg.n_ctx_train,
            ),
            "phi3" => (
                Family::Phi3(quantized_phi3::ModelWeights::from_gguf(
                    false, ct, &mut r, &dev,
                )?),
                cfg.n_ctx_train,
            ),
            other => return Err(CandleError::Unsupported(format!("architecture {other}"))),
        };
        Ok(Self {
            device,
            dev,
            n_vocab: cfg.n_vocab,
            max_ctx: max_ctx.max(1),
            family,
        })
    }

    /// The longest session this model can hold.
    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    fn fresh_state(&self, n_ctx: usize) -> Result<State, CandleError> {
        Ok(match &self.family {
            Family::Llama(m) => State::Llama(m.clone()),
            Family::Qwen3(m) => State::Qwen3(m.clone()),
            Family::Phi3(m) => State::Phi3(m.clone()),
            Family::Own(m) => State::Own(m.new_cache(n_ctx)?),
        })
    }

    /// A session for `n_ctx` tokens (at most [`Self::max_ctx`]).
    pub fn new_session(&self, n_ctx: usize) -> Result<CandleSession, CandleError> {
        let n_ctx = n_ctx.min(self.max_ctx);
        Ok(CandleSession {
            n_ctx,
            history: Vec::with_capacity(n_ctx),
            logits: vec![0.0; self.n_vocab],
            state: self.fresh_state(n_ctx)?,
            stale: false,
        })
    }

    /// Evaluate `tokens` after the session's history; leaves the last token's logits in
    /// `s.logits`. The caller has checked the context room and the token ids.
    pub fn forward(&self, s: &mut CandleSession, tokens: &[u32]) -> Result<(), CandleError> {
        let mut replay = Vec::new();
        if s.stale {
            s.state = self.fresh_state(s.n_ctx)?;
            s.stale = false;
            replay = std::mem::take(&mut s.history);
        }
        let mut last = None;
        for chunk in replay.chunks(N_UBATCH).chain(tokens.chunks(N_UBATCH)) {
            last = Some(self.step(&mut s.state, chunk, s.history.len())?);
            s.history.extend_from_slice(chunk);
        }
        if let Some(logits) = last {
            let v = logits
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            if v.len() != self.n_vocab {
                return Err(CandleError::BadLogits {
                    got: v.len(),
                    n_vocab: self.n_vocab,
                });
            }
            s.logits.copy_from_slice(&v);
        }
        Ok(())
    }

    fn step(&self, state: &mut State, chunk: &[u32], pos: usize) -> Result<Tensor, CandleError> {
        let input = || Tensor::new(chunk, &self.dev)?.unsqueeze(0);
        let out = match (&self.family, state) {
            (Family::Own(m), State::Own(cache)) => m.forward(chunk, pos, cache)?,
            (_, State::Llama(m)) => m.forward(&input()?, pos)?,
            (_, State::Qwen3(m)) => m.forward(&input()?, pos)?,
            (_, State::Phi3(m)) => m.forward(&input()?, pos)?,
            (_, State::Own(_)) => unreachable!("an own-decoder cache only comes from fresh_state"),
        };
        Ok(out)
    }
}
