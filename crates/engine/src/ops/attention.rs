//! Causal grouped-query attention of new tokens over the KV cache.
//!
//! Softmax is computed online (running max and sum, rescaling the accumulator when the max
//! grows), so no score buffer of `n_ctx` floats is needed per (token, head) and the whole
//! operation allocates nothing. Query heads `h` read KV head `h / (n_head / n_head_kv)`.
//!
//! Precision follows llama.cpp's default CPU path (flash attention over an F16 KV cache), so
//! greedy decoding picks the same tokens: keys and values are stored as f16 (half the bytes
//! of f32 to stream per key at depth, and half the cache's memory); a batch of fewer than [`F16_ACC_MAX_TOKENS`] queries (decode) rounds the
//! query to f16 and keeps the weighted sum of values in f16, as ggml's one-row kernel does,
//! while larger batches (prefill) compute in f32 as ggml's tiled kernel does.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::activation::ggml_v_expf8;
#[cfg(target_arch = "x86_64")]
use super::expf::{self, expf8};
use super::vec::{axpy, dot};

#[cfg(target_arch = "x86_64")]
mod heads_avx512;
#[cfg(target_arch = "x86_64")]
mod rows_avx512;

/// Batches smaller than this take ggml's one-query path (f16 query and accumulator).
pub const F16_ACC_MAX_TOKENS: usize = 64;

/// Round to the nearest f16 value (ties to even) and back, in f32 arithmetic. Bit trick for
/// the f16 normal range; the rare subnormal or overflowing value takes the exact slow path.
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    let a = x.abs();
    if (6.103_515_6e-5..65504.0).contains(&a) {
        let b = x.to_bits();
        let r = b.wrapping_add(0x0FFF + ((b >> 13) & 1)) & !0x1FFF;
        f32::from_bits(r)
    } else {
        half::f16::from_f32(x).to_f32()
    }
}

/// Round every element to f16 precision in place.
pub fn round_f16_slice(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = round_f16(*v));
}

/// Shapes and options of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Multiplier on q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Sliding window: a token at `p` sees positions `> p - window` only.
    pub window: Option<usize>,
    /// Tanh soft-capping of scores (Gemma 2): `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
}

/// `q`: (n_tok, n_head * head_dim) for tokens at positions `pos0..pos0 + n_tok`.
/// `k_cache`, `v_cache`: (n_ctx, n_head_kv * head_dim) in f16, filled up to `pos0 + n_tok`.
/// `out`: (n_tok, n_head * head_dim).
pub fn attention(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos0: usize,
    out: &mut [f32],
) {
    let n_tok = q.len() / (p.n_head * p.head_dim);
    attention_with(
        p,
        q,
        k_cache,
        v_cache,
        pos0,
        n_tok < F16_ACC_MAX_TOKENS,
        out,
    );
}

/// [`attention`] with the precision chosen by the caller: `f16_acc` takes ggml's one-query
/// path (f16 query and accumulator, for head dims up to 256) whatever the batch size, so a
/// row's result can be made not to depend on which rows share its pass.
pub fn attention_with(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos0: usize,
    f16_acc: bool,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let n_tok = q.len() / (p.n_head * hd);
    let f16_path = f16_acc && hd <= 256;
    let fma = has_fma();
    let out = &mut out[..n_tok * p.n_head * hd];
    if !f16_path {
        #[cfg(target_arch = "x86_64")]
        if fma
            && has_f16c()
            && hd.is_multiple_of(64)
            && n_tok <= QUERY_BLOCK
            && rayon::current_num_threads() > 1
        {
            // One block (a small prompt chunk beside running streams, or a lone query whose
            // precision is a cold read's): split its heads between the threads instead, or one
            // thread would read a long context alone while the others wait.
            let parts = rayon::current_num_threads().min(p.n_head);
            let bufs: Vec<Vec<f32>> = (0..parts)
                .into_par_iter()
                .map(|i| {
                    let heads = i * p.n_head / parts..(i + 1) * p.n_head / parts;
                    let mut buf = vec![0.0f32; out.len()];
                    // SAFETY: FMA, AVX2 and F16C checked; `hd` is a multiple of 64.
                    unsafe {
                        query_block_f32_x86(p, q, k_cache, v_cache, pos0, 0, heads, &mut buf)
                    };
                    buf
                })
                .collect();
            let row = p.n_head * hd;
            for (i, buf) in bufs.iter().enumerate() {
                let cols = i * p.n_head / parts * hd..(i + 1) * p.n_head / parts * hd;
                for t in 0..n_tok {
                    let r = t * row;
                    out[r + cols.start..r + cols.end]
                        .copy_from_slice(&buf[r + cols.start..r + cols.end]);
                }
            }
            return;
        }
        // Prefill: blocks of consecutive queries share each key and value row they read, so
        // a row comes from L2 once per block instead of once per query.
        out.par_chunks_mut(QUERY_BLOCK * p.n_head * hd)
            .enumerate()
            .for_each(|(b, o)| {
                let t0 = b * QUERY_BLOCK;
                #[cfg(target_arch = "x86_64")]
                if fma && has_f16c() && hd.is_multiple_of(64) {
                    // SAFETY: FMA, AVX2 and F16C checked, and `hd` is a multiple of 64.
                    unsafe {
                        query_block_f32_x86(p, q, k_cache, v_cache, pos0 + t0, t0, 0..p.n_head, o)
                    };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if fma && hd.is_multiple_of(8) {
                    // SAFETY: `has_fma` checked that this CPU has FMA and AVX2, and `hd` is a
                    // multiple of 8.
                    unsafe { query_block_f32_avx2(p, q, k_cache, v_cache, pos0 + t0, t0, o) };
                    return;
                }
                query_block_f32(p, q, k_cache, v_cache, pos0 + t0, t0, o, step_f32);
            });
        return;
    }
    let per_task = decode_heads_per_task(p, n_tok, rayon::current_num_threads());
    out.par_chunks_mut(per_task * hd)
        .enumerate()
        .for_each(|(idx, acc)| {
            let (t, h0) = decode_task(p, per_task, idx);
            let qs = &q[idx * per_task * hd..(idx + 1) * per_task * hd];
            decode_heads_f16(p, qs, k_cache, v_cache, pos0 + t, h0, acc);
        });
}

/// How many query heads of a KV group each decode task takes (a divisor of the group). Heads
/// decoded together share their KV head's row conversions and cost about 0.55 of a head
/// alone each (`attention/decode` bench, SmolLM2 and Gemma 3 shapes), but a pass over few
/// rows must still spread over the threads: pick the split with the shortest estimated
/// pass, `ceil(tasks / threads) * per-task cost`, larger tasks on a tie.
pub fn decode_heads_per_task(p: &AttnParams, rows: usize, threads: usize) -> usize {
    let group = p.n_head / p.n_head_kv.max(1);
    #[cfg(target_arch = "x86_64")]
    if heads_avx512::available() && p.head_dim.is_multiple_of(32) && p.head_dim <= 256 {
        let threads = threads.max(1);
        let pass = |per: usize| {
            let tasks = rows * p.n_head / per;
            let head_cost = if per == 1 { 100 } else { 55 };
            tasks.div_ceil(threads) * per * head_cost
        };
        return (1..=group.min(heads_avx512::MAX_HEADS))
            .filter(|&per| group.is_multiple_of(per))
            .rev()
            .min_by_key(|&per| pass(per))
            .unwrap_or(1);
    }
    let _ = (group, rows, threads);
    1
}

/// Decode task `idx` of a pass in tasks of `per_task` heads (rows' heads in order, as in the
/// query and output layout): its row and first head.
pub fn decode_task(p: &AttnParams, per_task: usize, idx: usize) -> (usize, usize) {
    let tasks_per_row = p.n_head / per_task;
    (idx / tasks_per_row, idx % tasks_per_row * per_task)
}

/// Query heads `h0..h0 + qs.len() / head_dim` of the row at position `pos`, which must all
/// read one KV head, against its sequence's cache on ggml's one-query f16 path; each head's
/// output (in `out`, head after head) is the bits [`decode_head_f16`] gives it alone.
pub fn decode_heads_f16(
    p: &AttnParams,
    qs: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos: usize,
    h0: usize,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let g = qs.len() / hd;
    let group = p.n_head / p.n_head_kv;
    assert!(g >= 1 && h0 / group == (h0 + g - 1) / group && out.len() == qs.len());
    #[cfg(target_arch = "x86_64")]
    if (2..=heads_avx512::MAX_HEADS).contains(&g)
        && hd.is_multiple_of(32)
        && hd <= 256
        && heads_avx512::available()
    {
        let kv_dim = p.n_head_kv * hd;
        let kvh = h0 / group;
        let keys = (first_key(p, pos)..=pos).map(|j| j * kv_dim + kvh * hd);
        let (k, v) = (k_cache, v_cache);
        // SAFETY: `available` checked the features; `hd` is a multiple of 32, at most 256,
        // and `out` holds `g` heads as `qs` does. The kernel checks every key offset.
        unsafe {
            match g {
                2 => heads_avx512::heads_f16::<2>(p, qs, k, v, keys, kv_dim, out),
                3 => heads_avx512::heads_f16::<3>(p, qs, k, v, keys, kv_dim, out),
                _ => heads_avx512::heads_f16::<4>(p, qs, k, v, keys, kv_dim, out),
            }
        }
        return;
    }
    for (i, (qh, o)) in qs
        .chunks_exact(hd)
        .zip(out.chunks_exact_mut(hd))
        .enumerate()
    {
        decode_head_f16(p, qh, k_cache, v_cache, pos, h0 + i, o);
    }
}

/// Query head `h` of the row at position `pos` (`qh`, `head_dim` elements) against its
/// sequence's cache on ggml's one-query f16 path (as [`attention_with`] with `f16_acc`), into
/// `out`. For callers that spread many sequences' decode rows over the pool in one pass.
pub fn decode_head_f16(
    p: &AttnParams,
    qh: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos: usize,
    h: usize,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let kv_dim = p.n_head_kv * hd;
    let kvh = h / (p.n_head / p.n_head_kv);
    let keys = (first_key(p, pos)..=pos).map(|j| j * kv_dim + kvh * hd);
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        if hd.is_multiple_of(32) && hd <= 256 && has_f16c() {
            // SAFETY: AVX2, FMA and F16C checked; `hd` is a multiple of 32 (at most 256) and
            // every key offset leaves `hd` elements in both caches (checked by the kernel).
            unsafe { one_query_f16_avx2(p, qh, k_cache, v_cache, keys, kv_dim, out) };
        } else {
            // SAFETY: `has_fma` checked that this CPU has FMA and AVX2.
            unsafe { one_query_f16_fma(p, qh, k_cache, v_cache, keys, out) };
        }
        return;
    }
    one_query_f16(p, qh, k_cache, v_cache, keys, out);
}

