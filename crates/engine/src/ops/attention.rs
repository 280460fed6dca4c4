//! Causal grouped-query attention of new tokens over the KV cache.
//!
//! Softmax is computed online (running max and sum, rescaling the accumulator when the max
//! grows), so no score buffer of `n_ctx` floats is needed per (token, head) and the whole
//! operation allocates nothing. Query heads `h` read KV head `h / (n_head / n_head_kv)`.
//!
//! Precision follows llama.cpp's default CPU path (flash attention over an F16 KV cache), so
//! greedy decoding picks the same tokens: keys and values are stored rounded to f16 (see
//! [`round_f16`]); a batch of fewer than [`F16_ACC_MAX_TOKENS`] queries (decode) rounds the
//! query to f16 and keeps the weighted sum of values in f16, as ggml's one-row kernel does,
//! while larger batches (prefill) compute in f32 as ggml's tiled kernel does.

use rayon::prelude::*;

use super::vec::{axpy, dot};

/// Batches smaller than this take ggml's one-query path (f16 query and accumulator).
pub const F16_ACC_MAX_TOKENS: usize = 64;

/// Round to the nearest f16 value (ties to even) and back, in f32 arithmetic. Bit trick for
/// the f16 normal range; the rare subnormal or overflowing value takes the exact slow path.
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    let a = x.abs();
    if (6.103_515_6e-5..65504.0).contains(&a) {
        let b = x.to_bits();
        let r = b.wrapping_add(0x0FFF + ((b >> 13) & 1)) & !0x1FFF;
        f32::from_bits(r)
    } else {
        half::f16::from_f32(x).to_f32()
    }
}

/// Round every element to f16 precision in place.
pub fn round_f16_slice(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = round_f16(*v));
}

/// Shapes and options of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Multiplier on q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Sliding window: a token at `p` sees positions `> p - window` only.
    pub window: Option<usize>,
    /// Tanh soft-capping of scores (Gemma 2): `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
}

/// `q`: (n_tok, n_head * head_dim) for tokens at positions `pos0..pos0 + n_tok`.
/// `k_cache`, `v_cache`: (n_ctx, n_head_kv * head_dim), filled up to `pos0 + n_tok`.
/// `out`: (n_tok, n_head * head_dim).
pub fn attention(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let kv_dim = p.n_head_kv * hd;
    let group = p.n_head / p.n_head_kv;
    let n_tok = q.len() / (p.n_head * hd);
    let f16_path = n_tok < F16_ACC_MAX_TOKENS && hd <= 256;
    let fma = has_fma();
    out[..n_tok * p.n_head * hd]
        .par_chunks_mut(hd)
        .enumerate()
        .for_each(|(idx, acc)| {
            let (t, h) = (idx / p.n_head, idx % p.n_head);
            let pos = pos0 + t;
            let kvh = h / group;
            let qh = &q[idx * hd..(idx + 1) * hd];
            let start = match p.window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let keys = (start..=pos).map(|j| j * kv_dim + kvh * hd);
            if f16_path {
                #[cfg(target_arch = "x86_64")]
                if fma {
                    // SAFETY: `has_fma` checked that this CPU has FMA and AVX2.
                    unsafe { one_query_f16_fma(p, qh, k_cache, v_cache, keys, acc) };
                    return;
                }
                let _ = fma;
                one_query_f16(p, qh, k_cache, v_cache, keys, acc);
            } else {
                one_query_f32(p, qh, k_cache, v_cache, keys, acc);
            }
        });
}

/// Whether the FMA-compiled copy of the one-query kernel can run here.
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`one_query_f16`] compiled with FMA and AVX2 enabled. Same source, same results bit for
/// bit (`mul_add` is a fused multiply-add either way); the portable build turns every
/// `mul_add` into a libm call, which made decode attention several times slower.
///
/// # Safety
/// The CPU must have FMA and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn one_query_f16_fma(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    keys: impl Iterator<Item = usize>,
    acc: &mut [f32],
) {
    one_query_f16(p, q, k_cache, v_cache, keys, acc)
}

