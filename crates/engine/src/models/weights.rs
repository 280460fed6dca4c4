//! Typed, shape-checked handles on tensors inside the mapped file. Shapes are validated once at
//! load so the forward pass only slices.

use std::sync::Arc;

use super::ModelError;
use crate::cpu::{interleaved, Kernels};
use crate::gguf::{GgufFile, TensorInfo};
use crate::ops::matmul::MatRef;
use crate::quant::{self, GgmlType};

/// A weight matrix of `n_out` rows of `n_in` elements (ggml dims `[n_in, n_out]`).
#[derive(Clone, Debug)]
pub struct Linear {
    pub info: TensorInfo,
    pub n_in: usize,
    pub n_out: usize,
    /// The rows repacked into interleaved groups ([`Linear::interleave`]); the matrix
    /// products read these instead of the file's bytes, which stay for [`Linear::row_f32`].
    interleaved: Option<Interleaved>,
}

/// Repacked weight bytes, shared by the clones of a [`Linear`].
#[derive(Clone)]
struct Interleaved(Arc<Vec<u8>>);

impl std::fmt::Debug for Interleaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interleaved({} bytes)", self.0.len())
    }
}

impl Linear {
    pub fn load(
        file: &GgufFile,
        name: &str,
        n_in: usize,
        n_out: usize,
    ) -> Result<Self, ModelError> {
        let info = file
            .tensor(name)
            .ok_or_else(|| crate::gguf::GgufError::MissingTensor(name.to_string()))?
            .clone();
        check_dims(&info, &[n_in as u64, n_out as u64])?;
        if matches!(info.ty, GgmlType::Q8_1 | GgmlType::Q8_K) {
            return Err(ModelError::BadTensorType {
                name: name.into(),
                ty: info.ty.name(),
                role: "a weight matrix",
            });
        }
        Ok(Self {
            info,
            n_in,
            n_out,
            interleaved: None,
        })
    }

    /// Rows `first..first + n_rows` of the `total_rows`-row matrix `name`, as a matrix of its
    /// own: a view of the same bytes (rows are whole blocks, so a row range is a byte range).
    /// Fused tensors (Phi-3's `attn_qkv`, its gate-and-up `ffn_up`) are split this way, so the
    /// forward pass sees separate matrices without a copy.
    pub fn load_rows(
        file: &GgufFile,
        name: &str,
        n_in: usize,
        total_rows: usize,
        first: usize,
        n_rows: usize,
    ) -> Result<Self, ModelError> {
        let whole = Self::load(file, name, n_in, total_rows)?;
        debug_assert!(first + n_rows <= total_rows);
        let row_bytes = whole.info.n_bytes / total_rows as u64;
        let mut info = whole.info;
        info.offset += first as u64 * row_bytes;
        info.n_bytes = n_rows as u64 * row_bytes;
        info.dims = vec![n_in as u64, n_rows as u64];
        Ok(Self {
            info,
            n_in,
            n_out: n_rows,
            interleaved: None,
        })
    }

    pub fn mat<'a>(&'a self, file: &'a GgufFile) -> MatRef<'a> {
        let (data, interleaved) = match &self.interleaved {
            Some(Interleaved(bytes)) => (bytes.as_slice(), true),
            None => (file.tensor_data(&self.info), false),
        };
        MatRef {
            ty: self.info.ty,
            n_in: self.n_in,
            n_out: self.n_out,
            data,
            interleaved,
        }
    }

    /// Repack the rows into interleaved groups when the kernels `k` have SIMD code for them
    /// (`cpu::interleaved`), handing the file's pages of this tensor back to the page cache
    /// chunk by chunk as they are copied, so the copy never counts twice in the resident set.
    /// Returns whether it did.
    pub fn interleave(&mut self, file: &GgufFile, k: &Kernels) -> bool {
        let ty = self.info.ty;
        if self.interleaved.is_some()
            || !interleaved::can_interleave(ty, self.n_out)
            || k.group_kernels_simd(ty).is_none()
        {
            return false;
        }
        let data = file.tensor_data(&self.info);
        let release = |done: &[u8]| file.release(done);
        let Some(packed) =
            interleaved::interleave_releasing(ty, data, self.n_in, self.n_out, release)
        else {
            return false;
        };
        self.interleaved = Some(Interleaved(Arc::new(packed)));
        true
    }

    /// Dequantize row `r` (an embedding lookup).
    pub fn row_f32(&self, file: &GgufFile, r: usize, out: &mut [f32]) {
        let rb = self.info.n_bytes as usize / self.n_out;
        let data = file.tensor_data(&self.info);
        quant::dequantize_row(self.info.ty, &data[r * rb..(r + 1) * rb], out);
    }
}

pub fn check_dims(info: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    if info.dims != expected {
        return Err(ModelError::BadShape {
            name: info.name.clone(),
            expected: expected.to_vec(),
            found: info.dims.clone(),
        });
    }
    Ok(())
}

/// A small vector (norm weight, bias) copied out of the file as f32.
pub fn load_vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let info = file
        .tensor(name)
        .ok_or_else(|| crate::gguf::GgufError::MissingTensor(name.to_string()))?;
    check_dims(info, &[n as u64])?;
    // The reader already checked that dims[0] is a whole number of blocks.
    let mut out = vec![0.0; n];
    quant::dequantize_row(info.ty, file.tensor_data(info), &mut out);
    Ok(out)
}

pub fn load_vector_opt(
    file: &GgufFile,
    name: &str,
    n: usize,
) -> Result<Option<Vec<f32>>, ModelError> {
    if file.tensor(name).is_none() {
        return Ok(None);
    }
    load_vector(file, name, n).map(Some)
}

pub type SharedFile = Arc<GgufFile>;
