//! `backstop serve`'s settings, including the failover front's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use backstop_engine::generate::EngineOptions;

use crate::names::{glob_match, ModelNames};
use crate::wire::Flavor;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub model_path: PathBuf,
    pub engine: EngineOptions,
    /// Context per sequence; 0 = the model's (at most 4096).
    pub n_ctx: usize,
    pub host: IpAddr,
    pub port: u16,
    /// Sequences generating at once.
    pub parallel: usize,
    /// Admitted requests that may wait for a free sequence.
    pub queue: usize,
    /// KV cache tokens shared by all sequences (running ones and cached prefixes); a request
    /// starts when its prompt plus `max_tokens` fit. 0 = `parallel` full contexts.
    pub kv_budget: usize,
    /// Accepted keys; empty = no authentication.
    pub api_keys: Vec<String>,
    pub names: ModelNames,
    pub max_body_bytes: usize,
    /// After SIGTERM, how long in-flight generations may run before they are cut short.
    pub shutdown_grace: Duration,
    /// Cloud upstreams to try first (empty: local only, no outbound connection ever).
    pub failover: FailoverConfig,
}

/// Where an upstream's credentials come from.
#[derive(Clone)]
pub enum Credentials {
    /// The client's own `Authorization` / `x-api-key` go through (moved to the upstream
    /// format's header when the request is translated).
    Forward,
    /// This upstream's own key, read at start-up from an environment variable or a file; the
    /// client's credentials never reach it.
    Key(String),
}

impl std::fmt::Debug for Credentials {
    // Keys never reach a log line, a panic message or a status page.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Forward => f.write_str("Forward"),
            Credentials::Key(_) => f.write_str("Key(***)"),
        }
    }
}

/// One cloud (or any OpenAI/Anthropic-compatible server) in front of the local model.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    /// Unique; in logs, metrics, `/backstop/status` and `x-backstop-served-by`.
    pub name: String,
    /// The wire format it speaks; requests in the other format are translated.
    pub format: Flavor,
    pub base_url: String,
    pub credentials: Credentials,
    /// Client model name (exact, or a `*`/`?` glob) -> the name sent to this upstream. An
    /// exact entry wins, then the longest matching pattern; no match sends the name as is.
    pub models: Vec<(String, String)>,
    /// Active health check; `None` = only real requests feed the breaker.
    pub probe: Option<ProbeSpec>,
}

impl UpstreamSpec {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model name to send for a client's `model`.
    pub fn map_model(&self, model: &str) -> Option<&str> {
        if let Some((_, to)) = self.models.iter().find(|(from, _)| from == model) {
            return Some(to);
        }
        self.models
            .iter()
            .filter(|(from, _)| glob_match(from, model))
            .max_by_key(|(from, _)| from.len())
            .map(|(_, to)| to.as_str())
    }
}

/// An active health check: a cheap request on an interval whose outcome feeds the breaker.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// Path under the base URL (default `/v1/models`: lists models, spends no tokens).
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// How a council picks the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The first complete answer wins; the others are cancelled.
    First,
    /// The primary's answer if it comes within `primary_deadline`, else the first other.
    Primary,
    /// Every answer within the deadline; the primary's is returned with an agreement report.
    CrossCheck,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "first" => Some(Self::First),
            "primary" => Some(Self::Primary),
            "cross-check" | "cross_check" | "crosscheck" => Some(Self::CrossCheck),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Primary => "primary",
            Self::CrossCheck => "cross-check",
        }
    }
}

/// Several models asked at once (upstreams by index into `FailoverConfig::upstreams`, and
/// the local model when `local`).
#[derive(Clone, Debug)]
pub struct CouncilSpec {
    pub policy: Policy,
    pub members: Vec<usize>,
    pub local: bool,
    /// The member whose answer `primary` and `cross-check` prefer: an upstream, or `None`
    /// for the local model.
    pub primary: Option<usize>,
    /// No council request outlives this.
    pub deadline: Duration,
    pub primary_deadline: Duration,
    /// Council requests in flight at once; beyond it a request takes the route's chain.
    pub max_concurrent: usize,
    /// Text answers agree when their similarity (0..1) is at least this.
    pub text_agreement: f64,
}

