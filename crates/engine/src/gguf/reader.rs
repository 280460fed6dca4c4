//! Parsing and validation of a GGUF v2/v3 image (little-endian).
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/value pairs, the tensor index (name, n_dims, dims, type, offset), then padding up to
//! `general.alignment` where the data section begins; tensor offsets are relative to it.
//!
//! Every count and length comes from an untrusted file, so each is checked against the bytes
//! that remain *before* anything is allocated for it: a count of 2^40 in a 1 KiB file is an
//! error, not a 2^40-entry `Vec::with_capacity`. The worst-case memory for a parsed header is
//! a small multiple of the file size (a 1-byte bool becomes 1 byte, an 8-byte empty string
//! becomes a 24-byte `String`, a 12-byte empty nested array a 32-byte `Array`).

use std::collections::HashSet;

use super::keys;
use super::value::{type_id, Array, Value};
use super::{GgufError, GgufHeader, TensorInfo};
use crate::quant::GgmlType;

pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Nested arrays are legal but never deeper than 2 in practice; a cap keeps a hostile file
/// from recursing us into a stack overflow (each level costs only 12 bytes of file).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Smallest possible encodings, used to bound counts by the bytes that remain.
/// A metadata pair: key length (8) + value type (4) + a 1-byte value; the key may be empty.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// A tensor index entry: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// A read position over the file image; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(GgufError::Truncated {
                what,
                offset: self.offset(),
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let slice = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 element count whose elements take at least `min_elem_bytes` each; rejected
    /// unless that many elements could fit in the rest of the file.
    fn count(&mut self, what: &'static str, min_elem_bytes: usize) -> Result<usize, GgufError> {
        let count = self.u64(what)?;
        let max = (self.remaining() / min_elem_bytes.max(1)) as u64;
        if count > max {
            return Err(GgufError::TooLarge { what, count });
        }
        // count <= remaining bytes, so it fits in usize.
        usize::try_from(count).map_err(|_| GgufError::TooLarge { what, count })
    }

    /// A length-prefixed byte string (not yet checked for UTF-8).
    fn string(&mut self, what: &'static str) -> Result<&'a [u8], GgufError> {
        let len = self.count(what, 1)?;
        self.take(len, what)
    }
}

fn utf8(bytes: &[u8], what: impl FnOnce() -> String) -> Result<&str, GgufError> {
    std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what: what() })
}

/// Parse and validate a whole GGUF image; see [`GgufHeader::parse`].
pub(crate) fn parse(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };

    let magic: [u8; 4] = c.array("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        // A big-endian writer stores version 3 as 03 00 00 00 swapped: 0x0300_0000 read LE.
        let swapped = version.swap_bytes();
        if version > 0xFFFF && (1..=0xFFFF).contains(&swapped) {
            return Err(GgufError::BigEndian { version: swapped });
        }
        return Err(GgufError::UnsupportedVersion(version));
    }

    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.count("metadata count", MIN_KV_BYTES)?;
    // Fail fast on an absurd tensor count; re-checked against what remains after metadata.
    if n_tensors > (c.remaining() / MIN_TENSOR_INFO_BYTES) as u64 {
        return Err(GgufError::TooLarge {
            what: "tensor count",
            count: n_tensors,
        });
    }

    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment_from_metadata(&metadata)?;

    if n_tensors > (c.remaining() / MIN_TENSOR_INFO_BYTES) as u64 {
        return Err(GgufError::TooLarge {
            what: "tensor count",
            count: n_tensors,
        });
    }
    // Bounded just above, so this is at most remaining / 32 entries.
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names: HashSet<&str> = HashSet::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let info = read_tensor_info(&mut c, alignment, &mut names)?;
        tensors.push(info);
    }

    let header_end = c.offset();
    let data_offset = align_up(header_end, alignment).ok_or(GgufError::TooLarge {
        what: "data section offset",
        count: header_end,
    })?;
    // With no tensors a file may legally end right after the index, before any padding.
    let data_len = (bytes.len() as u64).saturating_sub(data_offset);
    check_tensor_layout(&tensors, data_len)?;

    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn read_metadata(c: &mut Cursor<'_>, n_kv: usize) -> Result<Vec<(String, Value)>, GgufError> {
    // n_kv was bounded by remaining / MIN_KV_BYTES by the caller.
    let mut metadata = Vec::with_capacity(n_kv);
    let mut seen: HashSet<&str> = HashSet::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key_offset = c.offset();
        let key = utf8(c.string("metadata key")?, || {
            format!("metadata key at byte {key_offset}")
        })?;
        if !seen.insert(key) {
            return Err(GgufError::DuplicateKey(key.to_owned()));
        }
        let ty = c.u32("metadata value type")?;
        let value = read_value(c, ty, key)?;
        metadata.push((key.to_owned(), value));
    }
    Ok(metadata)
}

