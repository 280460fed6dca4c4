//! CPU kernel selection: one table of function pointers per SIMD tier, chosen once at start-up
//! by runtime feature detection, so one binary runs on any x86-64 (or aarch64) CPU.
//!
//! A tier can be forced (`BACKSTOP_KERNELS=ref|avx2|avx512|neon` or the CLI's `--kernels`) so
//! any test can run on the scalar reference path.
//!
//! Layout: [`reference`] wraps the scalar references of `crate::quant` as plain function
//! pointers; `x86_64/avx2.rs`, `x86_64/avx512.rs` and `aarch64/neon.rs` hold the SIMD variants as
//! `#[target_feature]` functions. A SIMD function is only ever handed out by [`Variant::vec_dot`]
//! and friends, which return `None` unless the running CPU has the features it was compiled for;
//! that check is what makes the safe wrappers sound, so nothing else may expose them.
//!
//! Invariants the SIMD dot products share with ggml's: activation quants (Q8_0, Q8_1, Q8_K) lie
//! in `-127..=127`, as every quantizer here and in ggml produces them, and Q8_0 weight quants do
//! too (ggml's `quantize_row_q8_0` never writes -128). The sign trick used for i8 x i8 products
//! would give a wrong sign for a `-128` activation against a negative weight.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::quant::GgmlType;

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod interleaved;
mod k_scales;
pub mod reference;
#[cfg(target_arch = "x86_64")]
mod x86_64;

/// `(n, weight_row_bytes, activation_row_bytes) -> dot`. Activations are in `ty.vec_dot_type()`.
pub type VecDotFn = fn(usize, &[u8], &[u8]) -> f32;
/// Weight rows per call of a [`TileDotFn`].
pub const TILE_ROWS: usize = 2;
/// Activation rows (tokens) per call of a [`TileDotFn`]. A kernel may cover them in smaller
/// steps (the plain AVX2 builds, with 16 vector registers, take four tokens at a time).
pub const TILE_TOKS: usize = 8;
/// Weight rows per call of a decode [`TileDotFn`] (one token): the rows share each activation
/// block's loads, and their independent accumulator chains keep the FMA units busy where one
/// short row would wait on its own chain.
pub const DECODE_ROWS: usize = 4;
/// `(n, w, w_stride, a, a_stride, out, out_stride)`: the [`TILE_ROWS`] x [`TILE_TOKS`] (prefill)
/// or [`DECODE_ROWS`] x 1 (decode) dot products of weight rows `w[r * w_stride..]` with activation rows `a[t * a_stride..]`
/// (strides in bytes), written to `out[r * out_stride + t]`. Each result is bit-identical to
/// the same variant's [`VecDotFn`] on that pair: a tile only shares the unpacking of weight
/// blocks and the loads of activation blocks between the pairs, never their summation order,
/// so prefill and decode compute the same numbers.
pub type TileDotFn = fn(usize, &[u8], usize, &[u8], usize, &mut [f32], usize);
/// `(src, dst_bytes)`: quantize a row of activations into a `vec_dot_type` format.
pub type QuantizeFn = fn(&[f32], &mut [u8]);
/// Dot product of two equal-length f32 slices.
pub type DotF32Fn = fn(&[f32], &[f32]) -> f32;
/// `out[i] += a * x[i]` over equal-length slices.
pub type ScaleAddFn = fn(&mut [f32], &[f32], f32);

/// A SIMD level; each implies the ones it is built on (AVX-512 tables fall back to AVX2
/// kernels for types without an AVX-512 variant, and every tier to the scalar reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    Ref,
    Avx2,
    Avx512,
    Neon,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Ref, Tier::Avx2, Tier::Avx512, Tier::Neon];

    /// The name `BACKSTOP_KERNELS` and `--kernels` accept.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Ref => "ref",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    /// Whether the running CPU can execute this tier's kernels.
    pub fn is_supported(self) -> bool {
        self.missing_features().is_none()
    }

    /// `None` when the CPU supports the tier, else what it lacks (for error messages).
    pub fn missing_features(self) -> Option<&'static str> {
        match self {
            Tier::Ref => None,
            Tier::Avx2 => Variant::Avx2.missing_features(),
            Tier::Avx512 => Variant::Avx512.missing_features(),
            Tier::Neon => Variant::Neon.missing_features(),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = KernelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Tier::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| KernelError::UnknownTier(s.to_string()))
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("unknown kernel tier {0:?} (expected one of: ref, avx2, avx512, neon)")]
    UnknownTier(String),
    #[error("this CPU cannot run the {tier} kernels: it lacks {missing}")]
    Unsupported { tier: Tier, missing: &'static str },
}

/// The environment variable that forces a tier (`ref|avx2|avx512|neon`).
pub const KERNELS_ENV: &str = "BACKSTOP_KERNELS";

