//! AVX2 kernels for the interleaved weight groups of `cpu::interleaved` (layout and the float
//! operations they must reproduce are documented there), each format built twice: `plain`
//! forms its lane sums with `vpmaddubsw` + `vpmaddwd`, `vnni` (where the CPU has AVX-512 VNNI
//! with VL) with one `vpdpbusd`, and has 32 registers for wider register tiles. Signed weights
//! (Q5_0, Q8_0) take the sign trick in `plain`; the `vnni` tiles take them unsigned instead
//! (`q + 16`, `q + 128`) against activation rows extended by each lane's bias, which leaves one
//! `vpdpbusd` per lane sum and token. The lane sums are exact, so every build gives the bits of
//! the scalar reference, which are those of the row-major kernels.

use std::arch::x86_64::*;

use super::avx2::{dot_u8_i8, load_f16_x8, loadu, loadu128, prefetch_block, prefetch_weights};
use crate::cpu::interleaved::{
    q5_0_lane_bias, q8_0_lane_bias, ActExtendFn, GroupDotFn, GroupKernels, GROUP_ROWS,
    LANE_BIAS_BLOCK, Q4_1_GROUP_BLOCK, Q5_0_GROUP_BLOCK, Q8_0_GROUP_BLOCK,
};

/// The block count, after checking that `w` holds `rows / 8` groups of `n` elements in
/// `(group block, activation block)` bytes `sizes`, the `toks` activation rows (`a_stride`
/// apart) theirs, and `out` every `out[j * rs + t * ts]`, `j < rows` (rows or tokens side by
/// side).
#[allow(clippy::too_many_arguments)]
fn group_blocks(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    out: &[f32],
    (rs, ts): (usize, usize),
    (rows, toks): (usize, usize),
    (gb, ab): (usize, usize),
) -> usize {
    let nb = n / 32;
    assert!(
        nb * 32 == n
            && w.len() >= nb * gb * (rows / GROUP_ROWS)
            && (toks == 1 || a_stride >= nb * ab)
            && a.len() >= (toks - 1) * a_stride + nb * ab
            && (rs >= toks || ts >= rows)
            && out.len() > (rows - 1) * rs + (toks - 1) * ts,
        "interleaved group: {toks} tokens of {n} elements do not fit the buffers"
    );
    nb
}

/// `fn $name(n, w, a, a_stride, out, os)`: a safe [`GroupDotFn`] over the kernel `$kernel` for
/// `$toks` tokens of `$sizes` (group and activation block bytes) and one group of rows (or
/// `$rows`), after [`group_blocks`] has checked every buffer; the form `$name<T>` is generic
/// over the token count of `$kernel::<T>`.
///
/// [`GroupDotFn`]: crate::cpu::interleaved::GroupDotFn
macro_rules! safe_group {
    ($name:ident => $kernel:ident, $toks:expr, $sizes:expr) => {
        safe_group!($name => $kernel, $toks, $sizes, GROUP_ROWS);
    };
    ($name:ident => $kernel:ident, $toks:expr, $sizes:expr, $rows:expr) => {
        fn $name(n: usize, w: &[u8], a: &[u8], as_: usize, out: &mut [f32], os: (usize, usize)) {
            let nb = group_blocks(n, w, a, as_, out, os, ($rows, $toks), $sizes);
            // SAFETY: `Variant`s hand a build's kernels out only after runtime detection of
            // its features; `group_blocks` checked every buffer the kernel reads or writes.
            unsafe { $kernel(nb, w.as_ptr(), a.as_ptr(), as_, out.as_mut_ptr(), os) }
        }
    };
    ($name:ident<T> => $kernel:ident, $sizes:expr) => {
        fn $name<const T: usize>(
            n: usize,
            w: &[u8],
            a: &[u8],
            as_: usize,
            out: &mut [f32],
            os: (usize, usize),
        ) {
            let nb = group_blocks(n, w, a, as_, out, os, (GROUP_ROWS, T), $sizes);
            // SAFETY: as in the first form.
            unsafe { $kernel::<T>(nb, w.as_ptr(), a.as_ptr(), as_, out.as_mut_ptr(), os) }
        }
    };
}

/// ggml's `hsum_float_8` of the eight lane accumulators, row by row (lanes are rows here),
/// then `+ summs`: `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) + m`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish(lo: [__m256; 4], hi: [__m256; 4], m: __m256) -> __m256 {
    _mm256_add_ps(hsum8(lo, hi), m)
}

/// ggml's `hsum_float_8` of the eight lane accumulators, row by row:
/// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8(lo: [__m256; 4], hi: [__m256; 4]) -> __m256 {
    let r: [__m256; 4] = std::array::from_fn(|k| _mm256_add_ps(lo[k], hi[k]));
    _mm256_add_ps(_mm256_add_ps(r[0], r[2]), _mm256_add_ps(r[1], r[3]))
}

/// `out[j * rs + t * ts] = v[j]`: one store where the rows are side by side (`rs == 1`).
///
/// # Safety
/// `out` valid for every `out[j * rs + t * ts]`, `j < 8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store(v: __m256, out: *mut f32, (rs, ts): (usize, usize), t: usize) {
    // SAFETY: caller's contract.
    unsafe {
        if rs == 1 {
            _mm256_storeu_ps(out.add(t * ts), v);
            return;
        }
        let mut r = [0.0f32; GROUP_ROWS];
        _mm256_storeu_ps(r.as_mut_ptr(), v);
        for (j, v) in r.into_iter().enumerate() {
            *out.add(j * rs + t * ts) = v;
        }
    }
}

