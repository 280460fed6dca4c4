//! Q5_K: Q4_K plus a fifth bit per element (5.5 bits per weight). Dotted with Q8_K.
//!
//! Scales and mins are packed exactly as Q4_K's (see `q4_k.rs`), and the low nibbles as
//! Q4_K's quants. The high bits live in `qh[32]`: byte `l` holds, in bit `2 c` and `2 c + 1`,
//! the fifth bit of elements `64 c + l` and `64 c + 32 + l` (chunk `c` = 0..4), so each
//! 64-element chunk takes its high bits from the same 32 bytes with a moving mask.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::k_search::Qkx2Search;
use super::q4_k::{mins_dot_bsums, quantize_k4_scales, scale_min_k4};
use super::q8_k::BlockQ8K;
use super::QK_K;

/// ggml's `block_q5_K`: `x = d * sc_j * q - dmin * m_j` for sub-block `j`, `q` in 0..32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    pub d: F16Le,
    pub dmin: F16Le,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ5K {}

/// The 5-bit quants of elements `64 c + l` and `64 c + 32 + l`.
#[inline]
fn quants(b: &BlockQ5K, c: usize, l: usize) -> (u8, u8) {
    let q = b.qs[32 * c + l];
    let h = b.qh[l] >> (2 * c);
    (
        (q & 0x0F) | ((h & 1) << 4),
        (q >> 4) | (((h >> 1) & 1) << 4),
    )
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ5K] = as_blocks(src);
    assert_eq!(blocks.len() * QK_K, dst.len(), "Q5_K row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (c, y) in y.chunks_exact_mut(64).enumerate() {
            let (sc0, m0) = scale_min_k4(2 * c, &b.scales);
            let (sc1, m1) = scale_min_k4(2 * c + 1, &b.scales);
            let (d0, m0) = (d * f32::from(sc0), dmin * f32::from(m0));
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            for l in 0..32 {
                let (q0, q1) = quants(b, c, l);
                y[l] = d0 * f32::from(q0) - m0;
                y[l + 32] = d1 * f32::from(q1) - m1;
            }
        }
    }
}

/// Reference quantizer (as ggml's `quantize_row_q5_K_ref`: the Q4_K procedure with 31
/// levels and grids `31 - 0.5 + 0.1 k`, k = 0..=15).
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    const SEARCH: Qkx2Search = Qkx2Search {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let blocks: &mut [BlockQ5K] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK_K, src.len(), "Q5_K row length");
    let mut l = [0u8; QK_K];
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK_K)) {
        (b.d, b.dmin, b.scales) = quantize_k4_scales(x, 31, &SEARCH, &mut l);
        b.qh = [0; QK_K / 8];
        for (c, l) in l.chunks_exact(64).enumerate() {
            for j in 0..32 {
                let (lo, hi) = (l[j], l[j + 32]);
                b.qs[32 * c + j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
                b.qh[j] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            }
        }
    }
}

/// Q5_K weights against Q8_K activations; the same sums as Q4_K's with 5-bit quants.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ5K] = as_blocks(w);
    let a: &[BlockQ8K] = as_blocks(act);
    assert!(
        w.len() * QK_K == n && a.len() == w.len(),
        "Q5_K vec_dot lengths"
    );
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for (c, qa) in y.qs.chunks_exact(64).enumerate() {
            let (mut s0, mut s1) = (0i32, 0i32);
            for l in 0..32 {
                let (q0, q1) = quants(x, c, l);
                s0 += i32::from(q0) * i32::from(qa[l]);
                s1 += i32::from(q1) * i32::from(qa[l + 32]);
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
