//! ggml's one-query f16 decode step (`one_query_f16`) for the query heads that read one KV
//! head, in 512-bit vectors. Each key and value row is converted from f16 once for all the
//! heads instead of once per head, and each conversion, fused multiply-add and f16 rounding
//! covers sixteen lanes. Every lane sees the same operations in the same order as in
//! `one_query_f16_avx2`, so each head's output is the same bits.
//!
//! Why: at a depth of a few hundred keys, a batched decode step of small models spends a
//! third or more of its time here. Per key the 256-bit kernel spent most of its instructions
//! on conversions (the key row, the value row, and the round trip that keeps ggml's f16
//! accumulator) and on per-key scalar softmax steps; this one needs about half
//! (`attention/decode` bench, one thread: SmolLM2's shape ~128 -> ~90 us at depth 1023). It
//! pays end to end only because the cache rows start on cache lines (`decoder::CacheBits`):
//! from an unaligned cache the 32-byte f16 loads split lines and the step waited on memory.

use std::arch::x86_64::*;

use half::f16;

use super::{next_chunk, prefetch_next_chunk, AttnParams, DECODE_CHUNK};
use crate::ops::expf::{self, expf8_avx512};

/// The most heads one call takes: their accumulator blocks (four vectors each) and the four
/// value vectors they share fit in the 32 vector registers.
pub(super) const MAX_HEADS: usize = 4;

/// Whether this CPU can run [`heads_f16`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("f16c")
}

/// `G` query heads (`q`: `G * hd` elements, head after head) over the keys at `keys` (element
/// offsets of rows in both caches), into `acc` (`G * hd`), each head exactly as
/// `one_query_f16_avx2` computes it alone.
///
/// # Safety
/// [`available`] must hold. `hd = q.len() / G` is a multiple of 32 and at most 256, and
/// `acc.len() == q.len()`. Key offsets are checked against the caches; `key_stride`
/// (elements between consecutive keys) only steers prefetching.
#[target_feature(enable = "avx512f,avx512vl,fma,avx2,f16c")]
pub(super) unsafe fn heads_f16<const G: usize>(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    mut keys: impl Iterator<Item = usize>,
    key_stride: usize,
    acc: &mut [f32],
) {
    let hd = q.len() / G;
    assert!(G <= MAX_HEADS && hd.is_multiple_of(32) && hd <= 256);
    assert!(q.len() == G * hd && acc.len() == q.len() && k_cache.len() == v_cache.len());
    let mut q16 = [[0.0f32; 256]; G];
    let scale = p.softcap.map_or(p.scale, |cap| p.scale / cap);
    let (mut m, mut sum) = ([f32::NEG_INFINITY; G], [0.0f32; G]);
    let mut offs = [0usize; DECODE_CHUNK];
    let (mut ms, mut vs) = ([[1.0f32; DECODE_CHUNK]; G], [[1.0f32; DECODE_CHUNK]; G]);
    let mut new_max = [0u32; G];
    let lanes_expf = expf::libm_matches();
    // SAFETY: `q16[g]`, `q` and `acc` hold `hd` elements per head, and so do the cache rows
    // at every key offset (checked below); every access is at `i + 16 <= hd`.
    unsafe {
        for (g, q16) in q16.iter_mut().enumerate() {
            for i in (0..hd).step_by(16) {
                let x = _mm512_loadu_ps(q.as_ptr().add(g * hd + i));
                _mm512_storeu_ps(q16.as_mut_ptr().add(i), round(x));
                _mm512_storeu_ps(acc.as_mut_ptr().add(g * hd + i), _mm512_setzero_ps());
            }
        }
        loop {
            let n = next_chunk(&mut keys, &mut offs, hd, k_cache.len());
            if n == 0 {
                break;
            }
            let offs = &offs[..n];
            // Each head's dot products with the chunk's keys, reduced to 8 lanes per key.
            let mut dots = [[_mm256_setzero_ps(); DECODE_CHUNK]; G];
            for (j, &off) in offs.iter().enumerate() {
                let kp = k_cache.as_ptr().add(off);
                prefetch_next_chunk(k_cache, v_cache, off, key_stride, hd);
                // ggml's four 8-lane accumulators, two to a vector: `d[g][0]` holds its
                // first and second, `d[g][1]` its third and fourth.
                let mut d = [[_mm512_setzero_ps(); 2]; G];
                for i in (0..hd).step_by(32) {
                    let k0 = load_f16(kp.add(i));
                    let k1 = load_f16(kp.add(i + 16));
                    for (g, d) in d.iter_mut().enumerate() {
                        let qp = q16[g].as_ptr().add(i);
                        d[0] = _mm512_fmadd_ps(k0, _mm512_loadu_ps(qp), d[0]);
                        d[1] = _mm512_fmadd_ps(k1, _mm512_loadu_ps(qp.add(16)), d[1]);
                    }
                }
                for (g, d) in d.iter().enumerate() {
                    // (first + third) + (second + fourth): ggml's first reduction step.
                    let s2 = _mm512_add_ps(d[0], d[1]);
                    dots[g][j] = _mm256_add_ps(
                        _mm512_castps512_ps256(s2),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s2))),
                    );
                }
            }
            for g in 0..G {
                let mut sc = [0.0f32; DECODE_CHUNK];
                for h in (0..n).step_by(8) {
                    let s = _mm256_mul_ps(reduce8(&dots[g][h..h + 8]), _mm256_set1_ps(scale));
                    _mm256_storeu_ps(sc.as_mut_ptr().add(h), s);
                }
                if let Some(cap) = p.softcap {
                    sc[..n].iter_mut().for_each(|s| *s = cap * s.tanh());
                }
                new_max[g] = 0;
                for h in (0..n).step_by(8) {
                    let lanes = (n - h).min(8);
                    let (bits, last) = softmax_step(
                        _mm256_loadu_ps(sc.as_ptr().add(h)),
                        m[g],
                        lanes,
                        lanes_expf,
                        (ms[g].as_mut_ptr().add(h), vs[g].as_mut_ptr().add(h)),
                    );
                    new_max[g] |= bits << h;
                    m[g] = last;
                }
            }
            // ggml's running sum, key by key (the heads' chains interleaved).
            for j in 0..n {
                for g in 0..G {
                    sum[g] = sum[g].mul_add(ms[g][j], vs[g][j]);
                }
            }
            let w = Weights {
                ms: &ms,
                vs: &vs,
                new_max: &new_max,
            };
            let ap = acc.as_mut_ptr();
            let mut c0 = 0;
            while c0 + 64 <= hd {
                add_values::<G, 4>(v_cache, offs, &w, ap, hd, c0);
                c0 += 64;
            }
            if c0 < hd {
                add_values::<G, 2>(v_cache, offs, &w, ap, hd, c0);
            }
        }
    }
    for g in 0..G {
        let inv = if sum[g] == 0.0 { 0.0 } else { 1.0 / sum[g] };
        for a in &mut acc[g * hd..(g + 1) * hd] {
            *a *= inv;
        }
    }
}

