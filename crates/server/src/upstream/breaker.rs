//! A circuit breaker per upstream, so an outage costs one timeout, not one per request.
//!
//! Closed: requests go to the cloud; it opens after `failures` consecutive failures, or when
//! more than half of the last `WINDOW` outcomes failed (at least `WINDOW / 2` seen).
//! Open: requests go straight to the local model, no upstream wait, until `cooldown` passes.
//! Half-open: exactly one real request probes the upstream; success closes the breaker,
//! failure opens it for another cooldown. Everyone else goes local meanwhile.
//! Health checks (`probe.rs`), where configured, speak too: a failed check opens the breaker
//! (or keeps it open, restarting the cooldown) before any user request waits on a timeout,
//! and a passing check closes a breaker that checks opened, so recovery is seen without
//! spending a user request. A breaker opened by real requests is left to its cooldown and
//! probe request: a model list that answers says nothing of a generation endpoint that 529s.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What the breaker lets a request do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Try the upstream.
    Try,
    /// Try the upstream as the half-open probe; its outcome decides the state.
    Probe,
    /// Skip the upstream.
    Deny,
}

struct Inner {
    state: State,
    consecutive: u32,
    recent: VecDeque<bool>,
    opened_at: Instant,
    probe_out: bool,
    last_error: Option<String>,
    successes: u64,
    failures_total: u64,
    short_circuited: u64,
    checks_ok: u64,
    checks_failed: u64,
    last_check_ok: Option<bool>,
    /// The breaker is open because a health check failed (not real requests).
    opened_by_check: bool,
}

pub struct Breaker {
    /// The upstream's name, for the log line of each state change.
    name: String,
    failures: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

/// A snapshot for `/metrics` and the status endpoint.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: State,
    pub consecutive_failures: u32,
    pub successes: u64,
    pub failures: u64,
    pub short_circuited: u64,
    pub last_error: Option<String>,
    /// Seconds until an open breaker lets a probe through.
    pub retry_in_s: Option<f64>,
    /// Health checks that passed and failed, and whether the last one passed.
    pub checks_ok: u64,
    pub checks_failed: u64,
    pub last_check_ok: Option<bool>,
}

