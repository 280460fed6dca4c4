//! The f32 prefill block (`query_block_f32_chunked`) in 512-bit vectors, for the same bits.
//!
//! Why: a long prompt read beside running streams comes a few rows per step (the scheduler's
//! pacer), and deep in the prompt each of those rows reads thousands of keys: at a depth of
//! 4000, four SmolLM2 rows took about as long as the whole decode step they ride on, which
//! is what the streams' inter-token latency showed. Per chunk of 16 keys this kernel converts
//! the key and value rows once for all heads of a KV head, scores two keys per vector (the
//! 256-bit kernel's eight-lane accumulators, one key in each half, the query row broadcast
//! to both), reduces sixteen scores with shuffles, takes their exponentials in one vector
//! and adds the weighted values sixteen lanes at a time.
//!
//! Every (query, key) score accumulates and reduces in the 256-bit kernel's order, the
//! softmax steps are its scalar steps, the exponential is ggml's lane for lane, and each
//! accumulator lane sees the same fused multiply-adds in the same key order, so each row is
//! the same bits as there: a prompt's result does not depend on the CPU tier that read it.

use std::arch::x86_64::*;

use half::f16;

use super::{first_key, AttnParams, KEY_CHUNK};
use crate::ops::activation::ggml_v_expf16;

/// Whether this CPU can run [`rows_f32`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("f16c")
}

/// Key pairs per chunk: a score vector holds two keys.
const PAIRS: usize = KEY_CHUNK / 2;

