//! aarch64 SIMD variants: NEON (always present on aarch64) and NEON + dotprod (`sdot`).
//!
//! The functions of `neon` are safe wrappers over `#[target_feature]` kernels, sound only on
//! a CPU with those features, so this module hands them out only after [`missing`] has found
//! every feature present.

use crate::quant::GgmlType;

use super::{DotF32Fn, QuantizeFn, ScaleAddFn, Variant, VecDotFn};

mod neon;

pub(super) fn missing(v: Variant) -> Option<&'static str> {
    let neon = std::arch::is_aarch64_feature_detected!("neon");
    match v {
        Variant::Neon if !neon => Some("neon"),
        Variant::NeonDotprod if !neon => Some("neon"),
        Variant::NeonDotprod if !std::arch::is_aarch64_feature_detected!("dotprod") => {
            Some("dotprod")
        }
        Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
            Some("x86_64 (not this build's architecture)")
        }
        _ => None,
    }
}

/// The variant's own kernel for `ty`; the caller has checked [`missing`].
pub(super) fn vec_dot(v: Variant, ty: GgmlType) -> Option<VecDotFn> {
    debug_assert!(missing(v).is_none());
    let f: VecDotFn = match (v, ty) {
        (Variant::Neon, GgmlType::F32) => neon::vec_dot_f32,
        (Variant::Neon, GgmlType::Q4_0) => neon::vec_dot_q4_0_q8_0,
        (Variant::Neon, GgmlType::Q4_1) => neon::vec_dot_q4_1_q8_1,
        (Variant::Neon, GgmlType::Q5_0) => neon::vec_dot_q5_0_q8_0,
        (Variant::Neon, GgmlType::Q5_K) => neon::vec_dot_q5_k_q8_k,
        (Variant::Neon, GgmlType::Q8_0) => neon::vec_dot_q8_0_q8_0,
        (Variant::Neon, GgmlType::Q4_K) => neon::vec_dot_q4_k_q8_k,
        (Variant::Neon, GgmlType::Q6_K) => neon::vec_dot_q6_k_q8_k,
        (Variant::NeonDotprod, GgmlType::Q4_0) => neon::vec_dot_q4_0_q8_0_dot,
        (Variant::NeonDotprod, GgmlType::Q4_1) => neon::vec_dot_q4_1_q8_1_dot,
        (Variant::NeonDotprod, GgmlType::Q5_0) => neon::vec_dot_q5_0_q8_0_dot,
        (Variant::NeonDotprod, GgmlType::Q5_K) => neon::vec_dot_q5_k_q8_k_dot,
        (Variant::NeonDotprod, GgmlType::Q8_0) => neon::vec_dot_q8_0_q8_0_dot,
        (Variant::NeonDotprod, GgmlType::Q4_K) => neon::vec_dot_q4_k_q8_k_dot,
        (Variant::NeonDotprod, GgmlType::Q6_K) => neon::vec_dot_q6_k_q8_k_dot,
        // Q5_0, Q5_1, Q5_K, Q2_K, Q3_K, F16, BF16, Q8_1, Q8_K: the reference serves them.
        _ => return None,
    };
    Some(f)
}

/// The activation quantizers (the dotprod variant uses the NEON ones).
pub(super) fn quantize(v: Variant, act_ty: GgmlType) -> Option<QuantizeFn> {
    debug_assert!(missing(v).is_none());
    let f: QuantizeFn = match (v, act_ty) {
        (Variant::Neon, GgmlType::Q8_0) => neon::quantize_q8_0,
        (Variant::Neon, GgmlType::Q8_1) => neon::quantize_q8_1,
        (Variant::Neon, GgmlType::Q8_K) => neon::quantize_q8_k,
        _ => return None,
    };
    Some(f)
}

pub(super) fn dot_f32(v: Variant) -> Option<DotF32Fn> {
    debug_assert!(missing(v).is_none());
    match v {
        Variant::Neon => Some(neon::dot_f32),
        _ => None,
    }
}

pub(super) fn scale_add(v: Variant) -> Option<ScaleAddFn> {
    debug_assert!(missing(v).is_none());
    match v {
        Variant::Neon => Some(neon::scale_add),
        _ => None,
    }
}
