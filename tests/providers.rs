//! Beyond one cloud: chains of upstreams across both wire formats, each with its own key,
//! translation between the formats, active health checks and councils, against the scripted
//! fake clouds (crates/server/examples/fake_cloud.rs) and the real binary.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{sse_data, sse_events, FakeCloud, Server};

const CLIENT_KEY: &str = "client-key-never-forwarded";

/// `backstop serve --config FILE` with `env`; the file is written to a fresh folder.
fn with_config(toml: &str, env: &[(&str, &str)]) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "backstop-providers-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("backstop.toml");
    std::fs::write(&path, toml).unwrap();
    let p = path.to_str().unwrap().to_owned();
    let s = Server::start_env(&["-c", "1024", "--config", &p], env);
    s.wait_ready();
    // Read at start-up: the folder is not needed any more.
    let _ = std::fs::remove_dir_all(&dir);
    s
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn upstream(name: &str, format: &str, cloud: &FakeCloud, key_env: &str) -> String {
    let url = if format == "openai" {
        format!("{}/v1", cloud.url())
    } else {
        cloud.url()
    };
    format!(
        "[[upstream]]\nname = \"{name}\"\nformat = \"{format}\"\nurl = \"{url}\"\n\
         key_env = \"{key_env}\"\nprobe_interval_s = 0\n\n"
    )
}

fn post(s: &Server, path: &str, body: &Value, extra: &[(&str, &str)]) -> support::Resp {
    let mut h = vec![
        ("content-type", "application/json"),
        ("x-api-key", CLIENT_KEY),
        ("anthropic-version", "2023-06-01"),
    ];
    h.extend_from_slice(extra);
    s.conn()
        .request("POST", path, &h, body.to_string().as_bytes())
}

fn messages(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": stream,
           "system": "Be brief.",
           "messages": [{"role": "user", "content": "Say hi."}]})
}

