//! Q5_0: blocks of 32 5-bit quants with one f16 scale and an implicit offset of 16
//! (5.5 bits per weight). Dotted with Q8_0 activations.
//!
//! The low four bits are packed as Q4_0's nibbles (byte `j`: element `j` low, `j + 16` high);
//! the fifth bits of all 32 elements sit in one little-endian `u32` (`qh`), bit `i` for
//! element `i`, so a kernel can spread them into bytes with one table or bit trick.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::q4_0::signed_absmax;
use super::q8_0::BlockQ8_0;
use super::{BlockAcc8, QK5_0};

/// ggml's `block_q5_0`: `x[i] = d * (q[i] - 16)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_0 {
    pub d: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ5_0 {}

/// The 5-bit quants (0..=31) of elements `j` and `j + 16` of a block.
#[inline]
pub(crate) fn quants5(qs: &[u8; 16], qh: u32, j: usize) -> (u8, u8) {
    let h0 = ((qh >> j) & 1) as u8;
    let h1 = ((qh >> (j + 16)) & 1) as u8;
    ((qs[j] & 0x0F) | (h0 << 4), (qs[j] >> 4) | (h1 << 4))
}

/// Packs 5-bit quants of elements `j` and `j + 16` (as `quants5` reads them).
#[inline]
pub(crate) fn pack5(qs: &mut [u8; 16], qh: &mut u32, j: usize, q0: u8, q1: u8) {
    qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
    *qh |= u32::from(q0 >> 4) << j;
    *qh |= u32::from(q1 >> 4) << (j + 16);
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ5_0] = as_blocks(src);
    assert_eq!(blocks.len() * QK5_0, dst.len(), "Q5_0 row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK5_0)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK5_0 / 2 {
            let (q0, q1) = quants5(&b.qs, qh, j);
            y[j] = d * f32::from(i16::from(q0) - 16);
            y[j + 16] = d * f32::from(i16::from(q1) - 16);
        }
    }
}

/// As ggml's `quantize_row_q5_0_ref`: the signed value of largest magnitude maps to -16.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ5_0] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK5_0, src.len(), "Q5_0 row length");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK5_0)) {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = F16Le::from_f32(d);
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let q0 = ((x[j] * id + 16.5) as u8).min(31);
            let q1 = ((x[j + 16] * id + 16.5) as u8).min(31);
            pack5(&mut b.qs, &mut qh, j, q0, q1);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Q5_0 weights against Q8_0 activations: `sum_blocks dw * da * sum_i (qw[i] - 16) * qa[i]`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ5_0] = as_blocks(w);
    let a: &[BlockQ8_0] = as_blocks(act);
    assert!(
        w.len() * QK5_0 == n && a.len() == w.len(),
        "Q5_0 vec_dot lengths"
    );
    // Summed in the order of ggml's AVX2 kernel (see `BlockAcc8`).
    let mut acc = BlockAcc8::default();
    for (x, y) in w.iter().zip(a) {
        let qh = u32::from_le_bytes(x.qh);
        let mut prods = [0i32; QK5_0];
        for j in 0..QK5_0 / 2 {
            let (q0, q1) = quants5(&x.qs, qh, j);
            prods[j] = (i32::from(q0) - 16) * i32::from(y.qs[j]);
            prods[j + 16] = (i32::from(q1) - 16) * i32::from(y.qs[j + 16]);
        }
        acc.add_block(x.d.to_f32() * y.d.to_f32(), &prods);
    }
    acc.sum()
}
