//! The decoder-only transformer forward pass shared by every family (zeux/calm's approach: one
//! parameterised forward; differences are [`DecoderConfig`] fields and optional tensors).
//!
//! Per layer: `x += attn(norm(x))`, `x += mlp(norm(x))`, with optional Gemma-style post-norms,
//! per-head query/key norms and QKV biases. Weights stay in the mapped file ([`Decoder`] is
//! immutable and shareable); everything that changes while generating lives in a [`Session`]
//! allocated once, so a decode step allocates nothing.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use rayon::prelude::*;

use super::weights::{Linear, SharedFile};
use super::ModelError;
use crate::cpu::Kernels;
use crate::ops::activation::{gelu_f16_table, gelu_tanh_mul, silu_mul};
use crate::ops::attention::{
    attention_with, decode_heads_f16, decode_heads_per_task, decode_task, AttnParams,
    F16_ACC_MAX_TOKENS,
};
use crate::ops::matmul::{act_row_bytes, matmul, matvec_many, quantize_acts};
use crate::ops::norm::{rms_norm, rms_norm_inplace};
use crate::ops::rope::{RopeCache, RopeLayout};
use crate::ops::rows_per_task;
use crate::ops::vec::add_assign;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with tanh-approximated GELU.
    GeluTanh,
}

#[derive(Clone, Debug)]
pub struct DecoderConfig {
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// Context length the model was trained for (`{arch}.context_length`).
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_layout: RopeLayout,
    /// Rotated dimensions per head.
    pub rope_dims: usize,
    pub rope_base: f32,
    pub rope_freq_scale: f32,
    pub activation: Activation,
    /// Multiplier on q·k, usually 1/sqrt(head_dim).
    pub attn_scale: f32,
    /// Multiplier on the token embeddings (Gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    /// Per-layer sliding-window size; `None` = global attention.
    pub layer_window: Vec<Option<usize>>,
    /// Per-layer RoPE base override (Gemma 3's local layers use a different base).
    pub layer_rope_base: Vec<Option<f32>>,
    pub final_logit_softcap: Option<f32>,
}

impl DecoderConfig {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm of queries and keys (head_dim weights).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
    pub post_ffn_norm: Option<Vec<f32>>,
}

pub struct Decoder {
    pub file: SharedFile,
    pub cfg: DecoderConfig,
    pub tok_embd: Linear,
    pub output_norm: Vec<f32>,
    /// The LM head; the token embedding matrix itself when the file ties them.
    pub output: Linear,
    pub layers: Vec<LayerWeights>,
    /// One RoPE table per distinct base, indexed per layer.
    ropes: Vec<RopeCache>,
    layer_rope: Vec<usize>,
}

/// Tokens processed per forward call during prefill (llama.cpp's n_ubatch).
pub const N_UBATCH: usize = 512;

/// A zeroed buffer of f16 bits whose first element sits on a cache-line boundary.
///
/// Why: a decode task reads one KV head's slice of every cached row (128 bytes for a head of
/// 64). The allocator returns large zeroed blocks 16 bytes past a page boundary, which made
/// every such slice straddle three cache lines instead of two: half as much memory traffic
/// again in the part of a batched step that is bound by it. The block is still the
/// allocator's zeroed one (pages untouched until used), started at the first aligned element.
#[derive(Default)]
struct CacheBits {
    bits: Vec<u16>,
    start: usize,
    len: usize,
}

impl CacheBits {
    /// The alignment of the first element, in bytes.
    const ALIGN: usize = 64;

    fn zeroed(len: usize) -> CacheBits {
        let bits = vec![0u16; len + Self::ALIGN / 2];
        let misaligned = bits.as_ptr() as usize % Self::ALIGN;
        let start = (Self::ALIGN - misaligned) % Self::ALIGN / 2;
        CacheBits { bits, start, len }
    }
}

