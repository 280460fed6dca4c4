//! Q8_0: blocks of 32 signed bytes with one f16 scale (8.5 bits per weight).
//!
//! Used for weights and, above all, as the activation format that Q4_0, Q5_0 and Q8_0 rows
//! are dotted with, so its quantizer runs on every token and rounds exactly as ggml's
//! `quantize_row_q8_0_ref`: `d = amax / 127`, `q = round(x / d)` with ties away from zero.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::{BlockAcc8, QK8_0};

/// ggml's `block_q8_0`: `x[i] = d * qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    pub d: F16Le,
    pub qs: [i8; QK8_0],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ8_0 {}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ8_0] = as_blocks(src);
    assert_eq!(blocks.len() * QK8_0, dst.len(), "Q8_0 row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = d * f32::from(q);
        }
    }
}

/// Quantizes one block's 32 values: the shared step of Q8_0 and Q8_1. Returns the f32 scale
/// (before its rounding to f16, which Q8_1's sum term uses) and the quants.
#[inline]
pub(crate) fn quantize_block(x: &[f32], qs: &mut [i8; QK8_0]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    // The arithmetic of ggml's x86 SIMD quantizer (what llama.cpp runs on every x86-64 CPU we
    // target): multiplier 127/amax (not 1/d: they differ in the last bit) and rounding half to
    // even. Every tier of ours must produce these exact bytes, so greedy tokens agree with
    // llama.cpp and with each other on any CPU.
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * id| <= 127 up to one ulp, and `as` saturates, so no clamp is needed.
        *q = (v * id).round_ties_even() as i8;
    }
    d
}

pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ8_0] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK8_0, src.len(), "Q8_0 row length");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK8_0)) {
        let d = quantize_block(x, &mut b.qs);
        b.d = F16Le::from_f32(d);
    }
}

/// Integer dot product of the quants of two blocks (at most 32 * 127 * 128 in magnitude).
#[inline]
pub(crate) fn dot_i8(a: &[i8; QK8_0], b: &[i8; QK8_0]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// Q8_0 weights against Q8_0 activations: `sum_blocks dw * da * sum_i qw[i] * qa[i]`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ8_0] = as_blocks(w);
    let a: &[BlockQ8_0] = as_blocks(act);
    assert!(
        w.len() * QK8_0 == n && a.len() == w.len(),
        "Q8_0 vec_dot lengths"
    );
    // Summed in the order of ggml's AVX2 kernel (see `BlockAcc8`).
    let mut acc = BlockAcc8::default();
    for (x, y) in w.iter().zip(a) {
        let mut prods = [0i32; QK8_0];
        for (p, (&qx, &qy)) in prods.iter_mut().zip(x.qs.iter().zip(&y.qs)) {
            *p = i32::from(qx) * i32::from(qy);
        }
        acc.add_block(x.d.to_f32() * y.d.to_f32(), &prods);
    }
    acc.sum()
}