fn read_value(c: &mut Cursor<'_>, ty: u32, key: &str) -> Result<Value, GgufError> {
    const WHAT: &str = "metadata value";
    Ok(match ty {
        type_id::U8 => Value::U8(c.u8(WHAT)?),
        type_id::I8 => Value::I8(i8::from_le_bytes(c.array(WHAT)?)),
        type_id::U16 => Value::U16(u16::from_le_bytes(c.array(WHAT)?)),
        type_id::I16 => Value::I16(i16::from_le_bytes(c.array(WHAT)?)),
        type_id::U32 => Value::U32(c.u32(WHAT)?),
        type_id::I32 => Value::I32(i32::from_le_bytes(c.array(WHAT)?)),
        type_id::U64 => Value::U64(c.u64(WHAT)?),
        type_id::I64 => Value::I64(i64::from_le_bytes(c.array(WHAT)?)),
        type_id::F32 => Value::F32(f32::from_le_bytes(c.array(WHAT)?)),
        type_id::F64 => Value::F64(f64::from_le_bytes(c.array(WHAT)?)),
        type_id::BOOL => Value::Bool(read_bool(c.u8(WHAT)?, key)?),
        type_id::STRING => {
            let s = utf8(c.string("string value")?, || {
                format!("string value of key {key}")
            })?;
            Value::String(s.to_owned())
        }
        type_id::ARRAY => Value::Array(read_array(c, key, 1)?),
        id => {
            return Err(GgufError::UnknownValueType {
                key: key.to_owned(),
                id,
            })
        }
    })
}

/// Bools are one byte; anything but 0 or 1 means the file is damaged or misread.
fn read_bool(b: u8, key: &str) -> Result<bool, GgufError> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::BadBool {
            key: key.to_owned(),
            value,
        }),
    }
}

/// Bytes of the smallest encoding of one array element of type `ty`.
fn min_elem_bytes(ty: u32) -> Option<usize> {
    Some(match ty {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 => 8,
        // Length prefix of an empty string.
        type_id::STRING => 8,
        // Element type + count of an empty nested array.
        type_id::ARRAY => 4 + 8,
        _ => return None,
    })
}

/// Decode `count` fixed-size little-endian numbers in one bounds-checked read.
fn fixed<const N: usize, T>(
    c: &mut Cursor<'_>,
    count: usize,
    from_le: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>, GgufError> {
    // count was bounded by remaining / N, so the product cannot overflow.
    let bytes = c.take(count * N, "array data")?;
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut a = [0u8; N];
            a.copy_from_slice(chunk);
            from_le(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array, GgufError> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: key.to_owned(),
            max: MAX_ARRAY_DEPTH,
        });
    }
    let ty = c.u32("array element type")?;
    let min = min_elem_bytes(ty).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_owned(),
        id: ty,
    })?;
    let n = c.count("array count", min)?;
    Ok(match ty {
        type_id::U8 => Array::U8(c.take(n, "array data")?.to_vec()),
        type_id::I8 => Array::I8(fixed(c, n, i8::from_le_bytes)?),
        type_id::U16 => Array::U16(fixed(c, n, u16::from_le_bytes)?),
        type_id::I16 => Array::I16(fixed(c, n, i16::from_le_bytes)?),
        type_id::U32 => Array::U32(fixed(c, n, u32::from_le_bytes)?),
        type_id::I32 => Array::I32(fixed(c, n, i32::from_le_bytes)?),
        type_id::U64 => Array::U64(fixed(c, n, u64::from_le_bytes)?),
        type_id::I64 => Array::I64(fixed(c, n, i64::from_le_bytes)?),
        type_id::F32 => Array::F32(fixed(c, n, f32::from_le_bytes)?),
        type_id::F64 => Array::F64(fixed(c, n, f64::from_le_bytes)?),
        type_id::BOOL => Array::Bool(
            c.take(n, "array data")?
                .iter()
                .map(|&b| read_bool(b, key))
                .collect::<Result<_, _>>()?,
        ),
        type_id::STRING => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                let s = c.string("string in array")?;
                v.push(utf8(s, || format!("string {i} of key {key}"))?.to_owned());
            }
            Array::String(v)
        }
        type_id::ARRAY => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
        // min_elem_bytes already rejected every other id.
        id => {
            return Err(GgufError::UnknownValueType {
                key: key.to_owned(),
                id,
            })
        }
    })
}

