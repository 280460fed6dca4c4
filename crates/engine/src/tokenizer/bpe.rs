//! Byte-level BPE ("gpt2" vocabularies: SmolLM, Llama 3, Qwen 2, ...) on the `tokenizers` crate.
//!
//! llama.cpp splits text with a list of regexes applied one after another (each regex splits
//! every piece the previous one produced; matches and the gaps between them both become
//! pieces), then byte-encodes each piece GPT-2 style and runs rank-ordered BPE merges on it.
//! The same pipeline here is a `Sequence` of `Split(regex, Isolated)` pre-tokenizers followed by
//! `ByteLevel(add_prefix_space = false, use_regex = false)` (byte-encoding only) and a `BPE`
//! model with the file's merges. Special tokens are split off before this runs (see
//! `special.rs`), so the `tokenizers` pipeline holds no added tokens.
//!
//! The regexes are llama.cpp's (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`), keyed by
//! `tokenizer.ggml.pre`. llama.cpp runs the GPT-2 and Llama-3 patterns through hand-written
//! matchers equivalent to the regex with a final `|\s+` alternative; that alternative is spelled
//! out here so that Oniguruma leaves no unmatched gap (a gap would become one piece where
//! llama.cpp's matcher makes one piece per character).

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::TokenizerError;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes and configures one family of `tokenizer.ggml.pre` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreTokenizerConfig {
    /// The canonical family name (for messages and tests).
    pub family: &'static str,
    /// Applied in order, each splitting the pieces of the previous one.
    pub regexes: &'static [&'static str],
    /// Emit a whole piece as one token when it is in the vocabulary, before any merge
    /// (Llama 3's tiktoken-derived vocabularies need this).
    pub ignore_merges: bool,
    /// llama.cpp's add-BOS default for this family when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos_default: bool,
    /// llama.cpp clears the default BOS id for this family (GLM-4).
    pub no_bos: bool,
}

const fn family(name: &'static str, regexes: &'static [&'static str]) -> PreTokenizerConfig {
    PreTokenizerConfig {
        family: name,
        regexes,
        ignore_merges: false,
        add_bos_default: false,
        no_bos: false,
    }
}

const DEFAULT: PreTokenizerConfig = family(
    "default",
    &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
);

/// The `tokenizer.ggml.pre` names this build supports, for the unknown-name error.
pub(crate) const SUPPORTED_PRE: &str = "default, gpt-2 (phi-2, mpt, olmo, ...), llama3/llama-bpe \
     (llama-v3, falcon3, pixtral, ...), dbrx, smaug-bpe, glm4/chatglm-bpe, smollm (starcoder, \
     refact, command-r, ...), qwen2 (stablelm2, deepseek-r1-qwen, ...), deepseek-coder, falcon";

/// Look up llama.cpp's configuration for a `tokenizer.ggml.pre` name. A missing name means
/// "default", as in llama.cpp (which warns that quality may degrade); an unknown name is an
/// error, as in llama.cpp, rather than a guess that would silently produce different ids.
pub(crate) fn pre_tokenizer_config(
    pre: Option<&str>,
) -> Result<PreTokenizerConfig, TokenizerError> {
    let Some(pre) = pre else {
        return Ok(DEFAULT);
    };
    let cfg = match pre {
        "default" => DEFAULT,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreTokenizerConfig {
            ignore_merges: true,
            add_bos_default: true,
            ..family("llama3", &[LLAMA3])
        },
        "dbrx" | "smaug-bpe" => family("llama3", &[LLAMA3]),
        "glm4" | "chatglm-bpe" => PreTokenizerConfig {
            no_bos: true,
            ..family("chatglm4", &[LLAMA3])
        },
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo" | "jais"
        | "trillion" | "granite-docling" => family("gpt-2", &[GPT2]),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => family("smollm", &[r"\p{N}", GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => family("qwen2", &[QWEN2]),
        "deepseek-coder" => family(
            "deepseek-coder",
            &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                r"[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ],
        ),
        "falcon" => family(
            "falcon",
            &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
        ),
        other => {
            return Err(TokenizerError::UnknownPreTokenizer {
                name: other.to_owned(),
                supported: SUPPORTED_PRE,
            })
        }
    };
    Ok(cfg)
}

/// Build the `tokenizers` pipeline: regex splits, byte-level encoding and the BPE model.
///
/// Merges are validated first so a bad file gives a [`TokenizerError`] naming the merge,
/// not the `tokenizers` crate's generic message.
pub(crate) fn build(
    tokens: &[String],
    merges: &[String],
    cfg: &PreTokenizerConfig,
    token_to_id: &std::collections::HashMap<String, u32>,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let mut pairs: Merges = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        // llama.cpp splits at the first space byte after the first byte, so a merge whose
        // left side is itself a space still parses. A space byte is always a char boundary.
        let split = merge
            .bytes()
            .skip(1)
            .position(|b| b == b' ')
            .map(|p| p + 1)
            .ok_or_else(|| TokenizerError::MalformedMerge {
                index,
                merge: merge.clone(),
            })?;
        let (left, right) = (&merge[..split], &merge[split + 1..]);
        for part in [left, right] {
            if !token_to_id.contains_key(part) {
                return Err(TokenizerError::MergeUnknownToken {
                    index,
                    merge: merge.clone(),
                    token: part.to_owned(),
                });
            }
        }
        let joined = format!("{left}{right}");
        if !token_to_id.contains_key(&joined) {
            return Err(TokenizerError::MergeUnknownToken {
                index,
                merge: merge.clone(),
                token: joined,
            });
        }
        pairs.push((left.to_owned(), right.to_owned()));
    }

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(cfg.ignore_merges)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;

    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(cfg.regexes.len() + 1);
    for re in cfg.regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Build(format!("pre-tokenizer regex {re:?}: {e}")))?;
        steps.push(split.into());
    }
    // Byte-encoding only: the splitting was done above, exactly as llama.cpp does it.
    steps.push(ByteLevel::new(false, false, false).into());

    let mut tk = tokenizers::Tokenizer::new(model);
    tk.with_pre_tokenizer(Some(Sequence::new(steps)));
    Ok(tk)
}