impl std::ops::Deref for CacheBits {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        &self.bits[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for CacheBits {
    fn deref_mut(&mut self) -> &mut [u16] {
        &mut self.bits[self.start..self.start + self.len]
    }
}

/// Mutable state of one conversation: the KV cache, the logits of its last token and the
/// scratch buffers of a forward pass, sized at creation.
pub struct Session {
    pub n_ctx: usize,
    /// Tokens already in the KV cache.
    pub n_past: usize,
    /// The token ids in the KV cache, in order (capacity n_ctx, so pushing never reallocates).
    history: Vec<u32>,
    /// Per cached position: whether its attention accumulated in f16 (see [`Precision`]),
    /// so a cached prefix is reused only where a cold run would compute the same bits.
    f16_acc: Vec<bool>,
    /// (n_layer, n_ctx, n_head_kv * head_dim): f16 as llama.cpp's default KV cache, held as
    /// its bits so that the allocation is zeroed by the allocator (untouched pages stay out of
    /// the resident set until the context fills them).
    k_cache: CacheBits,
    /// (n_layer, n_ctx, n_head_kv * head_dim), as `k_cache`.
    v_cache: CacheBits,
    scratch: Box<Scratch>,
    /// (n_vocab): logits of the last token of the last forward call.
    pub logits: Vec<f32>,
    /// The cache's shape, for copying prefixes between sessions.
    n_layer: usize,
    kv_dim: usize,
    /// The most tokens the cache has held since it was allocated: the pages of positions
    /// below it may be resident, those above are untouched (see [`Session::resident`]).
    high_water: usize,
}

/// The buffers of one forward pass over up to `N_UBATCH` rows (tokens of one sequence, or
/// of several in a batch). Zeroed allocations: pages a pass never touches stay unmapped.
pub struct Scratch {
    /// (n_ubatch, n_embd): the residual stream.
    x: Vec<f32>,
    /// (n_ubatch, n_embd): normalised input of a block.
    xn: Vec<f32>,
    /// (n_ubatch, max activation row bytes): quantized block input.
    act: Vec<u8>,
    /// (n_ubatch, q_dim)
    q: Vec<f32>,
    /// (n_ubatch, kv_dim)
    k: Vec<f32>,
    /// (n_ubatch, kv_dim)
    v: Vec<f32>,
    /// (n_ubatch, q_dim)
    attn: Vec<f32>,
    /// (n_ubatch, max(n_embd, n_ff)): a block's output before the residual add.
    proj: Vec<f32>,
    /// (n_ubatch, n_ff)
    gate: Vec<f32>,
    /// (n_ubatch, n_ff)
    up: Vec<f32>,
    /// (max(n_out) * n_ubatch): transposed matmul output.
    scratch: Vec<f32>,
    /// (n_ubatch): each row's position in its sequence.
    pos: Vec<usize>,
    /// (ropes, n_ubatch, pairs): each row's RoPE angles (sin, cos) for each distinct RoPE,
    /// computed once per pass instead of once per layer and head.
    angles: Vec<(f32, f32)>,
    /// The segments that are one f16-path row (decoding sequences) when others are not.
    lone_segs: Vec<usize>,
    /// (lm_rows, q_dim): their attention, computed in one pass, before it goes to `attn`.
    lone_attn: Vec<f32>,
}

/// A forward pass over several sequences at once: the shared scratch, and the logits of each
/// sequence's last token.
pub struct Batch {
    scratch: Scratch,
    /// (N_UBATCH): the rows' tokens, sequence after sequence.
    tokens: Vec<u32>,
    /// (max sequences, n_vocab)
    logits: Vec<f32>,
    max_seqs: usize,
}

impl Batch {
    pub fn max_seqs(&self) -> usize {
        self.max_seqs
    }
}

/// One sequence's part of a pass: its rows are `rows.start..rows.end` of the scratch.
struct Segment<'a> {
    k_cache: &'a mut [u16],
    v_cache: &'a mut [u16],
    n_ctx: usize,
    pos0: usize,
    rows: std::ops::Range<usize>,
    /// Rows from this index of the segment on accumulate attention in f16.
    f16_from: usize,
}

/// Which rows of a pass accumulate attention in f16 (ggml's one-query path) rather than f32
/// (its tiled path). llama.cpp decides per pass, by its size: f16 below 64 rows. A prompt
/// read in other chunks (beside other sequences, or after a cached prefix) would then get
/// other bits than a cold read, so prompts decide by position instead: each row as in a
/// cold read of the whole prompt in `N_UBATCH` passes, which is llama.cpp's own choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// As llama.cpp for a pass of these rows (decode steps, benchmarks).
    PerPass,
    /// Rows of a prompt of `len` tokens, each as in a cold read of the whole prompt.
    Prompt { len: usize },
}

impl Precision {
    /// For `m` rows starting at position `pos0`: the index of the first f16 row (`m` if none).
    fn f16_from(self, pos0: usize, m: usize) -> usize {
        match self {
            Precision::PerPass => {
                if m < F16_ACC_MAX_TOKENS {
                    0
                } else {
                    m
                }
            }
            Precision::Prompt { len } => {
                // A cold read's last pass holds `len % N_UBATCH` rows (or a full pass).
                let last = match len % N_UBATCH {
                    0 => N_UBATCH.min(len),
                    r => r,
                };
                let first_f16 = if last < F16_ACC_MAX_TOKENS {
                    len - last
                } else {
                    len
                };
                first_f16.saturating_sub(pos0).min(m)
            }
        }
    }
}

