//! Which model names the server answers to. By default every name is served by the loaded
//! weights: gateways and Claude-compatible clients forward cloud names (`gpt-4o`,
//! `claude-sonnet-4-5`), and a 404 makes LiteLLM cool the deployment down. Strict mode
//! answers only the served name and the `--alias` globs.

#[derive(Clone, Debug)]
pub struct ModelNames {
    /// The name `/v1/models` lists first (`--served-model-name`, else the file's stem).
    pub served: String,
    /// `--alias` patterns; `*` matches any run of characters, `?` one character.
    pub aliases: Vec<String>,
    pub strict: bool,
}

impl ModelNames {
    /// Whether a request naming `model` is served (an absent name always is).
    pub fn accepts(&self, model: Option<&str>) -> bool {
        let Some(m) = model else { return true };
        !self.strict || m == self.served || self.aliases.iter().any(|p| glob_match(p, m))
    }

    /// The names `/v1/models` lists: the served name, then aliases that are plain names
    /// (a pattern is not a model id a client could pick).
    pub fn listed(&self) -> Vec<&str> {
        let mut out = vec![self.served.as_str()];
        for a in &self.aliases {
            if !a.contains(['*', '?']) && !out.contains(&a.as_str()) {
                out.push(a);
            }
        }
        out
    }
}

/// Glob match over characters with `*` and `?`; iterative with one backtrack point, so a
/// hostile pattern or name cannot blow up the time.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("claude-*", "claude-sonnet-4-5"));
        assert!(glob_match("*", ""));
        assert!(glob_match("gpt-4?", "gpt-4o"));
        assert!(!glob_match("gpt-4?", "gpt-4o-mini"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(!glob_match("claude-*", "gpt-4o"));
    }

    #[test]
    fn lenient_by_default_strict_on_request() {
        let mut n = ModelNames {
            served: "smol".into(),
            aliases: vec!["claude-*".into(), "gpt-4o".into()],
            strict: false,
        };
        assert!(n.accepts(Some("anything")));
        n.strict = true;
        assert!(n.accepts(Some("smol")));
        assert!(n.accepts(Some("claude-haiku-4-5")));
        assert!(n.accepts(Some("gpt-4o")));
        assert!(!n.accepts(Some("gpt-5")));
        assert!(n.accepts(None));
        assert_eq!(n.listed(), vec!["smol", "gpt-4o"]);
    }
}