/// Queries per prefill task: each key and value row is read once per block (from L2 into L1)
/// and used by up to this many queries; the block's accumulators (a few KiB) stay in L1.
const QUERY_BLOCK: usize = 16;

/// The first key position a query at `pos` sees (its sliding window, if any).
fn first_key(p: &AttnParams, pos: usize) -> usize {
    match p.window {
        Some(w) => (pos + 1).saturating_sub(w),
        None => 0,
    }
}

/// Whether the FMA-compiled copy of the one-query kernel can run here.
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether F16C (hardware f32 <-> f16 conversion) is present.
#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::is_x86_feature_detected!("f16c")
}

/// [`one_query_f16`] with AVX2 intrinsics, bit for bit: the score is [`dot_f16_ggml`]'s four
/// fused accumulators and reduction (no tail: `hd` is a multiple of 32), and every rounding
/// to f16 is a hardware round trip (`vcvtps2ph` to nearest even, then `vcvtph2ps`), which is
/// exactly what [`round_f16`] computes for every non-NaN value.
///
/// The same per-key operations in the same order, grouped by chunks of [`DECODE_CHUNK`] keys:
/// first the chunk's scores (independent dot products, which overlap), then its running
/// maximum and exponentials, then the running sum, and last the values, with a block of the
/// accumulator held in registers across the chunk instead of loaded and stored per key. Done
/// key by key, each step waited on the last one's exponential and store.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `q.len() == acc.len()` is a multiple of 32, at most
/// 256, and every key offset leaves `q.len()` elements in both caches. `key_stride` (elements
/// between consecutive keys) only steers prefetching.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2,f16c")]
unsafe fn one_query_f16_avx2(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    mut keys: impl Iterator<Item = usize>,
    key_stride: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = q.len();
    debug_assert!(hd.is_multiple_of(32) && hd <= 256 && acc.len() == hd);
    assert!(k_cache.len() == v_cache.len());
    #[inline(always)]
    fn round(x: __m256) -> __m256 {
        // SAFETY: only inlined into `one_query_f16_avx2`, which has F16C.
        unsafe { _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x)) }
    }
    /// Eight f16 at `p` as f32 (exact).
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        // SAFETY: only inlined into `one_query_f16_avx2` (F16C), at `i + 8 <= hd` in a row.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    /// The values of `offs` weighted into accumulator columns `c0..c0 + 8 * R`, held in `R`
    /// registers across the chunk.
    #[inline(always)]
    unsafe fn add_values<const R: usize>(
        v_cache: &[f16],
        offs: &[usize],
        (ms, vs, new_max): (&[f32], &[f32], &[bool]),
        acc: *mut f32,
        c0: usize,
    ) {
        // SAFETY: `c0 + 8 * R <= hd` and every offset leaves `hd` elements (caller).
        unsafe {
            let ap = acc.add(c0);
            let mut a: [__m256; R] = std::array::from_fn(|u| _mm256_loadu_ps(ap.add(8 * u)));
            for (j, &off) in offs.iter().enumerate() {
                if new_max[j] {
                    let c = _mm256_set1_ps(ms[j]);
                    for a in a.iter_mut() {
                        *a = round(_mm256_mul_ps(*a, c));
                    }
                }
                let w = _mm256_set1_ps(vs[j]);
                let vp = v_cache.as_ptr().add(off + c0);
                for (u, a) in a.iter_mut().enumerate() {
                    *a = round(_mm256_fmadd_ps(load_f16(vp.add(8 * u)), w, *a));
                }
            }
            for (u, a) in a.iter().enumerate() {
                _mm256_storeu_ps(ap.add(8 * u), *a);
            }
        }
    }
    let mut q16 = [0.0f32; 256];
    let scale = p.softcap.map_or(p.scale, |cap| p.scale / cap);
    let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    let mut offs = [0usize; DECODE_CHUNK];
    let (mut ms, mut vs) = ([1.0f32; DECODE_CHUNK], [1.0f32; DECODE_CHUNK]);
    let mut new_max = [false; DECODE_CHUNK];
    let lanes_expf = expf::libm_matches();
    // SAFETY: `q16`, `q` and `acc` hold `hd` elements, and so do the cache rows at every key
    // offset (caller's contract, checked below); every access is at `i + 8 <= hd`.
    unsafe {
        let (qp, ap) = (q16.as_mut_ptr(), acc.as_mut_ptr());
        for i in (0..hd).step_by(8) {
            _mm256_storeu_ps(qp.add(i), round(_mm256_loadu_ps(q.as_ptr().add(i))));
            _mm256_storeu_ps(ap.add(i), _mm256_setzero_ps());
        }
        loop {
            let n = next_chunk(&mut keys, &mut offs, hd, k_cache.len());
            if n == 0 {
                break;
            }
            let offs = &offs[..n];
            // The chunk's scores: independent dot products, the next chunk's rows prefetched
            // (at depth the cache is a strided stream the hardware prefetcher does not follow).
            let mut sc = [0.0f32; DECODE_CHUNK];
            for (s, &off) in sc.iter_mut().zip(offs) {
                let kp = k_cache.as_ptr().add(off);
                prefetch_next_chunk(k_cache, v_cache, off, key_stride, hd);
                let mut d = [_mm256_setzero_ps(); 4];
                for i in (0..hd).step_by(32) {
                    for (j, d) in d.iter_mut().enumerate() {
                        let o = i + 8 * j;
                        *d = _mm256_fmadd_ps(load_f16(kp.add(o)), _mm256_loadu_ps(qp.add(o)), *d);
                    }
                }
                let v8 = _mm256_add_ps(_mm256_add_ps(d[0], d[2]), _mm256_add_ps(d[1], d[3]));
                let t = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
                let t = _mm_hadd_ps(t, t);
                let t = _mm_hadd_ps(t, t);
                *s = _mm_cvtss_f32(t) * scale;
                if let Some(cap) = p.softcap {
                    *s = cap * s.tanh();
                }
            }
            // The running maximum key by key, and each key's exponential: the one of the
            // rescale on a new maximum, else its weight; libm's bits, eight at a time where
            // the lanes reproduce them.
            let mut e = [0.0f32; DECODE_CHUNK];
            for j in 0..n {
                let s = sc[j];
                new_max[j] = s > m;
                if new_max[j] {
                    e[j] = m - s;
                    m = s;
                } else {
                    e[j] = s - m;
                }
            }
            if lanes_expf {
                for c in e[..n.div_ceil(8) * 8].chunks_exact_mut(8) {
                    let y = expf8(_mm256_loadu_ps(c.as_ptr()));
                    _mm256_storeu_ps(c.as_mut_ptr(), y);
                }
            } else {
                e[..n].iter_mut().for_each(|x| *x = x.exp());
            }
            for j in 0..n {
                (ms[j], vs[j]) = if new_max[j] { (e[j], 1.0) } else { (1.0, e[j]) };
            }
            for j in 0..n {
                sum = sum.mul_add(ms[j], vs[j]);
            }
            let w = (&ms[..n], &vs[..n], &new_max[..n]);
            let mut c0 = 0;
            while c0 + 64 <= hd {
                add_values::<8>(v_cache, offs, w, ap, c0);
                c0 += 64;
            }
            if c0 < hd {
                add_values::<4>(v_cache, offs, w, ap, c0);
            }
        }
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for a in acc.iter_mut() {
        *a *= inv;
    }
}

