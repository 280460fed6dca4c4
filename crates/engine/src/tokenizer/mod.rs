//! Text <-> token ids from the GGUF file's own vocabulary: no tokenizer.json, no network.
//! Ids equal llama.cpp's (`llama-tokenize`), which the tests check on recorded references.
//!
//! Two layers: [`VocabSpec`] is the metadata as plain data (from a file, or written in a test);
//! [`Tokenizer::from_spec`] turns it into a tokenizer, applying llama.cpp's defaults and
//! token-attribute rules. The pipeline per [`Tokenizer::encode`]:
//! 1. special tokens (control, user-defined, unknown) are cut out of the text (`special.rs`);
//! 2. each remaining text fragment goes to the model: byte-level BPE on the `tokenizers` crate
//!    for "gpt2" vocabularies (`bpe.rs`), llama.cpp's SentencePiece merge loop for "llama"
//!    vocabularies (`spm.rs`);
//! 3. BOS/EOS are added when asked and the metadata (or llama.cpp's default) says so.
//!
//! Decoding works in bytes: a byte-level token may hold part of a UTF-8 character, so
//! [`Tokenizer::token_piece`] returns raw bytes and the caller assembles valid UTF-8. Pieces
//! are rendered once at load into one buffer, so streaming a token allocates nothing.

mod bpe;
mod byte_level;
mod spec;
mod special;
mod spm;

use std::collections::HashMap;

use thiserror::Error;

use crate::gguf::{GgufError, GgufHeader};

pub use spec::{TokenType, VocabSpec};

use special::{Fragment, SpecialMatcher, SpecialToken};

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("metadata key {key} is an array of {found}, expected an array of {expected}")]
    WrongArrayType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)")]
    UnsupportedModel(String),
    #[error("unknown pre-tokenizer {name:?} in tokenizer.ggml.pre (supported: {supported})")]
    UnknownPreTokenizer {
        name: String,
        supported: &'static str,
    },
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("{what} has {found} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("duplicate token {text:?} at ids {first} and {second}")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    #[error("merge #{index} {merge:?} is not of the form \"left right\"")]
    MalformedMerge { index: usize, merge: String },
    #[error("merge #{index} {merge:?} refers to {token:?}, which is not in the vocabulary")]
    MergeUnknownToken {
        index: usize,
        merge: String,
        token: String,
    },
    #[error("a \"gpt2\" vocabulary needs tokenizer.ggml.merges, and the file has none")]
    MissingMerges,
    #[error("{flag} is set but the file names no {what} token")]
    MissingSpecialToken {
        flag: &'static str,
        what: &'static str,
    },
    #[error("building the tokenizer failed: {0}")]
    Build(String),
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// llama.cpp's token attributes (`llama_token_attr`), the subset that changes behaviour.
mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// Token texts that llama.cpp treats as end of generation (`special_eog_ids`), by text
/// because converters do not record it; kept in llama.cpp's order.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Candidates for the end-of-turn token when the file names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Fill-in-the-middle pad/repo/file-separator tokens: llama.cpp stops generation on them too.
const FIM_EOG_TEXTS: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// "gpt2": byte-level BPE.
    Bpe,
    /// "llama": SentencePiece BPE with byte fallback.
    Spm,
}

