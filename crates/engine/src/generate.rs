//! The generation loop: prompt -> prefill -> sample -> decode, until an end-of-generation
//! token, a stop string, the token budget or a full context. Text is streamed as pieces that
//! are always valid UTF-8 (a token may end inside a multi-byte character; those bytes wait for
//! the next token) and never contain the start of a stop string that might still complete.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::backend::candle::{CandleError, CandleModel};
pub use crate::backend::Session;
use crate::backend::{BackendKind, DeviceSpec};
use crate::chat::{ChatError, ChatTemplate};
use crate::cpu::{KernelError, Kernels, Tier};
use crate::grammar::{Constraint, Grammar, GrammarCompiler, GrammarError};
use crate::models::{self, Decoder, ModelError};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Candle(#[from] CandleError),
    #[error(transparent)]
    Grammar(#[from] GrammarError),
    #[error("the native backend runs on the CPU only; use --backend candle for --device {0}")]
    NativeOnCpuOnly(DeviceSpec),
    #[error("prompt is {n_prompt} tokens but the context holds {n_ctx}; use a larger --ctx-size or a shorter prompt")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error("a session from another engine was passed in")]
    ForeignSession,
    #[error("cannot start {threads} worker threads: {why}")]
    ThreadPool { threads: usize, why: String },
}

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Worker threads; 0 = all cores.
    pub threads: usize,
    /// Force a kernel tier; `None` = best this CPU has (or `BACKSTOP_KERNELS`).
    pub kernels: Option<Tier>,
    pub backend: BackendKind,
    pub device: DeviceSpec,
    /// A chat template to use instead of the file's (llama.cpp's `--chat-template-file`).
    pub chat_template: Option<String>,
}

/// Which implementation runs the forward pass.
pub enum Backend {
    /// Our kernels over the mapped file ([`Engine::model`]).
    Native,
    Candle(Box<CandleModel>),
}

/// A loaded model with its tokenizer, chat template, kernels and thread pool.
pub struct Engine {
    /// The file as our loader reads it: hyper-parameters, and the weights the native backend
    /// runs on (mapped, so they cost no memory when another backend runs).
    pub model: Decoder,
    pub backend: Backend,
    pub tokenizer: Tokenizer,
    /// The chat template (the file's own or a built-in one), or why there is none.
    pub template: Result<ChatTemplate, ChatError>,
    pub kernels: Kernels,
    pool: rayon::ThreadPool,
    /// Built at the first constrained request (most never need it).
    grammars: std::sync::OnceLock<Result<GrammarCompiler, GrammarError>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    MaxTokens,
    /// A stop string matched (the text before it was emitted, the string itself was not).
    StopString(String),
    ContextFull,
    /// The text callback asked to stop (e.g. the client went away).
    Cancelled,
    /// A constrained answer reached the last tokens of its budget and was closed at the
    /// first place its grammar lets it end (complete and valid, but shorter than the model
    /// would have written it).
    Closed,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub stop_reason: StopReason,
    /// Generated token ids (the end-of-generation token excluded).
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
    /// Prompt tokens found already in the KV cache and not recomputed.
    pub n_cached: usize,
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

impl Outcome {
    pub fn prompt_tps(&self) -> f64 {
        let n = (self.n_prompt - self.n_cached) as f64;
        n / self.prompt_time.as_secs_f64().max(1e-9)
    }
    /// Decode speed, counting the tokens after the first (which came out of the prefill).
    pub fn gen_tps(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1) as f64;
        n / self.gen_time.as_secs_f64().max(1e-9)
    }
}