/// Keys per chunk of [`one_query_f16_avx2`].
#[cfg(target_arch = "x86_64")]
const DECODE_CHUNK: usize = 16;

/// Prefetch the K and V rows one chunk of keys past the key at `off` (`key_stride` elements
/// apart): at depth the cache is a strided stream the hardware prefetcher does not follow.
/// f16 rows: a 64-byte line holds 32 elements. Hints only: past the end of the cache they
/// do nothing.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_next_chunk(k_cache: &[f16], v_cache: &[f16], off: usize, key_stride: usize, hd: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let ahead = off + DECODE_CHUNK * key_stride;
    for i in (0..hd).step_by(32) {
        // SAFETY: SSE is baseline on x86-64, and a prefetch never faults.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(k_cache.as_ptr().wrapping_add(ahead + i).cast());
            _mm_prefetch::<_MM_HINT_T0>(v_cache.as_ptr().wrapping_add(ahead + i).cast());
        }
    }
}

/// The next chunk's key offsets from `keys` into `offs`; how many (0 at the end). Each must
/// leave a `hd`-element row within a cache of `cache_len` elements: the decode kernels read
/// through raw pointers, so this is the check that keeps them in bounds.
#[cfg(target_arch = "x86_64")]
fn next_chunk(
    keys: &mut impl Iterator<Item = usize>,
    offs: &mut [usize; DECODE_CHUNK],
    hd: usize,
    cache_len: usize,
) -> usize {
    let mut n = 0;
    for (o, off) in offs.iter_mut().zip(keys) {
        assert!(off + hd <= cache_len, "key row past the cache");
        *o = off;
        n += 1;
    }
    n
}

/// [`one_query_f16`] compiled with FMA and AVX2 enabled. Same source, same results bit for
/// bit (`mul_add` is a fused multiply-add either way); the portable build turns every
/// `mul_add` into a libm call, which made decode attention several times slower.
///
/// # Safety
/// The CPU must have FMA and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn one_query_f16_fma(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    keys: impl Iterator<Item = usize>,
    acc: &mut [f32],
) {
    one_query_f16(p, q, k_cache, v_cache, keys, acc)
}

