//! AVX2 + FMA + F16C kernels for the K-quants against Q8_K activations (Q4_K, Q5_K, Q6_K) and
//! the Q8_K activation quantizer. Q2_K and Q3_K have no SIMD variant: the scalar reference
//! serves them (no model we target uses them for more than a tensor or two).
//!
//! Super-blocks are 256 elements. Q8_K carries `bsums`, the sums of each 16 activation quants,
//! so the constant parts of the weights (Q4_K/Q5_K's per-sub-block mins, Q6_K's offset of 32)
//! cost one 16-lane multiply-add per super-block instead of a pass over the quants. All integer
//! sums of a super-block are exact in i32; only the per-block scale multiply rounds.

use std::arch::x86_64::*;

use super::avx2::{
    hsum_epi32_128, hsum_ps, load_f16, loadu, loadu128, pack_i32x32_to_i8, prefetch_block,
    prefetch_weights, safe_tile, safe_vec_dot,
};
use crate::cpu::k_scales::unpack_q4_k;
use crate::cpu::{row_blocks, tile_blocks, TILE_ROWS, TILE_TOKS};

/// Bytes per super-block: Q4_K, Q5_K, Q6_K, Q8_K.
pub(super) const Q4_K_BYTES: usize = 144;
pub(super) const Q5_K_BYTES: usize = 176;
pub(super) const Q6_K_BYTES: usize = 210;
pub(super) const Q8_K_BYTES: usize = 292;
/// Offsets inside a Q8_K block: f32 d, 256 i8 quants, 16 i16 bsums.
pub(super) const Q8K_QS: usize = 4;
pub(super) const Q8K_BSUMS: usize = 260;

safe_vec_dot!(vec_dot_q4_k_q8_k => q4_k_q8_k, 256, Q4_K_BYTES, Q8_K_BYTES);
safe_vec_dot!(vec_dot_q5_k_q8_k => q5_k_q8_k, 256, Q5_K_BYTES, Q8_K_BYTES);
safe_vec_dot!(vec_dot_q6_k_q8_k => q6_k_q8_k, 256, Q6_K_BYTES, Q8_K_BYTES);

/// Byte-shuffle masks that broadcast scales `2k` and `2k + 1` of 16 i8 scales into the low and
/// high eight bytes (then widened to i16: one scale per 16-element half of a 32-byte vector).
pub(super) static Q6K_SCALE_SHUFFLE: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut k = 0;
    while k < 8 {
        let mut j = 0;
        while j < 16 {
            t[k][j] = (2 * k + j / 8) as u8;
            j += 1;
        }
        k += 1;
    }
    t
};

/// The 128 6-bit quants of one half of a Q6_K super-block as four vectors of bytes `0..64`
/// (elements `32k..32k + 32` in vector `k`): low nibbles from `b1` (low bytes) and `b2`, high
/// two bits from `qh`, two bits per element group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q6_k_half(b1: __m256i, b2: __m256i, qh: __m256i) -> [__m256i; 4] {
    let low4 = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    let high = |shifted: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(shifted, three));
    [
        _mm256_or_si256(_mm256_and_si256(b1, low4), high(qh)),
        _mm256_or_si256(_mm256_and_si256(b2, low4), high(_mm256_srli_epi16::<2>(qh))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(b1), low4),
            high(_mm256_srli_epi16::<4>(qh)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(b2), low4),
            high(_mm256_srli_epi16::<6>(qh)),
        ),
    ]
}

/// `sum_j mins[j] * (bsums[2j] + bsums[2j+1])` of a Q8_K block: the min term of Q4_K/Q5_K.
///
/// # Safety
/// AVX2 present; `bsums` valid for 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn mins_dot_bsums(mins: [u8; 8], bsums: *const u8) -> i32 {
    // SAFETY: reads the 32 bytes of `bsums` (caller's contract).
    let (b0, b1) = unsafe { (loadu128(bsums), loadu128(bsums.add(16))) };
    let sums = _mm_hadd_epi16(b0, b1); // 8 sums of 32 quants: |s| <= 32 * 127, fits i16
    let m = _mm_cvtepu8_epi16(_mm_set1_epi64x(i64::from_le_bytes(mins)));
    hsum_epi32_128(_mm_madd_epi16(m, sums))
}