/// Eight i32 sums of four u8 x i8 products each, by one `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn dot_u8_i8_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// The two-group kernel ([`GroupKernels::two_groups`]) of a module: `TWO_GROUPS` (the safe
/// kernel and its `TWO_TOKS` tokens, four as the 256-bit tiles, for the same registers per
/// pass) over `$sums::<T>(nb, w, a, as_)`, the module's sixteen finished row sums per token of
/// two adjacent groups (the second group's `nb` blocks right after the first's), reading
/// activation blocks of `$sizes`.
macro_rules! two_group_kernel {
    ($sizes:expr, $sums:ident) => {
        /// Tokens per two-group call.
        const TWO_TOKS: usize = 4;

        /// The two-group kernel and its token count.
        const TWO_GROUPS: (GroupDotFn, usize) = (two_groups_safe, TWO_TOKS);

        safe_group!(two_groups_safe => two_groups, TWO_TOKS, $sizes, 2 * GROUP_ROWS);

        /// Sixteen rows (two adjacent groups) by `TWO_TOKS` tokens.
        ///
        /// # Safety
        /// The two-group features present; `w` valid for `2 * nb` group blocks, the
        /// `TWO_TOKS` activation rows `as_` apart as `$sums` reads them, `out` for every
        /// `out[j * os.0 + t * os.1]`, `j < 16`, `t < TWO_TOKS`.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn two_groups(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: (usize, usize),
        ) {
            // SAFETY: caller's contract, passed on.
            unsafe {
                for (t, v) in $sums::<TWO_TOKS>(nb, w, a, as_).into_iter().enumerate() {
                    store16(v, out, os, t);
                }
            }
        }
    };
}

/// Builds the Q4_1 group kernels for the given target features and u8 x i8 primitive
/// (`$dot(u, s)`, as [`dot_u8_i8`]) with prefill tiles of `$toks` tokens: low lanes, high lanes
/// and the m chains in three passes, each keeping its `4 * $toks` accumulators in registers.
/// The nibbles are unsigned, so a lane sum is one `$dot` with no sign work.
macro_rules! q4_1_kernels {
    (
        features = $feat:literal,
        dot_u8_i8 = $dot:path,
        toks = $toks:literal,
        narrow = $narrow:expr,
        two_groups = $two:expr
    ) => {
        use super::*;

        pub(in crate::cpu::x86_64) const Q4_1: GroupKernels = GroupKernels {
            one: group_one_safe,
            tile: group_tile_safe::<$toks>,
            toks: $toks,
            narrow: $narrow,
            tile_ext: None,
            two_groups: $two,
        };

        const SIZES: (usize, usize) = (Q4_1_GROUP_BLOCK, 36);

        safe_group!(group_one_safe => group_one, 1, SIZES);

        safe_group!(group_tile_safe<T> => group_tile, SIZES);

        /// One token: the eight lane accumulators fit the registers in one pass, then the m
        /// chain.
        ///
        /// # Safety
        /// This build's features present; `w` valid for `nb` group blocks, `a` for `nb` Q8_1
        /// blocks, `out` for every `out[j * os.0]`, `j < 8`.
        #[target_feature(enable = $feat)]
        unsafe fn group_one(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: (usize, usize),
        ) {
            // SAFETY: caller's contract, passed on.
            unsafe {
                let [[l0, l1, l2, l3, l4, l5, l6, l7]] = lanes::<1, 0, 8>(nb, w, a, as_);
                let [m] = m_chain::<1>(nb, w, a, as_);
                store(finish([l0, l1, l2, l3], [l4, l5, l6, l7], m), out, os, 0);
            }
        }

        /// `T` tokens: low lanes, high lanes and the m chains in three passes over the group
        /// (in L1 after the first), so that each pass keeps its accumulators in registers.
        ///
        /// # Safety
        /// As for [`group_one`], for `T` activation rows `as_` bytes apart and every
        /// `out[j * os.0 + t * os.1]`.
        #[target_feature(enable = $feat)]
        unsafe fn group_tile<const T: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: (usize, usize),
        ) {
            // SAFETY: caller's contract, passed on.
            unsafe {
                let lo = lanes::<T, 0, 4>(nb, w, a, as_);
                let hi = lanes::<T, 4, 4>(nb, w, a, as_);
                let m = m_chain::<T>(nb, w, a, as_);
                for t in 0..T {
                    store(finish(lo[t], hi[t], m[t]), out, os, t);
                }
            }
        }

        /// The `NL` lane accumulators from lane `L0` on, for `T` tokens: lane `l` of ggml's
        /// Q4_1 dot is elements `4l..4l + 4` of a block, the low nibbles of vector `l` for
        /// `l < 4` and the high nibbles of vector `l - 4` above, and gets
        /// `fma(d_w * d_a, lane_sum, acc)` per block.
        ///
        /// # Safety
        /// This build's features present; `w` valid for `nb` group blocks, each
        /// `a.add(t * as_)` for `nb` Q8_1 blocks.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn lanes<const T: usize, const L0: usize, const NL: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
        ) -> [[__m256; NL]; T] {
            // SAFETY: every read is inside group block `i < nb` or activation block `i` of
            // token `t < T` (caller's contract).
            unsafe {
                let low = _mm256_set1_epi8(0x0F);
                let mut acc = [[_mm256_setzero_ps(); NL]; T];
                for i in 0..nb {
                    let x = w.add(i * Q4_1_GROUP_BLOCK);
                    if L0 == 0 {
                        prefetch_weights(x, Q4_1_GROUP_BLOCK);
                    }
                    let y: [*const u8; T] = std::array::from_fn(|t| a.add(t * as_ + i * 36));
                    let xd = _mm256_cvtph_ps(loadu128(x));
                    let d: [__m256; T] =
                        std::array::from_fn(|t| _mm256_mul_ps(xd, load_f16_x8(y[t])));
                    for l in L0..L0 + NL {
                        let q = loadu(x.add(32 + 32 * (l % 4)));
                        let nib = if l < 4 {
                            _mm256_and_si256(q, low)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16::<4>(q), low)
                        };
                        for t in 0..T {
                            let quad = _mm256_set1_epi32(
                                y[t].add(4 + 4 * l).cast::<i32>().read_unaligned(),
                            );
                            let sum = $dot(nib, quad);
                            acc[t][l - L0] =
                                _mm256_fmadd_ps(d[t], _mm256_cvtepi32_ps(sum), acc[t][l - L0]);
                        }
                    }
                }
                acc
            }
        }

        /// The `m` terms, `summs = fma(m_w, s_a, summs)` block by block, for `T` tokens.
        ///
        /// # Safety
        /// As for [`lanes`].
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn m_chain<const T: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
        ) -> [__m256; T] {
            // SAFETY: as for `lanes`.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); T];
                for i in 0..nb {
                    let xm = _mm256_cvtph_ps(loadu128(w.add(i * Q4_1_GROUP_BLOCK + 16)));
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let s = load_f16_x8(a.add(t * as_ + i * 36 + 2));
                        *acc = _mm256_fmadd_ps(xm, s, *acc);
                    }
                }
                acc
            }
        }
    };
}

