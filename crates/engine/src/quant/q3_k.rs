//! Q3_K: super-blocks of 256 3-bit signed quants in 16 sub-blocks of 16, each with a 6-bit
//! signed scale (offset 32), all scaled by one f16 `d` (3.4375 bits per weight). Dotted
//! with Q8_K. There is no minimum: the quants are symmetric, -4..4.
//!
//! Layout: the low 2 bits are packed as Q2_K's (`qs`); the third bit of element `e` is bit
//! `e / 32` of `hmask[e % 32]`, and is *set* for the non-negative half, i.e. the quant is
//! `low2 - 4` when the bit is clear (ggml stores `q + 4` and splits off its bit 2).
//! The 16 scales of 6 bits take 12 bytes: bytes 0..8 hold the low nibbles (scale `j` in
//! byte `j % 8`, low nibble for `j < 8`, high nibble after), and bytes 8..12 the high
//! 2-bit pairs (scale `j` in byte `8 + j % 4`, bits `2 (j / 4)`), so that SIMD code expands
//! them with u32 masks and shifts.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::k_search::{make_q3_quants, nearest_int};
use super::q8_k::BlockQ8K;
use super::QK_K;

/// ggml's `block_q3_K`: `x = d * (sc_j - 32) * q` for sub-block `j` of 16, `q` in -4..4.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: F16Le,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ3K {}

/// Packs 16 unsigned 6-bit scales (the signed scale + 32); the inverse of [`scales`].
fn pack_scales(q: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &q) in q.iter().enumerate() {
        debug_assert!(q < 64);
        s[j % 8] |= (q & 0x0F) << (4 * (j / 8));
        s[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
    }
    s
}

/// The 16 signed scales (-32..32) of a block.
#[inline]
fn scales(s: &[u8; 12]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = i32::from(low | (high << 4)) - 32;
    }
    out
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ3K] = as_blocks(src);
    assert_eq!(blocks.len() * QK_K, dst.len(), "Q3_K row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let sc = scales(&b.scales);
        for_each_quant(b, |e, q| y[e] = d * sc[e / 16] as f32 * q as f32);
    }
}

/// Calls `f(e, q)` with the signed quant `q` (-4..4) of every element `e` of the block, in
/// order, walking the packed bits as they lie (128-element halves, then 2-bit planes).
#[inline]
fn for_each_quant(b: &BlockQ3K, mut f: impl FnMut(usize, i32)) {
    for h in 0..2 {
        let qs = &b.qs[32 * h..32 * h + 32];
        for s in 0..4 {
            let plane = 4 * h + s;
            for (l, (&q, &hm)) in qs.iter().zip(&b.hmask).enumerate() {
                let low = i32::from((q >> (2 * s)) & 3);
                let high = i32::from((hm >> plane) & 1);
                // A clear high bit means the negative half: subtract 4.
                f(32 * plane + l, low - 4 + 4 * high);
            }
        }
    }
}

/// Reference quantizer (as ggml's `quantize_row_q3_K_ref`): a `make_q3_quants` search per 16,
/// the 16 scales to signed 6 bits against the one of largest magnitude (which maps to -32,
/// the long end), then re-quantization against the rounded scales.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ3K] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK_K, src.len(), "Q3_K row length");
    let mut l = [0u8; QK_K];
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK_K)) {
        let mut fscales = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for (j, (xs, ls)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            fscales[j] = make_q3_quants(xs, 4, ls);
            if fscales[j].abs() > amax {
                amax = fscales[j].abs();
                max_scale = fscales[j];
            }
        }
        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let mut q = [0u8; 16];
            for (q, &s) in q.iter_mut().zip(&fscales) {
                *q = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
            }
            b.scales = pack_scales(&q);
            b.d = F16Le::from_f32(1.0 / iscale);
        } else {
            b.d = F16Le::default();
        }
        let d = b.d.to_f32();
        let sc = scales(&b.scales);
        for (j, (xs, ls)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            let dj = d * sc[j] as f32;
            if dj == 0.0 {
                continue;
            }
            for (l, &v) in ls.iter_mut().zip(xs) {
                *l = (nearest_int(v / dj).clamp(-4, 3) + 4) as u8;
            }
        }
        b.hmask = [0; QK_K / 8];
        for (e, l) in l.iter_mut().enumerate() {
            if *l > 3 {
                b.hmask[e % 32] |= 1 << (e / 32);
                *l -= 4;
            }
        }
        for (h, l) in l.chunks_exact(128).enumerate() {
            for j in 0..32 {
                b.qs[32 * h + j] = l[j] | (l[j + 32] << 2) | (l[j + 64] << 4) | (l[j + 96] << 6);
            }
        }
    }
}

/// Q3_K weights against Q8_K activations: `sum_blocks d * da * sum_j sc_j * sum(q * qa)`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ3K] = as_blocks(w);
    let a: &[BlockQ8K] = as_blocks(act);
    assert!(
        w.len() * QK_K == n && a.len() == w.len(),
        "Q3_K vec_dot lengths"
    );
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let sc = scales(&x.scales);
        let mut sumi = 0i32;
        for h in 0..2 {
            let qs = &x.qs[32 * h..32 * h + 32];
            for s in 0..4 {
                // Plane p = 4 h + s is elements 32 p .. 32 p + 32: sub-blocks 2 p and 2 p + 1.
                let p = 4 * h + s;
                let qa = &y.qs[32 * p..32 * p + 32];
                let q = |l: usize| {
                    let low = i32::from((qs[l] >> (2 * s)) & 3);
                    low - 4 + 4 * i32::from((x.hmask[l] >> p) & 1)
                };
                let s0: i32 = (0..16).map(|l| q(l) * i32::from(qa[l])).sum();
                let s1: i32 = (16..32).map(|l| q(l) * i32::from(qa[l])).sum();
                sumi += sc[2 * p] * s0 + sc[2 * p + 1] * s1;
            }
        }
        sum += x.d.to_f32() * y.d.get() * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_pack_and_unpack() {
        for v in 0..64u8 {
            let mut q = [0u8; 16];
            for (j, q) in q.iter_mut().enumerate() {
                *q = (v + 7 * j as u8) % 64;
            }
            let unpacked = scales(&pack_scales(&q));
            for j in 0..16 {
                assert_eq!(unpacked[j], i32::from(q[j]) - 32, "scale {j}");
            }
        }
    }
}
