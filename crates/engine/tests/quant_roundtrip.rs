//! Quantize -> dequantize round trips and dot products of every block format, with the error
//! limits of llama.cpp's `tests/test-quantize-fns.cpp`, plus odd lengths and extreme scales.
//!
//! The cos-shaped data and the metrics (`sqrt(sum d^2) / n`, `|dot - ref| / n`) are those of
//! test-quantize-fns, so the limits mean what they mean there.

use backstop_engine::quant::{self, GgmlType, QuantError, QK_K};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// test-quantize-fns' vector length.
const TEST_SIZE: usize = 32 * 128;

/// test-quantize-fns' synthetic data: `0.1 + 2 cos(i + offset)`.
fn generate_data(offset: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.1 + 2.0 * (i as f32 + offset).cos())
        .collect()
}

/// test-quantize-fns' `array_rmse` (note: divided by n, not sqrt(n)).
fn array_rmse(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum();
    sum.sqrt() as f32 / a.len() as f32
}

/// MAX_QUANTIZATION_TOTAL_ERROR{,_2BITS,_3BITS}.
fn max_total_error(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::Q2_K => 0.0075,
        GgmlType::Q3_K => 0.0040,
        _ => 0.002,
    }
}

/// MAX_DOT_PRODUCT_ERROR{,_LOWBIT}.
fn max_dot_error(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => 0.04,
        _ => 0.02,
    }
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len()).expect("whole blocks")];
    quant::quantize_row(ty, x, &mut q).expect("quantize");
    q
}

fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n];
    quant::dequantize_row(ty, q, &mut y);
    y
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// `vec_dot` of `w` (quantized as `ty`) with `act` quantized as `ty.vec_dot_type()`.
fn quant_dot(ty: GgmlType, w: &[u8], act: &[f32]) -> (f32, Vec<u8>) {
    let qa = quantize(ty.vec_dot_type(), act);
    (quant::vec_dot(ty, act.len(), w, &qa), qa)
}

#[test]
fn total_quantization_error_within_ggml_limits() {
    let x = generate_data(0.0, TEST_SIZE);
    for ty in GgmlType::ALL {
        let y = dequantize(ty, &quantize(ty, &x), TEST_SIZE);
        let err = array_rmse(&x, &y);
        println!("{:5} total error {err:.6}", ty.name());
        assert!(
            err <= max_total_error(ty),
            "{}: total error {err} > {}",
            ty.name(),
            max_total_error(ty)
        );
    }
}

#[test]
fn dot_product_error_within_ggml_limits() {
    let x = generate_data(0.0, TEST_SIZE);
    let a = generate_data(1.0, TEST_SIZE);
    let reference = dot(&x, &a) as f32;
    for ty in GgmlType::ALL {
        let (result, _) = quant_dot(ty, &quantize(ty, &x), &a);
        let err = (result - reference).abs() / TEST_SIZE as f32;
        println!("{:5} dot error {err:.6}", ty.name());
        assert!(
            err <= max_dot_error(ty),
            "{}: dot error {err} > {}",
            ty.name(),
            max_dot_error(ty)
        );
    }
}

/// Row lengths of several blocks, none a power of two.
fn odd_lengths(ty: GgmlType) -> [usize; 3] {
    match ty.block_size() {
        1 => [1, 7, 1001],
        32 => [32, 32 * 7, 32 * 13],
        _ => [QK_K, QK_K * 3, QK_K * 5],
    }
}

/// Upper bound on RMS(error) / RMS(x) for uniform random data: the step of the format's grid
/// over the sub-block range, with room for the coarser (f16/6-bit/4-bit) scale rounding.
fn max_relative_rmse(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 8e-3,
        GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K => 0.01,
        GgmlType::Q6_K => 0.03,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.06,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 0.12,
        GgmlType::Q3_K => 0.25,
        GgmlType::Q2_K => 0.5,
    }
}

