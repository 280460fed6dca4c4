//! Block formats of GGUF tensors, one file per ggml type, named as ggml names them.
//!
//! Each file holds the `#[repr(C)]` block with a compile-time size assertion and the safe
//! scalar reference: `dequantize_row`, `quantize_row` and `vec_dot` (weights against the
//! activation format given by [`GgmlType::vec_dot_type`]). The SIMD variants live in
//! `crate::cpu` and are tested against these references.
//!
//! Rows are passed as raw little-endian bytes (`&[u8]`) straight out of the mmap: blocks are
//! viewed in place by [`block_view::as_blocks`] (every block struct has alignment 1), so no
//! copy and no alignment requirement on the file. Nothing here allocates.
//!
//! Rounding: the activation quantizers (Q8_0, Q8_1, Q8_K) produce exactly ggml's bytes; the
//! weight quantizers follow ggml's `quantize_row_*_ref` (round-to-nearest, with the K-quants'
//! scale searches in `k_search.rs`) and only build test weights and files. `vec_dot`
//! accumulates in integers where ggml does, so results equal ggml's up to float
//! reassociation.

use thiserror::Error;

/// ggml tensor types. Discriminants are the on-disk `ggml_type` ids.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;
/// Elements per block of the legacy quants (Q4_0 .. Q8_1).
pub const QK4_0: usize = 32;
pub const QK4_1: usize = 32;
pub const QK5_0: usize = 32;
pub const QK5_1: usize = 32;
pub const QK8_0: usize = 32;
pub const QK8_1: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("unsupported tensor type id {0}")]
    UnsupportedType(u32),
    #[error("row of {n} elements is not a whole number of {ty:?} blocks ({block} elements each)")]
    PartialBlock {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error("{ty:?} has no quantizer")]
    NoQuantizer { ty: GgmlType },
}

impl GgmlType {
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];

    pub fn from_u32(id: u32) -> Result<Self, QuantError> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| *t as u32 == id)
            .ok_or(QuantError::UnsupportedType(id))
    }

    /// The name ggml and llama.cpp print for this type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            GgmlType::Q8_K => 292,
        }
    }

    /// Bytes of a row of `n` elements, or an error when `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize, QuantError> {
        let block = self.block_size();
        if !n.is_multiple_of(block) {
            return Err(QuantError::PartialBlock { ty: self, n, block });
        }
        Ok(n / block * self.type_size())
    }

    /// The format activations are quantized to before a dot product with a row of this type
    /// (ggml's `vec_dot_type`): integer dot products need integer activations.
    pub fn vec_dot_type(self) -> GgmlType {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K => GgmlType::Q8_K,
        }
    }
}

pub mod block_view;
mod k_search;

pub mod bf16;
pub mod f16;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;

/// Scalar reference: decode one row of `ty` (raw block bytes) into `dst`.
/// `src.len()` must equal `ty.row_bytes(dst.len())`; callers validate shapes at load.
/// Panics when the lengths disagree.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => f32_dequantize_row(src, dst),
        GgmlType::F16 => f16::dequantize_row(src, dst),
        GgmlType::BF16 => bf16::dequantize_row(src, dst),
        GgmlType::Q4_0 => q4_0::dequantize_row(src, dst),
        GgmlType::Q4_1 => q4_1::dequantize_row(src, dst),
        GgmlType::Q5_0 => q5_0::dequantize_row(src, dst),
        GgmlType::Q5_1 => q5_1::dequantize_row(src, dst),
        GgmlType::Q8_0 => q8_0::dequantize_row(src, dst),
        GgmlType::Q8_1 => q8_1::dequantize_row(src, dst),
        GgmlType::Q2_K => q2_k::dequantize_row(src, dst),
        GgmlType::Q3_K => q3_k::dequantize_row(src, dst),
        GgmlType::Q4_K => q4_k::dequantize_row(src, dst),
        GgmlType::Q5_K => q5_k::dequantize_row(src, dst),
        GgmlType::Q6_K => q6_k::dequantize_row(src, dst),
        GgmlType::Q8_K => q8_k::dequantize_row(src, dst),
    }
}

