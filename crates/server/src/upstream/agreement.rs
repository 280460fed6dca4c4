//! Whether two answers to one request agree, for a council's cross-check: tool calls by
//! name and arguments, JSON by value, text by a similarity score.

use serde_json::{json, Value};

use crate::wire::Flavor;

/// The parts of an answer that can be compared, whatever its wire format.
#[derive(Debug, Default, PartialEq)]
pub struct Said {
    pub text: String,
    /// Tool calls as (name, arguments); arguments that are not JSON stay a string.
    pub calls: Vec<(String, Value)>,
}

/// What a whole response (Anthropic message, chat completion or text completion) said.
pub fn said(flavor: Flavor, v: &Value) -> Said {
    let mut out = Said::default();
    match flavor {
        Flavor::Anthropic => {
            for b in v
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        out.text
                            .push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some("tool_use") => out.calls.push((
                        str_of(b, "name"),
                        b.get("input").cloned().unwrap_or(Value::Null),
                    )),
                    _ => {}
                }
            }
        }
        Flavor::OpenAi => {
            let Some(c) = v.pointer("/choices/0") else {
                return out;
            };
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                out.text.push_str(t);
            }
            let msg = c.get("message").unwrap_or(&Value::Null);
            if let Some(t) = msg.get("content").and_then(Value::as_str) {
                out.text.push_str(t);
            }
            for call in msg
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = call.get("function").unwrap_or(&Value::Null);
                let raw = f.get("arguments").and_then(Value::as_str).unwrap_or("");
                let args =
                    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
                out.calls.push((str_of(f, "name"), args));
            }
        }
    }
    out
}

fn str_of(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

/// A JSON value in text, allowing the Markdown fence models like to put around it.
fn json_in(text: &str) -> Option<Value> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.trim_end().strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    serde_json::from_str::<Value>(t)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
}

/// How `other` compares with the chosen answer `chosen`: a JSON object with `kind`
/// (`tool_calls`, `json` or `text`) and `agree`, plus the details of that kind.
pub fn compare(chosen: &Said, other: &Said, text_agreement: f64) -> Value {
    if !chosen.calls.is_empty() || !other.calls.is_empty() {
        let mut a: Vec<&str> = chosen.calls.iter().map(|c| c.0.as_str()).collect();
        let mut b: Vec<&str> = other.calls.iter().map(|c| c.0.as_str()).collect();
        a.sort_unstable();
        b.sort_unstable();
        let names_agree = a == b;
        // Order of parallel calls carries no meaning; compare as sorted (name, arguments).
        let canon = |s: &Said| {
            let mut v: Vec<String> = s
                .calls
                .iter()
                .map(|(n, args)| format!("{n}\u{0}{}", canonical(args)))
                .collect();
            v.sort_unstable();
            v
        };
        let arguments_agree = names_agree && canon(chosen) == canon(other);
        return json!({
            "kind": "tool_calls",
            "agree": names_agree && arguments_agree,
            "names_agree": names_agree,
            "arguments_agree": arguments_agree,
        });
    }
    if let Some(a) = json_in(&chosen.text) {
        let agree = json_in(&other.text).is_some_and(|b| b == a);
        return json!({"kind": "json", "agree": agree});
    }
    let s = similarity(&chosen.text, &other.text);
    json!({
        "kind": "text",
        "agree": s >= text_agreement,
        "similarity": (s * 1000.0).round() / 1000.0,
    })
}

/// JSON with object keys sorted, so equal values print equal.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// Words compared, at most: the score is quadratic in them.
const MAX_WORDS: usize = 2000;

/// Similarity of two texts in 0..=1: twice the longest common subsequence of their
/// lowercased words over the total word count (1 for two empty texts).
pub fn similarity(a: &str, b: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(MAX_WORDS)
            .map(str::to_lowercase)
            .collect()
    };
    let (a, b) = (words(a), words(b));
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let mut prev = vec![0u32; b.len() + 1];
    let mut cur = vec![0u32; b.len() + 1];
    for wa in &a {
        for (j, wb) in b.iter().enumerate() {
            cur[j + 1] = if wa == wb {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    2.0 * f64::from(prev[b.len()]) / (a.len() + b.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(c: &[(&str, Value)]) -> Said {
        Said {
            text: String::new(),
            calls: c.iter().map(|(n, a)| (n.to_string(), a.clone())).collect(),
        }
    }

    #[test]
    fn tool_calls_agree_by_name_and_arguments_in_any_order() {
        let a = calls(&[("read", json!({"path": "a", "n": 1})), ("ls", json!({}))]);
        let same = calls(&[("ls", json!({})), ("read", json!({"n": 1, "path": "a"}))]);
        let other_args = calls(&[("read", json!({"path": "b", "n": 1})), ("ls", json!({}))]);
        let other_name = calls(&[("write", json!({"path": "a", "n": 1})), ("ls", json!({}))]);
        let r = compare(&a, &same, 0.5);
        assert_eq!(r["agree"], true, "{r}");
        let r = compare(&a, &other_args, 0.5);
        assert_eq!(
            (r["names_agree"].clone(), r["arguments_agree"].clone()),
            (json!(true), json!(false))
        );
        let r = compare(&a, &other_name, 0.5);
        assert_eq!(r["names_agree"], false);
        assert_eq!(r["agree"], false);
        let r = compare(
            &a,
            &Said {
                text: "no call".into(),
                calls: vec![],
            },
            0.5,
        );
        assert_eq!(r["kind"], "tool_calls");
        assert_eq!(r["agree"], false);
    }

    #[test]
    fn json_compares_by_value_and_text_by_similarity() {
        let j = |t: &str| Said {
            text: t.into(),
            calls: vec![],
        };
        let r = compare(
            &j("{\"a\": 1, \"b\": [1,2]}"),
            &j("```json\n{\"b\":[1,2],\"a\":1}\n```"),
            0.5,
        );
        assert_eq!(
            (r["kind"].as_str(), r["agree"].as_bool()),
            (Some("json"), Some(true))
        );
        let r = compare(&j("{\"a\": 1}"), &j("{\"a\": 2}"), 0.5);
        assert_eq!(r["agree"], false);
        let r = compare(
            &j("The capital of France is Paris."),
            &j("the capital of france is paris"),
            0.5,
        );
        assert_eq!(
            (r["kind"].as_str(), r["agree"].as_bool()),
            (Some("text"), Some(true))
        );
        assert_eq!(r["similarity"], 1.0);
        let r = compare(
            &j("The capital of France is Paris."),
            &j("Bananas are yellow fruit."),
            0.5,
        );
        assert_eq!(r["agree"], false);
        assert!(r["similarity"].as_f64().unwrap() < 0.2);
        assert!((similarity("a b c d", "a x c d") - 0.75).abs() < 1e-9);
    }

    #[test]
    fn answers_of_both_formats_say_the_same() {
        let ant = json!({"content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "x"}}]});
        let oai = json!({"choices": [{"message": {"role": "assistant", "content": "Let me look.",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "read", "arguments": "{\"path\":\"x\"}"}}]}}]});
        assert_eq!(said(Flavor::Anthropic, &ant), said(Flavor::OpenAi, &oai));
        let legacy = json!({"choices": [{"text": "hi"}]});
        assert_eq!(said(Flavor::OpenAi, &legacy).text, "hi");
    }
}
