//! The local model's shared state: the configuration, the engine once it is loaded, the
//! scheduler and the metrics, and the steps every local answer takes (tokenize, admit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backstop_engine::chat::{ChatMessage, ToolSpec};
use backstop_engine::generate::{Engine, EngineError, GenerateParams};
use backstop_engine::grammar::{Constraint, Grammar};
use tokio::sync::mpsc;

use crate::config::ServeConfig;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::scheduler::{Event, Job, Rejected, Scheduler};

/// The loaded model and what requests need from it.
pub struct Loaded {
    pub engine: Arc<Engine>,
    /// The most tokens one request may fill: its sequence's context, within the KV budget.
    pub n_ctx: usize,
}

pub struct AppState {
    pub config: ServeConfig,
    /// The weights' file name, for the served-by header.
    pub weights: String,
    pub loaded: OnceLock<Loaded>,
    pub scheduler: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    pub started: Instant,
}

/// Seconds a client should wait before retrying when we are full or not ready.
pub const RETRY_AFTER_S: u64 = 1;

impl AppState {
    pub fn new(config: ServeConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let scheduler = Arc::new(Scheduler::new(
            config.parallel,
            config.queue,
            config.kv_budget,
            Arc::clone(&metrics),
        ));
        let weights = config
            .model_path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Self {
            config,
            weights,
            loaded: OnceLock::new(),
            scheduler,
            metrics,
            draining: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Load the weights, warm every sequence with one token and start the workers.
    pub fn load(&self) -> Result<Vec<std::thread::JoinHandle<()>>, EngineError> {
        // Test seam: stands in for a slow disk so tests can watch the loading state.
        if let Some(ms) = std::env::var("BACKSTOP_TEST_LOAD_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
        }
        let engine = Arc::new(Engine::load(&self.config.model_path, &self.config.engine)?);
        let mut sessions = Vec::with_capacity(self.scheduler.parallel());
        for _ in 0..self.scheduler.parallel() {
            sessions.push(engine.new_session(self.config.n_ctx)?);
        }
        // Warm-up: touch the weights (page them in) and the code paths before saying ready.
        let first = engine.tokenizer.bos_id().unwrap_or(0);
        for s in &mut sessions {
            engine.eval(s, &[first])?;
            s.truncate(0);
        }
        let n_ctx = sessions.first().map_or(0, |s| s.n_ctx());
        let handles = self
            .scheduler
            .start(Arc::clone(&engine), sessions)
            .map_err(|e| EngineError::ThreadPool {
                threads: self.scheduler.parallel(),
                why: e.to_string(),
            })?;
        let n_ctx = n_ctx.min(self.scheduler.kv_budget());
        let _ = self.loaded.set(Loaded { engine, n_ctx });
        Ok(handles)
    }

    pub fn is_ready(&self) -> bool {
        self.loaded.get().is_some() && !self.draining.load(Ordering::Relaxed)
    }

    /// The model, or the 503 that says to come back.
    pub fn model(&self) -> Result<&Loaded, ApiError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(ApiError::overloaded(
                RETRY_AFTER_S,
                "the server is shutting down",
            ));
        }
        self.loaded
            .get()
            .ok_or_else(|| ApiError::overloaded(RETRY_AFTER_S, "the model is still loading"))
    }

    /// The requested name, echoed in responses as the cloud would; 404 in strict mode.
    pub fn checked_model(&self, model: Option<String>) -> Result<String, ApiError> {
        let names = &self.config.names;
        if !names.accepts(model.as_deref()) {
            let m = model.unwrap_or_default();
            return Err(ApiError::new(
                ErrorKind::ModelNotFound,
                format!(
                    "The model '{m}' does not exist or you do not have access to it (this \
                     server serves {:?})",
                    names.listed()
                ),
            ));
        }
        Ok(model.unwrap_or_else(|| names.served.clone()))
    }

    /// Tokenize a conversation with the model's chat template, off the async workers.
    /// `tools` are shown to the model; `prefill` is text the assistant's answer must start
    /// with.
    pub async fn chat_prompt(
        self: &Arc<Self>,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        prefill: Option<String>,
    ) -> Result<Vec<u32>, ApiError> {
        let me = Arc::clone(self);
        blocking(move || {
            let engine = &me.model()?.engine;
            let template = engine.template.as_ref().map_err(|e| {
                ApiError::invalid(
                    Some("messages"),
                    format!("the model has no usable chat template: {e}"),
                )
            })?;
            let mut text = template
                .render_prompt(&messages, &tools, true, engine.tokenizer.add_bos())
                .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
            if let Some(p) = prefill {
                text.push_str(&p);
            }
            engine
                .tokenizer
                .encode(&text, true)
                .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))
        })
        .await
    }

    /// Tokenize a raw completion prompt (BOS and special tokens as the model's metadata says).
    pub async fn raw_prompt(self: &Arc<Self>, text: String) -> Result<Vec<u32>, ApiError> {
        let me = Arc::clone(self);
        blocking(move || {
            me.model()?
                .engine
                .tokenizer
                .encode(&text, true)
                .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))
        })
        .await
    }

    /// Compile an output constraint for one request, off the async workers; one that does
    /// not compile is a 400 naming `param` and why.
    pub async fn compile(
        self: &Arc<Self>,
        constraint: Constraint,
        param: &'static str,
    ) -> Result<Grammar, ApiError> {
        let me = Arc::clone(self);
        blocking(move || {
            me.model()?
                .engine
                .compile_constraint(&constraint)
                .map_err(|e| ApiError::invalid(Some(param), format!("'{param}': {e}")))
        })
        .await
    }

    /// Tokens of text that continues a prompt (no BOS, special tokens not parsed).
    pub async fn continuation_tokens(self: &Arc<Self>, text: String) -> Result<Vec<u32>, ApiError> {
        let me = Arc::clone(self);
        blocking(move || {
            me.model()?
                .engine
                .tokenizer
                .encode_with(&text, false, false)
                .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))
        })
        .await
    }

    /// Check the prompt fits, clamp the budget to the context, and queue the job. Errors here
    /// happen before any response byte, so the client gets a proper status code.
    pub fn admit(
        &self,
        prompt: Vec<u32>,
        mut params: GenerateParams,
        grammar: Option<Grammar>,
    ) -> Result<Admitted, ApiError> {
        let loaded = self.model()?;
        let n_prompt = prompt.len();
        if n_prompt == 0 {
            return Err(ApiError::invalid(None, "the prompt is empty"));
        }
        // At least one token must fit after the prompt.
        if n_prompt >= loaded.n_ctx {
            return Err(ApiError::context_length(n_prompt, loaded.n_ctx));
        }
        params.max_tokens = params.max_tokens.min(loaded.n_ctx - n_prompt);
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            prompt,
            params,
            grammar,
            events: tx,
            admitted_at: Instant::now(),
            waited_for_kv: false,
        };
        match self.scheduler.submit(job) {
            Ok(()) => Ok(Admitted {
                events: rx,
                n_prompt,
            }),
            Err(Rejected::Full) => Err(ApiError::overloaded(
                RETRY_AFTER_S,
                format!(
                    "all {} sequences are busy and the queue is full; retry shortly",
                    self.scheduler.parallel()
                ),
            )),
            Err(Rejected::ShuttingDown) => Err(ApiError::overloaded(
                RETRY_AFTER_S,
                "the server is shutting down",
            )),
        }
    }
}

/// A queued generation: its events, and the prompt length for usage.
pub struct Admitted {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub n_prompt: usize,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("internal error: {e}")))?
}
