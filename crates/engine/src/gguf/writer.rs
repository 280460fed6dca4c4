//! A small GGUF v3 writer, used by tests across the project to build tiny models and by
//! tools. It writes what llama.cpp writes: header, metadata, tensor index, zero padding up to
//! `general.alignment`, then each tensor at an aligned offset, padded to the alignment.
//!
//! ```
//! use backstop_engine::gguf::{writer::GgufWriter, GgufHeader};
//!
//! let mut w = GgufWriter::new();
//! w.add("general.architecture", "llama").add("llama.block_count", 2u32);
//! w.add_f32_tensor("output_norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
//! let bytes = w.to_bytes().unwrap();
//! let header = GgufHeader::parse(&bytes).unwrap();
//! assert_eq!(header.get_u32("llama.block_count").unwrap(), 2);
//! ```
//!
//! The writer only produces valid files: tensor bytes must match their dims and type, names
//! are unique, and `general.alignment` (if set) is checked when writing. Tests that need a
//! corrupt file write a valid one and then patch its bytes.

use std::io::Write;
use std::path::Path;

use super::keys;
use super::reader::{align_up, alignment_from_metadata, tensor_n_bytes, MAGIC};
use super::value::{Array, Value};
use super::GgufError;
use crate::quant::GgmlType;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builder for a GGUF file; see the module docs.
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version-3 file (no metadata, no tensors, default alignment 32).
    pub fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// The version field to write. Versions 2 and 3 share one little-endian layout; other
    /// values produce files the reader rejects, which tests use.
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Add a metadata value, or replace the value of a key already added (keeping its place),
    /// so a file never holds a key twice.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Set `general.alignment` (a u32, as llama.cpp writes it); checked by the write.
    pub fn alignment(&mut self, alignment: u32) -> &mut Self {
        self.add(keys::GENERAL_ALIGNMENT, alignment)
    }

    /// Add a tensor of raw bytes in `ty`'s block format; `dims` in ggml order (`dims[0]` is the
    /// row). Errors when the shape is invalid, the byte count does not match, or the name is
    /// taken.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        let data = data.into();
        let expected = tensor_n_bytes(&name, dims, ty)?;
        if data.len() as u64 != expected {
            return Err(GgufError::TensorSizeMismatch {
                name,
                ty,
                expected,
                got: data.len() as u64,
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor(name));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    /// Add an F32 tensor from values.
    pub fn add_f32_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> Result<&mut Self, GgufError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, bytes)
    }

    /// The whole file image.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let (mut out, offsets, alignment) = self.header()?;
        let data_offset = out.len() as u64;
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            pad_to(&mut out, to_usize(data_offset + offset)?);
            out.extend_from_slice(&t.data);
        }
        let end = align_up(out.len() as u64, alignment).unwrap_or(out.len() as u64);
        pad_to(&mut out, to_usize(end)?);
        Ok(out)
    }

    /// Write the file to `path` (created or truncated).
    pub fn write_path(&self, path: &Path) -> Result<(), GgufError> {
        // Streamed rather than via to_bytes so a large model is not held twice in memory.
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let (header, offsets, alignment) = self.header()?;
        let data_offset = header.len() as u64;
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        file.write_all(&header).map_err(io)?;
        let mut pos = data_offset;
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            write_zeros(&mut file, data_offset + offset - pos).map_err(io)?;
            file.write_all(&t.data).map_err(io)?;
            pos = data_offset + offset + t.data.len() as u64;
        }
        let end = align_up(pos, alignment).unwrap_or(pos);
        write_zeros(&mut file, end - pos).map_err(io)?;
        file.flush().map_err(io)
    }

    /// Header bytes padded to the data section, each tensor's offset within the data section,
    /// and the alignment.
    fn header(&self) -> Result<(Vec<u8>, Vec<u64>, u64), GgufError> {
        let alignment = alignment_from_metadata(&self.metadata)?;
        // Only reachable with absurd sizes (a 2^63 alignment or tensors summing past 2^64).
        let too_large = |count| GgufError::TooLarge {
            what: "data section",
            count,
        };

        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut next = 0u64;
        for t in &self.tensors {
            offsets.push(next);
            let end = next
                .checked_add(t.data.len() as u64)
                .ok_or(too_large(next))?;
            next = align_up(end, alignment).ok_or(too_large(end))?;
        }

        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        put_u64(&mut out, self.tensors.len());
        put_u64(&mut out, self.metadata.len());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(t.ty as u32).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let data_offset =
            align_up(out.len() as u64, alignment).ok_or(too_large(out.len() as u64))?;
        pad_to(&mut out, to_usize(data_offset)?);
        Ok((out, offsets, alignment))
    }
}

/// An offset into an in-memory image (only fails on 32-bit targets with > 4 GiB images).
fn to_usize(offset: u64) -> Result<usize, GgufError> {
    usize::try_from(offset).map_err(|_| GgufError::TooLarge {
        what: "file image",
        count: offset,
    })
}

fn pad_to(out: &mut Vec<u8>, len: usize) {
    if out.len() < len {
        out.resize(len, 0);
    }
}

fn write_zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 64] = [0; 64];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn put_u64(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&array.elem_type_id().to_le_bytes());
    put_u64(out, array.len());
    fn each<T: Copy, const N: usize>(out: &mut Vec<u8>, v: &[T], to_le: fn(T) -> [u8; N]) {
        for &x in v {
            out.extend_from_slice(&to_le(x));
        }
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each(out, v, i8::to_le_bytes),
        Array::U16(v) => each(out, v, u16::to_le_bytes),
        Array::I16(v) => each(out, v, i16::to_le_bytes),
        Array::U32(v) => each(out, v, u32::to_le_bytes),
        Array::I32(v) => each(out, v, i32::to_le_bytes),
        Array::U64(v) => each(out, v, u64::to_le_bytes),
        Array::I64(v) => each(out, v, i64::to_le_bytes),
        Array::F32(v) => each(out, v, f32::to_le_bytes),
        Array::F64(v) => each(out, v, f64::to_le_bytes),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
    }
}
