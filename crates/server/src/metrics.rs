//! Prometheus text-format metrics, kept in atomics so recording never blocks generation.
//! Route labels come from a fixed list (unknown paths count as "other") so a scanner cannot
//! grow the label set without bound.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

pub struct Metrics {
    /// (route, status) -> count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Requests turned away because the queue was full.
    pub rejected: AtomicU64,
    /// Generations stopped early because the client went away.
    pub cancelled: AtomicU64,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    /// Forward passes of the batch loop, and the sequences and token rows they carried
    /// (their ratio is the mean batch size).
    pub batch_steps: AtomicU64,
    pub batch_sequences: AtomicU64,
    pub batch_rows: AtomicU64,
    /// Sequences in the last pass.
    pub last_batch_sequences: AtomicU64,
    /// Requests that started from a cached prompt prefix, and the tokens not recomputed.
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cached_tokens: AtomicU64,
    /// The KV cache budget and the tokens counted against it (running sequences' reservations
    /// and cached prefixes).
    pub kv_budget_tokens: AtomicU64,
    pub kv_used_tokens: AtomicU64,
    /// Requests that waited for KV budget, and cached prefixes given up to make room.
    pub kv_waits: AtomicU64,
    pub kv_evictions: AtomicU64,
}

/// The routes we label individually.
pub const ROUTES: [&str; 13] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/v1/models/{id}",
    "/health",
    "/livez",
    "/ready",
    "/readyz",
    "/metrics",
    "/backstop/status",
    "other",
];

pub fn route_label(path: &str) -> &'static str {
    if path.starts_with("/v1/models/") {
        return "/v1/models/{id}";
    }
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

/// Routes polled by machines (probes, scrapes), logged at debug level only.
pub fn is_probe(route: &str) -> bool {
    matches!(
        route,
        "/health" | "/livez" | "/ready" | "/readyz" | "/metrics"
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            time_to_first_token: Histogram::new(),
            inter_token_latency: Histogram::new(),
            batch_steps: AtomicU64::new(0),
            batch_sequences: AtomicU64::new(0),
            batch_rows: AtomicU64::new(0),
            last_batch_sequences: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            kv_budget_tokens: AtomicU64::new(0),
            kv_used_tokens: AtomicU64::new(0),
            kv_waits: AtomicU64::new(0),
            kv_evictions: AtomicU64::new(0),
            prefix_cached_tokens: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_insert(0) += 1;
        }
    }

    /// The text format; `running` and `queued` are read from the scheduler at scrape time.
    pub fn render(&self, running: usize, queued: usize, ready: bool) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP backstop_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE backstop_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "backstop_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let gauges = [
            (
                "backstop_ready",
                "1 when the model is loaded and warm.",
                ready as u64,
            ),
            (
                "backstop_running_sequences",
                "Sequences generating now.",
                running as u64,
            ),
            (
                "backstop_queue_depth",
                "Admitted requests waiting for a slot.",
                queued as u64,
            ),
            (
                "backstop_batch_size",
                "Sequences in the last forward pass.",
                self.last_batch_sequences.load(Relaxed),
            ),
            (
                "backstop_kv_budget_tokens",
                "KV cache tokens shared by all sequences (--kv-budget).",
                self.kv_budget_tokens.load(Relaxed),
            ),
            (
                "backstop_kv_used_tokens",
                "KV cache tokens reserved by running sequences or held by cached prefixes.",
                self.kv_used_tokens.load(Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "backstop_prompt_tokens_total",
                "Prompt tokens processed.",
                &self.prompt_tokens,
            ),
            (
                "backstop_generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "backstop_rejected_total",
                "Requests refused because the queue was full.",
                &self.rejected,
            ),
            (
                "backstop_cancelled_total",
                "Generations stopped because the client disconnected.",
                &self.cancelled,
            ),
            (
                "backstop_batch_steps_total",
                "Forward passes run for all running sequences at once.",
                &self.batch_steps,
            ),
            (
                "backstop_batch_sequences_total",
                "Sequences carried by those passes (divided by the steps: mean batch size).",
                &self.batch_sequences,
            ),
            (
                "backstop_batch_rows_total",
                "Token rows carried by those passes (decode tokens and prompt chunks).",
                &self.batch_rows,
            ),
            (
                "backstop_prefix_cache_hits_total",
                "Requests that started from a cached prompt prefix.",
                &self.prefix_cache_hits,
            ),
            (
                "backstop_prefix_cached_tokens_total",
                "Prompt tokens taken from the prefix cache instead of recomputed.",
                &self.prefix_cached_tokens,
            ),
            (
                "backstop_kv_waits_total",
                "Requests that waited in the queue for KV cache budget.",
                &self.kv_waits,
            ),
            (
                "backstop_kv_evictions_total",
                "Cached prompt prefixes given up to make room in the KV cache budget.",
                &self.kv_evictions,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        self.time_to_first_token.render(
            &mut out,
            "backstop_time_to_first_token_seconds",
            "From admission to the first generated text.",
        );
        self.inter_token_latency.render(
            &mut out,
            "backstop_inter_token_latency_seconds",
            "Between consecutive pieces of generated text.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let m = Metrics::default();
        m.time_to_first_token.observe(Duration::from_millis(3));
        m.time_to_first_token.observe(Duration::from_millis(70));
        m.time_to_first_token.observe(Duration::from_secs(500));
        m.count_request("/health", 200);
        let text = m.render(1, 2, true);
        assert!(text.contains("backstop_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("backstop_time_to_first_token_seconds_bucket{le=\"0.1\"} 2"));
        assert!(text.contains("backstop_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("backstop_requests_total{route=\"/health\",status=\"200\"} 1"));
        assert!(text.contains("backstop_queue_depth 2"));
    }
}
