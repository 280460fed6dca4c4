//! Our own decoder forward pass over candle's tensors and ops (quantized matmuls, RMSNorm, RoPE,
//! softmax), driven by the same [`DecoderConfig`] the native backend reads from the file. The
//! weights are candle's own `QTensor`s from candle's GGUF reader and every operation is
//! candle's, so on CPU this is still an independent check of our kernels, and on CUDA/Metal it
//! is the GPU path. Two families run on it instead of on candle-transformers:
//!
//! **Gemma 3**, because candle-transformers 0.11's `quantized_gemma3` is wrong. Read against
//! llama.cpp's graph, that file:
//! 1. gates the MLP with SiLU where Gemma uses GELU (tanh form). This alone moves the logits
//!    by nats: it is why it picks " the largest" over " the capital" after "The capital of
//!    France is", even with every weight dequantized to F32;
//! 2. lets a sliding-window layer see `window + 1` keys (`j + window < i` masks) where
//!    llama.cpp keeps `window` (`i - j >= window` is masked);
//! 3. applies no mask at all when one token is decoded, so past `window` tokens the local
//!    layers attend globally;
//! 4. fails on a multi-token step after a cached prefix (a u32 mask concatenated with an f32
//!    one) and would mask the whole prefix if it did not.
//!
//! **Qwen 2**, because candle-transformers' `quantized_qwen2::ModelWeights` is not `Clone`:
//! its KV cache lives inside the model, so sessions could not each have their own without
//! loading the weights once per session.

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::models::decoder::Activation;
use crate::models::DecoderConfig;
use crate::ops::rope::RopeLayout;

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
    post_ffn_norm: Option<Tensor>,
    window: Option<usize>,
    rope_base: f32,
}

pub struct CandleDecoder {
    cfg: DecoderConfig,
    device: Device,
    /// Token embeddings; also the LM head when the file ties them.
    embd: QMatMul,
    output: Option<QMatMul>,
    output_norm: Tensor,
    layers: Vec<Layer>,
}

/// One session's KV cache: per layer, keys and values as (1, n_head_kv, n_ctx, head_dim),
/// allocated once and written in place, so rewinding is just writing at an earlier position.
pub struct Cache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl CandleDecoder {
    pub fn load<R: std::io::Read + std::io::Seek>(
        cfg: &DecoderConfig,
        ct: &gguf_file::Content,
        r: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut qmat =
            |name: &str| -> Result<QMatMul> { QMatMul::from_qtensor(ct.tensor(r, name, device)?) };
        let embd = qmat("token_embd.weight")?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            Some(qmat("output.weight")?)
        } else {
            None
        };
        let mut vector = |name: &str| -> Result<Tensor> {
            ct.tensor(r, name, device)?
                .dequantize(device)?
                .to_dtype(DType::F32)
        };
        let output_norm = vector("output_norm.weight")?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let mut q = |s: &str| -> Result<QMatMul> {
                QMatMul::from_qtensor(ct.tensor(r, &p(s), device)?)
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (w_gate, w_up, w_down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            // Optional vectors: present in the file or not (biases, query/key and post norms).
            let mut v = |name: String| -> Result<Option<Tensor>> {
                if !ct.tensor_infos.contains_key(&name) {
                    return Ok(None);
                }
                let t = ct.tensor(r, &name, device)?.dequantize(device)?;
                Ok(Some(t.to_dtype(DType::F32)?))
            };
            let bias = |s: &str| format!("blk.{l}.{s}.bias");
            let (bq, bk, bv) = (v(bias("attn_q"))?, v(bias("attn_k"))?, v(bias("attn_v"))?);
            let (q_norm, k_norm) = (v(p("attn_q_norm"))?, v(p("attn_k_norm"))?);
            let post_attn_norm = v(p("post_attention_norm"))?;
            let post_ffn_norm = v(p("post_ffw_norm"))?;
            let missing = |s: &str| candle_core::Error::Msg(format!("missing tensor {}", p(s)));
            let attn_norm = v(p("attn_norm"))?.ok_or_else(|| missing("attn_norm"))?;
            let ffn_norm = v(p("ffn_norm"))?.ok_or_else(|| missing("ffn_norm"))?;
            layers.push(Layer {
                attn_norm,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm,
                post_ffn_norm,
                wq,
                wk,
                wv,
                wo,
                w_gate,
                w_up,
                w_down,
                window: cfg.layer_window.get(l).copied().flatten(),
                rope_base: cfg
                    .layer_rope_base
                    .get(l)
                    .copied()
                    .flatten()
                    .unwrap_or(cfg.rope_base),
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            device: device.clone(),
            embd,
            output,
            output_norm,
            layers,
        })
    }

    pub fn new_cache(&self, n_ctx: usize) -> Result<Cache> {
        let c = &self.cfg;
        let shape = (1, c.n_head_kv, n_ctx, c.head_dim);
        let mut k = Vec::with_capacity(c.n_layer);
        let mut v = Vec::with_capacity(c.n_layer);
        for _ in 0..c.n_layer {
            k.push(Tensor::zeros(shape, DType::F32, &self.device)?);
            v.push(Tensor::zeros(shape, DType::F32, &self.device)?);
        }
        Ok(Cache { k, v })
    }

    /// Run `tokens` at positions `pos0..`, writing their keys and values into `cache`; returns
    /// the logits of the last token, shape (n_vocab,).
    pub fn forward(&self, tokens: &[u32], pos0: usize, cache: &mut Cache) -> Result<Tensor> {
        let c = &self.cfg;
        let n = tokens.len();
        let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_head_kv);
        let eps = c.rms_eps;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embd.embedding(&ids)?.to_dtype(DType::F32)?;
        if let Some(s) = c.embed_scale {
            x = (x * s as f64)?;
        }
        let mut x = x.unsqueeze(0)?; // (1, n, n_embd)
        let l_all = pos0 + n;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        let mut ropes: Vec<(f32, Tensor, Tensor)> = Vec::new();
        for (l, lw) in self.layers.iter().enumerate() {
            let mask = match masks.iter().find(|(w, _)| *w == lw.window) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = self.mask(n, pos0, lw.window)?;
                    masks.push((lw.window, m.clone()));
                    m
                }
            };
            let (cos, sin) = match ropes.iter().find(|(b, _, _)| *b == lw.rope_base) {
                Some((_, cos, sin)) => (cos.clone(), sin.clone()),
                None => {
                    let (cos, sin) = self.rope_tables(lw.rope_base, pos0, n)?;
                    ropes.push((lw.rope_base, cos.clone(), sin.clone()));
                    (cos, sin)
                }
            };

