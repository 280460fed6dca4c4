//! The failover front against a scripted fake cloud on loopback: pass-through while healthy,
//! local answers when it fails before the first byte, the client's own 4xx untouched, the
//! circuit breaker's single probe, and a stream that breaks half-way finished locally.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{sse_data, sse_events, FakeCloud, Server};

fn front(cloud: &FakeCloud, extra: &[&str]) -> Server {
    let a = format!("anthropic={}", cloud.url());
    let o = format!("openai={}/v1", cloud.url());
    let mut args = vec![
        "-c",
        "1024",
        "--upstream",
        &a,
        "--upstream",
        &o,
        "--first-byte-timeout",
        "1",
        "--stream-first-byte-timeout",
        "1",
        // These tests count upstream requests and breaker changes themselves.
        "--probe-interval",
        "0",
    ];
    args.extend_from_slice(extra);
    Server::ready(&args)
}

fn messages(stream: bool) -> String {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": stream,
           "messages": [{"role": "user", "content": "Say hi."}]})
    .to_string()
}

fn post_with_key(s: &Server, path: &str, body: &str) -> support::Resp {
    s.conn().request(
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("x-api-key", "cloud-key"),
            ("anthropic-version", "2023-06-01"),
        ],
        body.as_bytes(),
    )
}

#[test]
fn healthy_cloud_is_passed_through_unchanged() {
    let cloud = FakeCloud::start();
    let s = front(&cloud, &[]);
    cloud.scenario("healthy");
    let body = messages(false);
    let r = post_with_key(&s, "/v1/messages?beta=true", &body);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-backstop-served-by"),
        Some("cloud; upstream=anthropic")
    );
    assert_eq!(
        r.json()["content"][0]["text"],
        "Hello from the cloud, all is well."
    );
    let seen = cloud.report();
    assert_eq!(seen["body"], body.as_str(), "body forwarded byte for byte");
    assert_eq!(seen["x_api_key"], "cloud-key", "the client's own key");
    assert_eq!(seen["anthropic_version"], "2023-06-01");
    assert_eq!(seen["query"], "beta=true");
    assert_eq!(seen["path"], "/v1/messages");

    let r = post_with_key(&s, "/v1/messages", &messages(true));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cloud"), Some("fake"), "upstream headers pass");
    let text: String = sse_events(&r.body)
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "Hello from the cloud, all is well.");

    // The OpenAI routes go to the OpenAI upstream (its base given with /v1).
    let r = s.conn().request(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-cloud"),
        ],
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(
        r.header("x-backstop-served-by"),
        Some("cloud; upstream=openai")
    );
    assert_eq!(cloud.report()["authorization"], "Bearer sk-cloud");
    assert_eq!(cloud.report()["path"], "/v1/chat/completions");
}

#[test]
fn failures_before_the_first_byte_are_answered_locally_and_client_errors_pass() {
    let cloud = FakeCloud::start();
    // A breaker that never opens here: every request must meet the scenario itself.
    let s = front(&cloud, &["--breaker-failures", "1000"]);
    for (scenario, reason) in [
        ("500", "500"),
        ("529", "529"),
        ("hang", "timed out"),
        ("slow:3", "timed out"),
        ("break:0", "broke"),
    ] {
        cloud.scenario(scenario);
        // The fake cloud breaks only streams.
        let modes: &[bool] = if scenario.starts_with("break") {
            &[true]
        } else {
            &[false, true]
        };
        for &stream in modes {
            let r = post_with_key(&s, "/v1/messages", &messages(stream));
            assert_eq!(r.status, 200, "{scenario} stream={stream}: {}", r.text());
            let by = r.header("x-backstop-served-by").unwrap();
            assert!(
                by.starts_with("local"),
                "{scenario} stream={stream}: served by {by}"
            );
            let why = r.header("x-backstop-fallback-reason").unwrap();
            assert!(why.contains(reason), "{scenario}: reason {why:?}");
            if stream {
                let names: Vec<String> = sse_events(&r.body).into_iter().map(|(n, _)| n).collect();
                assert_eq!(names.first().map(String::as_str), Some("message_start"));
                assert_eq!(names.last().map(String::as_str), Some("message_stop"));
            } else {
                assert_eq!(r.json()["model"], "claude-sonnet-4-5");
            }
        }
    }
    // 429 and 401 are the cloud's to answer (no --fallback-on-429 here).
    for (scenario, status) in [("429", 429), ("401", 401)] {
        cloud.scenario(scenario);
        let r = post_with_key(&s, "/v1/messages", &messages(false));
        assert_eq!(r.status, status);
        assert_eq!(
            r.header("x-backstop-served-by"),
            Some("cloud; upstream=anthropic")
        );
        assert_eq!(r.json()["type"], "error");
    }
}

