//! Model families. Every supported architecture is a decoder-only transformer, so one
//! parameterised forward pass ([`decoder`]) is shared and each family file is a
//! `from_gguf` that reads its hyper-parameters and tensor names into a [`DecoderConfig`]
//! (llama.rs, gemma3.rs, qwen2.rs, qwen3.rs, phi3.rs). Differences between families are config fields,
//! not copied code.

pub mod decoder;
pub mod gemma3;
pub mod llama;
mod loader;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
mod weights;

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::gguf::{keys, GgufError, GgufFile};
use crate::quant::QuantError;

pub use decoder::{Batch, Decoder, DecoderConfig, Precision, Rows, Session};

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {0:?} (supported: llama, gemma3, qwen2, qwen3, phi3)")]
    UnsupportedArch(String),
    #[error("{arch} file uses {what}, which is not supported yet")]
    Unsupported { arch: String, what: String },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name}: {source}")]
    BadTensor { name: String, source: QuantError },
    #[error("tensor {name} has type {ty}, which cannot be used as {role}")]
    BadTensorType {
        name: String,
        ty: &'static str,
        role: &'static str,
    },
    #[error("bad hyper-parameter {key}: {why}")]
    BadHyperParam { key: String, why: String },
    #[error("context is full: {needed} tokens needed, context size is {n_ctx}")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("token id {id} is outside the vocabulary ({n_vocab} tokens)")]
    BadToken { id: u32, n_vocab: usize },
    #[error(
        "a batch of {seqs} sequences and {rows} tokens does not fit (at most {max_seqs} \
         sequences, {max_rows} tokens, at least one token each)"
    )]
    BadBatch {
        seqs: usize,
        rows: usize,
        max_seqs: usize,
        max_rows: usize,
    },
}

/// Open a GGUF file and build the model its `general.architecture` names.
pub fn load(path: &Path) -> Result<Decoder, ModelError> {
    let file = Arc::new(GgufFile::open(path)?);
    let arch = file.get_str(keys::GENERAL_ARCHITECTURE)?.to_string();
    let decoder = match arch.as_str() {
        "llama" => llama::from_gguf(file),
        "gemma3" => gemma3::from_gguf(file),
        "qwen2" => qwen2::from_gguf(file),
        "qwen3" => qwen3::from_gguf(file),
        "phi3" => phi3::from_gguf(file),
        _ => Err(ModelError::UnsupportedArch(arch)),
    }?;
    // Llama 3.1+ files carry long-context RoPE scaling as per-pair frequency factors.
    let factors = weights::load_vector_opt(
        &decoder.file,
        "rope_freqs.weight",
        decoder.cfg.rope_dims / 2,
    )?;
    if let Some(bad) = factors
        .iter()
        .flatten()
        .find(|f| !(f.is_finite() && **f > 0.0))
    {
        return Err(ModelError::BadHyperParam {
            key: "rope_freqs.weight".into(),
            why: format!("frequency factor {bad} is not a positive number"),
        });
    }
    Ok(decoder.with_rope_factors(factors))
}
