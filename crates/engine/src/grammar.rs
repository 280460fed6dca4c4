//! Constrained decoding: a grammar (JSON Schema, any JSON object, Lark, or a regex) decides
//! which tokens may come next, and the logits of every other token are set to -inf before
//! the samplers run, so the output always parses. Built on `llguidance` (the engine llama.cpp,
//! vLLM and SGLang use), with its token trie made from our GGUF vocabulary: each token's
//! bytes, control tokens marked as special, and the end-of-generation ids as EOS.
//!
//! JSON is compiled without free whitespace (`", "` and `": "` separators only), so a small
//! model cannot pad an object until it runs out of tokens.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use thiserror::Error;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::tokenizer::Tokenizer;

/// What the output must be.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// A JSON value valid against this schema.
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `response_format: json_object`).
    JsonObject,
    /// A Lark grammar (llguidance's dialect, as llama.cpp's `%llguidance` grammars).
    Lark(String),
    /// A regular expression the whole output must match.
    Regex(String),
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum GrammarError {
    #[error("cannot set up constrained decoding for this vocabulary: {0}")]
    Setup(String),
    #[error("the {what} does not compile: {why}")]
    Compile { what: &'static str, why: String },
    #[error("constrained decoding failed: {0}")]
    Runtime(String),
}

/// The JSON layout we ask for: compact but with the spaces models usually write.
fn json_options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// A JSON Schema with our whitespace options unless it sets its own.
pub fn schema_with_layout(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(json_options);
    }
    schema
}

impl Constraint {
    fn what(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "JSON schema",
            Constraint::JsonObject => "JSON object grammar",
            Constraint::Lark(_) => "Lark grammar",
            Constraint::Regex(_) => "regular expression",
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonSchema(s) => {
                TopLevelGrammar::from_json_schema(schema_with_layout(s.clone()))
            }
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(schema_with_layout(json!({"type": "object"})))
            }
            Constraint::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
        }
    }
}

/// The vocabulary as llguidance sees it.
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    /// The longest-match split above is not how the model would tokenize text, so
    /// llguidance must not force it: text the grammar fixes may come in any tokenization,
    /// and the model picks its own.
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Compiles constraints for one model; made once per model (building the token trie and
/// its bias tables takes a fraction of a second), shared by every sequence.
pub struct GrammarCompiler {
    factory: ParserFactory,
    n_vocab: usize,
    closers: Arc<[TokenId]>,
}

/// Texts that end a JSON value soonest, in order of preference: when the token budget is
/// nearly spent, the first of these the grammar allows (after end-of-generation itself) is
/// taken instead of the model's choice, so an answer that would otherwise be cut inside a
/// string or an array still closes. A quote comes before brackets because inside a string a
/// bracket is just another character; `,` is absent because it extends.
const CLOSERS: [&str; 10] = [
    "\"}", "\"]", "\"", "}", "]", "0", "[]", "{}", "null", "false",
];

impl GrammarCompiler {
    /// `n_vocab` is the logits' length (ids beyond the tokenizer's are never allowed).
    pub fn new(tokenizer: &Tokenizer, n_vocab: usize) -> Result<Self, GrammarError> {
        let n = n_vocab.max(tokenizer.vocab_size());
        let mut words: Vec<Vec<u8>> = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let word = if tokenizer.is_control(id) || tokenizer.is_eog(id) {
                // Special tokens are written with a 0xFF marker before their text, so a
                // grammar can name them (`<|im_end|>`) and plain text never matches them.
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(tokenizer.token_text(id).unwrap_or("").as_bytes());
                w
            } else {
                tokenizer.token_piece(id, false).to_vec()
            };
            words.push(word);
        }
        let eog: Vec<TokenId> = tokenizer.eog_ids().to_vec();
        let Some(&eos) = eog.first() else {
            return Err(GrammarError::Setup(
                "the vocabulary has no end-of-generation token".into(),
            ));
        };
        let info = TokRxInfo::new(n as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
        let env: TokEnv = Arc::new(VocabEnv { trie });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Setup(e.to_string()))?;
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        let closers: Vec<TokenId> = eog
            .iter()
            .copied()
            .chain(
                CLOSERS
                    .iter()
                    .filter_map(|c| words.iter().position(|w| w == c.as_bytes()))
                    .map(|i| i as TokenId),
            )
            .collect();
        Ok(Self {
            factory,
            n_vocab,
            closers: closers.into(),
        })
    }

    /// A fresh matcher for one sequence; a constraint that does not compile says why.
    pub fn compile(&self, c: &Constraint) -> Result<Grammar, GrammarError> {
        let parser =
            self.factory
                .create_parser(c.grammar())
                .map_err(|e| GrammarError::Compile {
                    what: c.what(),
                    why: first_line(&e.to_string()),
                })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Compile {
                what: c.what(),
                why: first_line(&e),
            });
        }
        Ok(Grammar {
            matcher,
            n_vocab: self.n_vocab,
            closers: Arc::clone(&self.closers),
            close_early: true,
        })
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

/// One sequence's grammar state.
pub struct Grammar {
    matcher: Matcher,
    n_vocab: usize,
    closers: Arc<[TokenId]>,
    /// Whether the budget's last tokens close the value (see `closing_choice`).
    close_early: bool,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Grammar {
    /// Never close early: for grammars whose free text may end anywhere (tool choice `auto`),
    /// where closing would cut prose short and call it finished.
    pub fn without_early_close(mut self) -> Self {
        self.close_early = false;
        self
    }

    /// Whether the budget's last tokens go to closing the value.
    pub fn closes_early(&self) -> bool {
        self.close_early
    }

    /// The grammar is complete and allows nothing more: generation ends here.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Set the logits of every token the grammar does not allow next to -inf.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|e| GrammarError::Runtime(first_line(&e.to_string())))?;
        let n = logits.len().min(self.n_vocab);
        for (id, l) in logits[..n].iter_mut().enumerate() {
            if !allowed.is_allowed(id as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
        for l in &mut logits[n..] {
            *l = f32::NEG_INFINITY;
        }
        Ok(())
    }

    /// After `mask`: the token that ends the value soonest, if the grammar allows one of
    /// them (`CLOSERS`); `None` leaves the choice to the sampler.
    pub fn closing_choice(&self, masked_logits: &[f32]) -> Option<u32> {
        self.closers.iter().copied().find(|&id| {
            masked_logits
                .get(id as usize)
                .is_some_and(|l| l.is_finite())
        })
    }

    /// A copy in the same state, for another sequence under the same constraint (cheaper
    /// than compiling again).
    pub fn clone_state(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            n_vocab: self.n_vocab,
            closers: Arc::clone(&self.closers),
            close_early: self.close_early,
        }
    }

    /// Advance past text already written (tokens of it, in any split): a value someone else
    /// began, which the model is to finish. `false`, with the grammar unchanged, when the
    /// text is not a prefix of any sentence of the grammar.
    pub fn accept_prefix(&mut self, ids: &[u32]) -> Result<bool, GrammarError> {
        let n = self
            .matcher
            .validate_tokens(ids)
            .map_err(|e| GrammarError::Runtime(first_line(&e.to_string())))?;
        if n < ids.len() {
            return Ok(false);
        }
        self.matcher
            .consume_tokens(ids)
            .map_err(|e| GrammarError::Runtime(first_line(&e.to_string())))?;
        Ok(true)
    }

    /// Advance past the token chosen.
    pub fn accept(&mut self, id: u32) -> Result<(), GrammarError> {
        self.matcher
            .consume_token(id)
            .map_err(|e| GrammarError::Runtime(first_line(&e.to_string())))
    }
}
