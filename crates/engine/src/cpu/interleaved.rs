//! Weights repacked at load into groups of [`GROUP_ROWS`] rows interleaved block by block, and
//! the dot products that read them.
//!
//! Why: a plain AVX2 core (no VNNI) spends most of a Q4_1 matrix-vector product on the per-row
//! work of each block (one `vpmaddubsw` + `vpmaddwd` + convert + FMA per row and block, then a
//! horizontal sum), which left decode bound by instructions, not memory. With eight rows side by
//! side, lane `j` of every vector belongs to row `j`: one block of the group is four 32-byte
//! loads of nibbles against broadcast activation quads, the i16 partial sums add up without
//! widening, and the scales of the eight rows go through one convert, one multiply and two FMAs.
//! No horizontal sum is left: the accumulator's lanes are the eight results.
//!
//! Q4_1 group layout, per block index `b` of the rows (`160` bytes, the size of the eight
//! blocks it replaces):
//! - `d[8]` f16 (16 bytes), then `m[8]` f16 (16 bytes), row `j` at index `j`;
//! - four 32-byte vectors `v = 0..4`: bytes `4j..4j + 4` of vector `v` are bytes `4v..4v + 4`
//!   of row `j`'s 16 nibble bytes, so their low nibbles are quants `4v..4v + 4` and their high
//!   nibbles quants `16 + 4v..16 + 4v + 4`.
//!
//! The float operations are those of the row-major Q4_1 dot product (`quant::q4_1::vec_dot`,
//! itself ggml's AVX2 order), per row: eight lane accumulators, lane `l` taking
//! `fma(d_w * d_a, sum of elements 4l..4l + 4, acc_l)` block by block, a separate
//! `summs = fma(m_w, s_a, summs)` chain, and ggml's `hsum_float_8` of the lanes plus `summs` at
//! the end. Only which register holds what changes (here a vector holds one lane of eight
//! rows), so interleaved and row-major weights give the same bits, and the greedy tokens stay
//! llama.cpp's.
//!
//! Q5_0 group layout, per block index `b` (`176` bytes, eight 22-byte blocks):
//! - `d[8]` f16 (16 bytes);
//! - four 32-byte nibble vectors as Q4_1's (bytes `4j..4j + 4` of vector `v` are bytes
//!   `4v..4v + 4` of row `j`'s `qs`);
//! - one 32-byte vector of fifth bits: bit `l` of byte `4j + e` is row `j`'s `qh` bit `4l + e`,
//!   the fifth bit of element `4l + e`, which is element `e` of lane `l` (lanes `0..4` are the
//!   low nibbles of vectors `0..4`, lanes `4..8` the high nibbles), so lane `l`'s bits are one
//!   shift away from bit 4 of every byte.
//!
//! Its float operations are those of `quant::q5_0::vec_dot` (ggml's AVX2 order): eight lane
//! accumulators per row taking `fma(d_w * d_a, lane_sum, acc)` block by block, then
//! `hsum_float_8`.
//!
//! Q8_0 group layout, per block index `b` (`272` bytes, eight 34-byte blocks):
//! - `d[8]` f16 (16 bytes);
//! - eight 32-byte quant vectors `l = 0..8`: bytes `4j..4j + 4` of vector `l` are quants
//!   `4l..4l + 4` of row `j`, so vector `l` is lane `l` of all eight rows.
//!
//! Its float operations are those of `quant::q8_0::vec_dot` (ggml's AVX2 order), as Q5_0's.
//! This is the layout that pays most in batched decode: Gemma 3's tied 262144-row output
//! matrix is Q8_0, and eight sequences' tokens against it row by row spent a `vpsignb`,
//! `vpmaddubsw`, `vpmaddwd`, convert, multiply and FMA per row, token and block, plus a
//! horizontal sum per row and token; here the scale multiply is shared by eight rows and no
//! horizontal sum is left.

use half::f16;
use rayon::prelude::*;

use crate::quant::{BlockAcc8, GgmlType};

