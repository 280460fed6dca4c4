//! AVX-512 (F + BW + VL) kernels, each in two builds: plain, with `vpmaddubsw` + `vpmaddwd`,
//! and VNNI, with `vpdpbusd` (u8 x i8 quads straight into i32) and `vpdpwssd`. Types: Q4_0,
//! Q4_1, Q8_0 (the integer products of two blocks per 512-bit step, an odd last block in 256
//! bits), Q4_K, Q6_K (half a super-block per step) and F32. The AVX-512 tier takes every other
//! type from the AVX2 tables, and the activation quantizers too.
//!
//! The legacy formats (Q4_0, Q4_1, Q8_0) accumulate their floats exactly as the reference
//! (`quant::BlockAcc8`: one 8-lane fma per block in block order, ggml's horizontal sum, and
//! Q4_1's `m * s` terms in a scalar fma chain), so they give the scalar and AVX2 paths' bits;
//! only the exact integer part is 512 bits wide. The K-quants and F32 sum in their own order.
//!
//! Status: written on an AVX2-only host against a software model of each `_mm512` intrinsic;
//! `tests/kernels_equiv.rs` has since passed for both builds on real AVX-512 hardware (Zen 4),
//! Q4_0/Q4_1/Q8_0 bit-identical to the reference. The tier is opt-in (`cpu::Kernels::detect`).
//!
//! Same contract as `avx2.rs`: `unsafe fn` kernels with `#[target_feature]`, reached only
//! through safe wrappers that `super` hands out after runtime detection.

use std::arch::x86_64::*;

use super::avx2::{self, hsum_ps, load_f16, load_f16_x8, loadu, loadu128, nibbles, safe_vec_dot};
use super::avx2_k::{mins_dot_bsums, Q4_K_BYTES, Q6K_SCALE_SHUFFLE, Q6_K_BYTES, Q8K_BSUMS};
use super::avx2_k::{Q8K_QS, Q8_K_BYTES};
use crate::cpu::k_scales::unpack_q4_k;
use crate::cpu::row_blocks;

/// Two 32-byte vectors as one 64-byte vector (`lo` in bytes 0..32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The two 256-bit halves of a 512-bit vector (bytes 0..32, 32..64).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn split(v: __m512i) -> (__m256i, __m256i) {
    (_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// `acc + d * p` for one 32-element block of a legacy format, as ggml's AVX2 kernels and
/// `quant::BlockAcc8` do it: `d = dw * da` rounded to f32, then one 8-lane fma of the block's
/// eight exact i32 lane sums (lane `k`: elements `4k..4k + 4`).
///
/// # Safety
/// `x` and `y` valid for reading the f16 scale at the start of their blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn block_fma(acc: __m256, x: *const u8, y: *const u8, p: __m256i) -> __m256 {
    // SAFETY: two readable bytes at each of `x` and `y` (caller's contract).
    let d = unsafe { _mm256_mul_ps(load_f16_x8(x), load_f16_x8(y)) };
    _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc)
}

/// Thirty-two i16 lanes: sixteen of `lo` then sixteen of `hi`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn halves_epi16(lo: u8, hi: u8) -> __m512i {
    _mm512_mask_blend_epi16(
        0xFFFF_0000,
        _mm512_set1_epi16(i16::from(lo)),
        _mm512_set1_epi16(i16::from(hi)),
    )
}

/// `x` with the sign of each byte moved onto `y`: `(|x|, sign(x) * y)` for u8 x i8 products.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn sign_split(x: __m512i, y: __m512i) -> (__m512i, __m512i) {
    let neg = _mm512_movepi8_mask(x);
    (
        _mm512_abs_epi8(x),
        _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y),
    )
}

/// Sixteen i32 sums of four u8 x i8 products, without VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_u8_i8_plain(u: __m512i, s: __m512i) -> __m512i {
    _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
}

/// Sixteen i32 sums of four u8 x i8 products, by `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c,avx512vnni")]
fn dot_u8_i8_vnni(u: __m512i, s: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
}

/// `acc + madd(a, b)` (i16 pairs to i32), without VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn madd_acc_plain(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    _mm512_add_epi32(acc, _mm512_madd_epi16(a, b))
}

