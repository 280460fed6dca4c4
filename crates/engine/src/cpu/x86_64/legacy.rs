//! The legacy block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) at 256 bits: one-row dot products
//! and the tiles, in two builds from one source. `plain` forms the integer sums with
//! `vpmaddubsw` + `vpmaddwd` (AVX2); `vnni` with one `vpdpbusd` (AVX-512 VNNI with VL, as Zen 4
//! and Ice Lake or later have), which takes one of the five multiply-port operations of each
//! block and pair. The i32 sums are exact either way, so both builds give the same bits, equal
//! to the scalar reference's (`tests/kernels_equiv.rs` checks each build on its own).
//!
//! Integer products: u8 x i8 quads summed to i32, exact as long as a `vpmaddubsw` pair stays
//! within i16, which holds for 4/5-bit weights against any i8 and for |q| <= 127 against
//! |q| <= 127 (see the module docs of `cpu`). Signed x signed products move the sign of the
//! weight onto the activation first (`vpsignb`).

use std::arch::x86_64::*;

use super::avx2::{
    bits_to_bytes, dot_u8_i8 as dot_u8_i8_madd, hsum_ps, load_f16, load_f16_x8, loadu, nibbles,
    prefetch_weights, safe_tile, safe_vec_dot,
};
use crate::cpu::{row_blocks, tile_blocks, DECODE_ROWS, TILE_ROWS, TILE_TOKS};

/// How far ahead, in calls of a decode row tile, its kernel prefetches the weights.
const DECODE_PREFETCH_TILES: usize = 2;