fn read_tool() -> Value {
    json!({"name": "read_file", "description": "Read a file",
           "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                            "required": ["path"]}})
}

#[test]
fn a_chain_answers_from_the_first_healthy_upstream_and_each_key_goes_only_to_its_own() {
    let a = FakeCloud::start_with(&["--key", "key-a"]);
    let b = FakeCloud::start_with(&["--key", "key-b"]);
    let c = FakeCloud::start_with(&["--key", "key-c"]);
    let toml = format!(
        "{}{}{}[route.anthropic]\nchain = [\"a\", \"b\", \"c\"]\n",
        upstream("a", "anthropic", &a, "KEY_A"),
        upstream("b", "openai", &b, "KEY_B"),
        upstream("c", "anthropic", &c, "KEY_C"),
    );
    let s = with_config(
        &toml,
        &[("KEY_A", "key-a"), ("KEY_B", "key-b"), ("KEY_C", "key-c")],
    );
    a.scenario("500");
    b.scenario("529");
    c.scenario("healthy");
    let r = post(&s, "/v1/messages", &messages(false), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backstop-served-by"), Some("cloud; upstream=c"));
    assert_eq!(
        r.json()["content"][0]["text"],
        "Hello from the cloud, all is well."
    );
    let (ra, rb, rc) = (a.report(), b.report(), c.report());
    assert_eq!(
        (
            ra["requests"].as_u64(),
            rb["requests"].as_u64(),
            rc["requests"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(ra["x_api_key"], "key-a");
    assert_eq!(rb["authorization"], "Bearer key-b");
    assert_eq!(
        rb["x_api_key"],
        Value::Null,
        "an OpenAI upstream gets no x-api-key"
    );
    assert_eq!(rc["x_api_key"], "key-c");
    for rep in [&ra, &rb, &rc] {
        assert!(
            !rep.to_string().contains(CLIENT_KEY),
            "client key leaked: {rep}"
        );
    }
    assert_eq!(rb["path"], "/v1/chat/completions", "b is translated");

    // All failing: the local model answers, saying why each upstream did not.
    c.scenario("500");
    let r = post(&s, "/v1/messages", &messages(false), &[]);
    assert_eq!(r.status, 200);
    assert!(r
        .header("x-backstop-served-by")
        .unwrap()
        .starts_with("local"));
    let why = r.header("x-backstop-fallback-reason").unwrap();
    for part in [
        "a: upstream returned 500",
        "b: upstream returned 529",
        "c: upstream returned 500",
    ] {
        assert!(why.contains(part), "{why}");
    }
    assert_eq!(r.json()["type"], "message");
    let status = s.get("/backstop/status").json();
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(!status.to_string().contains("key-"), "a key in the status");
}

#[test]
fn an_anthropic_client_is_served_by_an_openai_upstream_streamed_and_not_with_tool_calls() {
    let cloud = FakeCloud::start();
    let up = format!("openai={}/v1", cloud.url());
    let s = Server::ready(&["-c", "1024", "--probe-interval", "0", "--upstream", &up]);
    cloud.scenario("healthy");

    let r = post(&s, "/v1/messages", &messages(false), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-backstop-served-by"),
        Some("cloud; upstream=openai")
    );
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        "Hello from the cloud, all is well."
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 8);
    let seen = cloud.report();
    assert_eq!(seen["path"], "/v1/chat/completions");
    // A Claude client's key is for Anthropic: it never goes to an OpenAI-format provider.
    assert_eq!(seen["authorization"], Value::Null);
    assert_eq!(seen["x_api_key"], Value::Null);
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["max_tokens"], 16);

    // Streamed, with a tool: the call arrives as a tool_use block in Anthropic events.
    let mut body = messages(true);
    body["tools"] = json!([read_tool()]);
    let r = post(&s, "/v1/messages", &body, &[]);
    assert_eq!(r.status, 200);
    let events = sse_events(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let mut text = String::new();
    let mut args = String::new();
    let mut tool_name = None;
    let mut stop = None;
    for (n, d) in &events {
        let v: Value = serde_json::from_str(d).unwrap();
        match n.as_str() {
            "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                tool_name = v["content_block"]["name"].as_str().map(str::to_owned);
            }
            "content_block_delta" => {
                text.push_str(v["delta"]["text"].as_str().unwrap_or(""));
                args.push_str(v["delta"]["partial_json"].as_str().unwrap_or(""));
            }
            "message_delta" => stop = v["delta"]["stop_reason"].as_str().map(str::to_owned),
            _ => {}
        }
    }
    assert_eq!(text, "Let me look.");
    assert_eq!(tool_name.as_deref(), Some("read_file"));
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"path": "notes.txt"})
    );
    assert_eq!(stop.as_deref(), Some("tool_use"));
    let sent: Value = serde_json::from_str(cloud.report()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "read_file");
    assert_eq!(sent["stream"], true);

    // The OpenAI stream breaks after its finish_reason (role chunk, 8 words, the finish
    // chunk; its usage chunk and [DONE] are lost): the answer was whole, so the client gets
    // the closing events and no local continuation.
    cloud.scenario("break:10");
    let r = post(&s, "/v1/messages", &messages(true), &[]);
    assert_eq!(r.status, 200);
    let events = sse_events(&r.body);
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["delta"]["text"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(text, "Hello from the cloud, all is well.");
    assert_eq!(events.last().unwrap().0, "message_stop");
    assert!(!String::from_utf8_lossy(&r.body).contains("continued_locally"));
}

#[test]
fn a_refused_own_key_is_an_outage_not_the_clients_error() {
    let cloud = FakeCloud::start_with(&["--key", "the-right-key"]);
    let toml = format!(
        "{}[failover]\nbreaker_failures = 100\n",
        upstream("a", "anthropic", &cloud, "KEY_A")
    );
    let s = with_config(&toml, &[("KEY_A", "a-revoked-key")]);
    cloud.scenario("healthy");
    let r = post(&s, "/v1/messages", &messages(false), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("x-backstop-served-by")
        .unwrap()
        .starts_with("local"));
    assert_eq!(
        r.header("x-backstop-fallback-reason"),
        Some("upstream returned 401")
    );
    assert_eq!(cloud.report()["x_api_key"], "a-revoked-key");
    assert!(
        !r.text().contains("invalid key"),
        "the cloud's 401 body was relayed"
    );
}

#[test]
fn an_openai_client_is_served_by_an_anthropic_upstream_and_untranslatable_requests_skip_it() {
    let cloud = FakeCloud::start();
    let up = format!("anthropic={}", cloud.url());
    let s = Server::ready(&["-c", "1024", "--probe-interval", "0", "--upstream", &up]);
    cloud.scenario("healthy");
    let chat = |stream: bool| {
        json!({"model": "gpt-4o", "stream": stream,
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Read notes.txt"}],
               "tools": [{"type": "function", "function": {"name": "read_file",
                   "parameters": {"type": "object",
                                  "properties": {"path": {"type": "string"}}}}}]})
    };
    let r = s.post_json("/v1/chat/completions", &chat(false).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-backstop-served-by"),
        Some("cloud; upstream=anthropic")
    );
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "read_file");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"path": "notes.txt"})
    );
    let seen = cloud.report();
    assert_eq!(seen["path"], "/v1/messages");
    assert_eq!(seen["anthropic_version"], "2023-06-01");
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["tools"][0]["name"], "read_file");
    assert!(
        sent["max_tokens"].as_u64().unwrap() > 0,
        "Anthropic needs max_tokens"
    );

    let r = s.post_json("/v1/chat/completions", &chat(true).to_string());
    assert_eq!(r.status, 200);
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let mut args = String::new();
    let mut finish = None;
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(a) = v.pointer("/choices/0/delta/tool_calls/0/function/arguments") {
            args.push_str(a.as_str().unwrap_or(""));
        }
        if let Some(f) = v
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"path": "notes.txt"})
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    // n = 2 has no Anthropic equivalent: the upstream is skipped, never sent a changed request.
    let before = cloud.requests();
    let mut body = chat(false);
    body["n"] = json!(2);
    body["max_tokens"] = json!(4);
    let r = s.post_json("/v1/chat/completions", &body.to_string());
    assert_eq!(
        cloud.requests(),
        before,
        "an untranslatable request went out"
    );
    let why = r
        .header("x-backstop-fallback-reason")
        .unwrap_or("")
        .to_owned();
    assert!(why.starts_with("skipped:") && why.contains("`n`"), "{why}");
}