fn relative_rmse(x: &[f32], y: &[f32]) -> f32 {
    let err: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| f64::from(a - b).powi(2))
        .sum();
    let sig: f64 = x.iter().map(|&a| f64::from(a).powi(2)).sum();
    if sig == 0.0 {
        return err.sqrt() as f32;
    }
    (err / sig).sqrt() as f32
}

/// `vec_dot` must compute exactly `dot(dequantize(w), dequantize(act))` up to float
/// reassociation: any slip in a kernel's reading of the layout shows up here as an O(1)
/// error. Q4_1 and Q5_1 use Q8_1's `s = d * sum(q)`, rounded to f16 on its own, so they get a
/// tolerance of f16's precision on that term.
fn assert_vec_dot_consistent(ty: GgmlType, w: &[u8], qa: &[u8], n: usize, what: &str) {
    let result = quant::vec_dot(ty, n, w, qa);
    let dw = dequantize(ty, w, n);
    let da = dequantize(ty.vec_dot_type(), qa, n);
    let reference = dot(&dw, &da);
    let magnitude: f64 = dw
        .iter()
        .zip(&da)
        .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
        .sum();
    let rel = match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => 2e-3,
        _ => 1e-5,
    };
    let tol = rel * magnitude + 1e-30;
    assert!(
        (f64::from(result) - reference).abs() <= tol,
        "{} {what}: vec_dot {result} != dot of dequantized {reference} (tolerance {tol})",
        ty.name()
    );
}

#[test]
fn random_rows_of_odd_lengths() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for ty in GgmlType::ALL {
        for n in odd_lengths(ty) {
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let w = quantize(ty, &x);
            assert_eq!(w.len(), ty.row_bytes(n).unwrap());
            let y = dequantize(ty, &w, n);
            let err = relative_rmse(&x, &y);
            assert!(
                err <= max_relative_rmse(ty),
                "{} n={n}: relative rmse {err} > {}",
                ty.name(),
                max_relative_rmse(ty)
            );

            let (result, qa) = quant_dot(ty, &w, &a);
            assert_vec_dot_consistent(ty, &w, &qa, n, &format!("n={n}"));
            // Against the exact dot of the dequantized weights with the f32 activations: the
            // activation quantization adds at most ~0.5% (Q8) of sum |w a|.
            let exact = dot(&y, &a);
            let magnitude: f64 = y.iter().zip(&a).map(|(p, q)| f64::from(p * q).abs()).sum();
            assert!(
                (f64::from(result) - exact).abs() <= 0.01 * magnitude + 1e-6,
                "{} n={n}: vec_dot {result} vs f32 dot {exact}",
                ty.name()
            );
        }
    }
}

#[test]
fn all_zero_rows_stay_zero() {
    for ty in GgmlType::ALL {
        let n = odd_lengths(ty)[1];
        let x = vec![0.0f32; n];
        let w = quantize(ty, &x);
        let y = dequantize(ty, &w, n);
        assert!(y.iter().all(|&v| v == 0.0), "{}: {y:?}", ty.name());
        let (d, _) = quant_dot(ty, &w, &generate_data(0.5, n));
        assert_eq!(d, 0.0, "{}", ty.name());
        // And zero activations against real weights.
        let w = quantize(ty, &generate_data(0.5, n));
        let (d, _) = quant_dot(ty, &w, &x);
        assert_eq!(d, 0.0, "{}", ty.name());
    }
}

#[test]
fn constant_rows_round_trip() {
    for ty in GgmlType::ALL {
        let n = odd_lengths(ty)[1];
        for c in [1.0f32, -3.0, 0.25] {
            let x = vec![c; n];
            let y = dequantize(ty, &quantize(ty, &x), n);
            let err = relative_rmse(&x, &y);
            assert!(
                err <= max_relative_rmse(ty),
                "{} constant {c}: relative rmse {err}",
                ty.name()
            );
        }
    }
}