/// Queries `t0..` of `q` (at positions `pos0..`), heads `heads`, into the block `out` (whole
/// tokens, every head's columns; other heads' columns are left zero), exactly as
/// `query_block_f32_chunked` computes them.
///
/// # Safety
/// [`available`] must hold; `p.head_dim` is a multiple of 64. The caches hold every row up to
/// `pos0 + out.len() / (n_head * head_dim) - 1` (checked).
#[target_feature(enable = "avx512f,fma,avx2,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows_f32(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos0: usize,
    t0: usize,
    heads: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let row = p.n_head * hd;
    let kv_dim = p.n_head_kv * hd;
    let group = p.n_head / p.n_head_kv;
    let nt = out.len() / row;
    assert!(hd.is_multiple_of(64) && nt > 0 && (t0 + nt) * row <= q.len());
    let last = pos0 + nt - 1;
    assert!((last + 1) * kv_dim <= k_cache.len().min(v_cache.len()));
    out.fill(0.0);
    // The chunk's keys as score operands: step `o` (eight dimensions) of pair `p` at
    // `(o * PAIRS + p) * 16`, the pair's first key in the low half. A missing key is zero.
    let mut kpair = vec![0.0f32; KEY_CHUNK * hd];
    // The chunk's value rows in f32, key after key.
    let mut vbuf = vec![0.0f32; KEY_CHUNK * hd];
    // Each (head, row) of a KV head is a lane: `(h - first head) * nt + t`. Its running
    // maximum, its sum, and per chunk its rescale factor and its sixteen weights (zero for
    // keys it does not see): the sums of sixteen lanes advance together in one vector,
    // each lane still adding its weights one key at a time in key order (one lane's chain
    // of scalar adds had been a fifth of the time).
    let lanes = (group * nt).next_multiple_of(16);
    let mut maxes = vec![f32::NEG_INFINITY; lanes];
    let mut sums = vec![0.0f32; lanes];
    let mut factors = vec![1.0f32; lanes];
    let mut weights = vec![0.0f32; KEY_CHUNK * lanes];
    let kv_heads = heads.start / group..heads.end.div_ceil(group);
    for kvh in kv_heads {
        let hs = heads.start.max(kvh * group)..heads.end.min((kvh + 1) * group);
        let live = (hs.len() * nt).next_multiple_of(16);
        maxes.fill(f32::NEG_INFINITY);
        sums.fill(0.0);
        // Chunks start at multiples of KEY_CHUNK, as in the 256-bit kernel: a query meets the
        // same chunks (and rescales at the same keys) whatever block it is in.
        let mut c0 = first_key(p, pos0) / KEY_CHUNK * KEY_CHUNK;
        while c0 <= last {
            let c1 = (c0 + KEY_CHUNK).min(last + 1);
            let nk = c1 - c0;
            let tlo = c0.saturating_sub(pos0).min(nt);
            let thi = (tlo..nt)
                .find(|&t| first_key(p, pos0 + t) >= c1)
                .unwrap_or(nt);
            // SAFETY: rows `c0..c1` lie in both caches (asserted above) and the buffers hold
            // KEY_CHUNK rows of `hd`.
            unsafe {
                let base = c0 * kv_dim + kvh * hd;
                load_keys(k_cache.as_ptr().add(base), kv_dim, nk, hd, &mut kpair);
                load_values(v_cache.as_ptr().add(base), kv_dim, nk, hd, &mut vbuf);
                prefetch_chunk(k_cache, v_cache, base + KEY_CHUNK * kv_dim, kv_dim, hd);
            }
            factors[..live].fill(1.0);
            weights[..KEY_CHUNK * live].fill(0.0);
            for h in hs.clone() {
                let qrow = |t: usize| q[(t0 + t) * row + h * hd..][..hd].as_ptr();
                let mut t = tlo;
                while t < thi {
                    let two = t + 1 < thi;
                    // SAFETY: query rows hold `hd` (asserted above); `kpair` KEY_CHUNK rows.
                    let s = unsafe {
                        if two {
                            scores::<2>([qrow(t), qrow(t + 1)], &kpair, hd)
                        } else {
                            let [s] = scores::<1>([qrow(t)], &kpair, hd);
                            [s, s]
                        }
                    };
                    let n = 1 + usize::from(two);
                    let mut w = [[0.0f32; KEY_CHUNK]; 2];
                    let (mut seen, mut factor) = ([0u16; 2], [1.0f32; 2]);
                    for u in 0..n {
                        let pos = pos0 + t + u;
                        let keys = c0.max(first_key(p, pos)) - c0..c1.min(pos + 1) - c0;
                        seen[u] = (((1u32 << keys.end) - 1) & !((1u32 << keys.start) - 1)) as u16;
                        let lane = (h - hs.start) * nt + t + u;
                        // SAFETY: `keys` is non-empty and within the chunk.
                        factor[u] =
                            unsafe { softmax_row(p, s[u], seen[u], &mut maxes[lane], &mut w[u]) };
                        factors[lane] = factor[u];
                        weights[lane * KEY_CHUNK..][..KEY_CHUNK].copy_from_slice(&w[u]);
                    }
                    let (head, tail) = out.split_at_mut((t + 1) * row);
                    let acc0 = &mut head[t * row + h * hd..][..hd];
                    // SAFETY: the accumulators and `vbuf`'s rows hold `hd`.
                    unsafe {
                        if two {
                            let acc1 = &mut tail[h * hd..][..hd];
                            add_values::<2>(&vbuf, [&w[0], &w[1]], seen, factor, [acc0, acc1]);
                        } else {
                            add_values::<1>(&vbuf, [&w[0]], [seen[0]], [factor[0]], [acc0]);
                        }
                    }
                    t += 1 + usize::from(two);
                }
            }
            // SAFETY: `sums` and `factors` hold `live`, `weights` `live` rows of KEY_CHUNK.
            unsafe { add_weights(&mut sums[..live], &factors[..live], &weights) };
            c0 = c1;
        }
        for h in hs.clone() {
            for t in 0..nt {
                let inv = 1.0 / sums[(h - hs.start) * nt + t];
                for a in &mut out[t * row + h * hd..][..hd] {
                    *a *= inv;
                }
            }
        }
    }
}

