//! Q5_1: blocks of 32 5-bit quants with an f16 scale and an f16 minimum (6 bits per weight).
//! Dotted with Q8_1 activations. Bit layout as Q5_0 (see `q5_0.rs`).

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::q4_1::min_max;
use super::q5_0::{pack5, quants5};
use super::q8_1::BlockQ8_1;
use super::{BlockAcc8, QK5_1};

/// ggml's `block_q5_1`: `x[i] = d * q[i] + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ5_1 {}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ5_1] = as_blocks(src);
    assert_eq!(blocks.len() * QK5_1, dst.len(), "Q5_1 row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK5_1)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK5_1 / 2 {
            let (q0, q1) = quants5(&b.qs, qh, j);
            y[j] = d * f32::from(q0) + m;
            y[j + 16] = d * f32::from(q1) + m;
        }
    }
}

/// As ggml's `quantize_row_q5_1_ref`: min-max over the block, 31 steps between them.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ5_1] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK5_1, src.len(), "Q5_1 row length");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK5_1)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = F16Le::from_f32(d);
        b.m = F16Le::from_f32(min);
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
            let q0 = (((x[j] - min) * id + 0.5) as u8).min(31);
            let q1 = (((x[j + 16] - min) * id + 0.5) as u8).min(31);
            pack5(&mut b.qs, &mut qh, j, q0, q1);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Q5_1 weights against Q8_1 activations:
/// `sum_blocks dw * da * sum_i qw[i] * qa[i] + mw * sa`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ5_1] = as_blocks(w);
    let a: &[BlockQ8_1] = as_blocks(act);
    assert!(
        w.len() * QK5_1 == n && a.len() == w.len(),
        "Q5_1 vec_dot lengths"
    );
    // Summed in the order of ggml's AVX2 kernel (see `BlockAcc8`), the `m` terms in a separate
    // scalar `fma` chain (GCC contracts ggml's `summs += m * s`) added at the end.
    let mut acc = BlockAcc8::default();
    let mut summs = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        summs = x.m.to_f32().mul_add(y.s.to_f32(), summs);
        let qh = u32::from_le_bytes(x.qh);
        let mut prods = [0i32; QK5_1];
        for j in 0..QK5_1 / 2 {
            let (q0, q1) = quants5(&x.qs, qh, j);
            prods[j] = i32::from(q0) * i32::from(y.qs[j]);
            prods[j + 16] = i32::from(q1) * i32::from(y.qs[j + 16]);
        }
        acc.add_block(x.d.to_f32() * y.d.to_f32(), &prods);
    }
    acc.sum() + summs
}