/// The smallest amplitude at which the format's f16 super-scale is still a normal number
/// (>= 6.1e-5). Below it the scale itself loses relative precision (as in ggml, which stores
/// the same f16), so the per-type error bound no longer applies.
fn smallest_normal_amplitude(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 | GgmlType::BF16 | GgmlType::Q8_K => 1e-30,
        GgmlType::F16 => 1e-3,
        GgmlType::Q8_0 | GgmlType::Q8_1 => 1e-2, // d = amax / 127
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q2_K => 4e-3, // d = amax / 16, range / 15 / 15
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q3_K => 1e-2, // d = range / 31, amax / 4 / 32
        GgmlType::Q4_K | GgmlType::Q5_K => 0.1,  // d = range / 31 / 63
        GgmlType::Q6_K => 0.3,                   // d = amax / 32 / 128
    }
}

/// Scales far from 1: large values whose block scales still fit an f16 (ggml stores them as
/// f16 too, so larger ones overflow there as well; f32-scaled formats take 1e30), and small
/// values down to where the f16 scales are still normal numbers: all within the per-type
/// bound, with `vec_dot` consistent with dequantization.
#[test]
fn extreme_scales() {
    let mut rng = StdRng::seed_from_u64(7);
    for ty in GgmlType::ALL {
        let n = odd_lengths(ty)[1];
        let huge = match ty {
            GgmlType::F32 | GgmlType::BF16 | GgmlType::Q8_K => 1e30,
            _ => 3.0e4,
        };
        for amplitude in [huge, smallest_normal_amplitude(ty)] {
            let x: Vec<f32> = (0..n)
                .map(|_| amplitude * rng.random_range(-1.0f32..1.0))
                .collect();
            let w = quantize(ty, &x);
            let y = dequantize(ty, &w, n);
            assert!(
                y.iter().all(|v| v.is_finite()),
                "{} amplitude {amplitude}",
                ty.name()
            );
            let err = relative_rmse(&x, &y);
            assert!(
                err <= max_relative_rmse(ty),
                "{} amplitude {amplitude}: relative rmse {err}",
                ty.name()
            );
            let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (_, qa) = quant_dot(ty, &w, &a);
            assert_vec_dot_consistent(ty, &w, &qa, n, &format!("amplitude {amplitude}"));
        }
    }
}

/// Values far below the f16 scales' normal range: precision may go, but nothing may turn
/// NaN or infinite, blow up past the input's size, or break `vec_dot`'s consistency.
#[test]
fn tiny_values_degrade_gracefully() {
    let mut rng = StdRng::seed_from_u64(8);
    for ty in GgmlType::ALL {
        let n = odd_lengths(ty)[1];
        for amplitude in [1e-6f32, 1e-9] {
            let x: Vec<f32> = (0..n)
                .map(|_| amplitude * rng.random_range(-1.0f32..1.0))
                .collect();
            let w = quantize(ty, &x);
            let y = dequantize(ty, &w, n);
            assert!(
                y.iter().all(|v| v.is_finite()),
                "{} amplitude {amplitude}",
                ty.name()
            );
            let err = relative_rmse(&x, &y);
            assert!(
                err <= 1.0,
                "{} amplitude {amplitude}: relative rmse {err}",
                ty.name()
            );
            let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (d, qa) = quant_dot(ty, &w, &a);
            assert!(d.is_finite(), "{} amplitude {amplitude}", ty.name());
            assert_vec_dot_consistent(ty, &w, &qa, n, &format!("amplitude {amplitude}"));
        }
    }
}

/// One huge outlier per block: the rest of the block is crushed towards zero, but the outlier
/// itself must survive, and nothing may overflow or turn NaN.
#[test]
fn outliers_survive() {
    for ty in GgmlType::ALL {
        let n = odd_lengths(ty)[1];
        let mut x = generate_data(0.0, n);
        let step = ty.block_size().max(32);
        for i in (5..n).step_by(step) {
            x[i] = 1000.0;
        }
        let y = dequantize(ty, &quantize(ty, &x), n);
        for i in (5..n).step_by(step) {
            assert!(
                (y[i] - 1000.0).abs() <= 0.1 * 1000.0,
                "{} outlier at {i} became {}",
                ty.name(),
                y[i]
            );
        }
        assert!(y.iter().all(|v| v.is_finite()), "{}", ty.name());
    }
}

