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
use crate::models::{self, Decoder, ModelError, Precision, Rows};
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
    /// llama.cpp's `ignore_eos`: end-of-generation tokens are never sampled, so the answer
    /// runs to `max_tokens` (or a stop string). For benchmarks that need fixed lengths.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
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
        self.forward_with(session, tokens, Precision::PerPass)
    }

    fn forward_with(
        &self,
        session: &mut Session,
        tokens: &[u32],
        precision: Precision,
    ) -> Result<(), EngineError> {
        match (&self.backend, session) {
            (Backend::Native, Session::Native(s)) => {
                self.model
                    .forward_with(&self.kernels, s, tokens, precision)?;
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

    /// Run `tokens`, the rest of a prompt of `prompt_len` tokens, each row in the precision
    /// of a cold read of the whole prompt ([`Precision::Prompt`]), however the prompt is
    /// split and whatever prefix was cached.
    pub fn eval_prompt(
        &self,
        session: &mut Session,
        tokens: &[u32],
        prompt_len: usize,
    ) -> Result<(), EngineError> {
        let precision = Precision::Prompt { len: prompt_len };
        self.pool
            .install(|| self.forward_with(session, tokens, precision))
    }

    /// Scratch for `eval_batch` over up to `max_seqs` sequences.
    pub fn new_batch(&self, max_seqs: usize) -> crate::models::Batch {
        self.model.new_batch(max_seqs)
    }

    /// One step for several sequences: `rows[i]` appended to `seqs[i]`, each left with the
    /// logits of its last token. On the native backend the weights are read once for all of
    /// them (`Decoder::forward_batch`), with each sequence's results the same bits as alone;
    /// candle sessions run one after another.
    pub fn eval_batch(
        &self,
        batch: &mut crate::models::Batch,
        seqs: &mut [&mut Session],
        rows: &[Rows<'_>],
    ) -> Result<(), EngineError> {
        self.pool.install(|| {
            if !matches!(self.backend, Backend::Native) {
                for (s, r) in seqs.iter_mut().zip(rows) {
                    self.forward_with(s, r.tokens, r.precision)?;
                }
                return Ok(());
            }
            let mut native = Vec::with_capacity(seqs.len());
            for s in seqs.iter_mut() {
                match &mut **s {
                    Session::Native(s) => native.push(s),
                    Session::Candle(_) => return Err(EngineError::ForeignSession),
                }
            }
            self.model
                .forward_batch(&self.kernels, batch, &mut native, rows)?;
            Ok(())
        })
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
        grammar: Option<&mut Grammar>,
        on_text: &mut (dyn FnMut(&str) -> bool + Send),
    ) -> Result<Outcome, EngineError> {
        let (mut gen, todo) = self.start(session, prompt, params.clone())?;
        self.pool.install(|| -> Result<Outcome, EngineError> {
            let precision = Precision::Prompt { len: prompt.len() };
            self.forward_with(session, &prompt[todo..], precision)?;
            gen.prompt_done();
            let mut grammar = grammar;
            loop {
                let (n_past, n_ctx) = (session.n_past(), session.n_ctx());
                match gen.step(
                    self,
                    session.logits_mut(),
                    grammar.as_deref_mut(),
                    n_past,
                    n_ctx,
                    on_text,
                )? {
                    Step::Next(id) => self.forward(session, &[id])?,
                    Step::Done(o) => return Ok(o),
                }
            }
        })
    }

    /// Begin a generation of `prompt` in `session`: the prompt is checked, the session's
    /// cached prefix is kept, and the caller runs the prompt's tokens from the returned index
    /// on (in one pass or in chunks, alone or in a batch), calls `Generation::prompt_done`,
    /// then `Generation::step` after each pass.
    pub fn start(
        &self,
        session: &mut Session,
        prompt: &[u32],
        params: GenerateParams,
    ) -> Result<(Generation, usize), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() > session.n_ctx() {
            return Err(EngineError::PromptTooLong {
                n_prompt: prompt.len(),
                n_ctx: session.n_ctx(),
            });
        }
        // Reuse the cached prefix, but always evaluate at least one token to get logits.
        let n_cached = session.reusable_prefix(prompt).min(prompt.len() - 1);
        session.truncate(n_cached);
        let mut sampling = params.sampling.clone();
        if params.ignore_eos {
            let eog = self.tokenizer.eog_ids();
            sampling
                .logit_bias
                .retain(|(id, _)| eog.binary_search(id).is_err());
            sampling
                .logit_bias
                .extend(eog.iter().map(|&id| (id, f32::NEG_INFINITY)));
        }
        let mut sampler = Sampler::new(sampling, self.model.cfg.n_vocab);
        for &t in prompt {
            sampler.accept(t);
        }
        let text = TextStream::new(params.stop.clone());
        let gen = Generation {
            tokens: Vec::with_capacity(params.max_tokens),
            // The last tokens of a constrained answer's budget go to closing it (see
            // `Grammar::closing_choice`), so it ends well-formed (`StopReason::Closed`)
            // instead of cut.
            reserve: (params.max_tokens / 4).min(64),
            params,
            sampler,
            text,
            closing: false,
            n_prompt: prompt.len(),
            n_cached,
            t0: Instant::now(),
            prompt_time: Duration::ZERO,
            t1: Instant::now(),
        };
        Ok((gen, n_cached))
    }
}

/// What a generation does after a step.
pub enum Step {
    /// Run this token through the model, then step again.
    Next(u32),
    /// The answer is over.
    Done(Outcome),
}

/// One answer being generated, a step at a time: the forward passes are the caller's, so
/// several generations can share them (`Engine::eval_batch`).
pub struct Generation {
    params: GenerateParams,
    sampler: Sampler,
    text: TextStream,
    tokens: Vec<u32>,
    reserve: usize,
    closing: bool,
    n_prompt: usize,
    n_cached: usize,
    t0: Instant,
    prompt_time: Duration,
    t1: Instant,
}

impl Generation {
    /// The prompt has been run: decode begins.
    pub fn prompt_done(&mut self) {
        self.prompt_time = self.t0.elapsed();
        self.t1 = Instant::now();
    }

    /// Tokens generated so far.
    pub fn n_generated(&self) -> usize {
        self.tokens.len()
    }

    /// Pick the next token from `logits` (the last pass's, for this sequence; `n_past` and
    /// `n_ctx` are its session's), emit its text, and say what comes next.
    pub fn step(
        &mut self,
        engine: &Engine,
        logits: &mut [f32],
        mut grammar: Option<&mut Grammar>,
        n_past: usize,
        n_ctx: usize,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Step, EngineError> {
        let max = self.params.max_tokens;
        let ended = |closing: bool| {
            if closing {
                StopReason::Closed
            } else {
                StopReason::EndOfGeneration
            }
        };
        if self.tokens.len() >= max {
            return Ok(self.finish(StopReason::MaxTokens, on_text));
        }
        let mut forced = None;
        if let Some(g) = grammar.as_deref_mut() {
            if g.is_done() {
                return Ok(self.finish(ended(self.closing), on_text));
            }
            g.mask(logits)?;
            self.closing |= g.closes_early() && max - self.tokens.len() <= self.reserve;
            if self.closing {
                forced = g.closing_choice(logits);
            }
        }
        let id = match forced {
            Some(id) => id,
            None => self.sampler.sample(logits),
        };
        if engine.tokenizer.is_eog(id) {
            return Ok(self.finish(ended(self.closing), on_text));
        }
        if let Some(g) = grammar.as_deref_mut() {
            g.accept(id)?;
        }
        self.tokens.push(id);
        self.sampler.accept(id);
        if let Flow::Stop(s) = self
            .text
            .push(engine.tokenizer.token_piece(id, false), on_text)
        {
            return Ok(self.finish(s, on_text));
        }
        if grammar.as_deref().is_some_and(Grammar::is_done) {
            return Ok(self.finish(ended(self.closing), on_text));
        }
        if self.tokens.len() == max {
            return Ok(self.finish(StopReason::MaxTokens, on_text));
        }
        if n_past >= n_ctx {
            return Ok(self.finish(StopReason::ContextFull, on_text));
        }
        Ok(Step::Next(id))
    }

    fn finish(&mut self, stop_reason: StopReason, on_text: &mut dyn FnMut(&str) -> bool) -> Step {
        if !matches!(
            stop_reason,
            StopReason::StopString(_) | StopReason::Cancelled
        ) {
            self.text.finish(on_text);
        }
        Step::Done(Outcome {
            stop_reason,
            tokens: std::mem::take(&mut self.tokens),
            n_prompt: self.n_prompt,
            n_cached: self.n_cached,
            prompt_time: self.prompt_time,
            gen_time: self.t1.elapsed(),
        })
    }
}

enum Flow {
    Continue,
    Stop(StopReason),
}

/// Turns token bytes into UTF-8 text pieces, holding back incomplete characters and any tail
/// that could be the beginning of a stop string.
struct TextStream {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 sequence at the end of the last token.
    partial: Vec<u8>,
    /// Decoded text not yet emitted (a possible stop-string prefix).
    held: String,
}

impl TextStream {
    fn new(stops: Vec<String>) -> Self {
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
        for s in &self.stops {
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
        let mut ts = TextStream::new(stops);
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