/// `nk` key rows (f16, `stride` elements apart from `src`) into the pair layout of `kpair`.
#[target_feature(enable = "avx512f,f16c")]
#[inline]
unsafe fn load_keys(src: *const f16, stride: usize, nk: usize, hd: usize, kpair: &mut [f32]) {
    // SAFETY: `src` holds `nk` rows of `hd` at `stride` (caller); `kpair` KEY_CHUNK * hd.
    unsafe {
        let key = |j: usize, i: usize| -> __m512 {
            if j < nk {
                _mm512_cvtph_ps(_mm256_loadu_si256(src.add(j * stride + i).cast()))
            } else {
                _mm512_setzero_ps()
            }
        };
        for pr in 0..PAIRS {
            for i in (0..hd).step_by(16) {
                let (a, b) = (key(2 * pr, i), key(2 * pr + 1, i));
                // Dimensions i..i+8 of both keys, then i+8..i+16.
                let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
                let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
                let o = i / 8;
                _mm512_storeu_ps(kpair.as_mut_ptr().add((o * PAIRS + pr) * 16), lo);
                _mm512_storeu_ps(kpair.as_mut_ptr().add(((o + 1) * PAIRS + pr) * 16), hi);
            }
        }
    }
}

/// `nk` value rows (f16, `stride` elements apart from `src`) into `vbuf` in f32.
#[target_feature(enable = "avx512f,f16c")]
#[inline]
unsafe fn load_values(src: *const f16, stride: usize, nk: usize, hd: usize, vbuf: &mut [f32]) {
    // SAFETY: as in `load_keys`.
    unsafe {
        for j in 0..nk {
            for i in (0..hd).step_by(16) {
                let v = _mm512_cvtph_ps(_mm256_loadu_si256(src.add(j * stride + i).cast()));
                _mm512_storeu_ps(vbuf.as_mut_ptr().add(j * hd + i), v);
            }
        }
    }
}

/// Prefetch the next chunk's rows from `off` on: at depth the cache is a strided stream.
/// Hints only: past the end of the cache they do nothing.
#[inline(always)]
fn prefetch_chunk(k_cache: &[f16], v_cache: &[f16], off: usize, stride: usize, hd: usize) {
    for j in 0..KEY_CHUNK {
        for i in (0..hd).step_by(32) {
            let o = off + j * stride + i;
            // SAFETY: SSE is baseline on x86-64, and a prefetch never faults.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(k_cache.as_ptr().wrapping_add(o).cast());
                _mm_prefetch::<_MM_HINT_T0>(v_cache.as_ptr().wrapping_add(o).cast());
            }
        }
    }
}

/// The chunk's sixteen raw scores for each of `R` query rows, in key order. A score is
/// `((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))` over eight lane accumulators that
/// each take every eighth dimension with fused multiply-adds: the 256-bit kernel's dot.
///
/// # Safety
/// The CPU must have AVX-512F; each query row holds `hd` (a multiple of 8) floats and
/// `kpair` KEY_CHUNK * hd.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn scores<const R: usize>(qs: [*const f32; R], kpair: &[f32], hd: usize) -> [__m512; R] {
    // SAFETY: every offset below is within the rows (caller's contract).
    unsafe {
        let mut a = [[_mm512_setzero_ps(); PAIRS]; R];
        for o in 0..hd / 8 {
            let kp = kpair.as_ptr().add(o * PAIRS * 16);
            let k: [__m512; PAIRS] = std::array::from_fn(|pr| _mm512_loadu_ps(kp.add(pr * 16)));
            for (a, qp) in a.iter_mut().zip(qs) {
                let x = _mm256_castps_pd(_mm256_loadu_ps(qp.add(8 * o)));
                let x = _mm512_castpd_ps(_mm512_broadcast_f64x4(x));
                for (a, k) in a.iter_mut().zip(k) {
                    *a = _mm512_fmadd_ps(x, k, *a);
                }
            }
        }
        a.map(|a| reduce16(&a))
    }
}

