//! Q4_0: blocks of 32 4-bit quants with one f16 scale and an implicit offset of 8
//! (4.5 bits per weight). Dotted with Q8_0 activations.
//!
//! Nibble layout: byte `j` holds element `j` in its low nibble and element `j + 16` in its
//! high nibble, so a SIMD kernel gets the two halves of a block with one mask and one shift.

use super::block_view::{as_blocks, as_blocks_mut, Block, F16Le};
use super::q8_0::BlockQ8_0;
use super::{BlockAcc8, QK4_0};

/// ggml's `block_q4_0`: `x[i] = d * (q[i] - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0 {
    pub d: F16Le,
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ4_0 {}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4_0] = as_blocks(src);
    assert_eq!(blocks.len() * QK4_0, dst.len(), "Q4_0 row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK4_0)) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_0 / 2);
        for ((&q, lo), hi) in b.qs.iter().zip(lo).zip(hi) {
            *lo = d * f32::from(i16::from(q & 0x0F) - 8);
            *hi = d * f32::from(i16::from(q >> 4) - 8);
        }
    }
}

/// As ggml's `quantize_row_q4_0_ref`: the scale maps the value of largest magnitude, sign
/// included, to -8, so the asymmetric range [-8, 7] loses nothing at its long end.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ4_0] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK4_0, src.len(), "Q4_0 row length");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK4_0)) {
        let max = signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = F16Le::from_f32(d);
        let (lo, hi) = x.split_at(QK4_0 / 2);
        for ((q, &x0), &x1) in b.qs.iter_mut().zip(lo).zip(hi) {
            // Truncation of `v + 8.5` is round-half-up of `v + 8`; the value is in [0.5, 16.5].
            let q0 = ((x0 * id + 8.5) as u8).min(15);
            let q1 = ((x1 * id + 8.5) as u8).min(15);
            *q = q0 | (q1 << 4);
        }
    }
}

/// The value of largest magnitude, with its sign (the first one on ties), or 0.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Q4_0 weights against Q8_0 activations: `sum_blocks dw * da * sum_i (qw[i] - 8) * qa[i]`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ4_0] = as_blocks(w);
    let a: &[BlockQ8_0] = as_blocks(act);
    assert!(
        w.len() * QK4_0 == n && a.len() == w.len(),
        "Q4_0 vec_dot lengths"
    );
    // Summed in the order of ggml's AVX2 kernel (see `BlockAcc8`).
    let mut acc = BlockAcc8::default();
    for (x, y) in w.iter().zip(a) {
        let mut prods = [0i32; QK4_0];
        for (j, &q) in x.qs.iter().enumerate() {
            prods[j] = (i32::from(q & 0x0F) - 8) * i32::from(y.qs[j]);
            prods[j + 16] = (i32::from(q >> 4) - 8) * i32::from(y.qs[j + 16]);
        }
        acc.add_block(x.d.to_f32() * y.d.to_f32(), &prods);
    }
    acc.sum()
}
