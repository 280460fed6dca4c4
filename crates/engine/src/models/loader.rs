//! What every family reads the same way: hyper-parameters under `{arch}.*` (validated and
//! bounded) and the tensors named alike in every llama-style file (`blk.N.attn_q.weight`, ...).
//! A family file starts from these and changes what differs.

use super::decoder::{Activation, DecoderConfig, LayerWeights};
use super::weights::{load_vector, Linear, SharedFile};
use super::ModelError;
use crate::gguf::keys::arch_key;
use crate::gguf::{GgufError, GgufHeader};
use crate::ops::rope::RopeLayout;

/// Read a positive usize hyper-parameter `{arch}.{suffix}`, bounded so later products can't
/// overflow or allocate absurd amounts.
pub(super) fn hparam(h: &GgufHeader, arch: &str, suffix: &str) -> Result<usize, ModelError> {
    let key = arch_key(arch, suffix);
    let v = h.get_u32(&key)? as usize;
    if v == 0 || v > 1 << 20 {
        return Err(ModelError::BadHyperParam {
            key,
            why: format!("{v} is out of range"),
        });
    }
    Ok(v)
}

pub(super) fn hparam_or(
    h: &GgufHeader,
    arch: &str,
    suffix: &str,
    default: usize,
) -> Result<usize, ModelError> {
    if h.get(&arch_key(arch, suffix)).is_none() {
        return Ok(default);
    }
    hparam(h, arch, suffix)
}

pub(super) fn fparam_or(
    h: &GgufHeader,
    arch: &str,
    suffix: &str,
    default: f32,
) -> Result<f32, ModelError> {
    let key = arch_key(arch, suffix);
    if h.get(&key).is_none() {
        return Ok(default);
    }
    let v = h.get_f32(&key)?;
    if !v.is_finite() {
        return Err(ModelError::BadHyperParam {
            key,
            why: format!("{v} is not finite"),
        });
    }
    Ok(v)
}

/// Hyper-parameters every family shares, read from `{arch}.*` metadata.
pub(super) fn base_config(h: &GgufHeader, arch: &str) -> Result<DecoderConfig, ModelError> {
    let n_embd = hparam(h, arch, "embedding_length")?;
    let n_layer = hparam(h, arch, "block_count")?;
    let n_head = hparam(h, arch, "attention.head_count")?;
    let n_head_kv = hparam_or(h, arch, "attention.head_count_kv", n_head)?;
    if n_head % n_head_kv != 0 {
        return Err(ModelError::BadHyperParam {
            key: arch_key(arch, "attention.head_count_kv"),
            why: format!("{n_head} query heads are not a multiple of {n_head_kv} KV heads"),
        });
    }
    let head_dim = hparam_or(h, arch, "attention.key_length", n_embd / n_head)?;
    let rope_dims = hparam_or(h, arch, "rope.dimension_count", head_dim)?;
    if rope_dims > head_dim || rope_dims % 2 != 0 {
        return Err(ModelError::BadHyperParam {
            key: arch_key(arch, "rope.dimension_count"),
            why: format!("{rope_dims} must be even and at most head_dim {head_dim}"),
        });
    }
    let n_vocab = match h.get_array(crate::gguf::keys::TOKENIZER_TOKENS) {
        Ok(crate::gguf::Array::String(t)) => t.len(),
        _ => hparam(h, arch, "vocab_size")?,
    };
    let freq_scale = match h.get(&arch_key(arch, "rope.scaling.factor")) {
        Some(_) => {
            let f = fparam_or(h, arch, "rope.scaling.factor", 1.0)?;
            if f > 0.0 {
                1.0 / f
            } else {
                1.0
            }
        }
        None => 1.0,
    };
    Ok(DecoderConfig {
        arch: arch.to_string(),
        n_vocab,
        n_embd,
        n_layer,
        n_head,
        n_head_kv,
        head_dim,
        n_ff: hparam(h, arch, "feed_forward_length")?,
        n_ctx_train: hparam_or(h, arch, "context_length", 2048)?,
        rms_eps: fparam_or(h, arch, "attention.layer_norm_rms_epsilon", 1e-5)?,
        rope_layout: RopeLayout::Normal,
        rope_dims,
        rope_base: fparam_or(h, arch, "rope.freq_base", 10_000.0)?,
        rope_freq_scale: freq_scale,
        activation: Activation::Silu,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        embed_scale: None,
        layer_window: vec![None; n_layer],
        layer_rope_base: vec![None; n_layer],
        final_logit_softcap: None,
    })
}

/// How a family stores its gated MLP's gate and up matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GateUp {
    /// `ffn_gate` and `ffn_up`, each `n_ff` rows.
    Separate,
    /// One `ffn_up` of `2 * n_ff` rows: the gate's rows first, then the up rows (Phi-3).
    Fused,
}

