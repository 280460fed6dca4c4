//! Gated-MLP activations, fused with the gate product: `gate[i] = act(gate[i]) * up[i]`.

/// SwiGLU (llama family): `silu(g) * u` with `silu(g) = g / (1 + e^-g)`, computed as ggml's
/// `ggml_vec_swiglu_f32` does on x86 AVX2 so the result equals llama.cpp's to the bit: whole
/// groups of eight take ggml's vector exponential ([`ggml_v_expf`]), a tail of fewer than
/// eight takes libm's `expf` as ggml's scalar loop does.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above).
        return unsafe { silu_mul_fma(gate, up) };
    }
    silu_mul_portable(gate, up)
}

/// [`silu_mul_portable`] compiled with FMA enabled: same results bit for bit, but each
/// `mul_add` is one instruction instead of a libm call.
///
/// # Safety
/// The CPU must have FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn silu_mul_fma(gate: &mut [f32], up: &[f32]) {
    silu_mul_portable(gate, up)
}

#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    let split = gate.len() / 8 * 8;
    let (gv, gt) = gate.split_at_mut(split);
    let (uv, ut) = up.split_at(split);
    for (g, u) in gv.iter_mut().zip(uv) {
        // ggml_v_silu: x / (1 + expf(0 - x)), then one multiply by the up value.
        *g = *g / (1.0 + ggml_v_expf(0.0 - *g)) * u;
    }
    for (g, u) in gt.iter_mut().zip(ut) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// One lane of ggml's AVX2 `ggml_v_expf` (ggml-cpu/vec.h): `2^n * p(b)` with `n = round(x /
/// ln 2)`, `b = x - n ln 2` (ln 2 split in two) and a degree-5 polynomial, written with the
/// same fused multiply-adds (`mul_add` is exactly `_mm256_fmadd_ps` per lane, on any CPU) and
/// the same handling of large `|n|`. Differs from libm's `expf` by up to about one ulp, which
/// is why it must be this function and not `f32::exp`.
#[inline(always)]
pub fn ggml_v_expf(x: f32) -> f32 {
    let f = f32::from_bits;
    let r = f(0x4b40_0000); // 0x1.8p23: adding it rounds to an integer in the low mantissa bits
    let z = x.mul_add(f(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    // _mm256_fnmadd_ps(a, b, c) = c - a * b with one rounding = (-a).mul_add(b, c).
    let b = (-n).mul_add(f(0x35bf_be8e), (-n).mul_add(f(0x3f31_7200), x));
    let e = z.to_bits() << 23;
    let k = f(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = f(0x3c07_2010)
        .mul_add(b, f(0x3d2b_9f17))
        .mul_add(u, f(0x3e2a_af33).mul_add(b, f(0x3eff_fedb)))
        .mul_add(u, f(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 || n.is_nan() {
        // The `c` mask (|n| > 126, ordered) is clear: the common case.
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f(g.wrapping_add(0x7f00_0000));
    let s2 = f(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
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
