//! `backstop serve`: the OpenAI- and Anthropic-compatible HTTP server (crates/server).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use backstop_server::config_file;
use backstop_server::{FailoverConfig, ModelNames, ServeConfig};
use clap::{Args, ValueEnum};

use crate::options::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (loopback by default; others warn without --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 = any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generated at once, all in one forward pass per step (each may fill up to
    /// --ctx-size of the KV cache, kept after it ends as a prompt-prefix cache; see
    /// --kv-budget).
    #[arg(long = "parallel", visible_alias = "np", default_value_t = 1)]
    pub parallel: usize,
    /// Requests that may wait for a free sequence; beyond that, 503 (OpenAI) or 529 (Anthropic).
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// KV cache budget in tokens, shared by the running sequences and the cached prompt
    /// prefixes: a request starts when its prompt plus max_tokens fit, else it waits in the
    /// queue (cached prefixes are given up first, least recently used). 0 = --parallel x
    /// --ctx-size.
    #[arg(long = "kv-budget", value_name = "TOKENS", default_value_t = 0)]
    pub kv_budget: usize,
    /// Require this key (as `Authorization: Bearer KEY` or `x-api-key: KEY`); repeatable.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Vec<String>,
    /// Read keys from a file, one per line.
    #[arg(long = "api-key-file", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Name listed by /v1/models (default: the file's name without .gguf).
    #[arg(long = "served-model-name", value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// More names (globs such as 'claude-*') this model answers to; repeatable.
    #[arg(long = "alias", value_name = "PATTERN")]
    pub alias: Vec<String>,
    /// Answer only the served name and aliases (404 for others) instead of any name.
    #[arg(long)]
    pub strict_model_names: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds in-flight requests may continue after SIGTERM before they are cut short.
    #[arg(long, default_value_t = 3.0)]
    pub shutdown_grace: f64,
    /// Forward to a cloud first: `anthropic=https://api.anthropic.com` (for /v1/messages) or
    /// `openai=https://api.openai.com` (the other /v1 routes); repeat a format for a chain
    /// tried in order. A format with no upstream of its own is served by the other's,
    /// translated. The local model answers when they all fail. Without it (or --config)
    /// backstop never opens an outbound connection.
    #[arg(long = "upstream", value_name = "FORMAT=URL")]
    pub upstream: Vec<String>,
    /// Upstreams, routes (chains), keys, model maps, health checks and councils from a TOML
    /// file (docs/failover.md); instead of --upstream.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds between health checks of each --upstream (GET /v1/models; 0 = none).
    #[arg(long, default_value_t = 15.0)]
    pub probe_interval: f64,
    /// Also fall back on HTTP 429 (rate limited) from the cloud.
    #[arg(long)]
    pub fallback_on_429: bool,
    /// Extra upstream attempts after a failure, within the first-byte deadline.
    #[arg(long, default_value_t = 0)]
    pub upstream_retries: u32,
    /// Seconds to connect to the cloud.
    #[arg(long, default_value_t = 3.0)]
    pub connect_timeout: f64,
    /// Seconds to the first response byte for non-streamed requests.
    #[arg(long, default_value_t = 20.0)]
    pub first_byte_timeout: f64,
    /// Seconds to the first event for streamed requests.
    #[arg(long, default_value_t = 10.0)]
    pub stream_first_byte_timeout: f64,
    /// Seconds a cloud stream may stay silent before it counts as broken.
    #[arg(long, default_value_t = 30.0)]
    pub stream_idle_timeout: f64,
    /// Consecutive cloud failures that open the circuit breaker (it also opens when more
    /// than half of the last 20 outcomes failed).
    #[arg(long, default_value_t = 5)]
    pub breaker_failures: u32,
    /// Seconds the breaker stays open before one probe request tries the cloud again.
    #[arg(long, default_value_t = 30.0)]
    pub breaker_cooldown: f64,
    /// Log lines on stderr as text or as one JSON object per line; levels from RUST_LOG
    /// (default info: one line per request, breaker changes, upstream failures).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr; `RUST_LOG` picks levels (`info` unless set).
fn init_logging(format: LogFormat) -> Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        bail!("{flag} must be a number of seconds between 0 and 86400, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn serve(a: ServeArgs) -> Result<()> {
    init_logging(a.log_format)?;
    let model_path = a.model.path()?;
    if a.parallel == 0 || a.parallel > backstop_server::MAX_PARALLEL {
        bail!(
            "--parallel must be between 1 and {}",
            backstop_server::MAX_PARALLEL
        );
    }
    let shutdown_grace = seconds("--shutdown-grace", a.shutdown_grace)?;
    let knobs = FailoverConfig {
        fallback_on_429: a.fallback_on_429,
        retries: a.upstream_retries,
        connect_timeout: seconds("--connect-timeout", a.connect_timeout)?,
        first_byte_timeout: seconds("--first-byte-timeout", a.first_byte_timeout)?,
        stream_first_byte_timeout: seconds(
            "--stream-first-byte-timeout",
            a.stream_first_byte_timeout,
        )?,
        stream_idle_timeout: seconds("--stream-idle-timeout", a.stream_idle_timeout)?,
        breaker_failures: a.breaker_failures.max(1),
        breaker_cooldown: seconds("--breaker-cooldown", a.breaker_cooldown)?,
        ..FailoverConfig::default()
    };
    let failover = match &a.config {
        Some(_) if !a.upstream.is_empty() => {
            bail!("give upstreams with --config or with --upstream, not both")
        }
        Some(path) => config_file::load(path, knobs, &|k| std::env::var(k).ok())?,
        None => config_file::from_flags(
            &a.upstream,
            seconds("--probe-interval", a.probe_interval)?,
            knobs,
        )?,
    };
    let mut keys: Vec<String> = a.api_key.iter().map(|k| k.trim().to_owned()).collect();
    if let Some(f) = &a.api_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read API key file {}", f.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
        if keys.is_empty() {
            bail!("API key file {} holds no keys", f.display());
        }
    }
    if keys.iter().any(String::is_empty) {
        bail!("--api-key must not be empty");
    }
    let served = a.served_model_name.clone().unwrap_or_else(|| {
        model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into())
    });
    let config = ServeConfig {
        model_path: {
            // Read a big file in with progress before the server maps it; the server reports
            // the time its load took.
            crate::options::read_in(&model_path);
            model_path.clone()
        },
        engine: a.model.engine_options()?,
        n_ctx: a.model.ctx_size,
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        queue: a.queue,
        kv_budget: a.kv_budget,
        api_keys: keys,
        names: ModelNames {
            served,
            aliases: a.alias,
            strict: a.strict_model_names,
        },
        max_body_bytes: a.max_body_bytes,
        shutdown_grace,
        failover,
    };
    backstop_server::run(config)?;
    Ok(())
}