/// Eight pair accumulators (pair `p`: key `2p`'s eight lanes, then key `2p + 1`'s) to the
/// sixteen keys' sums in key order, pairwise as `_mm256_hadd_ps` twice and then the two
/// 128-bit halves.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce16(a: &[__m512; PAIRS]) -> __m512 {
    // Per 128-bit block: [x0 + x1, x2 + x3, y0 + y1, y2 + y3].
    let hadd = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(x, y),
            _mm512_shuffle_ps::<0b11_01_11_01>(x, y),
        )
    };
    // Keys 4q..4q+4.
    let x: [__m512; 4] = std::array::from_fn(|i| hadd(a[2 * i], a[2 * i + 1]));
    // Keys 0..8 and 8..16, blocks: even keys' low sums, even keys' high sums, odd keys'
    // low, odd keys' high (four keys each).
    let z0 = hadd(x[0], x[1]);
    let z1 = hadd(x[2], x[3]);
    let idx = |first: i32| {
        let f = |k: i32| {
            let blk = if k % 8 % 2 == 0 { 0 } else { 8 };
            first + blk + k % 8 / 2 + if k >= 8 { 16 } else { 0 }
        };
        _mm512_setr_epi32(
            f(0),
            f(1),
            f(2),
            f(3),
            f(4),
            f(5),
            f(6),
            f(7),
            f(8),
            f(9),
            f(10),
            f(11),
            f(12),
            f(13),
            f(14),
            f(15),
        )
    };
    let lo = _mm512_permutex2var_ps(z0, idx(0), z1);
    let hi = _mm512_permutex2var_ps(z0, idx(4), z1);
    _mm512_add_ps(lo, hi)
}

/// Every lane's sum: times its rescale factor, then plus its weights key by key (`weights`:
/// lane after lane, KEY_CHUNK each), as the 256-bit kernel adds a row's weights (a factor of
/// 1 and a weight of 0 leave a sum as it is). Sixteen lanes' weights are transposed so that
/// one vector add takes one key of each.
///
/// # Safety
/// The CPU must have AVX-512F; `factors` holds `sums.len()`, a multiple of 16, and `weights`
/// KEY_CHUNK times that.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn add_weights(sums: &mut [f32], factors: &[f32], weights: &[f32]) {
    let live = sums.len();
    // SAFETY: every access is within the lengths above (caller's contract).
    unsafe {
        for b in (0..live).step_by(16) {
            let wp = weights.as_ptr().add(b * KEY_CHUNK);
            let keys = transpose16(std::array::from_fn(|l| _mm512_loadu_ps(wp.add(16 * l))));
            let sp = sums.as_mut_ptr().add(b);
            let mut s = _mm512_mul_ps(
                _mm512_loadu_ps(sp),
                _mm512_loadu_ps(factors.as_ptr().add(b)),
            );
            for k in keys {
                s = _mm512_add_ps(s, k);
            }
            _mm512_storeu_ps(sp, s);
        }
    }
}

/// Sixteen rows of sixteen to sixteen columns.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Per 128-bit block k, row pairs interleaved: [a(4k), b(4k), a(4k+1), b(4k+1)] and the
    // same for 4k+2, 4k+3.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // `u[4i + m]`, block k: column 4k + m of rows 4i..4i + 4.
    let u: [__m512; 16] = std::array::from_fn(|x| {
        let (i, m) = (x / 4, x % 4);
        let (a, b) = (t[4 * i + m / 2], t[4 * i + 2 + m / 2]);
        if m % 2 == 0 {
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b)
        } else {
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b)
        }
    });
    // Blocks gathered: column 4k + m is block k of u[m], u[4 + m], u[8 + m], u[12 + m].
    let even = |a: __m512, b: __m512| _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
    let odd = |a: __m512, b: __m512| _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b);
    let mut out = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        let (a0, a1) = (even(u[m], u[4 + m]), odd(u[m], u[4 + m]));
        let (b0, b1) = (even(u[8 + m], u[12 + m]), odd(u[8 + m], u[12 + m]));
        out[m] = even(a0, b0);
        out[8 + m] = odd(a0, b0);
        out[4 + m] = even(a1, b1);
        out[12 + m] = odd(a1, b1);
    }
    out
}

