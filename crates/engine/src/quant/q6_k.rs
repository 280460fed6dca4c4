//! Q6_K: super-blocks of 256 6-bit quants (offset 32) in 16 sub-blocks of 16, each with a
//! signed 8-bit scale, all scaled by one f16 `d` stored last (6.5625 bits per weight).
//! Dotted with Q8_K.
//!
//! Layout, per 128-element half `h` (64 bytes of `ql`, 32 of `qh`, 8 scales): for `l` in
//! 0..32, `ql[l]` holds the low nibbles of elements `l` (low) and `l + 64` (high),
//! `ql[l + 32]` those of `l + 32` and `l + 96`, and `qh[l]` the high 2 bits of elements
//! `l`, `l + 32`, `l + 64`, `l + 96` in bit pairs 0, 2, 4, 6. One 32-byte load of `ql` and
//! one of `qh` thus feed four 32-element runs with masks and shifts only.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::k_search::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::q8_k::BlockQ8K;
use super::QK_K;

/// ggml's `block_q6_K`: `x = d * scales[j] * (q - 32)` for sub-block `j` of 16.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16Le,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ6K {}

/// The signed quants (-32..32) of elements `l`, `l + 32`, `l + 64`, `l + 96` of half `h`.
#[inline]
fn quants(b: &BlockQ6K, h: usize, l: usize) -> [i32; 4] {
    let ql = &b.ql[64 * h..64 * h + 64];
    let qh = i32::from(b.qh[32 * h + l]);
    let (a, c) = (i32::from(ql[l]), i32::from(ql[l + 32]));
    [
        ((a & 0x0F) | ((qh & 3) << 4)) - 32,
        ((c & 0x0F) | (((qh >> 2) & 3) << 4)) - 32,
        ((a >> 4) | (((qh >> 4) & 3) << 4)) - 32,
        ((c >> 4) | (((qh >> 6) & 3) << 4)) - 32,
    ]
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ6K] = as_blocks(src);
    assert_eq!(blocks.len() * QK_K, dst.len(), "Q6_K row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (h, y) in y.chunks_exact_mut(128).enumerate() {
            for l in 0..32 {
                let q = quants(b, h, l);
                for (k, &q) in q.iter().enumerate() {
                    // Element 32 k + l of the half is in sub-block 2 k + l / 16.
                    let sc = f32::from(b.scales[8 * h + 2 * k + l / 16]);
                    y[32 * k + l] = d * sc * q as f32;
                }
            }
        }
    }
}

/// Reference quantizer (as ggml's `quantize_row_q6_K_ref`): a `make_qx_quants` search per
/// 16 elements, the 16 scales quantized to i8 against the one of largest magnitude (which
/// maps to -128, the long end of i8), then the elements re-quantized against the rounded
/// scales.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ6K] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK_K, src.len(), "Q6_K row length");
    let mut l = [0u8; QK_K];
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK_K)) {
        let mut scales = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs = 0.0f32;
        for (j, (xs, ls)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            scales[j] = make_qx_quants(xs, 32, ls);
            if scales[j].abs() > max_abs {
                max_abs = scales[j].abs();
                max_scale = scales[j];
            }
        }
        if max_abs < GROUP_MAX_EPS {
            *b = BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0; QK_K / 4],
                scales: [0; QK_K / 16],
                d: F16Le::default(),
            };
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = F16Le::from_f32(1.0 / iscale);
        for (s, &scale) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale).min(127) as i8;
        }
        let d = b.d.to_f32();
        for (j, (xs, ls)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            let dj = d * f32::from(b.scales[j]);
            if dj == 0.0 {
                continue;
            }
            for (l, &v) in ls.iter_mut().zip(xs) {
                *l = (nearest_int(v / dj).clamp(-32, 31) + 32) as u8;
            }
        }
        for (h, l) in l.chunks_exact(128).enumerate() {
            let ql = &mut b.ql[64 * h..64 * h + 64];
            let qh = &mut b.qh[32 * h..32 * h + 32];
            for j in 0..32 {
                let [q0, q1, q2, q3] = [l[j], l[j + 32], l[j + 64], l[j + 96]];
                ql[j] = (q0 & 0x0F) | ((q2 & 0x0F) << 4);
                ql[j + 32] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
                qh[j] = (q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6);
            }
        }
    }
}

/// Q6_K weights against Q8_K activations: `sum_blocks d * da * sum_j sc_j * sum(q * qa)`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ6K] = as_blocks(w);
    let a: &[BlockQ8K] = as_blocks(act);
    assert!(
        w.len() * QK_K == n && a.len() == w.len(),
        "Q6_K vec_dot lengths"
    );
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        // Per sub-block of 16 integer sums, then scaled: 16 * 32 * 128 * 127 fits easily.
        let mut sub = [0i32; QK_K / 16];
        for (h, qa) in y.qs.chunks_exact(128).enumerate() {
            for l in 0..32 {
                let q = quants(x, h, l);
                for (k, &q) in q.iter().enumerate() {
                    sub[8 * h + 2 * k + l / 16] += q * i32::from(qa[32 * k + l]);
                }
            }
        }
        let sumi: i32 = sub
            .iter()
            .zip(&x.scales)
            .map(|(&s, &sc)| s * i32::from(sc))
            .sum();
        sum += x.d.to_f32() * y.d.get() * sumi as f32;
    }
    sum
}