/// Q4_1 on AVX2 + FMA + F16C (`vpmaddubsw` + `vpmaddwd`); two-token tiles, whose eight
/// accumulators per pass, two scale vectors and the unpacking temporaries fit the sixteen
/// registers.
pub(super) mod q4_1_plain {
    q4_1_kernels!(
        features = "avx2,fma,f16c",
        dot_u8_i8 = dot_u8_i8,
        toks = 2,
        narrow = &[],
        two_groups = None
    );
}

/// Q4_1 with AVX-512 VNNI and VL at 256 bits: one `vpdpbusd` per lane sum, and 32 registers
/// for four-token tiles.
pub(super) mod q4_1_vnni {
    q4_1_kernels!(
        features = "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_u8_i8 = dot_u8_i8_vnni,
        toks = 4,
        narrow = &[(group_tile_safe::<3>, 3), (group_tile_safe::<2>, 2)],
        two_groups = Some(TWO_GROUPS)
    );

    two_group_kernel!(SIZES, row_sums_512);

    /// Sixteen rows' sums for `T` tokens in 512-bit vectors, lane `l` of the first group's
    /// rows in the low half and of the second's in the high half: the 256-bit tile's three
    /// passes (low lanes, high lanes, m chain), each instruction serving sixteen rows.
    ///
    /// # Safety
    /// The two-group features present; `w` valid for `2 * nb` group blocks, each
    /// `a.add(t * as_)` for `nb` Q8_1 blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn row_sums_512<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        as_: usize,
    ) -> [__m512; T] {
        // SAFETY: caller's contract, passed on.
        unsafe {
            let lo = lanes_512::<T, 0>(nb, w, a, as_);
            let hi = lanes_512::<T, 4>(nb, w, a, as_);
            let m = m_chain_512::<T>(nb, w, a, as_);
            std::array::from_fn(|t| _mm512_add_ps(hsum8_512(lo[t], hi[t]), m[t]))
        }
    }

    /// Lanes `L0..L0 + 4` of sixteen rows for `T` tokens, as `lanes`.
    ///
    /// # Safety
    /// As for [`two_groups`], for `T` tokens.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn lanes_512<const T: usize, const L0: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        as_: usize,
    ) -> [[__m512; 4]; T] {
        // SAFETY: every read is inside group block `i < nb` of either group or activation
        // block `i` of token `t < T` (caller's contract).
        unsafe {
            let low = _mm512_set1_epi8(0x0F);
            let second = nb * Q4_1_GROUP_BLOCK;
            let mut acc = [[_mm512_setzero_ps(); 4]; T];
            for i in 0..nb {
                let x = w.add(i * Q4_1_GROUP_BLOCK);
                if L0 == 0 {
                    prefetch_weights(x, Q4_1_GROUP_BLOCK);
                    prefetch_weights(x.add(second), Q4_1_GROUP_BLOCK);
                }
                // The next pair's groups, one per pass (see `biased_two_groups`).
                prefetch_block(x.wrapping_add((2 + L0 / 4) * second), Q4_1_GROUP_BLOCK);
                let y: [*const u8; T] = std::array::from_fn(|t| a.add(t * as_ + i * 36));
                let xd = _mm512_cvtph_ps(load128_pair(x, second));
                let d: [__m512; T] = std::array::from_fn(|t| {
                    let bits = y[t].cast::<i16>().read_unaligned();
                    _mm512_mul_ps(xd, _mm512_cvtph_ps(_mm256_set1_epi16(bits)))
                });
                for l in L0..L0 + 4 {
                    let q = load_pair(x.add(32 + 32 * (l % 4)), second);
                    let nib = if l < 4 {
                        _mm512_and_si512(q, low)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(q), low)
                    };
                    for t in 0..T {
                        let quad =
                            _mm512_set1_epi32(y[t].add(4 + 4 * l).cast::<i32>().read_unaligned());
                        let sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nib, quad);
                        acc[t][l - L0] =
                            _mm512_fmadd_ps(d[t], _mm512_cvtepi32_ps(sum), acc[t][l - L0]);
                    }
                }
            }
            acc
        }
    }

    /// The `m` terms of sixteen rows for `T` tokens, as `m_chain`.
    ///
    /// # Safety
    /// As for [`lanes_512`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn m_chain_512<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        as_: usize,
    ) -> [__m512; T] {
        // SAFETY: as for `lanes_512`.
        unsafe {
            let second = nb * Q4_1_GROUP_BLOCK;
            let mut acc = [_mm512_setzero_ps(); T];
            for i in 0..nb {
                let x = w.add(i * Q4_1_GROUP_BLOCK + 16);
                let xm = _mm512_cvtph_ps(load128_pair(x, second));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let bits = a.add(t * as_ + i * 36 + 2).cast::<i16>().read_unaligned();
                    let s = _mm512_cvtph_ps(_mm256_set1_epi16(bits));
                    *acc = _mm512_fmadd_ps(xm, s, *acc);
                }
            }
            acc
        }
    }
}

