//! The operations a forward pass is built from, one at a time, on one thread: the tile kernels
//! of prefill, whole matrix products (decode and a prefill tile of tokens), attention (decode
//! at a depth, and a prefill block), RMSNorm and RoPE. `kernels.rs` has the dot products.
//!
//! `cargo bench -p backstop-engine --bench ops [-- FILTER]`; ids are
//! `tile/{type}/{variant}/{n}` (one `TILE_ROWS x TILE_TOKS` call), `group/{type}/{variant}/{n}/t{toks}`
//! (eight interleaved rows by eight tokens, one
//! token per call (`t1`) or in tiles), `matmul/{type}/{n_out}x{n_in}/t{n_tok}`,
//! `attention/{decode|prefill|chunk|decode-step}/...`, `rms_norm/{n}`, `rope/{layout}/{heads}x{head_dim}`.
//! Shapes are SmolLM2-135M's (576 wide, 9 query heads, 3 KV heads of 64) and Gemma 3 270M's.

use std::hint::black_box;
use std::time::Duration;

use backstop_engine::cpu::interleaved::{self, GROUP_ROWS};
use backstop_engine::cpu::{Kernels, Variant, TILE_ROWS, TILE_TOKS};
use backstop_engine::ops::attention::{attention_with, AttnParams, F16_ACC_MAX_TOKENS};
use backstop_engine::ops::matmul::{act_row_bytes, matmul, quantize_acts, MatRef};
use backstop_engine::ops::norm::rms_norm;
use backstop_engine::ops::rope::{RopeCache, RopeLayout};
use backstop_engine::quant::{self, GgmlType};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn floats(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `rows` rows of `n` weights of `ty`, quantized from random floats.
fn weights(ty: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let x = floats(&mut StdRng::seed_from_u64(1), n * rows);
    let wrb = ty.row_bytes(n).unwrap();
    let mut w = vec![0u8; wrb * rows];
    for (src, dst) in x.chunks_exact(n).zip(w.chunks_exact_mut(wrb)) {
        quant::quantize_row(ty, src, dst).unwrap();
    }
    w
}

/// Everything runs on one thread: the per-core cost, free of scheduling noise.
fn one_thread() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
}

fn bench_tiles(c: &mut Criterion) {
    let mut g = c.benchmark_group("tile");
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let n = if ty.block_size() == 256 { 768 } else { 640 };
        let w = weights(ty, n, TILE_ROWS);
        let act = ty.vec_dot_type();
        let arb = act.row_bytes(n).unwrap();
        let mut a = vec![0u8; arb * TILE_TOKS];
        let x = floats(&mut StdRng::seed_from_u64(2), n * TILE_TOKS);
        for (src, dst) in x.chunks_exact(n).zip(a.chunks_exact_mut(arb)) {
            quant::quantize_row(act, src, dst).unwrap();
        }
        let mut out = vec![0.0f32; TILE_ROWS * TILE_TOKS];
        g.throughput(Throughput::Elements((TILE_ROWS * TILE_TOKS) as u64));
        for v in Variant::ALL.into_iter().filter(|v| v.is_supported()) {
            let Some(tile) = v.vec_dot_tile(ty) else {
                continue;
            };
            let wrb = w.len() / TILE_ROWS;
            g.bench_function(format!("{}/{v}/{n}", ty.name()), |b| {
                b.iter(|| {
                    tile(
                        n,
                        black_box(&w),
                        wrb,
                        black_box(&a),
                        arb,
                        &mut out,
                        TILE_TOKS,
                    )
                })
            });
        }
    }
    g.finish();
}

