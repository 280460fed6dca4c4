//! Weight matrix times activations on the thread pool: the hot path of every forward pass.
//!
//! A weight matrix is `n_out` rows of `n_in` elements in its GGUF block format. Activations are
//! quantized once per matrix input into the weight type's `vec_dot_type` (Q8_0/Q8_1/Q8_K, or
//! plain f32 for float weights) and shared by every matrix that reads the same input.
//!
//! Decode (one token) is a matrix-vector product split over row blocks. Prefill is the same
//! loop with a token tile inside each row block, so a block of weight rows stays in L1 while a
//! tile of activations streams from L2; results land transposed `(n_out, n_tok)` in a scratch
//! buffer (each task owns whole rows there, so it is safe to split) and are transposed back.

use rayon::prelude::*;

use crate::cpu::interleaved::{GroupDotFn, GroupKernels, GROUP_ROWS};
use crate::cpu::{Kernels, DECODE_ROWS, TILE_ROWS, TILE_TOKS};
use crate::quant::GgmlType;

/// A weight matrix: rows in the file's order, or interleaved in groups of
/// [`GROUP_ROWS`] rows (`cpu::interleaved`; repacked at load for tiers with kernels for it).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    pub data: &'a [u8],
    pub interleaved: bool,
}

/// Bytes of one activation row of `n` elements quantized for weights of type `ty`.
pub fn act_row_bytes(ty: GgmlType, n: usize) -> usize {
    match ty.vec_dot_type() {
        GgmlType::F32 => n * 4,
        act => act.row_bytes(n).unwrap_or(0),
    }
}

/// Quantize `n_tok` rows of `x` (each `n` long) into `dst` for weights of type `ty`.
pub fn quantize_acts(k: &Kernels, ty: GgmlType, x: &[f32], n: usize, dst: &mut [u8]) {
    let rb = act_row_bytes(ty, n);
    let n_tok = x.len() / n;
    let dst = &mut dst[..rb * n_tok];
    match ty.vec_dot_type() {
        GgmlType::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(x) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        act => {
            let q = k.quantize(act);
            if n_tok == 1 {
                q(x, dst);
            } else {
                dst.par_chunks_mut(rb)
                    .zip(x.par_chunks(n))
                    .with_min_len(super::rows_per_task(n))
                    .for_each(|(d, row)| q(row, d));
            }
        }
    }
}

/// Rows per task: small enough to balance two to sixteen threads on 576-row matrices, large
/// enough that the per-task cost of rayon stays well under the work.
const ROWS_PER_TASK: usize = 16;
/// Decode: `out_m = W_m * act` for matrices that all read the same activation row (Q, K and V;
/// gate and up), as one parallel pass over all their row blocks. One fork-join instead of one
/// per matrix: with a few microseconds of work per matrix, the pool's wake-up and join are
/// what a token would otherwise wait on. Every matrix must share one `vec_dot_type`.
pub fn matvec_many(k: &Kernels, mats: &mut [(MatRef<'_>, &mut [f32])], act: &[u8]) {
    debug_assert!(mats
        .windows(2)
        .all(|m| m[0].0.ty.vec_dot_type() == m[1].0.ty.vec_dot_type()));
    mats.par_iter_mut().for_each(|(w, out)| {
        let w = *w;
        if w.interleaved {
            matvec_groups(w, group_kernels(k, w), out, act);
            return;
        }
        let dot = k.vec_dot(w.ty);
        let rows = k.vec_dot_rows(w.ty);
        let wrb = w.data.len() / w.n_out;
        let arb = act_row_bytes(w.ty, w.n_in);
        let a = &act[..arb];
        let n_in = w.n_in;
        out[..w.n_out]
            .par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(blk, o)| {
                let r0 = blk * ROWS_PER_TASK;
                let mut i = 0;
                if let Some(rows) = rows {
                    while i + DECODE_ROWS <= o.len() {
                        let wrows = &w.data[(r0 + i) * wrb..(r0 + i + DECODE_ROWS) * wrb];
                        rows(n_in, wrows, wrb, a, arb, &mut o[i..i + DECODE_ROWS], 1);
                        i += DECODE_ROWS;
                    }
                }
                for (j, v) in o.iter_mut().enumerate().skip(i) {
                    let r = r0 + j;
                    *v = dot(n_in, &w.data[r * wrb..(r + 1) * wrb], a);
                }
            });
    });
}

fn group_kernels(k: &Kernels, w: MatRef<'_>) -> GroupKernels {
    match k.group_kernels(w.ty) {
        Some(g) => g,
        None => panic!("{:?} weights interleaved, but no kernels read them", w.ty),
    }
}

/// Bytes of one group of [`GROUP_ROWS`] interleaved rows.
fn group_bytes(w: MatRef<'_>) -> usize {
    w.data.len() / (w.n_out / GROUP_ROWS)
}

/// Decode for an interleaved matrix: one group kernel call per eight rows.
fn matvec_groups(w: MatRef<'_>, g: GroupKernels, out: &mut [f32], act: &[u8]) {
    let gb = group_bytes(w);
    let arb = act_row_bytes(w.ty, w.n_in);
    let a = &act[..arb];
    out[..w.n_out]
        .par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(blk, o)| {
            let g0 = blk * ROWS_PER_TASK / GROUP_ROWS;
            for (gi, og) in o.chunks_exact_mut(GROUP_ROWS).enumerate() {
                (g.one)(w.n_in, &w.data[(g0 + gi) * gb..][..gb], a, arb, og, (1, 1));
            }
        });
}

