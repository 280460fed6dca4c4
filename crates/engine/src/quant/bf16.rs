//! BF16: bfloat16 elements (the top half of an f32), one per "block". Dotted with F32
//! activations.
//!
//! Conversion goes through the `half` crate: widening is exact, narrowing rounds to nearest
//! even and keeps NaNs quiet, as ggml's `GGML_FP32_TO_BF16`.

use super::block_view::{f32s, Bf16Le};

fn bf16s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(2).map(|b| Bf16Le([b[0], b[1]]).to_f32())
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "BF16 row length");
    for (y, x) in dst.iter_mut().zip(bf16s(src)) {
        *y = x;
    }
}

pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), 2 * src.len(), "BF16 row length");
    for (y, &x) in dst.chunks_exact_mut(2).zip(src) {
        y.copy_from_slice(&Bf16Le::from_f32(x).0);
    }
}

/// BF16 weights against F32 activations: products in f32, summed in f64 (as `f16.rs`).
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    assert!(
        w.len() == 2 * n && act.len() == 4 * n,
        "BF16 vec_dot lengths"
    );
    bf16s(w)
        .zip(f32s(act))
        .map(|(x, y)| f64::from(x * y))
        .sum::<f64>() as f32
}