enum Backend {
    Bpe(Box<tokenizers::Tokenizer>),
    Spm {
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A tokenizer for one model's vocabulary. Cheap to share (`&Tokenizer` is `Sync`).
pub struct Tokenizer {
    kind: Kind,
    backend: Backend,
    tokens: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    token_to_id: HashMap<String, u32>,
    special: SpecialMatcher,
    /// Concatenated pieces as rendered with `special = true`; token `i` is
    /// `pieces[piece_ends[i - 1]..piece_ends[i]]`.
    pieces: Vec<u8>,
    piece_ends: Vec<usize>,
    /// Sorted, for binary search.
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Read the vocabulary from a GGUF header and build the tokenizer.
    pub fn from_gguf(header: &GgufHeader) -> Result<Self, TokenizerError> {
        Self::from_spec(VocabSpec::from_gguf(header)?)
    }

    /// Build from plain metadata, with llama.cpp's defaults for whatever is `None`.
    pub fn from_spec(spec: VocabSpec) -> Result<Self, TokenizerError> {
        let kind = match spec.model.as_str() {
            "gpt2" => Kind::Bpe,
            "llama" => Kind::Spm,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        // llama.cpp reads the first n entries of longer arrays but rejects shorter ones; a
        // different length here is a broken file, so both are refused.
        let scores = match spec.scores {
            Some(s) if s.len() != n => {
                return Err(TokenizerError::LengthMismatch {
                    what: "tokenizer.ggml.scores",
                    expected: n,
                    found: s.len(),
                })
            }
            Some(s) => s,
            None => vec![0.0; n],
        };
        let mut attrs: Vec<u16> = match &spec.token_types {
            Some(t) if t.len() != n => {
                return Err(TokenizerError::LengthMismatch {
                    what: "tokenizer.ggml.token_type",
                    expected: n,
                    found: t.len(),
                })
            }
            Some(t) => t
                .iter()
                .map(|&v| type_attr(TokenType::from_i32(v)))
                .collect(),
            None => vec![attr::NORMAL; n],
        };

        let mut tokens = spec.tokens;
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                // llama.cpp's placeholder, so the id still has a unique text.
                *text = format!("[EMPTY_{i}]");
            }
            if let Some(first) = token_to_id.insert(text.clone(), i as u32) {
                return Err(TokenizerError::DuplicateToken {
                    text: text.clone(),
                    first,
                    second: i as u32,
                });
            }
        }
        let find = |text: &str| token_to_id.get(text).copied();
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);

        // Per-model-type defaults, then metadata, as llama.cpp's `llama_vocab::impl::load`.
        let (pre_cfg, default_bos, default_eos, default_unk, default_add_bos, default_space) =
            match kind {
                Kind::Bpe => {
                    let cfg = bpe::pre_tokenizer_config(spec.pre.as_deref())?;
                    let bos = if cfg.no_bos { None } else { Some(11) };
                    (Some(cfg), bos, Some(11), None, cfg.add_bos_default, false)
                }
                Kind::Spm => (None, Some(1), Some(2), Some(0), true, true),
            };
        // A metadata id outside the vocabulary is ignored in favour of the default, as
        // llama.cpp does (it warns); a default outside the vocabulary means "none".
        let bos = in_range(spec.bos_id).or(in_range(default_bos));
        let eos = in_range(spec.eos_id).or(in_range(default_eos));
        let unk = in_range(spec.unk_id).or(in_range(default_unk));
        let pad = in_range(spec.pad_id);
        let add_bos = spec.add_bos.unwrap_or(default_add_bos);
        let add_eos = spec.add_eos.unwrap_or(false);
        let add_space_prefix = spec.add_space_prefix.unwrap_or(default_space);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: "tokenizer.ggml.add_bos_token",
                what: "BOS",
            });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: "tokenizer.ggml.add_eos_token",
                what: "EOS",
            });
        }

        // Control-looking tokens found by text become control tokens (llama.cpp does the
        // same, with a warning), so they are parsed out of text and hidden when not wanted.
        let mut mark_control = |id: u32| attrs[id as usize] |= attr::CONTROL;
        // When several candidates exist llama.cpp's pick depends on hash order; the lowest
        // id is a deterministic stand-in (all of them end generation anyway).
        let eot = in_range(spec.eot_id).or_else(|| EOT_TEXTS.iter().filter_map(|t| find(t)).min());
        let eom = in_range(spec.eom_id).or_else(|| find("<|eom_id|>"));
        let mut eog: Vec<u32> = Vec::new();
        for names in FIM_EOG_TEXTS {
            if let Some(id) = names.iter().filter_map(|t| find(t)).min() {
                mark_control(id);
                eog.push(id);
            }
        }
        for text in EOG_TEXTS {
            if let Some(id) = find(text) {
                mark_control(id);
                eog.push(id);
            }
        }
        for id in [eot, eom].into_iter().flatten() {
            mark_control(id);
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        apply_eog_workarounds(&mut eog, &mut attrs, &tokens);

        // llama.cpp marks control tokens whose text says "unused" as unused too.
        for (a, t) in attrs.iter_mut().zip(&tokens) {
            if *a & attr::CONTROL != 0 && t.contains("unused") {
                *a |= attr::UNUSED;
            }
        }
        // Phi-3's special tokens swallow the whitespace after them (llama.cpp keys this on the
        // model name, since GGUF files carry no per-token strip attributes).
        let name = spec.model_name.as_deref().unwrap_or("").to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for (a, t) in attrs.iter_mut().zip(&tokens) {
                let special = *a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0;
                if (special || t == "</s>")
                    && !matches!(t.as_str(), "<unk>" | "<s>" | "<|endoftext|>")
                {
                    *a |= attr::RSTRIP;
                }
            }
        }

        let specials = attrs
            .iter()
            .enumerate()
            .filter(|(_, a)| **a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            .map(|(i, a)| SpecialToken {
                id: i as u32,
                text: tokens[i].clone(),
                lstrip: a & attr::LSTRIP != 0,
                rstrip: a & attr::RSTRIP != 0,
                control: a & (attr::CONTROL | attr::UNKNOWN) != 0,
            })
            .collect();
        let special = SpecialMatcher::new(specials);

        let backend = match (kind, pre_cfg) {
            (Kind::Bpe, Some(cfg)) => {
                if spec.merges.is_empty() {
                    return Err(TokenizerError::MissingMerges);
                }
                Backend::Bpe(Box::new(bpe::build(
                    &tokens,
                    &spec.merges,
                    &cfg,
                    &token_to_id,
                )?))
            }
            _ => {
                let mut byte_tokens = Box::new([None; 256]);
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    let hex = format!("<0x{b:02X}>");
                    let raw = (b < 0x80).then(|| (b as u8 as char).to_string());
                    *slot = find(&hex).or_else(|| raw.and_then(|r| find(&r))).or(unk);
                }
                Backend::Spm { byte_tokens }
            }
        };

        let (pieces, piece_ends) = render_pieces(kind, &tokens, &attrs);
        Ok(Self {
            kind,
            backend,
            tokens,
            scores,
            attrs,
            token_to_id,
            special,
            pieces,
            piece_ends,
            eog,
            bos,
            eos,
            eot,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }

    /// Tokenize `text`, parsing special-token text (`<|im_start|>`) into its token as
    /// `llama-tokenize` does. `add_special` adds BOS/EOS where the model wants them.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, add_special, true)
    }

    /// As [`Self::encode`]; with `parse_special = false`, control tokens' text is tokenized
    /// as plain text (user-defined tokens are still matched, as in llama.cpp).
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let fragments = self.special.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            if let Some(bos) = self.bos {
                out.push(bos);
            }
        }
        match &self.backend {
            Backend::Bpe(tk) => {
                for frag in &fragments {
                    match frag {
                        Fragment::Token(id) => out.push(*id),
                        Fragment::Text(r) => {
                            let enc = tk
                                .encode_fast(&text[r.clone()], false)
                                .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                            out.extend_from_slice(enc.get_ids());
                        }
                    }
                }
            }
            Backend::Spm { byte_tokens } => {
                let vocab = spm::SpmVocab {
                    token_to_id: &self.token_to_id,
                    scores: &self.scores,
                    byte_tokens,
                };
                // The space prefix goes before the first text and any text right after a
                // special token, as in llama.cpp.
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in &fragments {
                    match frag {
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[r.clone()].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(&buf, &vocab, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            if let Some(eos) = self.eos {
                out.push(eos);
            }
        }
        Ok(out)
    }

    /// The bytes token `id` stands for. With `special = false`, control and unknown tokens
    /// render as nothing (as llama.cpp's `token_to_piece(.., special = false)`); with `true`,
    /// as their text. An id outside the vocabulary renders as nothing.
    pub fn token_piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        let Some(&end) = self.piece_ends.get(i) else {
            return &[];
        };
        if !special && self.attrs[i] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return &[];
        }
        let start = if i == 0 { 0 } else { self.piece_ends[i - 1] };
        &self.pieces[start..end]
    }

    /// Bytes of a token sequence, as llama.cpp's `detokenize`: SentencePiece vocabularies
    /// that add a space prefix drop one leading space of the first piece.
    pub fn decode(&self, ids: &[u32], special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let piece = self.token_piece(id, special);
            let piece = if k == 0 && self.add_space_prefix && self.kind == Kind::Spm {
                piece.strip_prefix(b" ").unwrap_or(piece)
            } else {
                piece
            };
            out.extend_from_slice(piece);
        }
        out
    }

    /// The token's text as stored in the vocabulary (`Ġ`/`▁` spellings included).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a token by its vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// Whether [`Self::encode`] with `add_special` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// End of generation: EOS, EOT, EOM and the tokens llama.cpp stops on by their text
    /// (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|endoftext|>`, FIM separators, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether the token is a control token (rendered only when asked for special text).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & attr::CONTROL != 0)
    }
}

