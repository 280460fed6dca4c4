//! One log line per request, written when the request is over: for a stream that is when its
//! last event went out, so the line can carry token counts and the time to first token.
//!
//! The routing middleware creates a `RequestLog` and puts it in the request's extensions;
//! the layers that answer fill it in (the model asked for, tokens, who served it, why it
//! fell back), and whoever drops the last handle writes the line. What goes in is counts,
//! names and reasons: never a request body, a prompt, generated text or a key.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A handle on one request's log record; cheap to clone into a stream's task.
#[derive(Clone)]
pub struct RequestLog(Arc<Mutex<Record>>);

struct Record {
    method: String,
    route: &'static str,
    started: Instant,
    /// Probes and scrapes log at debug level, so a poll every second does not flood the log.
    quiet: bool,
    status: Option<u16>,
    model: Option<String>,
    stream: bool,
    prompt_tokens: Option<usize>,
    cached_tokens: Option<usize>,
    completion_tokens: Option<usize>,
    first_token: Option<Duration>,
    finish: Option<&'static str>,
    served_by: Option<String>,
    fallback_reason: Option<String>,
}

impl RequestLog {
    pub fn new(method: &str, route: &'static str, quiet: bool) -> Self {
        Self(Arc::new(Mutex::new(Record {
            method: method.to_owned(),
            route,
            started: Instant::now(),
            quiet,
            status: None,
            model: None,
            stream: false,
            prompt_tokens: None,
            cached_tokens: None,
            completion_tokens: None,
            first_token: None,
            finish: None,
            served_by: None,
            fallback_reason: None,
        })))
    }

    fn with(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn status(&self, status: u16) {
        self.with(|r| r.status = Some(status));
    }

    /// The model name the client asked for (any name is accepted, so it tells who called).
    pub fn model(&self, model: &str) {
        self.with(|r| r.model = Some(model.to_owned()));
    }

    pub fn stream(&self, stream: bool) {
        self.with(|r| r.stream = stream);
    }

    /// The first generated text went out now (kept from the first call only).
    pub fn first_token(&self) {
        self.with(|r| {
            if r.first_token.is_none() {
                r.first_token = Some(r.started.elapsed());
            }
        });
    }

    pub fn tokens(&self, prompt: usize, cached: usize, completion: usize) {
        self.with(|r| {
            r.prompt_tokens = Some(prompt);
            r.cached_tokens = Some(cached);
            r.completion_tokens = Some(completion);
        });
    }

    /// The wire-neutral finish: `stop`, `length`, `error`, `disconnected`.
    pub fn finish(&self, finish: &'static str) {
        self.with(|r| r.finish = Some(finish));
    }

    pub fn served_by(&self, who: &str) {
        self.with(|r| r.served_by = Some(who.to_owned()));
    }

    pub fn fallback_reason(&self, why: &str) {
        self.with(|r| r.fallback_reason = Some(why.to_owned()));
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let ttft_ms = self.first_token.map(|d| d.as_secs_f64() * 1e3);
        // `?` on client-chosen strings escapes them, so a name cannot forge a log line.
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "backstop::request",
                    $level,
                    method = %self.method,
                    route = self.route,
                    status = self.status,
                    model = self.model.as_deref().map(tracing::field::debug),
                    stream = self.stream,
                    prompt_tokens = self.prompt_tokens,
                    cached_tokens = self.cached_tokens,
                    completion_tokens = self.completion_tokens,
                    ttft_ms = ttft_ms,
                    total_ms = total_ms,
                    finish = self.finish,
                    served_by = self.served_by.as_deref(),
                    fallback_reason = self.fallback_reason.as_deref().map(tracing::field::debug),
                    "request"
                )
            };
        }
        if self.quiet {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
    }
}