/// Q4_K (d, dmin, 12 scale bytes, 128 nibble bytes) against Q8_K.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` and `a` valid for `nb` super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_q8_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    // SAFETY: every pointer read is inside super-block `i < nb` of its row (caller's contract).
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut summ = 0.0f32;
        for i in 0..nb {
            let (x, y) = (w.add(i * Q4_K_BYTES), a.add(i * Q8_K_BYTES));
            prefetch_weights(x, Q4_K_BYTES);
            let dy = y.cast::<f32>().read_unaligned();
            let d = load_f16(x) * dy;
            let dmin = load_f16(x.add(2)) * dy;
            let (sc, mn) = unpack_q4_k(&*x.add(4).cast::<[u8; 12]>());
            summ += dmin * mins_dot_bsums(mn, y.add(Q8K_BSUMS)) as f32;
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q4 = loadu(x.add(16 + 32 * j));
                let lo = _mm256_and_si256(q4, low4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), low4);
                let ylo = loadu(y.add(Q8K_QS + 64 * j));
                let yhi = loadu(y.add(Q8K_QS + 64 * j + 32));
                let plo = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, ylo),
                    _mm256_set1_epi16(i16::from(sc[2 * j])),
                );
                let phi = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, yhi),
                    _mm256_set1_epi16(i16::from(sc[2 * j + 1])),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc) - summ
    }
}

/// Q5_K (d, dmin, 12 scale bytes, 32 high-bit bytes, 128 nibble bytes) against Q8_K.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` and `a` valid for `nb` super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_q8_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    // SAFETY: every pointer read is inside super-block `i < nb` of its row (caller's contract).
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_ps();
        let mut summ = 0.0f32;
        for i in 0..nb {
            let (x, y) = (w.add(i * Q5_K_BYTES), a.add(i * Q8_K_BYTES));
            prefetch_weights(x, Q5_K_BYTES);
            let dy = y.cast::<f32>().read_unaligned();
            let d = load_f16(x) * dy;
            let dmin = load_f16(x.add(2)) * dy;
            let (sc, mn) = unpack_q4_k(&*x.add(4).cast::<[u8; 12]>());
            summ += dmin * mins_dot_bsums(mn, y.add(Q8K_BSUMS)) as f32;
            // Byte l of qh holds the fifth bit of element l of sub-block b in its bit b.
            let mut hb = loadu(x.add(16));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q = loadu(x.add(48 + 32 * j));
                let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(hb, one));
                let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(hb), one));
                hb = _mm256_srli_epi16::<2>(hb);
                let lo = _mm256_or_si256(_mm256_and_si256(q, low4), h0);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), low4), h1);
                let ylo = loadu(y.add(Q8K_QS + 64 * j));
                let yhi = loadu(y.add(Q8K_QS + 64 * j + 32));
                let plo = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, ylo),
                    _mm256_set1_epi16(i16::from(sc[2 * j])),
                );
                let phi = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, yhi),
                    _mm256_set1_epi16(i16::from(sc[2 * j + 1])),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc) - summ
    }
}

/// Q6_K (128 low-nibble bytes, 64 high-2-bit bytes, 16 i8 scales, d) against Q8_K.
///
/// Weights are `q - 32` with `q` in 0..64: the unsigned `q` goes through `vpmaddubsw`, and
/// `32 * sum_g scale_g * bsum_g` is taken off once per super-block.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` and `a` valid for `nb` super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_q8_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    // SAFETY: every pointer read is inside super-block `i < nb` of its row (caller's contract).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            let (x, y) = (w.add(i * Q6_K_BYTES), a.add(i * Q8_K_BYTES));
            prefetch_weights(x, Q6_K_BYTES);
            let d = load_f16(x.add(208)) * y.cast::<f32>().read_unaligned();
            let scales = loadu128(x.add(192));
            let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), loadu(y.add(Q8K_BSUMS)));
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let ql = x.add(64 * h);
                let qh = loadu(x.add(128 + 32 * h));
                let (b1, b2) = (loadu(ql), loadu(ql.add(32)));
                let q = unpack_q6_k_half(b1, b2, qh);
                for (k, &qk) in q.iter().enumerate() {
                    let yk = loadu(y.add(Q8K_QS + 128 * h + 32 * k));
                    let shuf = loadu128(Q6K_SCALE_SHUFFLE[4 * h + k].as_ptr());
                    let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qk, yk), s);
                    sumi = _mm256_add_epi32(sumi, p);
                }
            }
            let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(offset));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc)
    }
}