/// ggml's `ggml_compute_forward_flash_attn_ext_f16_one_chunk` for an F16 KV cache, step by
/// step, so the output equals llama.cpp's to the bit: the query rounded to f16; scores by
/// [`dot_f16_ggml`] times `scale`; on a new maximum the f16 accumulator is scaled by
/// `expf(M_old - M)` (rounded to f16), then `acc = f16(fma(v, w, acc))`; the running sum is
/// `S = fma(S, ms, vs)` (GCC contracts ggml's `S = S*ms + vs`); finally `acc * (1 / S)`.
#[inline(always)]
fn one_query_f16(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    keys: impl Iterator<Item = usize>,
    acc: &mut [f32],
) {
    let hd = q.len();
    let mut q16 = [0.0f32; 256];
    for (d, s) in q16.iter_mut().zip(q) {
        *d = round_f16(*s);
    }
    let q16 = &q16[..hd];
    // ggml folds the soft-cap divisor into the scale: s = cap * tanh(dot * (scale / cap)).
    let scale = p.softcap.map_or(p.scale, |cap| p.scale / cap);
    acc.fill(0.0);
    let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    let (mut kb, mut vb) = ([0.0f32; 256], [0.0f32; 256]);
    let (kb, vb) = (&mut kb[..hd], &mut vb[..hd]);
    for off in keys {
        k_cache[off..off + hd].convert_to_f32_slice(kb);
        v_cache[off..off + hd].convert_to_f32_slice(vb);
        let mut s = dot_f16_ggml(kb, q16) * scale;
        if let Some(cap) = p.softcap {
            s = cap * s.tanh();
        }
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > m {
            ms = (m - s).exp();
            m = s;
            for a in acc.iter_mut() {
                *a = round_f16(*a * ms);
            }
        } else {
            vs = (s - m).exp();
        }
        for (a, v) in acc.iter_mut().zip(&*vb) {
            *a = round_f16(v.mul_add(vs, *a));
        }
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for a in acc.iter_mut() {
        *a *= inv;
    }
}

/// One query's online softmax so far: the largest score seen and the sum of
/// `exp(score - max)`; the accumulator (the weighted sum of values) lives in the output.
#[derive(Clone, Copy, Debug)]
struct Running {
    max: f32,
    sum: f32,
}

impl Running {
    const START: Running = Running {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };
}

/// The per-key step of the f32 path: `(params, state, query, key, value, accumulator)`.
type StepFn = fn(&AttnParams, &mut Running, &[f32], &[f32], &[f32], &mut [f32]);

/// The f32 online-softmax path for large batches (ggml's tiled kernel also computes in f32,
/// though it sums in a different order, so prefill of 64+ tokens is not bit-exact). Queries
/// `t0..` (at positions `pos0..`) fill the output block `out` (whole tokens, every head); each
/// query takes its keys in ascending order, so the result does not depend on the blocking.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn query_block_f32(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos0: usize,
    t0: usize,
    out: &mut [f32],
    step: StepFn,
) {
    let hd = p.head_dim;
    let row = p.n_head * hd;
    let kv_dim = p.n_head_kv * hd;
    let group = p.n_head / p.n_head_kv;
    let nt = out.len() / row;
    out.fill(0.0);
    let mut run = [Running::START; QUERY_BLOCK];
    // A key's and value's row in f32, converted once for every query of the block.
    let (mut k, mut v) = (vec![0.0f32; hd], vec![0.0f32; hd]);
    for h in 0..p.n_head {
        let kvh = h / group;
        run.fill(Running::START);
        let last = pos0 + nt - 1;
        for j in first_key(p, pos0)..=last {
            let off = j * kv_dim + kvh * hd;
            k_cache[off..off + hd].convert_to_f32_slice(&mut k);
            v_cache[off..off + hd].convert_to_f32_slice(&mut v);
            let (k, v) = (&k[..], &v[..]);
            // Query `t` sees keys `first_key(pos)..=pos`: `t` from `j - pos0` on, up to where
            // the window has moved past `j`.
            for (t, r) in run
                .iter_mut()
                .enumerate()
                .take(nt)
                .skip(j.saturating_sub(pos0))
            {
                if first_key(p, pos0 + t) > j {
                    break;
                }
                let qo = (t0 + t) * row + h * hd;
                let acc = &mut out[t * row + h * hd..][..hd];
                step(p, r, &q[qo..qo + hd], k, v, acc);
            }
        }
        for (t, r) in run.iter().enumerate().take(nt) {
            let inv = 1.0 / r.sum;
            for a in &mut out[t * row + h * hd..][..hd] {
                *a *= inv;
            }
        }
    }
}

/// [`query_block_f32`] compiled for AVX2 with [`step_f32_avx2`].
///
/// # Safety
/// The CPU must have FMA and AVX2, and `p.head_dim` must be a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn query_block_f32_avx2(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos0: usize,
    t0: usize,
    out: &mut [f32],
) {
    fn step(p: &AttnParams, r: &mut Running, q: &[f32], k: &[f32], v: &[f32], acc: &mut [f32]) {
        // SAFETY: only reached through `query_block_f32_avx2`, whose caller guarantees AVX2,
        // FMA and a head size that is a multiple of 8.
        unsafe { step_f32_avx2(p, r, q, k, v, acc) }
    }
    query_block_f32(p, q, k_cache, v_cache, pos0, t0, out, step)
}

/// The f32 block on x86: [`rows_avx512::rows_f32`] where the CPU has AVX-512 (1.7x faster
/// on Zen 5, same bits), else [`query_block_f32_chunked`].
///
/// # Safety
/// The CPU must have FMA, AVX2 and F16C, and `p.head_dim` must be a multiple of 64.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn query_block_f32_x86(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos0: usize,
    t0: usize,
    heads: std::ops::Range<usize>,
    out: &mut [f32],
) {
    // SAFETY: the features and head size are this function's contract; `available` adds
    // AVX-512F.
    unsafe {
        if rows_avx512::available() {
            rows_avx512::rows_f32(p, q, k_cache, v_cache, pos0, t0, heads, out)
        } else {
            query_block_f32_chunked(p, q, k_cache, v_cache, pos0, t0, heads, out)
        }
    }
}

/// Keys per chunk of [`query_block_f32_chunked`]: the chunk's value rows (16 x 256 floats at
/// most, 16 KiB) stay in L1 while every query of the block reads them.
const KEY_CHUNK: usize = 16;

