//! The failover front's configuration: `backstop serve --config backstop.toml`, and the
//! `--upstream FORMAT=URL` short form. Both end in a checked `FailoverConfig`; every mistake
//! (unknown format or name, a missing key variable, an upstream twice in a chain, an empty
//! chain) is one line at start-up, never a surprise on the first request.
//!
//! ```toml
//! [[upstream]]
//! name = "claude"                    # unique; in logs, metrics and x-backstop-served-by
//! format = "anthropic"               # or "openai"
//! url = "https://api.anthropic.com"
//! key_env = "ANTHROPIC_API_KEY"      # or key_file = "/run/secrets/claude"; neither: the
//!                                    # client's own credentials go through
//! models = { "gpt-4o*" = "claude-sonnet-4-5" }   # client name (glob) -> this upstream's
//! probe_interval_s = 15              # active health check; 0 = none
//! probe_path = "/v1/models"
//!
//! [route.anthropic]                  # requests arriving as Anthropic Messages
//! chain = ["claude", "openai-backup"]  # tried in order, then the local model
//!
//! [route.anthropic.council]          # optional: ask several at once
//! policy = "cross-check"             # first | primary | cross-check
//! members = ["claude", "openai-backup"]  # default: the chain
//! local = true                       # the local model sits on the council
//! primary = "claude"                 # default: the first member ("local" for the model)
//! deadline_s = 60
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::config::{
    other, CouncilSpec, Credentials, FailoverConfig, Policy, ProbeSpec, RouteSpec, UpstreamSpec,
};
use crate::wire::Flavor;

