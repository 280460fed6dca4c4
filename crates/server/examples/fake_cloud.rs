//! A scripted stand-in for the Anthropic and OpenAI clouds, for the failover tests (Rust and
//! Python): `fake_cloud [--port P]` prints `fake_cloud: listening on http://127.0.0.1:PORT`.
//!
//! The scenario applies to every request until changed with
//! `POST /_control?scenario=NAME`; `GET /_control` reports the request count and what the last
//! request carried (auth headers, body) so tests can check pass-through. Scenarios:
//! `healthy`, `500`, `529`, `429`, `401`, `hang` (accept, never answer), `slow:SECS` (answer
//! after a delay), `break:N` (a stream that dies after N events). A streamed Messages request
//! with tools is answered with a little text and a `tool_use` block calling its first tool
//! with `{"path": "notes.txt"}`, sent in pieces, so a break can fall inside the call; an
//! OpenAI chat request with tools calls its first tool the same way, streamed or not.
//! `wrong` answers like `healthy` but says something else (other words, and the call's
//! argument `{"path": "secret.txt"}`), for council cross-checks.
//!
//! `--key KEY` makes it demand that key (`x-api-key` or `Authorization: Bearer`), answering
//! 401 otherwise. Health checks (user-agent `backstop-health-check/*`) are counted apart as
//! `probes` and leave `requests` and the last request alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Cloud {
    scenario: Mutex<String>,
    requests: AtomicU64,
    probes: AtomicU64,
    last: Mutex<Value>,
    key: Option<String>,
}

const WORDS: [&str; 8] = [
    "Hello", " from", " the", " cloud", ",", " all", " is", " well.",
];
const WRONG_WORDS: [&str; 8] = [
    "Bananas", " grow", " on", " the", " moon", " every", " single", " winter.",
];

/// A streamed answer to a request with tools: this text, then a call of its first tool.
const TOOL_WORDS: [&str; 2] = ["Let me", " look."];
const TOOL_INPUT: [&str; 4] = ["{\"pa", "th\": \"no", "tes.t", "xt\"}"];
const WRONG_TOOL_INPUT: [&str; 4] = ["{\"pa", "th\": \"se", "cret.t", "xt\"}"];

fn words(scenario: &str) -> &'static [&'static str] {
    if scenario == "wrong" {
        &WRONG_WORDS
    } else {
        &WORDS
    }
}

fn tool_input(scenario: &str) -> &'static [&'static str] {
    if scenario == "wrong" {
        &WRONG_TOOL_INPUT
    } else {
        &TOOL_INPUT
    }
}

/// The name of an OpenAI request's first function tool, if it has any.
fn first_function(body: &Bytes) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .pointer("/tools/0/function/name")?
        .as_str()
        .map(str::to_owned)
}

/// The name of the request's first tool, if it has any.
fn first_tool(body: &Bytes) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .pointer("/tools/0/name")?
        .as_str()
        .map(str::to_owned)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut port = 0u16;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--port") {
        port = args.get(i + 1).and_then(|p| p.parse().ok()).unwrap_or(0);
    }
    let key = args
        .iter()
        .position(|a| a == "--key")
        .and_then(|i| args.get(i + 1).cloned());
    let cloud = Arc::new(Cloud {
        key,
        ..Cloud::default()
    });
    *cloud.scenario.lock().unwrap() = "healthy".into();
    let app = Router::new()
        .route("/_control", get(report).post(set_scenario))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(chat))
        .route("/v1/models", get(models))
        .with_state(cloud);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    eprintln!(
        "fake_cloud: listening on http://{}",
        listener.local_addr().unwrap()
    );
    axum::serve(listener, app).await.expect("serve");
}

async fn report(State(c): State<Arc<Cloud>>) -> Json<Value> {
    let mut v = c.last.lock().unwrap().clone();
    v["requests"] = json!(c.requests.load(Ordering::SeqCst));
    v["probes"] = json!(c.probes.load(Ordering::SeqCst));
    v["scenario"] = json!(c.scenario.lock().unwrap().clone());
    Json(v)
}

async fn set_scenario(
    State(c): State<Arc<Cloud>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    if let Some(s) = q.get("scenario") {
        *c.scenario.lock().unwrap() = s.clone();
    }
    if q.contains_key("reset") {
        c.requests.store(0, Ordering::SeqCst);
        c.probes.store(0, Ordering::SeqCst);
    }
    report(State(c)).await
}

/// Count the request, remember what it carried, and apply the failure scenarios shared by all
/// routes. `Ok(scenario)` means: answer normally (or break after N events).
async fn arrive(
    c: &Cloud,
    anthropic: bool,
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Result<String, Response> {
    let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let probe = header("user-agent").is_some_and(|u| u.starts_with("backstop-health-check/"));
    if probe {
        c.probes.fetch_add(1, Ordering::SeqCst);
    } else {
        c.requests.fetch_add(1, Ordering::SeqCst);
        *c.last.lock().unwrap() = json!({
            "path": uri.path(), "query": uri.query(),
            "authorization": header("authorization"), "x_api_key": header("x-api-key"),
            "anthropic_version": header("anthropic-version"),
            "body": String::from_utf8_lossy(body),
        });
    }
    let scenario = c.scenario.lock().unwrap().clone();
    let err = |status: u16, ty: &str, msg: &str| -> Response {
        let body = if anthropic {
            json!({"type": "error", "error": {"type": ty, "message": msg}})
        } else {
            json!({"error": {"message": msg, "type": ty, "param": null, "code": null}})
        };
        let mut r = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
        if status == 529 || status == 429 || status == 503 {
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
        }
        r
    };
    if let Some(k) = &c.key {
        let bearer =
            header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
        if header("x-api-key").as_ref() != Some(k) && bearer.as_ref() != Some(k) {
            return Err(err(401, "authentication_error", "invalid key"));
        }
    }
    match scenario.as_str() {
        "500" => Err(err(500, "api_error", "Internal server error")),
        "529" => Err(err(529, "overloaded_error", "Overloaded")),
        "429" => Err(err(429, "rate_limit_error", "Rate limited")),
        "401" => Err(err(401, "authentication_error", "invalid x-api-key")),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(err(500, "api_error", "unreachable"))
        }
        s if s.starts_with("slow:") => {
            let secs: f64 = s[5..].parse().unwrap_or(1.0);
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Ok("healthy".into())
        }
        other => Ok(other.to_owned()),
    }
}