/// `acc + madd(a, b)` (i16 pairs to i32), by `vpdpwssd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c,avx512vnni")]
fn madd_acc_vnni(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    _mm512_dpwssd_epi32(acc, a, b)
}

/// Builds one family of kernels for the given target features and integer primitives.
macro_rules! avx512_kernels {
    (
        features = $feat:literal,
        dot_u8_i8 = $dot:ident,
        madd_acc = $madd_acc:ident,
        $q4_0:ident, $q4_1:ident, $q8_0:ident, $q4_k:ident, $q6_k:ident,
        wrappers: $w4_0:ident, $w4_1:ident, $w8_0:ident, $w4_k:ident, $w6_k:ident $(,)?
    ) => {
        safe_vec_dot!($w4_0 => $q4_0, 32, 18, 34);
        safe_vec_dot!($w4_1 => $q4_1, 32, 20, 36);
        safe_vec_dot!($w8_0 => $q8_0, 32, 34, 34);
        safe_vec_dot!($w4_k => $q4_k, 256, Q4_K_BYTES, Q8_K_BYTES);
        safe_vec_dot!($w6_k => $q6_k, 256, Q6_K_BYTES, Q8_K_BYTES);

        /// Q4_0 against Q8_0: the integer products of two blocks per 512-bit step, summed as
        /// `quant::BlockAcc8` (one 8-lane fma per block, in block order, then `hsum_ps`), so
        /// the result has the reference's and the AVX2 kernel's bits.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q4_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `< nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i + 2 <= nb {
                    let (x, y) = (w.add(i * 18), a.add(i * 34));
                    avx2::prefetch_weights(x, 2 * 18);
                    let qx = join(nibbles(x.add(2)), nibbles(x.add(20)));
                    let qx = _mm512_sub_epi8(qx, _mm512_set1_epi8(8));
                    let qy = join(loadu(y.add(2)), loadu(y.add(36)));
                    let (ux, sy) = sign_split(qx, qy);
                    let (p0, p1) = split($dot(ux, sy));
                    acc = block_fma(acc, x, y, p0);
                    acc = block_fma(acc, x.add(18), y.add(34), p1);
                    i += 2;
                }
                if i < nb {
                    let (x, y) = (w.add(i * 18), a.add(i * 34));
                    let qx = _mm256_sub_epi8(nibbles(x.add(2)), _mm256_set1_epi8(8));
                    acc = block_fma(acc, x, y, avx2::dot_i8_i8(qx, loadu(y.add(2))));
                }
                hsum_ps(acc)
            }
        }

        /// Q4_1 against Q8_1, two blocks per step, summed as the reference (`BlockAcc8`, and
        /// the `m * s` terms in their own fma chain added at the end).
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q4_1(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `< nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let mut summ = 0.0f32;
                let mut i = 0;
                while i + 2 <= nb {
                    let (x, y) = (w.add(i * 20), a.add(i * 36));
                    avx2::prefetch_weights(x, 2 * 20);
                    summ = load_f16(x.add(2)).mul_add(load_f16(y.add(2)), summ);
                    summ = load_f16(x.add(22)).mul_add(load_f16(y.add(38)), summ);
                    let qx = join(nibbles(x.add(4)), nibbles(x.add(24)));
                    let qy = join(loadu(y.add(4)), loadu(y.add(40)));
                    let (p0, p1) = split($dot(qx, qy));
                    acc = block_fma(acc, x, y, p0);
                    acc = block_fma(acc, x.add(20), y.add(36), p1);
                    i += 2;
                }
                if i < nb {
                    let (x, y) = (w.add(i * 20), a.add(i * 36));
                    summ = load_f16(x.add(2)).mul_add(load_f16(y.add(2)), summ);
                    let p = avx2::dot_u8_i8(nibbles(x.add(4)), loadu(y.add(4)));
                    acc = block_fma(acc, x, y, p);
                }
                hsum_ps(acc) + summ
            }
        }

        /// Q8_0 against Q8_0, two blocks per step, summed as the reference (`BlockAcc8`).
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q8_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `< nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i + 2 <= nb {
                    let (x, y) = (w.add(i * 34), a.add(i * 34));
                    avx2::prefetch_weights(x, 2 * 34);
                    let qx = join(loadu(x.add(2)), loadu(x.add(36)));
                    let qy = join(loadu(y.add(2)), loadu(y.add(36)));
                    let (ux, sy) = sign_split(qx, qy);
                    let (p0, p1) = split($dot(ux, sy));
                    acc = block_fma(acc, x, y, p0);
                    acc = block_fma(acc, x.add(34), y.add(34), p1);
                    i += 2;
                }
                if i < nb {
                    let (x, y) = (w.add(i * 34), a.add(i * 34));
                    let p = avx2::dot_i8_i8(loadu(x.add(2)), loadu(y.add(2)));
                    acc = block_fma(acc, x, y, p);
                }
                hsum_ps(acc)
            }
        }

        /// Q4_K against Q8_K: per step, the low and high nibbles of 64 bytes (sub-blocks
        /// 2j, 2j+2 and 2j+1, 2j+3) against their activations.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` super-blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q4_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside super-block `< nb` of its row.
            unsafe {
                let low4 = _mm512_set1_epi8(0x0F);
                let mut acc = _mm512_setzero_ps();
                let mut summ = 0.0f32;
                for i in 0..nb {
                    let (x, y) = (w.add(i * Q4_K_BYTES), a.add(i * Q8_K_BYTES));
                    avx2::prefetch_weights(x, Q4_K_BYTES);
                    let dy = y.cast::<f32>().read_unaligned();
                    let d = load_f16(x) * dy;
                    let dmin = load_f16(x.add(2)) * dy;
                    let (sc, mn) = unpack_q4_k(&*x.add(4).cast::<[u8; 12]>());
                    summ += dmin * mins_dot_bsums(mn, y.add(Q8K_BSUMS)) as f32;
                    let yq = y.add(Q8K_QS);
                    let mut sumi = _mm512_setzero_si512();
                    for j in 0..2 {
                        // Bytes 64j..64j+64 of qs: chunks 2j and 2j+1 of 64 elements each.
                        let q4 = _mm512_loadu_si512(x.add(16 + 64 * j).cast());
                        let lo = _mm512_and_si512(q4, low4);
                        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q4), low4);
                        let ylo = join(loadu(yq.add(128 * j)), loadu(yq.add(128 * j + 64)));
                        let yhi = join(loadu(yq.add(128 * j + 32)), loadu(yq.add(128 * j + 96)));
                        let slo = halves_epi16(sc[4 * j], sc[4 * j + 2]);
                        let shi = halves_epi16(sc[4 * j + 1], sc[4 * j + 3]);
                        sumi = $madd_acc(sumi, _mm512_maddubs_epi16(lo, ylo), slo);
                        sumi = $madd_acc(sumi, _mm512_maddubs_epi16(hi, yhi), shi);
                    }
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
                }
                _mm512_reduce_add_ps(acc) - summ
            }
        }

        /// Q6_K against Q8_K: per half super-block, two 64-byte vectors of 6-bit quants.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` super-blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q6_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside super-block `< nb` of its row, and the
            // shuffle table is 128 bytes long (reads at 32 * k + 32 <= 128).
            unsafe {
                let low4 = _mm512_set1_epi8(0x0F);
                let three = _mm512_set1_epi8(3);
                // Shift counts for the high bits: lanes of the first 32 bytes take bits
                // 0-1 (or 4-5) of qh, lanes of the second 32 bytes bits 2-3 (or 6-7).
                let sh01 = join(_mm256_set1_epi16(0), _mm256_set1_epi16(2));
                let sh23 = join(_mm256_set1_epi16(4), _mm256_set1_epi16(6));
                let shuf = Q6K_SCALE_SHUFFLE.as_ptr().cast::<u8>();
                let mut acc = _mm512_setzero_ps();
                for i in 0..nb {
                    let (x, y) = (w.add(i * Q6_K_BYTES), a.add(i * Q8_K_BYTES));
                    avx2::prefetch_weights(x, Q6_K_BYTES);
                    let d = load_f16(x.add(208)) * y.cast::<f32>().read_unaligned();
                    let scales = loadu128(x.add(192));
                    let offset = _mm256_madd_epi16(
                        _mm256_cvtepi8_epi16(scales),
                        loadu(y.add(Q8K_BSUMS)),
                    );
                    let scales2 = _mm256_broadcastsi128_si256(scales);
                    // Start from -32 * sum_g scale_g * bsum_g (the offset of the quants).
                    let mut sumi = _mm512_sub_epi32(
                        _mm512_setzero_si512(),
                        _mm512_zextsi256_si512(_mm256_slli_epi32::<5>(offset)),
                    );
                    for h in 0..2 {
                        let ql = _mm512_loadu_si512(x.add(64 * h).cast());
                        let qh = loadu(x.add(128 + 32 * h));
                        let qh2 = join(qh, qh);
                        let h01 = _mm512_and_si512(_mm512_srlv_epi16(qh2, sh01), three);
                        let h23 = _mm512_and_si512(_mm512_srlv_epi16(qh2, sh23), three);
                        let q01 = _mm512_or_si512(
                            _mm512_and_si512(ql, low4),
                            _mm512_slli_epi16::<4>(h01),
                        );
                        let q23 = _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), low4),
                            _mm512_slli_epi16::<4>(h23),
                        );
                        let y01 = _mm512_loadu_si512(y.add(Q8K_QS + 128 * h).cast());
                        let y23 = _mm512_loadu_si512(y.add(Q8K_QS + 128 * h + 64).cast());
                        let s01 = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(
                            scales2,
                            loadu(shuf.add(64 * h)),
                        ));
                        let s23 = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(
                            scales2,
                            loadu(shuf.add(64 * h + 32)),
                        ));
                        sumi = $madd_acc(sumi, _mm512_maddubs_epi16(q01, y01), s01);
                        sumi = $madd_acc(sumi, _mm512_maddubs_epi16(q23, y23), s23);
                    }
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
                }
                _mm512_reduce_add_ps(acc)
            }
        }
    };
}