/// An interleaved matrix for a few tokens (a batched decode step, a prompt chunk), on the terms
/// of [`matmul`]: each task takes [`ROWS_PER_TASK`] rows; per token block each group stays in
/// L1 while its kernels take the tokens tile by tile ([`group_tiles`]; the same numbers
/// whichever kernel takes a token) into a block on the stack (`[tokens][rows]`, a token's
/// rows side by side), whose runs are then copied to their rows of `out`. A transposed
/// scratch copied back after had cost two more passes over the output: for Gemma's LM head,
/// 8 MiB written, read and written again per decode step of eight sequences.
fn matmul_groups(w: MatRef<'_>, g: GroupKernels, act: &[u8], n_tok: usize, out: &mut [f32]) {
    let gb = group_bytes(w);
    let arb = act_row_bytes(w.ty, w.n_in);
    let ext_buf;
    let (act, arb) = match extend_acts(w, g, act, n_tok) {
        Some((buf, erb)) => {
            ext_buf = buf;
            (&ext_buf[..], erb)
        }
        None => (act, arb),
    };
    let n_out = w.n_out;
    let out = DisjointRows::new(&mut out[..n_tok * n_out]);
    (0..n_out.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|blk| {
            let r0 = blk * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(n_out - r0);
            let groups = &w.data[r0 / GROUP_ROWS * gb..][..rows / GROUP_ROWS * gb];
            // Small enough that zeroing it per task costs nothing (a 64-token block, zeroed
            // per task, had cost more than the copy it saved); the group stays in L1 across
            // blocks anyway.
            let mut block = [0.0f32; ROWS_PER_TASK * BLOCK_TOKENS];
            for t0 in (0..n_tok).step_by(BLOCK_TOKENS) {
                let t1 = (t0 + BLOCK_TOKENS).min(n_tok);
                groups_tiles(g, gb, groups, t0, t1, |kernel, wg, gi, t| {
                    let ob = &mut block[(t - t0) * rows + gi * GROUP_ROWS..];
                    kernel(w.n_in, wg, &act[t * arb..], arb, ob, (1, rows));
                });
                for t in t0..t1 {
                    out.write(t * n_out + r0, &block[(t - t0) * rows..][..rows]);
                }
            }
        });
}

/// Tokens per stack block of [`matmul_groups`]: a decode step of up to eight sequences in one.
const BLOCK_TOKENS: usize = 8;