/// A bad configuration, said in one line.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Default interval of the active health check.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    upstream: Vec<UpstreamToml>,
    #[serde(default)]
    route: BTreeMap<String, RouteToml>,
    #[serde(default)]
    failover: Option<FailoverToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamToml {
    name: String,
    format: String,
    url: String,
    key_env: Option<String>,
    key_file: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, String>,
    probe_interval_s: Option<f64>,
    probe_timeout_s: Option<f64>,
    probe_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteToml {
    chain: Option<Vec<String>>,
    council: Option<CouncilToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CouncilToml {
    policy: String,
    members: Option<Vec<String>>,
    local: Option<bool>,
    primary: Option<String>,
    deadline_s: Option<f64>,
    primary_deadline_s: Option<f64>,
    max_concurrent: Option<usize>,
    text_agreement: Option<f64>,
}

/// The same knobs as the `serve` flags; a value here wins over the flag's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverToml {
    fallback_on_429: Option<bool>,
    retries: Option<u32>,
    connect_timeout_s: Option<f64>,
    first_byte_timeout_s: Option<f64>,
    stream_first_byte_timeout_s: Option<f64>,
    stream_idle_timeout_s: Option<f64>,
    breaker_failures: Option<u32>,
    breaker_cooldown_s: Option<f64>,
    default_max_tokens: Option<u64>,
}

pub fn parse_format(s: &str) -> Result<Flavor, ConfigError> {
    match s.trim() {
        "anthropic" => Ok(Flavor::Anthropic),
        "openai" => Ok(Flavor::OpenAi),
        other => Err(invalid(format!(
            "unknown wire format {other:?}: it must be \"anthropic\" or \"openai\""
        ))),
    }
}

fn check_url(what: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
        return Err(invalid(format!(
            "{what}: the URL {url:?} must start with http:// or https://"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

pub fn seconds(what: &str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        return Err(invalid(format!(
            "{what} must be a number of seconds between 0 and 86400, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Seconds of at least `min` (or exactly 0 where `zero_ok`: "none").
fn at_least(what: &str, v: f64, min: f64, zero_ok: bool) -> Result<Duration, ConfigError> {
    let d = seconds(what, v)?;
    if (zero_ok && v == 0.0) || v >= min {
        return Ok(d);
    }
    Err(invalid(format!(
        "{what} must be at least {min} s{}, got {v}",
        if zero_ok { " (or 0 for none)" } else { "" }
    )))
}

/// A key must fit in a header, or every request would silently go without it.
fn header_safe(what: &str, key: &str) -> Result<String, ConfigError> {
    if key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(key.to_owned())
    } else {
        Err(invalid(format!(
            "{what}: the key holds characters a header cannot carry"
        )))
    }
}

fn probe(interval: Duration, timeout: Option<Duration>, path: Option<&str>) -> Option<ProbeSpec> {
    (!interval.is_zero()).then(|| ProbeSpec {
        path: path.unwrap_or("/v1/models").to_owned(),
        interval,
        // A probe must end before the next one starts.
        timeout: timeout.unwrap_or(Duration::from_secs(5)).min(interval),
    })
}

/// The short form: `--upstream FORMAT=URL`, repeatable. Repeating a format makes a chain in
/// the order given (named `anthropic`, `anthropic-2`, ...); a format with no upstream of its
/// own is served by the other's through translation. Client credentials go through.
pub fn from_flags(
    flags: &[String],
    probe_interval: Duration,
    mut base: FailoverConfig,
) -> Result<FailoverConfig, ConfigError> {
    for f in flags {
        let (format, url) = f.split_once('=').ok_or_else(|| {
            invalid(format!(
                "--upstream {f:?}: expected FORMAT=URL, e.g. anthropic=https://api.anthropic.com"
            ))
        })?;
        let format = parse_format(format).map_err(|e| invalid(format!("--upstream: {e}")))?;
        let base_url = check_url(&format!("--upstream {f}"), url)?;
        let n = base.upstreams.iter().filter(|u| u.format == format).count();
        let name = if n == 0 {
            format.name().to_owned()
        } else {
            format!("{}-{}", format.name(), n + 1)
        };
        base.upstreams.push(UpstreamSpec {
            name,
            format,
            base_url,
            credentials: Credentials::Forward,
            models: Vec::new(),
            probe: probe(probe_interval, None, None),
        });
    }
    base.anthropic.chain = base.default_chain(Flavor::Anthropic);
    base.openai.chain = base.default_chain(Flavor::OpenAi);
    Ok(base)
}

/// Read `--config FILE`. `env` looks up environment variables (keys named by `key_env`);
/// relative `key_file` paths are read from the config file's folder.
pub fn load(
    path: &Path,
    base: FailoverConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FailoverConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, env, dir).map_err(|e| match e {
        ConfigError::Invalid(m) => ConfigError::Syntax {
            path: path.display().to_string(),
            message: m,
        },
        e => e,
    })
}

pub fn parse(
    text: &str,
    mut cfg: FailoverConfig,
    env: &dyn Fn(&str) -> Option<String>,
    dir: &Path,
) -> Result<FailoverConfig, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| {
        // toml's messages span several lines (a source excerpt); keep the first.
        let m = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        match e.span() {
            Some(s) => invalid(format!(
                "line {}: {m}",
                text.get(..s.start).unwrap_or(text).matches('\n').count() + 1
            )),
            None => invalid(m),
        }
    })?;
    if let Some(f) = &file.failover {
        apply_failover(f, &mut cfg)?;
    }
    for u in &file.upstream {
        let what = format!("upstream {:?}", u.name);
        let name_ok = !u.name.is_empty()
            && u.name.len() <= 64
            && u.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        // Names go into metric labels and the `name: reason; ...` fallback header.
        if !name_ok || u.name == "local" {
            return Err(invalid(format!(
                "{what}: a name is 1 to 64 of A-Z a-z 0-9 . _ - and not \"local\""
            )));
        }
        if cfg.upstreams.iter().any(|x| x.name == u.name) {
            return Err(invalid(format!("{what} is defined twice")));
        }
        let format = parse_format(&u.format).map_err(|e| invalid(format!("{what}: {e}")))?;
        let credentials = match (&u.key_env, &u.key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "{what}: give key_env or key_file, not both"
                )))
            }
            (Some(var), None) => match env(var) {
                Some(k) if !k.trim().is_empty() => Credentials::Key(header_safe(&what, k.trim())?),
                _ => {
                    return Err(invalid(format!(
                        "{what}: the environment variable {var} (key_env) is not set"
                    )))
                }
            },
            (None, Some(f)) => {
                let p = dir.join(f);
                let k = std::fs::read_to_string(&p).map_err(|e| {
                    invalid(format!("{what}: cannot read key_file {}: {e}", p.display()))
                })?;
                let k = k.trim();
                if k.is_empty() {
                    return Err(invalid(format!(
                        "{what}: key_file {} is empty",
                        p.display()
                    )));
                }
                Credentials::Key(header_safe(&what, k)?)
            }
            (None, None) => Credentials::Forward,
        };
        let interval = match u.probe_interval_s {
            Some(s) => at_least(&format!("{what}: probe_interval_s"), s, 0.1, true)?,
            None => DEFAULT_PROBE_INTERVAL,
        };
        let timeout = u
            .probe_timeout_s
            .map(|s| at_least(&format!("{what}: probe_timeout_s"), s, 0.05, false))
            .transpose()?;
        if let Some(p) = &u.probe_path {
            if !p.starts_with('/') {
                return Err(invalid(format!("{what}: probe_path must start with /")));
            }
        }
        cfg.upstreams.push(UpstreamSpec {
            name: u.name.clone(),
            format,
            base_url: check_url(&what, &u.url)?,
            credentials,
            models: u.models.clone().into_iter().collect(),
            probe: probe(interval, timeout, u.probe_path.as_deref()),
        });
    }
    for key in file.route.keys() {
        if key != "anthropic" && key != "openai" {
            return Err(invalid(format!(
                "[route.{key}]: routes are named by the wire format requests arrive in, \
                 \"anthropic\" or \"openai\""
            )));
        }
    }
    for flavor in [Flavor::Anthropic, Flavor::OpenAi] {
        let route = match file.route.get(flavor.name()) {
            Some(r) => build_route(&cfg, flavor, r)?,
            None => RouteSpec {
                chain: cfg.default_chain(flavor),
                council: None,
            },
        };
        match flavor {
            Flavor::Anthropic => cfg.anthropic = route,
            Flavor::OpenAi => cfg.openai = route,
        }
    }
    Ok(cfg)
}

fn index_of(cfg: &FailoverConfig, what: &str, name: &str) -> Result<usize, ConfigError> {
    cfg.upstreams
        .iter()
        .position(|u| u.name == name)
        .ok_or_else(|| invalid(format!("{what}: no upstream is named {name:?}")))
}

fn names_to_indices(
    cfg: &FailoverConfig,
    what: &str,
    names: &[String],
) -> Result<Vec<usize>, ConfigError> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let i = index_of(cfg, what, n)?;
        if out.contains(&i) {
            // A chain that comes back to an upstream would try a failing one twice.
            return Err(invalid(format!("{what}: {n:?} appears twice")));
        }
        out.push(i);
    }
    Ok(out)
}