/// Scalar reference: encode `src` as blocks of `ty` into `dst` (`ty.row_bytes(src.len())` bytes).
/// Every type has one (round-to-nearest, as ggml's `quantize_row_*_ref`), so tests can build
/// weights of any type; activations use Q8_0, Q8_1 and Q8_K.
/// Errors when `src` is not a whole number of blocks; panics when `dst` has the wrong length.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let bytes = ty.row_bytes(src.len())?;
    assert_eq!(
        dst.len(),
        bytes,
        "{} row of {} elements",
        ty.name(),
        src.len()
    );
    match ty {
        GgmlType::F32 => f32_quantize_row(src, dst),
        GgmlType::F16 => f16::quantize_row(src, dst),
        GgmlType::BF16 => bf16::quantize_row(src, dst),
        GgmlType::Q4_0 => q4_0::quantize_row(src, dst),
        GgmlType::Q4_1 => q4_1::quantize_row(src, dst),
        GgmlType::Q5_0 => q5_0::quantize_row(src, dst),
        GgmlType::Q5_1 => q5_1::quantize_row(src, dst),
        GgmlType::Q8_0 => q8_0::quantize_row(src, dst),
        GgmlType::Q8_1 => q8_1::quantize_row(src, dst),
        GgmlType::Q2_K => q2_k::quantize_row(src, dst),
        GgmlType::Q3_K => q3_k::quantize_row(src, dst),
        GgmlType::Q4_K => q4_k::quantize_row(src, dst),
        GgmlType::Q5_K => q5_k::quantize_row(src, dst),
        GgmlType::Q6_K => q6_k::quantize_row(src, dst),
        GgmlType::Q8_K => q8_k::quantize_row(src, dst),
    }
    Ok(())
}

/// Scalar reference dot product of a weight row of `ty` with activations already in
/// `ty.vec_dot_type()`, both `n` elements long. Panics when the lengths disagree.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match ty {
        GgmlType::F32 => f32_vec_dot(n, w, act),
        GgmlType::F16 => f16::vec_dot(n, w, act),
        GgmlType::BF16 => bf16::vec_dot(n, w, act),
        GgmlType::Q4_0 => q4_0::vec_dot(n, w, act),
        GgmlType::Q4_1 => q4_1::vec_dot(n, w, act),
        GgmlType::Q5_0 => q5_0::vec_dot(n, w, act),
        GgmlType::Q5_1 => q5_1::vec_dot(n, w, act),
        GgmlType::Q8_0 => q8_0::vec_dot(n, w, act),
        GgmlType::Q8_1 => q8_1::vec_dot(n, w, act),
        GgmlType::Q2_K => q2_k::vec_dot(n, w, act),
        GgmlType::Q3_K => q3_k::vec_dot(n, w, act),
        GgmlType::Q4_K => q4_k::vec_dot(n, w, act),
        GgmlType::Q5_K => q5_k::vec_dot(n, w, act),
        GgmlType::Q6_K => q6_k::vec_dot(n, w, act),
        GgmlType::Q8_K => q8_k::vec_dot(n, w, act),
    }
}

/// The float accumulation of ggml's x86 AVX2 dot products for the 32-element block formats
/// (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), which is what llama.cpp runs on the x86-64 hosts our greedy
/// tokens are checked against. Float addition is not associative, so to give llama.cpp's
/// results to the last bit every tier must sum in this order:
///
/// - each block's 32 integer products form eight lane sums, lane `k` holding elements
///   `4k..4k + 4` (`maddubs` + `madd` with ones), exact in i32;
/// - lane `k` accumulates `fma(d, lane_k as f32, acc_k)` over the blocks, with
///   `d = dw * da` rounded to f32 first (one `_mm256_fmadd_ps` per block);
/// - the eight lanes are reduced as `hsum_float_8`: `(a0 + a4) + (a2 + a6)` and
///   `(a1 + a5) + (a3 + a7)`, then the two added.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BlockAcc8 {
    lanes: [f32; 8],
}

impl BlockAcc8 {
    /// Adds one block: `prods[i]` is the integer product of element `i` of the block.
    #[inline]
    pub(crate) fn add_block(&mut self, d: f32, prods: &[i32; 32]) {
        for (k, acc) in self.lanes.iter_mut().enumerate() {
            let p = &prods[4 * k..4 * k + 4];
            let lane = (p[0] + p[1]) + (p[2] + p[3]);
            *acc = d.mul_add(lane as f32, *acc);
        }
    }

    /// `hsum_float_8`.
    #[inline]
    pub(crate) fn sum(&self) -> f32 {
        let a = &self.lanes;
        let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
        (r[0] + r[2]) + (r[1] + r[3])
    }
}

// F32 is the trivial format: little-endian f32s, one per "block".

fn f32_dequantize_row(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 4 * dst.len(), "F32 row length");
    for (y, x) in dst.iter_mut().zip(block_view::f32s(src)) {
        *y = x;
    }
}

fn f32_quantize_row(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), 4 * src.len(), "F32 row length");
    for (y, x) in dst.chunks_exact_mut(4).zip(src) {
        y.copy_from_slice(&x.to_le_bytes());
    }
}

/// As ggml's scalar `ggml_vec_dot_f32`: products in f32, summed in f64.
fn f32_vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    assert!(
        w.len() == 4 * n && act.len() == 4 * n,
        "F32 vec_dot lengths"
    );
    block_view::f32s(w)
        .zip(block_view::f32s(act))
        .map(|(x, y)| f64::from(x * y))
        .sum::<f64>() as f32
}