impl Engine {
    pub fn load(path: &std::path::Path, opts: &EngineOptions) -> Result<Self, EngineError> {
        let kernels = match opts.kernels {
            Some(t) => Kernels::new(t)?,
            None => Kernels::from_env()?,
        };
        if opts.backend == BackendKind::Native && !opts.device.is_cpu() {
            return Err(EngineError::NativeOnCpuOnly(opts.device));
        }
        let mut model = models::load(path)?;
        let backend = match opts.backend {
            BackendKind::Native => Backend::Native,
            BackendKind::Candle => {
                Backend::Candle(Box::new(CandleModel::load(path, &model, opts.device)?))
            }
        };
        let tokenizer = Tokenizer::from_gguf(&model.file)?;
        let template = match &opts.chat_template {
            Some(src) => ChatTemplate::custom(src.clone(), &tokenizer),
            None => ChatTemplate::from_gguf(&model.file, &tokenizer),
        };
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("backstop-worker-{i}"))
            .build()
            .map_err(|e| EngineError::ThreadPool {
                threads,
                why: e.to_string(),
            })?;
        if matches!(backend, Backend::Native) {
            pool.install(|| model.interleave_weights(&kernels));
        }
        Ok(Self {
            model,
            backend,
            tokenizer,
            template,
            kernels,
            pool,
            grammars: std::sync::OnceLock::new(),
        })
    }

    /// Compile a constraint for one generation (`generate_with`). A constraint that does not
    /// compile is an error naming why, before any token is generated.
    pub fn compile_constraint(&self, c: &Constraint) -> Result<Grammar, GrammarError> {
        self.grammars
            .get_or_init(|| GrammarCompiler::new(&self.tokenizer, self.n_vocab()))
            .as_ref()
            .map_err(Clone::clone)?
            .compile(c)
    }

    /// Rows of the output layer: every token id the model can produce is below this.
    pub fn n_vocab(&self) -> usize {
        self.model.cfg.n_vocab
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            Backend::Native => BackendKind::Native,
            Backend::Candle(_) => BackendKind::Candle,
        }
    }

    pub fn device(&self) -> DeviceSpec {
        match &self.backend {
            Backend::Native => DeviceSpec::Cpu,
            Backend::Candle(m) => m.device,
        }
    }

    /// A session with room for `n_ctx` tokens (0 = the model's training context, at most 4096;
    /// the candle backend's llama also holds at most 4096).
    pub fn new_session(&self, n_ctx: usize) -> Result<Session, EngineError> {
        let n_ctx = if n_ctx == 0 {
            self.model.cfg.n_ctx_train.min(4096)
        } else {
            n_ctx
        };
        Ok(match &self.backend {
            Backend::Native => Session::Native(self.model.new_session(n_ctx)),
            Backend::Candle(m) => Session::Candle(m.new_session(n_ctx)?),
        })
    }

    /// One forward pass over `tokens` on the session's backend. Must run inside the pool.
    fn forward(&self, session: &mut Session, tokens: &[u32]) -> Result<(), EngineError> {
        match (&self.backend, session) {
            (Backend::Native, Session::Native(s)) => {
                self.model.forward(&self.kernels, s, tokens)?;
            }
            (Backend::Candle(m), Session::Candle(s)) => {
                self.model
                    .check_tokens(s.history().len(), s.n_ctx, tokens)?;
                m.forward(s, tokens)?;
            }
            _ => return Err(EngineError::ForeignSession),
        }
        Ok(())
    }

    /// Run the forward pass over `tokens` on this engine's thread pool.
    pub fn eval(&self, session: &mut Session, tokens: &[u32]) -> Result<(), EngineError> {
        self.pool.install(|| self.forward(session, tokens))
    }

    /// Run `tokens` one at a time, as decode steps do (benchmarks: llama-bench's tg test).
    pub fn eval_each(&self, session: &mut Session, tokens: &[u32]) -> Result<(), EngineError> {
        self.pool.install(|| {
            tokens
                .iter()
                .try_for_each(|t| self.forward(session, std::slice::from_ref(t)))
        })
    }

    /// Generate a continuation of `prompt` (token ids). The session's cached prefix is reused;
    /// `on_text` receives valid UTF-8 pieces and returns `false` to stop early.
    pub fn generate(
        &self,
        session: &mut Session,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut (dyn FnMut(&str) -> bool + Send),
    ) -> Result<Outcome, EngineError> {
        self.generate_with(session, prompt, params, None, on_text)
    }

    /// `generate` under a grammar: before sampling, every token the grammar does not allow
    /// is masked out, and when the grammar is complete the answer ends
    /// (`StopReason::EndOfGeneration`).
    pub fn generate_with(
        &self,
        session: &mut Session,
        prompt: &[u32],
        params: &GenerateParams,
        mut grammar: Option<&mut Grammar>,
        on_text: &mut (dyn FnMut(&str) -> bool + Send),
    ) -> Result<Outcome, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() > session.n_ctx() {
            return Err(EngineError::PromptTooLong {
                n_prompt: prompt.len(),
                n_ctx: session.n_ctx(),
            });
        }
        // Reuse the common prefix, but always evaluate at least one token to get logits.
        let common = session
            .history()
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let n_cached = common.min(prompt.len() - 1);
        session.truncate(n_cached);

        let mut sampler = Sampler::new(params.sampling.clone(), self.model.cfg.n_vocab);
        for &t in prompt {
            sampler.accept(t);
        }
        let mut text = TextStream::new(&params.stop);
        let mut tokens = Vec::with_capacity(params.max_tokens);
        let t0 = Instant::now();
        self.pool.install(|| -> Result<Outcome, EngineError> {
            self.forward(session, &prompt[n_cached..])?;
            let prompt_time = t0.elapsed();
            let t1 = Instant::now();
            let mut stop_reason = StopReason::MaxTokens;
            // The last tokens of a constrained answer's budget go to closing it (see
            // `Grammar::closing_choice`), so it ends well-formed (`StopReason::Closed`)
            // instead of cut.
            let reserve = (params.max_tokens / 4).min(64);
            let mut closing = false;
            while tokens.len() < params.max_tokens {
                let mut forced = None;
                if let Some(g) = grammar.as_deref_mut() {
                    if g.is_done() {
                        stop_reason = if closing {
                            StopReason::Closed
                        } else {
                            StopReason::EndOfGeneration
                        };
                        break;
                    }
                    g.mask(session.logits_mut())?;
                    closing |= g.closes_early() && params.max_tokens - tokens.len() <= reserve;
                    if closing {
                        forced = g.closing_choice(session.logits_mut());
                    }
                }
                let id = match forced {
                    Some(id) => id,
                    None => sampler.sample(session.logits_mut()),
                };
                if self.tokenizer.is_eog(id) {
                    stop_reason = if closing {
                        StopReason::Closed
                    } else {
                        StopReason::EndOfGeneration
                    };
                    break;
                }
                if let Some(g) = grammar.as_deref_mut() {
                    g.accept(id)?;
                }
                tokens.push(id);
                sampler.accept(id);
                match text.push(self.tokenizer.token_piece(id, false), on_text) {
                    Flow::Continue => {}
                    Flow::Stop(s) => {
                        stop_reason = s;
                        break;
                    }
                }
                if grammar.as_deref().is_some_and(Grammar::is_done) {
                    stop_reason = if closing {
                        StopReason::Closed
                    } else {
                        StopReason::EndOfGeneration
                    };
                    break;
                }
                if tokens.len() == params.max_tokens {
                    break;
                }
                if session.n_past() >= session.n_ctx() {
                    stop_reason = StopReason::ContextFull;
                    break;
                }
                self.forward(session, &[id])?;
            }
            if !matches!(
                stop_reason,
                StopReason::StopString(_) | StopReason::Cancelled
            ) {
                text.finish(on_text);
            }
            Ok(Outcome {
                stop_reason,
                tokens: std::mem::take(&mut tokens),
                n_prompt: prompt.len(),
                n_cached,
                prompt_time,
                gen_time: t1.elapsed(),
            })
        })
    }
}

