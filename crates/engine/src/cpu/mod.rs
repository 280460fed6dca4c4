//! CPU kernel selection: one table of function pointers per SIMD tier, chosen once at start-up
//! by runtime feature detection, so one binary runs on any x86-64 (or aarch64) CPU.
//!
//! A tier can be forced (`BACKSTOP_KERNELS=ref|avx2|avx512|neon` or the CLI's `--kernels`) so
//! any test can run on the scalar reference path.

use crate::quant::GgmlType;

/// `(n, weight_row_bytes, activation_row_bytes) -> dot`. Activations are in `ty.vec_dot_type()`.
pub type VecDotFn = fn(usize, &[u8], &[u8]) -> f32;
/// `(src, dst_bytes)`: quantize a row of activations into a `vec_dot_type` format.
pub type QuantizeFn = fn(&[f32], &mut [u8]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Ref,
    Avx2,
    Avx512,
    Neon,
}

#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    pub tier: Tier,
}

impl Kernels {
    /// The dot product for weights of `ty` at this tier; falls back to the scalar reference
    /// for types the tier has no variant of.
    pub fn vec_dot(&self, ty: GgmlType) -> VecDotFn {
        let _ = ty;
        todo!("filled in by the kernels work")
    }

    /// The activation quantizer for `act_ty` (Q8_0, Q8_1 or Q8_K) at this tier.
    pub fn quantize(&self, act_ty: GgmlType) -> QuantizeFn {
        let _ = act_ty;
        todo!("filled in by the kernels work")
    }
}
