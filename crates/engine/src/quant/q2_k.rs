//! Q2_K: super-blocks of 256 2-bit quants in 16 sub-blocks of 16, each with a 4-bit scale and
//! a 4-bit minimum (one byte: scale low, min high), scaled by f16 `d` and `dmin`
//! (2.625 bits per weight). Dotted with Q8_K.
//!
//! Quant layout: each 128-element half `h` uses 32 bytes `qs[32 h ..]`; bits `2 s .. 2 s + 2`
//! of byte `l` hold element `128 h + 32 s + l`, so four shifts of one 32-byte load give four
//! consecutive 32-element runs.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::k_search::{make_qkx2_quants, nearest_int, Qkx2Search};
use super::q8_k::BlockQ8K;
use super::QK_K;

/// ggml's `block_q2_K`: `x = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4)` for
/// sub-block `j` of 16.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: F16Le,
    pub dmin: F16Le,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ2K {}

/// The 2-bit quant of element `e` (0..256) of a block.
#[inline]
fn quant(qs: &[u8; QK_K / 4], e: usize) -> u8 {
    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[32 * h + l] >> (2 * s)) & 3
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ2K] = as_blocks(src);
    assert_eq!(blocks.len() * QK_K, dst.len(), "Q2_K row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (j, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * f32::from(b.scales[j] & 0x0F);
            let ml = dmin * f32::from(b.scales[j] >> 4);
            for (i, y) in y.iter_mut().enumerate() {
                *y = dl * f32::from(quant(&b.qs, 16 * j + i)) - ml;
            }
        }
    }
}

/// Reference quantizer (as ggml's `quantize_row_q2_K_ref`): make_qkx2 search per 16 with
/// weights `|x|` and absolute error (with only 4 levels, squared error lets one outlier
/// dominate), scales and mins to 4 bits against the block's largest, then re-quantization
/// against the rounded values.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    const SEARCH: Qkx2Search = Qkx2Search {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let blocks: &mut [BlockQ2K] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK_K, src.len(), "Q2_K row length");
    let mut l = [0u8; QK_K];
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK_K)) {
        let mut scales = [0.0f32; QK_K / 16];
        let mut mins = [0.0f32; QK_K / 16];
        let mut weights = [0.0f32; 16];
        for (j, (xs, ls)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, 3, ls, &SEARCH);
        }
        let max_scale = scales.iter().fold(0.0f32, |m, &s| m.max(s));
        let max_min = mins.iter().fold(0.0f32, |m, &s| m.max(s));
        b.scales = [0; QK_K / 16];
        b.d = F16Le::default();
        b.dmin = F16Le::default();
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for (s, &scale) in b.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * scale).clamp(0, 15) as u8;
            }
            b.d = F16Le::from_f32(max_scale / 15.0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for (s, &min) in b.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * min).clamp(0, 15) as u8) << 4;
            }
            b.dmin = F16Le::from_f32(max_min / 15.0);
        }
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (j, (xs, ls)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            let dj = d * f32::from(b.scales[j] & 0x0F);
            if dj == 0.0 {
                continue;
            }
            let mj = dmin * f32::from(b.scales[j] >> 4);
            for (l, &v) in ls.iter_mut().zip(xs) {
                *l = nearest_int((v + mj) / dj).clamp(0, 3) as u8;
            }
        }
        for (h, l) in l.chunks_exact(128).enumerate() {
            for j in 0..32 {
                b.qs[32 * h + j] = l[j] | (l[j + 32] << 2) | (l[j + 64] << 4) | (l[j + 96] << 6);
            }
        }
    }
}

/// Q2_K weights against Q8_K activations:
/// `sum_blocks da * (d * sum_j sc_j * sum(q * qa) - dmin * sum_j m_j * bsum_j)`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ2K] = as_blocks(w);
    let a: &[BlockQ8K] = as_blocks(act);
    assert!(
        w.len() * QK_K == n && a.len() == w.len(),
        "Q2_K vec_dot lengths"
    );
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        let mut mins = 0i32;
        for (h, qa) in y.qs.chunks_exact(128).enumerate() {
            let q = &x.qs[32 * h..32 * h + 32];
            for (s, qa) in qa.chunks_exact(32).enumerate() {
                // Elements 32 s .. 32 s + 32 of this half span sub-blocks 2 s and 2 s + 1.
                let (mut s0, mut s1) = (0i32, 0i32);
                for l in 0..16 {
                    s0 += i32::from((q[l] >> (2 * s)) & 3) * i32::from(qa[l]);
                    s1 += i32::from((q[l + 16] >> (2 * s)) & 3) * i32::from(qa[l + 16]);
                }
                let j = 8 * h + 2 * s;
                sumi += i32::from(x.scales[j] & 0x0F) * s0;
                sumi += i32::from(x.scales[j + 1] & 0x0F) * s1;
            }
        }
        for (j, &sc) in x.scales.iter().enumerate() {
            mins += i32::from(sc >> 4) * y.bsum(j);
        }
        let da = y.d.get();
        sum += da * (x.d.to_f32() * sumi as f32 - x.dmin.to_f32() * mins as f32);
    }
    sum
}