/// The kernel table of one tier. Copy it freely; look functions up once per matrix, not per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    pub tier: Tier,
}

impl Default for Kernels {
    fn default() -> Self {
        Self::detect()
    }
}

impl Kernels {
    /// The scalar reference tier: runs everywhere.
    pub const REFERENCE: Kernels = Kernels { tier: Tier::Ref };

    /// The best tier this CPU supports, AVX-512 excepted.
    ///
    /// The AVX-512 kernels pass `kernels_equiv` on real hardware (Zen 4, 2026-12-02), but the
    /// tier is not chosen automatically: it has one-row kernels only, and the AVX2 tier's tiles
    /// (with VNNI where the CPU has it) measured faster end to end on that machine (SmolLM2
    /// pp512 198 vs 266 t/s, tg128 143 vs 155, one run each). It stays opt-in
    /// (`--kernels avx512` / `BACKSTOP_KERNELS=avx512`).
    pub fn detect() -> Self {
        let tier = [Tier::Avx2, Tier::Neon]
            .into_iter()
            .find(|t| t.is_supported())
            .unwrap_or(Tier::Ref);
        Kernels { tier }
    }

    /// A given tier, or an error naming the missing CPU features.
    pub fn new(tier: Tier) -> Result<Self, KernelError> {
        match tier.missing_features() {
            None => Ok(Kernels { tier }),
            Some(missing) => Err(KernelError::Unsupported { tier, missing }),
        }
    }

    /// The tier `BACKSTOP_KERNELS` names, or [`Kernels::detect`] when it is unset or empty.
    pub fn from_env() -> Result<Self, KernelError> {
        match std::env::var(KERNELS_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::new(v.parse()?),
            _ => Ok(Self::detect()),
        }
    }

    /// Every tier this CPU can run, the reference first.
    pub fn available_tiers() -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| t.is_supported()).collect()
    }

    /// The variant whose kernels this table prefers (`avx2+vnni` on an AVX2 tier with
    /// AVX-512 VNNI): what a benchmark's backend column names.
    pub fn best_variant(&self) -> Variant {
        self.variants()[0]
    }

    /// The SIMD variants this table draws from, best first; the reference is always last.
    fn variants(&self) -> &'static [Variant] {
        // Checked here rather than trusted: `tier` is a public field, and handing out a SIMD
        // function on a CPU without its features would be undefined behaviour.
        if let Some(missing) = self.tier.missing_features() {
            panic!(
                "this CPU cannot run the {} kernels: it lacks {missing}",
                self.tier
            );
        }
        match self.tier {
            Tier::Ref => &[Variant::Ref],
            // VNNI changes no result (the integer sums are exact), only the instruction count.
            Tier::Avx2 => {
                if Variant::Avx2Vnni.is_supported() {
                    &[Variant::Avx2Vnni, Variant::Avx2, Variant::Ref]
                } else {
                    &[Variant::Avx2, Variant::Ref]
                }
            }
            Tier::Avx512 => {
                if Variant::Avx512Vnni.is_supported() {
                    &[
                        Variant::Avx512Vnni,
                        Variant::Avx512,
                        Variant::Avx2Vnni,
                        Variant::Avx2,
                        Variant::Ref,
                    ]
                } else {
                    &[Variant::Avx512, Variant::Avx2, Variant::Ref]
                }
            }
            Tier::Neon => {
                if Variant::NeonDotprod.is_supported() {
                    &[Variant::NeonDotprod, Variant::Neon, Variant::Ref]
                } else {
                    &[Variant::Neon, Variant::Ref]
                }
            }
        }
    }

    /// The dot product for weights of `ty` at this tier; falls back to the scalar reference
    /// for types the tier has no variant of.
    pub fn vec_dot(&self, ty: GgmlType) -> VecDotFn {
        self.variants()
            .iter()
            .find_map(|v| v.vec_dot(ty))
            .unwrap_or(reference::vec_dot(ty))
    }

    /// The tile kernel for weights of `ty` at this tier, if the variant whose dot product
    /// [`Self::vec_dot`] hands out has one (a tile from another variant could sum in another
    /// order and break the bit-identity with decode).
    pub fn vec_dot_tile(&self, ty: GgmlType) -> Option<TileDotFn> {
        let v = self.variants().iter().find(|v| v.vec_dot(ty).is_some())?;
        v.vec_dot_tile(ty)
    }

    /// The [`DECODE_ROWS`] x 1 tile kernel for weights of `ty` at this tier, on the same terms as
    /// [`Self::vec_dot_tile`].
    pub fn vec_dot_rows(&self, ty: GgmlType) -> Option<TileDotFn> {
        let v = self.variants().iter().find(|v| v.vec_dot(ty).is_some())?;
        v.vec_dot_rows(ty)
    }

    /// The SIMD kernels for weights of `ty` interleaved in row groups, if this tier has them:
    /// the loader interleaves a matrix only then (see [`interleaved`]).
    pub fn group_kernels_simd(&self, ty: GgmlType) -> Option<interleaved::GroupKernels> {
        self.variants().iter().find_map(|v| v.group_kernels(ty))
    }

    /// The kernels for interleaved weights of `ty` at this tier: its SIMD ones, else the
    /// scalar reference (weights interleaved for one tier still run on any other).
    pub fn group_kernels(&self, ty: GgmlType) -> Option<interleaved::GroupKernels> {
        self.group_kernels_simd(ty).or(match ty {
            GgmlType::Q4_1 => Some(interleaved::Q4_1_REF),
            GgmlType::Q5_0 => Some(interleaved::Q5_0_REF),
            GgmlType::Q8_0 => Some(interleaved::Q8_0_REF),
            _ => None,
        })
    }

    /// The activation quantizer for `act_ty` (Q8_0, Q8_1 or Q8_K, or F32 as a plain copy) at
    /// this tier. Its bytes are identical to the scalar reference's.
    pub fn quantize(&self, act_ty: GgmlType) -> QuantizeFn {
        self.variants()
            .iter()
            .find_map(|v| v.quantize(act_ty))
            .unwrap_or(reference::quantize(act_ty))
    }

    /// The f32 dot product of this tier (for attention scores).
    pub fn dot_f32_fn(&self) -> DotF32Fn {
        self.variants()
            .iter()
            .find_map(|v| v.dot_f32())
            .unwrap_or(reference::dot_f32)
    }

    /// `out += a * x` of this tier (for attention's weighted sum of values).
    pub fn scale_add_fn(&self) -> ScaleAddFn {
        self.variants()
            .iter()
            .find_map(|v| v.scale_add())
            .unwrap_or(reference::scale_add)
    }

    /// Dot product of two equal-length f32 slices. In a loop, take [`Self::dot_f32_fn`] once.
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        (self.dot_f32_fn())(a, b)
    }

    /// `out[i] += a * x[i]`. In a loop, take [`Self::scale_add_fn`] once.
    pub fn scale_add(&self, out: &mut [f32], x: &[f32], a: f32) {
        (self.scale_add_fn())(out, x, a)
    }
}