/// `acc + (i16 pairs of p times s, summed to i32)`: `vpmaddwd` then `vpaddd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn madd_acc_avx2(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
}

/// The same by one `vpdpwssd` (AVX-512 VNNI with VL); exact, so the same i32 sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn madd_acc_vnni(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, p, s)
}

/// Builds the Q4_K and Q6_K prefill tiles for the given target features, i16 multiply-add
/// (`$madd(acc, p, s)`) and tokens per kernel step.
macro_rules! k_tiles {
    (features = $feat:literal, madd_acc = $madd:ident, tile_step = $step:literal) => {
        use super::*;

        safe_tile!(tile_q4_k_q8_k => q4_k_q8_k_tile, 256, Q4_K_BYTES, Q8_K_BYTES, (TILE_ROWS, TILE_TOKS) by $step);
        safe_tile!(tile_q6_k_q8_k => q6_k_q8_k_tile, 256, Q6_K_BYTES, Q8_K_BYTES, (TILE_ROWS, TILE_TOKS) by $step);

        #[inline]
        #[target_feature(enable = $feat)]
        fn madd_acc(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
            $madd(acc, p, s)
        }

        /// [`q4_k_q8_k`] for a tile of `R` weight rows by `T` activation rows, one
        /// weight row at a time (the sums of more rows would not fit the registers): the scale
        /// unpacking and the nibble split of a super-block are done once for the tile's tokens.
        /// Per pair the operations and their order are those of `q4_k_q8_k` (the integer sums are
        /// exact whatever their order), so every result equals the single dot product to the bit.
        ///
        /// # Safety
        /// AVX2, FMA and F16C present; every row of the tile valid for `nb` super-blocks and `out`
        /// valid for every `out[r * os + t]`.
        #[target_feature(enable = $feat)]
        unsafe fn q4_k_q8_k_tile<const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            ws: usize,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: usize,
        ) {
            // SAFETY: every pointer read is inside super-block `i < nb` of a row of the tile, and
            // every write inside `out`'s tile (caller's contract).
            unsafe {
                let low4 = _mm256_set1_epi8(0x0F);
                for r in 0..R {
                    let mut acc = [_mm256_setzero_ps(); T];
                    let mut summ = [0.0f32; T];
                    for i in 0..nb {
                        let x = w.add(r * ws + i * Q4_K_BYTES);
                        let y: [*const u8; T] = std::array::from_fn(|t| a.add(t * as_ + i * Q8_K_BYTES));
                        let (xd, xdmin) = (load_f16(x), load_f16(x.add(2)));
                        let (sc, mn) = unpack_q4_k(&*x.add(4).cast::<[u8; 12]>());
                        let mut sumi = [_mm256_setzero_si256(); T];
                        for j in 0..4 {
                            let q4 = loadu(x.add(16 + 32 * j));
                            let lo = _mm256_and_si256(q4, low4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), low4);
                            let slo = _mm256_set1_epi16(i16::from(sc[2 * j]));
                            let shi = _mm256_set1_epi16(i16::from(sc[2 * j + 1]));
                            for (y, sumi) in y.iter().zip(&mut sumi) {
                                let ylo = loadu(y.add(Q8K_QS + 64 * j));
                                let yhi = loadu(y.add(Q8K_QS + 64 * j + 32));
                                let plo = _mm256_maddubs_epi16(lo, ylo);
                                let phi = _mm256_maddubs_epi16(hi, yhi);
                                *sumi = madd_acc(madd_acc(*sumi, plo, slo), phi, shi);
                            }
                        }
                        for t in 0..T {
                            let dy = y[t].cast::<f32>().read_unaligned();
                            let (d, dmin) = (xd * dy, xdmin * dy);
                            summ[t] += dmin * mins_dot_bsums(mn, y[t].add(Q8K_BSUMS)) as f32;
                            acc[t] =
                                _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
                        }
                    }
                    for t in 0..T {
                        *out.add(r * os + t) = hsum_ps(acc[t]) - summ[t];
                    }
                }
            }
        }


        /// [`q6_k_q8_k`] for a tile, one weight row at a time as in [`q4_k_q8_k_tile`]: the 6-bit
        /// unpacking and the scale shuffles of a super-block are done once for the tile's tokens; per
        /// pair the operations are those of `q6_k_q8_k` (exact integer sums, then the same fused
        /// multiply-add per super-block), so every result equals the single dot product to the bit.
        ///
        /// # Safety
        /// AVX2, FMA and F16C present; every row of the tile valid for `nb` super-blocks and `out`
        /// valid for every `out[r * os + t]`.
        #[target_feature(enable = $feat)]
        unsafe fn q6_k_q8_k_tile<const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            ws: usize,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: usize,
        ) {
            // SAFETY: every pointer read is inside super-block `i < nb` of a row of the tile, and
            // every write inside `out`'s tile (caller's contract).
            unsafe {
                for r in 0..R {
                    let mut acc = [_mm256_setzero_ps(); T];
                    for i in 0..nb {
                        let x = w.add(r * ws + i * Q6_K_BYTES);
                        let y: [*const u8; T] = std::array::from_fn(|t| a.add(t * as_ + i * Q8_K_BYTES));
                        let xd = load_f16(x.add(208));
                        let scales = loadu128(x.add(192));
                        let mut sumi = [_mm256_setzero_si256(); T];
                        for h in 0..2 {
                            let ql = x.add(64 * h);
                            let qh = loadu(x.add(128 + 32 * h));
                            let (b1, b2) = (loadu(ql), loadu(ql.add(32)));
                            let q = unpack_q6_k_half(b1, b2, qh);
                            for (k, &qk) in q.iter().enumerate() {
                                let shuf = loadu128(Q6K_SCALE_SHUFFLE[4 * h + k].as_ptr());
                                let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
                                for (y, sumi) in y.iter().zip(&mut sumi) {
                                    let yk = loadu(y.add(Q8K_QS + 128 * h + 32 * k));
                                    *sumi = madd_acc(*sumi, _mm256_maddubs_epi16(qk, yk), s);
                                }
                            }
                        }
                        let sc16 = _mm256_cvtepi8_epi16(scales);
                        for t in 0..T {
                            let d = xd * y[t].cast::<f32>().read_unaligned();
                            let offset = _mm256_madd_epi16(sc16, loadu(y[t].add(Q8K_BSUMS)));
                            let sumi = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32::<5>(offset));
                            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
                        }
                    }
                    for (t, acc) in acc.iter().enumerate() {
                        *out.add(r * os + t) = hsum_ps(*acc);
                    }
                }
            }
        }

    };
}