/// One chunk's per-head softmax factors: on a new maximum the accumulator is first scaled by
/// `ms`, then each value row is added with weight `vs`.
struct Weights<'a, const G: usize> {
    ms: &'a [[f32; DECODE_CHUNK]; G],
    vs: &'a [[f32; DECODE_CHUNK]; G],
    /// Bit `j`: key `j` is a new maximum.
    new_max: &'a [u32; G],
}

/// The value rows at `offs` weighted into columns `c0..c0 + 16 * R` of every head's
/// accumulator (`acc`, heads `hd` apart), held in registers across the chunk; each row's
/// columns are converted once for all `G` heads.
///
/// # Safety
/// As [`heads_f16`]; `c0 + 16 * R <= hd` and every offset leaves `hd` elements in the cache.
#[inline(always)]
unsafe fn add_values<const G: usize, const R: usize>(
    v_cache: &[f16],
    offs: &[usize],
    w: &Weights<G>,
    acc: *mut f32,
    hd: usize,
    c0: usize,
) {
    // SAFETY: the caller's contract; accumulator columns `g * hd + c0 .. + 16 * R`.
    unsafe {
        let mut a: [[__m512; R]; G] = std::array::from_fn(|g| {
            std::array::from_fn(|u| _mm512_loadu_ps(acc.add(g * hd + c0 + 16 * u)))
        });
        for (j, &off) in offs.iter().enumerate() {
            let vp = v_cache.as_ptr().add(off + c0);
            let v: [__m512; R] = std::array::from_fn(|u| load_f16(vp.add(16 * u)));
            for (g, a) in a.iter_mut().enumerate() {
                if w.new_max[g] >> j & 1 != 0 {
                    let c = _mm512_set1_ps(w.ms[g][j]);
                    for a in a.iter_mut() {
                        *a = round(_mm512_mul_ps(*a, c));
                    }
                }
                let s = _mm512_set1_ps(w.vs[g][j]);
                for (a, v) in a.iter_mut().zip(&v) {
                    *a = round(_mm512_fmadd_ps(*v, s, *a));
                }
            }
        }
        for (g, a) in a.iter().enumerate() {
            for (u, a) in a.iter().enumerate() {
                _mm512_storeu_ps(acc.add(g * hd + c0 + 16 * u), *a);
            }
        }
    }
}