/// An output matrix that tasks write in disjoint runs (each task its own rows of every
/// token), through a raw pointer: the runs of one task are not one slice, and `&mut` slices
/// of each would cost a table of them per call.
struct DisjointRows<'a> {
    ptr: *mut f32,
    len: usize,
    /// Holds the borrow of the output for as long as the writers run.
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `write` is the only access, and its callers write disjoint runs (see `write`).
unsafe impl Sync for DisjointRows<'_> {}

impl<'a> DisjointRows<'a> {
    fn new(out: &'a mut [f32]) -> Self {
        DisjointRows {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _out: std::marker::PhantomData,
        }
    }

    /// `out[at..at + src.len()] = src`. No two calls, on any threads, may write the same
    /// element while the borrow `new` took lasts: `matmul_groups`' tasks own their rows.
    fn write(&self, at: usize, src: &[f32]) {
        assert!(at + src.len() <= self.len, "run past the output");
        // SAFETY: in bounds (checked), the output is borrowed for `'a` (no other access), and the
        // callers' runs are disjoint, so no element is written twice or read concurrently.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(at), src.len()) }
    }
}

/// The kernel calls of one group for tokens `t0..t1`, widest first: whole tiles, then the
/// narrow ones, then single tokens. `call(kernel, t)` runs `kernel` on the tokens from `t`; every
/// kernel gives each token the same bits, so the split changes only the speed.
fn group_tiles(g: GroupKernels, t0: usize, t1: usize, mut call: impl FnMut(GroupDotFn, usize)) {
    let mut t = t0;
    let tiles = std::iter::once((g.tile, g.toks)).chain(g.narrow.iter().copied());
    for (kernel, toks) in tiles.chain([(g.one, 1)]) {
        while t + toks <= t1 {
            call(kernel, t);
            t += toks;
        }
    }
}

/// The kernel calls of consecutive groups `w` (whole groups of `gb` bytes) for tokens
/// `t0..t1`: each pair of groups by the two-group kernel, if there is one, for as many whole
/// tiles of its tokens as fit, then each group's remaining tokens by [`group_tiles`].
/// `call(kernel, weights, group, t)` runs `kernel` on the weights from group `group` (of
/// `w`) and the tokens from `t`; every kernel gives each (row, token) the same bits.
fn groups_tiles(
    g: GroupKernels,
    gb: usize,
    w: &[u8],
    t0: usize,
    t1: usize,
    mut call: impl FnMut(GroupDotFn, &[u8], usize, usize),
) {
    for (pi, wp) in w.chunks(2 * gb).enumerate() {
        let mut t = t0;
        if let (Some((two, toks)), true) = (g.two_groups, wp.len() == 2 * gb) {
            while t + toks <= t1 {
                call(two, wp, 2 * pi, t);
                t += toks;
            }
        }
        for (gi, wg) in wp.chunks_exact(gb).enumerate() {
            group_tiles(g, t, t1, |kernel, t| call(kernel, wg, 2 * pi + gi, t));
        }
    }
}

/// The tile's extended activation rows and their length, if its kernels read any
/// ([`GroupKernels::tile_ext`]), built once for all row groups.
fn extend_acts(
    w: MatRef<'_>,
    g: GroupKernels,
    act: &[u8],
    n_tok: usize,
) -> Option<(Vec<u8>, usize)> {
    let (extend, per_block) = g.tile_ext?;
    let arb = act_row_bytes(w.ty, w.n_in);
    let erb = arb + w.n_in / 32 * per_block;
    let mut buf = vec![0u8; erb * n_tok];
    buf.par_chunks_mut(erb)
        .zip(act[..arb * n_tok].par_chunks(arb))
        .with_min_len(super::rows_per_task(w.n_in))
        .for_each(|(e, a)| {
            e[..arb].copy_from_slice(a);
            extend(w.n_in, a, &mut e[arb..]);
        });
    Some((buf, erb))
}