/// The prefill block with AVX2, a chunk of keys at a time per query (flash attention's order):
/// the chunk's scores first, one rescale of the accumulator if their maximum is new, their
/// weights, then the weighted values added with 64 accumulator lanes held in registers, so the
/// accumulator is loaded and stored once per chunk instead of once per key. Within the f32
/// path's tolerance of the per-key order (tested against the two-pass definition).
///
/// A chunk's key and value rows are converted to f32 once for all the query heads of `heads`
/// that share their KV head: with a few queries (a prompt chunk beside running streams) the
/// conversion otherwise costs as much as the arithmetic.
///
/// # Safety
/// The CPU must have FMA, AVX2 and F16C, and `p.head_dim` must be a multiple of 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn query_block_f32_chunked(
    p: &AttnParams,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    pos0: usize,
    t0: usize,
    heads: std::ops::Range<usize>,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = p.head_dim;
    debug_assert!(hd.is_multiple_of(64));
    let row = p.n_head * hd;
    let kv_dim = p.n_head_kv * hd;
    let group = p.n_head / p.n_head_kv;
    let nt = out.len() / row;
    let last = pos0 + nt - 1;
    out.fill(0.0);
    let mut wgt = [0.0f32; KEY_CHUNK];
    // The chunk's raw scores for every query of the block that sees any of its keys.
    let mut scores = [[0.0f32; KEY_CHUNK]; QUERY_BLOCK];
    // The chunk's key and value rows in f32, converted once for every query of the block and
    // every head of the group.
    let mut kbuf = vec![0.0f32; KEY_CHUNK * hd];
    let mut vbuf = vec![0.0f32; KEY_CHUNK * hd];
    // Each head's queries' running maxima and sums, for the heads of one KV head.
    let mut runs = vec![[Running::START; QUERY_BLOCK]; group];
    let convert = |src: &[f16], dst: &mut [f32]| {
        // SAFETY: F16C (this function's contract); both rows hold `hd` elements, a multiple
        // of 8.
        unsafe {
            for i in (0..hd).step_by(8) {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), x);
            }
        }
    };
    // Heads are independent: a head's result is the same bits whichever range or group
    // pass it is in.
    let kv_heads = heads.start / group..heads.end.div_ceil(group);
    for kvh in kv_heads {
        let hs = heads.start.max(kvh * group)..heads.end.min((kvh + 1) * group);
        runs.iter_mut().for_each(|r| r.fill(Running::START));
        // Chunks start at multiples of KEY_CHUNK, so a query meets the same chunks (and
        // rescales at the same keys) whatever block it is in: its result does not depend on
        // which other queries share its pass.
        let mut c0 = first_key(p, pos0) / KEY_CHUNK * KEY_CHUNK;
        while c0 <= last {
            let c1 = (c0 + KEY_CHUNK).min(last + 1);
            // Queries `tlo..thi` see keys of this chunk (windows only move forward).
            let tlo = c0.saturating_sub(pos0).min(nt);
            let thi = (tlo..nt)
                .find(|&t| first_key(p, pos0 + t) >= c1)
                .unwrap_or(nt);
            for j in c0..c1 {
                let off = j * kv_dim + kvh * hd;
                let at = (j - c0) * hd;
                convert(&k_cache[off..off + hd], &mut kbuf[at..at + hd]);
                convert(&v_cache[off..off + hd], &mut vbuf[at..at + hd]);
            }
            let krow = |j: usize| &kbuf[(j - c0) * hd..][..hd];
            let nk = c1 - c0;
            for h in hs.clone() {
                let run = &mut runs[h - kvh * group];
                let qrow = |t: usize| &q[(t0 + t) * row + h * hd..][..hd];
                // Scores two queries by four keys at a time: each key row loaded once per two
                // queries and each query row once per four keys (a lone dot product loads both
                // per multiply-add). Keys a query does not see (past it, or before its window)
                // are scored too and never read.
                let mut t = tlo;
                while t < thi {
                    let pair = t + 1 < thi;
                    let mut j = 0;
                    while pair && j + 4 <= nk {
                        let ks = [
                            krow(c0 + j),
                            krow(c0 + j + 1),
                            krow(c0 + j + 2),
                            krow(c0 + j + 3),
                        ];
                        // SAFETY: AVX2 and FMA (this function's contract); every row holds
                        // `hd`, a multiple of 64.
                        let s2 = unsafe { dot_2x4_avx2(qrow(t), qrow(t + 1), ks) };
                        scores[t][j..j + 4].copy_from_slice(&s2[0]);
                        scores[t + 1][j..j + 4].copy_from_slice(&s2[1]);
                        j += 4;
                    }
                    // The rest one query by four keys, with the same arithmetic per (query,
                    // key) as the pairs (a missing key repeats the last one, its score unused).
                    let rows = t..t + 1 + usize::from(pair);
                    for (su, u) in scores[rows.clone()].iter_mut().zip(rows) {
                        let mut jj = j;
                        while jj < nk {
                            let ks = std::array::from_fn(|i| krow(c0 + (jj + i).min(nk - 1)));
                            // SAFETY: as above.
                            let s4 = unsafe { dot_1x4_avx2(qrow(u), ks) };
                            let n = (nk - jj).min(4);
                            su[jj..jj + n].copy_from_slice(&s4[..n]);
                            jj += 4;
                        }
                    }
                    t += 1 + usize::from(pair);
                }
                for (t, r) in run
                    .iter_mut()
                    .enumerate()
                    .take(nt)
                    .skip(c0.saturating_sub(pos0))
                {
                    let pos = pos0 + t;
                    let fk = first_key(p, pos);
                    if fk >= c1 {
                        break;
                    }
                    // This query's keys in the chunk: `jlo..jhi`.
                    let (jlo, jhi) = (c0.max(fk), c1.min(pos + 1));
                    let acc = &mut out[t * row + h * hd..][..hd];
                    let mut cmax = f32::NEG_INFINITY;
                    for j in jlo..jhi {
                        let mut s = scores[t][j - c0] * p.scale;
                        if let Some(cap) = p.softcap {
                            s = cap * (s / cap).tanh();
                        }
                        wgt[j - c0] = s;
                        cmax = cmax.max(s);
                    }
                    if cmax > r.max {
                        let c = (r.max - cmax).exp();
                        for a in acc.iter_mut() {
                            *a *= c;
                        }
                        r.sum *= c;
                        r.max = cmax;
                    }
                    // ggml's vector exponential (within about an ulp of libm's), eight keys
                    // per vector: one at a time it had been most of a short chunk's cost.
                    let ws = &mut wgt[jlo - c0..jhi - c0];
                    for w8 in ws.chunks_mut(8) {
                        // Padded with the maximum (weight 1, off the slow path), unused.
                        let mut v = [r.max; 8];
                        v[..w8.len()].copy_from_slice(w8);
                        // SAFETY: AVX2 and FMA (this function's contract); `v` holds eight.
                        unsafe {
                            let x =
                                _mm256_sub_ps(_mm256_loadu_ps(v.as_ptr()), _mm256_set1_ps(r.max));
                            _mm256_storeu_ps(v.as_mut_ptr(), ggml_v_expf8(x));
                        }
                        w8.copy_from_slice(&v[..w8.len()]);
                    }
                    for w in ws.iter() {
                        r.sum += *w;
                    }
                    for i0 in (0..hd).step_by(64) {
                        // SAFETY: `acc` and every value row hold `hd` elements, and
                        // `i0 + 64 <= hd` because `hd` is a multiple of 64.
                        unsafe {
                            let ap = acc.as_mut_ptr().add(i0);
                            let mut a: [__m256; 8] =
                                std::array::from_fn(|u| _mm256_loadu_ps(ap.add(8 * u)));
                            for j in jlo..jhi {
                                let w = _mm256_set1_ps(wgt[j - c0]);
                                let off = (j - c0) * hd + i0;
                                let vp = vbuf[off..off + 64].as_ptr();
                                for (u, a) in a.iter_mut().enumerate() {
                                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp.add(8 * u)), *a);
                                }
                            }
                            for (u, a) in a.iter().enumerate() {
                                _mm256_storeu_ps(ap.add(8 * u), *a);
                            }
                        }
                    }
                }
            }
            c0 = c1;
        }
        for h in hs {
            for (t, r) in runs[h - kvh * group].iter().enumerate().take(nt) {
                let inv = 1.0 / r.sum;
                for a in &mut out[t * row + h * hd..][..hd] {
                    *a *= inv;
                }
            }
        }
    }
}

/// The dot products of two query rows with four key rows, all of one length, a multiple of 8:
/// one accumulator per pair over the length, then the eight reduced together.
///
/// # Safety
/// The CPU must have FMA and AVX2; every row holds `q0.len()` elements, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
#[inline]
unsafe fn dot_2x4_avx2(q0: &[f32], q1: &[f32], k: [&[f32]; 4]) -> [[f32; 4]; 2] {
    use std::arch::x86_64::*;
    let n = q0.len();
    debug_assert!(q1.len() == n && k.iter().all(|k| k.len() == n) && n.is_multiple_of(8));
    // SAFETY: every access is at an offset `o` with `o + 8 <= n` (caller's contract).
    unsafe {
        let mut a = [[_mm256_setzero_ps(); 4]; 2];
        for o in (0..n).step_by(8) {
            let (x0, x1) = (
                _mm256_loadu_ps(q0.as_ptr().add(o)),
                _mm256_loadu_ps(q1.as_ptr().add(o)),
            );
            for (u, k) in k.iter().enumerate() {
                let y = _mm256_loadu_ps(k.as_ptr().add(o));
                a[0][u] = _mm256_fmadd_ps(x0, y, a[0][u]);
                a[1][u] = _mm256_fmadd_ps(x1, y, a[1][u]);
            }
        }
        // Four vectors to their four sums: two rounds of pairwise adds, then the halves.
        let sums = |a: [__m256; 4]| {
            let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), s);
            out
        };
        [sums(a[0]), sums(a[1])]
    }
}

/// [`dot_2x4_avx2`] for one query: each (query, key) product accumulates and reduces exactly
/// as there, so a score is the same bits whichever of the two computed it.
///
/// # Safety
/// The CPU must have FMA and AVX2; every row holds `q.len()` elements, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
#[inline]
unsafe fn dot_1x4_avx2(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = q.len();
    debug_assert!(k.iter().all(|k| k.len() == n) && n.is_multiple_of(8));
    // SAFETY: every access is at an offset `o` with `o + 8 <= n` (caller's contract).
    unsafe {
        let mut a = [_mm256_setzero_ps(); 4];
        for o in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(q.as_ptr().add(o));
            for (u, k) in k.iter().enumerate() {
                a[u] = _mm256_fmadd_ps(x, _mm256_loadu_ps(k.as_ptr().add(o)), a[u]);
            }
        }
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let mut out = [0.0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), s);
        out
    }
}

