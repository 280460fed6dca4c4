//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * w`, with ggml's CPU arithmetic so results
//! equal llama.cpp's to the bit: squares in f32, summed in order in f64 (`ggml_float`), the
//! mean rounded to f32, `scale = 1 / sqrt(mean + eps)` in f32, then `(x * scale) * w`.
//! (Gemma's "1 + w" convention is already folded into the weights by llama.cpp's converter.)

/// `1 / sqrt(mean(x^2) + eps)` as `ggml_compute_forward_rms_norm_f32` computes it.
#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    debug_assert!(out.len() == x.len() && x.len() == w.len());
    let scale = inv_rms(x, eps);
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// In-place RMSNorm (used for per-head query/key norms).
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), w.len());
    let scale = inv_rms(x, eps);
    for (v, g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_weights_give_unit_rms() {
        let x: Vec<f32> = (0..96).map(|i| i as f32 - 40.0).collect();
        let w = vec![1.0; 96];
        let mut y = vec![0.0; 96];
        rms_norm(&mut y, &x, &w, 0.0);
        let rms = (y.iter().map(|v| v * v).sum::<f32>() / 96.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-5);
    }
}