/// Eight i32 sums of four u8 x i8 products each, by one `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn dot_u8_i8_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// Builds the kernels and their safe wrappers for the given target features and u8 x i8
/// primitive (`$dot(u, s)`: eight i32 sums of four products, `u` unsigned).
macro_rules! legacy_kernels {
    (features = $feat:literal, dot_u8_i8 = $dot:ident, tile_step = $step:literal) => {
        use super::*;

        safe_vec_dot!(vec_dot_q4_0_q8_0 => q4_0_q8_0, 32, 18, 34);
        safe_vec_dot!(vec_dot_q4_1_q8_1 => q4_1_q8_1, 32, 20, 36);
        safe_vec_dot!(vec_dot_q5_0_q8_0 => q5_0_q8_0, 32, 22, 34);
        safe_vec_dot!(vec_dot_q5_1_q8_1 => q5_1_q8_1, 32, 24, 36);
        safe_vec_dot!(vec_dot_q8_0_q8_0 => q8_0_q8_0, 32, 34, 34);
        safe_tile!(tile_q4_1_q8_1 => q4_1_q8_1_tile, 32, 20, 36, (TILE_ROWS, TILE_TOKS) by $step);
        safe_tile!(tile_q5_0_q8_0 => q5_0_q8_0_tile, 32, 22, 34, (TILE_ROWS, TILE_TOKS) by $step);
        safe_tile!(tile_q8_0_q8_0 => q8_0_q8_0_tile, 32, 34, 34, (TILE_ROWS, TILE_TOKS) by $step);
        safe_tile!(rows_q4_1_q8_1 => q4_1_q8_1_tile, 32, 20, 36, (DECODE_ROWS, 1));

        /// Eight i32 sums of four u8 x i8 products each (`u` at most 127, or any `s` below 128).
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
            $dot(u, s)
        }

        /// Eight i32 sums of four i8 x i8 products each (|x|, |y| <= 127, or x small).
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
            dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
        }

        /// Q4_0 (18-byte blocks: d, 16 nibble bytes) against Q8_0 (34: d, 32 i8).
        ///
        /// # Safety
        /// The features of this build present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn q4_0_q8_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                for i in 0..nb {
                    let (x, y) = (w.add(i * 18), a.add(i * 34));
                    prefetch_weights(x, 18);
                    let d = _mm256_mul_ps(load_f16_x8(x), load_f16_x8(y));
                    let qx = _mm256_sub_epi8(nibbles(x.add(2)), _mm256_set1_epi8(8));
                    let p = dot_i8_i8(qx, loadu(y.add(2)));
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
                }
                hsum_ps(acc)
            }
        }

        /// Q4_1 (20: d, m, 16 nibble bytes) against Q8_1 (36: d, s = d * sum(q), 32 i8).
        ///
        /// # Safety
        /// The features of this build present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn q4_1_q8_1(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let mut summ = 0.0f32;
                for i in 0..nb {
                    let (x, y) = (w.add(i * 20), a.add(i * 36));
                    prefetch_weights(x, 20);
                    summ = load_f16(x.add(2)).mul_add(load_f16(y.add(2)), summ);
                    let d = _mm256_mul_ps(load_f16_x8(x), load_f16_x8(y));
                    let p = dot_u8_i8(nibbles(x.add(4)), loadu(y.add(4)));
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
                }
                hsum_ps(acc) + summ
            }
        }

        /// [`q4_1_q8_1`] for a tile of `R` weight rows by `T` activation rows: each weight block is
        /// unpacked once and each activation block loaded once per tile. Per pair the operations and
        /// their order are those of `q4_1_q8_1`: the eight-lane accumulator takes the same fused
        /// multiply-adds block by block, and the scalar `m * s` sum becomes one lane (per token) of an
        /// eight-lane fused multiply-add, so every result equals the single dot product to the bit.
        ///
        /// # Safety
        /// The features of this build present; every row of the tile valid for `nb` blocks and `out` valid for
        /// every `out[r * os + t]`.
        #[target_feature(enable = $feat)]
        unsafe fn q4_1_q8_1_tile<const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            ws: usize,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: usize,
        ) {
            const { assert!(T >= 1 && T <= 8) };
            // SAFETY: every pointer read is inside block `i < nb` of a row of the tile, and every
            // write inside `out`'s tile (caller's contract).
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                let mut summ = [_mm256_setzero_ps(); R];
                for i in 0..nb {
                    let y: [*const u8; T] = std::array::from_fn(|t| a.add(t * as_ + i * 36));
                    let yd: [__m256; T] = std::array::from_fn(|t| load_f16_x8(y[t]));
                    // The activations' `s` halves in lanes 0..T, built in registers (small stores
                    // and one wide load would stall on store forwarding every block).
                    let s_of = |t: usize| {
                        if t < T {
                            y[t].add(2).cast::<i16>().read_unaligned()
                        } else {
                            0
                        }
                    };
                    let ys = _mm256_cvtph_ps(_mm_setr_epi16(
                        s_of(0),
                        s_of(1),
                        s_of(2),
                        s_of(3),
                        s_of(4),
                        s_of(5),
                        s_of(6),
                        s_of(7),
                    ));
                    if T == 1 {
                        // Decode streams the weights from memory, and four rows read side by side
                        // hide the stream from the hardware prefetcher: ask for the rows two calls
                        // ahead, a block's share (R * 20 bytes, within two lines) per block.
                        let next = w.wrapping_add(DECODE_PREFETCH_TILES * R * ws + i * R * 20);
                        _mm_prefetch::<_MM_HINT_T0>(next.cast());
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64).cast());
                    }
                    for r in 0..R {
                        let x = w.add(r * ws + i * 20);
                        let m = load_f16_x8(x.add(2));
                        summ[r] = _mm256_fmadd_ps(m, ys, summ[r]);
                        let xd = load_f16_x8(x);
                        let q = nibbles(x.add(4));
                        for t in 0..T {
                            let d = _mm256_mul_ps(xd, yd[t]);
                            let p = dot_u8_i8(q, loadu(y[t].add(4)));
                            acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][t]);
                        }
                    }
                }
                for (r, (acc, summ)) in acc.iter().zip(summ).enumerate() {
                    let mut s = [0.0f32; 8];
                    _mm256_storeu_ps(s.as_mut_ptr(), summ);
                    for t in 0..T {
                        *out.add(r * os + t) = hsum_ps(acc[t]) + s[t];
                    }
                }
            }
        }

        /// Q5_0 (22: d, qh u32, 16 nibble bytes) against Q8_0.
        ///
        /// # Safety
        /// The features of this build present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn q5_0_q8_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                for i in 0..nb {
                    let (x, y) = (w.add(i * 22), a.add(i * 34));
                    prefetch_weights(x, 22);
                    let d = _mm256_mul_ps(load_f16_x8(x), load_f16_x8(y));
                    let qh = x.add(2).cast::<u32>().read_unaligned();
                    // q - 16: OR 0xF0 into the nibble where the fifth bit is clear (giving nibble - 16
                    // as i8), leave it alone where set (giving nibble + 16 - 16).
                    let hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
                    let qx = _mm256_or_si256(nibbles(x.add(6)), hi);
                    let p = dot_i8_i8(qx, loadu(y.add(2)));
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
                }
                hsum_ps(acc)
            }
        }

        /// [`q5_0_q8_0`] for a tile of `R` weight rows by `T` activation rows (see
        /// [`signed_tile`]).
        ///
        /// # Safety
        /// As for [`signed_tile`].
        #[target_feature(enable = $feat)]
        unsafe fn q5_0_q8_0_tile<const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            ws: usize,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: usize,
        ) {
            let quants = |x: *const u8| {
                // SAFETY: `x` is a whole 22-byte block (`signed_tile`'s contract).
                unsafe {
                    let qh = x.add(2).cast::<u32>().read_unaligned();
                    let hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
                    _mm256_or_si256(nibbles(x.add(6)), hi)
                }
            };
            // SAFETY: the caller's contract is `signed_tile`'s, for 22-byte blocks.
            unsafe { signed_tile::<R, T>(nb, (w, ws, 22), (a, as_), (out, os), quants) }
        }

        /// Q5_1 (24: d, m, qh u32, 16 nibble bytes) against Q8_1.
        ///
        /// # Safety
        /// The features of this build present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn q5_1_q8_1(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let mut summ = 0.0f32;
                for i in 0..nb {
                    let (x, y) = (w.add(i * 24), a.add(i * 36));
                    prefetch_weights(x, 24);
                    summ = load_f16(x.add(2)).mul_add(load_f16(y.add(2)), summ);
                    let d = _mm256_mul_ps(load_f16_x8(x), load_f16_x8(y));
                    let qh = x.add(4).cast::<u32>().read_unaligned();
                    let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
                    let qx = _mm256_or_si256(nibbles(x.add(8)), hi);
                    let p = dot_u8_i8(qx, loadu(y.add(4)));
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
                }
                hsum_ps(acc) + summ
            }
        }

        /// Q8_0 against Q8_0.
        ///
        /// # Safety
        /// The features of this build present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn q8_0_q8_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row (caller's contract).
            unsafe {
                let mut acc = _mm256_setzero_ps();
                for i in 0..nb {
                    let (x, y) = (w.add(i * 34), a.add(i * 34));
                    prefetch_weights(x, 34);
                    let d = _mm256_mul_ps(load_f16_x8(x), load_f16_x8(y));
                    let p = dot_i8_i8(loadu(x.add(2)), loadu(y.add(2)));
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
                }
                hsum_ps(acc)
            }
        }

        /// [`q8_0_q8_0`] for a tile of `R` weight rows by `T` activation rows (see
        /// [`signed_tile`]).
        ///
        /// # Safety
        /// As for [`signed_tile`].
        #[target_feature(enable = $feat)]
        unsafe fn q8_0_q8_0_tile<const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            ws: usize,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: usize,
        ) {
            // SAFETY: `x` is a whole 34-byte block (`signed_tile`'s contract).
            let quants = |x: *const u8| unsafe { loadu(x.add(2)) };
            // SAFETY: the caller's contract is `signed_tile`'s, for 34-byte blocks.
            unsafe { signed_tile::<R, T>(nb, (w, ws, 34), (a, as_), (out, os), quants) }
        }

        /// The tile of a format whose blocks are an f16 scale then signed quants (Q5_0, Q8_0)
        /// against Q8_0: `quants` unpacks a weight block's 32 quants, once per tile, and
        /// [`signed_row`]'s work is done once per weight block, the activation loads and
        /// [`signed_tok`] once per tile. The per-lane i32 sums are exact, and the float
        /// operations and their order per pair are those of the single dot product
        /// (`q5_0_q8_0`, `q8_0_q8_0`), so every result equals it to the bit.
        ///
        /// # Safety
        /// The features of this build present; every row of the tile valid for `nb` blocks of
        /// `wb` bytes (`quants` reads only inside the block it is given), the activation rows for
        /// `nb` Q8_0 blocks, and `out` valid for every `out[r * os + t]`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn signed_tile<const R: usize, const T: usize>(
            nb: usize,
            (w, ws, wb): (*const u8, usize, usize),
            (a, as_): (*const u8, usize),
            (out, os): (*mut f32, usize),
            quants: impl Fn(*const u8) -> __m256i,
        ) {
            // SAFETY: every pointer read is inside block `i < nb` of a row of the tile, and every
            // write inside `out`'s tile (caller's contract).
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                for i in 0..nb {
                    let rows: [(SignedRow, __m256); R] = std::array::from_fn(|r| {
                        let x = w.add(r * ws + i * wb);
                        (signed_row(quants(x)), load_f16_x8(x))
                    });
                    for t in 0..T {
                        let y = a.add(t * as_ + i * 34);
                        let (yd, yq) = (load_f16_x8(y), signed_tok(loadu(y.add(2))));
                        for (r, (row, xd)) in rows.iter().enumerate() {
                            let d = _mm256_mul_ps(*xd, yd);
                            let p = signed_pair(row, yq);
                            acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][t]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    for (t, acc) in acc.iter().enumerate() {
                        *out.add(r * os + t) = hsum_ps(*acc);
                    }
                }
            }
        }
    };
}