/// Eight keys' scores from their 8-lane partial sums (`v`, up to eight; missing keys are
/// zero), in key order: per key `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, ggml's
/// horizontal sum, computed for eight keys at once by transposing as it goes.
///
/// # Safety
/// Only inlined into functions with AVX2.
#[inline(always)]
unsafe fn reduce8(v: &[__m256]) -> __m256 {
    // SAFETY: AVX2 (caller's contract).
    unsafe {
        let key = |k: usize| v.get(k).copied().unwrap_or(_mm256_setzero_ps());
        // [a_lo + a_hi | b_lo + b_hi]: each key's four half sums.
        let pair = |a: usize, b: usize| {
            let (a, b) = (key(a), key(b));
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        };
        let h0 = _mm256_hadd_ps(pair(0, 1), pair(2, 3));
        let h1 = _mm256_hadd_ps(pair(4, 5), pair(6, 7));
        // Lanes hold keys 0, 2, 4, 6, 1, 3, 5, 7.
        let r = _mm256_hadd_ps(h0, h1);
        _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The online softmax over `lanes` (1 to 8) scores `s` after a running maximum `m`, as
/// ggml's loop takes them key by key: key `j` is a new maximum if it exceeds every score
/// before it (and `m`); then its rescale `ms = exp(m_old - s)` and weight `vs = 1`, else
/// `ms = 1` and `vs = exp(s - m)`. Writes eight `ms` and `vs` (only `lanes` meaningful) and
/// returns the new-maximum bits and the running maximum after the last lane.
///
/// # Safety
/// Eight writable floats at each output; only inlined into functions with AVX-512 F, AVX2
/// and FMA.
#[inline(always)]
unsafe fn softmax_step(
    s: __m256,
    m: f32,
    lanes: usize,
    lanes_expf: bool,
    (ms, vs): (*mut f32, *mut f32),
) -> (u32, f32) {
    // SAFETY: AVX2 and FMA, eight floats at `ms` and `vs` (caller's contract).
    unsafe {
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        // A NaN score never becomes the maximum (`s > m` is false): leave it out of the max.
        let x = _mm256_blendv_ps(s, neg_inf, _mm256_cmp_ps::<_CMP_UNORD_Q>(s, s));
        // Shift lanes up by `k`, filling with -inf.
        let up = |x: __m256, idx: __m256i, keep: i32| {
            let y = _mm256_permutevar8x32_ps(x, idx);
            _mm256_blendv_ps(neg_inf, y, _mm256_castsi256_ps(lanes_from(keep)))
        };
        let i1 = _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6);
        let i2 = _mm256_setr_epi32(0, 0, 0, 1, 2, 3, 4, 5);
        let i4 = _mm256_setr_epi32(0, 0, 0, 0, 0, 1, 2, 3);
        let mut incl = _mm256_max_ps(x, up(x, i1, 1));
        incl = _mm256_max_ps(incl, up(incl, i2, 2));
        incl = _mm256_max_ps(incl, up(incl, i4, 4));
        let carry = _mm256_set1_ps(m);
        incl = _mm256_max_ps(incl, carry);
        // The maximum before each key: `m` for the first.
        let before = _mm256_blendv_ps(
            carry,
            _mm256_permutevar8x32_ps(incl, i1),
            _mm256_castsi256_ps(lanes_from(1)),
        );
        let new = _mm256_cmp_ps::<_CMP_GT_OQ>(s, before);
        let e = _mm256_blendv_ps(_mm256_sub_ps(s, before), _mm256_sub_ps(before, s), new);
        let e = if lanes_expf {
            expf8_avx512(e)
        } else {
            let mut a = [0.0f32; 8];
            _mm256_storeu_ps(a.as_mut_ptr(), e);
            a.iter_mut().for_each(|x| *x = x.exp());
            _mm256_loadu_ps(a.as_ptr())
        };
        let one = _mm256_set1_ps(1.0);
        _mm256_storeu_ps(ms, _mm256_blendv_ps(one, e, new));
        _mm256_storeu_ps(vs, _mm256_blendv_ps(e, one, new));
        let mut all = [0.0f32; 8];
        _mm256_storeu_ps(all.as_mut_ptr(), incl);
        let bits = _mm256_movemask_ps(new) as u32 & ((1u32 << lanes) - 1);
        (bits, all[lanes - 1])
    }
}

/// All-ones in lanes `k..8`, zero below.
#[inline(always)]
fn lanes_from(k: i32) -> __m256i {
    // SAFETY: only inlined into functions with AVX2.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(k - 1),
        )
    }
}

/// Round sixteen lanes to f16 (nearest even) and back: ggml's f16 accumulator.
#[inline(always)]
fn round(x: __m512) -> __m512 {
    // SAFETY: only inlined into functions with AVX-512 F.
    unsafe {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(x))
    }
}

/// Sixteen f16 at `p` as f32 (exact).
///
/// # Safety
/// Sixteen readable f16 at `p`; only inlined into functions with AVX-512 F.
#[inline(always)]
unsafe fn load_f16(p: *const f16) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
}
