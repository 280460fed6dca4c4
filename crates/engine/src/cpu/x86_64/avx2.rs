//! AVX2 + FMA + F16C kernels: the float rows (F32, F16, BF16), the f32 helpers, the Q8_0/Q8_1
//! activation quantizers and the helpers every x86-64 kernel shares. The legacy block formats
//! are in `legacy.rs` (built twice: plain AVX2 and with VNNI), the K-quants in `avx2_k.rs`.
//!
//! Integer products use `vpmaddubsw` (u8 x i8 pairs summed to i16) then `vpmaddwd` by ones (to
//! i32): exact as long as a pair stays within i16, which holds for 4/5-bit weights against any
//! i8 and for |q| <= 127 against |q| <= 127 (see the module docs of `cpu`). Signed x signed
//! products move the sign of the weight onto the activation first (`vpsignb`).
//!
//! Every kernel is an `unsafe fn` with `#[target_feature(enable = "avx2,fma,f16c")]`, reached
//! only through a safe wrapper that `super::vec_dot`/`quantize` hand out after runtime
//! detection; the wrappers check row lengths, the kernels then read with unaligned loads.

use std::arch::x86_64::*;

use crate::cpu::row_blocks;

/// Generates the safe wrapper of a block kernel `unsafe fn(nb, w, a) -> f32`.
macro_rules! safe_vec_dot {
    ($name:ident => $kernel:ident, $qk:expr, $w_block:expr, $a_block:expr) => {
        pub(in crate::cpu::x86_64) fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let nb = row_blocks(n, $qk, w, $w_block, a, $a_block);
            // SAFETY: this wrapper is handed out only after runtime detection found the
            // features the kernel is compiled for (`x86_64::missing`), and `row_blocks`
            // checked that `nb` blocks of both rows are in bounds.
            unsafe { $kernel(nb, w.as_ptr(), a.as_ptr()) }
        }
    };
}
pub(super) use safe_vec_dot;

safe_vec_dot!(vec_dot_f32 => dot_f32_raw, 1, 4, 4);
safe_vec_dot!(vec_dot_f16 => dot_f16_f32_raw, 1, 2, 4);
safe_vec_dot!(vec_dot_bf16 => dot_bf16_f32_raw, 1, 2, 4);

/// Generates the safe wrapper of a tile kernel
/// `unsafe fn(nb, w, w_stride, a, a_stride, out, out_stride)` (see `cpu::TileDotFn`) for a
/// `rows x toks` tile. With `by K` the kernel is instantiated for `K` tokens and called
/// `toks / K` times across the tile (for builds whose registers hold fewer accumulators).
macro_rules! safe_tile {
    ($name:ident => $kernel:ident, $qk:expr, $w_block:expr, $a_block:expr, ($rows:expr, $toks:expr)) => {
        safe_tile!($name => $kernel, $qk, $w_block, $a_block, ($rows, $toks) by $toks);
    };
    ($name:ident => $kernel:ident, $qk:expr, $w_block:expr, $a_block:expr, ($rows:expr, $toks:expr) by $step:expr) => {
        pub(in crate::cpu::x86_64) fn $name(
            n: usize,
            w: &[u8],
            w_stride: usize,
            a: &[u8],
            a_stride: usize,
            out: &mut [f32],
            out_stride: usize,
        ) {
            const { assert!($step >= 1 && $toks / $step * $step == $toks) };
            let nb = tile_blocks(
                n,
                $qk,
                (w, w_stride, $w_block),
                (a, a_stride, $a_block),
                (out, out_stride),
                ($rows, $toks),
            );
            for t in (0..$toks).step_by($step) {
                // SAFETY: runtime detection as for `safe_vec_dot`; `tile_blocks` checked that
                // every row of the tile holds `nb` blocks and that `out` holds every result,
                // so tokens `t..t + $step` of it are in bounds too.
                unsafe {
                    $kernel::<{ $rows }, { $step }>(
                        nb,
                        w.as_ptr(),
                        w_stride,
                        a.as_ptr().add(t * a_stride),
                        a_stride,
                        out.as_mut_ptr().add(t),
                        out_stride,
                    )
                }
            }
        }
    };
}

