//! Gated-MLP activations, fused with the gate product: `gate[i] = act(gate[i]) * up[i]`.

/// SwiGLU (llama family): silu(g) * u with silu(g) = g / (1 + e^-g).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// GeGLU with the tanh approximation of GELU (Gemma family).
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        *g = 0.5 * x * (1.0 + inner.tanh()) * u;
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 3.0, -2.0, 10.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > x[1] && x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn silu_known_values() {
        let mut g = vec![0.0, 1.0, -1.0];
        silu_mul(&mut g, &[2.0, 2.0, 2.0]);
        assert!((g[0]).abs() < 1e-7);
        assert!((g[1] - 2.0 * 0.731_058_6).abs() < 1e-5);
        assert!((g[2] + 2.0 * 0.268_941_43).abs() < 1e-5);
    }
}
