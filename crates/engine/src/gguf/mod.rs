//! GGUF v2/v3 reader over a memory map (tensors stay in the mapping: zero-copy) and a small
//! writer used by tests and tools to build GGUF files.
//!
//! Invariant: every count, length, offset and dimension read from the file is validated before
//! it is used or allocated for; a hostile file yields a [`GgufError`], never a panic. After
//! [`GgufHeader::parse`] succeeds, every [`TensorInfo`] has 1 to 4 nonzero dims, a known type,
//! rows of whole blocks, an aligned offset and `n_bytes` that lie inside the data section, and
//! no two tensors overlap; metadata keys and tensor names are unique.
//!
//! Cost: parsing copies the metadata (strings, arrays) and the tensor index into owned values;
//! tensor data is never copied.
//!
//! Submodules: `reader` (parsing and validation), `value` (metadata values), `writer`
//! ([`writer::GgufWriter`]), `error` ([`GgufError`]), `keys` (key names).

use std::path::Path;

use memmap2::Mmap;

use crate::quant::GgmlType;

mod error;
pub mod keys;
mod reader;
mod value;
pub mod writer;

pub use error::GgufError;
pub use reader::{DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};
pub use value::{Array, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset from the start of the data section (validated: aligned, in bounds).
    pub offset: u64,
    /// Bytes of tensor data (validated: fits in the file).
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The parsed header: metadata and tensor index, owning its strings; no tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parse and validate a whole file image (header + data) held in memory. Used by the fuzzer.
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        reader::parse(bytes)
    }

    // Lookups scan linearly: a file has tens of keys and hundreds of tensors, looked up once
    // each at load, and a side index would go stale if a caller edits the public fields.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_owned(),
            expected,
            found: found.type_name(),
        }
    }

    /// String value, or MissingKey / WrongType.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            other => Err(Self::wrong_type(key, "string", other)),
        }
    }

    /// Any integer type whose value fits in u32 (GGUF writers differ in the integer width used).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let value = self.require(key)?;
        let int = value
            .as_int()
            .ok_or_else(|| Self::wrong_type(key, "integer", value))?;
        u32::try_from(int).map_err(|_| GgufError::ValueOutOfRange {
            key: key.to_owned(),
            expected: "u32",
            value: int,
        })
    }

    /// Any integer type whose value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        let int = value
            .as_int()
            .ok_or_else(|| Self::wrong_type(key, "integer", value))?;
        u64::try_from(int).map_err(|_| GgufError::ValueOutOfRange {
            key: key.to_owned(),
            expected: "u64",
            value: int,
        })
    }

    /// F32 or F64 (narrowed), or an integer.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match *self.require(key)? {
            Value::F32(v) => Ok(v),
            Value::F64(v) => Ok(v as f32),
            ref other => match other.as_int() {
                Some(int) => Ok(int as f32),
                None => Err(Self::wrong_type(key, "float", other)),
            },
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(Self::wrong_type(key, "bool", other)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            other => Err(Self::wrong_type(key, "array", other)),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of `info` inside `file`, the image this header was parsed from; None when
    /// they lie outside it (an info from another file).
    pub fn tensor_data<'a>(&self, file: &'a [u8], info: &TensorInfo) -> Option<&'a [u8]> {
        let start = self.data_offset.checked_add(info.offset)?;
        let end = start.checked_add(info.n_bytes)?;
        file.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

/// A GGUF file on a read-only memory map.
pub struct GgufFile {
    pub header: GgufHeader,
    mmap: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and we never hand out a mutable view, but a memory
        // map is only sound while nobody else changes the file: if another process truncates
        // or rewrites the file while it is mapped, reads could fault (SIGBUS) or see bytes
        // change under validated slices. Model files are written once and then only read; we
        // document that they must not be modified or truncated while a backstop process has
        // them open, as every mmap-based GGUF loader (llama.cpp included) requires.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = GgufHeader::parse(&mmap)?;
        Ok(Self { header, mmap })
    }

    /// The whole file image.
    pub fn as_bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// The tensor's bytes inside the mapping (bounds were checked at open).
    ///
    /// Panics if `info` did not come from this file's header and lies outside the mapping:
    /// that is a caller bug, not bad input, since every info from this header is in bounds.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        match self.header.tensor_data(&self.mmap, info) {
            Some(data) => data,
            None => panic!(
                "tensor {} lies outside this file: TensorInfo from another file?",
                info.name
            ),
        }
    }

    /// Tell the kernel that `data` (a slice of this mapping) will not be read for a while: its
    /// pages leave the resident set and come back from the page cache if read again. For
    /// tensors whose bytes were copied elsewhere (repacked weights). A slice from elsewhere, or
    /// a failed advice, is ignored: this only saves memory.
    pub fn release(&self, data: &[u8]) {
        let base = self.mmap.as_ptr() as usize;
        let Some(offset) = (data.as_ptr() as usize).checked_sub(base) else {
            return;
        };
        if offset + data.len() > self.mmap.len() {
            return;
        }
        // SAFETY: the mapping is read-only and private, so none of its pages holds data that
        // exists nowhere else: after MADV_DONTNEED a read faults the file's bytes back in.
        #[cfg(unix)]
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
        };
    }

    /// Look up a tensor by name and return its info and bytes, or MissingTensor.
    pub fn tensor_by_name(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))?;
        Ok((info, self.tensor_data(info)))
    }
}

impl std::ops::Deref for GgufFile {
    type Target = GgufHeader;
    fn deref(&self) -> &GgufHeader {
        &self.header
    }
}
