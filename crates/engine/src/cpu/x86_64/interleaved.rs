//! AVX2 kernels for the interleaved weight groups of `cpu::interleaved` (layout and the float
//! operations they must reproduce are documented there). The integer work is AVX2's
//! `vpmaddubsw` + `vpmaddwd` on every AVX2 core, VNNI or not: the lane sums are exact, so every
//! build gives the bits of the scalar reference, which are those of the row-major kernels.

use std::arch::x86_64::*;

use super::avx2::{load_f16_x8, loadu, loadu128};
use crate::cpu::interleaved::{GroupKernels, GROUP_ROWS, Q4_1_GROUP_BLOCK};

/// Tokens per prefill call: a pass over the four low (or high) lanes of two tokens keeps
/// eight accumulators, two scale vectors and the unpacking temporaries in the sixteen vector
/// registers.
const TILE_TOKS: usize = 2;

pub(super) const Q4_1: GroupKernels = GroupKernels {
    one: q4_1_group_one,
    tile: q4_1_group_tile,
    toks: TILE_TOKS,
};

/// The block count, after checking that the group holds `n` elements of eight rows, the
/// `toks` activation rows (`a_stride` apart) theirs, and `out` every `out[j * os + t]`.
fn group_blocks(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    out: &[f32],
    os: usize,
    toks: usize,
) -> usize {
    let nb = n / 32;
    assert!(
        nb * 32 == n
            && w.len() >= nb * Q4_1_GROUP_BLOCK
            && (toks == 1 || a_stride >= nb * 36)
            && a.len() >= (toks - 1) * a_stride + nb * 36
            && os >= toks
            && out.len() >= (GROUP_ROWS - 1) * os + toks,
        "q4_1 group: {toks} tokens of {n} elements do not fit the buffers"
    );
    nb
}

fn q4_1_group_one(n: usize, w: &[u8], a: &[u8], a_stride: usize, out: &mut [f32], os: usize) {
    let nb = group_blocks(n, w, a, a_stride, out, os, 1);
    // SAFETY: `Variant::Avx2*` hand this out only after runtime detection of AVX2, FMA and
    // F16C; `group_blocks` checked every buffer the kernel reads or writes.
    unsafe { group_one(nb, w.as_ptr(), a.as_ptr(), a_stride, out.as_mut_ptr(), os) }
}

fn q4_1_group_tile(n: usize, w: &[u8], a: &[u8], a_stride: usize, out: &mut [f32], os: usize) {
    let nb = group_blocks(n, w, a, a_stride, out, os, TILE_TOKS);
    // SAFETY: as for `q4_1_group_one`.
    unsafe { group_tile(nb, w.as_ptr(), a.as_ptr(), a_stride, out.as_mut_ptr(), os) }
}

/// One token: the eight lane accumulators fit the registers in one pass, then the m chain.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` valid for `nb` group blocks, `a` for `nb` Q8_1 blocks,
/// `out` for every `out[j * os]`, `j < 8`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_one(nb: usize, w: *const u8, a: *const u8, as_: usize, out: *mut f32, os: usize) {
    // SAFETY: caller's contract, passed on.
    unsafe {
        let [[l0, l1, l2, l3, l4, l5, l6, l7]] = lanes::<1, 0, 8>(nb, w, a, as_);
        let [m] = m_chain::<1>(nb, w, a, as_);
        store(finish([l0, l1, l2, l3], [l4, l5, l6, l7], m), out, os, 0);
    }
}

/// [`TILE_TOKS`] tokens: low lanes, high lanes and the m chains in three passes over the group
/// (in L1 after the first), so that each pass keeps its accumulators in registers.
///
/// # Safety
/// As for [`group_one`], for `TILE_TOKS` activation rows `as_` bytes apart and every
/// `out[j * os + t]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_tile(nb: usize, w: *const u8, a: *const u8, as_: usize, out: *mut f32, os: usize) {
    // SAFETY: caller's contract, passed on.
    unsafe {
        let lo = lanes::<TILE_TOKS, 0, 4>(nb, w, a, as_);
        let hi = lanes::<TILE_TOKS, 4, 4>(nb, w, a, as_);
        let m = m_chain::<TILE_TOKS>(nb, w, a, as_);
        for t in 0..TILE_TOKS {
            store(finish(lo[t], hi[t], m[t]), out, os, t);
        }
    }
}

/// ggml's `hsum_float_8` of the eight lane accumulators, row by row (lanes are rows here),
/// then `+ summs`: `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) + m`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish(lo: [__m256; 4], hi: [__m256; 4], m: __m256) -> __m256 {
    let r: [__m256; 4] = std::array::from_fn(|k| _mm256_add_ps(lo[k], hi[k]));
    let s = _mm256_add_ps(_mm256_add_ps(r[0], r[2]), _mm256_add_ps(r[1], r[3]));
    _mm256_add_ps(s, m)
}

/// `out[j * os + t] = v[j]`.
///
/// # Safety
/// `out` valid for every `out[j * os + t]`, `j < 8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store(v: __m256, out: *mut f32, os: usize, t: usize) {
    let mut r = [0.0f32; GROUP_ROWS];
    // SAFETY: caller's contract.
    unsafe {
        _mm256_storeu_ps(r.as_mut_ptr(), v);
        for (j, v) in r.into_iter().enumerate() {
            *out.add(j * os + t) = v;
        }
    }
}

/// The `NL` lane accumulators from lane `L0` on, for `T` tokens: lane `l` of ggml's Q4_1 dot
/// is elements `4l..4l + 4` of a block, the low nibbles of vector `l` for `l < 4` and the
/// high nibbles of vector `l - 4` above, and gets `fma(d_w * d_a, lane_sum, acc)` per block.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` valid for `nb` group blocks, each `a.add(t * as_)` for `nb`
/// Q8_1 blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lanes<const T: usize, const L0: usize, const NL: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    as_: usize,
) -> [[__m256; NL]; T] {
    // SAFETY: every read is inside group block `i < nb` or activation block `i` of token
    // `t < T` (caller's contract).
    unsafe {
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); NL]; T];
        for i in 0..nb {
            let x = w.add(i * Q4_1_GROUP_BLOCK);
            let y: [*const u8; T] = std::array::from_fn(|t| a.add(t * as_ + i * 36));
            let xd = _mm256_cvtph_ps(loadu128(x));
            let d: [__m256; T] = std::array::from_fn(|t| _mm256_mul_ps(xd, load_f16_x8(y[t])));
            for l in L0..L0 + NL {
                let q = loadu(x.add(32 + 32 * (l % 4)));
                let nib = if l < 4 {
                    _mm256_and_si256(q, low)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), low)
                };
                for t in 0..T {
                    let quad =
                        _mm256_set1_epi32(y[t].add(4 + 4 * l).cast::<i32>().read_unaligned());
                    let sum = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, quad), ones);
                    acc[t][l - L0] = _mm256_fmadd_ps(d[t], _mm256_cvtepi32_ps(sum), acc[t][l - L0]);
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
#[target_feature(enable = "avx2,fma,f16c")]
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
