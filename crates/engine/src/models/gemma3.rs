//! Gemma 3: the llama block layout plus embeddings scaled by sqrt(n_embd), per-head query/key
//! RMSNorm, post-attention and post-feed-forward norms, a GELU-tanh gated MLP, NEOX RoPE and
//! interleaved sliding-window layers (five local, one global, by default) whose RoPE base is
//! `rope.freq_base_swa` (10 000 when absent, as llama.cpp assumes). Norm weights already hold
//! Gemma's "1 + w" (llama.cpp's converter adds the one), so plain RMSNorm applies.

use super::decoder::{Activation, Decoder};
use super::loader::{base_config, fparam_or, hparam_or, load_io, load_layers, GateUp, Required};
use super::weights::SharedFile;
use super::ModelError;
use crate::gguf::keys::arch_key;
use crate::ops::rope::RopeLayout;

const ARCH: &str = "gemma3";

pub fn from_gguf(file: SharedFile) -> Result<Decoder, ModelError> {
    let mut cfg = base_config(&file, ARCH)?;
    cfg.rope_layout = RopeLayout::Neox;
    cfg.activation = Activation::GeluTanh;
    cfg.embed_scale = Some((cfg.n_embd as f32).sqrt());
    let window = if file
        .get(&arch_key(ARCH, "attention.sliding_window"))
        .is_some()
    {
        hparam_or(&file, ARCH, "attention.sliding_window", 0)?
    } else {
        0
    };
    if window > 0 {
        // Every `pattern`-th layer (the last of each group) attends globally.
        let pattern = hparam_or(&file, ARCH, "attention.sliding_window_pattern", 6)?;
        let swa_base = fparam_or(&file, ARCH, "rope.freq_base_swa", 10_000.0)?;
        for l in 0..cfg.n_layer {
            if l % pattern < pattern - 1 {
                cfg.layer_window[l] = Some(window);
                cfg.layer_rope_base[l] = Some(swa_base);
            }
        }
    }
    let softcap = fparam_or(&file, ARCH, "final_logit_softcapping", 0.0)?;
    cfg.final_logit_softcap = (softcap > 0.0).then_some(softcap);
    let (tok_embd, output_norm, output) = load_io(&file, &cfg)?;
    let layers = load_layers(
        &file,
        &cfg,
        GateUp::Separate,
        &[Required::QkNorm, Required::PostNorms],
    )?;
    Ok(Decoder::new(
        file,
        cfg,
        tok_embd,
        output_norm,
        output,
        layers,
    ))
}