fn wants_stream(body: &Bytes) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false)
}

fn model_of(body: &Bytes) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// A streamed body of `events`, cut off (connection reset) after `break_after` of them.
fn sse_body(events: Vec<String>, break_after: Option<usize>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if break_after == Some(i) {
                let _ = tx
                    .send(Err(std::io::Error::other("simulated outage")))
                    .await;
                return;
            }
            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("x-cloud", "fake")
        .body(body)
        .unwrap()
}

fn break_after(scenario: &str) -> Option<usize> {
    scenario.strip_prefix("break:").and_then(|n| n.parse().ok())
}

async fn messages(State(c): State<Arc<Cloud>>, uri: Uri, h: HeaderMap, body: Bytes) -> Response {
    let scenario = match arrive(&c, true, &uri, &h, &body).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let model = model_of(&body);
    let tool = first_tool(&body);
    if !wants_stream(&body) {
        let mut content = vec![json!({"type": "text", "text": words(&scenario).concat()})];
        if let Some(name) = &tool {
            let input: Value = serde_json::from_str(&tool_input(&scenario).concat()).unwrap();
            content = vec![
                json!({"type": "text", "text": TOOL_WORDS.concat()}),
                json!({"type": "tool_use", "id": "toolu_cloud1", "name": name, "input": input}),
            ];
        }
        return Json(json!({
            "id": "msg_cloud", "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": if tool.is_some() { "tool_use" } else { "end_turn" },
            "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 8},
        }))
        .into_response();
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_cloud", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    let said: &[&str] = if tool.is_some() {
        &TOOL_WORDS
    } else {
        words(&scenario)
    };
    for w in said {
        events.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    // With tools, the answer calls the first one: {"path": "notes.txt"} in four pieces.
    if let Some(name) = &tool {
        events.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
                   "content_block": {"type": "tool_use", "id": "toolu_cloud1", "name": name,
                                     "input": {}}}),
        ));
        for piece in tool_input(&scenario) {
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                       "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    let stop = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    events.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": 8}}),
    ));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    sse_body(events, break_after(&scenario))
}

async fn count_tokens(
    State(c): State<Arc<Cloud>>,
    uri: Uri,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    match arrive(&c, true, &uri, &h, &body).await {
        Ok(_) => Json(json!({"input_tokens": 42})).into_response(),
        Err(r) => r,
    }
}

async fn chat(State(c): State<Arc<Cloud>>, uri: Uri, h: HeaderMap, body: Bytes) -> Response {
    let scenario = match arrive(&c, false, &uri, &h, &body).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let model = model_of(&body);
    let chat = uri.path().ends_with("/chat/completions");
    let tool = first_function(&body).filter(|_| chat);
    if !wants_stream(&body) {
        let text: String = words(&scenario).concat();
        let choice = if let Some(name) = &tool {
            json!({"index": 0, "message": {"role": "assistant", "content": TOOL_WORDS.concat(),
                   "tool_calls": [{"id": "call_cloud1", "type": "function",
                       "function": {"name": name, "arguments": tool_input(&scenario).concat()}}]},
                   "finish_reason": "tool_calls"})
        } else if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "stop"})
        };
        return Json(json!({
            "id": "chatcmpl-cloud", "object": if chat { "chat.completion" } else { "text_completion" },
            "created": 1, "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let choice = if chat {
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                   "finish_reason": finish})
        };
        let v = json!({"id": "chatcmpl-cloud",
            "object": if chat { "chat.completion.chunk" } else { "text_completion" },
            "created": 1, "model": model, "choices": [choice]});
        format!("data: {v}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let said: &[&str] = if tool.is_some() {
        &TOOL_WORDS
    } else {
        words(&scenario)
    };
    for w in said {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    if let Some(name) = &tool {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_cloud1", "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        for piece in tool_input(&scenario) {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    let finish = if tool.is_some() { "tool_calls" } else { "stop" };
    events.push(chunk(json!({}), json!(finish)));
    let include_usage = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
        })
        .unwrap_or(false);
    if include_usage {
        let v = json!({"id": "chatcmpl-cloud", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}});
        events.push(format!("data: {v}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    sse_body(events, break_after(&scenario))
}

async fn models(State(c): State<Arc<Cloud>>, uri: Uri, h: HeaderMap) -> Response {
    match arrive(&c, false, &uri, &h, &Bytes::new()).await {
        Ok(_) => Json(json!({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "cloud"}]}))
        .into_response(),
        Err(r) => r,
    }
}