/// `v` shifted so that bit `l` of each byte lands on bit 4 (other bits are masked off after).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits_to_bit4(v: __m256i, l: usize) -> __m256i {
    match l {
        0 => _mm256_slli_epi16::<4>(v),
        1 => _mm256_slli_epi16::<3>(v),
        2 => _mm256_slli_epi16::<2>(v),
        3 => _mm256_slli_epi16::<1>(v),
        4 => v,
        5 => _mm256_srli_epi16::<1>(v),
        6 => _mm256_srli_epi16::<2>(v),
        _ => _mm256_srli_epi16::<3>(v),
    }
}

/// [`fifth_bits_to_bit4`] on 512 bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn fifth_bits_to_bit4_512(v: __m512i, l: usize) -> __m512i {
    match l {
        0 => _mm512_slli_epi16::<4>(v),
        1 => _mm512_slli_epi16::<3>(v),
        2 => _mm512_slli_epi16::<2>(v),
        3 => _mm512_slli_epi16::<1>(v),
        4 => v,
        5 => _mm512_srli_epi16::<1>(v),
        6 => _mm512_srli_epi16::<2>(v),
        _ => _mm512_srli_epi16::<3>(v),
    }
}

/// The unsafe kernels a format module builds on its `add_lanes::<T, L0, NL>` (lane sums added
/// into accumulators) and its wide `$tile_lanes::<T>` (all eight lanes of `T` tokens), under
/// the features `$feat`: `group_one` (one token), `group_tile` (`$toks` tokens) and `lanes`
/// (the accumulators returned, in registers where they fit).
macro_rules! group_fns {
    ($feat:literal, $tile_lanes:ident) => {
        /// One token: all eight lane accumulators in one pass.
        ///
        /// # Safety
        /// This build's features present; `w` valid for `nb` group blocks, `a` for `nb` Q8_0
        /// blocks, `out` for every `out[j * os.0]`, `j < 8`.
        #[target_feature(enable = $feat)]
        unsafe fn group_one(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: (usize, usize),
        ) {
            // SAFETY: caller's contract, passed on.
            unsafe {
                let [[l0, l1, l2, l3, l4, l5, l6, l7]] = lanes::<1, 0, 8>(nb, w, a, as_);
                store(hsum8([l0, l1, l2, l3], [l4, l5, l6, l7]), out, os, 0);
            }
        }

        /// `T` tokens, all eight lanes of each.
        ///
        /// # Safety
        /// As for [`group_one`], for `T` activation rows (as the tile reads them) `as_` bytes
        /// apart and every `out[j * os.0 + t * os.1]`.
        #[target_feature(enable = $feat)]
        unsafe fn group_tile<const T: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: (usize, usize),
        ) {
            // SAFETY: caller's contract, passed on.
            unsafe {
                // Filled in place: returned by value, 64 vectors were copied once more.
                let mut acc = [[_mm256_setzero_ps(); 8]; T];
                $tile_lanes::<T>(nb, w, a, as_, &mut acc);
                for (t, &[l0, l1, l2, l3, l4, l5, l6, l7]) in acc.iter().enumerate() {
                    store(hsum8([l0, l1, l2, l3], [l4, l5, l6, l7]), out, os, t);
                }
            }
        }

        /// The `NL` lane accumulators from lane `L0` on, for `T` tokens (see `add_lanes`), in
        /// registers where they fit.
        ///
        /// # Safety
        /// As for `add_lanes`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn lanes<const T: usize, const L0: usize, const NL: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
        ) -> [[__m256; NL]; T] {
            let mut acc = [[_mm256_setzero_ps(); NL]; T];
            // SAFETY: caller's contract, passed on.
            unsafe { add_lanes::<T, L0, NL>(nb, w, a, as_, &mut acc) };
            acc
        }
    };
}

/// The two-token tile (`group_pair_safe`, and `group_pair` under the features `$feat`) of a
/// module whose `lanes::<T, L0, NL>` keeps its accumulators in registers and whose `SIZES` are
/// its group and activation block bytes: the low and the high lanes in two passes, the tile
/// for a few tokens left over after the wide ones.
macro_rules! pair_tile {
    ($feat:literal) => {
        safe_group!(group_pair_safe => group_pair, 2, SIZES);

        /// Two tokens, the low and the high lanes in two passes.
        ///
        /// # Safety
        /// This build's features present; `w` valid for `nb` group blocks, two activation
        /// rows `as_` bytes apart for `nb` blocks each, `out` for every
        /// `out[j * os.0 + t * os.1]`, `j < 8`, `t < 2`.
        #[target_feature(enable = $feat)]
        unsafe fn group_pair(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            out: *mut f32,
            os: (usize, usize),
        ) {
            // SAFETY: caller's contract, passed on.
            unsafe {
                let lo = lanes::<2, 0, 4>(nb, w, a, as_);
                let hi = lanes::<2, 4, 4>(nb, w, a, as_);
                for t in 0..2 {
                    store(hsum8(lo[t], hi[t]), out, os, t);
                }
            }
        }
    };
}

