//! Qwen 2 (and 2.5): the llama block layout with biases on the Q, K and V projections and NEOX
//! RoPE (rotating the two halves of each head, as llama.cpp's `LLAMA_ROPE_TYPE_NEOX` does for
//! this architecture). Output embeddings are tied in the small models.

use super::decoder::Decoder;
use super::loader::{base_config, load_io, load_layers, GateUp, Required};
use super::weights::SharedFile;
use super::ModelError;
use crate::ops::rope::RopeLayout;

pub fn from_gguf(file: SharedFile) -> Result<Decoder, ModelError> {
    let mut cfg = base_config(&file, "qwen2")?;
    cfg.rope_layout = RopeLayout::Neox;
    let (tok_embd, output_norm, output) = load_io(&file, &cfg)?;
    let layers = load_layers(&file, &cfg, GateUp::Separate, &[Required::QkvBias])?;
    Ok(Decoder::new(
        file,
        cfg,
        tok_embd,
        output_norm,
        output,
        layers,
    ))
}
