//! Finishing a cloud stream that broke half-way: the local model continues the same
//! assistant message from the text received so far, in the same stream and wire format, and
//! the final event says where the continuation began (`backstop.continued_after_chars`).
//! If the message cannot be continued (the request needs what the local model lacks, or it is
//! full), the stream still ends well-formed, with an error event.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::sse::Progress;
use super::Endpoint;
use crate::error::{ApiError, Flavor};
use crate::output::{event_error, new_id, timings, unix_now};
use crate::scheduler::Event;
use crate::state::AppState;

type Tx = mpsc::Sender<Result<Bytes, Infallible>>;

fn sse(name: Option<&str>, data: &Value) -> Bytes {
    let mut s = String::new();
    if let Some(n) = name {
        s.push_str("event: ");
        s.push_str(n);
        s.push('\n');
    }
    s.push_str("data: ");
    s.push_str(&data.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

pub async fn continue_locally(
    st: &Arc<AppState>,
    ep: Endpoint,
    request: &[u8],
    progress: &Progress,
    reason: &str,
    tx: &Tx,
) {
    let flavor = ep.flavor();
    // Already complete but for the closing event: close it, nothing to generate.
    match flavor {
        Flavor::Anthropic if progress.message_delta_sent => {
            let _ = tx
                .send(Ok(sse(
                    Some("message_stop"),
                    &json!({"type": "message_stop"}),
                )))
                .await;
            return;
        }
        Flavor::OpenAi if progress.finish_sent => {
            let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
            return;
        }
        _ => {}
    }
    let so_far = progress.text.clone();
    let prepared = match ep {
        Endpoint::Chat => crate::openai::prepare_chat(st, request, Some(so_far)).await,
        Endpoint::Completions => crate::openai::prepare_completion(st, request, Some(so_far)).await,
        Endpoint::Messages => crate::anthropic::prepare_messages(st, request, Some(so_far)).await,
        Endpoint::Models | Endpoint::CountTokens => return,
    };
    let job = prepared.and_then(|p| {
        let include_usage = p.include_usage;
        let model = p.model.clone();
        st.admit(flavor, p.prompt, p.params)
            .map(|job| (job, include_usage, model))
    });
    let marker = json!({
        "continued_locally": true,
        "continued_after_chars": progress.text.chars().count(),
        "reason": reason,
        "weights": st.weights,
    });
    match job {
        Err(e) => fail(flavor, progress, e, marker, tx).await,
        Ok((mut job, include_usage, model)) => {
            let model = progress.model.clone().unwrap_or(model);
            let out = Writer {
                flavor,
                ep,
                progress,
                tx,
                model,
                id: progress.id.clone().unwrap_or_else(|| new_id("chatcmpl-")),
                created: unix_now(),
            };
            if !out.begin().await {
                return;
            }
            while let Some(ev) = job.events.recv().await {
                match ev {
                    Event::Text(t) => {
                        if !out.text(&t).await {
                            return; // client gone: dropping the job cancels it
                        }
                    }
                    Event::Done(o) => {
                        out.end(&o, job.n_prompt, include_usage, marker).await;
                        return;
                    }
                    other => {
                        fail(flavor, progress, event_error(flavor, other), marker, tx).await;
                        return;
                    }
                }
            }
        }
    }
}

struct Writer<'a> {
    flavor: Flavor,
    ep: Endpoint,
    progress: &'a Progress,
    tx: &'a Tx,
    model: String,
    id: String,
    created: u64,
}

impl Writer<'_> {
    async fn send(&self, b: Bytes) -> bool {
        self.tx.send(Ok(b)).await.is_ok()
    }

    /// Anthropic: make sure a text block is open to receive the continuation.
    async fn begin(&self) -> bool {
        if self.flavor != Flavor::Anthropic {
            return true;
        }
        if let Some(i) = self.progress.open_block {
            if self.progress.open_block_is_text {
                return true;
            }
            let stop = json!({"type": "content_block_stop", "index": i});
            if !self.send(sse(Some("content_block_stop"), &stop)).await {
                return false;
            }
        }
        let start = json!({"type": "content_block_start", "index": self.block(),
                           "content_block": {"type": "text", "text": ""}});
        self.send(sse(Some("content_block_start"), &start)).await
    }

    fn block(&self) -> u64 {
        match self.progress.open_block {
            Some(i) if self.progress.open_block_is_text => i,
            _ => self.progress.next_block,
        }
    }

    fn openai_chunk(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.ep {
            Endpoint::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                             "finish_reason": finish}],
            }),
            _ => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null,
                                 "finish_reason": finish}],
                })
            }
        }
    }

    async fn text(&self, t: &str) -> bool {
        let b = match self.flavor {
            Flavor::Anthropic => sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": self.block(),
                        "delta": {"type": "text_delta", "text": t}}),
            ),
            Flavor::OpenAi => sse(None, &self.openai_chunk(Some(t), None)),
        };
        self.send(b).await
    }

    async fn end(
        &self,
        o: &backstop_engine::generate::Outcome,
        n_prompt: usize,
        include_usage: bool,
        marker: Value,
    ) {
        match self.flavor {
            Flavor::Anthropic => {
                let (reason, seq) = crate::anthropic::stop_reason(&o.stop_reason);
                let mut usage = crate::anthropic::usage(n_prompt, o);
                usage["output_tokens"] = json!(o.tokens.len());
                for (name, data) in [
                    (
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": self.block()}),
                    ),
                    (
                        "message_delta",
                        json!({"type": "message_delta",
                               "delta": {"stop_reason": reason, "stop_sequence": seq},
                               "usage": usage, "timings": timings(o), "backstop": marker}),
                    ),
                    ("message_stop", json!({"type": "message_stop"})),
                ] {
                    if !self.send(sse(Some(name), &data)).await {
                        return;
                    }
                }
            }
            Flavor::OpenAi => {
                let finish = match o.stop_reason {
                    backstop_engine::generate::StopReason::EndOfGeneration
                    | backstop_engine::generate::StopReason::StopString(_) => "stop",
                    _ => "length",
                };
                let mut last = self.openai_chunk(None, Some(finish));
                last["backstop"] = marker;
                last["timings"] = timings(o);
                if !self.send(sse(None, &last)).await {
                    return;
                }
                if include_usage {
                    let mut u = self.openai_chunk(None, None);
                    u["choices"] = json!([]);
                    u["usage"] = json!({
                        "prompt_tokens": n_prompt,
                        "completion_tokens": o.tokens.len(),
                        "total_tokens": n_prompt + o.tokens.len(),
                    });
                    if !self.send(sse(None, &u)).await {
                        return;
                    }
                }
                let _ = self.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            }
        }
    }
}

/// End the stream well-formed when no continuation is possible.
async fn fail(flavor: Flavor, progress: &Progress, e: ApiError, marker: Value, tx: &Tx) {
    let mut body = ApiError { flavor, ..e }.body();
    body["backstop"] = marker;
    match flavor {
        Flavor::Anthropic => {
            if let Some(i) = progress.open_block {
                let stop = json!({"type": "content_block_stop", "index": i});
                let _ = tx.send(Ok(sse(Some("content_block_stop"), &stop))).await;
            }
            let _ = tx.send(Ok(sse(Some("error"), &body))).await;
        }
        Flavor::OpenAi => {
            let _ = tx.send(Ok(sse(None, &body))).await;
            let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        }
    }
}