#[test]
fn health_checks_open_the_breaker_while_idle_and_close_it_on_recovery() {
    let cloud = FakeCloud::start();
    let up = format!("anthropic={}", cloud.url());
    let s = Server::ready(&["-c", "512", "--probe-interval", "1", "--upstream", &up]);
    cloud.scenario("healthy");
    let state = || {
        s.get("/backstop/status").json()["upstreams"][0]["breaker"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let wait_for = |want: &str, within: Duration| -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if state() == want {
                return t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "breaker not {want} after {within:?}: {}",
            s.get("/backstop/status").text()
        );
    };
    assert_eq!(state(), "closed");
    cloud.scenario("500");
    // Within two probe intervals, plus room for the check itself on a loaded machine.
    let took = wait_for("open", Duration::from_millis(2600));
    cloud.scenario("healthy");
    wait_for("closed", Duration::from_millis(2600));
    assert_eq!(cloud.requests(), 0, "a user request was spent");
    assert!(cloud.probes() >= 1);
    let m = s.get("/metrics").text();
    assert!(
        m.contains(
            "backstop_upstream_health_checks_total{upstream=\"anthropic\",result=\"failed\"}"
        ),
        "{m}"
    );
    eprintln!("opened {took:?} after the outage began");
}

/// Two clouds on a council with the local model; `policy` and timings per test.
fn council_server(a: &FakeCloud, b: &FakeCloud, council: &str) -> Server {
    let toml = format!(
        "{}{}[route.anthropic]\nchain = [\"a\", \"b\"]\n[route.anthropic.council]\n{council}\n",
        upstream("a", "anthropic", a, "KEY_A"),
        upstream("b", "anthropic", b, "KEY_B"),
    );
    with_config(&toml, &[("KEY_A", "ka"), ("KEY_B", "kb")])
}

fn tool_request(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 24, "stream": stream,
           "tools": [read_tool()], "tool_choice": {"type": "tool", "name": "read_file"},
           "messages": [{"role": "user", "content": "Read notes.txt"}]})
}

fn council_report(r: &support::Resp) -> Value {
    let h: Value = serde_json::from_str(r.header("x-backstop-council").expect("no report"))
        .expect("report is JSON");
    h
}

fn comparison<'a>(report: &'a Value, member: &str) -> &'a Value {
    report["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["member"] == member)
        .unwrap_or_else(|| panic!("no comparison with {member}: {report}"))
}