/// Prefill for an interleaved matrix of many tokens, written straight into `out`
/// (`(n_tok, n_out)`, eight rows of a token side by side in one store): each task owns a block
/// of [`TOKEN_TILE`] tokens and takes every row group for it, so no task shares an output row
/// and nothing is transposed. With fewer tokens than tasks need, [`matmul_groups`] splits by
/// rows instead. The kernels and so the bits are the same.
fn matmul_groups_by_tokens(
    w: MatRef<'_>,
    g: GroupKernels,
    act: &[u8],
    n_tok: usize,
    out: &mut [f32],
) {
    let gb = group_bytes(w);
    let n_out = w.n_out;
    let ext_buf;
    let (act, arb) = match extend_acts(w, g, act, n_tok) {
        Some((buf, erb)) => {
            ext_buf = buf;
            (&ext_buf[..], erb)
        }
        None => (act, act_row_bytes(w.ty, w.n_in)),
    };
    out[..n_tok * n_out]
        .par_chunks_mut(TOKEN_TILE * n_out)
        .enumerate()
        .for_each(|(tb, o)| {
            let t0 = tb * TOKEN_TILE;
            let nt = o.len() / n_out;
            groups_tiles(g, gb, w.data, 0, nt, |kernel, wg, gi, t| {
                let a = &act[(t0 + t) * arb..];
                let r0 = gi * GROUP_ROWS;
                kernel(w.n_in, wg, a, arb, &mut o[t * n_out + r0..], (1, n_out));
            });
        });
}

/// Tokens per tile in prefill: 64 quantized activation rows of a few hundred bytes fit in L2.
const TOKEN_TILE: usize = 64;

/// `out[t][r] = dot(w[r], act[t])` for `n_tok` tokens. `out` is `(n_tok, n_out)`;
/// `scratch` needs `n_out * n_tok` floats when `n_tok > 1`.
pub fn matmul(
    k: &Kernels,
    w: MatRef<'_>,
    act: &[u8],
    n_tok: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let dot = k.vec_dot(w.ty);
    let wrb = w.data.len() / w.n_out;
    let arb = act_row_bytes(w.ty, w.n_in);
    debug_assert_eq!(wrb * w.n_out, w.data.len());
    debug_assert!(act.len() >= arb * n_tok);
    let n_in = w.n_in;
    if n_tok == 1 {
        matvec_many(k, &mut [(w, &mut out[..w.n_out])], act);
        return;
    }
    if w.interleaved && n_tok >= TOKEN_TILE * rayon::current_num_threads() {
        matmul_groups_by_tokens(
            w,
            group_kernels(k, w),
            act,
            n_tok,
            &mut out[..n_tok * w.n_out],
        );
        return;
    }
    if w.interleaved {
        matmul_groups(w, group_kernels(k, w), act, n_tok, out);
        return;
    }
    let tile = k.vec_dot_tile(w.ty);
    let t_out = &mut scratch[..w.n_out * n_tok];
    t_out
        .par_chunks_mut(ROWS_PER_TASK * n_tok)
        .enumerate()
        .for_each(|(blk, o)| {
            let r0 = blk * ROWS_PER_TASK;
            let rows = o.len() / n_tok;
            for t0 in (0..n_tok).step_by(TOKEN_TILE) {
                let t1 = (t0 + TOKEN_TILE).min(n_tok);
                let mut i = 0;
                // Whole tiles first, then the pairs left over at the edges one by one.
                if let Some(tile) = tile {
                    while i + TILE_ROWS <= rows {
                        let wrows = &w.data[(r0 + i) * wrb..(r0 + i + TILE_ROWS) * wrb];
                        let mut t = t0;
                        while t + TILE_TOKS <= t1 {
                            let acts = &act[t * arb..(t + TILE_TOKS) * arb];
                            tile(n_in, wrows, wrb, acts, arb, &mut o[i * n_tok + t..], n_tok);
                            t += TILE_TOKS;
                        }
                        // The tokens left over: one more tile ending at `t1`, overlapping
                        // tokens already done (it writes the same bits again), where the
                        // prompt is that long; one by one otherwise.
                        if t < t1 && t1 >= TILE_TOKS {
                            let tt = t1 - TILE_TOKS;
                            let acts = &act[tt * arb..t1 * arb];
                            tile(n_in, wrows, wrb, acts, arb, &mut o[i * n_tok + tt..], n_tok);
                            t = t1;
                        }
                        for r in i..i + TILE_ROWS {
                            let wrow = &w.data[(r0 + r) * wrb..(r0 + r + 1) * wrb];
                            for t in t..t1 {
                                o[r * n_tok + t] = dot(n_in, wrow, &act[t * arb..(t + 1) * arb]);
                            }
                        }
                        i += TILE_ROWS;
                    }
                }
                for i in i..rows {
                    let r = r0 + i;
                    let wrow = &w.data[r * wrb..(r + 1) * wrb];
                    for t in t0..t1 {
                        o[i * n_tok + t] = dot(n_in, wrow, &act[t * arb..(t + 1) * arb]);
                    }
                }
            }
        });
    transpose_back(scratch, w.n_out, n_tok, out);
}

