//! The encoders of both wire formats over synthetic engine events, through the same stream
//! driver the server uses: the exact event sequence, ids, usage, finish and stop reasons,
//! errors, and continuations of a cloud stream after N characters. No model file needed.

use std::time::Duration;

use backstop_engine::generate::{Outcome, StopReason};
use backstop_engine::tools::CallFormat;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::anthropic::AnthropicEncoder;
use crate::calls::CallWatch;
use crate::core::{Encoder, Resume, Usage};
use crate::local::drive;
use crate::log::RequestLog;
use crate::openai::OpenAiEncoder;
use crate::scheduler::Event;
use crate::state::Admitted;
use crate::wire::{Endpoint, Flavor};

fn outcome(stop: StopReason, completion: usize, cached: usize) -> Outcome {
    Outcome {
        stop_reason: stop,
        tokens: vec![7; completion],
        n_prompt: 10,
        n_cached: cached,
        prompt_time: Duration::from_millis(20),
        gen_time: Duration::from_millis(40),
    }
}

/// Run `events` through the driver; the frames as (event name, data) pairs.
fn stream(enc: Box<dyn Encoder>, events: Vec<Event>) -> Vec<(Option<String>, String)> {
    stream_with(
        enc,
        events,
        CallWatch::new(Flavor::OpenAi, Vec::new(), CallFormat::Hermes),
    )
}

fn stream_with(
    enc: Box<dyn Encoder>,
    events: Vec<Event>,
    calls: CallWatch,
) -> Vec<(Option<String>, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = rt.block_on(async move {
        let (etx, erx) = mpsc::unbounded_channel();
        for e in events {
            etx.send(e).unwrap();
        }
        drop(etx);
        let (tx, mut rx) = mpsc::channel(64);
        let job = Admitted {
            events: erx,
            n_prompt: 10,
        };
        drive(enc, job, calls, tx, RequestLog::new("POST", "test", true)).await;
        let mut out = Vec::new();
        while let Some(Ok(b)) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        out
    });
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.ends_with("\n\n"),
        "frames end with a blank line: {text:?}"
    );
    text.trim_end_matches('\n')
        .split("\n\n")
        .map(|frame| {
            let mut name = None;
            let mut data = Vec::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                } else {
                    panic!("not an SSE line: {line:?}");
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

fn data(frames: &[(Option<String>, String)]) -> Vec<Value> {
    frames
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect()
}

fn names(frames: &[(Option<String>, String)]) -> Vec<&str> {
    frames
        .iter()
        .map(|(n, _)| n.as_deref().unwrap_or(""))
        .collect()
}

fn text_events() -> Vec<Event> {
    vec![Event::Text("Hel".into()), Event::Text("lo".into())]
}

fn resume(marker_chars: usize) -> Resume {
    Resume {
        text: "x".repeat(marker_chars),
        id: Some("up-id-1".into()),
        model: Some("cloud-model".into()),
        open_block: None,
        open_block_is_text: false,
        next_block: 0,
        open_tool: None,
        done_tools: Vec::new(),
        marker: json!({"continued_locally": true, "continued_after_chars": marker_chars}),
    }
}

/// The JSON's structure with every leaf replaced by its type: two streams have the same shape
/// when these are equal.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => Value::Null,
    }
}

