//! Active health checks: each upstream with a `ProbeSpec` gets a cheap request on an interval
//! (by default `GET /v1/models`, which spends no tokens), and the outcome feeds the same
//! breaker as real requests. An outage that starts while traffic is idle opens the breaker
//! before the first user request waits on a timeout; a passing check closes it again.
//!
//! Down means: no connection, a timeout, or a 5xx/529. With the upstream's own key a 401/403
//! is down too (a revoked key or a login outage fails every request the same way); without
//! one the check carries no credentials, so any other answer shows the server is up.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use reqwest::header;

use super::{error_chain, own_auth, Upstream, Upstreams};
use crate::config::{Credentials, ProbeSpec};
use crate::wire::Flavor;

/// The `user-agent` of health checks, so an upstream's logs can tell them apart.
pub const USER_AGENT: &str = concat!("backstop-health-check/", env!("CARGO_PKG_VERSION"));

/// Start one checking task per upstream that has a health check (inside the runtime).
pub fn spawn(ups: &Arc<Upstreams>) {
    for i in 0..ups.all().len() {
        if ups.at(i).spec.probe.is_none() {
            continue;
        }
        let ups = Arc::clone(ups);
        tokio::spawn(async move {
            let up = ups.at(i);
            let Some(p) = up.spec.probe.clone() else {
                return;
            };
            let mut tick = tokio::time::interval(p.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (ok, why) = check(up, &p).await;
                if !ok {
                    tracing::debug!(
                        target: "backstop::upstream",
                        upstream = up.spec.name(),
                        error = %why,
                        "health check failed"
                    );
                }
                up.breaker.health_check(ok, &why);
            }
        });
    }
}

/// One check: whether the upstream is up, and why not.
async fn check(up: &Upstream, p: &ProbeSpec) -> (bool, String) {
    let base = up.spec.base_url.trim_end_matches('/');
    // Accept a base given with or without its `/v1`, as requests do.
    let path = match (base.ends_with("/v1"), p.path.strip_prefix("/v1")) {
        (true, Some(rest)) => rest,
        _ => p.path.as_str(),
    };
    let req = up
        .client
        .get(format!("{base}{path}"))
        .headers(headers(&up.spec.credentials, up.spec.format))
        .timeout(p.timeout);
    let own_key = matches!(up.spec.credentials, Credentials::Key(_));
    match req.send().await {
        Err(e) if e.is_timeout() => (
            false,
            format!("no answer in {:.1} s", p.timeout.as_secs_f64()),
        ),
        Err(e) => (false, error_chain(&e)),
        Ok(r) => {
            let s = r.status().as_u16();
            let down = s >= 500 || (own_key && matches!(s, 401 | 403));
            (!down, format!("returned {s}"))
        }
    }
}

fn headers(c: &Credentials, format: Flavor) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let key = match c {
        Credentials::Key(k) => Some(k.as_str()),
        Credentials::Forward => None,
    };
    own_auth(&mut h, format, key);
    h
}
