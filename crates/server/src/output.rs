//! Turning a job's events into what both APIs report: the whole text (non-streaming),
//! usage, llama-server-style timings, and ids.

use std::time::{SystemTime, UNIX_EPOCH};

use backstop_engine::generate::Outcome;
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorKind, Flavor};
use crate::scheduler::Event;
use crate::state::{Admitted, RETRY_AFTER_S};

/// Wait for the whole answer. Dropping the future (client gone) cancels the generation.
pub async fn collect(flavor: Flavor, job: &mut Admitted) -> Result<(String, Outcome), ApiError> {
    let mut text = String::new();
    while let Some(ev) = job.events.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(o) => return Ok((text, o)),
            other => return Err(event_error(flavor, other)),
        }
    }
    Err(event_error(
        flavor,
        Event::Failed("generation ended unexpectedly".into()),
    ))
}

/// The error for a job that ended without an outcome.
pub fn event_error(flavor: Flavor, ev: Event) -> ApiError {
    match ev {
        Event::ShuttingDown => {
            ApiError::overloaded(flavor, RETRY_AFTER_S, "the server is shutting down")
        }
        Event::Failed(why) => ApiError::new(
            flavor,
            ErrorKind::Internal,
            format!("generation failed: {why}"),
        ),
        Event::Text(_) | Event::Done(_) => {
            ApiError::new(flavor, ErrorKind::Internal, "unexpected generation event")
        }
    }
}

/// llama-server's `timings` object, which its users' dashboards read.
pub fn timings(o: &Outcome) -> Value {
    json!({
        "cache_n": o.n_cached,
        "prompt_n": o.n_prompt - o.n_cached,
        "prompt_ms": o.prompt_time.as_secs_f64() * 1e3,
        "prompt_per_second": o.prompt_tps(),
        "predicted_n": o.tokens.len(),
        "predicted_ms": o.gen_time.as_secs_f64() * 1e3,
        "predicted_per_second": o.gen_tps(),
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id with a provider-style prefix (`chatcmpl-…`, `msg_…`).
pub fn new_id(prefix: &str) -> String {
    let a: u64 = rand::random();
    let b: u32 = rand::random();
    format!("{prefix}{a:016x}{b:08x}")
}
