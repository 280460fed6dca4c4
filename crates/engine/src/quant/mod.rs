//! Block formats of GGUF tensors, one file per ggml type, named as ggml names them.
//!
//! Each file holds the `#[repr(C)]` block with a compile-time size assertion and the safe
//! scalar reference: `dequantize_row`, `quantize_row` (where we need one) and `vec_dot`
//! (weights against the activation format given by [`GgmlType::vec_dot_type`]).
//! The SIMD variants live in `crate::cpu` and are tested against these references.
//!
//! Rows are passed as raw little-endian bytes (`&[u8]`) straight out of the mmap: blocks are
//! read with unaligned loads, so no copy and no alignment requirement on the file.

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
    PartialBlock { ty: GgmlType, n: usize, block: usize },
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
        if n % block != 0 {
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

// The per-type modules are added by the quant work; each provides the same three functions.
// pub mod f16; pub mod bf16; pub mod q4_0; ... pub mod q8_k;

/// Scalar reference: decode one row of `ty` (raw block bytes) into `dst`.
/// `src.len()` must equal `ty.row_bytes(dst.len())`; callers validate shapes at load.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let _ = (ty, src, dst);
    todo!("filled in by the quant formats work")
}

/// Scalar reference: encode `src` as blocks of `ty` into `dst` (`ty.row_bytes(src.len())` bytes).
/// Every type has one (round-to-nearest, as ggml's `quantize_row_*_ref`), so tests can build
/// weights of any type; activations use Q8_0, Q8_1 and Q8_K.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let _ = (ty, src, dst);
    todo!("filled in by the quant formats work")
}

/// Scalar reference dot product of a weight row of `ty` with activations already in
/// `ty.vec_dot_type()`, both `n` elements long.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    let _ = (ty, n, w, act);
    todo!("filled in by the quant formats work")
}
