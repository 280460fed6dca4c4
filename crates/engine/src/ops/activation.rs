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
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 checked just above, FMA by this function's contract.
        return unsafe { silu_mul_avx2(gate, up) };
    }
    silu_mul_portable(gate, up)
}

/// [`silu_mul_portable`] with the groups of eight in vectors ([`ggml_v_expf8`]): the same
/// operations per lane in the same order, so the same bits.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(gate.len(), up.len());
    let split = gate.len() / 8 * 8;
    let (gv, gt) = gate.split_at_mut(split);
    let (uv, ut) = up.split_at(split);
    for (g, u) in gv.chunks_exact_mut(8).zip(uv.chunks_exact(8)) {
        // SAFETY: both chunks hold eight floats; AVX2 and FMA (this function's contract).
        unsafe {
            let x = _mm256_loadu_ps(g.as_ptr());
            let e = ggml_v_expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(
                g.as_mut_ptr(),
                _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr())),
            );
        }
    }
    for (g, u) in gt.iter_mut().zip(ut) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
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

/// [`ggml_v_expf`] of eight lanes at once, as ggml's AVX2 `ggml_v_expf` computes them: the same
/// operations per lane, so the same bits. Lanes with `|n| > 126` (`x` beyond about +-87, where
/// the result over- or underflows) take the scalar function, all eight of them then.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn ggml_v_expf8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let r = c(0x4b40_0000);
    let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_set1_epi32(1.0f32.to_bits() as i32),
    ));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(c(0x3f7f_fff6), b),
    );
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0))) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let mut v = [0.0f32; 8];
    // SAFETY: `v` holds eight floats.
    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), x) };
    for v in v.iter_mut() {
        *v = ggml_v_expf(*v);
    }
    // SAFETY: as above.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// [`ggml_v_expf8`] in sixteen lanes (AVX-512): the same operations per lane, so the same
/// bits as the scalar [`ggml_v_expf`]; if any lane has `|n| > 126` all sixteen take the
/// scalar function.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn ggml_v_expf16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
    let r = c(0x4b40_0000);
    let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), x));
    let e = _mm512_slli_epi32::<23>(_mm512_castps_si512(z));
    let k = _mm512_castsi512_ps(_mm512_add_epi32(
        e,
        _mm512_set1_epi32(1.0f32.to_bits() as i32),
    ));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm512_mul_ps(c(0x3f7f_fff6), b),
    );
    let abs_n = _mm512_castsi512_ps(_mm512_and_si512(
        _mm512_castps_si512(n),
        _mm512_set1_epi32(0x7fff_ffff),
    ));
    if _mm512_cmp_ps_mask::<_CMP_GT_OQ>(abs_n, _mm512_set1_ps(126.0)) == 0 {
        return _mm512_fmadd_ps(j, k, k);
    }
    let mut v = [0.0f32; 16];
    // SAFETY: `v` holds sixteen floats.
    unsafe { _mm512_storeu_ps(v.as_mut_ptr(), x) };
    for v in v.iter_mut() {
        *v = ggml_v_expf(*v);
    }
    // SAFETY: as above.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}

/// GeGLU with the tanh approximation of GELU (Gemma family), as ggml's CPU backend computes it
/// (`ggml_vec_geglu_f32` with `GGML_GELU_FP16`, which ggml-cpu/vec.h always defines): inputs at
/// or below -10 give 0, at or above 10 pass through, and everything between is rounded to f16
/// and looked up in a 65 536-entry table of f16 GELU values. The f16 rounding of both the input
/// and the result moves each value by up to 2^-11 relative; summed over 2048-wide MLPs and 18
/// layers, computing GELU exactly in f32 instead shifted Gemma 3's log-probabilities by up to
/// 0.4 nat from llama.cpp's, so we reproduce the table.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    let table = gelu_f16_table();
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            let h = table[half::f16::from_f32(x).to_bits() as usize];
            half::f16::from_bits(h).to_f32() * u
        };
    }
}

