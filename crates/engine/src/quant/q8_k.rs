//! Q8_K: super-blocks of 256 signed bytes with an f32 scale and the sums of each 16 quants.
//!
//! The activation format of every K-quant. The scale is f32 (not f16) because it is never
//! stored in a file, and the per-16 sums (`bsums`) let a K-quant kernel apply its per-group
//! minimum as `min_j * bsum_j` without a second pass over the quants. The quantizer rounds
//! exactly as ggml's `quantize_row_q8_K_ref`: the signed value of largest magnitude maps to
//! -127 (`d = max / -127`, so `d` may be negative) and quants round half to even.

use super::block_view::{as_blocks, as_blocks_mut, Block, F32Le, I16Le};
use super::k_search::nearest_int;
use super::QK_K;

/// ggml's `block_q8_K`: `x[i] = d * qs[i]`, `bsums[j] = sum(qs[16 j .. 16 j + 16])`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: F32Le,
    pub qs: [i8; QK_K],
    pub bsums: [I16Le; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, any bits valid.
unsafe impl Block for BlockQ8K {}

impl BlockQ8K {
    /// The sum of quants `16 j .. 16 j + 16`.
    #[inline]
    pub fn bsum(&self, j: usize) -> i32 {
        i32::from(self.bsums[j].get())
    }
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ8K] = as_blocks(src);
    assert_eq!(blocks.len() * QK_K, dst.len(), "Q8_K row length");
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.get();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = d * f32::from(q);
        }
    }
}

pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [BlockQ8K] = as_blocks_mut(dst);
    assert_eq!(blocks.len() * QK_K, src.len(), "Q8_K row length");
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK_K)) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            // ggml leaves bsums unwritten here; we zero them so the block is deterministic.
            b.d = F32Le::new(0.0);
            b.qs = [0; QK_K];
            b.bsums = [I16Le::default(); QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            // Only the value equal to `max` can round past 127 (by float error), hence `min`.
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
            *s = I16Le::new(sum as i16);
        }
        b.d = F32Le::new(1.0 / iscale);
    }
}

/// Q8_K against Q8_K (no ggml kernel; here so every type has a `vec_dot`).
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let w: &[BlockQ8K] = as_blocks(w);
    let a: &[BlockQ8K] = as_blocks(act);
    assert!(
        w.len() * QK_K == n && a.len() == w.len(),
        "Q8_K vec_dot lengths"
    );
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| i32::from(p) * i32::from(q))
                .sum();
        sum += x.d.get() * y.d.get() * sumi as f32;
    }
    sum
}