/// `general.alignment` (default 32): any unsigned integer width, nonzero power of two.
pub(crate) fn alignment_from_metadata(metadata: &[(String, Value)]) -> Result<u64, GgufError> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == keys::GENERAL_ALIGNMENT) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let alignment: u64 = match *value {
        Value::U8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::U64(v) => v,
        ref other => {
            return Err(GgufError::WrongType {
                key: keys::GENERAL_ALIGNMENT.to_owned(),
                expected: "u32",
                found: other.type_name(),
            })
        }
    };
    if !alignment.is_power_of_two() {
        return Err(GgufError::BadAlignment(alignment));
    }
    Ok(alignment)
}

/// Round `x` up to a multiple of `alignment` (a power of two); None on overflow.
pub(crate) fn align_up(x: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

fn read_tensor_info<'a>(
    c: &mut Cursor<'a>,
    alignment: u64,
    names: &mut HashSet<&'a str>,
) -> Result<TensorInfo, GgufError> {
    let name_offset = c.offset();
    let name = utf8(c.string("tensor name")?, || {
        format!("tensor name at byte {name_offset}")
    })?;
    if !names.insert(name) {
        return Err(GgufError::DuplicateTensor(name.to_owned()));
    }
    let n_dims = c.u32("tensor n_dims")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(GgufError::BadDims {
            name: name.to_owned(),
            dims: Vec::new(),
            reason: "n_dims must be 1 to 4",
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64("tensor dims")?);
    }
    let type_id = c.u32("tensor type")?;
    let offset = c.u64("tensor offset")?;

    let ty = GgmlType::from_u32(type_id).map_err(|_| GgufError::UnsupportedType {
        name: name.to_owned(),
        id: type_id,
    })?;
    let n_bytes = tensor_n_bytes(name, &dims, ty)?;
    if !offset.is_multiple_of(alignment) {
        return Err(GgufError::MisalignedTensor {
            name: name.to_owned(),
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name: name.to_owned(),
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// Bytes of a tensor of `dims` (ggml order) and `ty`, checking the shape on the way: 1 to 4
/// dims, none zero, rows made of whole blocks, and an element count that fits ggml's i64.
pub(crate) fn tensor_n_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |reason| GgufError::BadDims {
        name: name.to_owned(),
        dims: dims.to_vec(),
        reason,
    };
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(bad("n_dims must be 1 to 4"));
    }
    if dims.contains(&0) {
        return Err(bad("a dimension is zero"));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| bad("element count overflows"))?;
    let block = ty.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(bad("dims[0] is not a whole number of blocks"));
    }
    (n_elements / block)
        .checked_mul(ty.type_size() as u64)
        .ok_or_else(|| bad("byte size overflows"))
}

/// Every tensor inside the data section and no two sharing a byte.
fn check_tensor_layout(tensors: &[TensorInfo], data_len: u64) -> Result<(), GgufError> {
    for t in tensors {
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|end| end > data_len) {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                offset: t.offset,
                n_bytes: t.n_bytes,
                data_len,
            });
        }
    }
    // Sorted by offset, an overlap can only be between neighbours. n_bytes > 0 always (dims
    // are nonzero), so two tensors at the same offset overlap too.
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // In bounds (checked above), so the sum does not overflow.
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::OverlappingTensors {
                a: a.name.clone(),
                b: b.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_bytes_checks_shape() {
        assert_eq!(
            tensor_n_bytes("t", &[64, 3], GgmlType::Q8_0).ok(),
            Some(2 * 3 * 34)
        );
        assert_eq!(tensor_n_bytes("t", &[5], GgmlType::F32).ok(), Some(20));
        for dims in [
            &[][..],
            &[1, 1, 1, 1, 1],
            &[0],
            &[32, 0],
            &[16],
            &[u64::MAX, 2],
        ] {
            assert!(
                matches!(
                    tensor_n_bytes("t", dims, GgmlType::Q4_0),
                    Err(GgufError::BadDims { .. })
                ),
                "{dims:?}"
            );
        }
        // 2^62 elements fit i64, but as F32 bytes they overflow u64.
        assert!(matches!(
            tensor_n_bytes("t", &[1 << 31, 1 << 31], GgmlType::F32),
            Err(GgufError::BadDims {
                reason: "byte size overflows",
                ..
            })
        ));
    }

    #[test]
    fn align_up_rounds() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX, 32), None);
    }

    #[test]
    fn count_is_bounded_by_remaining_bytes() {
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
        };
        assert!(
            matches!(c.count("x", 1), Err(GgufError::TooLarge { count, .. }) if count == 1 << 40)
        );
    }
}
