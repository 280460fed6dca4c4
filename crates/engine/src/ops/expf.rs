//! `expf` eight lanes at a time, giving the bits of the system's libm.
//!
//! llama.cpp's one-query attention kernel calls libm's `expf` once per key, and greedy parity
//! with it needs the same bits, so decode attention used to call it once per key as well (a
//! quarter of its time at depth). glibc (2.27 on) computes `expf` on x86-64 with FMA by a
//! table-driven algorithm in double precision: `x / ln2 = (k + r) / N` with `N = 32`, then
//! `2^(k / N)` from a 32-entry table times a degree-3 polynomial in `r`, rounded to f32 once.
//! [`expf8`] is that algorithm in AVX2 lanes, with the same fused operations in the same
//! order, so its results are the same bits; inputs of magnitude 88 or more (overflow,
//! underflow, infinities, NaN) take libm itself.
//!
//! Whether the system's libm is really that one (another version, another C library) is not
//! assumed: [`libm_matches`] compares the two on a spread of inputs once per process, and
//! [`exp_slice`] uses the lanes only when every one agreed.

use std::sync::OnceLock;

/// `T[i] = bits(2^(i / 32)) - (i << 52) / 32`: the table entry plus `k << 47` (k's low bits
/// select the entry, the rest land in the exponent) is the bits of `2^(k / 32)`.
#[cfg(target_arch = "x86_64")]
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `N / ln 2`.
#[cfg(target_arch = "x86_64")]
const INV_LN2_N: u64 = 0x40471547652b82fe;
/// `1.5 * 2^52`: adding it rounds to an integer held in the low mantissa bits.
#[cfg(target_arch = "x86_64")]
const SHIFT: u64 = 0x4338000000000000;
/// The polynomial's coefficients for `r` scaled by `1 / N`: `C0 r^3 + C1 r^2 + C2 r + 1`.
#[cfg(target_arch = "x86_64")]
const POLY: [u64; 3] = [0x3ebc6af84b912394, 0x3f2ebfce50fac4f3, 0x3f962e42ff0c52d6];

/// Inputs from which libm leaves the main path: `|x| >= 88`, infinities and NaN (the top
/// twelve bits below the sign, as libm tests them).
#[cfg(target_arch = "x86_64")]
const SPECIAL_ABSTOP: i32 = 0x42b;

/// Four lanes of the main path, in double.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn expf4(x: std::arch::x86_64::__m128) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    let c = |bits: u64| _mm256_castsi256_pd(_mm256_set1_epi64x(bits as i64));
    let xd = _mm256_cvtps_pd(x);
    let (inv, shift) = (c(INV_LN2_N), c(SHIFT));
    // k = round(x * N / ln2) in the low bits of `z`; r = x * N / ln2 - k, each fused.
    let z = _mm256_fmadd_pd(inv, xd, shift);
    let kd = _mm256_sub_pd(z, shift);
    let r = _mm256_fmsub_pd(inv, xd, kd);
    let ki = _mm256_castpd_si256(z);
    let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
    // SAFETY: every index is below 32, the table's length.
    let t = unsafe { _mm256_i64gather_epi64::<8>(TABLE.as_ptr().cast(), idx) };
    let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
    let p = _mm256_fmadd_pd(c(POLY[0]), r, c(POLY[1]));
    let r2 = _mm256_mul_pd(r, r);
    let y = _mm256_fmadd_pd(r, c(POLY[2]), _mm256_set1_pd(1.0));
    let y = _mm256_fmadd_pd(p, r2, y);
    _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
}

/// libm's `expf` of eight lanes (see the module comment); lanes outside the main path are
/// handed to libm one by one.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn expf8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 and FMA (this function's contract).
    let (lo, hi) = unsafe {
        (
            expf4(_mm256_castps256_ps128(x)),
            expf4(_mm256_extractf128_ps::<1>(x)),
        )
    };
    let y = _mm256_set_m128(hi, lo);
    // SAFETY: AVX2 (this function's contract).
    unsafe { special_lanes(x, y) }
}

/// [`expf8`] with AVX-512 F: the eight lanes' main path in one 512-bit vector of doubles,
/// and the table read by two in-register permutes instead of gathers. Same operations per
/// lane, so the same bits (and the same libm fallback for the special lanes).
///
/// # Safety
/// The CPU must have AVX-512 F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
pub unsafe fn expf8_avx512(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = |bits: u64| _mm512_castsi512_pd(_mm512_set1_epi64(bits as i64));
    let xd = _mm512_cvtps_pd(x);
    let (inv, shift) = (c(INV_LN2_N), c(SHIFT));
    let z = _mm512_fmadd_pd(inv, xd, shift);
    let kd = _mm512_sub_pd(z, shift);
    let r = _mm512_fmsub_pd(inv, xd, kd);
    let ki = _mm512_castpd_si512(z);
    // SAFETY: `TABLE` holds 32 entries: four vectors of eight.
    let t: [__m512i; 4] =
        std::array::from_fn(|i| unsafe { _mm512_loadu_si512(TABLE.as_ptr().add(8 * i).cast()) });
    // Index bits 0-3 pick among sixteen entries, bit 4 between the two halves.
    let lo = _mm512_permutex2var_epi64(t[0], ki, t[1]);
    let hi = _mm512_permutex2var_epi64(t[2], ki, t[3]);
    let upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
    let t = _mm512_mask_blend_epi64(upper, lo, hi);
    let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
    let p = _mm512_fmadd_pd(c(POLY[0]), r, c(POLY[1]));
    let r2 = _mm512_mul_pd(r, r);
    let y = _mm512_fmadd_pd(r, c(POLY[2]), _mm512_set1_pd(1.0));
    let y = _mm512_fmadd_pd(p, r2, y);
    let y = _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
    // SAFETY: AVX2 and FMA (this function's contract).
    unsafe { special_lanes(x, y) }
}