/// A fused four-accumulator dot product of two rows whose length is a multiple of 8: steps of
/// 32 elements over four accumulators, a tail of 8-element steps into the first.
///
/// # Safety
/// The CPU must have FMA and AVX2; `x.len() == y.len()`, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
#[inline]
unsafe fn dot_avx2(x: &[f32], y: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    debug_assert!(y.len() == n && n.is_multiple_of(8));
    // SAFETY: every access is at an offset `o` with `o + 8 <= n` (caller's contract).
    unsafe {
        let (xp, yp) = (x.as_ptr(), y.as_ptr());
        let mut d = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, d) in d.iter_mut().enumerate() {
                let o = i + 8 * j;
                *d = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(o)), _mm256_loadu_ps(yp.add(o)), *d);
            }
            i += 32;
        }
        while i < n {
            d[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(yp.add(i)), d[0]);
            i += 8;
        }
        let d = _mm256_add_ps(_mm256_add_ps(d[0], d[2]), _mm256_add_ps(d[1], d[3]));
        let h = _mm_add_ps(_mm256_castps256_ps128(d), _mm256_extractf128_ps::<1>(d));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
    }
}

/// One key for one query, portable: score, rescale on a new maximum, add the weighted value.
#[inline(always)]
fn step_f32(p: &AttnParams, r: &mut Running, q: &[f32], k: &[f32], v: &[f32], acc: &mut [f32]) {
    let mut s = dot(q, k) * p.scale;
    if let Some(cap) = p.softcap {
        s = cap * (s / cap).tanh();
    }
    if s > r.max {
        let c = (r.max - s).exp();
        for a in acc.iter_mut() {
            *a *= c;
        }
        r.sum *= c;
        r.max = s;
    }
    let wgt = (s - r.max).exp();
    r.sum += wgt;
    axpy(acc, wgt, v);
}

/// [`step_f32`] with AVX2 intrinsics: the score is a four-accumulator fused dot product and
/// the value update one fused multiply-add per eight lanes. Fused products round differently
/// from the portable step, within the f32 path's tolerance.
///
/// # Safety
/// The CPU must have FMA and AVX2; `q`, `k`, `v` and `acc` have the same length, a multiple
/// of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
#[inline]
unsafe fn step_f32_avx2(
    p: &AttnParams,
    r: &mut Running,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = q.len();
    debug_assert!(hd.is_multiple_of(8) && k.len() == hd && v.len() == hd && acc.len() == hd);
    // SAFETY: the four slices hold `hd` elements (caller's contract) and every access below
    // is at an offset `i` with `i + 8 <= hd`.
    unsafe {
        let (vp, ap) = (v.as_ptr(), acc.as_mut_ptr());
        let mut s = dot_avx2(q, k) * p.scale;
        if let Some(cap) = p.softcap {
            s = cap * (s / cap).tanh();
        }
        let wgt = if s > r.max {
            let c = (r.max - s).exp();
            let cv = _mm256_set1_ps(c);
            for i in (0..hd).step_by(8) {
                _mm256_storeu_ps(ap.add(i), _mm256_mul_ps(_mm256_loadu_ps(ap.add(i)), cv));
            }
            r.sum *= c;
            r.max = s;
            1.0
        } else {
            (s - r.max).exp()
        };
        r.sum += wgt;
        let w = _mm256_set1_ps(wgt);
        for i in (0..hd).step_by(8) {
            let a = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp.add(i)), _mm256_loadu_ps(ap.add(i)));
            _mm256_storeu_ps(ap.add(i), a);
        }
    }
}