/// One compiled implementation family. A tier draws on one or more of them (AVX-512 on
/// `Avx512Vnni` where the CPU has VNNI, then `Avx512`, then `Avx2`); tests and benches walk
/// them all so that each is checked against the reference on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Ref,
    Avx2,
    /// The AVX2 legacy-format kernels with `vpdpbusd` (AVX-512 VNNI + VL) for the integer sums.
    Avx2Vnni,
    Avx512,
    Avx512Vnni,
    Neon,
    NeonDotprod,
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::Ref,
        Variant::Avx2,
        Variant::Avx2Vnni,
        Variant::Avx512,
        Variant::Avx512Vnni,
        Variant::Neon,
        Variant::NeonDotprod,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Ref => "ref",
            Variant::Avx2 => "avx2",
            Variant::Avx2Vnni => "avx2+vnni",
            Variant::Avx512 => "avx512",
            Variant::Avx512Vnni => "avx512vnni",
            Variant::Neon => "neon",
            Variant::NeonDotprod => "neon+dotprod",
        }
    }

    /// `None` when the running CPU has every feature this variant was compiled for, else
    /// the features it lacks (or that the binary is for another architecture).
    pub fn missing_features(self) -> Option<&'static str> {
        match self {
            Variant::Ref => None,
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::missing(self)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                Some("x86_64 (not this build's architecture)")
            }
            #[cfg(target_arch = "aarch64")]
            Variant::Neon | Variant::NeonDotprod => aarch64::missing(self),
            #[cfg(not(target_arch = "aarch64"))]
            Variant::Neon | Variant::NeonDotprod => Some("aarch64 (not this build's architecture)"),
        }
    }

    pub fn is_supported(self) -> bool {
        self.missing_features().is_none()
    }

    /// This variant's own dot product for `ty`, if it has one and the CPU can run it.
    pub fn vec_dot(self, ty: GgmlType) -> Option<VecDotFn> {
        if !self.is_supported() {
            return None;
        }
        match self {
            Variant::Ref => Some(reference::vec_dot(ty)),
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::vec_dot(self, ty)
            }
            #[cfg(target_arch = "aarch64")]
            Variant::Neon | Variant::NeonDotprod => aarch64::vec_dot(self, ty),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// This variant's own prefill tile kernel for `ty` (see [`TileDotFn`]), if any and the CPU
    /// can run it. Types without one are computed pair by pair with [`Self::vec_dot`].
    pub fn vec_dot_tile(self, ty: GgmlType) -> Option<TileDotFn> {
        if !self.is_supported() {
            return None;
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::vec_dot_tile(self, ty)
            }
            #[allow(unreachable_patterns)]
            _ => {
                let _ = ty;
                None
            }
        }
    }

    /// This variant's own decode tile kernel ([`DECODE_ROWS`] x 1) for `ty`, if any and the CPU
    /// can run it. Types without one are computed row by row with [`Self::vec_dot`].
    pub fn vec_dot_rows(self, ty: GgmlType) -> Option<TileDotFn> {
        if !self.is_supported() {
            return None;
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::vec_dot_rows(self, ty)
            }
            #[allow(unreachable_patterns)]
            _ => {
                let _ = ty;
                None
            }
        }
    }

    /// This variant's own kernels for interleaved weights of `ty`, if any and the CPU can run
    /// them (the reference has its own in [`interleaved`], not listed here).
    pub fn group_kernels(self, ty: GgmlType) -> Option<interleaved::GroupKernels> {
        if !self.is_supported() {
            return None;
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::group_kernels(self, ty)
            }
            #[allow(unreachable_patterns)]
            _ => {
                let _ = ty;
                None
            }
        }
    }

    /// This variant's own activation quantizer for `act_ty`, if any and the CPU can run it.
    pub fn quantize(self, act_ty: GgmlType) -> Option<QuantizeFn> {
        if !self.is_supported() {
            return None;
        }
        match self {
            Variant::Ref => Some(reference::quantize(act_ty)),
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::quantize(self, act_ty)
            }
            #[cfg(target_arch = "aarch64")]
            Variant::Neon | Variant::NeonDotprod => aarch64::quantize(self, act_ty),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// This variant's own f32 dot product, if any and the CPU can run it.
    pub fn dot_f32(self) -> Option<DotF32Fn> {
        if !self.is_supported() {
            return None;
        }
        match self {
            Variant::Ref => Some(reference::dot_f32),
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::dot_f32(self)
            }
            #[cfg(target_arch = "aarch64")]
            Variant::Neon | Variant::NeonDotprod => aarch64::dot_f32(self),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// This variant's own `out += a * x`, if any and the CPU can run it.
    pub fn scale_add(self) -> Option<ScaleAddFn> {
        if !self.is_supported() {
            return None;
        }
        match self {
            Variant::Ref => Some(reference::scale_add),
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 | Variant::Avx2Vnni | Variant::Avx512 | Variant::Avx512Vnni => {
                x86_64::scale_add(self)
            }
            #[cfg(target_arch = "aarch64")]
            Variant::Neon | Variant::NeonDotprod => aarch64::scale_add(self),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// The number of blocks in a row of `n` elements, after checking that both rows hold them
/// (`w_block` and `a_block` bytes per block of `qk` elements). The SIMD kernels read raw
/// pointers, so their safe wrappers must establish this; it costs two compares per row.
#[allow(dead_code)] // not every architecture's build has SIMD kernels
#[inline(always)]
pub(crate) fn row_blocks(
    n: usize,
    qk: usize,
    w: &[u8],
    w_block: usize,
    a: &[u8],
    a_block: usize,
) -> usize {
    let nb = n / qk;
    assert!(
        nb * qk == n && w.len() >= nb * w_block && a.len() >= nb * a_block,
        "vec_dot: {n} elements do not fit rows of {} and {} bytes ({qk} per block)",
        w.len(),
        a.len()
    );
    nb
}

/// [`row_blocks`] for a tile: `rows` weight rows `w_stride` bytes apart and `toks` activation
/// rows `a_stride` bytes apart all hold the blocks of `n` elements, and `out` holds
/// `out[r * out_stride + t]` for every pair.
#[allow(dead_code, clippy::too_many_arguments)] // not every architecture's build has tiles
#[inline(always)]
pub(crate) fn tile_blocks(
    n: usize,
    qk: usize,
    (w, w_stride, w_block): (&[u8], usize, usize),
    (a, a_stride, a_block): (&[u8], usize, usize),
    (out, out_stride): (&[f32], usize),
    (rows, toks): (usize, usize),
) -> usize {
    let nb = n / qk;
    assert!(
        nb * qk == n
            && w_stride >= nb * w_block
            && a_stride >= nb * a_block
            && w.len() >= (rows - 1) * w_stride + nb * w_block
            && a.len() >= (toks - 1) * a_stride + nb * a_block
            && out_stride >= toks
            && out.len() >= (rows - 1) * out_stride + toks,
        "vec_dot_tile: {rows}x{toks} rows of {n} elements do not fit the buffers"
    );
    nb
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
