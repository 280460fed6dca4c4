//! Qwen 3 (dense): the llama block layout with a per-head RMSNorm on queries and keys before
//! RoPE (in place of Qwen 2's biases), NEOX RoPE, and a head size given by
//! `attention.key_length` rather than `n_embd / n_head` (Qwen3-0.6B: 16 heads of 128 over 1024).

use super::decoder::Decoder;
use super::loader::{base_config, load_io, load_layers, GateUp, Required};
use super::weights::SharedFile;
use super::ModelError;
use crate::ops::rope::RopeLayout;

pub fn from_gguf(file: SharedFile) -> Result<Decoder, ModelError> {
    let mut cfg = base_config(&file, "qwen3")?;
    cfg.rope_layout = RopeLayout::Neox;
    let (tok_embd, output_norm, output) = load_io(&file, &cfg)?;
    let layers = load_layers(&file, &cfg, GateUp::Separate, &[Required::QkNorm])?;
    Ok(Decoder::new(
        file,
        cfg,
        tok_embd,
        output_norm,
        output,
        layers,
    ))
}