/// ggml's `ggml_vec_dot_f16` on x86 AVX2 (f16 inputs, here already f16-valued f32s): four
/// accumulators of eight lanes over steps of 32 elements, element `i` in accumulator
/// `(i / 8) % 4`, lane `i % 8`, each `fma(x, y, acc)`; reduced as `GGML_F32x8_REDUCE`
/// (`a0 + a2`, `a1 + a3`, then those two; then lanes `l + (l + 4)`, then two `hadd`s);
/// the tail of fewer than 32 elements added in f64, the total rounded to f32 once.
#[inline(always)]
pub fn dot_f16_ggml(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let np = x.len() / 32 * 32;
    let mut sumf = 0.0f64;
    if np > 0 {
        let mut acc = [[0.0f32; 8]; 4];
        for (xc, yc) in x[..np].chunks_exact(32).zip(y[..np].chunks_exact(32)) {
            for (j, a) in acc.iter_mut().enumerate() {
                for (l, a) in a.iter_mut().enumerate() {
                    *a = xc[8 * j + l].mul_add(yc[8 * j + l], *a);
                }
            }
        }
        let mut v = [0.0f32; 8];
        for (l, v) in v.iter_mut().enumerate() {
            *v = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        }
        let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
        sumf = f64::from((t[0] + t[1]) + (t[2] + t[3]));
    }
    for (a, b) in x[np..].iter().zip(&y[np..]) {
        sumf += f64::from(a * b);
    }
    sumf as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache's f16 form of values already rounded to f16 (exact).
    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    fn f16s(x: &[f32]) -> Vec<f16> {
        x.iter().map(|&v| f16::from_f32(v)).collect()
    }
    use crate::ops::activation::softmax;

    /// Plain two-pass softmax attention, the textbook definition.
    fn reference(p: &AttnParams, q: &[f32], k: &[f32], v: &[f32], pos0: usize) -> Vec<f32> {
        let hd = p.head_dim;
        let kv_dim = p.n_head_kv * hd;
        let n_tok = q.len() / (p.n_head * hd);
        let mut out = vec![0.0; q.len()];
        for t in 0..n_tok {
            for h in 0..p.n_head {
                let pos = pos0 + t;
                let kvh = h / (p.n_head / p.n_head_kv);
                let start = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qh = &q[(t * p.n_head + h) * hd..][..hd];
                let mut s: Vec<f32> = (start..=pos)
                    .map(|j| dot(qh, &k[j * kv_dim + kvh * hd..][..hd]) * p.scale)
                    .collect();
                softmax(&mut s);
                let o = &mut out[(t * p.n_head + h) * hd..][..hd];
                for (j, w) in (start..=pos).zip(&s) {
                    axpy(o, *w, &v[j * kv_dim + kvh * hd..][..hd]);
                }
            }
        }
        out
    }

    /// Batches below `F16_ACC_MAX_TOKENS` run at f16 precision (about 3 decimal digits),
    /// larger ones in f32.
    #[test]
    fn online_softmax_matches_two_pass_with_gqa_and_window() {
        for (n_tok, tol) in [(4usize, 5e-3f32), (F16_ACC_MAX_TOKENS + 6, 1e-5)] {
            for window in [None, Some(3)] {
                let p = AttnParams {
                    n_head: 6,
                    n_head_kv: 2,
                    head_dim: 8,
                    scale: 0.35,
                    window,
                    softcap: None,
                };
                let pos0 = 5;
                let n_ctx = pos0 + n_tok;
                let f = |i: usize, m: f32| ((i as f32) * m).sin() * 2.0;
                let k: Vec<f32> = (0..n_ctx * 16).map(|i| round_f16(f(i, 0.7))).collect();
                let v: Vec<f32> = (0..n_ctx * 16).map(|i| round_f16(f(i, 1.3))).collect();
                let q: Vec<f32> = (0..n_tok * 48).map(|i| f(i, 0.9)).collect();
                let mut out = vec![0.0; q.len()];
                attention(&p, &q, &f16s(&k), &f16s(&v), pos0, &mut out);
                let r = reference(&p, &q, &k, &v, pos0);
                for (a, b) in out.iter().zip(&r) {
                    assert!((a - b).abs() < tol, "n_tok {n_tok}: {a} vs {b}");
                }
            }
        }
    }

    /// A query's result does not depend on the queries beside it: in either precision, each
    /// row equals the same row computed alone, bit for bit (windows and odd blocks included),
    /// which lets a prompt be read in any chunks, beside other sequences, with the same bits.
    #[test]
    fn each_row_is_the_same_bits_alone_as_in_any_block() {
        // (head size, window, heads, KV heads): 9 heads over 3 KV heads split between two
        // threads across a group (heads 0..4 and 4..9) for a small block.
        for (hd, window, nh, nkv) in [
            (64, None, 4, 2),
            (64, Some(21), 4, 2),
            (256, Some(9), 4, 2),
            (8, None, 4, 2),
            (64, None, 9, 3),
            (64, Some(13), 9, 3),
        ] {
            let p = AttnParams {
                n_head: nh,
                n_head_kv: nkv,
                head_dim: hd,
                scale: 0.125,
                window,
                softcap: None,
            };
            let (pos0, n_tok) = (5, 45);
            let n_ctx = pos0 + n_tok;
            let kvd = nkv * hd;
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * 2.0;
            let k: Vec<f32> = (0..n_ctx * kvd).map(|i| round_f16(f(i, 0.7))).collect();
            let v: Vec<f32> = (0..n_ctx * kvd).map(|i| round_f16(f(i, 1.3))).collect();
            let q: Vec<f32> = (0..n_tok * nh * hd).map(|i| f(i, 0.9)).collect();
            let (k, v) = (f16s(&k), f16s(&v));
            for f16_acc in [false, true] {
                let mut all = vec![0.0; q.len()];
                attention_with(&p, &q, &k, &v, pos0, f16_acc, &mut all);
                for (start, len) in [(0, 1), (3, 1), (17, 1), (44, 1), (2, 7), (19, 20)] {
                    let rows = start * nh * hd..(start + len) * nh * hd;
                    let mut part = vec![0.0; rows.len()];
                    attention_with(
                        &p,
                        &q[rows.clone()],
                        &k,
                        &v,
                        pos0 + start,
                        f16_acc,
                        &mut part,
                    );
                    assert!(
                        same_bits(&part, &all[rows]),
                        "hd {hd} {window:?} {nh}/{nkv} f16 {f16_acc}: rows {start}+{len}"
                    );
                }
            }
        }
    }

    /// The prefill path at real head sizes (the chunked AVX2 kernel where the host has it),
    /// with several key chunks, partial query blocks, windows that cut chunks and GQA.
    #[test]
    fn prefill_at_head_size_64_matches_two_pass() {
        for window in [None, Some(21)] {
            let p = AttnParams {
                n_head: 4,
                n_head_kv: 2,
                head_dim: 64,
                scale: 0.125,
                window,
                softcap: None,
            };
            let (pos0, n_tok) = (7, F16_ACC_MAX_TOKENS + 11);
            let n_ctx = pos0 + n_tok;
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * 2.0;
            let k: Vec<f32> = (0..n_ctx * 128).map(|i| round_f16(f(i, 0.7))).collect();
            let v: Vec<f32> = (0..n_ctx * 128).map(|i| round_f16(f(i, 1.3))).collect();
            let q: Vec<f32> = (0..n_tok * 256).map(|i| f(i, 0.9)).collect();
            let mut out = vec![0.0; q.len()];
            attention(&p, &q, &f16s(&k), &f16s(&v), pos0, &mut out);
            let r = reference(&p, &q, &k, &v, pos0);
            for (i, (a, b)) in out.iter().zip(&r).enumerate() {
                assert!((a - b).abs() < 1e-5, "{window:?} [{i}]: {a} vs {b}");
            }
        }
    }

    /// The portable prefill step (the SIMD one is what `attention` picks on most hosts), over
    /// query blocks of every size the blocking produces, with and without a window.
    #[test]
    fn small_f32_block_with_groups_split_between_threads_matches_two_pass() {
        // A pacer's chunk: a few rows of a long prompt, in f32, at depth; 9 heads over 3 KV
        // heads, so with two threads one thread's heads start inside a group.
        for window in [None, Some(100)] {
            let p = AttnParams {
                n_head: 9,
                n_head_kv: 3,
                head_dim: 64,
                scale: 0.125,
                window,
                softcap: None,
            };
            let (pos0, n_tok) = (301, 4);
            let n_ctx = pos0 + n_tok;
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * 2.0;
            let k: Vec<f32> = (0..n_ctx * 192).map(|i| round_f16(f(i, 0.7))).collect();
            let v: Vec<f32> = (0..n_ctx * 192).map(|i| round_f16(f(i, 1.3))).collect();
            let q: Vec<f32> = (0..n_tok * 576).map(|i| f(i, 0.9)).collect();
            let r = reference(&p, &q, &k, &v, pos0);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![0.0; q.len()];
                pool.install(|| {
                    attention_with(&p, &q, &f16s(&k), &f16s(&v), pos0, false, &mut out)
                });
                for (i, (a, b)) in out.iter().zip(&r).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{window:?} x{threads} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn portable_prefill_blocks_match_two_pass() {
        for window in [None, Some(5)] {
            let p = AttnParams {
                n_head: 4,
                n_head_kv: 2,
                head_dim: 12,
                scale: 0.3,
                window,
                softcap: None,
            };
            let (pos0, n_tok) = (3, QUERY_BLOCK * 2 + 5);
            let n_ctx = pos0 + n_tok;
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * 2.0;
            let k: Vec<f32> = (0..n_ctx * 24).map(|i| round_f16(f(i, 0.7))).collect();
            let v: Vec<f32> = (0..n_ctx * 24).map(|i| round_f16(f(i, 1.3))).collect();
            let q: Vec<f32> = (0..n_tok * 48).map(|i| f(i, 0.9)).collect();
            let mut out = vec![0.0; q.len()];
            let (k16, v16) = (f16s(&k), f16s(&v));
            for (b, o) in out.chunks_mut(QUERY_BLOCK * 48).enumerate() {
                let t0 = b * QUERY_BLOCK;
                query_block_f32(&p, &q, &k16, &v16, pos0 + t0, t0, o, step_f32);
            }
            let r = reference(&p, &q, &k, &v, pos0);
            for (a, b) in out.iter().zip(&r) {
                assert!((a - b).abs() < 1e-5, "{window:?}: {a} vs {b}");
            }
        }
    }

    /// The AVX2 decode kernel must equal the portable one to the bit (greedy decoding matches
    /// llama.cpp's through it), with and without soft-capping, across new maxima.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_one_query_f16_is_bit_identical_or_skip() {
        if !(has_fma() && has_f16c()) {
            eprintln!("SKIPPED: host lacks AVX2, FMA or F16C");
            return;
        }
        for (hd, softcap) in [
            (64usize, None),
            (256, Some(30.0f32)),
            (32, None),
            (96, None),
        ] {
            let p = AttnParams {
                n_head: 1,
                n_head_kv: 1,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window: None,
                softcap,
            };
            let n_keys = 300;
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * (1.0 + (i % 7) as f32);
            let k: Vec<f32> = (0..n_keys * hd).map(|i| round_f16(f(i, 0.7))).collect();
            let v: Vec<f32> = (0..n_keys * hd).map(|i| round_f16(f(i, 1.3))).collect();
            let q: Vec<f32> = (0..hd).map(|i| f(i, 0.9) * 3.0).collect();
            let (mut want, mut got) = (vec![0.0; hd], vec![0.0; hd]);
            one_query_f16(
                &p,
                &q,
                &f16s(&k),
                &f16s(&v),
                (0..n_keys).map(|j| j * hd),
                &mut want,
            );
            // SAFETY: features checked above; `hd` is a multiple of 32 and at most 256.
            unsafe {
                one_query_f16_avx2(
                    &p,
                    &q,
                    &f16s(&k),
                    &f16s(&v),
                    (0..n_keys).map(|j| j * hd),
                    hd,
                    &mut got,
                )
            };
            for (a, b) in got.iter().zip(&want) {
                assert_eq!(a.to_bits(), b.to_bits(), "hd {hd}: {a} vs {b}");
            }
        }
    }

    /// The heads of a KV group decoded together (512-bit kernel where the CPU has AVX-512,
    /// else head by head) give each head the portable reference's bits, for every way the
    /// group is split into tasks, with soft-capping, a sliding window and odd head sizes.
    /// The 512-bit prefill block against the 256-bit one, bit for bit: SmolLM2's and Gemma
    /// 3's shapes, windows that cut chunks, a soft cap, blocks of 1 to 16 rows at depths
    /// that start mid-chunk, and head ranges that split a KV group.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_prefill_rows_equal_the_avx2_block() {
        if !(rows_avx512::available() && has_fma() && has_f16c()) {
            eprintln!("SKIPPED: no AVX-512: rows_avx512 NOT tested");
            return;
        }
        for (nh, nkv, hd, window, softcap) in [
            (9, 3, 64, None, None),
            (9, 3, 64, Some(37), None),
            (4, 1, 256, None, None),
            (4, 2, 128, Some(16), Some(30.0)),
            (8, 8, 64, None, Some(50.0)),
        ] {
            let p = AttnParams {
                n_head: nh,
                n_head_kv: nkv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
                softcap,
            };
            let n_ctx = 160;
            let kvd = nkv * hd;
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * 3.0;
            let k = f16s(&(0..n_ctx * kvd).map(|i| f(i, 0.37)).collect::<Vec<_>>());
            let v = f16s(&(0..n_ctx * kvd).map(|i| f(i, 1.71)).collect::<Vec<_>>());
            for (pos0, nt) in [
                (0, 1),
                (0, 16),
                (7, 3),
                (15, 2),
                (16, 1),
                (40, 13),
                (143, 16),
            ] {
                let q: Vec<f32> = (0..(nt + 2) * nh * hd).map(|i| f(i, 0.91)).collect();
                for heads in [0..nh, 1..nh.min(5), nh - 1..nh] {
                    let mut want = vec![0.0f32; nt * nh * hd];
                    let mut got = vec![1.0f32; nt * nh * hd];
                    // SAFETY: AVX-512F, FMA, AVX2 and F16C checked; head sizes are multiples
                    // of 64; rows up to pos0 + nt - 1 < n_ctx.
                    unsafe {
                        query_block_f32_chunked(&p, &q, &k, &v, pos0, 2, heads.clone(), &mut want);
                        rows_avx512::rows_f32(&p, &q, &k, &v, pos0, 2, heads.clone(), &mut got);
                    }
                    assert!(
                        same_bits(&got, &want),
                        "{nh}/{nkv}x{hd} {window:?} {softcap:?} @{pos0}+{nt} {heads:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn grouped_decode_heads_equal_the_one_head_reference() {
        #[cfg(target_arch = "x86_64")]
        if !heads_avx512::available() {
            eprintln!("note: no AVX-512 here; this checks the head-by-head fallback only");
        }
        for (hd, group, softcap, window) in [
            (64usize, 3usize, None, None),
            (256, 4, Some(30.0f32), Some(100usize)),
            (32, 2, None, Some(7)),
            (96, 1, None, None),
            (128, 8, None, None),
        ] {
            let n_head_kv = 2;
            let p = AttnParams {
                n_head: group * n_head_kv,
                n_head_kv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
                softcap,
            };
            let (n_keys, kvd) = (300, n_head_kv * hd);
            let f = |i: usize, m: f32| ((i as f32) * m).sin() * (1.0 + (i % 7) as f32);
            let k = f16s(&(0..n_keys * kvd).map(|i| f(i, 0.7)).collect::<Vec<_>>());
            let v = f16s(&(0..n_keys * kvd).map(|i| f(i, 1.3)).collect::<Vec<_>>());
            let q: Vec<f32> = (0..p.n_head * hd).map(|i| f(i, 0.9) * 3.0).collect();
            let pos = n_keys - 1;
            let want: Vec<f32> = (0..p.n_head)
                .flat_map(|h| {
                    let kvh = h / group;
                    let keys = (first_key(&p, pos)..=pos).map(|j| j * kvd + kvh * hd);
                    let mut o = vec![0.0; hd];
                    one_query_f16(&p, &q[h * hd..(h + 1) * hd], &k, &v, keys, &mut o);
                    o
                })
                .collect();
            for per in (1..=group).filter(|d| group.is_multiple_of(*d)) {
                let mut got = vec![0.0f32; q.len()];
                for (t, out) in got.chunks_mut(per * hd).enumerate() {
                    let qs = &q[t * per * hd..(t + 1) * per * hd];
                    decode_heads_f16(&p, qs, &k, &v, pos, t * per, out);
                }
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "hd {hd}, {per} heads per task, element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Tasks are whole divisors of a KV group, and a pass over few rows still gives every
    /// thread work.
    #[test]
    fn heads_per_task_divides_the_group_and_feeds_the_threads() {
        let p = |n_head, n_head_kv, head_dim| AttnParams {
            n_head,
            n_head_kv,
            head_dim,
            scale: 1.0,
            window: None,
            softcap: None,
        };
        for (attn, rows, threads) in [
            (p(9, 3, 64), 1, 2),
            (p(9, 3, 64), 8, 2),
            (p(4, 1, 256), 1, 2),
            (p(4, 1, 256), 8, 2),
            (p(32, 8, 128), 1, 16),
            (p(14, 2, 64), 3, 4),
            (p(16, 2, 64), 2, 2),
        ] {
            let per = decode_heads_per_task(&attn, rows, threads);
            let group = attn.n_head / attn.n_head_kv;
            assert!(group.is_multiple_of(per), "{per} of {group}");
        }
        #[cfg(target_arch = "x86_64")]
        if heads_avx512::available() {
            // One Gemma 3 row on two threads: two tasks of two heads, not one task of four
            // (one thread idle) nor four of one; eight rows: whole groups.
            assert_eq!(decode_heads_per_task(&p(4, 1, 256), 1, 2), 2);
            assert_eq!(decode_heads_per_task(&p(4, 1, 256), 8, 2), 4);
            assert_eq!(decode_heads_per_task(&p(9, 3, 64), 8, 2), 3);
            // One SmolLM2 row: three grouped tasks on two threads beat nine single heads;
            // on sixteen threads, nine single heads run at once.
            assert_eq!(decode_heads_per_task(&p(9, 3, 64), 1, 2), 3);
            assert_eq!(decode_heads_per_task(&p(9, 3, 64), 1, 16), 1);
            // A group of eight splits into halves of four.
            assert_eq!(decode_heads_per_task(&p(16, 2, 64), 2, 2), 4);
        }
    }

    #[test]
    fn round_f16_matches_the_half_crate() {
        for i in 0..100_000u32 {
            let x = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if x.is_finite() {
                assert_eq!(
                    round_f16(x).to_bits(),
                    half::f16::from_f32(x).to_f32().to_bits(),
                    "{x}"
                );
            }
        }
    }
}
