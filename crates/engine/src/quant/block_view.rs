//! Zero-copy views of raw block bytes (straight out of the mmap) as `#[repr(C)]` block structs.
//!
//! GGUF places tensor data at 32-byte aligned offsets, but a block of 18, 22 or 110 bytes makes
//! every other block misaligned for any field wider than a byte. So every block struct here is
//! built from byte arrays only (`[u8; N]`, `[i8; N]` and the little-endian wrappers below):
//! alignment 1, no padding, every bit pattern valid. That makes viewing `&[u8]` as `&[Block]`
//! sound for any address and length, and reading a field little-endian makes the result
//! independent of the host's byte order. This file holds the only `unsafe` of `quant`.

use half::{bf16, f16};

/// A block struct that may be viewed in place over raw bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]` structs whose fields are all byte arrays or the
/// `*Le` wrappers of this module, so that the alignment is 1, there is no padding and every bit
/// pattern is a valid value. The size must be the ggml block size (each block file asserts it).
pub unsafe trait Block: Copy + 'static {}

/// Views `bytes` as a slice of blocks. Panics when `bytes` is not a whole number of blocks.
#[inline]
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    const { assert!(align_of::<B>() == 1 && size_of::<B>() > 0) };
    let size = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes are not a whole number of {size}-byte blocks",
        bytes.len()
    );
    // SAFETY: `B: Block` promises alignment 1 (checked above at compile time), no padding and
    // validity of every bit pattern, so any `size` bytes are a valid `B` at any address. The
    // length is exact, and the returned slice borrows `bytes`, so it cannot outlive or alias a
    // mutable use of them.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// Views `bytes` as a mutable slice of blocks, for the quantizers. Same contract as [`as_blocks`].
#[inline]
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    const { assert!(align_of::<B>() == 1 && size_of::<B>() > 0) };
    let size = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes are not a whole number of {size}-byte blocks",
        bytes.len()
    );
    // SAFETY: as in `as_blocks`; in addition every bit pattern of `B` is a valid `u8` sequence,
    // so whatever is written through the blocks leaves `bytes` valid, and the exclusive borrow
    // of `bytes` is carried over to the returned slice.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / size) }
}

/// An IEEE half stored as two little-endian bytes (ggml's `ggml_half`), alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct F16Le(pub [u8; 2]);

impl F16Le {
    #[inline]
    pub fn to_f32(self) -> f32 {
        f16::from_le_bytes(self.0).to_f32()
    }

    /// Round to nearest even, as ggml's `GGML_FP32_TO_FP16`.
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        Self(f16::from_f32(x).to_le_bytes())
    }
}

/// A bfloat16 stored as two little-endian bytes, alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bf16Le(pub [u8; 2]);

impl Bf16Le {
    #[inline]
    pub fn to_f32(self) -> f32 {
        bf16::from_le_bytes(self.0).to_f32()
    }

    /// Round to nearest even, NaN kept quiet, as ggml's `GGML_FP32_TO_BF16`.
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        Self(bf16::from_f32(x).to_le_bytes())
    }
}

/// An `f32` stored as four little-endian bytes, alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct F32Le(pub [u8; 4]);

impl F32Le {
    #[inline]
    pub fn get(self) -> f32 {
        f32::from_le_bytes(self.0)
    }

    #[inline]
    pub fn new(x: f32) -> Self {
        Self(x.to_le_bytes())
    }
}

/// An `i16` stored as two little-endian bytes, alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I16Le(pub [u8; 2]);

impl I16Le {
    #[inline]
    pub fn get(self) -> i16 {
        i16::from_le_bytes(self.0)
    }

    #[inline]
    pub fn new(x: i16) -> Self {
        Self(x.to_le_bytes())
    }
}

/// The values of a row of little-endian `f32`s (the F32 tensor and activation format).
#[inline]
pub fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}
