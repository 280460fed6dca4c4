//! The independent check of the block formats: our `dequantize_row` against candle-core's
//! dequantization of the same raw bytes, for every type candle supports (all of ours).
//!
//! Blocks are random bytes, so every bit of every quant, scale and mask field is exercised,
//! with the f16/f32 super-scales overwritten by sane random values (random bits would give
//! NaN and inf, which compare badly and say nothing about the layout). Both sides compute
//! the same products in the same order, so we expect bit equality and allow 1e-6 relative.
//!
//! Beyond dequantization, the activation quantizers are compared with candle's (Q8_0 exactly;
//! Q8_K up to exact ties, which candle rounds away from zero and ggml to even), and our
//! `vec_dot` with candle's quantized matmul on the same weights.

use std::borrow::Cow;

use backstop_engine::quant::{self, GgmlType, QK_K};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn candle_dtype(ty: GgmlType) -> GgmlDType {
    match ty {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        GgmlType::Q8_K => GgmlDType::Q8K,
    }
}

/// Byte offsets of the f16 scale fields in a block (ggml-common.h's layouts), which get sane
/// values instead of random bits.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => &[0, 2],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_K => &[],
    }
}

/// A scale-like value: random sign, magnitude from 1e-3 to 2.
fn sane(rng: &mut StdRng) -> f32 {
    let m = 10f32.powf(rng.random_range(-3.0f32..0.3));
    if rng.random::<bool>() {
        m
    } else {
        -m
    }
}

/// A random row of `n` elements of `ty` as raw bytes, in a buffer aligned to 8 bytes (candle
/// views the bytes as its own blocks, which have f16/f32 fields and so need alignment).
fn random_row(ty: GgmlType, n: usize, rng: &mut StdRng) -> (Vec<u8>, usize) {
    let len = ty.row_bytes(n).expect("whole blocks");
    let mut buf = vec![0u8; len + 8];
    let off = buf.as_ptr().align_offset(8);
    let row = &mut buf[off..off + len];
    match ty {
        GgmlType::F32 => {
            for c in row.chunks_exact_mut(4) {
                c.copy_from_slice(&sane(rng).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in row.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(sane(rng)).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in row.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(sane(rng)).to_le_bytes());
            }
        }
        _ => {
            rng.fill(&mut row[..]);
            for block in row.chunks_exact_mut(ty.type_size()) {
                for &at in f16_fields(ty) {
                    let v = half::f16::from_f32(sane(rng)).to_le_bytes();
                    block[at..at + 2].copy_from_slice(&v);
                }
                if ty == GgmlType::Q8_K {
                    block[..4].copy_from_slice(&sane(rng).to_le_bytes());
                }
            }
        }
    }
    (buf, off)
}

fn candle_dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, candle_dtype(ty))
        .expect("candle storage");
    let t = QTensor::new(storage, (n,)).expect("candle qtensor");
    t.dequantize(&Device::Cpu)
        .expect("candle dequantize")
        .to_vec1::<f32>()
        .expect("to_vec1")
}

fn lengths(ty: GgmlType) -> [usize; 2] {
    match ty.block_size() {
        1 => [64, 1000],
        32 => [32, 32 * 37],
        _ => [QK_K, QK_K * 9],
    }
}

#[test]
fn dequantize_matches_candle_for_every_type() {
    let mut rng = StdRng::seed_from_u64(0xca4d1e);
    for ty in GgmlType::ALL {
        for n in lengths(ty) {
            let (buf, off) = random_row(ty, n, &mut rng);
            let bytes = &buf[off..off + ty.row_bytes(n).unwrap()];
            let theirs = candle_dequantize(ty, bytes, n);
            let mut ours = vec![f32::NAN; n];
            quant::dequantize_row(ty, bytes, &mut ours);
            let mut exact = 0;
            for (i, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs(),
                    "{} n={n} element {i}: ours {a}, candle {b}",
                    ty.name()
                );
                exact += usize::from(a.to_bits() == b.to_bits());
            }
            println!("{:5} n={n}: {exact}/{n} bit-identical", ty.name());
        }
    }
}