/// The interleaved group kernels of every variant this CPU runs, the same work as `tile/` per
/// element pair: eight rows by eight tokens, one at a time or in whole calls of each kernel's
/// own tile width, on activation rows extended as the tile reads them.
fn bench_groups(c: &mut Criterion) {
    let mut g = c.benchmark_group("group");
    for v in Variant::ALL.into_iter().filter(|v| v.is_supported()) {
        for ty in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
            let Some(gk) = v.group_kernels(ty) else {
                continue;
            };
            let n = 640;
            let packed = interleaved::interleave(ty, &weights(ty, n, GROUP_ROWS), n, GROUP_ROWS)
                .expect("a whole group");
            let act = ty.vec_dot_type();
            let arb = act.row_bytes(n).unwrap();
            let ext = gk.tile_ext.map_or(0, |(_, per_block)| n / 32 * per_block);
            let mut a = vec![0u8; (arb + ext) * 8];
            let x = floats(&mut StdRng::seed_from_u64(2), n * 8);
            for (src, dst) in x.chunks_exact(n).zip(a.chunks_exact_mut(arb + ext)) {
                let (row, tail) = dst.split_at_mut(arb);
                quant::quantize_row(act, src, row).unwrap();
                if let Some((extend, _)) = gk.tile_ext {
                    extend(n, row, tail);
                }
            }
            let stride = arb + ext;
            let mut out = vec![0.0f32; GROUP_ROWS * 8];
            g.throughput(Throughput::Elements((GROUP_ROWS * 8) as u64));
            g.bench_function(format!("{}/{v}/{n}/t1", ty.name()), |b| {
                b.iter(|| {
                    for t in 0..8 {
                        let a = black_box(&a[t * stride..]);
                        (gk.one)(n, black_box(&packed), a, stride, &mut out[t..], (8, 1));
                    }
                })
            });
            // Whole tiles within the eight tokens (a width that does not divide eight takes
            // fewer: compare elements per second).
            let tiled = 8 / gk.toks * gk.toks;
            g.throughput(Throughput::Elements((GROUP_ROWS * tiled) as u64));
            g.bench_function(format!("{}/{v}/{n}/t{}", ty.name(), gk.toks), |b| {
                b.iter(|| {
                    for t in (0..tiled).step_by(gk.toks) {
                        let a = black_box(&a[t * stride..]);
                        (gk.tile)(n, black_box(&packed), a, stride, &mut out[t..], (8, 1));
                    }
                })
            });
            if let Some((two, toks)) = gk.two_groups {
                let packed2 =
                    interleaved::interleave(ty, &weights(ty, n, 2 * GROUP_ROWS), n, 2 * GROUP_ROWS)
                        .expect("two whole groups");
                let mut out2 = vec![0.0f32; 2 * GROUP_ROWS * 8];
                // Sixteen rows: compare elements per second with the one-group tiles.
                let tiled = 8 / toks * toks;
                g.throughput(Throughput::Elements((2 * GROUP_ROWS * tiled) as u64));
                g.bench_function(format!("{}/{v}/{n}/two{toks}", ty.name()), |b| {
                    b.iter(|| {
                        for t in (0..tiled).step_by(toks) {
                            let a = black_box(&a[t * stride..]);
                            two(n, black_box(&packed2), a, stride, &mut out2[t..], (8, 1));
                        }
                    })
                });
            }
        }
    }
    g.finish();
}

fn bench_matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    let k = Kernels::detect();
    let pool = one_thread();
    // SmolLM2's gate/up (Q4_1, Q8_0), Gemma 3's FFN down projection (Q4_K, Q6_K).
    let shapes = [
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q8_0, 576, 1536),
        (GgmlType::Q4_K, 2048, 640),
        (GgmlType::Q6_K, 2048, 640),
    ];
    for (ty, n_in, n_out) in shapes {
        let data = weights(ty, n_in, n_out);
        let w = MatRef {
            ty,
            n_in,
            n_out,
            data: &data,
            interleaved: false,
        };
        for n_tok in [1usize, 8, 64] {
            let x = floats(&mut StdRng::seed_from_u64(3), n_in * n_tok);
            let mut act = vec![0u8; act_row_bytes(ty, n_in) * n_tok];
            quantize_acts(&k, ty, &x, n_in, &mut act);
            let mut out = vec![0.0f32; n_out * n_tok];
            let mut scratch = vec![0.0f32; n_out * n_tok];
            g.throughput(Throughput::Bytes((data.len() * n_tok) as u64));
            g.bench_function(format!("{}/{n_out}x{n_in}/t{n_tok}", ty.name()), |b| {
                b.iter(|| pool.install(|| matmul(&k, w, &act, n_tok, &mut out, &mut scratch)))
            });
        }
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    let pool = one_thread();
    let mut rng = StdRng::seed_from_u64(4);
    // (name, heads, kv heads, head size)
    for (name, n_head, n_head_kv, hd) in [("smollm2", 9, 3, 64), ("gemma3", 4, 1, 256)] {
        let p = AttnParams {
            n_head,
            n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: None,
            softcap: None,
        };
        let n_ctx = 4096;
        let f16s = |x: Vec<f32>| x.into_iter().map(half::f16::from_f32).collect::<Vec<_>>();
        let k = f16s(floats(&mut rng, n_ctx * n_head_kv * hd));
        let v = f16s(floats(&mut rng, n_ctx * n_head_kv * hd));
        // Decode: one query at depth 1023 (the f16 path); prefill: 64 queries after 448 tokens;
        // a pacer's chunk: 4 rows of a long prompt at depth 4000, read beside running streams
        // in a cold read's precision (f32).
        for (what, pos0, n_tok, f16_acc) in [
            ("decode/d1023", 1023, 1, true),
            ("prefill/t64@448", 448, 64, 64 < F16_ACC_MAX_TOKENS),
            ("chunk/t4@4000", 4000, 4, false),
        ] {
            let q = floats(&mut rng, n_tok * n_head * hd);
            let mut out = vec![0.0f32; q.len()];
            g.bench_function(format!("{what}/{name}"), |b| {
                b.iter(|| {
                    pool.install(|| {
                        attention_with(&p, black_box(&q), &k, &v, pos0, f16_acc, &mut out)
                    })
                })
            });
        }
    }
    g.finish();
}

