//! `backstop serve` as a gateway sees it: the real binary on a loopback port, driven over
//! raw HTTP/1.1 so connections, streams and disconnects are under the test's control.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{sse_data, sse_events, Conn, Server};

/// A raw completion that cannot end early: SmolLM2's end-of-generation tokens (ids 0, 1, 2)
/// are banned, so it runs until its budget or until it is cancelled.
fn endless_completion(max_tokens: u32, stream: bool) -> String {
    json!({
        "model": "anything", "prompt": "Once upon a time", "max_tokens": max_tokens,
        "temperature": 0, "stream": stream,
        "logit_bias": {"0": -100, "1": -100, "2": -100},
    })
    .to_string()
}

fn chat(content: &str, max_tokens: u32, stream: bool) -> String {
    json!({
        "model": "gpt-4o", "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": content}],
    })
    .to_string()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn chat_stream_equals_non_stream_with_usage_and_served_by() {
    let s = Server::ready(&["-c", "1024"]);
    let r = s.post_json("/v1/chat/completions", &chat("Name a colour.", 12, false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("x-backstop-served-by")
        .unwrap()
        .contains("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o", "the requested name is echoed");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    let n_prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(n_prompt > 5);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 12);

    let r = s.post_json("/v1/chat/completions", &chat("Name a colour.", 12, true));
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&r.body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed, text,
        "greedy stream equals the non-streamed answer"
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap(),
        n_prompt
    );
    assert!(
        usage_chunk["timings"]["predicted_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert!(finish == "stop" || finish == "length", "{finish}");
}

#[test]
fn anthropic_messages_stream_has_the_real_event_sequence() {
    let s = Server::ready(&["-c", "1024"]);
    let body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 10, "temperature": 0,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
    });
    let r = s.post_json("/v1/messages", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    let text = v["content"][0]["text"].as_str().unwrap().to_owned();
    assert!(["end_turn", "max_tokens"].contains(&v["stop_reason"].as_str().unwrap()));

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let r = s.post_json("/v1/messages", &sb.to_string());
    assert_eq!(r.status, 200);
    let events = sse_events(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[..3],
        ["message_start", "content_block_start", "ping"]
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let mut streamed = String::new();
    for (name, data) in &events {
        let d: Value = serde_json::from_str(data).unwrap();
        assert_eq!(d["type"], name.as_str(), "event name matches data type");
        if name == "content_block_delta" {
            assert_eq!(d["delta"]["type"], "text_delta");
            streamed.push_str(d["delta"]["text"].as_str().unwrap());
        }
        if name == "message_delta" {
            assert!(d["usage"]["output_tokens"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(streamed, text);

    let r = s.post_json(
        "/v1/messages/count_tokens",
        &json!({"model": "x", "messages": [{"role": "user", "content": "Say hello."}]}).to_string(),
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 3);
}

#[test]
fn stop_sequences_cut_the_text_and_are_reported() {
    let s = Server::ready(&["-c", "1024"]);
    // Find what greedy decoding says, then stop on a word from the middle of it.
    let body = |stop: Option<&str>| {
        let mut b = json!({"model": "m", "prompt": "The capital of France is", "max_tokens": 24,
                           "temperature": 0});
        if let Some(s) = stop {
            b["stop"] = json!([s]);
        }
        b.to_string()
    };
    let full = s.post_json("/v1/completions", &body(None)).json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let word = full
        .split_whitespace()
        .nth(3)
        .expect("a few words of output")
        .to_owned();
    let r = s.post_json("/v1/completions", &body(Some(&word))).json();
    let cut = r["choices"][0]["text"].as_str().unwrap();
    assert_eq!(cut, &full[..full.find(&word).unwrap()]);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    let a = json!({"model": "m", "max_tokens": 24, "temperature": 0, "stop_sequences": [word],
                   "messages": [{"role": "user", "content": "Tell me about Paris."}]});
    let r = s.post_json("/v1/messages", &a.to_string()).json();
    if r["stop_reason"] == "stop_sequence" {
        assert_eq!(r["stop_sequence"], word.as_str());
        assert!(!r["content"][0]["text"].as_str().unwrap().contains(&word));
    }
}

#[test]
fn ignore_eos_runs_the_answer_to_max_tokens() {
    let s = Server::ready(&["-c", "1024"]);
    let body = |ignore: Option<bool>| {
        let mut b = json!({"model": "m", "max_tokens": 64, "temperature": 0,
                           "messages": [{"role": "user", "content": "Say only the word yes."}]});
        if let Some(i) = ignore {
            b["ignore_eos"] = json!(i);
        }
        b.to_string()
    };
    let short = s.post_json("/v1/chat/completions", &body(None)).json();
    let plain = s
        .post_json("/v1/chat/completions", &body(Some(false)))
        .json();
    assert_eq!(short["choices"], plain["choices"]);
    assert_eq!(short["choices"][0]["finish_reason"], "stop");
    let n_short = short["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n_short < 64, "the model should end this answer early");

    let long = s
        .post_json("/v1/chat/completions", &body(Some(true)))
        .json();
    assert_eq!(long["choices"][0]["finish_reason"], "length");
    assert_eq!(long["usage"]["completion_tokens"], 64);
    // Greedy: the same tokens up to where the end of generation was the best choice.
    let text = |r: &Value| {
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        text(&long).starts_with(&text(&short)),
        "{:?} / {:?}",
        text(&long),
        text(&short)
    );

    let with_json = json!({"model": "m", "max_tokens": 8, "ignore_eos": true,
                           "response_format": {"type": "json_object"},
                           "messages": [{"role": "user", "content": "hi"}]});
    let r = s.post_json("/v1/chat/completions", &with_json.to_string());
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "ignore_eos");
}

#[test]
fn bad_requests_get_json_4xx_and_the_server_keeps_serving() {
    let s = Server::ready(&["-c", "256", "--max-body-bytes", "2000"]);
    let ok_msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("/v1/chat/completions", "application/json", b"{not json".to_vec(), 400, "not valid JSON"),
        ("/v1/chat/completions", "application/json", b"".to_vec(), 400, "empty"),
        ("/v1/chat/completions", "application/json", b"[1,2]".to_vec(), 400, "invalid"),
        ("/v1/chat/completions", "application/json", br#"{"model":"x"}"#.to_vec(), 400, "messages"),
        ("/v1/chat/completions", "application/json", br#"{"messages":[]}"#.to_vec(), 400, "at least one"),
        ("/v1/chat/completions", "application/json", br#"{"messages":"hi"}"#.to_vec(), 400, "messages"),
        ("/v1/chat/completions", "application/json", br#"{"messages":[{"role":"wizard","content":"x"}]}"#.to_vec(), 400, "role"),
        ("/v1/chat/completions", "application/json", br#"{"messages":[{"role":"user"}]}"#.to_vec(), 400, "content"),
        ("/v1/chat/completions", "application/json", br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#.to_vec(), 400, "image_url"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"max_tokens":-5}}"#).into_bytes(), 400, "max_tokens"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"max_tokens":99999999999}}"#).into_bytes(), 400, "max_tokens"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"max_tokens":"ten"}}"#).into_bytes(), 400, "max_tokens"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"temperature":3}}"#).into_bytes(), 400, "temperature"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"top_p":1.5}}"#).into_bytes(), 400, "top_p"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"n":2}}"#).into_bytes(), 400, "'n'"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"logprobs":true}}"#).into_bytes(), 400, "logprobs"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"response_format":{{"type":"xml"}}}}"#).into_bytes(), 400, "response_format"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"response_format":{{"type":"json_schema","json_schema":{{"name":"x","schema":{{"type":"nope"}}}}}}}}"#).into_bytes(), 400, "does not compile"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"tool_choice":"required","tools":[]}}"#).into_bytes(), 400, "tool_choice"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"logit_bias":{{"abc":1}}}}"#).into_bytes(), 400, "logit_bias"),
        ("/v1/chat/completions", "application/json", b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(), 400, "invalid"),
        ("/v1/chat/completions", "text/plain", format!("{{{ok_msgs}}}").into_bytes(), 415, "Content-Type"),
        ("/v1/chat/completions", "application/json", format!(r#"{{{ok_msgs},"x":"{}"}}"#, "a".repeat(3000)).into_bytes(), 413, "limit"),
        ("/v1/completions", "application/json", br#"{"prompt":["a","b"]}"#.to_vec(), 400, "one per request"),
        ("/v1/completions", "application/json", br#"{"prompt":[999999999]}"#.to_vec(), 400, "vocabulary"),
        ("/v1/completions", "application/json", br#"{"prompt":"x","echo":true}"#.to_vec(), 400, "echo"),
        ("/v1/messages", "application/json", br#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "max_tokens"),
        ("/v1/messages", "application/json", br#"{"model":"c","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#.to_vec(), 400, "role"),
        ("/v1/messages", "application/json", br#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#.to_vec(), 400, "image"),
        ("/v1/messages", "application/json", br#"{"model":"c","max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "temperature"),
        ("/v1/messages", "application/json", br#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"any"}}"#.to_vec(), 400, "tool_choice"),
        ("/v1/nothing", "application/json", b"{}".to_vec(), 404, "no route"),
    ];
    let mut conn = s.conn();
    for (path, ct, body, status, needle) in &cases {
        if *status == 413 {
            // The server answers before reading an oversized body, then closes the connection.
            conn = s.conn();
        }
        let r = conn.request("POST", path, &[("content-type", ct)], body);
        if *status == 413 {
            conn = s.conn();
        }
        assert_eq!(
            r.status,
            *status,
            "{path} {:?} -> {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        let v = r.json();
        let msg = if path.starts_with("/v1/messages") {
            assert_eq!(v["type"], "error", "Anthropic error shape: {v}");
            v["error"]["message"].as_str().unwrap().to_owned()
        } else {
            assert!(v["error"]["type"].is_string(), "OpenAI error shape: {v}");
            v["error"]["message"].as_str().unwrap().to_owned()
        };
        assert!(
            msg.contains(needle),
            "{path} {:?}: message {msg:?} lacks {needle:?}",
            String::from_utf8_lossy(body)
        );
    }
    let r = s.post_json("/v1/chat/completions", &chat("hi", 4, false));
    assert_eq!(r.status, 200, "still serving after bad input");
    // Unknown fields are ignored.
    let r = s.post_json(
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"frobnicate":{"a":1}}"#,
    );
    assert_eq!(r.status, 200);
}

#[test]
fn prompts_longer_than_the_context_get_each_providers_error() {
    let s = Server::ready(&["-c", "64"]);
    let long = "word ".repeat(200);
    let r = s.post_json("/v1/chat/completions", &chat(&long, 4, true));
    assert_eq!(r.status, 400, "before any SSE byte: {}", r.text());
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    let r = s.post_json(
        "/v1/messages",
        &json!({"model": "c", "max_tokens": 4, "stream": true,
                "messages": [{"role": "user", "content": long}]})
        .to_string(),
    );
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("prompt is too long"));
}

#[test]
fn full_queue_is_refused_with_retry_after_and_503_or_529() {
    let s = Server::ready(&["-c", "1024", "--parallel", "1", "--queue", "1"]);
    // One running, one queued: the system is full.
    let mut running = s.conn();
    running.send(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        endless_completion(900, true).as_bytes(),
    );
    assert_eq!(running.read_head().0, 200);
    assert!(running.read_chunk().is_some());
    let mut queued = s.conn();
    queued.send(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        endless_completion(900, true).as_bytes(),
    );
    assert_eq!(queued.read_head().0, 200);
    wait_until("one queued", Duration::from_secs(5), || {
        s.metric("backstop_queue_depth") == 1.0
    });

    let r = s.post_json("/v1/chat/completions", &chat("hi", 4, false));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["error"]["type"], "server_error");
    let r = s.post_json(
        "/v1/messages",
        r#"{"model":"c","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 529);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    let r = s.get("/ready");
    assert_eq!(r.status, 503, "readiness says full");
    assert!(r.header("retry-after").is_some());
    assert_eq!(s.get("/health").status, 200, "liveness unaffected");

    drop(running);
    drop(queued);
    wait_until("slots freed", Duration::from_secs(10), || {
        s.get("/ready").status == 200
    });
    assert_eq!(
        s.post_json("/v1/chat/completions", &chat("hi", 2, false))
            .status,
        200
    );
    assert!(s.metric("backstop_rejected_total") >= 2.0);
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    let s = Server::ready(&["-c", "2048"]);
    let mut c = s.conn();
    c.send(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        endless_completion(2000, true).as_bytes(),
    );
    assert_eq!(c.read_head().0, 200);
    for _ in 0..3 {
        c.read_chunk().unwrap();
    }
    assert_eq!(s.metric("backstop_running_sequences"), 1.0);
    drop(c);
    wait_until("generation stopped", Duration::from_secs(5), || {
        s.metric("backstop_running_sequences") == 0.0
    });
    assert_eq!(s.metric("backstop_cancelled_total"), 1.0);
    let generated = s.metric("backstop_generated_tokens_total");
    assert!(
        generated < 200.0,
        "stopped within a few tokens, got {generated}"
    );
    // Non-streaming too: the handler's future is dropped with the connection.
    let mut c = s.conn();
    c.send(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        endless_completion(2000, false).as_bytes(),
    );
    wait_until("second generation running", Duration::from_secs(5), || {
        s.metric("backstop_running_sequences") == 1.0
    });
    drop(c);
    wait_until("second generation stopped", Duration::from_secs(5), || {
        s.metric("backstop_running_sequences") == 0.0
    });
    assert_eq!(s.metric("backstop_cancelled_total"), 2.0);
}

#[test]
fn readiness_is_503_while_loading_and_liveness_answers_at_once() {
    let s = Server::start_env(&["-c", "512"], &[("BACKSTOP_TEST_LOAD_DELAY_MS", "1500")]);
    assert_eq!(s.get("/livez").status, 200);
    // As llama-server answers it: gateways poll /health before sending work.
    let r = s.get("/health");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["message"], "Loading model");
    assert!(r.header("retry-after").is_some());
    let r = s.get("/ready");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "loading");
    assert!(r.header("retry-after").is_some());
    let r = s.post_json("/v1/chat/completions", &chat("hi", 2, false));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    s.wait_ready();
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/health").json()["status"], "ok");
    assert_eq!(
        s.post_json("/v1/chat/completions", &chat("hi", 2, false))
            .status,
        200
    );
}

#[test]
fn sigterm_during_a_stream_ends_it_cleanly_and_exits() {
    let mut s = Server::ready(&["-c", "2048", "--shutdown-grace", "1"]);
    let mut c = s.conn();
    c.send(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        json!({"model": "m", "max_tokens": 2000, "stream": true, "temperature": 0,
               "logit_bias": {"0": -100, "1": -100, "2": -100},
               "messages": [{"role": "user", "content": "Count to a thousand."}]})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(c.read_head().0, 200);
    let mut body = c.read_chunk().unwrap();
    let reader = std::thread::spawn(move || {
        while let Some(chunk) = c.read_chunk() {
            body.extend(chunk);
        }
        body
    });
    let (took, status) = s.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    let body = reader.join().unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]", "stream ended cleanly");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
}

#[test]
fn keep_alive_connections_stay_usable_after_streams_and_memory_stays_flat() {
    let s = Server::ready(&["-c", "512"]);
    let mut conn = s.conn();
    let mut rss = Vec::new();
    for i in 0..40 {
        let stream = i % 2 == 0;
        let r = conn.post_json(
            if i % 3 == 0 {
                "/v1/completions"
            } else {
                "/v1/chat/completions"
            },
            &if i % 3 == 0 {
                json!({"prompt": format!("Item {i}:"), "max_tokens": 4, "stream": stream})
                    .to_string()
            } else {
                chat(&format!("Say {i}."), 4, stream)
            },
        );
        assert_eq!(r.status, 200, "request {i} on the reused connection");
        assert!(r.header("connection") != Some("close"));
        if stream {
            assert_eq!(sse_data(&r.body).last().unwrap(), "[DONE]");
        }
        if i == 10 || i == 39 {
            rss.push(s.rss_kib());
        }
    }
    let growth = rss[1] as f64 / rss[0] as f64;
    assert!(
        growth < 1.05,
        "RSS grew from {} to {} KiB over 30 requests",
        rss[0],
        rss[1]
    );
}

#[test]
fn api_keys_are_required_when_set_and_probes_stay_open() {
    let s = Server::ready(&["-c", "256", "--api-key", "sekrit"]);
    let body = chat("hi", 2, false);
    let r = s.post_json("/v1/chat/completions", &body);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = s.post_json(
        "/v1/messages",
        r#"{"model":"c","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let mut c = s.conn();
    let r = c.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer wrong"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401);
    let r = c.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sekrit"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    let r = c.request(
        "POST",
        "/v1/messages",
        &[
            ("content-type", "application/json"),
            ("x-api-key", "sekrit"),
        ],
        br#"{"model":"c","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/ready").status, 200);

    // A rejected request whose body arrives after its head must not cost the connection:
    // the next request on it is answered.
    let mut c = s.conn();
    let wrong = [
        ("content-type", "application/json"),
        ("authorization", "Bearer wrong"),
    ];
    c.send_paused(
        "POST",
        "/v1/chat/completions",
        &wrong,
        body.as_bytes(),
        Duration::from_millis(300),
    );
    let (status, headers) = c.read_head();
    assert_eq!(status, 401);
    c.read_body(&headers);
    let r = c.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sekrit"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn any_model_name_is_served_unless_strict() {
    let s = Server::ready(&["-c", "256", "--alias", "claude-*", "--alias", "gpt-4o"]);
    let models = s.get("/v1/models").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["SmolLM2-135M-Instruct.Q4_1", "gpt-4o"]);
    let body = |m: &str| {
        json!({"model": m, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };
    assert_eq!(
        s.post_json("/v1/chat/completions", &body("o3-pro")).status,
        200
    );
    drop(s);

    let s = Server::ready(&[
        "-c",
        "256",
        "--strict-model-names",
        "--alias",
        "claude-*",
        "--served-model-name",
        "local-smol",
    ]);
    assert_eq!(
        s.post_json("/v1/chat/completions", &body("local-smol"))
            .status,
        200
    );
    assert_eq!(
        s.post_json("/v1/messages", &body("claude-haiku-4-5"))
            .status,
        200
    );
    let r = s.post_json("/v1/chat/completions", &body("gpt-5"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = s.post_json("/v1/messages", &body("gpt-5"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
}

#[test]
fn metrics_count_requests_tokens_and_latencies() {
    let s = Server::ready(&["-c", "256"]);
    assert_eq!(
        s.post_json("/v1/chat/completions", &chat("hi", 3, true))
            .status,
        200
    );
    assert_eq!(
        s.post_json("/v1/chat/completions", r#"{"messages":[]}"#)
            .status,
        400
    );
    let text = s.get("/metrics").text();
    for needle in [
        "backstop_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
        "backstop_requests_total{route=\"/v1/chat/completions\",status=\"400\"} 1",
        "backstop_time_to_first_token_seconds_count 1",
        "backstop_inter_token_latency_seconds_bucket",
        "backstop_ready 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    assert!(s.metric("backstop_generated_tokens_total") >= 1.0);
    assert!(s.metric("backstop_prompt_tokens_total") > 5.0);
}

#[test]
fn serve_flag_errors_are_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["serve", "-m", "no/such/file.gguf", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Binding a port that is taken is a clear error, not a panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["serve", "-m"])
        .arg(support::model())
        .args(["--port", &port])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot bind"), "{err}");
    assert!(!err.contains("panicked"));
    let _ = Conn::open;
}
