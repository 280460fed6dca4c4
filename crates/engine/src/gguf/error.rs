//! The one error type of the GGUF reader and writer.
//!
//! Variants are structured so that tests (and users reading a message) can tell exactly which
//! check a file failed: a hostile or damaged file must be rejected with a name for the damage,
//! never with a panic or an allocation sized by the file.

use thiserror::Error;

use crate::quant::GgmlType;

#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (this reader handles versions 2 and 3)")]
    UnsupportedVersion(u32),
    /// The version field reads as a byte-swapped small number: a big-endian GGUF file.
    #[error("big-endian GGUF file (version {version} byte-swapped); only little-endian files are supported")]
    BigEndian { version: u32 },
    #[error("file truncated: {what} at byte {offset} runs past the end")]
    Truncated { what: &'static str, offset: u64 },
    /// A count or length read from the file that cannot fit in the bytes that remain.
    #[error("{what} of {count} cannot fit in the remaining file")]
    TooLarge { what: &'static str, count: u64 },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("metadata key {key} has unknown value type id {id}")]
    UnknownValueType { key: String, id: u32 },
    #[error("metadata key {key} holds a bool byte {value}, expected 0 or 1")]
    BadBool { key: String, value: u8 },
    #[error("metadata key {key} nests arrays deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata key {0} appears more than once")]
    DuplicateKey(String),
    #[error("missing metadata key {0}")]
    MissingKey(String),
    #[error("metadata key {key} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("metadata key {key} holds {value}, which does not fit in {expected}")]
    ValueOutOfRange {
        key: String,
        expected: &'static str,
        value: i128,
    },
    /// `general.alignment` must be a nonzero power of two.
    #[error("general.alignment {0} is not a nonzero power of two")]
    BadAlignment(u64),
    #[error("tensor {0} appears more than once")]
    DuplicateTensor(String),
    #[error("tensor {name} has bad dimensions {dims:?}: {reason}")]
    BadDims {
        name: String,
        dims: Vec<u64>,
        reason: &'static str,
    },
    #[error("tensor {name} has unsupported type id {id}")]
    UnsupportedType { name: String, id: u32 },
    #[error("tensor {name} data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {name} ({n_bytes} bytes at data offset {offset}) lies outside the \
         {data_len}-byte data section"
    )]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        n_bytes: u64,
        data_len: u64,
    },
    #[error("tensors {a} and {b} overlap in the data section")]
    OverlappingTensors { a: String, b: String },
    #[error("tensor {0} not found")]
    MissingTensor(String),
    /// Writer: the bytes given for a tensor do not match its dimensions and type.
    #[error("tensor {name} of type {ty:?} needs {expected} bytes, got {got}")]
    TensorSizeMismatch {
        name: String,
        ty: GgmlType,
        expected: u64,
        got: u64,
    },
}