/// The lane sums of a VNNI tile on unsigned weights, under the features `$feat`, for group
/// blocks of `$gb` bytes whose lane `l` at `x` is `$unsigned(x, l)` (the quants plus the offset
/// that the activation rows' lane biases undo, as `q5_0_lane_bias` and `q8_0_lane_bias` write
/// them): `biased_lanes::<T, L0, NL>`, one `vpdpbusd` per lane sum started from the bias, and
/// `biased_all_lanes::<T>`, all eight lanes added into `acc` in two passes over the group (in
/// L1 after the first), each keeping its accumulators in registers.
macro_rules! biased_lane_sums {
    ($feat:literal, $gb:expr, $unsigned:ident) => {
        /// All eight lane sums of `T` tokens, added into `acc` (see [`biased_lanes`]).
        ///
        /// # Safety
        /// As for [`biased_lanes`].
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn biased_all_lanes<const T: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            acc: &mut [[__m256; 8]; T],
        ) {
            // SAFETY: caller's contract, passed on.
            let (lo, hi) = unsafe {
                (
                    biased_lanes::<T, 0, 4>(nb, w, a, as_),
                    biased_lanes::<T, 4, 4>(nb, w, a, as_),
                )
            };
            for (acc, (lo, hi)) in acc.iter_mut().zip(lo.iter().zip(&hi)) {
                acc[..4].copy_from_slice(lo);
                acc[4..].copy_from_slice(hi);
            }
        }

        /// The `NL` lane accumulators from lane `L0` on, for `T` activation rows extended by
        /// their lane biases (blocks of `34` bytes, then the `32`-byte biases of all blocks):
        /// each lane gets `fma(d_w * d_a, bias + sum(u * y), acc)` per block.
        ///
        /// # Safety
        /// This build's features present; `w` valid for `nb` group blocks, each
        /// `a.add(t * as_)` for `nb` Q8_0 blocks followed by their `nb` bias blocks.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn biased_lanes<const T: usize, const L0: usize, const NL: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
        ) -> [[__m256; NL]; T] {
            // SAFETY: every read is inside group block `i < nb`, activation block `i` of
            // token `t < T` or its bias block (caller's contract).
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); NL]; T];
                for i in 0..nb {
                    let x = w.add(i * $gb);
                    if L0 == 0 {
                        prefetch_weights(x, $gb);
                    }
                    let y: [*const u8; T] = std::array::from_fn(|t| a.add(t * as_ + i * 34));
                    let bias: [*const u8; T] =
                        std::array::from_fn(|t| a.add(t * as_ + nb * 34 + i * LANE_BIAS_BLOCK));
                    let xd = _mm256_cvtph_ps(loadu128(x));
                    let d: [__m256; T] =
                        std::array::from_fn(|t| _mm256_mul_ps(xd, load_f16_x8(y[t])));
                    for l in L0..L0 + NL {
                        let u = $unsigned(x, l);
                        for t in 0..T {
                            let quad = _mm256_set1_epi32(
                                y[t].add(2 + 4 * l).cast::<i32>().read_unaligned(),
                            );
                            let b = _mm256_set1_epi32(
                                bias[t].add(4 * l).cast::<i32>().read_unaligned(),
                            );
                            let sum = _mm256_dpbusd_epi32(b, u, quad);
                            acc[t][l - L0] =
                                _mm256_fmadd_ps(d[t], _mm256_cvtepi32_ps(sum), acc[t][l - L0]);
                        }
                    }
                }
                acc
            }
        }
    };
}

/// The two-group kernel ([`GroupKernels::two_groups`]) of a VNNI format on unsigned weights:
/// [`biased_lane_sums`] for sixteen rows in 512-bit vectors, lane `l` of the first group's
/// rows in the low half and of the second group's in the high half, so one `vpdpbusd`, one
/// convert and one FMA per lane and token serve sixteen rows. `$unsigned2(x, second, l)` gives
/// lane `l` of group block `x` and of the one `second` bytes after it, unsigned; `$gb` is the
/// group block's bytes and `TILE_SIZES` the module's. Each half is the 256-bit tile's
/// arithmetic, so the bits are its.
///
/// On Zen 5 a 512-bit `vpdpbusd` + convert + FMA issues at the rate of the 256-bit ones, so
/// this does a compute-bound prefill's integer and float work in about half the instructions.
macro_rules! biased_two_groups {
    ($gb:expr, $unsigned2:ident) => {
        two_group_kernel!(TILE_SIZES, row_sums_512);

        /// Sixteen rows' sums for `T` tokens: the low and the high lanes in two passes, then
        /// ggml's horizontal sum per row.
        ///
        /// # Safety
        /// The two-group features present; `w` valid for `2 * nb` group blocks, each
        /// `a.add(t * as_)` for `nb` Q8_0 blocks and their `nb` bias blocks.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn row_sums_512<const T: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
        ) -> [__m512; T] {
            // SAFETY: caller's contract, passed on.
            unsafe {
                let lo = biased_lanes_512::<T, 0>(nb, w, a, as_);
                let hi = biased_lanes_512::<T, 4>(nb, w, a, as_);
                std::array::from_fn(|t| hsum8_512(lo[t], hi[t]))
            }
        }

        /// Lanes `L0..L0 + 4` of sixteen rows for `T` tokens: each lane gets
        /// `fma(d_w * d_a, bias + sum(u * y), acc)` per block, as in `biased_lanes`.
        ///
        /// # Safety
        /// As for [`two_groups`], for `T` tokens.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn biased_lanes_512<const T: usize, const L0: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
        ) -> [[__m512; 4]; T] {
            // SAFETY: every read is inside group block `i < nb` of either group, activation
            // block `i` of token `t < T` or its bias block (caller's contract).
            unsafe {
                let second = nb * $gb;
                let mut acc = [[_mm512_setzero_ps(); 4]; T];
                for i in 0..nb {
                    let x = w.add(i * $gb);
                    if L0 == 0 {
                        prefetch_weights(x, $gb);
                        prefetch_weights(x.add(second), $gb);
                    }
                    // The next pair's groups, one per pass, while this pair's later passes
                    // and calls compute from L1 (a hint: past the matrix it does nothing).
                    prefetch_block(x.wrapping_add((2 + L0 / 4) * second), $gb);
                    let xd = _mm512_cvtph_ps(load128_pair(x, second));
                    let d: [__m512; T] = std::array::from_fn(|t| {
                        let bits = a.add(t * as_ + i * 34).cast::<i16>().read_unaligned();
                        _mm512_mul_ps(xd, _mm512_cvtph_ps(_mm256_set1_epi16(bits)))
                    });
                    for l in L0..L0 + 4 {
                        let u = $unsigned2(x, second, l);
                        for t in 0..T {
                            let y = a.add(t * as_ + i * 34 + 2 + 4 * l);
                            let b = a.add(t * as_ + nb * 34 + i * LANE_BIAS_BLOCK + 4 * l);
                            let quad = _mm512_set1_epi32(y.cast::<i32>().read_unaligned());
                            let bias = _mm512_set1_epi32(b.cast::<i32>().read_unaligned());
                            let sum = _mm512_dpbusd_epi32(bias, u, quad);
                            acc[t][l - L0] =
                                _mm512_fmadd_ps(d[t], _mm512_cvtepi32_ps(sum), acc[t][l - L0]);
                        }
                    }
                }
                acc
            }
        }
    };
}