#[test]
fn a_cross_check_reports_agreeing_and_disagreeing_tool_calls() {
    let a = FakeCloud::start();
    let b = FakeCloud::start();
    let s = council_server(
        &a,
        &b,
        "policy = \"cross-check\"\nprimary = \"a\"\ndeadline_s = 30",
    );
    a.scenario("healthy");
    b.scenario("healthy");
    let r = post(&s, "/v1/messages", &tool_request(false), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backstop-served-by"), Some("cloud; upstream=a"));
    let rep = council_report(&r);
    assert_eq!(rep["policy"], "cross-check");
    assert_eq!(rep["chosen"], "a");
    let c = comparison(&rep, "b");
    assert_eq!(
        (c["kind"].as_str(), c["agree"].as_bool()),
        (Some("tool_calls"), Some(true))
    );
    // Every member answered (the local model too), and the body carries the same report.
    assert_eq!(rep["members"].as_array().unwrap().len(), 3);
    assert!(rep["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["outcome"] == "answered"));
    assert_eq!(r.json()["backstop"]["council"], rep);
    assert_eq!(
        r.json()["content"][1]["input"],
        json!({"path": "notes.txt"})
    );

    let before = s.metric("backstop_council_disagreements_total");
    b.scenario("wrong");
    let r = post(&s, "/v1/messages", &tool_request(true), &[]);
    assert_eq!(r.status, 200);
    let rep = council_report(&r);
    let c = comparison(&rep, "b");
    assert_eq!(c["names_agree"], true, "{rep}");
    assert_eq!(c["arguments_agree"], false, "{rep}");
    assert_eq!(rep["agree"], false);
    assert_eq!(
        s.metric("backstop_council_disagreements_total"),
        before + 1.0
    );
    // Streamed, the chosen answer (a's) arrives as events, the report in message_delta.
    let events = sse_events(&r.body);
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    let delta: Value = serde_json::from_str(&delta.1).unwrap();
    assert_eq!(delta["backstop"]["council"]["chosen"], "a");
    assert_eq!(events.last().unwrap().0, "message_stop");
}

#[test]
fn first_and_primary_return_what_they_promise_and_no_council_outlives_its_deadline() {
    let a = FakeCloud::start();
    let b = FakeCloud::start();
    // first: the slow primary and the local model lose to b, which answers at once.
    let s = council_server(&a, &b, "policy = \"first\"\ndeadline_s = 20");
    a.scenario("slow:6");
    b.scenario("wrong");
    let t0 = Instant::now();
    let r = post(&s, "/v1/messages", &messages(false), &[]);
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let rep = council_report(&r);
    assert_eq!(rep["chosen"], "b", "{rep}");
    assert!(rep["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "a" && m["outcome"] == "cancelled"));
    drop(s);

    // primary: a (the primary) is slower than its deadline, so the first other answer wins;
    // given time, a's own answer is returned even though b answered first.
    let s = council_server(
        &a,
        &b,
        "policy = \"primary\"\nprimary = \"a\"\nprimary_deadline_s = 1\ndeadline_s = 20",
    );
    a.scenario("slow:4");
    let r = post(&s, "/v1/messages", &messages(false), &[]);
    let rep = council_report(&r);
    assert_ne!(rep["chosen"], "a", "{rep}");
    drop(s);
    let s = council_server(
        &a,
        &b,
        "policy = \"primary\"\nprimary = \"a\"\nprimary_deadline_s = 10\ndeadline_s = 20",
    );
    a.scenario("slow:1");
    let r = post(&s, "/v1/messages", &messages(false), &[]);
    let rep = council_report(&r);
    assert_eq!(rep["chosen"], "a", "{rep}");
    assert_eq!(
        r.json()["content"][0]["text"],
        "Hello from the cloud, all is well."
    );
    drop(s);

    // cross-check with a member that hangs: the answer comes at the deadline, the member is
    // reported late.
    let s = council_server(
        &a,
        &b,
        "policy = \"cross-check\"\nprimary = \"a\"\ndeadline_s = 3",
    );
    a.scenario("hang");
    b.scenario("healthy");
    let t0 = Instant::now();
    let r = post(&s, "/v1/messages", &messages(true), &[]);
    let took = t0.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_secs(5),
        "outlived its deadline: {took:?}"
    );
    let rep = council_report(&r);
    assert_ne!(rep["chosen"], "a");
    assert!(rep["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "a" && m["outcome"] == "late"));

    // A request may ask for a council by header, or refuse one.
    let r = post(
        &s,
        "/v1/messages",
        &messages(false),
        &[("x-backstop-council", "vote")],
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("x-backstop-council"));
    let r = post(
        &s,
        "/v1/messages",
        &messages(false),
        &[("x-backstop-council", "off")],
    );
    assert_eq!(r.header("x-backstop-council"), None);
}

#[test]
fn bad_configurations_stop_the_server_with_one_line() {
    let dir = std::env::temp_dir().join(format!("backstop-badcfg-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[[upstream]]\nname = \"x\"\nformat = \"gemini\"\nurl = \"http://127.0.0.1:1\"\n",
            "unknown wire format",
        ),
        (
            "[[upstream]]\nname = \"x\"\nformat = \"openai\"\nurl = \"http://127.0.0.1:1\"\n\
             key_env = \"BACKSTOP_TEST_UNSET_KEY\"\n",
            "BACKSTOP_TEST_UNSET_KEY",
        ),
        (
            "[[upstream]]\nname = \"x\"\nformat = \"openai\"\nurl = \"http://127.0.0.1:1\"\n\
             [route.openai]\nchain = [\"x\", \"x\"]\n",
            "appears twice",
        ),
        ("[route.openai]\nchain = []\n", "empty"),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        let p = dir.join(format!("{i}.toml"));
        std::fs::write(&p, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(["serve", "-m"])
            .arg(support::model())
            .args(["--port", "0", "--config"])
            .arg(&p)
            .env_remove("BACKSTOP_TEST_UNSET_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(want), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
