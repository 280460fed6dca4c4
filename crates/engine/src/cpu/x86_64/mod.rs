//! x86-64 SIMD variants: AVX2 (+FMA, F16C), the same at 256 bits with AVX-512 VNNI's
//! `vpdpbusd` for the legacy formats, and AVX-512 (F, BW, VL; VNNI where present).
//!
//! The functions of `avx2` and `avx512` are safe wrappers over `#[target_feature]` kernels.
//! They are sound only on a CPU with those features, so this module hands them out only after
//! [`missing`] has found every feature present.

use crate::quant::GgmlType;

use super::interleaved::GroupKernels;
use super::{DotF32Fn, QuantizeFn, ScaleAddFn, TileDotFn, Variant, VecDotFn};

mod avx2;
mod avx2_k;
mod avx512;
mod interleaved;
mod legacy;

/// The features each variant's kernels are compiled with, checked at run time
/// (`is_x86_feature_detected!` caches its answer, so this is a few loads).
pub(super) fn missing(v: Variant) -> Option<&'static str> {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    match v {
        Variant::Avx2 if !avx2 => Some("avx2, fma or f16c"),
        Variant::Avx2Vnni if !avx2 => Some("avx2, fma or f16c"),
        Variant::Avx2Vnni
            if !(is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")) =>
        {
            Some("avx512vnni or avx512vl")
        }
        Variant::Avx512 | Variant::Avx512Vnni if !avx512 => Some("avx512f, avx512bw or avx512vl"),
        Variant::Avx512Vnni if !is_x86_feature_detected!("avx512vnni") => Some("avx512vnni"),
        Variant::Neon | Variant::NeonDotprod => Some("aarch64 (not this build's architecture)"),
        _ => None,
    }
}

/// The variant's own kernel for `ty`; the caller has checked [`missing`].
pub(super) fn vec_dot(v: Variant, ty: GgmlType) -> Option<VecDotFn> {
    debug_assert!(missing(v).is_none());
    let f: VecDotFn = match (v, ty) {
        (Variant::Avx2, GgmlType::F32) => avx2::vec_dot_f32,
        (Variant::Avx2, GgmlType::F16) => avx2::vec_dot_f16,
        (Variant::Avx2, GgmlType::BF16) => avx2::vec_dot_bf16,
        (Variant::Avx2, GgmlType::Q4_0) => legacy::plain::vec_dot_q4_0_q8_0,
        (Variant::Avx2, GgmlType::Q4_1) => legacy::plain::vec_dot_q4_1_q8_1,
        (Variant::Avx2, GgmlType::Q5_0) => legacy::plain::vec_dot_q5_0_q8_0,
        (Variant::Avx2, GgmlType::Q5_1) => legacy::plain::vec_dot_q5_1_q8_1,
        (Variant::Avx2, GgmlType::Q8_0) => legacy::plain::vec_dot_q8_0_q8_0,
        (Variant::Avx2, GgmlType::Q4_K) => avx2_k::vec_dot_q4_k_q8_k,
        (Variant::Avx2, GgmlType::Q5_K) => avx2_k::vec_dot_q5_k_q8_k,
        (Variant::Avx2, GgmlType::Q6_K) => avx2_k::vec_dot_q6_k_q8_k,
        (Variant::Avx2Vnni, GgmlType::Q4_0) => legacy::vnni::vec_dot_q4_0_q8_0,
        (Variant::Avx2Vnni, GgmlType::Q4_1) => legacy::vnni::vec_dot_q4_1_q8_1,
        (Variant::Avx2Vnni, GgmlType::Q5_0) => legacy::vnni::vec_dot_q5_0_q8_0,
        (Variant::Avx2Vnni, GgmlType::Q5_1) => legacy::vnni::vec_dot_q5_1_q8_1,
        (Variant::Avx2Vnni, GgmlType::Q8_0) => legacy::vnni::vec_dot_q8_0_q8_0,
        // The one-row K-quant kernels are AVX2's; they are listed here because the tiles
        // below are this variant's, and a tile is taken only with its variant's dot product.
        (Variant::Avx2Vnni, GgmlType::Q4_K) => avx2_k::vec_dot_q4_k_q8_k,
        (Variant::Avx2Vnni, GgmlType::Q6_K) => avx2_k::vec_dot_q6_k_q8_k,
        (Variant::Avx512, GgmlType::F32) => avx512::vec_dot_f32,
        (Variant::Avx512, GgmlType::Q4_0) => avx512::vec_dot_q4_0_q8_0,
        (Variant::Avx512, GgmlType::Q4_1) => avx512::vec_dot_q4_1_q8_1,
        (Variant::Avx512, GgmlType::Q8_0) => avx512::vec_dot_q8_0_q8_0,
        (Variant::Avx512, GgmlType::Q4_K) => avx512::vec_dot_q4_k_q8_k,
        (Variant::Avx512, GgmlType::Q6_K) => avx512::vec_dot_q6_k_q8_k,
        (Variant::Avx512Vnni, GgmlType::Q4_0) => avx512::vec_dot_q4_0_q8_0_vnni,
        (Variant::Avx512Vnni, GgmlType::Q4_1) => avx512::vec_dot_q4_1_q8_1_vnni,
        (Variant::Avx512Vnni, GgmlType::Q8_0) => avx512::vec_dot_q8_0_q8_0_vnni,
        (Variant::Avx512Vnni, GgmlType::Q4_K) => avx512::vec_dot_q4_k_q8_k_vnni,
        (Variant::Avx512Vnni, GgmlType::Q6_K) => avx512::vec_dot_q6_k_q8_k_vnni,
        // Q2_K, Q3_K, Q8_1 and Q8_K weights have no SIMD variant yet: the reference serves them.
        _ => return None,
    };
    Some(f)
}