/// ggml's `ggml_compute_forward_flash_attn_ext_f16_one_chunk` for an F16 KV cache, step by
/// step, so the output equals llama.cpp's to the bit: the query rounded to f16; scores by
/// [`dot_f16_ggml`] times `scale`; on a new maximum the f16 accumulator is scaled by
/// `expf(M_old - M)` (rounded to f16), then `acc = f16(fma(v, w, acc))`; the running sum is
/// `S = fma(S, ms, vs)` (GCC contracts ggml's `S = S*ms + vs`); finally `acc * (1 / S)`.
#[inline(always)]
fn one_query_f16(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    keys: impl Iterator<Item = usize>,
    acc: &mut [f32],
) {
    let hd = q.len();
    let mut q16 = [0.0f32; 256];
    for (d, s) in q16.iter_mut().zip(q) {
        *d = round_f16(*s);
    }
    let q16 = &q16[..hd];
    // ggml folds the soft-cap divisor into the scale: s = cap * tanh(dot * (scale / cap)).
    let scale = p.softcap.map_or(p.scale, |cap| p.scale / cap);
    acc.fill(0.0);
    let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    for off in keys {
        let mut s = dot_f16_ggml(&k_cache[off..off + hd], q16) * scale;
        if let Some(cap) = p.softcap {
            s = cap * s.tanh();
        }
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > m {
            ms = (m - s).exp();
            m = s;
            for a in acc.iter_mut() {
                *a = round_f16(*a * ms);
            }
        } else {
            vs = (s - m).exp();
        }
        for (a, v) in acc.iter_mut().zip(&v_cache[off..off + hd]) {
            *a = round_f16(v.mul_add(vs, *a));
        }
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for a in acc.iter_mut() {
        *a *= inv;
    }
}

/// The f32 online-softmax path for large batches (ggml's tiled kernel also computes in f32,
/// though it sums in a different order, so prefill of 64+ tokens is not bit-exact).
fn one_query_f32(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    keys: impl Iterator<Item = usize>,
    acc: &mut [f32],
) {
    let hd = q.len();
    acc.fill(0.0);
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    for off in keys {
        let mut s = dot(q, &k_cache[off..off + hd]) * p.scale;
        if let Some(cap) = p.softcap {
            s = cap * (s / cap).tanh();
        }
        if s > max {
            let c = (max - s).exp();
            for a in acc.iter_mut() {
                *a *= c;
            }
            sum *= c;
            max = s;
        }
        let wgt = (s - max).exp();
        sum += wgt;
        axpy(acc, wgt, &v_cache[off..off + hd]);
    }
    let inv = 1.0 / sum;
    for a in acc.iter_mut() {
        *a *= inv;
    }
}

/// ggml's `ggml_vec_dot_f16` on x86 AVX2 (f16 inputs, here already f16-valued f32s): four
/// accumulators of eight lanes over steps of 32 elements, element `i` in accumulator
/// `(i / 8) % 4`, lane `i % 8`, each `fma(x, y, acc)`; reduced as `GGML_F32x8_REDUCE`
/// (`a0 + a2`, `a1 + a3`, then those two; then lanes `l + (l + 4)`, then two `hadd`s);
/// the tail of fewer than 32 elements added in f64, the total rounded to f32 once.
#[inline(always)]
pub fn dot_f16_ggml(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let np = x.len() / 32 * 32;
    let mut sumf = 0.0f64;
    if np > 0 {
        let mut acc = [[0.0f32; 8]; 4];
        for (xc, yc) in x[..np].chunks_exact(32).zip(y[..np].chunks_exact(32)) {
            for (j, a) in acc.iter_mut().enumerate() {
                for (l, a) in a.iter_mut().enumerate() {
                    *a = xc[8 * j + l].mul_add(yc[8 * j + l], *a);
                }
            }
        }
        let mut v = [0.0f32; 8];
        for (l, v) in v.iter_mut().enumerate() {
            *v = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        }
        let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
        sumf = f64::from((t[0] + t[1]) + (t[2] + t[3]));
    }
    for (a, b) in x[np..].iter().zip(&y[np..]) {
        sumf += f64::from(a * b);
    }
    sumf as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::activation::softmax;

    /// Plain two-pass softmax attention, the textbook definition.
    fn reference(p: &AttnParams, q: &[f32], k: &[f32], v: &[f32], pos0: usize) -> Vec<f32> {
        let hd = p.head_dim;
        let kv_dim = p.n_head_kv * hd;
        let n_tok = q.len() / (p.n_head * hd);
        let mut out = vec![0.0; q.len()];
        for t in 0..n_tok {
            for h in 0..p.n_head {
                let pos = pos0 + t;
                let kvh = h / (p.n_head / p.n_head_kv);
                let start = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qh = &q[(t * p.n_head + h) * hd..][..hd];
                let mut s: Vec<f32> = (start..=pos)
                    .map(|j| dot(qh, &k[j * kv_dim + kvh * hd..][..hd]) * p.scale)
                    .collect();
                softmax(&mut s);
                let o = &mut out[(t * p.n_head + h) * hd..][..hd];
                for (j, w) in (start..=pos).zip(&s) {
                    axpy(o, *w, &v[j * kv_dim + kvh * hd..][..hd]);
                }
            }
        }
        out
    }

    /// Batches below `F16_ACC_MAX_TOKENS` run at f16 precision (about 3 decimal digits),
    /// larger ones in f32.
    #[test]
    fn online_softmax_matches_two_pass_with_gqa_and_window() {
        for (n_tok, tol) in [(4usize, 5e-3f32), (F16_ACC_MAX_TOKENS + 6, 1e-5)] {
            for window in [None, Some(3)] {
                let p = AttnParams {
                    n_head: 6,
                    n_head_kv: 2,
                    head_dim: 8,
                    scale: 0.35,
                    window,
                    softcap: None,
                };
                let pos0 = 5;
                let n_ctx = pos0 + n_tok;
                let f = |i: usize, m: f32| ((i as f32) * m).sin() * 2.0;
                let k: Vec<f32> = (0..n_ctx * 16).map(|i| f(i, 0.7)).collect();
                let v: Vec<f32> = (0..n_ctx * 16).map(|i| f(i, 1.3)).collect();
                let q: Vec<f32> = (0..n_tok * 48).map(|i| f(i, 0.9)).collect();
                let mut out = vec![0.0; q.len()];
                attention(&p, &q, &k, &v, pos0, &mut out);
                let r = reference(&p, &q, &k, &v, pos0);
                for (a, b) in out.iter().zip(&r) {
                    assert!((a - b).abs() < tol, "n_tok {n_tok}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn round_f16_matches_the_half_crate() {
        for i in 0..100_000u32 {
            let x = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if x.is_finite() {
                assert_eq!(
                    round_f16(x).to_bits(),
                    half::f16::from_f32(x).to_f32().to_bits(),
                    "{x}"
                );
            }
        }
    }
}