#[test]
fn openai_chat_stream_sequence_ids_usage_and_finish() {
    let enc = OpenAiEncoder::new(Endpoint::Chat, "gpt-4o".into(), true, None);
    let mut events = text_events();
    events.push(Event::Done(outcome(StopReason::MaxTokens, 2, 3)));
    let frames = stream(Box::new(enc), events);
    assert_eq!(frames.len(), 6, "{frames:?}");
    assert!(
        frames.iter().all(|(n, _)| n.is_none()),
        "OpenAI frames carry no event name"
    );
    assert_eq!(frames[5].1, "[DONE]");
    let d = data(&frames);
    let id = d[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for c in &d {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o");
    }
    assert_eq!(
        d[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(d[1]["choices"][0]["delta"], json!({"content": "Hel"}));
    assert_eq!(d[2]["choices"][0]["delta"], json!({"content": "lo"}));
    assert_eq!(
        d[1]["usage"],
        Value::Null,
        "usage null until the usage chunk"
    );
    assert_eq!(d[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(d[3]["choices"][0]["delta"], json!({}));
    assert_eq!(d[3]["timings"]["predicted_n"], 2);
    assert_eq!(d[4]["choices"], json!([]));
    assert_eq!(
        d[4]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
               "prompt_tokens_details": {"cached_tokens": 3}})
    );
}

#[test]
fn openai_completion_stream_has_cmpl_ids_and_no_role_chunk() {
    let enc = OpenAiEncoder::new(Endpoint::Completions, "m".into(), false, None);
    let mut events = text_events();
    events.push(Event::Done(outcome(
        StopReason::StopString("\n".into()),
        2,
        0,
    )));
    let frames = stream(Box::new(enc), events);
    let d = data(&frames);
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert!(d[0]["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(d[0]["object"], "text_completion");
    assert_eq!(d[0]["choices"][0]["text"], "Hel");
    assert_eq!(d[2]["choices"][0]["text"], "");
    assert_eq!(d[2]["choices"][0]["finish_reason"], "stop");
    assert!(
        d.iter().all(|c| c.get("usage").is_none()),
        "no usage unless asked"
    );
    assert_eq!(frames[3].1, "[DONE]");
}

#[test]
fn openai_continuation_keeps_the_clouds_id_and_the_fresh_shape() {
    for ep in [Endpoint::Chat, Endpoint::Completions] {
        let done = || Event::Done(outcome(StopReason::EndOfGeneration, 2, 4));
        let mut events = text_events();
        events.push(done());
        let fresh = stream(
            Box::new(OpenAiEncoder::new(ep, "m".into(), true, None)),
            events,
        );
        let mut events = text_events();
        events.push(done());
        let r = resume(17);
        let cont = stream(
            Box::new(OpenAiEncoder::new(ep, "m".into(), true, Some(&r))),
            events,
        );
        // The cloud already sent the opening chunk of a chat stream.
        let skip = usize::from(ep == Endpoint::Chat);
        assert_eq!(cont.len(), fresh.len() - skip, "{ep:?}: {cont:?}");
        let (f, c) = (data(&fresh[skip..]), data(&cont));
        for (a, b) in f.iter().zip(&c) {
            assert_eq!(b["id"], "up-id-1");
            assert_eq!(b["model"], "cloud-model");
            let mut b = b.clone();
            if let Some(m) = b.as_object_mut() {
                assert_eq!(
                    m.remove("backstop").is_some(),
                    a["choices"][0]["finish_reason"].is_string()
                );
            }
            assert_eq!(shape(a), shape(&b), "{ep:?}");
        }
        let last = &c[c.len() - 2];
        assert_eq!(last["backstop"]["continued_after_chars"], 17);
        assert_eq!(
            c[c.len() - 1]["usage"]["prompt_tokens_details"]["cached_tokens"],
            4,
            "a continued stream's usage is the fresh one's"
        );
        assert_eq!(cont.last().unwrap().1, "[DONE]");
    }
}

#[test]
fn openai_error_mid_stream_is_an_error_chunk_then_done() {
    let enc = OpenAiEncoder::new(Endpoint::Chat, "m".into(), false, None);
    let frames = stream(
        Box::new(enc),
        vec![Event::Text("a".into()), Event::Failed("boom".into())],
    );
    let d = data(&frames);
    assert_eq!(d.len(), 3);
    assert_eq!(d[2]["error"]["type"], "server_error");
    assert!(d[2]["error"]["message"].as_str().unwrap().contains("boom"));
    assert_eq!(frames.last().unwrap().1, "[DONE]");
}

#[test]
fn openai_whole_answers() {
    let o = outcome(StopReason::EndOfGeneration, 5, 2);
    let u = Usage::of(10, &o);
    let chat =
        OpenAiEncoder::new(Endpoint::Chat, "gpt".into(), false, None).whole("Hi", &[], &u, &o);
    assert!(chat["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "gpt");
    assert_eq!(
        chat["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hi", "refusal": null})
    );
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    assert_eq!(chat["usage"]["total_tokens"], 15);
    assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    let text = OpenAiEncoder::new(Endpoint::Completions, "gpt".into(), false, None).whole(
        "Hi",
        &[],
        &u,
        &o,
    );
    assert!(text["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(text["object"], "text_completion");
    assert_eq!(text["choices"][0]["text"], "Hi");
}

#[test]
fn anthropic_stream_sequence_usage_and_stop_reason() {
    let enc = AnthropicEncoder::new("claude-x".into(), None);
    let mut events = text_events();
    events.push(Event::Done(outcome(
        StopReason::StopString("END".into()),
        2,
        3,
    )));
    let frames = stream(Box::new(enc), events);
    assert_eq!(
        names(&frames),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let d = data(&frames);
    for (f, v) in frames.iter().zip(&d) {
        assert_eq!(f.0.as_deref(), v["type"].as_str(), "event name = data type");
    }
    let msg = &d[0]["message"];
    assert!(msg["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(msg["model"], "claude-x");
    assert_eq!(msg["usage"]["input_tokens"], 10);
    assert_eq!(d[1]["content_block"], json!({"type": "text", "text": ""}));
    assert_eq!(d[3]["delta"], json!({"type": "text_delta", "text": "Hel"}));
    assert_eq!(d[4]["index"], 0);
    assert_eq!(
        d[6]["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": "END"})
    );
    assert_eq!(
        d[6]["usage"],
        json!({"input_tokens": 7, "cache_read_input_tokens": 3,
               "cache_creation_input_tokens": 0, "output_tokens": 2})
    );
    assert!(d[6].get("backstop").is_none());
}

#[test]
fn anthropic_continuation_into_the_open_text_block() {
    let mut r = resume(5);
    r.open_block = Some(0);
    r.open_block_is_text = true;
    r.next_block = 1;
    let mut events = text_events();
    events.push(Event::Done(outcome(StopReason::EndOfGeneration, 2, 0)));
    let frames = stream(
        Box::new(AnthropicEncoder::new("m".into(), Some(&r))),
        events,
    );
    assert_eq!(
        names(&frames),
        [
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let d = data(&frames);
    assert!(d[..3].iter().all(|e| e["index"] == 0));
    assert_eq!(d[3]["delta"]["stop_reason"], "end_turn");
    assert_eq!(d[3]["backstop"]["continued_after_chars"], 5);
    // The same shape as a fresh stream's closing events, but for the marker.
    let mut events = text_events();
    events.push(Event::Done(outcome(StopReason::EndOfGeneration, 2, 0)));
    let fresh = data(&stream(
        Box::new(AnthropicEncoder::new("m".into(), None)),
        events,
    ));
    let mut delta = d[3].clone();
    delta.as_object_mut().unwrap().remove("backstop");
    assert_eq!(shape(&delta), shape(&fresh[6]));
}

#[test]
fn anthropic_continuation_after_a_tool_block_opens_a_new_text_block() {
    let mut r = resume(0);
    r.open_block = Some(1);
    r.open_block_is_text = false;
    r.next_block = 2;
    let mut events = vec![Event::Text("ok".into())];
    events.push(Event::Done(outcome(StopReason::MaxTokens, 1, 0)));
    let frames = stream(
        Box::new(AnthropicEncoder::new("m".into(), Some(&r))),
        events,
    );
    assert_eq!(
        names(&frames),
        [
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let d = data(&frames);
    assert_eq!(d[0]["index"], 1);
    assert_eq!(d[1]["index"], 2);
    assert_eq!(d[2]["index"], 2);
    assert_eq!(d[3]["index"], 2);
    assert_eq!(d[4]["delta"]["stop_reason"], "max_tokens");
}

#[test]
fn anthropic_error_mid_stream_closes_the_block_then_errors() {
    let frames = stream(
        Box::new(AnthropicEncoder::new("m".into(), None)),
        vec![Event::Text("a".into()), Event::ShuttingDown],
    );
    let n = names(&frames);
    assert_eq!(&n[n.len() - 2..], ["content_block_stop", "error"]);
    let d = data(&frames);
    assert_eq!(d.last().unwrap()["error"]["type"], "overloaded_error");
}

#[test]
fn anthropic_whole_answer() {
    let o = outcome(StopReason::MaxTokens, 4, 1);
    let m = AnthropicEncoder::new("claude".into(), None).whole("Hi", &[], &Usage::of(10, &o), &o);
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["content"], json!([{"type": "text", "text": "Hi"}]));
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["stop_sequence"], Value::Null);
    assert_eq!(m["usage"]["input_tokens"], 9);
    assert_eq!(m["usage"]["output_tokens"], 4);
}

#[test]
fn a_stream_whose_job_vanishes_ends_with_an_error_not_silence() {
    for enc in [
        Box::new(OpenAiEncoder::new(Endpoint::Chat, "m".into(), false, None)) as Box<dyn Encoder>,
        Box::new(AnthropicEncoder::new("m".into(), None)),
    ] {
        let frames = stream(enc, vec![Event::Text("a".into())]);
        let d = data(&frames);
        let last = d.last().unwrap();
        assert!(last.get("error").is_some(), "{frames:?}");
    }
}

fn read_file() -> Vec<backstop_engine::chat::ToolSpec> {
    vec![backstop_engine::chat::ToolSpec {
        name: "read_file".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
    }]
}

/// A model answering with some text, then a call in the generic format split across pieces.
fn call_events() -> Vec<Event> {
    vec![
        Event::Text("Let me look.\n".into()),
        Event::Text("<tool_".into()),
        Event::Text("call>\n{\"name\": \"read_file\", ".into()),
        Event::Text("\"arguments\": {\"path\": \"a.txt\"}}\n</tool_call>".into()),
        Event::Done(outcome(StopReason::EndOfGeneration, 20, 0)),
    ]
}

#[test]
fn openai_stream_turns_a_generic_call_into_tool_call_deltas() {
    let enc = OpenAiEncoder::new(Endpoint::Chat, "m".into(), false, None);
    let frames = stream_with(
        Box::new(enc),
        call_events(),
        CallWatch::new(Flavor::OpenAi, read_file(), CallFormat::Hermes),
    );
    let d = data(&frames);
    assert_eq!(d.len(), 5, "{frames:?}");
    assert_eq!(d[1]["choices"][0]["delta"]["content"], "Let me look.\n");
    let head = &d[2]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(head["index"], 0);
    assert_eq!(head["type"], "function");
    assert_eq!(head["function"]["name"], "read_file");
    let id = head["id"].as_str().unwrap();
    assert!(
        id.starts_with("call_")
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    );
    let args = d[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"path": "a.txt"})
    );
    assert_eq!(d[4]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(frames.last().unwrap().1, "[DONE]");
}

#[test]
fn anthropic_stream_turns_a_generic_call_into_a_tool_use_block() {
    let enc = AnthropicEncoder::new("m".into(), None);
    let frames = stream_with(
        Box::new(enc),
        call_events(),
        CallWatch::new(Flavor::Anthropic, read_file(), CallFormat::Hermes),
    );
    assert_eq!(
        names(&frames),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let d = data(&frames);
    assert_eq!(d[4]["index"], 0);
    let block = &d[5]["content_block"];
    assert_eq!(d[5]["index"], 1);
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "read_file");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(d[6]["delta"]["type"], "input_json_delta");
    let partial = d[6]["delta"]["partial_json"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(partial).unwrap(),
        json!({"path": "a.txt"})
    );
    assert_eq!(d[7]["index"], 1);
    assert_eq!(d[8]["delta"]["stop_reason"], "tool_use");
}

#[test]
fn text_that_is_not_a_whole_known_call_stays_text() {
    for text in [
        "Use {\"name\": \"read_file\"} like this.",
        "<tool_call>{\"name\": \"delete_all\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"read_file\", \"argu",
    ] {
        let enc = OpenAiEncoder::new(Endpoint::Chat, "m".into(), false, None);
        let events = vec![
            Event::Text(text.into()),
            Event::Done(outcome(StopReason::MaxTokens, 9, 0)),
        ];
        let frames = stream_with(
            Box::new(enc),
            events,
            CallWatch::new(Flavor::OpenAi, read_file(), CallFormat::Hermes),
        );
        let d = data(&frames);
        let got: String = d
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(got, text);
        assert!(d
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
        assert_eq!(d.last().unwrap()["choices"][0]["finish_reason"], "length");
    }
}

#[test]
fn whole_answers_with_tool_calls() {
    let o = outcome(StopReason::EndOfGeneration, 5, 0);
    let u = Usage::of(10, &o);
    let calls = [crate::core::CallOut {
        id: "call_abc".into(),
        name: "read_file".into(),
        arguments: json!({"path": "a.txt"}),
    }];
    let chat =
        OpenAiEncoder::new(Endpoint::Chat, "m".into(), false, None).whole("", &calls, &u, &o);
    let msg = &chat["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    assert_eq!(msg["tool_calls"][0]["id"], "call_abc");
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        "{\"path\":\"a.txt\"}"
    );
    assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
    let m = AnthropicEncoder::new("m".into(), None).whole("", &calls, &u, &o);
    assert_eq!(
        m["content"],
        json!([{"type": "tool_use", "id": "call_abc", "name": "read_file",
                "input": {"path": "a.txt"}}])
    );
    assert_eq!(m["stop_reason"], "tool_use");
}

#[test]
fn whole_answer_formats_hold_a_call_and_pass_prose_at_once() {
    // Llama 3.x: an answer that starts with `{` is held and parsed as calls at the end.
    let llama = "{\"name\": \"read_file\", \"parameters\": {\"path\": \"a.txt\"}}";
    let frames = stream_with(
        Box::new(OpenAiEncoder::new(Endpoint::Chat, "m".into(), false, None)),
        vec![
            Event::Text(llama[..9].into()),
            Event::Text(llama[9..].into()),
            Event::Done(outcome(StopReason::EndOfGeneration, 20, 0)),
        ],
        CallWatch::new(Flavor::OpenAi, read_file(), CallFormat::Llama3),
    );
    let d = data(&frames);
    assert!(d
        .iter()
        .all(|c| c["choices"][0]["delta"].get("content").is_none()
            || c["choices"][0]["delta"]["content"] == ""));
    assert_eq!(
        d[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "read_file"
    );
    // Mistral prose streams as it comes, and `[` later in the text is not a call.
    let frames = stream_with(
        Box::new(OpenAiEncoder::new(Endpoint::Chat, "m".into(), false, None)),
        vec![
            Event::Text("Sure".into()),
            Event::Text(" [1, 2]".into()),
            Event::Done(outcome(StopReason::EndOfGeneration, 3, 0)),
        ],
        CallWatch::new(Flavor::OpenAi, read_file(), CallFormat::Mistral),
    );
    let d = data(&frames);
    assert_eq!(d[1]["choices"][0]["delta"]["content"], "Sure");
    assert_eq!(d[2]["choices"][0]["delta"]["content"], " [1, 2]");
    assert_eq!(d[3]["choices"][0]["finish_reason"], "stop");
}
