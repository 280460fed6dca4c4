//! The scalar tier: the references of `crate::quant` as plain function pointers, plus the f32
//! helpers. Every SIMD variant is tested against these.

use crate::quant::{self, GgmlType};

use super::{QuantizeFn, VecDotFn};

macro_rules! ref_vec_dot {
    ($($name:ident => $ty:ident),* $(,)?) => {
        $(
            fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
                quant::vec_dot(GgmlType::$ty, n, w, act)
            }
        )*
    };
}

ref_vec_dot! {
    vec_dot_f32 => F32, vec_dot_f16 => F16, vec_dot_bf16 => BF16,
    vec_dot_q4_0 => Q4_0, vec_dot_q4_1 => Q4_1, vec_dot_q5_0 => Q5_0, vec_dot_q5_1 => Q5_1,
    vec_dot_q8_0 => Q8_0, vec_dot_q8_1 => Q8_1,
    vec_dot_q2_k => Q2_K, vec_dot_q3_k => Q3_K, vec_dot_q4_k => Q4_K, vec_dot_q5_k => Q5_K,
    vec_dot_q6_k => Q6_K, vec_dot_q8_k => Q8_K,
}

/// The scalar reference dot product for weights of `ty`.
pub fn vec_dot(ty: GgmlType) -> VecDotFn {
    match ty {
        GgmlType::F32 => vec_dot_f32,
        GgmlType::F16 => vec_dot_f16,
        GgmlType::BF16 => vec_dot_bf16,
        GgmlType::Q4_0 => vec_dot_q4_0,
        GgmlType::Q4_1 => vec_dot_q4_1,
        GgmlType::Q5_0 => vec_dot_q5_0,
        GgmlType::Q5_1 => vec_dot_q5_1,
        GgmlType::Q8_0 => vec_dot_q8_0,
        GgmlType::Q8_1 => vec_dot_q8_1,
        GgmlType::Q2_K => vec_dot_q2_k,
        GgmlType::Q3_K => vec_dot_q3_k,
        GgmlType::Q4_K => vec_dot_q4_k,
        GgmlType::Q5_K => vec_dot_q5_k,
        GgmlType::Q6_K => vec_dot_q6_k,
        GgmlType::Q8_K => vec_dot_q8_k,
    }
}

/// Quantizes with the scalar reference. Row shapes are validated when a model loads, so a
/// length mismatch here is a bug in the caller, reported by a panic.
fn quantize_with(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    if let Err(e) = quant::quantize_row(ty, src, dst) {
        panic!("quantize {}: {e}", ty.name());
    }
}

macro_rules! ref_quantize {
    ($($name:ident => $ty:ident),* $(,)?) => {
        $(
            fn $name(src: &[f32], dst: &mut [u8]) {
                quantize_with(GgmlType::$ty, src, dst)
            }
        )*
    };
}

ref_quantize! {
    quantize_f32 => F32, quantize_f16 => F16, quantize_bf16 => BF16,
    quantize_q4_0 => Q4_0, quantize_q4_1 => Q4_1, quantize_q5_0 => Q5_0, quantize_q5_1 => Q5_1,
    quantize_q8_0 => Q8_0, quantize_q8_1 => Q8_1,
    quantize_q2_k => Q2_K, quantize_q3_k => Q3_K, quantize_q4_k => Q4_K, quantize_q5_k => Q5_K,
    quantize_q6_k => Q6_K, quantize_q8_k => Q8_K,
}

/// The scalar reference quantizer for `ty` (any type; activations use Q8_0, Q8_1, Q8_K, F32).
pub fn quantize(ty: GgmlType) -> QuantizeFn {
    match ty {
        GgmlType::F32 => quantize_f32,
        GgmlType::F16 => quantize_f16,
        GgmlType::BF16 => quantize_bf16,
        GgmlType::Q4_0 => quantize_q4_0,
        GgmlType::Q4_1 => quantize_q4_1,
        GgmlType::Q5_0 => quantize_q5_0,
        GgmlType::Q5_1 => quantize_q5_1,
        GgmlType::Q8_0 => quantize_q8_0,
        GgmlType::Q8_1 => quantize_q8_1,
        GgmlType::Q2_K => quantize_q2_k,
        GgmlType::Q3_K => quantize_q3_k,
        GgmlType::Q4_K => quantize_q4_k,
        GgmlType::Q5_K => quantize_q5_k,
        GgmlType::Q6_K => quantize_q6_k,
        GgmlType::Q8_K => quantize_q8_k,
    }
}

/// f32 dot product with eight independent accumulators (the compiler vectorises this at the
/// baseline target; the dependency chain of a single accumulator would not).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32 lengths");
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        sum += x * y;
    }
    sum
}

/// `out[i] += a * x[i]`.
pub fn scale_add(out: &mut [f32], x: &[f32], a: f32) {
    assert_eq!(out.len(), x.len(), "scale_add lengths");
    for (o, v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}