#[test]
fn refused_connection_falls_back_and_429_does_with_the_flag() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let up = format!("openai=http://127.0.0.1:{port}");
    let s = Server::ready(&["-c", "1024", "--probe-interval", "0", "--upstream", &up]);
    let r = s.post_json(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("x-backstop-fallback-reason")
        .unwrap()
        .contains("unreachable"));
    drop(s);

    let cloud = FakeCloud::start();
    let s = front(&cloud, &["--fallback-on-429"]);
    cloud.scenario("429");
    let r = post_with_key(&s, "/v1/messages", &messages(false));
    assert_eq!(r.status, 200);
    assert!(r
        .header("x-backstop-fallback-reason")
        .unwrap()
        .contains("429"));
}

#[test]
fn the_breaker_opens_after_k_failures_and_probes_once_after_the_cooldown() {
    let cloud = FakeCloud::start();
    let s = front(
        &cloud,
        &["--breaker-failures", "3", "--breaker-cooldown", "8"],
    );
    cloud.scenario("500");
    for _ in 0..3 {
        post_with_key(&s, "/v1/messages", &messages(false));
    }
    assert_eq!(cloud.requests(), 3);
    let status = s.get("/backstop/status").json();
    let anth = &status["upstreams"][0];
    assert_eq!(anth["name"], "anthropic");
    assert_eq!(anth["breaker"], "open");
    assert!(anth["last_error"].as_str().unwrap().contains("500"));
    for _ in 0..3 {
        let r = post_with_key(&s, "/v1/messages", &messages(false));
        assert_eq!(r.status, 200);
        let why = r.header("x-backstop-fallback-reason").unwrap();
        assert!(why.contains("circuit open"), "{why}");
    }
    assert_eq!(cloud.requests(), 3, "no upstream attempt while open");
    // Wait out the cooldown.
    loop {
        let left = s.get("/backstop/status").json()["upstreams"][0]["retry_in_s"].as_f64();
        match left {
            Some(t) if t > 0.0 => std::thread::sleep(Duration::from_secs_f64(t + 0.05)),
            _ => break,
        }
    }
    cloud.scenario("healthy");
    let r = post_with_key(&s, "/v1/messages", &messages(false));
    assert_eq!(
        r.header("x-backstop-served-by"),
        Some("cloud; upstream=anthropic")
    );
    assert_eq!(cloud.requests(), 1, "exactly one probe");
    assert_eq!(
        s.get("/backstop/status").json()["upstreams"][0]["breaker"],
        "closed"
    );
    post_with_key(&s, "/v1/messages", &messages(false));
    assert_eq!(
        cloud.requests(),
        2,
        "closed again: requests reach the cloud"
    );
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("backstop_upstream_breaker_state{upstream=\"anthropic\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("cloud-key"), "no secrets in metrics");
}

#[test]
fn a_stream_that_breaks_half_way_is_finished_locally_in_the_same_stream() {
    let cloud = FakeCloud::start();
    let s = front(&cloud, &[]);
    cloud.scenario("break:6");
    let r = post_with_key(&s, "/v1/messages", &messages(true));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-backstop-served-by"),
        Some("cloud; upstream=anthropic")
    );
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
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_start")
            .count(),
        1
    );
    let mut text = String::new();
    for (name, data) in &events {
        let d: Value = serde_json::from_str(data).expect("every event is whole JSON");
        if name == "content_block_delta" {
            assert_eq!(d["index"], 0);
            text.push_str(d["delta"]["text"].as_str().unwrap());
        }
        if name == "message_delta" {
            assert_eq!(d["backstop"]["continued_locally"], true);
            assert_eq!(
                d["backstop"]["continued_after_chars"],
                "Hello from the".len()
            );
        }
    }
    assert!(text.starts_with("Hello from the"), "{text:?}");
    assert!(
        text.len() > "Hello from the".len(),
        "the local model went on: {text:?}"
    );

    // OpenAI: the cloud's chunks, then local ones, one [DONE].
    let r = s.conn().request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        br#"{"model":"gpt-4o","max_tokens":6,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    let data = sse_data(&r.body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert_eq!(last["backstop"]["continued_locally"], true);
    assert!(
        chunks.iter().all(|c| c["id"] == "chatcmpl-cloud"),
        "same id throughout"
    );
}