/// `y`, with the lanes of `x` that leave libm's main path recomputed by libm.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn special_lanes(
    x: std::arch::x86_64::__m256,
    y: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let abstop = _mm256_and_si256(
        _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
        _mm256_set1_epi32(0x7ff),
    );
    let special = _mm256_cmpgt_epi32(abstop, _mm256_set1_epi32(SPECIAL_ABSTOP - 1));
    if _mm256_testz_si256(special, special) != 0 {
        return y;
    }
    let (mut xs, mut ys) = ([0.0f32; 8], [0.0f32; 8]);
    // SAFETY: both arrays hold eight floats.
    unsafe {
        _mm256_storeu_ps(xs.as_mut_ptr(), x);
        _mm256_storeu_ps(ys.as_mut_ptr(), y);
    }
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        if ((x.to_bits() >> 20) & 0x7ff) as i32 >= SPECIAL_ABSTOP {
            *y = x.exp();
        }
    }
    // SAFETY: as above.
    unsafe { _mm256_loadu_ps(ys.as_ptr()) }
}

/// Whether [`expf8`] gives this process's libm `expf` bits (and the CPU can run it): checked
/// once, on every 251st f32 bit pattern of each sign plus the edges of the main path.
pub fn libm_matches() -> bool {
    static MATCHES: OnceLock<bool> = OnceLock::new();
    *MATCHES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let mut xs: Vec<f32> = (0..=u32::MAX / 251 / 64)
                .map(|i| f32::from_bits(i * 251 * 64))
                .collect();
            xs.extend([0.0, -0.0, 87.99, -87.99, 88.0, -88.0, -103.9, 1e-30, -1e-30]);
            xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
            return xs.chunks(8).all(|c| {
                let mut x = [0.0f32; 8];
                x[..c.len()].copy_from_slice(c);
                let mut y = [0.0f32; 8];
                // SAFETY: AVX2 and FMA detected above.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm256_storeu_ps(y.as_mut_ptr(), expf8(_mm256_loadu_ps(x.as_ptr())));
                }
                x.iter()
                    .zip(&y)
                    .all(|(x, y)| x.exp().to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
            });
        }
        false
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn eight_lanes_give_libms_bits_on_a_sweep_of_inputs() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            eprintln!("SKIPPED: host lacks AVX2 or FMA");
            return;
        }
        if !libm_matches() {
            // Another libm: the lanes are not used, which the check is for.
            eprintln!("SKIPPED: this libm's expf is not glibc's table algorithm");
            return;
        }
        // Every 61st bit pattern of [-104, 89] (the main path, its edges and the special
        // lanes), in both signs, against libm itself.
        let mut mismatches = 0usize;
        let mut x = [0.0f32; 8];
        let mut n = 0;
        let mut check = |x: &[f32; 8]| {
            let mut y = [0.0f32; 8];
            // SAFETY: features checked above.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(y.as_mut_ptr(), expf8(_mm256_loadu_ps(x.as_ptr())));
            }
            for (a, b) in x.iter().zip(&y) {
                if a.exp().to_bits() != b.to_bits() {
                    mismatches += 1;
                }
            }
        };
        for hi in [104.0f32.to_bits(), 89.0f32.to_bits()]
            .into_iter()
            .zip([0x8000_0000u32, 0])
        {
            let (top, sign) = hi;
            let mut b = 0u32;
            while b <= top {
                x[n] = f32::from_bits(b | sign);
                n += 1;
                if n == 8 {
                    check(&x);
                    n = 0;
                }
                b += 61;
            }
        }
        assert_eq!(mismatches, 0);
    }

    /// The AVX-512 lanes give the AVX2 lanes' bits everywhere, special inputs included
    /// (these fall back to libm in both).
    #[test]
    fn avx512_lanes_equal_the_avx2_lanes() {
        if !(std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma"))
        {
            eprintln!("SKIPPED: host lacks AVX-512 F, AVX2 or FMA");
            return;
        }
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (0..=u32::MAX / 97)
            .map(|i| f32::from_bits(i * 97))
            .collect();
        xs.extend([0.0, -0.0, 87.99, -87.99, 88.0, -88.0, -103.9, 1e-30, -1e-30]);
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN]);
        for c in xs.chunks(8) {
            let mut x = [0.0f32; 8];
            x[..c.len()].copy_from_slice(c);
            let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
            // SAFETY: features checked above.
            unsafe {
                _mm256_storeu_ps(a.as_mut_ptr(), expf8(_mm256_loadu_ps(x.as_ptr())));
                _mm256_storeu_ps(b.as_mut_ptr(), expf8_avx512(_mm256_loadu_ps(x.as_ptr())));
            }
            for ((x, a), b) in x.iter().zip(&a).zip(&b) {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{x}: {a} vs {b}"
                );
            }
        }
    }
}