/// The 256-bit vectors at `x` and `x + second` as one 512-bit vector (`x`'s in the low half).
///
/// # Safety
/// The two-group features present; 32 bytes readable at both.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load_pair(x: *const u8, second: usize) -> __m512i {
    // SAFETY: caller's contract.
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(loadu(x)), loadu(x.add(second))) }
}

/// The 128-bit vectors at `x` and `x + second` as one 256-bit vector (`x`'s in the low half).
///
/// # Safety
/// 16 bytes readable at both.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load128_pair(x: *const u8, second: usize) -> __m256i {
    // SAFETY: caller's contract.
    unsafe {
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(loadu128(x)), loadu128(x.add(second)))
    }
}

/// [`hsum8`] of sixteen rows' lane accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum8_512(lo: [__m512; 4], hi: [__m512; 4]) -> __m512 {
    let r: [__m512; 4] = std::array::from_fn(|k| _mm512_add_ps(lo[k], hi[k]));
    _mm512_add_ps(_mm512_add_ps(r[0], r[2]), _mm512_add_ps(r[1], r[3]))
}

/// [`store`] for sixteen rows: one store where they are side by side.
///
/// # Safety
/// `out` valid for every `out[j * rs + t * ts]`, `j < 16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn store16(v: __m512, out: *mut f32, (rs, ts): (usize, usize), t: usize) {
    // SAFETY: caller's contract.
    unsafe {
        if rs == 1 {
            _mm512_storeu_ps(out.add(t * ts), v);
            return;
        }
        let mut r = [0.0f32; 2 * GROUP_ROWS];
        _mm512_storeu_ps(r.as_mut_ptr(), v);
        for (j, v) in r.into_iter().enumerate() {
            *out.add(j * rs + t * ts) = v;
        }
    }
}

/// `g` without its two-group kernel unless the CPU has the 512-bit features it runs on (F
/// and BW, which every CPU with VNNI and VL has; checked all the same).
pub(super) fn two_groups_if_512(g: GroupKernels) -> GroupKernels {
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        g
    } else {
        GroupKernels {
            two_groups: None,
            ..g
        }
    }
}

/// Builds the Q5_0 group kernels for the given target features and u8 x i8 primitive
/// (`$dot(u, s)`: eight i32 sums of four products, `u` unsigned) with prefill tiles of `$toks`
/// tokens (two passes of four lanes each, whose accumulators must fit the registers).
macro_rules! q5_0_kernels {
    (
        features = $feat:literal,
        dot_u8_i8 = $dot:path,
        toks = $toks:literal,
        tile_lanes = $tile_lanes:ident,
        narrow = $narrow:expr,
        tile_ext = $ext:expr,
        two_groups = $two:expr
    ) => {
        use super::*;

        pub(in crate::cpu::x86_64) const Q5_0: GroupKernels = GroupKernels {
            one: group_one_safe,
            tile: group_tile_safe::<$toks>,
            toks: $toks,
            narrow: $narrow,
            tile_ext: EXT,
            two_groups: $two,
        };

        const EXT: Option<(ActExtendFn, usize)> = $ext;

        const SIZES: (usize, usize) = (Q5_0_GROUP_BLOCK, 34);
        /// Activation block bytes as the tile reads them (with the extension, if any).
        const TILE_SIZES: (usize, usize) = (
            Q5_0_GROUP_BLOCK,
            34 + match EXT {
                Some((_, b)) => b,
                None => 0,
            },
        );

        safe_group!(group_one_safe => group_one, 1, SIZES);

        safe_group!(group_tile_safe<T> => group_tile, TILE_SIZES);

        group_fns!($feat, $tile_lanes);

        /// The `NL` lane sums from lane `L0` on, for `T` tokens, added into `acc`. Lane `l`'s
        /// quants are its nibbles with the fifth bit shifted in, minus 16; the sign trick moves
        /// each quant's sign onto the activation (`|q| <= 16`, `|y| <= 127` keeps
        /// `vpmaddubsw`'s pairs within i16), and each lane gets `fma(d_w * d_a, lane_sum, acc)`
        /// per block.
        ///
        /// # Safety
        /// This build's features present; `w` valid for `nb` group blocks, each
        /// `a.add(t * as_)` for `nb` Q8_0 blocks.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn add_lanes<const T: usize, const L0: usize, const NL: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            acc: &mut [[__m256; NL]; T],
        ) {
            // SAFETY: every read is inside group block `i < nb` or activation block `i` of
            // token `t < T` (caller's contract).
            unsafe {
                let low = _mm256_set1_epi8(0x0F);
                let bit4 = _mm256_set1_epi8(0x10);
                let mut d = [_mm256_setzero_ps(); T];
                for i in 0..nb {
                    let x = w.add(i * Q5_0_GROUP_BLOCK);
                    if L0 == 0 {
                        prefetch_weights(x, Q5_0_GROUP_BLOCK);
                    }
                    let xd = _mm256_cvtph_ps(loadu128(x));
                    for (t, d) in d.iter_mut().enumerate() {
                        *d = _mm256_mul_ps(xd, load_f16_x8(a.add(t * as_ + i * 34)));
                    }
                    let fifth = loadu(x.add(144));
                    for l in L0..L0 + NL {
                        let v = loadu(x.add(16 + 32 * (l % 4)));
                        let nib = if l < 4 {
                            _mm256_and_si256(v, low)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), low)
                        };
                        let hi = _mm256_and_si256(fifth_bits_to_bit4(fifth, l), bit4);
                        let q = _mm256_sub_epi8(_mm256_or_si256(nib, hi), bit4);
                        let aq = _mm256_sign_epi8(q, q);
                        for (t, (acc, d)) in acc.iter_mut().zip(&d).enumerate() {
                            let y = a.add(t * as_ + i * 34 + 2 + 4 * l);
                            let quad = _mm256_set1_epi32(y.cast::<i32>().read_unaligned());
                            let sum = $dot(aq, _mm256_sign_epi8(quad, q));
                            acc[l - L0] = _mm256_fmadd_ps(*d, _mm256_cvtepi32_ps(sum), acc[l - L0]);
                        }
                    }
                }
            }
        }
    };
}