impl Breaker {
    pub fn new(name: &str, failures: u32, cooldown: Duration) -> Self {
        Self {
            name: name.to_owned(),
            failures: failures.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                recent: VecDeque::with_capacity(WINDOW),
                opened_at: Instant::now(),
                probe_out: false,
                last_error: None,
                successes: 0,
                failures_total: 0,
                short_circuited: 0,
                checks_ok: 0,
                checks_failed: 0,
                last_check_ok: None,
                opened_by_check: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn permit(&self) -> Permit {
        self.permit_at(Instant::now())
    }

    pub fn permit_at(&self, now: Instant) -> Permit {
        let mut s = self.lock();
        match s.state {
            State::Closed => Permit::Try,
            State::Open if now.duration_since(s.opened_at) >= self.cooldown => {
                self.changed(State::Open, State::HalfOpen, None);
                s.state = State::HalfOpen;
                s.probe_out = true;
                Permit::Probe
            }
            State::HalfOpen if !s.probe_out => {
                s.probe_out = true;
                Permit::Probe
            }
            State::Open | State::HalfOpen => {
                s.short_circuited += 1;
                Permit::Deny
            }
        }
    }

    pub fn success(&self) {
        let mut s = self.lock();
        s.successes += 1;
        s.consecutive = 0;
        push(&mut s.recent, true);
        if s.state != State::Closed {
            self.changed(s.state, State::Closed, None);
        }
        s.state = State::Closed;
        s.probe_out = false;
        s.opened_by_check = false;
    }

    pub fn failure(&self, why: &str) {
        self.failure_at(why, Instant::now());
    }

    pub fn failure_at(&self, why: &str, now: Instant) {
        let mut s = self.lock();
        s.failures_total += 1;
        s.consecutive += 1;
        s.last_error = Some(why.to_owned());
        push(&mut s.recent, false);
        let failed = s.recent.iter().filter(|ok| !**ok).count();
        let rate_trips = s.recent.len() >= WINDOW / 2 && failed * 2 > s.recent.len();
        let trips = match s.state {
            State::HalfOpen => true,
            State::Closed => s.consecutive >= self.failures || rate_trips,
            State::Open => false,
        };
        if trips {
            self.changed(s.state, State::Open, Some(why));
            s.state = State::Open;
            s.opened_at = now;
            s.probe_out = false;
            s.opened_by_check = false;
        }
    }

    /// A health check's outcome. One failed check opens the breaker: the check costs no user
    /// anything, and a wrong guess is undone by the next passing check.
    pub fn health_check(&self, ok: bool, why: &str) {
        self.health_check_at(ok, why, Instant::now());
    }

    pub fn health_check_at(&self, ok: bool, why: &str, now: Instant) {
        let mut s = self.lock();
        s.last_check_ok = Some(ok);
        if ok {
            s.checks_ok += 1;
            if s.state != State::Closed && s.opened_by_check {
                self.changed(s.state, State::Closed, Some("health check passed"));
                s.state = State::Closed;
                s.probe_out = false;
                s.consecutive = 0;
                s.opened_by_check = false;
            }
            return;
        }
        s.checks_failed += 1;
        let why = format!("health check: {why}");
        if s.state != State::Open {
            self.changed(s.state, State::Open, Some(&why));
            s.state = State::Open;
            s.probe_out = false;
        }
        s.opened_by_check = true;
        // Still down: a user request should not be the one to find out after the cooldown.
        s.opened_at = now;
        s.last_error = Some(why);
    }

    fn changed(&self, from: State, to: State, why: Option<&str>) {
        tracing::warn!(
            target: "backstop::breaker",
            upstream = %self.name,
            from = from.name(),
            to = to.name(),
            error = why,
            cooldown_s = self.cooldown.as_secs_f64(),
            "circuit breaker {} -> {}",
            from.name(),
            to.name()
        );
    }

    /// The probe ended without telling us anything (e.g. the client left): let another try.
    pub fn release_probe(&self) {
        let mut s = self.lock();
        if s.state == State::HalfOpen {
            s.probe_out = false;
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            state: s.state,
            consecutive_failures: s.consecutive,
            successes: s.successes,
            failures: s.failures_total,
            short_circuited: s.short_circuited,
            last_error: s.last_error.clone(),
            retry_in_s: (s.state == State::Open).then(|| {
                self.cooldown
                    .saturating_sub(s.opened_at.elapsed())
                    .as_secs_f64()
            }),
            checks_ok: s.checks_ok,
            checks_failed: s.checks_failed,
            last_check_ok: s.last_check_ok,
        }
    }
}

fn push(q: &mut VecDeque<bool>, ok: bool) {
    if q.len() == WINDOW {
        q.pop_front();
    }
    q.push_back(ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_k_failures_then_lets_exactly_one_probe_through_after_cooldown() {
        let b = Breaker::new("test", 3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.permit_at(t0), Permit::Try);
            b.failure_at("500", t0);
        }
        assert_eq!(b.snapshot().state, State::Closed);
        b.failure_at("500", t0);
        assert_eq!(b.snapshot().state, State::Open);
        assert_eq!(b.permit_at(t0 + Duration::from_secs(5)), Permit::Deny);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.permit_at(later), Permit::Probe);
        assert_eq!(b.permit_at(later), Permit::Deny, "only one probe at a time");
        b.failure_at("529", later);
        assert_eq!(b.snapshot().state, State::Open, "failed probe reopens");
        assert_eq!(b.permit_at(later + Duration::from_secs(1)), Permit::Deny);
        let again = later + Duration::from_secs(11);
        assert_eq!(b.permit_at(again), Permit::Probe);
        b.success();
        assert_eq!(b.snapshot().state, State::Closed);
        assert_eq!(b.permit_at(again), Permit::Try);
        assert_eq!(b.snapshot().short_circuited, 3);
    }

    #[test]
    fn health_checks_open_and_close_without_user_requests() {
        let b = Breaker::new("test", 5, Duration::from_secs(10));
        let t0 = Instant::now();
        b.health_check_at(false, "connection refused", t0);
        assert_eq!(b.snapshot().state, State::Open, "one failed check opens it");
        assert_eq!(b.permit_at(t0), Permit::Deny);
        // A failed check while open restarts the cooldown: no user request probes a cloud
        // the checks know is down.
        b.health_check_at(false, "connection refused", t0 + Duration::from_secs(9));
        assert_eq!(b.permit_at(t0 + Duration::from_secs(11)), Permit::Deny);
        b.health_check_at(true, "", t0 + Duration::from_secs(12));
        assert_eq!(b.snapshot().state, State::Closed);
        assert_eq!(b.permit_at(t0 + Duration::from_secs(12)), Permit::Try);
        let s = b.snapshot();
        assert_eq!(
            (s.checks_ok, s.checks_failed, s.last_check_ok),
            (1, 2, Some(true))
        );
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let b = Breaker::new("test", 3, Duration::from_secs(10));
        b.failure("x");
        b.failure("x");
        b.success();
        b.failure("x");
        b.failure("x");
        assert_eq!(b.snapshot().state, State::Closed);
    }

    #[test]
    fn a_high_failure_rate_opens_it_even_without_a_long_run() {
        let b = Breaker::new("test", 100, Duration::from_secs(10));
        for i in 0..WINDOW {
            if i % 3 == 0 {
                b.success();
            } else {
                b.failure("flaky");
            }
        }
        assert_eq!(b.snapshot().state, State::Open);
    }
}
