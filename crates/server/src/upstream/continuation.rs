//! Finishing a cloud stream that broke half-way: what the cloud sent becomes a `Resume`, and
//! the local-answer layer continues the same assistant message in the same stream and wire
//! format; the final event says where the continuation began
//! (`backstop.continued_after_chars`).

use std::sync::Arc;

use serde_json::json;

use super::sse::Progress;
use crate::core::Resume;
use crate::local::{self, StreamTx};
use crate::log::RequestLog;
use crate::state::AppState;
use crate::wire::{Endpoint, Flavor};

pub async fn continue_locally(
    st: &Arc<AppState>,
    ep: Endpoint,
    request: &[u8],
    progress: &Progress,
    reason: &str,
    tx: &StreamTx,
    log: &RequestLog,
) {
    // Already complete but for the closing event: close it, nothing to generate.
    let complete = match ep.flavor() {
        Flavor::Anthropic => progress.message_delta_sent,
        Flavor::OpenAi => progress.finish_sent,
    };
    if complete {
        let _ = tx
            .send(Ok(local::closing_frame(ep.flavor()).to_bytes()))
            .await;
        return;
    }
    let resume = Resume {
        text: progress.text.clone(),
        id: progress.id.clone(),
        model: progress.model.clone(),
        open_block: progress.open_block,
        open_block_is_text: progress.open_block_is_text,
        next_block: progress.next_block,
        open_tool: progress.open_tool.clone(),
        done_tools: progress.done_tools.clone(),
        marker: json!({
            "continued_locally": true,
            "continued_after_chars": progress.text.chars().count(),
            "reason": reason,
            "weights": st.weights,
        }),
    };
    local::continue_stream(st, ep, request, resume, tx, log).await;
}