pub(super) use safe_tile;

// ---- shared helpers (inlined into the kernels, which have the same features) ----

/// How far ahead of the block it reads a one-row kernel prefetches its weight row. Rows are
/// short (a few hundred bytes) and a matrix-vector product jumps between row blocks per task,
/// so the hardware prefetcher alone left decode waiting on memory: 2 KiB ahead measured 5%
/// faster on SmolLM2 and 12% on Gemma 3 (whose 171 MiB output matrix dominates).
const PREFETCH_BYTES: usize = 2048;

/// Prefetch the weight bytes [`PREFETCH_BYTES`] ahead of the block of `block_bytes` at `x`.
/// A prefetch is a hint: past the end of the row, or of the mapping, it does nothing.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_weights(x: *const u8, block_bytes: usize) {
    prefetch_block(x.wrapping_add(PREFETCH_BYTES), block_bytes);
}

/// Prefetch the `bytes` at `x`, a cache line at a time (a hint: it never faults, whatever
/// the address).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_block(x: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add(off).cast());
    }
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of four i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_epi32_128(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// An f16 (two little-endian bytes at `p`) in all eight lanes, by F16C.
///
/// Built from a broadcast load: inserting the half into some register instead
/// (`_mm_cvtsi32_si128` compiles to `vpinsrw`) lets LLVM pick the accumulator as the base
/// register, which chains every block's scale load to the previous block's FMA (measured:
/// Q4_0 at a third of its speed).
///
/// # Safety
/// `p` must be valid for reading two bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_f16_x8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees two readable bytes; x86-64 is little-endian.
    let bits = unsafe { p.cast::<i16>().read_unaligned() };
    _mm256_cvtph_ps(_mm_set1_epi16(bits))
}

/// An f16 (two little-endian bytes at `p`) as f32, by F16C (see [`load_f16_x8`]).
///
/// # Safety
/// `p` must be valid for reading two bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes; x86-64 is little-endian.
    let bits = unsafe { p.cast::<i16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits)))
}

/// An f32 as the two little-endian bytes of an f16, rounded to nearest even (F16C), which is
/// what the reference's `half::f16::from_f32` gives for every finite value.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_bytes(x: f32) -> [u8; 2] {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    (_mm_cvtsi128_si32(h) as u16).to_le_bytes()
}

/// 32 unaligned bytes at `p`.
///
/// # Safety
/// `p` must be valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn loadu(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// 16 unaligned bytes at `p`.
///
/// # Safety
/// `p` must be valid for reading 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn loadu128(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(p.cast()) }
}

/// The 32 nibbles of 16 bytes at `p` as bytes 0..=15: low nibbles in lanes 0..16 (elements
/// 0..16 of a block), high nibbles in lanes 16..32 (elements 16..32).
///
/// # Safety
/// `p` must be valid for reading 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: forwarded to the caller.
    let b = unsafe { loadu128(p) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(b), b);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The 32 bits of `bits` as bytes: 0xFF where bit `i` is set, 0 elsewhere (lane `i`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Lane i takes byte i / 8 of `bits` (both 128-bit halves hold all four bytes).
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask)
}

/// Eight i32 sums of four u8 x i8 products each (`u` unsigned, at most 127 or any `s` below 128).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Eight i32 sums of four i8 x i8 products each (|x|, |y| <= 127, or x small).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

// ---- float rows ----