/// One query row's online-softmax step over the chunk keys in `seen` (a bit per key) given
/// their raw scores `s`: the 256-bit kernel's steps (scale, soft cap, the chunk's maximum,
/// one rescale, ggml's exponential). Its weights go to `wgt` (zero for keys not seen);
/// returns its rescale factor
/// (1 for none: multiplying by 1 changes nothing).
///
/// # Safety
/// The CPU must have AVX-512F; `seen` is not empty.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn softmax_row(
    p: &AttnParams,
    s: __m512,
    seen: u16,
    max: &mut f32,
    wgt: &mut [f32; KEY_CHUNK],
) -> f32 {
    debug_assert!(seen != 0);
    // SAFETY: `sc` and `wgt` hold sixteen; the scatter's offsets are the caller's contract.
    unsafe {
        let mut s = _mm512_mul_ps(s, _mm512_set1_ps(p.scale));
        if let Some(cap) = p.softcap {
            let mut sc = [0.0f32; KEY_CHUNK];
            _mm512_storeu_ps(sc.as_mut_ptr(), s);
            for s in &mut sc {
                *s = cap * (*s / cap).tanh();
            }
            s = _mm512_loadu_ps(sc.as_ptr());
        }
        // The chunk's maximum over its keys, in any order: the same value as a fold.
        let cmax = max16(_mm512_mask_blend_ps(
            seen,
            _mm512_set1_ps(f32::NEG_INFINITY),
            s,
        ));
        let mut factor = 1.0;
        if cmax > *max {
            factor = (*max - cmax).exp();
            *max = cmax;
        }
        // Keys not seen take the maximum (weight 1, off the slow path), then weight 0.
        let m = _mm512_set1_ps(*max);
        let w = ggml_v_expf16(_mm512_sub_ps(_mm512_mask_blend_ps(seen, m, s), m));
        let w = _mm512_maskz_mov_ps(seen, w);
        _mm512_storeu_ps(wgt.as_mut_ptr(), w);
        factor
    }
}

/// `R` rows' weighted values into their accumulators: each accumulator times its rescale
/// factor, then a fused multiply-add per key it sees, in key order. The rows go side by side
/// so that eight accumulator chains are in flight (one row's four waited on each other).
///
/// # Safety
/// The CPU must have AVX-512F and FMA; each accumulator holds `hd`, a multiple of 64, and
/// `vbuf` KEY_CHUNK rows of `hd`.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn add_values<const R: usize>(
    vbuf: &[f32],
    wgt: [&[f32; KEY_CHUNK]; R],
    seen: [u16; R],
    factor: [f32; R],
    acc: [&mut [f32]; R],
) {
    let hd = acc[0].len();
    debug_assert!(hd.is_multiple_of(64) && vbuf.len() >= KEY_CHUNK * hd);
    let all = seen.iter().fold(0u16, |a, &s| a | s);
    let keys = all.trailing_zeros() as usize..16 - all.leading_zeros() as usize;
    // SAFETY: each access is at `i0 + 64 <= hd` within an accumulator or a `vbuf` row.
    unsafe {
        for i0 in (0..hd).step_by(64) {
            let mut a: [[__m512; 4]; R] = std::array::from_fn(|r| {
                let ap = acc[r].as_ptr().add(i0);
                let c = _mm512_set1_ps(factor[r]);
                std::array::from_fn(|u| _mm512_mul_ps(_mm512_loadu_ps(ap.add(16 * u)), c))
            });
            for j in keys.clone() {
                let vp = vbuf.as_ptr().add(j * hd + i0);
                let v: [__m512; 4] = std::array::from_fn(|u| _mm512_loadu_ps(vp.add(16 * u)));
                for r in 0..R {
                    // A key the row does not see leaves its accumulator as it is.
                    let k = 0u16.wrapping_sub(seen[r] >> j & 1);
                    let w = _mm512_set1_ps(wgt[r][j]);
                    for (a, v) in a[r].iter_mut().zip(v) {
                        *a = _mm512_mask3_fmadd_ps(w, v, *a, k);
                    }
                }
            }
            for (r, a) in a.iter().enumerate() {
                let ap = acc[r].as_mut_ptr().add(i0);
                for (u, a) in a.iter().enumerate() {
                    _mm512_storeu_ps(ap.add(16 * u), *a);
                }
            }
        }
    }
}

/// The largest of sixteen lanes (no NaNs: the scores of finite rows).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn max16(x: __m512) -> f32 {
    let x = _mm512_max_ps(x, _mm512_shuffle_f32x4::<0b01_00_11_10>(x, x));
    let x = _mm512_max_ps(x, _mm512_shuffle_f32x4::<0b10_11_00_01>(x, x));
    let x = _mm512_max_ps(x, _mm512_permute_ps::<0b01_00_11_10>(x));
    let x = _mm512_max_ps(x, _mm512_permute_ps::<0b10_11_00_01>(x));
    _mm512_cvtss_f32(x)
}