/// A batched decode step's attention as the server meets it: eight sequences at a depth,
/// each with its own cache per layer (SmolLM2 at depth 400: 74 MB in all), so key and value
/// rows come from memory, not from a cache level; every layer's heads of all eight rows are
/// spread over the default pool (all cores) in one pass, as `Decoder::forward_batch` does.
/// Time per step.
fn bench_attention_from_memory(c: &mut Criterion) {
    use backstop_engine::ops::attention::{decode_heads_f16, decode_heads_per_task, decode_task};
    use rayon::prelude::*;
    let mut g = c.benchmark_group("attention");
    let mut rng = StdRng::seed_from_u64(6);
    let shapes = [("smollm2", 9, 3, 64, 30), ("gemma3", 4, 1, 256, 18)];
    for (name, n_head, n_head_kv, hd, layers) in shapes {
        let p = AttnParams {
            n_head,
            n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: None,
            softcap: None,
        };
        let (depth, rows) = (400, 8);
        let f16s = |x: Vec<f32>| x.into_iter().map(half::f16::from_f32).collect::<Vec<_>>();
        let kv_len = depth * n_head_kv * hd;
        // One block, each cache starting on a cache line as the decoder's do.
        let total = layers * rows * 2 * kv_len;
        let block = f16s(floats(&mut rng, total + 32));
        let start = (64 - block.as_ptr() as usize % 64) % 64 / 2;
        let all = &block[start..start + total];
        let caches: Vec<Vec<_>> = (0..layers)
            .map(|l| {
                (0..rows)
                    .map(|r| {
                        let o = (l * rows + r) * 2 * kv_len;
                        (&all[o..o + kv_len], &all[o + kv_len..o + 2 * kv_len])
                    })
                    .collect()
            })
            .collect();
        let q = floats(&mut rng, rows * n_head * hd);
        let mut out = vec![0.0f32; q.len()];
        let id = format!("decode-step/{rows}x{layers}@{depth}/{name}");
        g.bench_function(id, |b| {
            b.iter(|| {
                for layer in &caches {
                    let per_task = decode_heads_per_task(&p, rows, rayon::current_num_threads());
                    let task = per_task * hd;
                    out.par_chunks_mut(task).enumerate().for_each(|(i, o)| {
                        let (row, h0) = decode_task(&p, per_task, i);
                        let (k, v) = &layer[row];
                        let qs = &q[i * task..(i + 1) * task];
                        decode_heads_f16(&p, black_box(qs), k, v, depth - 1, h0, o);
                    });
                }
            })
        });
    }
    g.finish();
}

fn bench_norm_rope(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut g = c.benchmark_group("rms_norm");
    for n in [576usize, 640] {
        let (x, w) = (floats(&mut rng, n), floats(&mut rng, n));
        let mut out = vec![0.0f32; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}"), |b| {
            b.iter(|| rms_norm(&mut out, black_box(&x), &w, 1e-6))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("rope");
    for (layout, name) in [(RopeLayout::Normal, "normal"), (RopeLayout::Neox, "neox")] {
        let (heads, hd) = (9usize, 64usize);
        let cache = RopeCache::new(layout, hd, 10000.0, 1.0);
        let mut x = floats(&mut rng, heads * hd);
        // As a forward pass runs it: the row's angles once, then every head rotated.
        let mut table = vec![(0.0, 1.0); cache.pairs()];
        cache.angles(517, &mut table);
        g.bench_function(format!("{name}/{heads}x{hd}"), |b| {
            b.iter(|| cache.apply_angles(black_box(&mut x), hd, &table))
        });
        g.bench_function(format!("{name}/angles/{}", cache.pairs()), |b| {
            b.iter(|| cache.angles(black_box(517), &mut table))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = bench_tiles, bench_groups, bench_matmul, bench_attention, bench_attention_from_memory,
        bench_norm_rope
}
criterion_main!(benches);