/// Rows per interleaved group.
pub const GROUP_ROWS: usize = 8;
/// Bytes of one interleaved Q4_1 block group (eight 20-byte blocks).
pub const Q4_1_GROUP_BLOCK: usize = GROUP_ROWS * 20;
/// Bytes of one interleaved Q5_0 block group (eight 22-byte blocks).
pub const Q5_0_GROUP_BLOCK: usize = GROUP_ROWS * 22;
/// Bytes of one interleaved Q8_0 block group (eight 34-byte blocks).
pub const Q8_0_GROUP_BLOCK: usize = GROUP_ROWS * 34;

/// `(n, group, a, a_stride, out, (row_stride, token_stride))`: the dot products of the
/// [`GROUP_ROWS`] rows of one interleaved group (`n` elements each) with the kernel's fixed
/// number of activation rows `a[t * a_stride..]`, written to
/// `out[j * row_stride + t * token_stride]`.
pub type GroupDotFn = fn(usize, &[u8], &[u8], usize, &mut [f32], (usize, usize));

/// The kernels of one interleaved format at one tier: one token, and a tile of `toks` tokens
/// (the same numbers, token by token).
#[derive(Clone, Copy, Debug)]
pub struct GroupKernels {
    pub one: GroupDotFn,
    pub tile: GroupDotFn,
    pub toks: usize,
    /// Narrower tiles for the tokens left over after whole tiles, widest first, each with its
    /// token count (reading the rows as `tile` does): with wide tiles, a batch of a few
    /// sequences, or the last few of a prompt, would otherwise run token by token.
    pub narrow: &'static [(GroupDotFn, usize)],
    /// What the tile reads after each activation row, if anything: `(extend, bytes per
    /// block)`, `extend(n, row, ext)` writing `ext` from the row's `n` elements. The caller
    /// appends it once per matrix call; `one` reads the plain rows.
    pub tile_ext: Option<(ActExtendFn, usize)>,
    /// Where the CPU runs 512-bit vectors: a kernel over two adjacent groups (`2 * GROUP_ROWS`
    /// rows, the second group's `n / 32` blocks right after the first's) and its token count,
    /// reading the activation rows as `tile` does. A vector holds one lane of sixteen rows, so
    /// each integer product, convert and FMA serves twice the rows of the 256-bit tiles'; the
    /// bits are the same.
    pub two_groups: Option<(GroupDotFn, usize)>,
}

/// `(n, activation row, extension)`: see [`GroupKernels::tile_ext`].
pub type ActExtendFn = fn(usize, &[u8], &mut [u8]);

/// Bytes per block of a lane-bias extension ([`q5_0_lane_bias`], [`q8_0_lane_bias`]): one i32
/// per lane.
pub const LANE_BIAS_BLOCK: usize = 32;

/// For a Q8_0 row of `n` elements: per block, per lane `l`, `-16 * (y[4l] + .. + y[4l + 3])`
/// as a little-endian i32. A kernel that takes Q5_0's quants unsigned (`q + 16`, 0..=31)
/// starts each lane sum there, so `bias + sum((q + 16) * y) = sum(q * y)` exactly.
pub fn q5_0_lane_bias(n: usize, row: &[u8], ext: &mut [u8]) {
    lane_bias(n, row, ext, 16);
}

/// [`q5_0_lane_bias`] for Q8_0 weights taken unsigned (`q + 128`, 0..=255):
/// `-128 * (y[4l] + .. + y[4l + 3])`, so `bias + sum((q + 128) * y) = sum(q * y)` exactly
/// (`|sum| <= 4 * 255 * 128` is far inside i32).
pub fn q8_0_lane_bias(n: usize, row: &[u8], ext: &mut [u8]) {
    lane_bias(n, row, ext, 128);
}

/// Per block of the Q8_0 row, per lane, `-offset * (sum of the lane's four quants)`.
fn lane_bias(n: usize, row: &[u8], ext: &mut [u8], offset: i32) {
    let nb = n / 32;
    for (blk, e) in row[..nb * 34]
        .chunks_exact(34)
        .zip(ext[..nb * LANE_BIAS_BLOCK].chunks_exact_mut(LANE_BIAS_BLOCK))
    {
        for (l, e) in e.chunks_exact_mut(4).enumerate() {
            let sum: i32 = blk[2 + 4 * l..][..4]
                .iter()
                .map(|&b| i32::from(b as i8))
                .sum();
            e.copy_from_slice(&(-offset * sum).to_le_bytes());
        }
    }
}

