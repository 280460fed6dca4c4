//! Q4_K: super-blocks of 256 4-bit quants in 8 sub-blocks of 32, each sub-block with its own
//! 6-bit scale and 6-bit minimum, which are in turn scaled by the f16 `d` and `dmin`
//! (4.5 bits per weight). Dotted with Q8_K activations.
//!
//! Quant layout: each 64-element chunk `c` uses 32 bytes `qs[32 c ..]`; byte `l` holds
//! element `64 c + l` in its low nibble and `64 c + 32 + l` in its high nibble, so one mask
//! and one shift of a 32-byte register yield two whole sub-blocks.
//!
//! Scale layout (`scales[12]`, shared with Q5_K): 8 scales and 8 mins of 6 bits are 96 bits.
//! Bytes 0..4 hold scales 0..4 and bytes 4..8 mins 0..4 in their low 6 bits; bytes 8..12
//! hold the low 4 bits of scale `4 + i` (low nibble) and min `4 + i` (high nibble); the
//! top 2 bits of bytes 0..4 and 4..8 carry the high 2 bits of scales and mins 4..8. So the
//! first four of each come out with one `& 63` per byte (or per u32 word in SIMD) and the
//! rest with a shift, a mask and an or, with no value straddling a 32-bit word.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::k_search::{make_qkx2_quants, nearest_int, Qkx2Search};
use super::q8_k::BlockQ8K;
use super::QK_K;

/// ggml's `block_q4_K`: `x = d * sc_j * q - dmin * m_j` for sub-block `j`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    pub d: F16Le,
    pub dmin: F16Le,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ4K {}

/// The 6-bit (scale, min) of sub-block `j` (0..8) from the packed `scales` (ggml's
/// `get_scale_min_k4`).
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Packs the 6-bit (scale, min) of sub-block `j`; the inverse of [`scale_min_k4`].
/// `s` must start zeroed.
#[inline]
fn pack_scale_min_k4(j: usize, s: &mut [u8; 12], sc: u8, m: u8) {
    debug_assert!(sc < 64 && m < 64);
    if j < 4 {
        s[j] = sc;
        s[j + 4] = m;
    } else {
        s[j + 4] = (sc & 0x0F) | ((m & 0x0F) << 4);
        s[j - 4] |= (sc >> 4) << 6;
        s[j] |= (m >> 4) << 6;
    }
}

/// The common step of the Q4_K and Q5_K reference quantizers: per 32-element sub-block,
/// search a (scale, min) pair, quantize those to 6 bits against the super-block's largest,
/// then re-quantize the elements against the rounded scales (so the stored quants match
/// what decoding will use). Weights `av_x + |x|` favour large elements as ggml's
/// `quantize_row_q4_K_ref` does. Returns (d, dmin, packed scales) and fills `l` with
/// levels `0..=nmax`.
pub(crate) fn quantize_k4_scales(
    x: &[f32],
    nmax: i32,
    search: &Qkx2Search,
    l: &mut [u8; QK_K],
) -> (F16Le, F16Le, [u8; 12]) {
    let sum_x2: f32 = x.iter().map(|v| v * v).sum();
    let av_x = (sum_x2 / QK_K as f32).sqrt();
    let mut scales = [0.0f32; QK_K / 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut weights = [0.0f32; 32];
    for (j, (xs, ls)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, nmax, ls, search);
    }
    let max_scale = scales.iter().fold(0.0f32, |m, &s| m.max(s));
    let max_min = mins.iter().fold(0.0f32, |m, &s| m.max(s));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..QK_K / 32 {
        let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
        pack_scale_min_k4(j, &mut packed, ls, lm);
    }
    let d = F16Le::from_f32(max_scale / 63.0);
    let dmin = F16Le::from_f32(max_min / 63.0);
    for (j, (xs, ls)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = d.to_f32() * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let mj = dmin.to_f32() * f32::from(m);
        for (l, &v) in ls.iter_mut().zip(xs) {
            *l = nearest_int((v + mj) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed)
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4K] = as_blocks(src);
    assert_eq!(blocks.len() * QK_K, dst.len(), "Q4_K row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (c, (q, y)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc0, m0) = scale_min_k4(2 * c, &b.scales);
            let (sc1, m1) = scale_min_k4(2 * c + 1, &b.scales);
            let (d0, m0) = (d * f32::from(sc0), dmin * f32::from(m0));
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (lo, hi) = y.split_at_mut(32);
            for ((&q, lo), hi) in q.iter().zip(lo).zip(hi) {
                *lo = d0 * f32::from(q & 0x0F) - m0;
                *hi = d1 * f32::from(q >> 4) - m1;
            }
        }
    }
}