/// The variant's own tile kernel for `ty`. Only the 256-bit builds have tiles so far; the AVX-512 tiers
/// hand out their own dot products for the types they cover, and [`super::Kernels`] takes a
/// tile only from the variant whose dot product it uses.
pub(super) fn vec_dot_tile(v: Variant, ty: GgmlType) -> Option<TileDotFn> {
    debug_assert!(missing(v).is_none());
    let f: TileDotFn = match (v, ty) {
        (Variant::Avx2, GgmlType::Q4_1) => legacy::plain::tile_q4_1_q8_1,
        (Variant::Avx2, GgmlType::Q5_0) => legacy::plain::tile_q5_0_q8_0,
        (Variant::Avx2, GgmlType::Q8_0) => legacy::plain::tile_q8_0_q8_0,
        (Variant::Avx2, GgmlType::Q4_K) => avx2_k::plain::tile_q4_k_q8_k,
        (Variant::Avx2, GgmlType::Q6_K) => avx2_k::plain::tile_q6_k_q8_k,
        (Variant::Avx2Vnni, GgmlType::Q4_1) => legacy::vnni::tile_q4_1_q8_1,
        (Variant::Avx2Vnni, GgmlType::Q5_0) => legacy::vnni::tile_q5_0_q8_0,
        (Variant::Avx2Vnni, GgmlType::Q8_0) => legacy::vnni::tile_q8_0_q8_0,
        // Two rows per 512-bit vector where the CPU has them: the same bits.
        (Variant::Avx2Vnni, GgmlType::Q4_K) if avx2_k::vnni512::available() => {
            avx2_k::vnni512::tile_q4_k_q8_k
        }
        (Variant::Avx2Vnni, GgmlType::Q6_K) if avx2_k::vnni512::available() => {
            avx2_k::vnni512::tile_q6_k_q8_k
        }
        (Variant::Avx2Vnni, GgmlType::Q4_K) => avx2_k::vnni::tile_q4_k_q8_k,
        (Variant::Avx2Vnni, GgmlType::Q6_K) => avx2_k::vnni::tile_q6_k_q8_k,
        _ => return None,
    };
    Some(f)
}

/// The variant's own decode tile kernel ([`super::DECODE_ROWS`] x 1) for `ty`, on the terms of
/// [`vec_dot_tile`]. Only where it measured faster end to end: decode streams the weights from
/// memory, and for Q8_0 (and no better for Q5_0) four interleaved row streams lost more to the
/// prefetcher than the shared activation loads won. The K-quant tiles work one row at a time.
pub(super) fn vec_dot_rows(v: Variant, ty: GgmlType) -> Option<TileDotFn> {
    debug_assert!(missing(v).is_none());
    let f: TileDotFn = match (v, ty) {
        (Variant::Avx2, GgmlType::Q4_1) => legacy::plain::rows_q4_1_q8_1,
        (Variant::Avx2Vnni, GgmlType::Q4_1) => legacy::vnni::rows_q4_1_q8_1,
        _ => return None,
    };
    Some(f)
}

/// The variant's own activation quantizer; AVX-512 tiers use the AVX2 ones (quantizing a
/// row is a small part of a matrix-vector product).
pub(super) fn quantize(v: Variant, act_ty: GgmlType) -> Option<QuantizeFn> {
    debug_assert!(missing(v).is_none());
    let f: QuantizeFn = match (v, act_ty) {
        (Variant::Avx2, GgmlType::Q8_0) => avx2::quantize_q8_0,
        (Variant::Avx2, GgmlType::Q8_1) => avx2::quantize_q8_1,
        (Variant::Avx2, GgmlType::Q8_K) => avx2_k::quantize_q8_k,
        _ => return None,
    };
    Some(f)
}

pub(super) fn dot_f32(v: Variant) -> Option<DotF32Fn> {
    debug_assert!(missing(v).is_none());
    match v {
        Variant::Avx2 => Some(avx2::dot_f32),
        Variant::Avx512 => Some(avx512::dot_f32),
        _ => None,
    }
}

pub(super) fn scale_add(v: Variant) -> Option<ScaleAddFn> {
    debug_assert!(missing(v).is_none());
    match v {
        Variant::Avx2 => Some(avx2::scale_add),
        _ => None,
    }
}

/// The variant's kernels for weights of `ty` interleaved in row groups
/// (`cpu::interleaved`). Every 256-bit and 512-bit variant uses the AVX2 ones.
pub(super) fn group_kernels(v: Variant, ty: GgmlType) -> Option<GroupKernels> {
    debug_assert!(missing(v).is_none());
    match (v, ty) {
        (Variant::Avx2 | Variant::Avx512, GgmlType::Q4_1) => Some(interleaved::q4_1_plain::Q4_1),
        (Variant::Avx2Vnni | Variant::Avx512Vnni, GgmlType::Q4_1) => {
            Some(interleaved::two_groups_if_512(interleaved::q4_1_vnni::Q4_1))
        }
        (Variant::Avx2 | Variant::Avx512, GgmlType::Q5_0) => Some(interleaved::q5_0_plain::Q5_0),
        (Variant::Avx2Vnni | Variant::Avx512Vnni, GgmlType::Q5_0) => {
            Some(interleaved::two_groups_if_512(interleaved::q5_0_vnni::Q5_0))
        }
        (Variant::Avx2 | Variant::Avx512, GgmlType::Q8_0) => Some(interleaved::q8_0_plain::Q8_0),
        (Variant::Avx2Vnni | Variant::Avx512Vnni, GgmlType::Q8_0) => {
            Some(interleaved::two_groups_if_512(interleaved::q8_0_vnni::Q8_0))
        }
        _ => None,
    }
}