/// The tiles with AVX2 + FMA + F16C, four tokens per step (16 registers).
pub(super) mod plain {
    k_tiles!(
        features = "avx2,fma,f16c",
        madd_acc = madd_acc_avx2,
        tile_step = 4
    );
}

/// The tiles with AVX-512 VNNI and VL at 256 bits: `vpdpwssd` for the scale multiply-add, and
/// eight tokens per step in the 32 registers.
pub(super) mod vnni {
    k_tiles!(
        features = "avx2,fma,f16c,avx512vnni,avx512vl",
        madd_acc = madd_acc_vnni,
        tile_step = 8
    );
}

/// Both rows of a Q4_K / Q6_K tile at once in 512-bit vectors (AVX-512 F, BW, VL and VNNI):
/// the first row in the low half of every vector, the second in the high half, each half
/// doing exactly what the 256-bit tile ([`vnni`]) does for its row with the activations
/// broadcast to both halves. The integer sums are exact and every float operation of a row is
/// its own half's, in the same order, so the results are the same bits; each `vpmaddubsw` and
/// `vpdpwssd` serves two rows.
pub(super) mod vnni512 {
    use super::super::avx512::{halves_epi16, join};
    use super::*;

    safe_tile!(tile_q4_k_q8_k => q4_k_q8_k_tile, 256, Q4_K_BYTES, Q8_K_BYTES, (TILE_ROWS, TILE_TOKS) by 8);
    safe_tile!(tile_q6_k_q8_k => q6_k_q8_k_tile, 256, Q6_K_BYTES, Q8_K_BYTES, (TILE_ROWS, TILE_TOKS) by 8);