/// Reference quantizer (as ggml's `quantize_row_q4_K_ref`, make_qkx2 search with grids
/// `15 - 1 + 0.1 k`, k = 0..=20, squared error).
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    const SEARCH: Qkx2Search = Qkx2Search {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let blocks: &mut [BlockQ4K] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK_K, src.len(), "Q4_K row length");
    let mut l = [0u8; QK_K];
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK_K)) {
        (b.d, b.dmin, b.scales) = quantize_k4_scales(x, 15, &SEARCH, &mut l);
        for (q, l) in b.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            let (lo, hi) = l.split_at(32);
            for ((q, &lo), &hi) in q.iter_mut().zip(lo).zip(hi) {
                *q = lo | (hi << 4);
            }
        }
    }
}

/// The integer half of a K-quant dot product's minimum term: `sum_j m_j * sum(qa in j)` over
/// the 8 sub-blocks of 32, from Q8_K's per-16 sums.
#[inline]
pub(crate) fn mins_dot_bsums(scales: &[u8; 12], a: &BlockQ8K) -> i32 {
    (0..QK_K / 32)
        .map(|j| i32::from(scale_min_k4(j, scales).1) * (a.bsum(2 * j) + a.bsum(2 * j + 1)))
        .sum()
}

/// Q4_K weights against Q8_K activations:
/// `sum_blocks da * (d * sum_j sc_j * sum(q * qa) - dmin * sum_j m_j * sum(qa))`,
/// all inner sums in integers.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ4K] = as_blocks(w);
    let a: &[BlockQ8K] = as_blocks(act);
    assert!(
        w.len() * QK_K == n && a.len() == w.len(),
        "Q4_K vec_dot lengths"
    );
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for (c, (q, qa)) in x.qs.chunks_exact(32).zip(y.qs.chunks_exact(64)).enumerate() {
            let (lo, hi) = qa.split_at(32);
            let (mut s0, mut s1) = (0i32, 0i32);
            for ((&q, &a0), &a1) in q.iter().zip(lo).zip(hi) {
                s0 += i32::from(q & 0x0F) * i32::from(a0);
                s1 += i32::from(q >> 4) * i32::from(a1);
            }
            sumi += i32::from(scale_min_k4(2 * c, &x.scales).0) * s0;
            sumi += i32::from(scale_min_k4(2 * c + 1, &x.scales).0) * s1;
        }
        let mins = mins_dot_bsums(&x.scales, y);
        let da = y.d.get();
        sum += da * (x.d.to_f32() * sumi as f32 - x.dmin.to_f32() * mins as f32);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_pack_and_unpack() {
        for v in 0..64u8 {
            let mut packed = [0u8; 12];
            let pairs: Vec<(u8, u8)> = (0..8u8)
                .map(|j| ((v + 5 * j) % 64, (63 - v + 11 * j) % 64))
                .collect();
            for (j, &(sc, m)) in pairs.iter().enumerate() {
                pack_scale_min_k4(j, &mut packed, sc, m);
            }
            for (j, &pair) in pairs.iter().enumerate() {
                assert_eq!(scale_min_k4(j, &packed), pair, "sub-block {j}");
            }
        }
    }
}