fn build_route(
    cfg: &FailoverConfig,
    flavor: Flavor,
    r: &RouteToml,
) -> Result<RouteSpec, ConfigError> {
    let what = format!("route.{}", flavor.name());
    let chain = match &r.chain {
        Some(names) if names.is_empty() => {
            return Err(invalid(format!(
                "{what}: the chain is empty (leave `chain` out to use the upstreams of format \
                 {} or, if none, {})",
                flavor.name(),
                other(flavor).name()
            )))
        }
        Some(names) => names_to_indices(cfg, &format!("{what}.chain"), names)?,
        None => cfg.default_chain(flavor),
    };
    let council = match &r.council {
        None => None,
        Some(c) => Some(build_council(cfg, &format!("{what}.council"), c, &chain)?),
    };
    Ok(RouteSpec { chain, council })
}

fn build_council(
    cfg: &FailoverConfig,
    what: &str,
    c: &CouncilToml,
    chain: &[usize],
) -> Result<CouncilSpec, ConfigError> {
    let policy = Policy::parse(&c.policy).ok_or_else(|| {
        invalid(format!(
            "{what}: unknown policy {:?} (first, primary or cross-check)",
            c.policy
        ))
    })?;
    let members = match &c.members {
        Some(m) => names_to_indices(cfg, &format!("{what}.members"), m)?,
        None => chain.to_vec(),
    };
    let local = c.local.unwrap_or(true);
    if members.len() + usize::from(local) < 2 {
        return Err(invalid(format!(
            "{what}: a council needs at least two members (upstreams, and local)"
        )));
    }
    let primary = match c.primary.as_deref() {
        Some("local") if local => None,
        Some("local") => {
            return Err(invalid(format!(
                "{what}: primary is \"local\" but local = false"
            )))
        }
        Some(name) => {
            let i = index_of(cfg, &format!("{what}.primary"), name)?;
            if !members.contains(&i) {
                return Err(invalid(format!("{what}: primary {name:?} is not a member")));
            }
            Some(i)
        }
        None => members.first().copied(),
    };
    let deadline = at_least(
        &format!("{what}.deadline_s"),
        c.deadline_s.unwrap_or(60.0),
        0.1,
        false,
    )?;
    let primary_deadline = seconds(
        &format!("{what}.primary_deadline_s"),
        c.primary_deadline_s.unwrap_or(deadline.as_secs_f64() / 2.0),
    )?
    .min(deadline);
    let text_agreement = c.text_agreement.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&text_agreement) {
        return Err(invalid(format!(
            "{what}.text_agreement must be between 0 and 1"
        )));
    }
    Ok(CouncilSpec {
        policy,
        members,
        local,
        primary,
        deadline,
        primary_deadline,
        max_concurrent: c.max_concurrent.unwrap_or(4).max(1),
        text_agreement,
    })
}