/// The attention and MLP matrices every family names the same way (`blk.N.attn_q.weight`, ...).
/// Q, K and V come from a fused `attn_qkv` (rows: all of Q, then K, then V) when the file has
/// one, as llama.cpp accepts for any family, else from `attn_q`, `attn_k`, `attn_v`.
pub(super) fn load_layer(
    file: &SharedFile,
    c: &DecoderConfig,
    l: usize,
    gate_up: GateUp,
) -> Result<LayerWeights, ModelError> {
    let t = |s: &str| format!("blk.{l}.{s}");
    let (d, qd, kvd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
    let opt = |s: &str, n: usize| super::weights::load_vector_opt(file, &t(s), n);
    let (wq, wk, wv) = if file.tensor(&t("attn_qkv.weight")).is_some() {
        let name = t("attn_qkv.weight");
        let rows = qd + 2 * kvd;
        (
            Linear::load_rows(file, &name, d, rows, 0, qd)?,
            Linear::load_rows(file, &name, d, rows, qd, kvd)?,
            Linear::load_rows(file, &name, d, rows, qd + kvd, kvd)?,
        )
    } else {
        (
            Linear::load(file, &t("attn_q.weight"), d, qd)?,
            Linear::load(file, &t("attn_k.weight"), d, kvd)?,
            Linear::load(file, &t("attn_v.weight"), d, kvd)?,
        )
    };
    let (w_gate, w_up) = match gate_up {
        GateUp::Separate => (
            Linear::load(file, &t("ffn_gate.weight"), d, ff)?,
            Linear::load(file, &t("ffn_up.weight"), d, ff)?,
        ),
        GateUp::Fused => {
            let name = t("ffn_up.weight");
            (
                Linear::load_rows(file, &name, d, 2 * ff, 0, ff)?,
                Linear::load_rows(file, &name, d, 2 * ff, ff, ff)?,
            )
        }
    };
    Ok(LayerWeights {
        attn_norm: load_vector(file, &t("attn_norm.weight"), d)?,
        wq,
        wk,
        wv,
        wo: Linear::load(file, &t("attn_output.weight"), qd, d)?,
        bq: opt("attn_q.bias", qd)?,
        bk: opt("attn_k.bias", kvd)?,
        bv: opt("attn_v.bias", kvd)?,
        q_norm: opt("attn_q_norm.weight", c.head_dim)?,
        k_norm: opt("attn_k_norm.weight", c.head_dim)?,
        post_attn_norm: opt("post_attention_norm.weight", d)?,
        ffn_norm: load_vector(file, &t("ffn_norm.weight"), d)?,
        w_gate,
        w_up,
        w_down: Linear::load(file, &t("ffn_down.weight"), ff, d)?,
        post_ffn_norm: opt("post_ffw_norm.weight", d)?,
    })
}

/// Optional layer tensors that a family requires (llama.cpp refuses its files without them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Required {
    /// `attn_q.bias`, `attn_k.bias`, `attn_v.bias` (Qwen 2).
    QkvBias,
    /// `attn_q_norm.weight`, `attn_k_norm.weight` (Qwen 3, Gemma 3).
    QkNorm,
    /// `post_attention_norm.weight`, `post_ffw_norm.weight` (Gemma 2/3).
    PostNorms,
}

/// Load every layer and check that the optional tensors in `required` are present.
pub(super) fn load_layers(
    file: &SharedFile,
    c: &DecoderConfig,
    gate_up: GateUp,
    required: &[Required],
) -> Result<Vec<LayerWeights>, ModelError> {
    let layers = (0..c.n_layer)
        .map(|l| load_layer(file, c, l, gate_up))
        .collect::<Result<Vec<_>, _>>()?;
    for (l, lw) in layers.iter().enumerate() {
        for need in required {
            let tensors: &[(&str, bool)] = match need {
                Required::QkvBias => &[
                    ("attn_q.bias", lw.bq.is_some()),
                    ("attn_k.bias", lw.bk.is_some()),
                    ("attn_v.bias", lw.bv.is_some()),
                ],
                Required::QkNorm => &[
                    ("attn_q_norm.weight", lw.q_norm.is_some()),
                    ("attn_k_norm.weight", lw.k_norm.is_some()),
                ],
                Required::PostNorms => &[
                    ("post_attention_norm.weight", lw.post_attn_norm.is_some()),
                    ("post_ffw_norm.weight", lw.post_ffn_norm.is_some()),
                ],
            };
            if let Some((name, _)) = tensors.iter().find(|(_, present)| !present) {
                return Err(GgufError::MissingTensor(format!("blk.{l}.{name}")).into());
            }
        }
    }
    Ok(layers)
}

/// Embeddings, final norm and LM head (tied to the embeddings when `output.weight` is absent).
pub(super) fn load_io(
    file: &SharedFile,
    c: &DecoderConfig,
) -> Result<(Linear, Vec<f32>, Linear), ModelError> {
    let tok_embd = Linear::load(file, "token_embd.weight", c.n_embd, c.n_vocab)?;
    let output_norm = load_vector(file, "output_norm.weight", c.n_embd)?;
    let output = if file.tensor("output.weight").is_some() {
        Linear::load(file, "output.weight", c.n_embd, c.n_vocab)?
    } else {
        tok_embd.clone()
    };
    Ok((tok_embd, output_norm, output))
}
