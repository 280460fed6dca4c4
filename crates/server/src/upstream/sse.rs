//! Reading an upstream's server-sent events as they pass through: split the byte stream into
//! whole events (so a client never receives half an event when the upstream breaks), and keep
//! track of the assistant text so far and whether the stream ended properly, so a break can
//! be continued by the local model.

use serde_json::Value;

use crate::core::OpenTool;
use crate::wire::Flavor;

/// Splits bytes into complete SSE events (each ending with a blank line).
#[derive(Default)]
pub struct Splitter {
    buf: Vec<u8>,
}

/// The most an upstream may send without ending an event: a guard against a stream that
/// never delimits, which would otherwise grow this buffer without bound.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

impl Splitter {
    /// Append bytes; returns the complete events now available, raw (terminator included).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((end, term)) = find_terminator(&self.buf) {
            let rest = self.buf.split_off(end + term);
            out.push(std::mem::replace(&mut self.buf, rest));
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err("upstream event larger than 8 MiB");
        }
        Ok(out)
    }

    /// Bytes of an event that has not ended.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Position and length of the first blank-line terminator (`\n\n` or `\r\n\r\n`).
fn find_terminator(b: &[u8]) -> Option<(usize, usize)> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

/// An event's `event:` name and joined `data:` lines.
pub fn parse_event(raw: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(raw);
    let mut name = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (name, data.join("\n"))
}

/// Whether a raw event is an in-stream error (Anthropic's `event: error`, or an OpenAI chunk
/// carrying an `error` object): the cloud failed after the stream began.
pub fn is_error_event(raw: &[u8]) -> Option<String> {
    let (name, data) = parse_event(raw);
    let v: Value = serde_json::from_str(&data).ok()?;
    let is_err = name.as_deref() == Some("error")
        || v.get("type").and_then(Value::as_str) == Some("error")
        || v.get("error").is_some_and(Value::is_object);
    is_err.then(|| {
        v.pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("error event")
            .to_owned()
    })
}

/// What has passed through so far.
#[derive(Debug, Default)]
pub struct Progress {
    /// Assistant text so far.
    pub text: String,
    /// The stream reached its proper end (`message_stop` / `[DONE]`).
    pub finished: bool,
    /// Anthropic: index of the open content block, if any, and whether it is a text block.
    pub open_block: Option<u64>,
    pub open_block_is_text: bool,
    /// Anthropic: the index the next content block would take.
    pub next_block: u64,
    /// Anthropic: `message_delta` already sent (then only `message_stop` is missing).
    pub message_delta_sent: bool,
    /// The upstream's message/completion id and model, reused by the continuation.
    pub id: Option<String>,
    pub model: Option<String>,
    /// OpenAI: a chunk with a finish_reason was sent.
    pub finish_sent: bool,
    /// Anthropic: the `tool_use` block open now, with the argument JSON received so far.
    pub open_tool: Option<OpenTool>,
    /// Anthropic: the `tool_use` blocks this message completed, in order.
    pub done_tools: Vec<OpenTool>,
}

impl Progress {
    pub fn observe(&mut self, flavor: Flavor, raw: &[u8]) {
        let (name, data) = parse_event(raw);
        match flavor {
            Flavor::OpenAi => self.observe_openai(&data),
            Flavor::Anthropic => self.observe_anthropic(name.as_deref(), &data),
        }
    }