/// Q5_0 on AVX2 + FMA + F16C (`vpmaddubsw` + `vpmaddwd`).
pub(super) mod q5_0_plain {
    q5_0_kernels!(
        features = "avx2,fma,f16c",
        dot_u8_i8 = dot_u8_i8,
        toks = 8,
        tile_lanes = all_lanes,
        narrow = &[(group_pair_safe, 2)],
        tile_ext = None,
        two_groups = None
    );

    pair_tile!("avx2,fma,f16c");

    /// All eight lane accumulators of `T` tokens, added into `acc`, in one pass over the group.
    /// They outnumber the registers, so they live in L1 (a load and a store beside each FMA,
    /// off the critical ports), and in exchange each lane's quants are unpacked once per block
    /// for all `T` tokens: the unpacking (nibble, fifth bit, bias, `|q|`) had cost more than
    /// the products when two tokens shared it.
    ///
    /// # Safety
    /// As for [`lanes`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn all_lanes<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        as_: usize,
        acc: &mut [[__m256; 8]; T],
    ) {
        // SAFETY: caller's contract, passed on.
        unsafe { add_lanes::<T, 0, 8>(nb, w, a, as_, acc) }
    }
}

/// Q5_0 with AVX-512 VNNI and VL at 256 bits (`vpdpbusd`; 32 registers: four tokens).
pub(super) mod q5_0_vnni {
    q5_0_kernels!(
        features = "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_u8_i8 = dot_u8_i8_vnni,
        toks = 4,
        tile_lanes = biased_all_lanes,
        narrow = &[(group_tile_safe::<3>, 3), (group_tile_safe::<2>, 2)],
        tile_ext = Some((q5_0_lane_bias, LANE_BIAS_BLOCK)),
        two_groups = Some(TWO_GROUPS)
    );

    biased_lane_sums!(
        "avx2,fma,f16c,avx512vnni,avx512vl",
        Q5_0_GROUP_BLOCK,
        unsigned_lane
    );

    biased_two_groups!(Q5_0_GROUP_BLOCK, unsigned_lane_pair);

    /// [`unsigned_lane`] of the group blocks at `x` and `x + second`, in one 512-bit vector.
    ///
    /// # Safety
    /// The two-group features present; `x` and `x + second` valid for one group block each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn unsigned_lane_pair(x: *const u8, second: usize, l: usize) -> __m512i {
        let (low, bit4) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
        // SAFETY: inside the group blocks (caller's contract).
        let (v, fifth) = unsafe {
            (
                load_pair(x.add(16 + 32 * (l % 4)), second),
                load_pair(x.add(144), second),
            )
        };
        let nib = if l < 4 {
            _mm512_and_si512(v, low)
        } else {
            _mm512_and_si512(_mm512_srli_epi16::<4>(v), low)
        };
        _mm512_or_si512(
            nib,
            _mm512_and_si512(fifth_bits_to_bit4_512(fifth, l), bit4),
        )
    }

    /// Lane `l` of the group block at `x` as unsigned quants, `q + 16` (0..=31): its nibbles
    /// with the fifth bit shifted in.
    ///
    /// # Safety
    /// This build's features present; `x` valid for one group block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn unsigned_lane(x: *const u8, l: usize) -> __m256i {
        let (low, bit4) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x10));
        // SAFETY: inside the group block (caller's contract).
        let (v, fifth) = unsafe { (loadu(x.add(16 + 32 * (l % 4))), loadu(x.add(144))) };
        let nib = if l < 4 {
            _mm256_and_si256(v, low)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), low)
        };
        _mm256_or_si256(nib, _mm256_and_si256(fifth_bits_to_bit4(fifth, l), bit4))
    }
}

/// `add_lanes::<T, L0, NL>` of a Q8_0 module under the features `$feat`, with `$dot` (u8 x i8
/// quad sums, as [`dot_u8_i8`]): the sign trick (`|q|` once per lane and block, the weight's
/// sign moved onto the broadcast activation quad per token), on plain activation rows.
macro_rules! q8_0_sign_lanes {
    ($feat:literal, $dot:path) => {
        /// Adds into `acc` the `NL` lane sums from lane `L0` on, for `T` tokens: lane `l` of
        /// ggml's Q8_0 dot is elements `4l..4l + 4` of a block, vector `l` of the group block
        /// here, and gets `fma(d_w * d_a, lane_sum, acc)` per block.
        ///
        /// # Safety
        /// This build's features present; `w` valid for `nb` group blocks, each
        /// `a.add(t * as_)` for `nb` Q8_0 blocks.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn add_lanes<const T: usize, const L0: usize, const NL: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            as_: usize,
            acc: &mut [[__m256; NL]; T],
        ) {
            // SAFETY: every read is inside group block `i < nb` or activation block `i` of
            // token `t < T` (caller's contract).
            unsafe {
                let mut d = [_mm256_setzero_ps(); T];
                for i in 0..nb {
                    let x = w.add(i * Q8_0_GROUP_BLOCK);
                    if L0 == 0 {
                        prefetch_weights(x, Q8_0_GROUP_BLOCK);
                    }
                    let xd = _mm256_cvtph_ps(loadu128(x));
                    for (t, d) in d.iter_mut().enumerate() {
                        *d = _mm256_mul_ps(xd, load_f16_x8(a.add(t * as_ + i * 34)));
                    }
                    for l in L0..L0 + NL {
                        let q = loadu(x.add(16 + 32 * l));
                        let aq = _mm256_sign_epi8(q, q);
                        for (t, (acc, d)) in acc.iter_mut().zip(&d).enumerate() {
                            let y = a.add(t * as_ + i * 34 + 2 + 4 * l);
                            let quad = _mm256_set1_epi32(y.cast::<i32>().read_unaligned());
                            let sum = $dot(aq, _mm256_sign_epi8(quad, q));
                            acc[l - L0] = _mm256_fmadd_ps(*d, _mm256_cvtepi32_ps(sum), acc[l - L0]);
                        }
                    }
                }
            }
        }
    };
}