/// f32 x f32 over `n` elements (`nb` = n): four accumulators of eight.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` and `a` valid for `4 * n` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_raw(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (x, y) = (w.cast::<f32>(), a.cast::<f32>());
    // SAFETY: every read is of elements `< n` (caller's contract); loads are unaligned.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * k;
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(o)), _mm256_loadu_ps(y.add(o)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(y.add(i)), acc[0]);
            i += 8;
        }
        let mut sum = hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            sum += x.add(i).read_unaligned() * y.add(i).read_unaligned();
            i += 1;
        }
        sum
    }
}

/// f16 weights x f32 activations over `n` elements.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` valid for `2 * n` bytes, `a` for `4 * n`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_f32_raw(n: usize, w: *const u8, a: *const u8) -> f32 {
    let y = a.cast::<f32>();
    // SAFETY: every read is of elements `< n` (caller's contract); loads are unaligned.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * k;
                let xv = _mm256_cvtph_ps(loadu128(w.add(2 * o)));
                *acc = _mm256_fmadd_ps(xv, _mm256_loadu_ps(y.add(o)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let xv = _mm256_cvtph_ps(loadu128(w.add(2 * i)));
            acc[0] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(y.add(i)), acc[0]);
            i += 8;
        }
        let mut sum = hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            sum += load_f16(w.add(2 * i)) * y.add(i).read_unaligned();
            i += 1;
        }
        sum
    }
}

/// bf16 weights x f32 activations over `n` elements (bf16 is the top half of an f32).
///
/// # Safety
/// AVX2, FMA and F16C present; `w` valid for `2 * n` bytes, `a` for `4 * n`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16_f32_raw(n: usize, w: *const u8, a: *const u8) -> f32 {
    let y = a.cast::<f32>();
    // SAFETY: every read is of elements `< n` (caller's contract); loads are unaligned.
    unsafe {
        let widen = |p: *const u8| {
            let bits = _mm256_cvtepu16_epi32(loadu128(p));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        };
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            acc[0] = _mm256_fmadd_ps(widen(w.add(2 * i)), _mm256_loadu_ps(y.add(i)), acc[0]);
            let (wi, yi) = (w.add(2 * i + 16), y.add(i + 8));
            acc[1] = _mm256_fmadd_ps(widen(wi), _mm256_loadu_ps(yi), acc[1]);
            i += 16;
        }
        if i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(widen(w.add(2 * i)), _mm256_loadu_ps(y.add(i)), acc[0]);
            i += 8;
        }
        let mut sum = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
        while i < n {
            let b = u32::from(w.add(2 * i).cast::<u16>().read_unaligned());
            sum += f32::from_bits(b << 16) * y.add(i).read_unaligned();
            i += 1;
        }
        sum
    }
}

/// The f32 dot product of two slices (attention scores).
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32 lengths");
    // SAFETY: handed out only after runtime detection of AVX2, FMA and F16C; both slices hold
    // `a.len()` f32s.
    unsafe { dot_f32_raw(a.len(), a.as_ptr().cast(), b.as_ptr().cast()) }
}

/// `out[i] += s * x[i]`.
pub(super) fn scale_add(out: &mut [f32], x: &[f32], s: f32) {
    assert_eq!(out.len(), x.len(), "scale_add lengths");
    // SAFETY: handed out only after runtime detection of AVX2, FMA and F16C; both slices hold
    // `out.len()` f32s and `out` is exclusively borrowed.
    unsafe { scale_add_raw(out.len(), out.as_mut_ptr(), x.as_ptr(), s) }
}

/// # Safety
/// AVX2, FMA and F16C present; `out` and `x` valid for `n` f32s, `out` writable.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_add_raw(n: usize, out: *mut f32, x: *const f32, s: f32) {
    // SAFETY: every access is to elements `< n` (caller's contract); unaligned loads/stores.
    unsafe {
        let sv = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            let o = _mm256_fmadd_ps(sv, _mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(out.add(i)));
            _mm256_storeu_ps(out.add(i), o);
            i += 8;
        }
        while i < n {
            // Same rounding as the reference's `o += a * v` (no fused multiply-add there).
            *out.add(i) += s * *x.add(i);
            i += 1;
        }
    }
}