/// Whether weights of `ty` can be interleaved at all (the format and a whole number of groups).
pub fn can_interleave(ty: GgmlType, n_out: usize) -> bool {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0)
        && n_out.is_multiple_of(GROUP_ROWS)
        && n_out > 0
}

/// Repack a row-major matrix of `ty` (`n_out` rows of `n_in` elements) into groups; `None`
/// when the format or the shape does not fit.
pub fn interleave(ty: GgmlType, src: &[u8], n_in: usize, n_out: usize) -> Option<Vec<u8>> {
    interleave_releasing(ty, src, n_in, n_out, |_| {})
}

/// `(eight source rows, row bytes, group)`: repack one group.
type PackFn = fn(&[u8], usize, &mut [u8]);

/// Source rows repacked per step of [`interleave_releasing`]: 512 groups, a few MiB.
const CHUNK_GROUPS: usize = 512;

/// [`interleave`] on the caller's rayon pool, handing each chunk of source rows to `release`
/// as soon as it is repacked.
/// The copy's pages become resident only as they are written (a zeroed allocation), so a
/// caller that gives the file's pages back chunk by chunk holds one copy of the matrix plus a
/// chunk at any time, never two whole copies (Gemma 3's tied output matrix is 171 MiB).
pub fn interleave_releasing(
    ty: GgmlType,
    src: &[u8],
    n_in: usize,
    n_out: usize,
    release: impl Fn(&[u8]) + Sync,
) -> Option<Vec<u8>> {
    let (block_bytes, pack): (usize, PackFn) = match ty {
        GgmlType::Q4_1 => (20, pack_q4_1),
        GgmlType::Q5_0 => (22, pack_q5_0),
        GgmlType::Q8_0 => (34, pack_q8_0),
        _ => return None,
    };
    let nb = n_in / 32;
    let rb = nb * block_bytes;
    if nb * 32 != n_in || !can_interleave(ty, n_out) || src.len() != rb * n_out {
        return None;
    }
    let mut dst = vec![0u8; src.len()];
    let chunk = rb * GROUP_ROWS * CHUNK_GROUPS;
    src.par_chunks(chunk)
        .zip(dst.par_chunks_mut(chunk))
        .for_each(|(schunk, dchunk)| {
            for (srows, drows) in schunk
                .chunks_exact(rb * GROUP_ROWS)
                .zip(dchunk.chunks_exact_mut(rb * GROUP_ROWS))
            {
                pack(srows, rb, drows);
            }
            release(schunk);
        });
    Some(dst)
}

/// One Q4_1 group: eight rows of `rb` bytes from `srows` into `drows` (layout in the module
/// docs).
fn pack_q4_1(srows: &[u8], rb: usize, drows: &mut [u8]) {
    for (b, d) in drows.chunks_exact_mut(Q4_1_GROUP_BLOCK).enumerate() {
        for j in 0..GROUP_ROWS {
            let blk = &srows[j * rb + b * 20..][..20];
            d[2 * j..2 * j + 2].copy_from_slice(&blk[0..2]);
            d[16 + 2 * j..16 + 2 * j + 2].copy_from_slice(&blk[2..4]);
            for v in 0..4 {
                d[32 + 32 * v + 4 * j..][..4].copy_from_slice(&blk[4 + 4 * v..][..4]);
            }
        }
    }
}

/// One Q5_0 group (layout in the module docs).
fn pack_q5_0(srows: &[u8], rb: usize, drows: &mut [u8]) {
    for (b, d) in drows.chunks_exact_mut(Q5_0_GROUP_BLOCK).enumerate() {
        for j in 0..GROUP_ROWS {
            let blk = &srows[j * rb + b * 22..][..22];
            d[2 * j..2 * j + 2].copy_from_slice(&blk[0..2]);
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            for v in 0..4 {
                d[16 + 32 * v + 4 * j..][..4].copy_from_slice(&blk[6 + 4 * v..][..4]);
            }
            for e in 0..4 {
                d[144 + 4 * j + e] = (0..8).map(|l| (((qh >> (4 * l + e)) & 1) as u8) << l).sum();
            }
        }
    }
}

