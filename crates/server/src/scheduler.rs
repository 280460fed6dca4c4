//! Admission and the generation workers.
//!
//! A request is admitted only while fewer than `parallel + queue` are in the system; past
//! that the caller answers 503/529 at once instead of letting work pile up. Each of the
//! `parallel` workers is an OS thread owning one KV-cache session, so generation never runs
//! on the async runtime's threads; all workers share the engine's compute pool. Text goes
//! back over a bounded channel: when the client disconnects the receiver is dropped, the
//! next send fails, and the worker stops that generation and takes the next job.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use backstop_engine::generate::Session;
use backstop_engine::generate::{Engine, GenerateParams, Outcome, StopReason};
use backstop_engine::grammar::Grammar;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What a worker sends back for one job.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Outcome),
    /// The engine failed; the text says why.
    Failed(String),
    /// Dropped unstarted because the server is shutting down.
    ShuttingDown,
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// What the output must be, compiled for this job.
    pub grammar: Option<Grammar>,
    pub events: mpsc::Sender<Event>,
    pub admitted_at: Instant,
}

/// Why a job was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    Full,
    ShuttingDown,
}

pub struct Scheduler {
    parallel: usize,
    max_queue: usize,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    /// Admitted and not finished: running + waiting.
    in_system: AtomicUsize,
    running: AtomicUsize,
    /// No new admissions; workers exit when the queue is empty.
    closing: AtomicBool,
    /// In-flight generations stop at their next token (end of the shutdown grace period).
    cancel_all: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Scheduler {
    pub fn new(parallel: usize, max_queue: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            parallel: parallel.max(1),
            max_queue,
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            in_system: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn parallel(&self) -> usize {
        self.parallel
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.in_system
            .load(Ordering::Relaxed)
            .saturating_sub(self.running())
    }

    /// No room for another request right now.
    pub fn is_full(&self) -> bool {
        self.in_system.load(Ordering::Relaxed) >= self.parallel + self.max_queue
    }

    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(Rejected::ShuttingDown);
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // Counted under the queue lock so two racing requests cannot both take the last place.
        if self.in_system.load(Ordering::Relaxed) >= self.parallel + self.max_queue {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Rejected::Full);
        }
        self.in_system.fetch_add(1, Ordering::Relaxed);
        q.push_back(job);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Stop admitting; queued jobs still run unless `cancel_in_flight` is called.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Make every running generation stop at its next token and fail the queued ones.
    pub fn cancel_in_flight(&self) {
        self.cancel_all.store(true, Ordering::Relaxed);
        self.close();
    }

    /// Start the workers, one per session. They run until `close` and an empty queue.
    pub fn start(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        sessions: Vec<Session>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                let me = Arc::clone(self);
                let engine = Arc::clone(&engine);
                std::thread::Builder::new()
                    .name(format!("backstop-slot-{i}"))
                    .spawn(move || me.work(&engine, session))
            })
            .collect()
    }

    fn next_job(&self) -> Option<Job> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = q.pop_front() {
                return Some(job);
            }
            if self.closing.load(Ordering::Relaxed) {
                return None;
            }
            q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn work(&self, engine: &Engine, mut session: Session) {
        while let Some(job) = self.next_job() {
            self.running.fetch_add(1, Ordering::Relaxed);
            self.run_job(engine, &mut session, job);
            self.running.fetch_sub(1, Ordering::Relaxed);
            self.in_system.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn run_job(&self, engine: &Engine, session: &mut Session, mut job: Job) {
        // The client left while the job waited: nothing to do.
        if job.events.is_closed() {
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.cancel_all.load(Ordering::Relaxed) {
            let _ = job.events.blocking_send(Event::ShuttingDown);
            return;
        }
        let mut last = None::<Instant>;
        let mut client_gone = false;
        let mut on_text = |piece: &str| {
            let now = Instant::now();
            match last {
                None => self
                    .metrics
                    .time_to_first_token
                    .observe(now - job.admitted_at),
                Some(t) => self.metrics.inter_token_latency.observe(now - t),
            }
            last = Some(now);
            if job
                .events
                .blocking_send(Event::Text(piece.to_owned()))
                .is_err()
            {
                client_gone = true;
                return false;
            }
            !self.cancel_all.load(Ordering::Relaxed)
        };
        let result = engine.generate_with(
            session,
            &job.prompt,
            &job.params,
            job.grammar.as_mut(),
            &mut on_text,
        );
        match result {
            Ok(outcome) => {
                self.metrics.prompt_tokens.fetch_add(
                    (outcome.n_prompt - outcome.n_cached) as u64,
                    Ordering::Relaxed,
                );
                self.metrics
                    .generated_tokens
                    .fetch_add(outcome.tokens.len() as u64, Ordering::Relaxed);
                if client_gone {
                    self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                debug_assert!(
                    outcome.stop_reason != StopReason::Cancelled
                        || self.cancel_all.load(Ordering::Relaxed)
                );
                let _ = job.events.blocking_send(Event::Done(outcome));
            }
            Err(e) => {
                // A failed forward pass leaves the cache in an unknown state: start clean.
                session.truncate(0);
                let _ = job.events.blocking_send(Event::Failed(e.to_string()));
            }
        }
    }
}
