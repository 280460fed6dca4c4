//! `backstop serve`: the OpenAI- and Anthropic-compatible HTTP server (crates/server).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use backstop_server::{ModelNames, ServeConfig};
use clap::Args;

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
    /// Sequences generated at once (each holds a full --ctx-size KV cache).
    #[arg(long = "parallel", visible_alias = "np", default_value_t = 1)]
    pub parallel: usize,
    /// Requests that may wait for a free sequence; beyond that, 503 (OpenAI) or 529 (Anthropic).
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
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
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let model_path = a.model.path()?;
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if !(a.shutdown_grace.is_finite() && a.shutdown_grace >= 0.0) {
        bail!("--shutdown-grace must be a non-negative number of seconds");
    }
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
        engine: a.model.engine_options(),
        n_ctx: a.model.ctx_size,
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        queue: a.queue,
        api_keys: keys,
        names: ModelNames {
            served,
            aliases: a.alias,
            strict: a.strict_model_names,
        },
        max_body_bytes: a.max_body_bytes,
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
    };
    backstop_server::run(config)?;
    Ok(())
}
