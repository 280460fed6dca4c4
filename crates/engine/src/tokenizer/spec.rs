//! [`VocabSpec`]: the tokenizer-relevant metadata of a GGUF file as plain data, so a tokenizer
//! can be built from a file ([`VocabSpec::from_gguf`]) or from a few lines in a test.
//!
//! Optional fields keep "absent" distinct from "false"/"0": llama.cpp picks per-model-type
//! defaults (BOS id, add-BOS, add-space-prefix) only when the key is missing, and
//! [`super::Tokenizer::from_spec`] applies the same defaults.

use crate::gguf::{keys, Array, GgufError, GgufHeader};

use super::TokenizerError;

/// `tokenizer.ggml.token_type` values, numbered as llama.cpp's `llama_token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    /// Out-of-range values become `Undefined`, as llama.cpp maps them.
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }
}

/// Everything needed to build a [`super::Tokenizer`], as read from GGUF metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: names the pre-tokenizer regexes of a "gpt2" vocabulary.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities); same length as `tokens`.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (see [`TokenType`]); same length as `tokens`.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: "left right" pairs in rank order (BPE only).
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `general.name`: llama.cpp keys a few per-model token attributes on it (Phi-3's
    /// right-stripping special tokens).
    pub model_name: Option<String>,
}

impl VocabSpec {
    /// Read the tokenizer keys of a GGUF header. Missing optional keys stay `None`; a key
    /// present with the wrong type is an error, never silently ignored.
    pub fn from_gguf(header: &GgufHeader) -> Result<Self, TokenizerError> {
        let model = header.get_str(keys::TOKENIZER_MODEL)?.to_owned();
        let pre = optional(header, keys::TOKENIZER_PRE, |h, k| {
            h.get_str(k).map(str::to_owned)
        })?;
        let tokens = match header.get_array(keys::TOKENIZER_TOKENS)? {
            Array::String(v) => v.clone(),
            other => return Err(wrong_array(keys::TOKENIZER_TOKENS, "string", other)),
        };
        let scores = optional(header, keys::TOKENIZER_SCORES, |h, k| {
            Ok(h.get_array(k)?.clone())
        })?
        .map(|a| match a {
            Array::F32(v) => Ok(v),
            // llama.cpp also accepts integer scores.
            Array::I32(v) => Ok(v.into_iter().map(|s| s as f32).collect()),
            other => Err(wrong_array(keys::TOKENIZER_SCORES, "f32", &other)),
        })
        .transpose()?;
        let token_types = optional(header, keys::TOKENIZER_TOKEN_TYPE, |h, k| {
            Ok(h.get_array(k)?.clone())
        })?
        .map(|a| match a {
            Array::I32(v) => Ok(v),
            Array::U32(v) => Ok(v.into_iter().map(|t| t as i32).collect()),
            other => Err(wrong_array(keys::TOKENIZER_TOKEN_TYPE, "i32", &other)),
        })
        .transpose()?;
        let merges = match optional(header, keys::TOKENIZER_MERGES, |h, k| {
            Ok(h.get_array(k)?.clone())
        })? {
            None => Vec::new(),
            Some(Array::String(v)) => v,
            Some(other) => return Err(wrong_array(keys::TOKENIZER_MERGES, "string", &other)),
        };
        let id = |key: &str| optional(header, key, |h, k| h.get_u32(k));
        let flag = |key: &str| optional(header, key, |h, k| h.get_bool(k));
        Ok(Self {
            model,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            bos_id: id(keys::TOKENIZER_BOS_ID)?,
            eos_id: id(keys::TOKENIZER_EOS_ID)?,
            eot_id: id(keys::TOKENIZER_EOT_ID)?,
            eom_id: id(keys::TOKENIZER_EOM_ID)?,
            unk_id: id(keys::TOKENIZER_UNK_ID)?,
            pad_id: id(keys::TOKENIZER_PAD_ID)?,
            add_bos: flag(keys::TOKENIZER_ADD_BOS)?,
            add_eos: flag(keys::TOKENIZER_ADD_EOS)?,
            add_space_prefix: flag(keys::TOKENIZER_ADD_SPACE_PREFIX)?,
            model_name: optional(header, keys::GENERAL_NAME, |h, k| {
                h.get_str(k).map(str::to_owned)
            })?,
        })
    }
}

/// `Ok(None)` when the key is absent; the getter's error (wrong type) otherwise.
fn optional<T>(
    header: &GgufHeader,
    key: &str,
    get: impl FnOnce(&GgufHeader, &str) -> Result<T, GgufError>,
) -> Result<Option<T>, TokenizerError> {
    if header.get(key).is_none() {
        return Ok(None);
    }
    Ok(Some(get(header, key)?))
}

fn wrong_array(key: &str, expected: &'static str, found: &Array) -> TokenizerError {
    let found = match found {
        Array::U8(_) => "u8",
        Array::I8(_) => "i8",
        Array::U16(_) => "u16",
        Array::I16(_) => "i16",
        Array::U32(_) => "u32",
        Array::I32(_) => "i32",
        Array::U64(_) => "u64",
        Array::I64(_) => "i64",
        Array::F32(_) => "f32",
        Array::F64(_) => "f64",
        Array::Bool(_) => "bool",
        Array::String(_) => "string",
        Array::Array(_) => "array",
    };
    TokenizerError::WrongArrayType {
        key: key.to_owned(),
        expected,
        found,
    }
}
