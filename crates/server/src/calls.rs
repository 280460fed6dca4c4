//! Tool calls in generated text: text before a call goes out as it is generated; a call is
//! held until the answer ends and then parsed whole in the model's call format, so a client
//! never receives half a call. Text that does not parse as whole calls naming the request's
//! tools goes out as text: prose that merely contains `{` is never taken for a call.

use backstop_engine::chat::ToolSpec;
use backstop_engine::tools::{CallFormat, ParsedCall, CALL_OPEN};

use crate::core::{new_id, CallOut};
use crate::wire::Flavor;

pub(crate) struct CallWatch {
    flavor: Flavor,
    tools: Vec<ToolSpec>,
    format: CallFormat,
    held: String,
    /// A call has begun: everything from there on is held.
    in_call: bool,
    /// A whole-answer format saw the answer's first character, which was not a call.
    prose: bool,
    /// The answer had to be calls: a call cut short by the budget is dropped, not shown as
    /// text (the answer then ends with `length` and no call).
    forced: bool,
}

impl CallWatch {
    /// `tools` empty: nothing is watched, every piece goes out as it comes.
    pub(crate) fn new(flavor: Flavor, tools: Vec<ToolSpec>, format: CallFormat) -> Self {
        Self {
            flavor,
            tools,
            format,
            held: String::new(),
            in_call: false,
            prose: false,
            forced: false,
        }
    }

    pub(crate) fn forced(mut self, forced: bool) -> Self {
        self.forced = forced;
        self
    }

    /// The part of `piece` (with what was held) that can go out now.
    pub(crate) fn push(&mut self, piece: &str) -> String {
        if self.tools.is_empty() || self.prose {
            return piece.to_owned();
        }
        self.held.push_str(piece);
        if self.in_call {
            return String::new();
        }
        if let Some(lead) = self.format.leading() {
            // Whole-answer formats: the first visible character decides.
            match self.held.trim_start().chars().next() {
                None => return String::new(),
                Some(c) if c == lead => {
                    self.in_call = true;
                    return String::new();
                }
                Some(_) => {
                    self.prose = true;
                    return std::mem::take(&mut self.held);
                }
            }
        }
        if let Some(at) = self.held.find(CALL_OPEN) {
            self.in_call = true;
            let rest = self.held.split_off(at);
            return std::mem::replace(&mut self.held, rest);
        }
        // Hold back a tail that could be the start of the tag.
        let keep = (1..CALL_OPEN.len())
            .rev()
            .find(|&k| self.held.ends_with(&CALL_OPEN[..k]))
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }

    /// At the end of a stream: text still to send, and the calls.
    pub(crate) fn end(&mut self) -> (String, Vec<CallOut>) {
        let held = std::mem::take(&mut self.held);
        if !self.in_call {
            return (held, Vec::new());
        }
        match self.format.parse(&held, &self.tools) {
            Some((_, calls)) => (String::new(), self.calls_out(calls)),
            None if self.forced => (String::new(), Vec::new()),
            None => (held, Vec::new()),
        }
    }

    /// A whole answer's text split into prose and calls.
    pub(crate) fn split(&self, text: String) -> (String, Vec<CallOut>) {
        if self.tools.is_empty() {
            return (text, Vec::new());
        }
        match self.format.parse(&text, &self.tools) {
            Some((prose, calls)) => (prose, self.calls_out(calls)),
            None if self.forced => (String::new(), Vec::new()),
            None => (text, Vec::new()),
        }
    }

    fn calls_out(&self, calls: Vec<ParsedCall>) -> Vec<CallOut> {
        let prefix = match self.flavor {
            Flavor::OpenAi => "call_",
            Flavor::Anthropic => "toolu_",
        };
        calls
            .into_iter()
            .map(|c| CallOut {
                id: new_id(prefix),
                name: c.name,
                arguments: c.arguments,
            })
            .collect()
    }
}