/// What requests arriving in one wire format do: try `chain` in order, then the local model.
#[derive(Clone, Debug, Default)]
pub struct RouteSpec {
    pub chain: Vec<usize>,
    /// The council this route uses by default (a request may ask for one with a header).
    pub council: Option<CouncilSpec>,
}

#[derive(Clone, Debug)]
pub struct FailoverConfig {
    pub upstreams: Vec<UpstreamSpec>,
    /// Requests arriving as Anthropic Messages (`/v1/messages*`).
    pub anthropic: RouteSpec,
    /// Requests arriving in OpenAI's format (the other `/v1` routes).
    pub openai: RouteSpec,
    pub fallback_on_429: bool,
    /// Extra upstream attempts after a failure (0 = one attempt in all).
    pub retries: u32,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub stream_first_byte_timeout: Duration,
    /// A stream silent this long after it began counts as broken.
    pub stream_idle_timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// `max_tokens` for an OpenAI request without one that goes to an Anthropic upstream
    /// (Anthropic requires it).
    pub default_max_tokens: u64,
}

impl FailoverConfig {
    pub fn route(&self, flavor: Flavor) -> &RouteSpec {
        match flavor {
            Flavor::Anthropic => &self.anthropic,
            Flavor::OpenAi => &self.openai,
        }
    }

    /// The chain a route gets when none is configured: the upstreams of its own format in
    /// order; with none, those of the other format (served through translation).
    pub fn default_chain(&self, flavor: Flavor) -> Vec<usize> {
        let of = |f: Flavor| -> Vec<usize> {
            (0..self.upstreams.len())
                .filter(|&i| self.upstreams[i].format == f)
                .collect()
        };
        let own = of(flavor);
        if own.is_empty() {
            of(other(flavor))
        } else {
            own
        }
    }
}

pub fn other(f: Flavor) -> Flavor {
    match f {
        Flavor::Anthropic => Flavor::OpenAi,
        Flavor::OpenAi => Flavor::Anthropic,
    }
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            anthropic: RouteSpec::default(),
            openai: RouteSpec::default(),
            fallback_on_429: false,
            retries: 0,
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(20),
            stream_first_byte_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            default_max_tokens: 4096,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(models: &[(&str, &str)]) -> UpstreamSpec {
        UpstreamSpec {
            name: "u".into(),
            format: Flavor::OpenAi,
            base_url: "http://x".into(),
            credentials: Credentials::Key("sk-secret".into()),
            models: models
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            probe: None,
        }
    }

    #[test]
    fn model_map_prefers_exact_then_the_longest_pattern() {
        let s = spec(&[
            ("*", "gpt-4o-mini"),
            ("claude-opus-*", "gpt-4o"),
            ("claude-opus-4", "o3"),
        ]);
        assert_eq!(s.map_model("claude-opus-4"), Some("o3"));
        assert_eq!(s.map_model("claude-opus-4-1"), Some("gpt-4o"));
        assert_eq!(s.map_model("claude-haiku"), Some("gpt-4o-mini"));
        assert_eq!(spec(&[]).map_model("x"), None);
    }

    #[test]
    fn keys_never_print() {
        let s = format!("{:?}", spec(&[]));
        assert!(!s.contains("sk-secret"), "{s}");
    }

    #[test]
    fn default_chains_use_the_own_format_else_translate() {
        let mut c = FailoverConfig::default();
        let mut o = spec(&[]);
        o.name = "o1".into();
        c.upstreams.push(o.clone());
        o.name = "o2".into();
        c.upstreams.push(o);
        assert_eq!(c.default_chain(Flavor::OpenAi), vec![0, 1]);
        assert_eq!(c.default_chain(Flavor::Anthropic), vec![0, 1]);
        let mut a = spec(&[]);
        a.format = Flavor::Anthropic;
        a.name = "a".into();
        c.upstreams.push(a);
        assert_eq!(c.default_chain(Flavor::Anthropic), vec![2]);
    }
}
