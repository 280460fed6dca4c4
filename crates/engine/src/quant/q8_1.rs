//! Q8_1: Q8_0 plus `s = d * sum(qs)`, the activation format for Q4_1 and Q5_1 rows.
//!
//! Those weights decode as `d * q + m`; the `m` term of their dot product is
//! `m * da * sum(qa)`, so precomputing `s` once per activation block saves a pass per row.
//! The quantizer rounds as ggml's `quantize_row_q8_1_ref`: the quants as Q8_0's, and
//! `s` from the integer sum times the f32 scale (not the f16-rounded one).

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::q8_0::{dot_i8, quantize_block};
use super::QK8_1;

/// ggml's `block_q8_1`: `x[i] = d * qs[i]`, `s = d * sum(qs)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_1 {
    pub d: F16Le,
    pub s: F16Le,
    pub qs: [i8; QK8_1],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ8_1 {}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ8_1] = as_blocks(src);
    assert_eq!(blocks.len() * QK8_1, dst.len(), "Q8_1 row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK8_1)) {
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = d * f32::from(q);
        }
    }
}

pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ8_1] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK8_1, src.len(), "Q8_1 row length");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK8_1)) {
        let d = quantize_block(x, &mut b.qs);
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        b.d = F16Le::from_f32(d);
        b.s = F16Le::from_f32(sum as f32 * d);
    }
}

/// Q8_1 against Q8_1 (ggml has no kernel for Q8_1 weights; this one exists so that every
/// type has a `vec_dot`): `sum_blocks dw * da * sum_i qw[i] * qa[i]`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ8_1] = as_blocks(w);
    let a: &[BlockQ8_1] = as_blocks(act);
    assert!(
        w.len() * QK8_1 == n && a.len() == w.len(),
        "Q8_1 vec_dot lengths"
    );
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi = dot_i8(&x.qs, &y.qs);
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}