avx512_kernels! {
    features = "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    dot_u8_i8 = dot_u8_i8_plain,
    madd_acc = madd_acc_plain,
    q4_0_q8_0, q4_1_q8_1, q8_0_q8_0, q4_k_q8_k, q6_k_q8_k,
    wrappers: vec_dot_q4_0_q8_0, vec_dot_q4_1_q8_1, vec_dot_q8_0_q8_0, vec_dot_q4_k_q8_k,
    vec_dot_q6_k_q8_k,
}

avx512_kernels! {
    features = "avx512f,avx512bw,avx512vl,avx2,fma,f16c,avx512vnni",
    dot_u8_i8 = dot_u8_i8_vnni,
    madd_acc = madd_acc_vnni,
    q4_0_q8_0_vnni_raw, q4_1_q8_1_vnni_raw, q8_0_q8_0_vnni_raw, q4_k_q8_k_vnni_raw,
    q6_k_q8_k_vnni_raw,
    wrappers: vec_dot_q4_0_q8_0_vnni, vec_dot_q4_1_q8_1_vnni, vec_dot_q8_0_q8_0_vnni,
    vec_dot_q4_k_q8_k_vnni, vec_dot_q6_k_q8_k_vnni,
}

safe_vec_dot!(vec_dot_f32 => dot_f32_raw, 1, 4, 4);

/// f32 x f32 over `n` elements: four accumulators of sixteen.
///
/// # Safety
/// AVX-512F present; `w` and `a` valid for `4 * n` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dot_f32_raw(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (x, y) = (w.cast::<f32>(), a.cast::<f32>());
    // SAFETY: every read is of elements `< n` (caller's contract); loads are unaligned, and
    // the masked tail load touches only the lanes below `n`.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let o = i + 16 * k;
                *acc = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(o)), _mm512_loadu_ps(y.add(o)), *acc);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(i)), _mm512_loadu_ps(y.add(i)), acc[0]);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u16 << (n - i)) - 1;
            let xv = _mm512_maskz_loadu_ps(m, x.add(i));
            let yv = _mm512_maskz_loadu_ps(m, y.add(i));
            acc[1] = _mm512_fmadd_ps(xv, yv, acc[1]);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}

/// The f32 dot product of two slices (attention scores).
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32 lengths");
    // SAFETY: handed out only after runtime detection of AVX-512F/BW/VL and AVX2; both slices
    // hold `a.len()` f32s.
    unsafe { dot_f32_raw(a.len(), a.as_ptr().cast(), b.as_ptr().cast()) }
}