    fn observe_openai(&mut self, data: &str) {
        if data.trim() == "[DONE]" {
            self.finished = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if self.id.is_none() {
            self.id = v.get("id").and_then(Value::as_str).map(str::to_owned);
            self.model = v.get("model").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(c) = v.pointer("/choices/0") {
            let piece = c
                .pointer("/delta/content")
                .or_else(|| c.get("text"))
                .and_then(Value::as_str);
            if let Some(t) = piece {
                self.text.push_str(t);
            }
            if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.finish_sent = true;
            }
        }
    }

    fn observe_anthropic(&mut self, name: Option<&str>, data: &str) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        let ty = v.get("type").and_then(Value::as_str).or(name).unwrap_or("");
        match ty {
            "message_start" => {
                self.id = v
                    .pointer("/message/id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.model = v
                    .pointer("/message/model")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "content_block_start" => {
                let i = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                self.open_block = Some(i);
                let block_type = v.pointer("/content_block/type").and_then(Value::as_str);
                self.open_block_is_text = block_type == Some("text");
                self.next_block = i + 1;
                if block_type == Some("tool_use") {
                    self.open_tool = Some(OpenTool {
                        id: v
                            .pointer("/content_block/id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: v
                            .pointer("/content_block/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        json: String::new(),
                    });
                }
                if let Some(t) = v.pointer("/content_block/text").and_then(Value::as_str) {
                    self.text.push_str(t);
                }
            }
            "content_block_delta"
                if v.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta") =>
            {
                if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                    self.text.push_str(t);
                }
            }
            "content_block_delta"
                if v.pointer("/delta/type").and_then(Value::as_str) == Some("input_json_delta") =>
            {
                let piece = v.pointer("/delta/partial_json").and_then(Value::as_str);
                if let (Some(t), Some(piece)) = (self.open_tool.as_mut(), piece) {
                    t.json.push_str(piece);
                }
            }
            "content_block_stop" => {
                self.open_block = None;
                if let Some(t) = self.open_tool.take() {
                    self.done_tools.push(t);
                }
            }
            "message_delta" => self.message_delta_sent = true,
            "message_stop" => self.finished = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_yields_whole_events_across_arbitrary_chunking() {
        let stream = b"event: a\ndata: {\"x\":1}\n\nevent: b\r\ndata: 2\r\n\r\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut s = Splitter::default();
            let mut events = s.push(&stream[..cut]).unwrap();
            events.extend(s.push(&stream[cut..]).unwrap());
            assert_eq!(events.len(), 3, "cut at {cut}");
            assert_eq!(events.concat(), stream.to_vec());
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn anthropic_progress_tracks_text_blocks_and_end() {
        let mut p = Progress::default();
        let evs = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
        ];
        for e in evs {
            p.observe(Flavor::Anthropic, e.as_bytes());
        }
        assert_eq!(p.text, "Hello");
        assert_eq!(p.open_block, Some(0));
        assert_eq!(p.id.as_deref(), Some("msg_1"));
        assert!(!p.finished);
        p.observe(
            Flavor::Anthropic,
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        assert!(p.finished);
    }

    #[test]
    fn anthropic_progress_tracks_tool_use_blocks_and_their_partial_json() {
        let mut p = Progress::default();
        let evs = [
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"read_file\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"pa\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"th\\\": \"}}\n\n",
        ];
        for e in evs {
            p.observe(Flavor::Anthropic, e.as_bytes());
        }
        let t = p.open_tool.as_ref().expect("a tool block is open");
        assert_eq!((t.id.as_str(), t.name.as_str()), ("toolu_1", "read_file"));
        assert_eq!(t.json, "{\"path\": ");
        assert!(!p.open_block_is_text);
        p.observe(
            Flavor::Anthropic,
            b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        );
        assert!(p.open_tool.is_none());
        assert_eq!(p.done_tools.len(), 1);
    }

    #[test]
    fn openai_progress_tracks_deltas_and_done() {
        let mut p = Progress::default();
        p.observe(
            Flavor::OpenAi,
            b"data: {\"id\":\"c1\",\"model\":\"gpt\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n",
        );
        p.observe(
            Flavor::OpenAi,
            b"data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\" there\"},\"finish_reason\":null}]}\n\n",
        );
        assert_eq!(p.text, "Hi there");
        assert!(!p.finish_sent);
        p.observe(Flavor::OpenAi, b"data: [DONE]\n\n");
        assert!(p.finished);
    }
}