/// A cloud stream that breaks inside a `tool_use` block is finished by the local model under
/// that tool's schema: the block's input JSON closes valid, in the same block, and the
/// message ends as a tool call.
#[test]
fn a_stream_that_breaks_inside_a_tool_call_is_finished_under_its_schema() {
    let cloud = FakeCloud::start();
    let s = front(&cloud, &[]);
    let body = json!({
        "model": "claude-x", "max_tokens": 64, "stream": true, "temperature": 0,
        "messages": [{"role": "user", "content": "What does notes.txt say?"}],
        "tools": [{"name": "read_file", "description": "Read a file",
                   "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                                    "required": ["path"], "additionalProperties": false}}],
    })
    .to_string();
    // 0 message_start, 1 block 0 start, 2 ping, 3-4 text, 5 stop, 6 tool_use start,
    // 7.. input pieces: break after none, one, two and three of the four.
    for cut in [7, 8, 9, 10] {
        cloud.scenario(&format!("break:{cut}"));
        let r = post_with_key(&s, "/v1/messages", &body);
        assert_eq!(r.status, 200);
        let events = sse_events(&r.body);
        let mut input = String::new();
        let mut stops = Vec::new();
        let mut delta = Value::Null;
        for (name, data) in &events {
            let d: Value = serde_json::from_str(data).expect("every event is whole JSON");
            match name.as_str() {
                "content_block_delta" if d["index"] == 1 => {
                    assert_eq!(d["delta"]["type"], "input_json_delta", "{d}");
                    input.push_str(d["delta"]["partial_json"].as_str().unwrap());
                }
                "content_block_start" => assert_ne!(d["index"], 2, "no new block: {d}"),
                "content_block_stop" => stops.push(d["index"].as_u64().unwrap()),
                "message_delta" => delta = d,
                "error" => panic!("cut {cut}: {d}"),
                _ => {}
            }
        }
        assert_eq!(stops, [0, 1], "cut {cut}: each block closed once");
        let args: Value = serde_json::from_str(&input)
            .unwrap_or_else(|e| panic!("cut {cut}: {input:?} is not JSON: {e}"));
        let sent: String = ["{\"pa", "th\": \"no", "tes.t"][..cut - 7].concat();
        assert!(input.starts_with(&sent), "cut {cut}: {input:?}");
        assert!(args["path"].is_string(), "cut {cut}: {args}");
        assert_eq!(args.as_object().unwrap().len(), 1, "cut {cut}: {args}");
        assert_eq!(
            delta["delta"]["stop_reason"], "tool_use",
            "cut {cut}: {delta}"
        );
        assert_eq!(delta["backstop"]["continued_locally"], true);
        assert_eq!(names_end(&events), ["message_delta", "message_stop"]);
    }
}

fn names_end(events: &[(String, String)]) -> Vec<&str> {
    events[events.len() - 2..]
        .iter()
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn without_an_upstream_nothing_is_forwarded() {
    let cloud = FakeCloud::start();
    let s = Server::ready(&["-c", "512"]);
    let r = post_with_key(&s, "/v1/messages", &messages(false));
    assert_eq!(r.status, 200);
    assert!(r.header("x-backstop-fallback-reason").is_none());
    assert_eq!(cloud.requests(), 0);
    assert_eq!(s.get("/backstop/status").json()["upstreams"], json!([]));
}

/// Log lines that arrive within `wait`, until `enough` says stop.
fn log_lines(s: &Server, wait: Duration, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut lines = Vec::new();
    while !enough(&lines) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match s.log.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    lines
}

#[test]
fn request_logs_say_who_answered_and_never_hold_keys_or_prompts() {
    const KEY: &str = "sk-ant-api03-LOGCANARY-do-not-log";
    const PROMPT: &str = "PROMPTCANARY the purple walrus";
    let requests = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("backstop::request"))
            .count()
    };

    // The failover front, JSON lines: the cloud fails, both formats are answered locally.
    let cloud = FakeCloud::start();
    let s = front(&cloud, &["--log-format", "json"]);
    cloud.scenario("500");
    let post = |path: &str, body: String, stream: bool| {
        let mut b: Value = serde_json::from_str(&body).unwrap();
        b["stream"] = json!(stream);
        s.conn().request(
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("x-api-key", KEY),
                ("authorization", &format!("Bearer {KEY}")),
            ],
            b.to_string().as_bytes(),
        )
    };
    let msg = json!({"model": "claude-sonnet-4-5", "max_tokens": 4,
                     "messages": [{"role": "user", "content": PROMPT}]})
    .to_string();
    let chat = json!({"model": "gpt-4o", "max_tokens": 4,
                      "messages": [{"role": "user", "content": PROMPT}]})
    .to_string();
    assert_eq!(post("/v1/messages", msg.clone(), false).status, 200);
    assert_eq!(post("/v1/chat/completions", chat.clone(), true).status, 200);
    let lines = log_lines(&s, Duration::from_secs(10), |l| requests(l) >= 2);
    let all = lines.join("\n");
    assert!(!all.contains(KEY) && !all.contains("LOGCANARY"), "{all}");
    assert!(
        !all.contains("PROMPTCANARY") && !all.contains("walrus"),
        "{all}"
    );
    let reqs: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect();
    assert_eq!(reqs.len(), 2, "{all}");
    let anth = reqs.iter().find(|v| v["route"] == "/v1/messages").unwrap();
    assert_eq!(anth["status"], 200);
    assert_eq!(anth["model"], "\"claude-sonnet-4-5\"");
    assert!(anth["served_by"].as_str().unwrap().starts_with("local"));
    assert!(anth["fallback_reason"].as_str().unwrap().contains("500"));
    assert!(anth["completion_tokens"].as_u64().unwrap() >= 1);
    let oai = reqs
        .iter()
        .find(|v| v["route"] == "/v1/chat/completions")
        .unwrap();
    assert_eq!(oai["stream"], true);
    assert!(oai["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(oai["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(oai["fallback_reason"].as_str().unwrap().contains("500"));
    // The failure itself is logged, without the key.
    assert!(lines.iter().any(|l| l.contains("upstream failed")), "{all}");
    drop(s);

    // A local-only server with a key, text lines.
    let s = Server::ready(&["-c", "1024", "--api-key", KEY]);
    assert_eq!(post_local(&s, KEY, "/v1/messages", &msg).status, 200);
    assert_eq!(
        post_local(&s, KEY, "/v1/chat/completions", &chat).status,
        200
    );
    assert_eq!(
        post_local(&s, "wrong-key", "/v1/chat/completions", &chat).status,
        401
    );
    let lines = log_lines(&s, Duration::from_secs(10), |l| requests(l) >= 3);
    let all = lines.join("\n");
    assert!(!all.contains(KEY) && !all.contains("wrong-key"), "{all}");
    assert!(!all.contains("PROMPTCANARY"), "{all}");
    assert_eq!(requests(&lines), 3, "{all}");
    assert!(
        all.contains("route=\"/v1/messages\"") || all.contains("route=/v1/messages"),
        "{all}"
    );
    assert!(all.contains("status=401"), "{all}");
    assert!(all.contains("served_by=\"local; weights="), "{all}");
}

fn post_local(s: &Server, key: &str, path: &str, body: &str) -> support::Resp {
    s.conn().request(
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {key}")),
        ],
        body.as_bytes(),
    )
}