            // --- attention ---
            let h = candle_nn::ops::rms_norm(&x, &lw.attn_norm, eps)?;
            let project = |w: &QMatMul, b: &Option<Tensor>, heads: usize| -> Result<Tensor> {
                let mut y = w.forward(&h)?;
                if let Some(b) = b {
                    y = y.broadcast_add(b)?;
                }
                y.reshape((1, n, heads, hd))
            };
            let mut q = project(&lw.wq, &lw.bq, nh)?;
            let mut k = project(&lw.wk, &lw.bk, nkv)?;
            let v = project(&lw.wv, &lw.bv, nkv)?;
            if let Some(w) = &lw.q_norm {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, w, eps)?;
            }
            if let Some(w) = &lw.k_norm {
                k = candle_nn::ops::rms_norm(&k.contiguous()?, w, eps)?;
            }
            // (1, heads, n, hd) for RoPE and the products below.
            let q = q.transpose(1, 2)?.contiguous()?;
            let k = k.transpose(1, 2)?.contiguous()?;
            let v = v.transpose(1, 2)?.contiguous()?;
            let (q, k) = match c.rope_layout {
                RopeLayout::Neox => (
                    candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                ),
                RopeLayout::Normal => (
                    candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                ),
            };
            cache.k[l].slice_set(&k, 2, pos0)?;
            cache.v[l].slice_set(&v, 2, pos0)?;
            let k_all = cache.k[l].narrow(2, 0, l_all)?.contiguous()?;
            let v_all = cache.v[l].narrow(2, 0, l_all)?.contiguous()?;
            // Grouped-query attention without copying keys: the query heads that share a
            // key/value head are consecutive, so (1, nh, n, hd) regroups as (1, nkv, rep*n, hd).
            let rep = nh / nkv;
            let q = q.reshape((1, nkv, rep * n, hd))?;
            let att = (q.matmul(&k_all.t()?)? * c.attn_scale as f64)?;
            let att = att
                .reshape((1, nkv, rep, n, l_all))?
                .broadcast_add(&mask)?
                .reshape((1, nkv, rep * n, l_all))?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let o = att.matmul(&v_all)?; // (1, nkv, rep*n, hd)
            let o = o
                .reshape((1, nh, n, hd))?
                .transpose(1, 2)?
                .reshape((1, n, nh * hd))?;
            let mut o = lw.wo.forward(&o)?;
            if let Some(w) = &lw.post_attn_norm {
                o = candle_nn::ops::rms_norm(&o, w, eps)?;
            }
            x = (x + o)?;

            // --- feed-forward: gated by SiLU or GELU (tanh form) ---
            let h = candle_nn::ops::rms_norm(&x, &lw.ffn_norm, eps)?;
            let gate = lw.w_gate.forward(&h)?;
            let gate = match c.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let up = lw.w_up.forward(&h)?;
            let mut o = lw.w_down.forward(&(gate * up)?)?;
            if let Some(w) = &lw.post_ffn_norm {
                o = candle_nn::ops::rms_norm(&o, w, eps)?;
            }
            x = (x + o)?;
        }
        let last = x.narrow(1, n - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, eps)?;
        let head = self.output.as_ref().unwrap_or(&self.embd);
        let mut logits = head.forward(&last)?.flatten_all()?;
        if let Some(cap) = c.final_logit_softcap {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        Ok(logits)
    }

    /// Additive mask (n, pos0 + n): query `t` (at position pos0 + t) sees key `j` when
    /// `j <= pos0 + t` and, in a sliding-window layer, `pos0 + t - j < window`.
    fn mask(&self, n: usize, pos0: usize, window: Option<usize>) -> Result<Tensor> {
        let l_all = pos0 + n;
        let mut m = vec![f32::NEG_INFINITY; n * l_all];
        for t in 0..n {
            let p = pos0 + t;
            let start = window.map_or(0, |w| (p + 1).saturating_sub(w));
            m[t * l_all + start..t * l_all + p + 1].fill(0.0);
        }
        Tensor::from_vec(m, (n, l_all), &self.device)
    }

    /// cos and sin of `pos * freq_scale * base^(-2i/rope_dims)` for positions pos0..pos0+n,
    /// each (n, head_dim / 2): rotation of the whole head ([`super::check_supported`] refuses
    /// a file whose rope_dims differ from head_dim).
    fn rope_tables(&self, base: f32, pos0: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let c = &self.cfg;
        let half = c.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / c.rope_dims as f32))
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for t in 0..n {
            let p = (pos0 + t) as f32 * c.rope_freq_scale;
            for f in &inv {
                let a = p * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), &self.device)?,
            Tensor::from_vec(sin, (n, half), &self.device)?,
        ))
    }
}
