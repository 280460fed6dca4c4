//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * w`, accumulated in f32 as ggml does.
//! (Gemma's "1 + w" convention is already folded into the weights by llama.cpp's converter.)

pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    debug_assert!(out.len() == x.len() && x.len() == w.len());
    let ss = super::vec::dot(x, x);
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// In-place RMSNorm (used for per-head query/key norms).
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), w.len());
    let ss = super::vec::dot(x, x);
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
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
