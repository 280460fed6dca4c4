//! Typed, shape-checked handles on tensors inside the mapped file. Shapes are validated once at
//! load so the forward pass only slices.

use std::sync::Arc;

use super::ModelError;
use crate::gguf::{GgufFile, TensorInfo};
use crate::ops::matmul::MatRef;
use crate::quant::{self, GgmlType};

/// A weight matrix of `n_out` rows of `n_in` elements (ggml dims `[n_in, n_out]`).
#[derive(Clone, Debug)]
pub struct Linear {
    pub info: TensorInfo,
    pub n_in: usize,
    pub n_out: usize,
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
        Ok(Self { info, n_in, n_out })
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
        })
    }

    pub fn mat<'a>(&self, file: &'a GgufFile) -> MatRef<'a> {
        MatRef {
            ty: self.info.ty,
            n_in: self.n_in,
            n_out: self.n_out,
            data: file.tensor_data(&self.info),
        }
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
