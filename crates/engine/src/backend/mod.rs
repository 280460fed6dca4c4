//! Which implementation runs the forward pass, and where.
//!
//! - `native`: our own kernels on the CPU ([`crate::models::Decoder`]), the default.
//! - `candle`: candle's tensors on a candle device (CPU, CUDA, Metal): candle-transformers'
//!   quantized models for llama, qwen2, qwen3 and phi3, and our own Gemma 3 over candle's ops
//!   (see [`candle::gemma3`] for why). It gives GPU support and, on CPU, an independent second
//!   implementation to check our numbers against.
//!
//! Both share everything around the forward pass: GGUF checks, tokenizer, chat template,
//! sampling, the generation loop and the server. A [`Session`] is the per-conversation state
//! of whichever backend made it.

pub mod candle;

use std::fmt;
use std::str::FromStr;

use crate::models;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    #[default]
    Native,
    Candle,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Candle => "candle",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(BackendKind::Native),
            "candle" => Ok(BackendKind::Candle),
            _ => Err(format!("unknown backend {s:?} (expected native or candle)")),
        }
    }
}

/// A compute device, as `--device` names it: `cpu`, `cuda`, `cuda:N` or `metal`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Metal,
}

impl DeviceSpec {
    pub fn is_cpu(self) -> bool {
        self == DeviceSpec::Cpu
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "metal" => Ok(DeviceSpec::Metal),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?} (expected cpu, cuda, cuda:N or metal)"
                )),
            },
        }
    }
}

/// Per-conversation state: the KV cache and the logits of the last evaluated token.
pub enum Session {
    Native(models::Session),
    Candle(candle::CandleSession),
}

impl Session {
    /// Tokens this session can hold.
    pub fn n_ctx(&self) -> usize {
        match self {
            Session::Native(s) => s.n_ctx,
            Session::Candle(s) => s.n_ctx,
        }
    }

    /// Tokens already evaluated (in the cache).
    pub fn n_past(&self) -> usize {
        self.history().len()
    }

    /// Token ids whose keys and values are in the cache, in order.
    pub fn history(&self) -> &[u32] {
        match self {
            Session::Native(s) => s.history(),
            Session::Candle(s) => s.history(),
        }
    }

    /// How many leading tokens of `prompt` the cache holds as a cold read of it would
    /// compute them, so they need not be run again (at most the common prefix).
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        match self {
            Session::Native(s) => s.reusable_prefix(prompt),
            Session::Candle(s) => s
                .history()
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count(),
        }
    }

    /// Forget everything after the first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        match self {
            Session::Native(s) => s.truncate(n),
            Session::Candle(s) => s.truncate(n),
        }
    }

    /// Cache positions that may occupy memory (see [`models::Session::resident`]); a
    /// candle session's cache grows with its tokens.
    pub fn resident(&self) -> usize {
        match self {
            Session::Native(s) => s.resident(),
            Session::Candle(s) => s.history().len(),
        }
    }

    /// Forget everything and return the cache's memory where the backend can.
    pub fn release_memory(&mut self) {
        match self {
            Session::Native(s) => s.release_memory(),
            Session::Candle(s) => s.truncate(0),
        }
    }

    /// Take the first `n` cached tokens of `src` instead of what this session holds, so a
    /// prompt sharing them need not recompute them. False (and nothing changed) where the
    /// backend cannot copy a cache or the two sessions are of different backends.
    pub fn copy_prefix(&mut self, src: &Session, n: usize) -> bool {
        match (self, src) {
            (Session::Native(d), Session::Native(s)) => {
                d.copy_prefix(s, n);
                true
            }
            _ => false,
        }
    }

    /// Logits of the last evaluated token (n_vocab values).
    pub fn logits(&self) -> &[f32] {
        match self {
            Session::Native(s) => &s.logits,
            Session::Candle(s) => &s.logits,
        }
    }

    pub fn logits_mut(&mut self) -> &mut [f32] {
        match self {
            Session::Native(s) => &mut s.logits,
            Session::Candle(s) => &mut s.logits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("metal", DeviceSpec::Metal),
        ] {
            assert_eq!(s.parse::<DeviceSpec>(), Ok(d));
        }
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("expected cpu, cuda"), "{e}");
        }
        assert_eq!("candle".parse::<BackendKind>(), Ok(BackendKind::Candle));
        assert!("cuda".parse::<BackendKind>().is_err());
    }
}