    /// Whether this CPU can run these tiles (beyond the 256-bit VNNI tiles' features).
    pub(in crate::cpu::x86_64) fn available() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }

    /// Prefetch the same super-block of the next two rows (the next tile's, as a task's rows
    /// are consecutive). Why: reading two rows side by side, block by block, the hardware
    /// prefetcher sees two short interleaved streams (a row is 1-2 KiB) and left a batched
    /// decode step waiting on memory: Gemma 3's Q6_K tiles took 2.7x the 256-bit tiles' time
    /// end to end without this, though faster from cache.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn next_pair(x: [*const u8; 2], ws: usize, block_bytes: usize) {
        for x in x {
            prefetch_block(x.wrapping_add(2 * ws), block_bytes);
        }
    }

    /// Eight lanes of `lo` then eight of `hi`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn halves_ps(lo: f32, hi: f32) -> __m512 {
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_castps_pd(_mm256_set1_ps(hi)));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(lo)),
            hi,
        ))
    }

    /// Thirty-two bytes at `p` in both halves.
    ///
    /// # Safety
    /// Thirty-two readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    unsafe fn both(p: *const u8) -> __m512i {
        // SAFETY: the caller's contract.
        unsafe { _mm512_broadcast_i64x4(loadu(p)) }
    }

    /// The eight-lane sums of each half, each as [`hsum_ps`] sums them.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn hsum_halves(v: __m512) -> (f32, f32) {
        (
            hsum_ps(_mm512_castps512_ps256(v)),
            hsum_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            ))),
        )
    }

    /// [`vnni`]'s `q4_k_q8_k_tile`, two rows per vector (`R` even).
    ///
    /// # Safety
    /// As the 256-bit tile's, and the CPU has AVX-512 F, BW, VL and VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    unsafe fn q4_k_q8_k_tile<const R: usize, const T: usize>(
        nb: usize,
        w: *const u8,
        ws: usize,
        a: *const u8,
        as_: usize,
        out: *mut f32,
        os: usize,
    ) {
        const { assert!(R.is_multiple_of(2)) };
        // SAFETY: every pointer read is inside super-block `i < nb` of a row of the tile, and
        // every write inside `out`'s tile (caller's contract).
        unsafe {
            let low4 = _mm512_set1_epi8(0x0F);
            for r in (0..R).step_by(2) {
                let mut acc = [_mm512_setzero_ps(); T];
                let mut summ = [[0.0f32; T]; 2];
                for i in 0..nb {
                    let x = [
                        w.add(r * ws + i * Q4_K_BYTES),
                        w.add((r + 1) * ws + i * Q4_K_BYTES),
                    ];
                    next_pair(x, ws, Q4_K_BYTES);
                    let y: [*const u8; T] =
                        std::array::from_fn(|t| a.add(t * as_ + i * Q8_K_BYTES));
                    let xd = [load_f16(x[0]), load_f16(x[1])];
                    let xdmin = [load_f16(x[0].add(2)), load_f16(x[1].add(2))];
                    let (sc0, mn0) = unpack_q4_k(&*x[0].add(4).cast::<[u8; 12]>());
                    let (sc1, mn1) = unpack_q4_k(&*x[1].add(4).cast::<[u8; 12]>());
                    let mut sumi = [_mm512_setzero_si512(); T];
                    for j in 0..4 {
                        let q4 = join(loadu(x[0].add(16 + 32 * j)), loadu(x[1].add(16 + 32 * j)));
                        let lo = _mm512_and_si512(q4, low4);
                        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q4), low4);
                        let slo = halves_epi16(sc0[2 * j], sc1[2 * j]);
                        let shi = halves_epi16(sc0[2 * j + 1], sc1[2 * j + 1]);
                        for (y, sumi) in y.iter().zip(&mut sumi) {
                            let plo = _mm512_maddubs_epi16(lo, both(y.add(Q8K_QS + 64 * j)));
                            let phi = _mm512_maddubs_epi16(hi, both(y.add(Q8K_QS + 64 * j + 32)));
                            *sumi =
                                _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(*sumi, plo, slo), phi, shi);
                        }
                    }
                    for t in 0..T {
                        let dy = y[t].cast::<f32>().read_unaligned();
                        let bsums = y[t].add(Q8K_BSUMS);
                        summ[0][t] += xdmin[0] * dy * mins_dot_bsums(mn0, bsums) as f32;
                        summ[1][t] += xdmin[1] * dy * mins_dot_bsums(mn1, bsums) as f32;
                        let d = halves_ps(xd[0] * dy, xd[1] * dy);
                        acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[t]), acc[t]);
                    }
                }
                for t in 0..T {
                    let (s0, s1) = hsum_halves(acc[t]);
                    *out.add(r * os + t) = s0 - summ[0][t];
                    *out.add((r + 1) * os + t) = s1 - summ[1][t];
                }
            }
        }
    }

    /// [`vnni`]'s `q6_k_q8_k_tile`, two rows per vector (`R` even).
    ///
    /// # Safety
    /// As the 256-bit tile's, and the CPU has AVX-512 F, BW, VL and VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    unsafe fn q6_k_q8_k_tile<const R: usize, const T: usize>(
        nb: usize,
        w: *const u8,
        ws: usize,
        a: *const u8,
        as_: usize,
        out: *mut f32,
        os: usize,
    ) {
        const { assert!(R.is_multiple_of(2)) };
        // SAFETY: every pointer read is inside super-block `i < nb` of a row of the tile, and
        // every write inside `out`'s tile (caller's contract).
        unsafe {
            for r in (0..R).step_by(2) {
                let mut acc = [_mm512_setzero_ps(); T];
                for i in 0..nb {
                    let x = [
                        w.add(r * ws + i * Q6_K_BYTES),
                        w.add((r + 1) * ws + i * Q6_K_BYTES),
                    ];
                    next_pair(x, ws, Q6_K_BYTES);
                    let y: [*const u8; T] =
                        std::array::from_fn(|t| a.add(t * as_ + i * Q8_K_BYTES));
                    let xd = [load_f16(x[0].add(208)), load_f16(x[1].add(208))];
                    let scales = [loadu128(x[0].add(192)), loadu128(x[1].add(192))];
                    let mut sumi = [_mm512_setzero_si512(); T];
                    for h in 0..2 {
                        let half = |x: *const u8| {
                            let ql = x.add(64 * h);
                            unpack_q6_k_half(
                                loadu(ql),
                                loadu(ql.add(32)),
                                loadu(x.add(128 + 32 * h)),
                            )
                        };
                        let (q0, q1) = (half(x[0]), half(x[1]));
                        for k in 0..4 {
                            let qk = join(q0[k], q1[k]);
                            let shuf = loadu128(Q6K_SCALE_SHUFFLE[4 * h + k].as_ptr());
                            let scale =
                                |s: __m128i| _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s, shuf));
                            let s = join(scale(scales[0]), scale(scales[1]));
                            for (y, sumi) in y.iter().zip(&mut sumi) {
                                let yk = both(y.add(Q8K_QS + 128 * h + 32 * k));
                                *sumi = _mm512_dpwssd_epi32(*sumi, _mm512_maddubs_epi16(qk, yk), s);
                            }
                        }
                    }
                    let sc16 = join(
                        _mm256_cvtepi8_epi16(scales[0]),
                        _mm256_cvtepi8_epi16(scales[1]),
                    );
                    for t in 0..T {
                        let dy = y[t].cast::<f32>().read_unaligned();
                        let d = halves_ps(xd[0] * dy, xd[1] * dy);
                        let offset = _mm512_madd_epi16(sc16, both(y[t].add(Q8K_BSUMS)));
                        let sumi = _mm512_sub_epi32(sumi[t], _mm512_slli_epi32::<5>(offset));
                        acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc[t]);
                    }
                }
                for (t, acc) in acc.iter().enumerate() {
                    let (s0, s1) = hsum_halves(*acc);
                    *out.add(r * os + t) = s0;
                    *out.add((r + 1) * os + t) = s1;
                }
            }
        }
    }
}