/// A weight block's 32 signed quants prepared for the i8 x i8 products of a tile: two
/// vectors whose meaning is the build's (see `signed_row` in each module).
type SignedRow = (__m256i, __m256i);

/// AVX2 + FMA + F16C.
pub(super) mod plain {
    legacy_kernels!(
        features = "avx2,fma,f16c",
        dot_u8_i8 = dot_u8_i8_madd,
        tile_step = 4
    );

    // Signed x signed products for the tiles by the sign trick: `|q|` and `q` per weight block,
    // then per pair `vpsignb` moves the weight's sign onto the activation (|q|, |y| <= 127
    // keeps each `vpmaddubsw` pair within i16).

    /// `(|q|, q)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn signed_row(q: __m256i) -> SignedRow {
        (_mm256_sign_epi8(q, q), q)
    }

    /// The activation's quants as they are.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn signed_tok(y: __m256i) -> __m256i {
        y
    }

    /// Eight i32 sums of four products `q * y` each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn signed_pair(&(aq, q): &SignedRow, y: __m256i) -> __m256i {
        dot_u8_i8(aq, _mm256_sign_epi8(y, q))
    }
}

/// AVX2 + FMA + F16C with AVX-512 VNNI and VL (`vpdpbusd` on 256-bit vectors; VL also gives
/// 32 vector registers, room for tiles of eight tokens).
pub(super) mod vnni {
    legacy_kernels!(
        features = "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_u8_i8 = dot_u8_i8_vnni,
        tile_step = 8
    );

    // Signed x signed products for the tiles with one `vpdpbusd` per pair: the activation goes
    // in as the unsigned operand, `y + 128` (one XOR per activation block), and the sums start
    // from `-128 * sum(q)` per lane (once per weight block), so that
    // `-128 * sum(q) + sum((y + 128) * q) = sum(y * q)` exactly (i32, no saturation).

    /// `(q, -128 * sum(q) per group of four)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    fn signed_row(q: __m256i) -> SignedRow {
        let z = _mm256_setzero_si256();
        let s = _mm256_dpbusd_epi32(z, _mm256_set1_epi8(0x80u8 as i8), q);
        (q, _mm256_sub_epi32(z, s))
    }

    /// `y + 128` as unsigned bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    fn signed_tok(y: __m256i) -> __m256i {
        _mm256_xor_si256(y, _mm256_set1_epi8(0x80u8 as i8))
    }

    /// Eight i32 sums of four products `q * y` each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    fn signed_pair(&(q, base): &SignedRow, yu: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(base, yu, q)
    }
}