enum Flow {
    Continue,
    Stop(StopReason),
}

/// Turns token bytes into UTF-8 text pieces, holding back incomplete characters and any tail
/// that could be the beginning of a stop string.
struct TextStream<'a> {
    stops: &'a [String],
    /// Bytes of an incomplete UTF-8 sequence at the end of the last token.
    partial: Vec<u8>,
    /// Decoded text not yet emitted (a possible stop-string prefix).
    held: String,
}

impl<'a> TextStream<'a> {
    fn new(stops: &'a [String]) -> Self {
        let longest = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        Self {
            stops,
            partial: Vec::with_capacity(8),
            held: String::with_capacity(64 + 4 * longest),
        }
    }

    fn push(&mut self, bytes: &[u8], on_text: &mut dyn FnMut(&str) -> bool) -> Flow {
        self.partial.extend_from_slice(bytes);
        let mut rest: &[u8] = &self.partial;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.held.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    // `valid` is the prefix from_utf8 just validated, so this never falls back.
                    self.held
                        .push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for the next token's bytes.
                        None => {
                            rest = tail;
                            break;
                        }
                        // Invalid bytes can never become valid: replace them, as llama.cpp's
                        // lossy printing does.
                        Some(n) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            rest = &tail[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drain_from = self.partial.len() - keep;
        self.partial.drain(..drain_from);

        if let Some((at, stop)) = self.find_stop() {
            if at > 0 && !on_text(&self.held[..at]) {
                return Flow::Stop(StopReason::Cancelled);
            }
            return Flow::Stop(StopReason::StopString(stop));
        }
        let emit = self.held.len() - self.stop_prefix_len();
        if emit > 0 {
            let go_on = on_text(&self.held[..emit]);
            self.held.drain(..emit);
            if !go_on {
                return Flow::Stop(StopReason::Cancelled);
            }
        }
        Flow::Continue
    }

    /// Earliest complete stop string in the held text.
    fn find_stop(&self) -> Option<(usize, String)> {
        self.stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s.clone())))
            .min_by_key(|(i, _)| *i)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string.
    fn stop_prefix_len(&self) -> usize {
        let mut best = 0;
        for s in self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > best && self.held.ends_with(&s[..i]) {
                    best = i;
                }
            }
        }
        best
    }

    /// Flush what is held at the end of generation (an incomplete character becomes U+FFFD).
    fn finish(&mut self, on_text: &mut dyn FnMut(&str) -> bool) {
        if !self.partial.is_empty() {
            self.held.push(char::REPLACEMENT_CHARACTER);
            self.partial.clear();
        }
        if !self.held.is_empty() {
            on_text(&self.held);
            self.held.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, Option<StopReason>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut ts = TextStream::new(&stops);
        let mut out = Vec::new();
        let mut cb = |s: &str| {
            out.push(s.to_string());
            true
        };
        for p in pieces {
            if let Flow::Stop(r) = ts.push(p, &mut cb) {
                return (out, Some(r));
            }
        }
        ts.finish(&mut cb);
        (out, None)
    }

    #[test]
    fn multibyte_char_split_across_tokens_is_emitted_whole() {
        let crab = "🦀".as_bytes();
        let (out, _) = run(&[], &[b"a", &crab[..1], &crab[1..3], &crab[3..], b"b"]);
        assert_eq!(out, vec!["a", "🦀", "b"]);
        assert!(out.iter().all(|s| !s.contains('\u{FFFD}')));
    }

    #[test]
    fn stop_string_across_tokens_is_held_back_and_cut() {
        let (out, r) = run(&["</s>"], &[b"hello <", b"/", b"s> more"]);
        assert_eq!(out.concat(), "hello ");
        assert_eq!(r, Some(StopReason::StopString("</s>".into())));
    }

    #[test]
    fn held_prefix_is_released_when_it_stops_matching() {
        let (out, r) = run(&["STOP"], &[b"ST", b"OCK"]);
        assert_eq!(out.concat(), "STOCK");
        assert_eq!(r, None);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (out, _) = run(&[], &[b"x\xff", b"y", b"\xe2\x82"]);
        assert_eq!(out.concat(), "x\u{FFFD}y\u{FFFD}");
    }
}