/// Q8_K activations (f32 d, 256 i8, 16 i16 bsums), bytes identical to the reference.
pub(super) fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let nb = src.len() / 256;
    assert!(
        nb * 256 == src.len() && dst.len() == nb * Q8_K_BYTES,
        "quantize Q8_K lengths"
    );
    for (x, y) in src.chunks_exact(256).zip(dst.chunks_exact_mut(Q8_K_BYTES)) {
        // SAFETY: handed out only after runtime detection of AVX2, FMA and F16C; `x` holds
        // 256 floats and `y` one 292-byte block.
        unsafe { quantize_block_q8_k(x.as_ptr(), y.as_mut_ptr()) }
    }
}

/// # Safety
/// AVX2, FMA and F16C present; `x` valid for 256 f32 reads, `y` for 292 byte writes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_q8_k(x: *const f32, y: *mut u8) {
    // SAFETY: reads x[0..256], writes y[0..292] (caller's contract), unaligned.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for k in 0..32 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x.add(8 * k))));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        if amax == 0.0 {
            std::ptr::write_bytes(y, 0, Q8_K_BYTES);
            return;
        }
        // The reference keeps the sign of the first element of largest magnitude.
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for k in 0..32 {
            let v = _mm256_loadu_ps(x.add(8 * k));
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                _mm256_andnot_ps(sign, v),
                target,
            ));
            if hit != 0 {
                max = *x.add(8 * k + hit.trailing_zeros() as usize);
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        let hi = _mm256_set1_epi32(127);
        let qs = y.add(Q8K_QS);
        let bsums = y.add(Q8K_BSUMS);
        for g in 0..8 {
            let mut q = [_mm256_setzero_si256(); 4];
            for (k, q) in q.iter_mut().enumerate() {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.add(32 * g + 8 * k)), is);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                *q = _mm256_min_epi32(_mm256_cvtps_epi32(r), hi);
            }
            // Two groups of 16 per 32 quants: lanes 0..8 + 8..16 and 16..24 + 24..32.
            let s0 = _mm256_add_epi32(q[0], q[1]);
            let s1 = _mm256_add_epi32(q[2], q[3]);
            let s0 = _mm_add_epi32(
                _mm256_castsi256_si128(s0),
                _mm256_extracti128_si256::<1>(s0),
            );
            let s1 = _mm_add_epi32(
                _mm256_castsi256_si128(s1),
                _mm256_extracti128_si256::<1>(s1),
            );
            let b0 = hsum_epi32_128(s0) as i16;
            let b1 = hsum_epi32_128(s1) as i16;
            bsums
                .add(4 * g)
                .cast::<[u8; 2]>()
                .write_unaligned(b0.to_le_bytes());
            bsums
                .add(4 * g + 2)
                .cast::<[u8; 2]>()
                .write_unaligned(b1.to_le_bytes());
            _mm256_storeu_si256(qs.add(32 * g).cast(), pack_i32x32_to_i8(q));
        }
        y.cast::<[u8; 4]>()
            .write_unaligned((1.0 / iscale).to_le_bytes());
    }
}
