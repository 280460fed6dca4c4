//! `backstop serve`'s settings, including the failover front's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use backstop_engine::generate::EngineOptions;

use crate::names::ModelNames;
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
    /// Accepted keys; empty = no authentication.
    pub api_keys: Vec<String>,
    pub names: ModelNames,
    pub max_body_bytes: usize,
    /// After SIGTERM, how long in-flight generations may run before they are cut short.
    pub shutdown_grace: Duration,
    /// Cloud upstreams to try first (empty: local only, no outbound connection ever).
    pub failover: FailoverConfig,
}

/// `--upstream NAME=URL`.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    pub flavor: Flavor,
    pub base_url: String,
}

impl UpstreamSpec {
    pub fn name(&self) -> &'static str {
        self.flavor.name()
    }
}

#[derive(Clone, Debug)]
pub struct FailoverConfig {
    pub upstreams: Vec<UpstreamSpec>,
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
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            fallback_on_429: false,
            retries: 0,
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(20),
            stream_first_byte_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}
