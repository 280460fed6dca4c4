//! Phi-3 (mini/medium): the llama block layout with fused tensors, split here into views of the
//! same bytes: `attn_qkv` holds Q, K and V's rows one after the other, and `ffn_up` holds the
//! gate's `n_ff` rows followed by the up projection's. RoPE is NEOX-style (llama.cpp's
//! `LLAMA_ROPE_TYPE_NEOX` for this architecture) over `rope.dimension_count` dimensions.
//!
//! The 128k-context variants carry LongRoPE frequency factors (`rope_factors_long/short`); we do
//! not implement them yet, and refuse such files rather than produce wrong text. Files without
//! them (the 4k models) need nothing more. A sliding window in the metadata is ignored, as
//! llama.cpp ignores it for this architecture.

use super::decoder::Decoder;
use super::loader::{base_config, load_io, load_layers, GateUp};
use super::weights::SharedFile;
use super::ModelError;
use crate::ops::rope::RopeLayout;

pub fn from_gguf(file: SharedFile) -> Result<Decoder, ModelError> {
    let mut cfg = base_config(&file, "phi3")?;
    cfg.rope_layout = RopeLayout::Neox;
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if file.tensor(name).is_some() {
            return Err(ModelError::Unsupported {
                arch: "phi3".into(),
                what: format!("{name} (LongRoPE frequency factors)"),
            });
        }
    }
    let (tok_embd, output_norm, output) = load_io(&file, &cfg)?;
    let layers = load_layers(&file, &cfg, GateUp::Fused, &[])?;
    Ok(Decoder::new(
        file,
        cfg,
        tok_embd,
        output_norm,
        output,
        layers,
    ))
}
