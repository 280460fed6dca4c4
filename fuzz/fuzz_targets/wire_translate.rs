//! Fuzz the server's readers of untrusted JSON: the request parsers of both wire formats
//! (crates/server/src/openai.rs, anthropic.rs) and the translation between them
//! (crates/server/src/upstream/translate.rs), whose inputs are client requests and upstream
//! answers. The first byte picks what the rest is fed to; nothing may panic, and what comes
//! out must be JSON / whole SSE events.

#![no_main]

use backstop_server::upstream::sse::Splitter;
use backstop_server::upstream::translate::{self, RequestOptions, StreamTranslator};
use backstop_server::Flavor;
use libfuzzer_sys::fuzz_target;

fn flavors(b: u8) -> (Flavor, Flavor) {
    let f = |bit: u8| {
        if bit & 1 == 0 {
            Flavor::Anthropic
        } else {
            Flavor::OpenAi
        }
    };
    (f(b), f(b >> 1))
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let (from, to) = flavors(op >> 4);
    match op % 6 {
        4 => {
            let _ = backstop_server::openai::parse_chat(rest);
            let _ = backstop_server::openai::parse_completion(rest);
        }
        5 => {
            let _ = backstop_server::anthropic::parse_messages(rest);
        }
        0 => {
            if let Ok(v) = serde_json::from_slice(rest) {
                let opts = RequestOptions {
                    model: Some("m"),
                    default_max_tokens: 64,
                };
                if let Ok(out) = translate::request(from, to, &v, &opts) {
                    assert!(out.is_object(), "a request translates to an object");
                }
            }
        }
        1 => {
            if let Ok(v) = serde_json::from_slice(rest) {
                let _ = translate::response(from, to, &v);
                let events = translate::whole_to_stream(to, &v, op & 8 != 0, None);
                let mut sp = Splitter::default();
                let joined: Vec<u8> = events.concat();
                let whole = sp.push(&joined).expect("bounded");
                assert_eq!(
                    whole.len(),
                    events.len(),
                    "every event is one whole SSE event"
                );
            }
        }
        2 => {
            let _ = translate::error_body(to, 400 + u16::from(op), rest);
        }
        3 => {
            // A stream: the rest split into events at blank lines, as the relay does.
            let mut t = StreamTranslator::new(from, to, op & 8 != 0);
            let mut sp = Splitter::default();
            if let Ok(events) = sp.push(rest) {
                for e in events {
                    let out = t.push(&e);
                    if from == to {
                        assert_eq!(out, vec![e], "the same format passes through");
                        continue;
                    }
                    for ev in out {
                        // Ours are written with `\n` line ends and one blank line.
                        assert!(ev.ends_with(b"\n\n"), "a whole event");
                    }
                }
            }
            let _ = t.finish();
        }
        _ => unreachable!(),
    }
});