fn apply_failover(f: &FailoverToml, cfg: &mut FailoverConfig) -> Result<(), ConfigError> {
    let s = |what: &str, v: Option<f64>, into: &mut Duration| -> Result<(), ConfigError> {
        if let Some(v) = v {
            *into = seconds(&format!("failover.{what}"), v)?;
        }
        Ok(())
    };
    s(
        "connect_timeout_s",
        f.connect_timeout_s,
        &mut cfg.connect_timeout,
    )?;
    s(
        "first_byte_timeout_s",
        f.first_byte_timeout_s,
        &mut cfg.first_byte_timeout,
    )?;
    s(
        "stream_first_byte_timeout_s",
        f.stream_first_byte_timeout_s,
        &mut cfg.stream_first_byte_timeout,
    )?;
    s(
        "stream_idle_timeout_s",
        f.stream_idle_timeout_s,
        &mut cfg.stream_idle_timeout,
    )?;
    s(
        "breaker_cooldown_s",
        f.breaker_cooldown_s,
        &mut cfg.breaker_cooldown,
    )?;
    if let Some(v) = f.fallback_on_429 {
        cfg.fallback_on_429 = v;
    }
    if let Some(v) = f.retries {
        cfg.retries = v;
    }
    if let Some(v) = f.breaker_failures {
        cfg.breaker_failures = v.max(1);
    }
    if let Some(v) = f.default_max_tokens {
        if v == 0 {
            return Err(invalid("failover.default_max_tokens must be at least 1"));
        }
        cfg.default_max_tokens = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "KEY_A" => Some("sk-a".into()),
            "KEY_B" => Some("sk-b".into()),
            _ => None,
        }
    }

    fn load_str(text: &str) -> Result<FailoverConfig, ConfigError> {
        parse(text, FailoverConfig::default(), &env, Path::new("."))
    }

    const TWO: &str = r#"
        [[upstream]]
        name = "a"
        format = "anthropic"
        url = "http://127.0.0.1:1/"
        key_env = "KEY_A"
        probe_interval_s = 0

        [[upstream]]
        name = "b"
        format = "openai"
        url = "http://127.0.0.1:2/v1"
        key_env = "KEY_B"
        models = { "*" = "gpt-4o-mini" }
    "#;

    #[test]
    fn a_file_gives_upstreams_keys_and_default_chains() {
        let c = load_str(TWO).unwrap();
        assert_eq!(c.upstreams.len(), 2);
        assert!(matches!(&c.upstreams[0].credentials, Credentials::Key(k) if k == "sk-a"));
        assert!(matches!(&c.upstreams[1].credentials, Credentials::Key(k) if k == "sk-b"));
        assert_eq!(c.upstreams[0].base_url, "http://127.0.0.1:1");
        assert!(c.upstreams[0].probe.is_none());
        assert_eq!(
            c.upstreams[1].probe.as_ref().unwrap().interval,
            DEFAULT_PROBE_INTERVAL
        );
        assert_eq!(c.anthropic.chain, vec![0]);
        assert_eq!(c.openai.chain, vec![1]);
        assert_eq!(c.upstreams[1].map_model("claude-x"), Some("gpt-4o-mini"));
    }

    #[test]
    fn routes_and_councils_resolve_names() {
        let text = format!(
            "{TWO}\n[route.anthropic]\nchain = [\"a\", \"b\"]\n\
             [route.anthropic.council]\npolicy = \"cross-check\"\nprimary = \"b\"\n\
             deadline_s = 8\n"
        );
        let c = load_str(&text).unwrap();
        assert_eq!(c.anthropic.chain, vec![0, 1]);
        let k = c.anthropic.council.unwrap();
        assert_eq!(k.policy, Policy::CrossCheck);
        assert_eq!(k.members, vec![0, 1]);
        assert!(k.local);
        assert_eq!(k.primary, Some(1));
        assert_eq!(k.deadline, Duration::from_secs(8));
        assert_eq!(k.primary_deadline, Duration::from_secs(4));
    }

    #[test]
    fn bad_configurations_are_one_line_errors() {
        let cases = [
            (
                TWO.replace("\"openai\"", "\"gemini\""),
                "unknown wire format \"gemini\"",
            ),
            (TWO.replace("KEY_B", "KEY_MISSING"), "KEY_MISSING"),
            (
                format!("{TWO}\n[route.openai]\nchain = []\n"),
                "the chain is empty",
            ),
            (
                format!("{TWO}\n[route.openai]\nchain = [\"b\", \"a\", \"b\"]\n"),
                "appears twice",
            ),
            (
                format!("{TWO}\n[route.openai]\nchain = [\"c\"]\n"),
                "no upstream is named \"c\"",
            ),
            (format!("{TWO}\n[route.gemini]\n"), "routes are named"),
            (
                format!("{TWO}\n[route.openai.council]\npolicy = \"vote\"\n"),
                "unknown policy",
            ),
            (
                TWO.replace("url = \"http://127.0.0.1:1/\"", "url = \"ftp://x\""),
                "http://",
            ),
            (format!("{TWO}\nextra = 1\n"), "line"),
            (TWO.replace("name = \"b\"", "name = \"a\""), "defined twice"),
        ];
        for (text, want) in cases {
            let e = load_str(&text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            let m = e.to_string();
            assert!(m.contains(want), "{m:?} lacks {want:?}");
            assert!(!m.contains('\n'), "not one line: {m:?}");
            assert!(!m.contains("sk-"), "a key in an error: {m}");
        }
    }

    #[test]
    fn the_short_form_repeats_into_a_chain_and_translates_a_lone_format() {
        let flags = vec![
            "openai=http://127.0.0.1:9/v1".to_owned(),
            "openai=http://127.0.0.1:10/v1/".to_owned(),
        ];
        let c = from_flags(&flags, Duration::ZERO, FailoverConfig::default()).unwrap();
        let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["openai", "openai-2"]);
        assert_eq!(c.openai.chain, vec![0, 1]);
        assert_eq!(c.anthropic.chain, vec![0, 1], "served through translation");
        assert!(c.upstreams[0].probe.is_none());
        assert!(from_flags(&["gemini=http://x.y".into()], Duration::ZERO, c.clone()).is_err());
        assert!(from_flags(&["openai".into()], Duration::ZERO, c).is_err());
    }
}