#[test]
fn partial_blocks_are_an_error() {
    for ty in GgmlType::ALL {
        if ty.block_size() == 1 {
            continue;
        }
        let n = ty.block_size() + 1;
        let err = quant::quantize_row(ty, &vec![0.0; n], &mut []).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { .. }), "{err:?}");
    }
}

/// Q8_0 and Q8_1 round exactly as ggml's x86 SIMD quantizer (what llama.cpp runs on x86-64):
/// d = amax / 127, q = x * (127 / amax) rounded half to even; Q8_1's s is the integer sum
/// times the unrounded d.
#[test]
fn q8_0_and_q8_1_round_like_ggml() {
    let mut x = [0.0f32; 32];
    x[0] = 127.0; // d = 1 exactly
    x[1] = 0.5;
    x[2] = -0.5;
    x[3] = 2.5;
    x[4] = -2.5;
    x[5] = 1.49;
    let q = quantize(GgmlType::Q8_0, &x);
    assert_eq!(&q[..2], &half::f16::from_f32(1.0).to_le_bytes());
    let qs: Vec<i8> = q[2..].iter().map(|&b| b as i8).collect();
    assert_eq!(&qs[..6], &[127, 0, 0, 2, -2, 1]);

    let q1 = quantize(GgmlType::Q8_1, &x);
    assert_eq!(&q1[..2], &q[..2]);
    assert_eq!(&q1[4..], &q[2..]);
    let sum = 127 + 2 - 2 + 1;
    assert_eq!(&q1[2..4], &half::f16::from_f32(sum as f32).to_le_bytes());
}

/// Q8_K rounds as ggml's `quantize_row_q8_K_ref`: the signed extreme maps to -127, so d is
/// negative when it is positive; quants round half to even; bsums are the sums of 16.
#[test]
fn q8_k_rounds_like_ggml() {
    let mut x = [0.0f32; QK_K];
    x[0] = 127.0; // iscale = -1, d = -1
    x[1] = 0.5; // -0.5 -> 0 (ties to even)
    x[2] = 1.5; // -1.5 -> -2
    x[3] = 2.5; // -2.5 -> -2
    x[17] = -3.0; // 3
    let q = quantize(GgmlType::Q8_K, &x);
    assert_eq!(f32::from_le_bytes(q[..4].try_into().unwrap()), -1.0);
    let qs: Vec<i8> = q[4..4 + QK_K].iter().map(|&b| b as i8).collect();
    assert_eq!(&qs[..4], &[-127, 0, -2, -2]);
    assert_eq!(qs[17], 3);
    let bsums: Vec<i16> = q[4 + QK_K..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(bsums.len(), 16);
    assert_eq!(bsums[0], -127 - 2 - 2);
    assert_eq!(bsums[1], 3);
    assert!(bsums[2..].iter().all(|&s| s == 0));
    let y = dequantize(GgmlType::Q8_K, &q, QK_K);
    assert_eq!(&y[..4], &[127.0, 0.0, 2.0, 2.0]);
}

/// Blocks are read in place from unaligned addresses, as they lie in the mmap.
#[test]
fn unaligned_rows() {
    for ty in GgmlType::ALL {
        let n = odd_lengths(ty)[1];
        let x = generate_data(0.3, n);
        let w = quantize(ty, &x);
        let mut shifted = vec![0u8; w.len() + 1];
        shifted[1..].copy_from_slice(&w);
        let y0 = dequantize(ty, &w, n);
        let y1 = dequantize(ty, &shifted[1..], n);
        assert_eq!(y0, y1, "{}", ty.name());
        let a = quantize(ty.vec_dot_type(), &generate_data(1.0, n));
        let mut shifted_a = vec![0u8; a.len() + 3];
        shifted_a[3..].copy_from_slice(&a);
        assert_eq!(
            quant::vec_dot(ty, n, &w, &a),
            quant::vec_dot(ty, n, &shifted[1..], &shifted_a[3..]),
            "{}",
            ty.name()
        );
    }
}