/// `out[t][r] = t_out[r][t]`, on the pool, in blocks of 16 tokens x 64 rows so that each
/// cache line of `t_out` read serves 16 outputs (a plain row-by-row copy missed L1 on every
/// element and was a serial 5% of Gemma's prefill).
fn transpose_back(t_out: &[f32], n_out: usize, n_tok: usize, out: &mut [f32]) {
    const TOKS: usize = 16;
    const ROWS: usize = 64;
    out[..n_tok * n_out]
        .par_chunks_mut(TOKS * n_out)
        .enumerate()
        .for_each(|(b, o)| {
            let t0 = b * TOKS;
            for r0 in (0..n_out).step_by(ROWS) {
                let r1 = (r0 + ROWS).min(n_out);
                for (dt, orow) in o.chunks_exact_mut(n_out).enumerate() {
                    let t = t0 + dt;
                    for (r, v) in orow[r0..r1].iter_mut().enumerate() {
                        *v = t_out[(r0 + r) * n_tok + t];
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    /// Prefill (tiles, edge rows and tokens, the blocked transpose) must give every token
    /// exactly what decode gives it alone, for types with and without a tile kernel.
    #[test]
    fn many_tokens_equal_one_at_a_time_bit_for_bit() {
        let k = Kernels::detect();
        // Odd rows and tokens: every edge path runs (70 = a 64-token block, then 6 tokens
        // taken by a tile overlapping the block before; 5 = fewer tokens than a tile).
        let n_out = 37;
        for (ty, n_tok) in [
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q8_0,
        ]
        .into_iter()
        .flat_map(|ty| [(ty, 70), (ty, 5)])
        {
            let n_in = 512;
            let f = |i: usize, m: f32| ((i as f32) * m).sin();
            let wf: Vec<f32> = (0..n_in * n_out).map(|i| f(i, 0.37)).collect();
            let wrb = ty.row_bytes(n_in).unwrap();
            let mut data = vec![0u8; wrb * n_out];
            for (src, dst) in wf.chunks_exact(n_in).zip(data.chunks_exact_mut(wrb)) {
                quantize_row(ty, src, dst).unwrap();
            }
            let w = MatRef {
                ty,
                n_in,
                n_out,
                data: &data,
                interleaved: false,
            };
            check_prefill_equals_decode(&k, w, n_tok);
        }
    }

    /// The same for weights interleaved in row groups, on the reference and the SIMD kernels.
    #[test]
    fn interleaved_many_tokens_equal_one_at_a_time_bit_for_bit() {
        for ty in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
            check_interleaved_prefill(ty);
        }
    }

    fn check_interleaved_prefill(ty: GgmlType) {
        let (n_in, n_out) = (512, 40);
        let wrb = ty.row_bytes(n_in).unwrap();
        let mut data = vec![0u8; wrb * n_out];
        for (r, dst) in data.chunks_exact_mut(wrb).enumerate() {
            let src: Vec<f32> = (0..n_in)
                .map(|i| ((i + r * n_in) as f32 * 0.37).sin())
                .collect();
            quantize_row(ty, &src, dst).unwrap();
        }
        let packed = crate::cpu::interleaved::interleave(ty, &data, n_in, n_out).unwrap();
        let w = MatRef {
            ty,
            n_in,
            n_out,
            data: &packed,
            interleaved: true,
        };
        for k in [Kernels::detect(), Kernels::REFERENCE] {
            for n_tok in [70, 5, 3, 64 * rayon::current_num_threads() + 7] {
                check_prefill_equals_decode(&k, w, n_tok);
            }
        }
    }

    fn check_prefill_equals_decode(k: &Kernels, w: MatRef<'_>, n_tok: usize) {
        let (ty, n_in, n_out) = (w.ty, w.n_in, w.n_out);
        let f = |i: usize, m: f32| ((i as f32) * m).sin();
        let x: Vec<f32> = (0..n_in * n_tok).map(|i| f(i, 0.11) * 3.0).collect();
        let arb = act_row_bytes(ty, n_in);
        let mut act = vec![0u8; arb * n_tok];
        quantize_acts(k, ty, &x, n_in, &mut act);
        let mut out = vec![0.0f32; n_out * n_tok];
        let mut scratch = vec![0.0f32; n_out * n_tok];
        matmul(k, w, &act, n_tok, &mut out, &mut scratch);
        let mut one = vec![0.0f32; n_out];
        for t in 0..n_tok {
            matmul(k, w, &act[t * arb..], 1, &mut one, &mut []);
            for (r, (a, b)) in out[t * n_out..][..n_out].iter().zip(&one).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} token {t} row {r}");
            }
        }
    }

    /// One fused pass over several matrices gives each exactly what it gives alone, rows of
    /// every count (whole decode tiles, a remainder, fewer rows than one task).
    #[test]
    fn matvec_many_equals_each_matrix_alone() {
        let k = Kernels::detect();
        let n_in = 256;
        for (ty, other) in [
            (GgmlType::Q4_1, GgmlType::Q5_1),
            (GgmlType::Q8_0, GgmlType::Q4_0),
        ] {
            let shapes = [(ty, 37usize), (other, 5), (ty, 64)];
            let datas: Vec<Vec<u8>> = shapes
                .iter()
                .enumerate()
                .map(|(m, &(ty, n_out))| {
                    let wrb = ty.row_bytes(n_in).unwrap();
                    let mut data = vec![0u8; wrb * n_out];
                    for (r, dst) in data.chunks_exact_mut(wrb).enumerate() {
                        let src: Vec<f32> = (0..n_in)
                            .map(|i| ((i * 7 + r * 13 + m * 101) as f32 * 0.31).sin())
                            .collect();
                        quantize_row(ty, &src, dst).unwrap();
                    }
                    data
                })
                .collect();
            let mats: Vec<MatRef<'_>> = shapes
                .iter()
                .zip(&datas)
                .map(|(&(ty, n_out), data)| MatRef {
                    ty,
                    n_in,
                    n_out,
                    data,
                    interleaved: false,
                })
                .collect();
            let x: Vec<f32> = (0..n_in).map(|i| (i as f32 * 0.17).cos() * 2.0).collect();
            let mut act = vec![0u8; act_row_bytes(ty, n_in)];
            quantize_acts(&k, ty, &x, n_in, &mut act);
            let (mut a, mut b, mut c) = (vec![0.0f32; 37], vec![0.0f32; 5], vec![0.0f32; 64]);
            matvec_many(
                &k,
                &mut [(mats[0], &mut a), (mats[1], &mut b), (mats[2], &mut c)],
                &act,
            );
            for (w, fused) in mats.iter().zip([&a, &b, &c]) {
                let mut alone = vec![0.0f32; w.n_out];
                matmul(&k, *w, &act, 1, &mut alone, &mut []);
                let want = (0..w.n_out)
                    .map(|r| k.vec_dot(w.ty)(n_in, &w.data[r * w.data.len() / w.n_out..], &act));
                for (r, ((f, s), d)) in fused.iter().zip(&alone).zip(want).enumerate() {
                    assert_eq!(f.to_bits(), s.to_bits(), "{:?} row {r}", w.ty);
                    assert_eq!(
                        f.to_bits(),
                        d.to_bits(),
                        "{:?} row {r} against vec_dot",
                        w.ty
                    );
                }
            }
        }
    }
}