/// One Q8_0 group (layout in the module docs).
fn pack_q8_0(srows: &[u8], rb: usize, drows: &mut [u8]) {
    for (b, d) in drows.chunks_exact_mut(Q8_0_GROUP_BLOCK).enumerate() {
        for j in 0..GROUP_ROWS {
            let blk = &srows[j * rb + b * 34..][..34];
            d[2 * j..2 * j + 2].copy_from_slice(&blk[0..2]);
            for l in 0..8 {
                d[16 + 32 * l + 4 * j..][..4].copy_from_slice(&blk[2 + 4 * l..][..4]);
            }
        }
    }
}

/// The scalar reference of `ty`'s groups: one group against one activation row.
/// Panics if `ty` has no interleaved layout or the buffers are short.
pub fn group_ref(ty: GgmlType, n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::Q4_1 => q4_1_group_ref(n, w, a, out),
        GgmlType::Q5_0 => q5_0_group_ref(n, w, a, out),
        GgmlType::Q8_0 => q8_0_group_ref(n, w, a, out),
        _ => panic!("no interleaved layout for {ty:?}"),
    }
}

/// The scalar reference: one interleaved Q5_0 group against one Q8_0 activation row.
/// Panics if the buffers are shorter than `n` elements need.
pub fn q5_0_group_ref(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
    let nb = n / 32;
    assert!(
        nb * 32 == n
            && w.len() >= nb * Q5_0_GROUP_BLOCK
            && a.len() >= nb * 34
            && out.len() >= GROUP_ROWS
    );
    let mut acc = [BlockAcc8::default(); GROUP_ROWS];
    for b in 0..nb {
        let x = &w[b * Q5_0_GROUP_BLOCK..][..Q5_0_GROUP_BLOCK];
        let y = &a[b * 34..][..34];
        let yd = f16_at(y, 0);
        for (j, acc) in acc.iter_mut().enumerate() {
            let mut prods = [0i32; 32];
            for (k, p) in prods.iter_mut().enumerate() {
                let (l, e) = (k / 4, k % 4);
                let byte = x[16 + 32 * (l % 4) + 4 * j + e];
                let nib = if l < 4 { byte & 0x0F } else { byte >> 4 };
                let fifth = (x[144 + 4 * j + e] >> l) & 1;
                let q = i32::from(nib | (fifth << 4)) - 16;
                *p = q * i32::from(y[2 + k] as i8);
            }
            acc.add_block(f16_at(x, 2 * j) * yd, &prods);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = acc.sum();
    }
}

/// The scalar reference: one interleaved Q8_0 group against one Q8_0 activation row.
/// Panics if the buffers are shorter than `n` elements need.
pub fn q8_0_group_ref(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
    let nb = n / 32;
    assert!(
        nb * 32 == n
            && w.len() >= nb * Q8_0_GROUP_BLOCK
            && a.len() >= nb * 34
            && out.len() >= GROUP_ROWS
    );
    let mut acc = [BlockAcc8::default(); GROUP_ROWS];
    for b in 0..nb {
        let x = &w[b * Q8_0_GROUP_BLOCK..][..Q8_0_GROUP_BLOCK];
        let y = &a[b * 34..][..34];
        let yd = f16_at(y, 0);
        for (j, acc) in acc.iter_mut().enumerate() {
            let mut prods = [0i32; 32];
            for (k, p) in prods.iter_mut().enumerate() {
                let (l, e) = (k / 4, k % 4);
                let q = i32::from(x[16 + 32 * l + 4 * j + e] as i8);
                *p = q * i32::from(y[2 + k] as i8);
            }
            acc.add_block(f16_at(x, 2 * j) * yd, &prods);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = acc.sum();
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The scalar reference: one interleaved Q4_1 group against one Q8_1 activation row.
/// Panics if the buffers are shorter than `n` elements need.
pub fn q4_1_group_ref(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
    let nb = n / 32;
    assert!(
        nb * 32 == n
            && w.len() >= nb * Q4_1_GROUP_BLOCK
            && a.len() >= nb * 36
            && out.len() >= GROUP_ROWS
    );
    let mut acc = [BlockAcc8::default(); GROUP_ROWS];
    let mut summs = [0.0f32; GROUP_ROWS];
    for b in 0..nb {
        let x = &w[b * Q4_1_GROUP_BLOCK..][..Q4_1_GROUP_BLOCK];
        let y = &a[b * 36..][..36];
        let yd = f16_at(y, 0);
        let ys = f16_at(y, 2);
        for (j, (acc, summs)) in acc.iter_mut().zip(&mut summs).enumerate() {
            *summs = f16_at(x, 16 + 2 * j).mul_add(ys, *summs);
            let mut prods = [0i32; 32];
            for v in 0..4 {
                for e in 0..4 {
                    let q = x[32 + 32 * v + 4 * j + e];
                    let k = 4 * v + e;
                    prods[k] = i32::from(q & 0x0F) * i32::from(y[4 + k] as i8);
                    prods[16 + k] = i32::from(q >> 4) * i32::from(y[20 + k] as i8);
                }
            }
            acc.add_block(f16_at(x, 2 * j) * yd, &prods);
        }
    }
    for ((o, acc), m) in out.iter_mut().zip(acc).zip(summs) {
        *o = acc.sum() + m;
    }
}

/// The reference kernels of one layout: `$name` runs `$group_ref` for one token (a
/// [`GroupDotFn`]), and `$kernels` uses it for every width.
macro_rules! reference_kernels {
    ($(#[$doc:meta])* $kernels:ident, $name:ident, $group_ref:ident) => {
        #[doc = concat!("[`", stringify!($group_ref), "`] as a [`GroupDotFn`] for one token.")]
        pub fn $name(
            n: usize,
            w: &[u8],
            a: &[u8],
            _a_stride: usize,
            out: &mut [f32],
            (rs, _): (usize, usize),
        ) {
            let mut r = [0.0f32; GROUP_ROWS];
            $group_ref(n, w, a, &mut r);
            for (j, v) in r.into_iter().enumerate() {
                out[j * rs] = v;
            }
        }

        $(#[$doc])*
        pub const $kernels: GroupKernels = GroupKernels {
            one: $name,
            tile: $name,
            toks: 1,
            narrow: &[],
            tile_ext: None,
            two_groups: None,
        };
    };
}

reference_kernels!(
    /// The reference kernels (the scalar tier's, and any tier without SIMD ones).
    Q4_1_REF,
    q4_1_group_ref_one,
    q4_1_group_ref
);
reference_kernels!(
    /// The Q5_0 reference kernels.
    Q5_0_REF,
    q5_0_group_ref_one,
    q5_0_group_ref
);
reference_kernels!(
    /// The Q8_0 reference kernels.
    Q8_0_REF,
    q8_0_group_ref_one,
    q8_0_group_ref
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_row, vec_dot};

    /// The interleaved reference computes each row's dot product to the bit of the row-major
    /// Q4_1 reference.
    #[test]
    fn interleaved_reference_matches_row_major_dot() {
        for ty in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
            check_reference(ty);
        }
    }

    fn check_reference(ty: GgmlType) {
        let (n_in, n_out) = (256, 16);
        let wf: Vec<f32> = (0..n_in * n_out)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let rb = ty.row_bytes(n_in).unwrap();
        let mut w = vec![0u8; rb * n_out];
        for (s, d) in wf.chunks_exact(n_in).zip(w.chunks_exact_mut(rb)) {
            quantize_row(ty, s, d).unwrap();
        }
        let x: Vec<f32> = (0..n_in).map(|i| ((i as f32) * 0.11).cos() * 3.0).collect();
        let act = ty.vec_dot_type();
        let mut a = vec![0u8; act.row_bytes(n_in).unwrap()];
        quantize_row(act, &x, &mut a).unwrap();
        let packed = interleave(ty, &w, n_in, n_out).unwrap();
        for g in 0..n_out / GROUP_ROWS {
            let mut out = [0.0f32; GROUP_ROWS];
            group_ref(ty, n_in, &packed[g * rb * GROUP_ROWS..], &a, &mut out);
            for (j, got) in out.iter().enumerate() {
                let r = g * GROUP_ROWS + j;
                let want = vec_dot(ty, n_in, &w[r * rb..(r + 1) * rb], &a);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{ty:?} row {r}: {got} vs {want}"
                );
            }
        }
        assert!(interleave(ty, &w, n_in, n_out - 1).is_none());
        assert!(interleave(ty, &w[..rb * 4], n_in, 4).is_none());
    }
}
