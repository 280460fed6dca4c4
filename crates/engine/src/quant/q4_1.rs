//! Q4_1: blocks of 32 4-bit quants with an f16 scale and an f16 minimum (5 bits per weight).
//! Dotted with Q8_1 activations, whose precomputed `s = da * sum(qa)` carries the `m` term.
//!
//! Nibble layout as Q4_0: byte `j` holds element `j` (low) and `j + 16` (high).

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::q8_1::BlockQ8_1;
use super::{BlockAcc8, QK4_1};

/// ggml's `block_q4_1`: `x[i] = d * q[i] + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ4_1 {}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4_1] = as_blocks(src);
    assert_eq!(blocks.len() * QK4_1, dst.len(), "Q4_1 row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK4_1)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_1 / 2);
        for ((&q, lo), hi) in b.qs.iter().zip(lo).zip(hi) {
            *lo = d * f32::from(q & 0x0F) + m;
            *hi = d * f32::from(q >> 4) + m;
        }
    }
}

/// The block's (min, max), as ggml starts them from +-FLT_MAX.
#[inline]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// As ggml's `quantize_row_q4_1_ref`: min-max over the block, 15 steps between them.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ4_1] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK4_1, src.len(), "Q4_1 row length");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK4_1)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = F16Le::from_f32(d);
        b.m = F16Le::from_f32(min);
        let (lo, hi) = x.split_at(QK4_1 / 2);
        for ((q, &x0), &x1) in b.qs.iter_mut().zip(lo).zip(hi) {
            let q0 = (((x0 - min) * id + 0.5) as u8).min(15);
            let q1 = (((x1 - min) * id + 0.5) as u8).min(15);
            *q = q0 | (q1 << 4);
        }
    }
}

/// Q4_1 weights against Q8_1 activations:
/// `sum_blocks dw * da * sum_i qw[i] * qa[i] + mw * sa`, summed as ggml's AVX2 kernel does
/// (see [`BlockAcc8`]), with the `m` terms in a separate scalar `fma` chain added at the end
/// (GCC contracts ggml's `summs += m * s` into `vfmadd231ss`).
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ4_1] = as_blocks(w);
    let a: &[BlockQ8_1] = as_blocks(act);
    assert!(
        w.len() * QK4_1 == n && a.len() == w.len(),
        "Q4_1 vec_dot lengths"
    );
    let mut acc = BlockAcc8::default();
    let mut summs = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        summs = x.m.to_f32().mul_add(y.s.to_f32(), summs);
        let mut prods = [0i32; QK4_1];
        for (j, &q) in x.qs.iter().enumerate() {
            prods[j] = i32::from(q & 0x0F) * i32::from(y.qs[j]);
            prods[j + 16] = i32::from(q >> 4) * i32::from(y.qs[j + 16]);
        }
        acc.add_block(x.d.to_f32() * y.d.to_f32(), &prods);
    }
    acc.sum() + summs
}