/// One sequence's rows in a batched pass: its new tokens and how they are read.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub tokens: &'a [u32],
    pub precision: Precision,
}

impl<'a> Rows<'a> {
    /// The next token of a generating sequence (or any rows, read as llama.cpp would).
    pub fn decode(tokens: &'a [u32]) -> Self {
        Rows {
            tokens,
            precision: Precision::PerPass,
        }
    }

    /// A chunk of a prompt of `len` tokens.
    pub fn prompt(tokens: &'a [u32], len: usize) -> Self {
        Rows {
            tokens,
            precision: Precision::Prompt { len },
        }
    }
}

impl Session {
    /// Token ids whose keys and values are in the cache.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Forget everything after the first `n` tokens (their cache slots get overwritten).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.n_past);
        self.n_past = n;
        self.history.truncate(n);
        self.f16_acc.truncate(n);
    }

    /// Positions of the cache that may occupy memory: its pages are touched only as the
    /// context first fills them, and stay resident (as a prefix cache) until
    /// [`Session::release_memory`].
    pub fn resident(&self) -> usize {
        self.high_water
    }

    /// Forget everything and give the cache's pages back to the system: the allocation is
    /// replaced by a fresh zeroed one, whose pages stay out of the resident set until used.
    pub fn release_memory(&mut self) {
        self.truncate(0);
        let len = self.k_cache.len();
        // Drop before allocating, so the old and new caches never coexist.
        self.k_cache = CacheBits::default();
        self.k_cache = CacheBits::zeroed(len);
        self.v_cache = CacheBits::default();
        self.v_cache = CacheBits::zeroed(len);
        self.high_water = 0;
    }

    /// How many leading tokens of `prompt` this cache holds as a cold read of that prompt
    /// would compute them (same ids, same attention precision).
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        let f16_from = Precision::Prompt { len: prompt.len() }.f16_from(0, prompt.len());
        self.history
            .iter()
            .zip(&self.f16_acc)
            .zip(prompt)
            .enumerate()
            .take_while(|&(i, ((h, &f), p))| h == p && f == (i >= f16_from))
            .count()
    }

    /// Make this session hold the first `n` tokens of `src` (keys, values and ids), so a
    /// prompt that starts the same way need not recompute them. Both sessions must come from
    /// the same model; `n` is clamped to what `src` holds and this one can.
    pub fn copy_prefix(&mut self, src: &Session, n: usize) {
        let n = n.min(src.n_past).min(self.n_ctx);
        let kvd = self.kv_dim;
        for l in 0..self.n_layer.min(src.n_layer) {
            let (from, to) = (l * src.n_ctx * kvd, l * self.n_ctx * kvd);
            self.k_cache[to..to + n * kvd].copy_from_slice(&src.k_cache[from..from + n * kvd]);
            self.v_cache[to..to + n * kvd].copy_from_slice(&src.v_cache[from..from + n * kvd]);
        }
        self.n_past = n;
        self.high_water = self.high_water.max(n);
        self.history.clear();
        self.history.extend_from_slice(&src.history[..n]);
        self.f16_acc.clear();
        self.f16_acc.extend_from_slice(&src.f16_acc[..n]);
    }
}

