//! The batch loop seen from clients: concurrent requests share forward passes yet answer
//! exactly as alone, a long prompt is read in chunks between the running streams' tokens,
//! and a prompt sharing a prefix with an earlier one starts from its cached keys and values.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Server;

fn completion(prompt: &str, max_tokens: u32) -> String {
    json!({"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).to_string()
}

/// Prompts of very different lengths (a few tokens to a few hundred).
fn prompts() -> Vec<String> {
    let story = "The lighthouse keeper climbed the stairs each evening, counting the steps. ";
    (0..8)
        .map(|i| match i % 4 {
            0 => format!("Question {i}: what is {i} plus {i}? Answer:"),
            1 => story.repeat(i * 3),
            2 => format!("List of fruits number {i}: apple, banana,"),
            _ => format!("{}Then, on night {i},", story.repeat(i * 2)),
        })
        .collect()
}

/// A streamed greedy completion that cannot end early (SmolLM2's end-of-generation tokens
/// banned), its head read: the caller reads its chunks or drops it.
fn endless_stream(port: u16, max_tokens: u32) -> support::Conn {
    let mut c = support::Conn::open(port);
    let body = json!({"model": "m", "prompt": "Once upon a time", "max_tokens": max_tokens,
                      "temperature": 0, "stream": true,
                      "logit_bias": {"0": -100, "1": -100, "2": -100}})
    .to_string();
    c.send(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(c.read_head().0, 200);
    c
}

fn text_and_count(r: &Value) -> (String, u64) {
    (
        r["choices"][0]["text"].as_str().unwrap().to_owned(),
        r["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn eight_concurrent_greedy_requests_answer_token_for_token_as_alone() {
    let s = Server::ready(&["-c", "1024", "--parallel", "8", "--queue", "4"]);
    let alone: Vec<(String, u64)> = prompts()
        .iter()
        .map(|p| {
            let r = s.post_json("/v1/completions", &completion(p, 40));
            assert_eq!(r.status, 200, "{}", r.text());
            text_and_count(&r.json())
        })
        .collect();
    let steps0 = s.metric("backstop_batch_steps_total");
    let seqs0 = s.metric("backstop_batch_sequences_total");

    // A client that leaves mid-stream, while the others arrive staggered.
    let port = s.port;
    let leaver = std::thread::spawn(move || {
        let mut c = endless_stream(port, 500);
        for _ in 0..15 {
            c.read_chunk().unwrap();
        }
    });
    let clients: Vec<_> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(40 * i as u64));
                let mut c = support::Conn::open(port);
                let r = c.post_json("/v1/completions", &completion(&p, 40));
                assert_eq!(r.status, 200, "{}", r.text());
                text_and_count(&r.json())
            })
        })
        .collect();
    leaver.join().unwrap();
    for (i, (c, want)) in clients.into_iter().zip(&alone).enumerate() {
        let got = c.join().unwrap();
        assert_eq!(&got, want, "request {i} answered differently beside others");
    }
    let steps = s.metric("backstop_batch_steps_total") - steps0;
    let seqs = s.metric("backstop_batch_sequences_total") - seqs0;
    assert!(
        seqs / steps > 2.0,
        "the requests should have shared passes: {seqs} sequences in {steps} passes"
    );
    assert!(s.metric("backstop_cancelled_total") >= 1.0);
    assert_eq!(s.metric("backstop_running_sequences"), 0.0);
}

#[test]
fn a_long_prompt_is_read_while_running_streams_keep_receiving_tokens() {
    let s = Server::ready(&["-c", "2048", "--parallel", "2"]);
    let mut c = endless_stream(s.port, 1500);
    for _ in 0..5 {
        c.read_chunk().unwrap();
    }
    // About 1600 prompt tokens, answered with one token: its time is the prompt's reading.
    let long = "The quick brown fox jumps over the lazy dog near the riverbank. ".repeat(120);
    let port = s.port;
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || {
        let r = support::Conn::open(port).post_json("/v1/completions", &completion(&long, 1));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 1000);
        Instant::now()
    });
    let mut arrivals = Vec::new();
    while !reader.is_finished() {
        c.read_chunk().unwrap();
        arrivals.push(Instant::now());
    }
    let done = reader.join().unwrap();
    let during: Vec<Instant> = arrivals.into_iter().filter(|&t| t < done).collect();
    let prefill = done - t0;
    let longest_gap = std::iter::once(t0)
        .chain(during.iter().copied())
        .zip(during.iter())
        .map(|(a, &b)| b - a)
        .max()
        .unwrap_or(prefill);
    assert!(
        during.len() >= 10,
        "only {} tokens streamed during a {prefill:?} prompt read",
        during.len()
    );
    assert!(
        longest_gap * 4 < prefill,
        "the stream stalled {longest_gap:?} during a {prefill:?} prompt read"
    );
}

fn chat(system: &str, question: &str) -> String {
    json!({"model": "m", "max_tokens": 24, "temperature": 0,
           "messages": [{"role": "system", "content": system},
                        {"role": "user", "content": question}]})
    .to_string()
}