/// Q8_0 on AVX2 + FMA + F16C, for CPUs without VNNI: the quants are whole bytes, so a lane's
/// vector is one load, and the sign trick (`|q|` once per lane and block, the weight's sign
/// moved onto the broadcast activation quad per token) keeps `vpmaddubsw`'s pairs within i16
/// (`|q|, |y| <= 127`).
pub(super) mod q8_0_plain {
    use super::*;

    /// Tokens per prefill call: two passes of four lanes, whose eight accumulators, two scale
    /// vectors and the lane's `q`, `|q|` and temporaries fit the sixteen registers.
    const TOKS: usize = 8;

    pub(in crate::cpu::x86_64) const Q8_0: GroupKernels = GroupKernels {
        one: group_one_safe,
        tile: group_tile_safe::<TOKS>,
        toks: TOKS,
        narrow: &[(group_pair_safe, 2)],
        tile_ext: None,
        two_groups: None,
    };

    const SIZES: (usize, usize) = (Q8_0_GROUP_BLOCK, 34);

    safe_group!(group_one_safe => group_one, 1, SIZES);

    safe_group!(group_tile_safe<T> => group_tile, SIZES);

    pair_tile!("avx2,fma,f16c");

    group_fns!("avx2,fma,f16c", all_lanes);

    /// All eight lane accumulators of `T` tokens, added into `acc` (in L1 for eight tokens, as
    /// Q5_0's): each lane's `|q|` is formed once per block for all `T` tokens.
    ///
    /// # Safety
    /// As for [`add_lanes`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn all_lanes<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        as_: usize,
        acc: &mut [[__m256; 8]; T],
    ) {
        // SAFETY: caller's contract, passed on.
        unsafe { add_lanes::<T, 0, 8>(nb, w, a, as_, acc) }
    }

    q8_0_sign_lanes!("avx2,fma,f16c", dot_u8_i8);
}

/// Q8_0 with AVX-512 VNNI and VL at 256 bits. One token takes the sign trick with one
/// `vpdpbusd`; the tile reads activation rows extended by `q8_0_lane_bias` and takes the
/// weights unsigned (`q ^ 0x80 = q + 128`, once per lane and block for all tokens), so that a
/// lane sum of a token is one `vpdpbusd` started from the activation's bias, with no sign work.
pub(super) mod q8_0_vnni {
    use super::*;

    /// Tokens per prefill call: two passes of four lanes, whose accumulators fit the 32
    /// registers.
    const TOKS: usize = 4;

    pub(in crate::cpu::x86_64) const Q8_0: GroupKernels = GroupKernels {
        one: group_one_safe,
        tile: group_tile_safe::<TOKS>,
        toks: TOKS,
        narrow: &[(group_tile_safe::<3>, 3), (group_tile_safe::<2>, 2)],
        tile_ext: Some((q8_0_lane_bias, LANE_BIAS_BLOCK)),
        two_groups: Some(TWO_GROUPS),
    };

    const SIZES: (usize, usize) = (Q8_0_GROUP_BLOCK, 34);
    /// Activation block bytes as the tile reads them: the block, then its lane biases.
    const TILE_SIZES: (usize, usize) = (Q8_0_GROUP_BLOCK, 34 + LANE_BIAS_BLOCK);

    safe_group!(group_one_safe => group_one, 1, SIZES);

    safe_group!(group_tile_safe<T> => group_tile, TILE_SIZES);

    group_fns!("avx2,fma,f16c,avx512vnni,avx512vl", biased_all_lanes);

    q8_0_sign_lanes!("avx2,fma,f16c,avx512vnni,avx512vl", dot_u8_i8_vnni);

    biased_lane_sums!(
        "avx2,fma,f16c,avx512vnni,avx512vl",
        Q8_0_GROUP_BLOCK,
        unsigned_lane
    );

    biased_two_groups!(Q8_0_GROUP_BLOCK, unsigned_lane_pair);

    /// [`unsigned_lane`] of the group blocks at `x` and `x + second`, in one 512-bit vector.
    ///
    /// # Safety
    /// The two-group features present; `x` and `x + second` valid for one group block each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn unsigned_lane_pair(x: *const u8, second: usize, l: usize) -> __m512i {
        // SAFETY: inside the group blocks (caller's contract).
        let q = unsafe { load_pair(x.add(16 + 32 * l), second) };
        _mm512_xor_si512(q, _mm512_set1_epi8(-128))
    }

    /// Lane `l` of the group block at `x` as unsigned quants, `q ^ 0x80 = q + 128`.
    ///
    /// # Safety
    /// This build's features present; `x` valid for one group block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn unsigned_lane(x: *const u8, l: usize) -> __m256i {
        // SAFETY: inside the group block (caller's contract).
        let q = unsafe { loadu(x.add(16 + 32 * l)) };
        _mm256_xor_si256(q, _mm256_set1_epi8(-128))
    }
}
