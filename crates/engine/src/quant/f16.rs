//! F16: IEEE half-precision elements, one per "block". Dotted with F32 activations.
//!
//! Conversion goes through the `half` crate, which rounds to nearest even as ggml does.

use super::block_view::{f32s, F16Le};

fn halves(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(2).map(|b| F16Le([b[0], b[1]]).to_f32())
}

pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "F16 row length");
    for (y, x) in dst.iter_mut().zip(halves(src)) {
        *y = x;
    }
}

pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), 2 * src.len(), "F16 row length");
    for (y, &x) in dst.chunks_exact_mut(2).zip(src) {
        y.copy_from_slice(&F16Le::from_f32(x).0);
    }
}

/// F16 weights against F32 activations. Like ggml's scalar `ggml_vec_dot_f16`, products are
/// taken in f32 and summed in f64, so long rows lose no precision to the running sum.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    assert!(
        w.len() == 2 * n && act.len() == 4 * n,
        "F16 vec_dot lengths"
    );
    halves(w)
        .zip(f32s(act))
        .map(|(x, y)| f64::from(x * y))
        .sum::<f64>() as f32
}
