//! Per-kernel throughput: every (type x variant) this CPU runs, in weight bytes per second.
//!
//! `cargo bench -p backstop-engine --bench kernels [-- FILTER]`; ids are
//! `vec_dot/{type}/{variant}/{n}`, `matvec/{type}/{variant}/{n_out}x{n_in}` (one thread: the
//! per-core ceiling of a decode step) and `quantize/{type}/{variant}/{n}`.
//! K-quants need rows of whole 256-element super-blocks, so their "576" row is 768 long.

use std::hint::black_box;
use std::time::Duration;

use backstop_engine::cpu::Variant;
use backstop_engine::quant::{self, GgmlType};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn floats(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `rows` rows of `n` weights of `ty` and one activation row in `ty.vec_dot_type()`.
fn operands(ty: GgmlType, n: usize, rows: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(1);
    let x = floats(&mut rng, n * rows);
    let mut w = vec![0u8; ty.row_bytes(n).unwrap() * rows];
    let wrb = ty.row_bytes(n).unwrap();
    for (src, dst) in x.chunks_exact(n).zip(w.chunks_exact_mut(wrb)) {
        quant::quantize_row(ty, src, dst).unwrap();
    }
    let act = ty.vec_dot_type();
    let y = floats(&mut rng, n);
    let mut a = vec![0u8; act.row_bytes(n).unwrap()];
    quant::quantize_row(act, &y, &mut a).unwrap();
    (w, a)
}

fn row_len(ty: GgmlType, n: usize) -> usize {
    n.div_ceil(ty.block_size()) * ty.block_size()
}

fn variants() -> Vec<Variant> {
    Variant::ALL
        .into_iter()
        .filter(|v| v.is_supported())
        .collect()
}

fn bench_vec_dot(c: &mut Criterion) {
    let mut g = c.benchmark_group("vec_dot");
    for ty in TYPES {
        for n in [576, 2048] {
            let n = row_len(ty, n);
            let (w, a) = operands(ty, n, 1);
            g.throughput(Throughput::Bytes(w.len() as u64));
            for v in variants() {
                let Some(f) = v.vec_dot(ty) else { continue };
                g.bench_function(format!("{}/{v}/{n}", ty.name()), |b| {
                    b.iter(|| f(black_box(n), black_box(&w), black_box(&a)))
                });
            }
        }
    }
    g.finish();
}

fn bench_matvec(c: &mut Criterion) {
    let mut g = c.benchmark_group("matvec");
    let (n_in, n_out) = (1536, 576);
    let mut out = vec![0.0f32; n_out];
    for ty in TYPES {
        let (w, a) = operands(ty, n_in, n_out);
        let wrb = w.len() / n_out;
        g.throughput(Throughput::Bytes(w.len() as u64));
        for v in variants() {
            let Some(f) = v.vec_dot(ty) else { continue };
            g.bench_function(format!("{}/{v}/{n_out}x{n_in}", ty.name()), |b| {
                b.iter(|| {
                    for (o, row) in out.iter_mut().zip(w.chunks_exact(wrb)) {
                        *o = f(n_in, row, &a);
                    }
                    black_box(&out);
                })
            });
        }
    }
    g.finish();
}

fn bench_quantize(c: &mut Criterion) {
    let mut g = c.benchmark_group("quantize");
    let n = 2048;
    let x = floats(&mut StdRng::seed_from_u64(2), n);
    g.throughput(Throughput::Bytes((n * 4) as u64));
    for act in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        let mut dst = vec![0u8; act.row_bytes(n).unwrap()];
        for v in variants() {
            let Some(q) = v.quantize(act) else { continue };
            g.bench_function(format!("{}/{v}/{n}", act.name()), |b| {
                b.iter(|| q(black_box(&x), black_box(&mut dst)))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = bench_vec_dot, bench_matvec, bench_quantize
}
criterion_main!(benches);
