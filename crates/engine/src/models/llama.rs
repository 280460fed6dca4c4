//! The llama family (Llama 2/3, SmolLM, Mistral, TinyLlama): pre-norm blocks with RMSNorm, GQA
//! attention with "normal" (adjacent-pair) RoPE, SwiGLU MLP, optionally tied output embeddings.
//! Every default of [`base_config`] is llama's, so this file only loads.

use super::decoder::Decoder;
use super::loader::{base_config, load_io, load_layers, GateUp};
use super::weights::SharedFile;
use super::ModelError;

pub fn from_gguf(file: SharedFile) -> Result<Decoder, ModelError> {
    let cfg = base_config(&file, "llama")?;
    let (tok_embd, output_norm, output) = load_io(&file, &cfg)?;
    let layers = load_layers(&file, &cfg, GateUp::Separate, &[])?;
    Ok(Decoder::new(
        file,
        cfg,
        tok_embd,
        output_norm,
        output,
        layers,
    ))
}
