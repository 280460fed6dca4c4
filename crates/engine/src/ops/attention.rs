//! Causal grouped-query attention of new tokens over the KV cache.
//!
//! Softmax is computed online (running max and sum, rescaling the accumulator when the max
//! grows), so no score buffer of `n_ctx` floats is needed per (token, head) and the whole
//! operation allocates nothing. Query heads `h` read KV head `h / (n_head / n_head_kv)`.

use rayon::prelude::*;

use super::vec::{axpy, dot};

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
            acc.fill(0.0);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for j in start..=pos {
                let off = j * kv_dim + kvh * hd;
                let mut s = dot(qh, &k_cache[off..off + hd]) * p.scale;
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
        });
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

    #[test]
    fn online_softmax_matches_two_pass_with_gqa_and_window() {
        for window in [None, Some(3)] {
            let p = AttnParams {
                n_head: 6,
                n_head_kv: 2,
                head_dim: 8,
                scale: 0.35,
                window,
                softcap: None,
            };
            let (n_ctx, n_tok, pos0) = (12, 4, 5);
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * 2.0;
            let k: Vec<f32> = (0..n_ctx * 16).map(|i| f(i, 0.7)).collect();
            let v: Vec<f32> = (0..n_ctx * 16).map(|i| f(i, 1.3)).collect();
            let q: Vec<f32> = (0..n_tok * 48).map(|i| f(i, 0.9)).collect();
            let mut out = vec![0.0; q.len()];
            attention(&p, &q, &k, &v, pos0, &mut out);
            let r = reference(&p, &q, &k, &v, pos0);
            for (a, b) in out.iter().zip(&r) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}