/// Our Q8_0 activation quantizer produces exactly candle's (and ggml's) bytes.
#[test]
fn q8_0_quantizer_matches_candle() {
    let mut rng = StdRng::seed_from_u64(11);
    let n = 32 * 64;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let theirs = candle_quantize(GgmlType::Q8_0, &x);
    let mut ours = vec![0u8; GgmlType::Q8_0.row_bytes(n).unwrap()];
    quant::quantize_row(GgmlType::Q8_0, &x, &mut ours).unwrap();
    assert_eq!(ours, theirs);
}

/// Our Q8_K quantizer matches candle's except on exact .5 ties (ggml's `nearest_int` rounds
/// those to even, candle's `round` away from zero); random data has none.
#[test]
fn q8_k_quantizer_matches_candle() {
    let mut rng = StdRng::seed_from_u64(12);
    let n = QK_K * 8;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let theirs = candle_quantize(GgmlType::Q8_K, &x);
    let mut ours = vec![0u8; GgmlType::Q8_K.row_bytes(n).unwrap()];
    quant::quantize_row(GgmlType::Q8_K, &x, &mut ours).unwrap();
    assert_eq!(ours, theirs);
}

fn candle_quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let t = Tensor::from_slice(x, (x.len(),), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, candle_dtype(ty)).unwrap();
    q.data().unwrap().into_owned()
}

/// Our `vec_dot` (weights against our quantized activations) against candle's quantized
/// matmul (weights against candle's quantized activations) on weights made by our quantizer.
/// The two quantize the activations independently (candle's Q8_1 even stores `s` rounded
/// differently), so the tolerance is the activation quantization error, not float noise.
#[test]
fn vec_dot_matches_candle_matmul() {
    let mut rng = StdRng::seed_from_u64(13);
    let rows = 3;
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        // An even number of blocks: candle's scalar Q4_1/Q5_1 kernels walk blocks in pairs.
        let n = ty.block_size() * 6;
        let w: Vec<f32> = (0..rows * n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let row_bytes = ty.row_bytes(n).unwrap();
        let mut qw = vec![0u8; rows * row_bytes + 8];
        let off = qw.as_ptr().align_offset(8);
        let qw = &mut qw[off..off + rows * row_bytes];
        for (dst, src) in qw.chunks_exact_mut(row_bytes).zip(w.chunks_exact(n)) {
            quant::quantize_row(ty, src, dst).unwrap();
        }
        let act_ty = ty.vec_dot_type();
        let mut qa = vec![0u8; act_ty.row_bytes(n).unwrap()];
        quant::quantize_row(act_ty, &a, &mut qa).unwrap();

        let storage =
            QStorage::from_data(Cow::Borrowed(&*qw), &Device::Cpu, candle_dtype(ty)).unwrap();
        let qt = QTensor::new(storage, (rows, n)).unwrap();
        let mm = QMatMul::from_qtensor(qt).unwrap();
        let x = Tensor::from_slice(&a, (1, n), &Device::Cpu).unwrap();
        let theirs = mm.forward(&x).unwrap().flatten_all().unwrap();
        let theirs = theirs.to_vec1::<f32>().unwrap();

        let mut dw = vec![0f32; n];
        for (r, wq) in qw.chunks_exact(row_bytes).enumerate() {
            let ours = quant::vec_dot(ty, n, wq, &qa);
            quant::dequantize_row(ty, wq, &mut dw);
            let magnitude: f32 = dw.iter().zip(&a).map(|(p, q)| (p * q).abs()).sum();
            assert!(
                (ours - theirs[r]).abs() <= 5e-3 * magnitude,
                "{} row {r}: ours {ours}, candle {}",
                ty.name(),
                theirs[r]
            );
        }
    }
}
