//! backstop-server: the OpenAI- and Anthropic-compatible HTTP tier over backstop-engine.
//!
//! The process binds first and loads the model after, so `/livez` answers at once and
//! `/health` and `/ready` say 503 until the weights are loaded and warm. Requests are
//! admitted (model name, context length, capacity) before any response byte; generation runs
//! on the scheduler's own threads, never on the async runtime's.
//!
//! Modules import only those below them (docs/design.md, "The server"):
//! 1. `wire` (flavour, endpoint), `error`, `config` and `config_file`, `names`, `metrics`,
//!    `log`, `request`;
//! 2. `core` (the generation request, usage, frames, the encoder interface), `scheduler`,
//!    `state` (the loaded model, tokenizing, admission);
//! 3. `openai`, `anthropic`: one wire format each, parse and encode; `calls`: tool calls in
//!    generated text;
//! 4. `local`: answers a request with the local model through an encoder;
//! 5. `upstream`: the failover front (chains, translation, health checks, councils), which
//!    falls back to `local`;
//! 6. `routes`: the handlers and middleware.

pub mod anthropic;
mod calls;
pub mod config;
pub mod config_file;
pub mod core;
pub mod error;
pub mod local;
pub mod log;
pub mod metrics;
pub mod names;
pub mod openai;
pub mod request;
pub mod routes;
pub mod scheduler;
pub mod state;
pub mod upstream;
pub mod wire;

#[cfg(test)]
mod encode_tests;
#[cfg(test)]
mod routes_tests;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use config::{Credentials, FailoverConfig, ServeConfig, UpstreamSpec};
pub use error::ApiError;
pub use names::ModelNames;
pub use routes::{router, App};
pub use scheduler::MAX_PARALLEL;
pub use state::AppState;
pub use upstream::SERVED_BY;
pub use wire::{Endpoint, Flavor};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot load the model: {0}")]
    Load(#[from] backstop_engine::generate::EngineError),
    #[error("server error: {0}")]
    Io(std::io::Error),
    #[error("cannot set up the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Bind, load the model, serve until SIGINT/SIGTERM, then drain.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        // Two I/O threads are plenty: generation runs on the scheduler's own threads.
        .worker_threads(2)
        .thread_name("backstop-http")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(serve(config))
}

async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Io)?;
    tracing::info!(target: "backstop", "listening on http://{local}");
    if !config.host.is_loopback() && config.api_keys.is_empty() {
        tracing::warn!(
            target: "backstop",
            "listening on {} with no --api-key: anyone who can reach this address can use \
             the model",
            config.host
        );
    }
    let grace = config.shutdown_grace;
    let upstreams = Arc::new(upstream::Upstreams::new(config.failover.clone())?);
    upstream::probe::spawn(&upstreams);
    for flavor in [Flavor::Anthropic, Flavor::OpenAi] {
        let route = config.failover.route(flavor);
        if route.chain.is_empty() {
            continue;
        }
        let chain: Vec<String> = route
            .chain
            .iter()
            .map(|&i| {
                let u = &config.failover.upstreams[i];
                format!("{} ({} at {})", u.name, u.format.name(), u.base_url)
            })
            .collect();
        tracing::info!(
            target: "backstop",
            "{} requests try {}, then the local model{}",
            flavor.name(),
            chain.join(", then "),
            match &route.council {
                Some(c) => format!("; council: {}", c.policy.name()),
                None => String::new(),
            }
        );
    }
    let state = Arc::new(AppState::new(config));

    let loader = Arc::clone(&state);
    let (load_tx, mut load_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        let r = loader.load();
        if r.is_ok() {
            tracing::info!(
                target: "backstop",
                "model {} loaded and warm in {:.2} s; ready",
                loader.weights,
                t0.elapsed().as_secs_f64()
            );
        }
        let _ = load_tx.send(r);
    });

    let app = router(Arc::new(App {
        state: Arc::clone(&state),
        upstreams,
    }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }
    });
    let server = tokio::spawn(async move { server.await });

    let workers;
    tokio::select! {
        r = &mut load_rx => match r {
            Ok(Ok(handles)) => workers = handles,
            Ok(Err(e)) => return Err(ServeError::Load(e)),
            Err(_) => return Err(ServeError::Io(std::io::Error::other("model loader vanished"))),
        },
        _ = shutdown_signal() => {
            tracing::info!(target: "backstop", "stopping before the model finished loading");
            return Ok(());
        }
    }
    shutdown_signal().await;
    tracing::info!(
        target: "backstop",
        "shutting down: no new requests; in-flight ones get {:.1} s",
        grace.as_secs_f64()
    );
    state.draining.store(true, Ordering::Relaxed);
    state.scheduler.close();
    let _ = stop_tx.send(true);

    // In-flight generations may finish within the grace period; then they are cut short so
    // their streams end cleanly, and the process exits even if a client never reads.
    let sched = Arc::clone(&state.scheduler);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        sched.cancel_in_flight();
        // Streams end within a token of the cancel; this bound is for clients that stopped
        // reading, with room for a machine under heavy load.
        tokio::time::sleep(Duration::from_secs(5)).await;
        tracing::warn!(
            target: "backstop",
            "connections still open after the grace period; exiting"
        );
        std::process::exit(0);
    });
    let _ = server.await;
    state.scheduler.cancel_in_flight();
    for w in workers {
        let _ = w.join();
    }
    tracing::info!(target: "backstop", "stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