/// ggml's scalar tanh-approximated GELU (`ggml_gelu_f32`), evaluated in the order GCC compiles
/// it for x86-64 (`-ffp-contract=fast` fuses `1 + a*x*x` into one fma; the rest are separate
/// roundings); `tanh` is the platform libm's `tanhf`, as in ggml.
pub fn gelu_tanh_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044_715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = (GELU_COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

/// The f16 GELU table (`ggml_table_gelu_f16`): entry `i` is GELU of the f16 whose bits are `i`,
/// rounded to f16. Built once (128 KiB), on first use; models that use GELU build it at load so
/// that no decode step allocates.
pub fn gelu_f16_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|i| {
                let y = gelu_tanh_f32(half::f16::from_bits(i).to_f32());
                if y.is_nan() {
                    // F16C's conversion keeps a NaN's sign and drops its payload.
                    0x7e00 | ((y.to_bits() >> 16) as u16 & 0x8000)
                } else {
                    half::f16::from_f32(y).to_bits()
                }
            })
            .collect()
    })
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

    /// Inputs across every path of `ggml_v_expf`: the common range, the edges of `|n| <= 126`,
    /// overflow and underflow, infinities and NaN, in random order so that special lanes
    /// share vectors with common ones.
    #[cfg(target_arch = "x86_64")]
    fn exp_inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        for edge in [87.0f32, 87.3, 87.4, 88.0, 88.8, 89.0, 133.0, 134.0, 200.0] {
            for d in [-0.01f32, 0.0, 0.01] {
                v.extend([edge + d, -edge - d]);
            }
        }
        v.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            1e-30,
            -1e-30,
        ]);
        let mut seed = 7u64;
        for i in (1..v.len()).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.swap(i, (seed >> 33) as usize % (i + 1));
        }
        v
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ggml_v_expf16_is_the_scalar_lane_by_lane() {
        use std::arch::x86_64::*;
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no AVX-512F: ggml_v_expf16 NOT tested");
            return;
        }
        let x = exp_inputs();
        for c in x.chunks_exact(16) {
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F checked; both arrays hold sixteen floats.
            unsafe {
                _mm512_storeu_ps(got.as_mut_ptr(), ggml_v_expf16(_mm512_loadu_ps(c.as_ptr())))
            };
            for (x, g) in c.iter().zip(got) {
                let want = ggml_v_expf(*x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp({x}): {g} vs scalar {want}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ggml_v_expf8_is_the_scalar_lane_by_lane() {
        use std::arch::x86_64::*;
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            eprintln!("SKIPPED: no AVX2 + FMA: ggml_v_expf8 NOT tested");
            return;
        }
        let x = exp_inputs();
        for c in x.chunks_exact(8) {
            let mut got = [0.0f32; 8];
            // SAFETY: AVX2 and FMA checked; both arrays hold eight floats.
            unsafe {
                _mm256_storeu_ps(got.as_mut_ptr(), ggml_v_expf8(_mm256_loadu_ps(c.as_ptr())))
            };
            for (x, g) in c.iter().zip(got) {
                let want = ggml_v_expf(*x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp({x}): {g} vs scalar {want}"
                );
            }
        }
    }

    #[test]
    fn silu_mul_equals_the_portable_loop_bit_for_bit() {
        let x = (-400..400).map(|i| i as f32 * 0.31).collect::<Vec<f32>>();
        let up: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        for len in [x.len(), 13, 8, 3] {
            let (mut fast, mut slow) = (x[..len].to_vec(), x[..len].to_vec());
            silu_mul(&mut fast, &up[..len]);
            silu_mul_portable(&mut slow, &up[..len]);
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                assert_eq!(f.to_bits(), s.to_bits(), "element {i} of {len}: {f} vs {s}");
            }
        }
    }

    /// Our table equals ggml's entry for entry: its FNV-1a hash and a few entries were taken
    /// from llama.cpp's own `ggml_table_gelu_f16` by tests/data/record_gelu_table.py.
    #[test]
    fn gelu_table_equals_ggml() {
        let t = gelu_f16_table();
        for (i, want) in [
            (0x3c00, 0x3abb), // gelu(1) = 0.8413
            (0xbc00, 0xb115),
            (0x4000, 0x3fd2),
            (0x3800, 0x3588),
            (0xb800, 0xb0f0),
            (0x0001, 0x0000),
            (0xc8d0, 0x8000), // gelu(-9.625) = -0.0
            (0xfc00, 0xfe00), // -inf * 0 = NaN, sign kept
        ] {
            assert_eq!(t[i], want, "entry {i:#06x}");
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in t.iter().flat_map(|v| v.to_le_bytes()) {
            h = (h ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(h, 0xab04_4edb_a0ed_200c, "FNV-1a of the whole table");
    }

    #[test]
    fn geglu_clamps_and_uses_the_table() {
        let mut g = vec![-12.0, 12.0, 1.0, 0.5];
        gelu_tanh_mul(&mut g, &[2.0, 2.0, 2.0, 3.0]);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[1], 24.0);
        // f16 table values, not the f32 function: gelu(1) = 0.841192 in f32, 0.84130859 in f16.
        assert_eq!(g[2], half::f16::from_bits(0x3abb).to_f32() * 2.0);
        assert_eq!(g[3], half::f16::from_bits(0x3588).to_f32() * 3.0);
        assert!((g[2] / 2.0 - gelu_tanh_f32(1.0)).abs() < 5e-4);
    }
}