fn type_attr(t: TokenType) -> u16 {
    match t {
        TokenType::Undefined => 0,
        TokenType::Normal => attr::NORMAL,
        TokenType::Unknown => attr::UNKNOWN,
        TokenType::Control => attr::CONTROL,
        TokenType::UserDefined => attr::USER_DEFINED,
        TokenType::Unused => attr::UNUSED,
        TokenType::Byte => attr::BYTE,
    }
}

/// llama.cpp's two EOG exceptions: with `<|return|>`+`<|call|>` (gpt-oss) or
/// `<|calls|>`+`<|flush|>` (solar-open), `<|end|>` is not EOG; with `<|tool_response>`
/// (Gemma 4), `</s>` is not EOG.
fn apply_eog_workarounds(eog: &mut Vec<u32>, attrs: &mut [u16], tokens: &[String]) {
    let find = |eog: &[u32], t: &str| eog.iter().copied().find(|&id| tokens[id as usize] == t);
    let has = |eog: &[u32], t: &str| find(eog, t).is_some();
    if let Some(end) = find(eog, "<|end|>") {
        let call = has(eog, "<|call|>") || has(eog, "<|calls|>");
        if call && (has(eog, "<|return|>") || has(eog, "<|flush|>")) {
            eog.retain(|&id| id != end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    if has(eog, "<|tool_response>") {
        if let Some(s) = find(eog, "</s>") {
            eog.retain(|&id| id != s);
            attrs[s as usize] = attr::NORMAL;
        }
    }
}

/// Render every token's bytes once (as llama.cpp's `token_to_piece` with `special = true`).
fn render_pieces(kind: Kind, tokens: &[String], attrs: &[u16]) -> (Vec<u8>, Vec<usize>) {
    let bytes = byte_level::ByteDecoder::new();
    let mut pieces = Vec::with_capacity(tokens.iter().map(String::len).sum());
    let mut ends = Vec::with_capacity(tokens.len());
    for (text, &a) in tokens.iter().zip(attrs) {
        if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            pieces.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match kind {
                Kind::Spm => pieces.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
                Kind::Bpe => bytes.decode_token(text, &mut pieces),
            }
        } else if a & attr::BYTE != 0 {
            // "<0xNN>"; anything else (malformed) renders as nothing, as llama.cpp's strtol
            // would give a wrong byte.
            if let Some(b) = text
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                pieces.push(b);
            }
        }
        // Unused/undefined tokens render as nothing, as in llama.cpp.
        ends.push(pieces.len());
    }
    (pieces, ends)
}