impl Decoder {
    pub(super) fn new(
        file: SharedFile,
        cfg: DecoderConfig,
        tok_embd: Linear,
        output_norm: Vec<f32>,
        output: Linear,
        layers: Vec<LayerWeights>,
    ) -> Self {
        if cfg.activation == Activation::GeluTanh {
            // Built here so that the first decode step does not allocate it.
            gelu_f16_table();
        }
        let mut ropes: Vec<RopeCache> = Vec::new();
        let mut bases: Vec<f32> = Vec::new();
        let mut layer_rope = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let base = cfg
                .layer_rope_base
                .get(l)
                .copied()
                .flatten()
                .unwrap_or(cfg.rope_base);
            let idx = match bases.iter().position(|b| *b == base) {
                Some(i) => i,
                None => {
                    bases.push(base);
                    ropes.push(RopeCache::new(
                        cfg.rope_layout,
                        cfg.rope_dims,
                        base,
                        cfg.rope_freq_scale,
                    ));
                    bases.len() - 1
                }
            };
            layer_rope.push(idx);
        }
        Self {
            file,
            cfg,
            tok_embd,
            output_norm,
            output,
            layers,
            ropes,
            layer_rope,
        }
    }

    /// Entries per row of an angle table: the most pairs any of the model's RoPEs rotates.
    fn rope_pairs(&self) -> usize {
        self.ropes.iter().map(RopeCache::pairs).max().unwrap_or(0)
    }

    /// Apply per-pair RoPE frequency factors (`rope_freqs.weight`) to every layer's RoPE.
    pub(super) fn with_rope_factors(mut self, factors: Option<Vec<f32>>) -> Self {
        if factors.is_some() {
            self.ropes = self
                .ropes
                .into_iter()
                .map(|r| r.with_factors(factors.clone()))
                .collect();
        }
        self
    }

    /// Scratch for passes of up to `N_UBATCH` rows, whose logits are wanted for `lm_rows`.
    fn new_scratch(&self, lm_rows: usize) -> Scratch {
        let c = &self.cfg;
        let ub = N_UBATCH;
        let max_in = c.n_embd.max(c.n_ff).max(c.q_dim());
        let max_act = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wo, &l.w_gate, &l.w_down])
            .chain([&self.output])
            .map(|w| act_row_bytes(w.info.ty, w.n_in))
            .max()
            .unwrap_or(0)
            .max(max_in * 4);
        let max_out = c.n_embd.max(c.n_ff).max(c.q_dim()).max(c.kv_dim());
        Scratch {
            x: vec![0.0; ub * c.n_embd],
            xn: vec![0.0; ub * c.n_embd],
            act: vec![0; ub * max_act],
            q: vec![0.0; ub * c.q_dim()],
            k: vec![0.0; ub * c.kv_dim()],
            v: vec![0.0; ub * c.kv_dim()],
            attn: vec![0.0; ub * c.q_dim()],
            proj: vec![0.0; ub * c.n_embd.max(c.n_ff)],
            gate: vec![0.0; ub * c.n_ff],
            up: vec![0.0; ub * c.n_ff],
            scratch: vec![0.0; (ub * max_out).max(lm_rows * c.n_vocab)],
            pos: vec![0; ub],
            angles: vec![(0.0, 1.0); self.ropes.len() * ub * self.rope_pairs()],
            lone_segs: Vec::with_capacity(lm_rows),
            lone_attn: vec![0.0; lm_rows * c.q_dim()],
        }
    }

    /// Allocate a session with room for `n_ctx` tokens.
    pub fn new_session(&self, n_ctx: usize) -> Session {
        let c = &self.cfg;
        Session {
            n_ctx,
            n_past: 0,
            history: Vec::with_capacity(n_ctx),
            f16_acc: Vec::with_capacity(n_ctx),
            k_cache: CacheBits::zeroed(c.n_layer * n_ctx * c.kv_dim()),
            v_cache: CacheBits::zeroed(c.n_layer * n_ctx * c.kv_dim()),
            scratch: Box::new(self.new_scratch(1)),
            logits: vec![0.0; c.n_vocab],
            n_layer: c.n_layer,
            kv_dim: c.kv_dim(),
            high_water: 0,
        }
    }

    /// Scratch for passes over up to `max_seqs` sequences' next tokens at once.
    pub fn new_batch(&self, max_seqs: usize) -> Batch {
        let max_seqs = max_seqs.clamp(1, N_UBATCH);
        Batch {
            scratch: self.new_scratch(max_seqs),
            tokens: Vec::with_capacity(N_UBATCH),
            logits: vec![0.0; max_seqs * self.cfg.n_vocab],
            max_seqs,
        }
    }

    /// Bytes of weights read per generated token (for GB/s figures).
    pub fn weight_bytes(&self) -> u64 {
        let per_layer: u64 = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .map(|w| w.info.n_bytes)
            .sum();
        per_layer + self.output.info.n_bytes
    }

    /// `tokens` fit after `n_past` in a context of `n_ctx`, and every id is in the vocabulary
    /// (checked before any backend runs them).
    pub fn check_tokens(
        &self,
        n_past: usize,
        n_ctx: usize,
        tokens: &[u32],
    ) -> Result<(), ModelError> {
        let needed = n_past + tokens.len();
        if needed > n_ctx {
            return Err(ModelError::ContextFull { needed, n_ctx });
        }
        let n_vocab = self.cfg.n_vocab;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(ModelError::BadToken { id, n_vocab });
        }
        Ok(())
    }

    /// Repack the matrices whose format the kernels `k` read faster interleaved (see
    /// `cpu::interleaved`); the results of any tier on the repacked model are those of the
    /// interleaved kernels. Runs on the caller's rayon pool, a layer per task.
    pub fn interleave_weights(&mut self, k: &Kernels) {
        let file = &*self.file;
        self.layers.par_iter_mut().for_each(|lw| {
            for w in [
                &mut lw.wq,
                &mut lw.wk,
                &mut lw.wv,
                &mut lw.wo,
                &mut lw.w_gate,
                &mut lw.w_up,
                &mut lw.w_down,
            ] {
                w.interleave(file, k);
            }
        });
        self.output.interleave(file, k);
    }

    /// Run `tokens` (at positions `s.n_past..`) through the model, append them to the KV cache
    /// and leave the logits of the last one in `s.logits`. Must run inside the caller's rayon
    /// pool, which decides the thread count.
    pub fn forward(&self, k: &Kernels, s: &mut Session, tokens: &[u32]) -> Result<(), ModelError> {
        self.forward_with(k, s, tokens, Precision::PerPass)
    }

    /// [`Self::forward`] with the attention precision of each row chosen by `precision`.
    pub fn forward_with(
        &self,
        k: &Kernels,
        s: &mut Session,
        tokens: &[u32],
        precision: Precision,
    ) -> Result<(), ModelError> {
        self.check_tokens(s.n_past, s.n_ctx, tokens)?;
        for chunk in tokens.chunks(N_UBATCH) {
            let f16_from = precision.f16_from(s.n_past, chunk.len());
            let seg = Segment {
                k_cache: &mut s.k_cache,
                v_cache: &mut s.v_cache,
                n_ctx: s.n_ctx,
                pos0: s.n_past,
                rows: 0..chunk.len(),
                f16_from,
            };
            self.forward_rows(k, &mut s.scratch, &mut [seg], chunk, &mut s.logits);
            s.n_past += chunk.len();
            s.high_water = s.high_water.max(s.n_past);
            s.history.extend_from_slice(chunk);
            s.f16_acc.extend((0..chunk.len()).map(|i| i >= f16_from));
        }
        Ok(())
    }

    /// One pass over several sequences at once, `tokens[i]` appended to `seqs[i]`: the weight
    /// matrices are read once for every row of every sequence, attention runs per sequence
    /// over its own cache, and each session gets the logits of its last token. Each row's
    /// result is the same bits as in a pass of its sequence alone (the kernels split output
    /// rows between threads, never a reduction). All rows together fit in one `N_UBATCH`.
    pub fn forward_batch(
        &self,
        k: &Kernels,
        batch: &mut Batch,
        seqs: &mut [&mut Session],
        rows: &[Rows<'_>],
    ) -> Result<(), ModelError> {
        let total: usize = rows.iter().map(|r| r.tokens.len()).sum();
        if seqs.len() != rows.len()
            || seqs.len() > batch.max_seqs
            || total > N_UBATCH
            || rows.iter().any(|r| r.tokens.is_empty())
        {
            return Err(ModelError::BadBatch {
                seqs: seqs.len(),
                rows: total,
                max_seqs: batch.max_seqs,
                max_rows: N_UBATCH,
            });
        }
        for (s, r) in seqs.iter().zip(rows) {
            self.check_tokens(s.n_past, s.n_ctx, r.tokens)?;
        }
        let mut row = 0;
        // The one allocation of a step: a few borrowed slices.
        let mut segs: Vec<Segment<'_>> = Vec::with_capacity(seqs.len());
        batch.tokens.clear();
        for (s, r) in seqs.iter_mut().zip(rows) {
            let m = r.tokens.len();
            batch.tokens.extend_from_slice(r.tokens);
            segs.push(Segment {
                k_cache: &mut s.k_cache,
                v_cache: &mut s.v_cache,
                n_ctx: s.n_ctx,
                pos0: s.n_past,
                rows: row..row + m,
                f16_from: r.precision.f16_from(s.n_past, m),
            });
            row += m;
        }
        let n_vocab = self.cfg.n_vocab;
        let logits = &mut batch.logits[..rows.len() * n_vocab];
        self.forward_rows(k, &mut batch.scratch, &mut segs, &batch.tokens, logits);
        drop(segs);
        // Each sequence's logits into its session, on the pool: Gemma 3's are 1 MiB a row,
        // 8 MiB for a step of eight, which one thread copied in some 3 % of the step.
        seqs.par_iter_mut()
            .zip(logits.par_chunks_exact(n_vocab))
            .for_each(|(s, l)| s.logits.copy_from_slice(l));
        for (s, r) in seqs.iter_mut().zip(rows) {
            let f = r.precision.f16_from(s.n_past, r.tokens.len());
            s.n_past += r.tokens.len();
            s.high_water = s.high_water.max(s.n_past);
            s.history.extend_from_slice(r.tokens);
            s.f16_acc.extend((0..r.tokens.len()).map(|i| i >= f));
        }
        Ok(())
    }

    /// The pass itself: `tokens` are the rows of `segs`, in order; `logits` gets one row per
    /// segment, for its last token.
    fn forward_rows(
        &self,
        k: &Kernels,
        s: &mut Scratch,
        segs: &mut [Segment<'_>],
        tokens: &[u32],
        logits: &mut [f32],
    ) {
        let c = &self.cfg;
        let file = &*self.file;
        let n = tokens.len();
        let (d, qd, kvd) = (c.n_embd, c.q_dim(), c.kv_dim());
        for seg in segs.iter() {
            for (i, r) in seg.rows.clone().enumerate() {
                s.pos[r] = seg.pos0 + i;
            }
        }

        for (t, &tok) in tokens.iter().enumerate() {
            let row = &mut s.x[t * d..(t + 1) * d];
            self.tok_embd.row_f32(file, tok as usize, row);
            if let Some(scale) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }

        let pairs = self.rope_pairs();
        let ub = s.pos.len();
        for (r, rope) in self.ropes.iter().enumerate() {
            let pos = &s.pos[..n];
            s.angles[r * ub * pairs..(r * ub + n) * pairs]
                .par_chunks_mut(pairs)
                .zip(pos.par_iter())
                // A `sin_cos` costs some sixteen element-wise steps.
                .with_min_len(rows_per_task(pairs * 16))
                .for_each(|(table, &p)| rope.angles(p, table));
        }

        let lone =
            |seg: &Segment<'_>| c.head_dim <= 256 && seg.rows.len() == 1 && seg.f16_from == 0;
        s.lone_segs.clear();
        s.lone_segs
            .extend((0..segs.len()).filter(|&i| lone(&segs[i])));
        let all_lone = s.lone_segs.len() == segs.len();

        for (l, lw) in self.layers.iter().enumerate() {
            // --- attention block ---
            norm_rows(&mut s.xn[..n * d], &s.x[..n * d], &lw.attn_norm, c.rms_eps);
            quantize_acts(k, lw.wq.info.ty, &s.xn[..n * d], d, &mut s.act);
            let qkv_act = lw.wq.info.ty.vec_dot_type();
            if n == 1
                && lw.wk.info.ty.vec_dot_type() == qkv_act
                && lw.wv.info.ty.vec_dot_type() == qkv_act
            {
                let mats = &mut [
                    (lw.wq.mat(file), &mut s.q[..qd]),
                    (lw.wk.mat(file), &mut s.k[..kvd]),
                    (lw.wv.mat(file), &mut s.v[..kvd]),
                ];
                matvec_many(k, mats, &s.act);
            } else {
                matmul(k, lw.wq.mat(file), &s.act, n, &mut s.q, &mut s.scratch);
                if lw.wk.info.ty.vec_dot_type() != qkv_act {
                    quantize_acts(k, lw.wk.info.ty, &s.xn[..n * d], d, &mut s.act);
                }
                matmul(k, lw.wk.mat(file), &s.act, n, &mut s.k, &mut s.scratch);
                if lw.wv.info.ty.vec_dot_type() != lw.wk.info.ty.vec_dot_type() {
                    quantize_acts(k, lw.wv.info.ty, &s.xn[..n * d], d, &mut s.act);
                }
                matmul(k, lw.wv.mat(file), &s.act, n, &mut s.v, &mut s.scratch);
            }
            add_bias_rows(&mut s.q[..n * qd], lw.bq.as_deref());
            add_bias_rows(&mut s.k[..n * kvd], lw.bk.as_deref());
            add_bias_rows(&mut s.v[..n * kvd], lw.bv.as_deref());
            let rope = &self.ropes[self.layer_rope[l]];
            let angles = &s.angles[self.layer_rope[l] * ub * pairs..][..n * pairs];
            // Per token, on the pool: serial, these element-wise steps were a sixth of Gemma 3's
            // two-thread prefill.
            let qk_rows = s.q[..n * qd]
                .par_chunks_mut(qd)
                .zip(s.k[..n * kvd].par_chunks_mut(kvd));
            let min = rows_per_task(qd + kvd);
            qk_rows
                .enumerate()
                .with_min_len(min)
                .for_each(|(t, (q, kr))| {
                    if let Some(w) = &lw.q_norm {
                        q.chunks_exact_mut(c.head_dim)
                            .for_each(|h| rms_norm_inplace(h, w, c.rms_eps));
                    }
                    if let Some(w) = &lw.k_norm {
                        kr.chunks_exact_mut(c.head_dim)
                            .for_each(|h| rms_norm_inplace(h, w, c.rms_eps));
                    }
                    let table = &angles[t * pairs..(t + 1) * pairs];
                    rope.apply_angles(q, c.head_dim, table);
                    rope.apply_angles(kr, c.head_dim, table);
                });
            let p = AttnParams {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: c.head_dim,
                scale: c.attn_scale,
                window: c.layer_window.get(l).copied().flatten(),
                softcap: None,
            };
            for seg in segs.iter_mut() {
                let (pos0, r) = (seg.pos0, seg.rows.clone());
                let m = r.len();
                // The cache holds f16, as llama.cpp's default F16 KV cache does (round to
                // nearest even, as ggml's conversion).
                let layer_off = l * seg.n_ctx * kvd;
                let layer = layer_off..layer_off + seg.n_ctx * kvd;
                let kc = seg.k_cache[layer.clone()].reinterpret_cast_mut::<f16>();
                kc[pos0 * kvd..(pos0 + m) * kvd]
                    .convert_from_f32_slice(&s.k[r.start * kvd..r.end * kvd]);
                let vc = seg.v_cache[layer].reinterpret_cast_mut::<f16>();
                vc[pos0 * kvd..(pos0 + m) * kvd]
                    .convert_from_f32_slice(&s.v[r.start * kvd..r.end * kvd]);
            }
            // Decoding sequences (one f16-path row each, `lone_segs`): every head of every such
            // row in one pass on the pool (per sequence, each short pass's fork and join cost
            // more than its heads' work). Beside a prompt chunk their outputs go through
            // `lone_attn`.
            if !s.lone_segs.is_empty() {
                let segs = &*segs;
                let lone_segs = &s.lone_segs;
                let n_lone = lone_segs.len();
                let q = &s.q[..n * qd];
                let per_task = decode_heads_per_task(&p, n_lone, rayon::current_num_threads());
                let task = per_task * c.head_dim;
                // All lone: their rows are the pass's rows, in order.
                let out = if all_lone {
                    &mut s.attn[..n_lone * qd]
                } else {
                    &mut s.lone_attn[..n_lone * qd]
                };
                out.par_chunks_mut(task).enumerate().for_each(|(idx, out)| {
                    let (i, h0) = decode_task(&p, per_task, idx);
                    let seg = &segs[lone_segs[i]];
                    let layer_off = l * seg.n_ctx * kvd;
                    let filled = layer_off..layer_off + (seg.pos0 + 1) * kvd;
                    let kc = seg.k_cache[filled.clone()].reinterpret_cast::<f16>();
                    let vc = seg.v_cache[filled].reinterpret_cast::<f16>();
                    let qs = &q[seg.rows.start * qd + h0 * c.head_dim..][..task];
                    decode_heads_f16(&p, qs, kc, vc, seg.pos0, h0, out);
                });
                if !all_lone {
                    for (i, &g) in lone_segs.iter().enumerate() {
                        let r = segs[g].rows.start;
                        s.attn[r * qd..(r + 1) * qd].copy_from_slice(&s.lone_attn[i * qd..][..qd]);
                    }
                }
            }
            for seg in segs.iter().filter(|seg| !lone(seg)) {
                let (pos0, r) = (seg.pos0, seg.rows.clone());
                let layer_off = l * seg.n_ctx * kvd;
                // Rows before `f16_from` in f32, the rest in f16: each query reads only
                // keys up to its own position, so the split changes no row's result.
                let split = r.start + seg.f16_from;
                for (sub, f16_acc) in [(r.start..split, false), (split..r.end, true)] {
                    if sub.is_empty() {
                        continue;
                    }
                    let p0 = pos0 + (sub.start - r.start);
                    let filled = layer_off..layer_off + (p0 + sub.len()) * kvd;
                    let kc = seg.k_cache[filled.clone()].reinterpret_cast::<f16>();
                    let vc = seg.v_cache[filled].reinterpret_cast::<f16>();
                    attention_with(
                        &p,
                        &s.q[sub.start * qd..sub.end * qd],
                        kc,
                        vc,
                        p0,
                        f16_acc,
                        &mut s.attn[sub.start * qd..sub.end * qd],
                    );
                }
            }
            quantize_acts(k, lw.wo.info.ty, &s.attn[..n * qd], qd, &mut s.act);
            matmul(k, lw.wo.mat(file), &s.act, n, &mut s.proj, &mut s.scratch);
            residual_add(
                &mut s.x[..n * d],
                &mut s.proj[..n * d],
                d,
                lw.post_attn_norm.as_deref(),
                c.rms_eps,
            );

            // --- feed-forward block ---
            norm_rows(&mut s.xn[..n * d], &s.x[..n * d], &lw.ffn_norm, c.rms_eps);
            quantize_acts(k, lw.w_gate.info.ty, &s.xn[..n * d], d, &mut s.act);
            let ff = c.n_ff;
            if n == 1 && lw.w_up.info.ty.vec_dot_type() == lw.w_gate.info.ty.vec_dot_type() {
                let mats = &mut [
                    (lw.w_gate.mat(file), &mut s.gate[..ff]),
                    (lw.w_up.mat(file), &mut s.up[..ff]),
                ];
                matvec_many(k, mats, &s.act);
            } else {
                matmul(
                    k,
                    lw.w_gate.mat(file),
                    &s.act,
                    n,
                    &mut s.gate,
                    &mut s.scratch,
                );
                if lw.w_up.info.ty.vec_dot_type() != lw.w_gate.info.ty.vec_dot_type() {
                    quantize_acts(k, lw.w_up.info.ty, &s.xn[..n * d], d, &mut s.act);
                }
                matmul(k, lw.w_up.mat(file), &s.act, n, &mut s.up, &mut s.scratch);
            }
            let (gate, up) = (&mut s.gate[..n * ff], &s.up[..n * ff]);
            let act = match c.activation {
                Activation::Silu => silu_mul,
                Activation::GeluTanh => gelu_tanh_mul,
            };
            gate.par_chunks_mut(ff)
                .zip(up.par_chunks(ff))
                .with_min_len(rows_per_task(ff))
                .for_each(|(g, u)| act(g, u));
            quantize_acts(k, lw.w_down.info.ty, &s.gate[..n * ff], ff, &mut s.act);
            matmul(
                k,
                lw.w_down.mat(file),
                &s.act,
                n,
                &mut s.proj,
                &mut s.scratch,
            );
            residual_add(
                &mut s.x[..n * d],
                &mut s.proj[..n * d],
                d,
                lw.post_ffn_norm.as_deref(),
                c.rms_eps,
            );
        }

        // Only each sequence's last token's logits are needed to sample its next one.
        for (i, seg) in segs.iter().enumerate() {
            let last = seg.rows.end - 1;
            rms_norm(
                &mut s.xn[i * d..(i + 1) * d],
                &s.x[last * d..(last + 1) * d],
                &self.output_norm,
                c.rms_eps,
            );
        }
        let m = segs.len();
        quantize_acts(k, self.output.info.ty, &s.xn[..m * d], d, &mut s.act);
        matmul(k, self.output.mat(file), &s.act, m, logits, &mut s.scratch);
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
    }
}

fn norm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    if x.len() == d {
        rms_norm(out, x, w, eps);
    } else {
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .with_min_len(rows_per_task(d))
            .for_each(|(o, r)| rms_norm(o, r, w, eps));
    }
}