#[test]
fn a_shared_prefix_is_reused_reported_and_answers_as_cold() {
    let system = format!(
        "You are a support agent for a lighthouse company. {}",
        "Always answer briefly, politely and with facts about lighthouses. ".repeat(25)
    );
    let questions = [
        "How tall is a lighthouse?",
        "Who keeps the lamp lit?",
        "Why red?",
    ];
    let cold: Vec<String> = questions
        .iter()
        .map(|q| {
            // A fresh server per question: nothing cached.
            let s = Server::ready(&["-c", "1024"]);
            let r = s
                .post_json("/v1/chat/completions", &chat(&system, q))
                .json();
            assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
            r["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    let s = Server::ready(&["-c", "1024", "--parallel", "2"]);
    // A running stream holds the prefix while the second request arrives: it is copied.
    let mut c = s.conn();
    let mut body: Value = serde_json::from_str(&chat(&system, questions[0])).unwrap();
    body["stream"] = json!(true);
    body["max_tokens"] = json!(200);
    c.send(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(c.read_head().0, 200);
    c.read_chunk().unwrap();
    // The stream's first event can leave before its prompt is read: wait until a pass has
    // carried the prompt's rows, so its keys and values are in the cache to be copied.
    let t0 = Instant::now();
    while s.metric("backstop_batch_rows_total") < 300.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the prompt was never read"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = s
        .post_json("/v1/chat/completions", &chat(&system, questions[1]))
        .json();
    let cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached > 300 && cached < prompt,
        "cached {cached} of {prompt} prompt tokens"
    );
    assert_eq!(r["choices"][0]["message"]["content"], cold[1].as_str());
    drop(c);

    // After both ended: the third takes a finished sequence's cache, and the Anthropic
    // format reports it too.
    let r = s
        .post_json(
            "/v1/messages",
            &json!({"model": "m", "max_tokens": 24, "temperature": 0, "system": system,
                    "messages": [{"role": "user", "content": questions[2]}]})
            .to_string(),
        )
        .json();
    assert!(r["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 300);
    assert_eq!(r["content"][0]["text"], cold[2].as_str());
    assert!(s.metric("backstop_prefix_cache_hits_total") >= 2.0);
    assert!(s.metric("backstop_prefix_cached_tokens_total") > 600.0);
}

#[test]
fn the_kv_budget_admits_what_fits_queues_the_rest_in_order_and_gives_up_cached_prefixes() {
    // Four sequences of up to 2048 tokens, but 1000 tokens of KV cache between them.
    let s = Server::ready(&[
        "-c",
        "2048",
        "--parallel",
        "4",
        "--kv-budget",
        "1000",
        "--queue",
        "8",
    ]);
    assert_eq!(s.metric("backstop_kv_budget_tokens"), 1000.0);
    assert_eq!(s.get("/backstop/status").json()["kv_budget_tokens"], 1000);

    // One request cannot hold more than the budget: its context is the budget.
    let long = "The quick brown fox jumps over the lazy dog near the riverbank. ".repeat(90);
    let r = s.post_json("/v1/completions", &completion(&long, 8));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("1000"), "{}", r.text());

    // A running stream reserves about 805 tokens (prompt + max_tokens).
    let mut a = endless_stream(s.port, 800);
    a.read_chunk().unwrap();
    // 305 more do not fit beside it: that request waits, with slots free; a small one
    // arriving after it (25 tokens would fit) waits behind it, first come first served.
    let port = s.port;
    let waiting = |max_tokens: u32, delay_ms: u64| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            let p = "A short story about a lighthouse:";
            let body = completion(p, max_tokens);
            let r = support::Conn::open(port).post_json("/v1/completions", &body);
            assert_eq!(r.status, 200, "{}", r.text());
            Instant::now()
        })
    };
    let big = waiting(300, 0);
    let small = waiting(20, 300);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        a.read_chunk().unwrap();
        assert_eq!(s.metric("backstop_running_sequences"), 1.0);
        assert!(s.metric("backstop_kv_used_tokens") <= 1000.0);
    }
    assert_eq!(s.metric("backstop_queue_depth"), 2.0);
    assert!(s.metric("backstop_kv_waits_total") >= 1.0);
    assert!(!big.is_finished() && !small.is_finished());

    // The stream's client leaves: both run now.
    let left = Instant::now();
    drop(a);
    assert!(big.join().unwrap() > left);
    assert!(small.join().unwrap() > left);
    assert_eq!(s.metric("backstop_running_sequences"), 0.0);
    assert!(s.metric("backstop_kv_used_tokens") <= 1000.0);

    // Finished sequences' caches stay as prefixes until a request needs their room.
    let evicted = s.metric("backstop_kv_evictions_total");
    let mut d = endless_stream(s.port, 900);
    d.read_chunk().unwrap();
    assert!(s.metric("backstop_kv_evictions_total") > evicted);
    assert!(s.metric("backstop_kv_used_tokens") <= 1000.0);
}