// ---- activation quantizers (bytes identical to crate::quant's references) ----

/// Packs four vectors of eight i32 into 32 saturated i8 (as `as i8` saturates), in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn pack_i32x32_to_i8(i: [__m256i; 4]) -> __m256i {
    // packs work per 128-bit lane, leaving 4-byte groups in the order 0 2 4 6 1 3 5 7.
    let p01 = _mm256_packs_epi32(i[0], i[1]);
    let p23 = _mm256_packs_epi32(i[2], i[3]);
    let p = _mm256_packs_epi16(p01, p23);
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Quantizes the 32 floats at `x` as the Q8_0 reference does; returns the f32 scale and
/// stores the quants at `qs`. With `sum`, also returns the sum of the stored quants.
///
/// # Safety
/// AVX2, FMA and F16C present; `x` valid for 32 f32 reads, `qs` for 32 byte writes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_q8(x: *const f32, qs: *mut u8) -> (f32, i32) {
    // SAFETY: reads x[0..32] and writes qs[0..32] (caller's contract), unaligned.
    unsafe {
        let v = [
            _mm256_loadu_ps(x),
            _mm256_loadu_ps(x.add(8)),
            _mm256_loadu_ps(x.add(16)),
            _mm256_loadu_ps(x.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let amax = _mm_cvtss_f32(m);
        // Scalar, as the reference: the same IEEE operations give the same bits.
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let lo = _mm256_set1_epi32(-128);
        let hi = _mm256_set1_epi32(127);
        let mut q = [_mm256_setzero_si256(); 4];
        let mut sum = _mm256_setzero_si256();
        for k in 0..4 {
            // Half to even, as the reference, spelled out rather than left to MXCSR.
            let v = _mm256_mul_ps(v[k], id);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let r = _mm256_cvtps_epi32(r);
            q[k] = _mm256_max_epi32(_mm256_min_epi32(r, hi), lo);
            sum = _mm256_add_epi32(sum, q[k]);
        }
        _mm256_storeu_si256(qs.cast(), pack_i32x32_to_i8(q));
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        (d, hsum_epi32_128(s))
    }
}

/// Q8_0 activations (34-byte blocks), bytes identical to `quant::q8_0::quantize_row`.
pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    let nb = src.len() / 32;
    assert!(
        nb * 32 == src.len() && dst.len() == nb * 34,
        "quantize Q8_0 lengths"
    );
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        // SAFETY: handed out only after runtime detection of AVX2, FMA and F16C; `x` holds 32
        // floats and `y` 34 bytes, of which the quants take the last 32.
        let d = unsafe { quantize_block_q8(x.as_ptr(), y.as_mut_ptr().add(2)).0 };
        // SAFETY: as above.
        y[..2].copy_from_slice(&unsafe { f16_bytes(d) });
    }
}

/// Q8_1 activations (36-byte blocks: d, s = d * sum(q), 32 i8), bytes identical to
/// `quant::q8_1::quantize_row` (`s` from the f32 `d`, not the f16-rounded one).
pub(super) fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    let nb = src.len() / 32;
    assert!(
        nb * 32 == src.len() && dst.len() == nb * 36,
        "quantize Q8_1 lengths"
    );
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(36)) {
        // SAFETY: handed out only after runtime detection of AVX2, FMA and F16C; `x` holds 32
        // floats and `y` 36 bytes, of which the quants take the last 32.
        let (d, sum) = unsafe { quantize_block_q8(x.as_ptr(), y.as_mut_ptr().add(4)) };
        // SAFETY: as above.
        let (db, sb) = unsafe { (f16_bytes(d), f16_bytes(sum as f32 * d)) };
        y[..2].copy_from_slice(&db);
        y[2..4].copy_from_slice(&sb);
    }
}