fn add_bias_rows(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        x.chunks_exact_mut(b.len())
            .for_each(|row| add_assign(row, b));
    }
}

/// `x += post_norm(y)` (or `x += y` without a post-norm), rows of `d` on the pool.
fn residual_add(x: &mut [f32], y: &mut [f32], d: usize, post_norm: Option<&[f32]>, eps: f32) {
    x.par_chunks_mut(d)
        .zip(y.par_chunks_mut(d))
        .with_min_len(rows_per_task(d))
        .for_each(|(x, y)| {
            if let Some(w) = post_norm {
                rms_norm_inplace(y, w, eps);
            }
            add_assign(x, y);
        });
}

#[cfg(test)]
mod tests {
    use super::CacheBits;

    #[test]
    fn cache_bits_start_on_a_cache_line_zeroed_and_sized() {
        for len in [1usize, 100, 4097, 1 << 20] {
            let mut c = CacheBits::zeroed(len);
            assert_eq!(c.len(), len);
            assert_eq!(c.as_ptr() as usize % CacheBits::ALIGN, 0, "len {len}");
            assert!(c.iter().all(|&b| b == 0));
            c[len - 1] = 7;
            assert_eq!(c.last(), Some(&7));
        }
        assert!(CacheBits::default().is_empty());
    }
}
