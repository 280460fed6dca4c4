//! Admission and the batch loop.
//!
//! A request is admitted only while fewer than `parallel + queue` are in the system; past
//! that the caller answers 503/529 at once instead of letting work pile up.
//!
//! One OS thread, the batch loop, owns the `parallel` KV-cache sessions (slots) and runs
//! every running sequence in one forward pass per step (`Engine::eval_batch`), so the
//! weights are read once for all of them: first the next token of each decoding sequence,
//! then chunks of waiting prompts, first come first served, up to the step's row budget. While
//! sequences decode, a prompt chunk is sized to take about as long as their decode step
//! ([`Pacer`]), so a long prompt arriving delays the running streams by a bounded factor
//! instead of stalling them until it has been read. A sequence joins on the step after it
//! is admitted and leaves when it ends or its client goes away; no one waits for another's
//! answer to finish.
//!
//! A finished sequence's cache stays in its slot as a prompt-prefix cache: a new request
//! takes the free slot whose cache shares the longest prefix with its prompt, or copies that
//! prefix from any slot (running or not) that shares more, so agents resending one long
//! system prompt and tool list do not recompute it.
//!
//! The KV cache is a budget in tokens (`--kv-budget`) shared by running sequences, which
//! reserve their prompt plus `max_tokens`, and cached prefixes, which hold what they touched.
//! The head of the queue starts when the running reservations leave room for its own, cached
//! prefixes being given up least recently used first; otherwise it (and everyone behind it)
//! waits. A running sequence is never cut short to make room.
//!
//! Text goes back over an unbounded channel (at most `max_tokens` pieces per request), so a
//! client that reads slowly never holds up the others; when it disconnects the receiver is
//! dropped and the sequence leaves the batch at the next step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use backstop_engine::generate::{Engine, GenerateParams, Generation, Outcome, Session, Step};
use backstop_engine::grammar::Grammar;
use backstop_engine::models::decoder::N_UBATCH;
use backstop_engine::models::{Batch, Rows};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What the batch loop sends back for one job.
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
    pub events: mpsc::UnboundedSender<Event>,
    pub admitted_at: Instant,
    /// Whether it has waited at the head of the queue for KV budget (counted once).
    pub waited_for_kv: bool,
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
    /// KV cache tokens for all slots together (0 until `start` resolves the default).
    kv_budget: AtomicUsize,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    /// Admitted and not finished: running + waiting.
    in_system: AtomicUsize,
    running: AtomicUsize,
    /// No new admissions; the loop exits when nothing runs and the queue is empty.
    closing: AtomicBool,
    /// In-flight generations stop at their next token (end of the shutdown grace period).
    cancel_all: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Scheduler {
    /// `kv_budget`: KV cache tokens shared by every slot; 0 = each slot's whole context.
    pub fn new(parallel: usize, max_queue: usize, kv_budget: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            parallel: parallel.clamp(1, MAX_PARALLEL),
            max_queue,
            kv_budget: AtomicUsize::new(kv_budget),
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

    /// The KV cache budget in tokens (known once the loop has started).
    pub fn kv_budget(&self) -> usize {
        self.kv_budget.load(Ordering::Relaxed)
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

    /// Start the batch loop over `sessions` (one slot each). It runs until `close`, with
    /// nothing running and the queue empty.
    pub fn start(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        sessions: Vec<Session>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let whole: usize = sessions.iter().take(self.parallel).map(|s| s.n_ctx()).sum();
        let budget = match self.kv_budget() {
            0 => whole,
            b => b.min(whole),
        };
        self.kv_budget.store(budget, Ordering::Relaxed);
        self.metrics
            .kv_budget_tokens
            .store(budget as u64, Ordering::Relaxed);
        let me = Arc::clone(self);
        let slots = sessions
            .into_iter()
            .take(self.parallel)
            .map(|session| Slot {
                session,
                run: None,
                last_used: 0,
            })
            .collect();
        let handle = std::thread::Builder::new()
            .name("backstop-batch".into())
            .spawn(move || me.batch_loop(&engine, slots))?;
        Ok(vec![handle])
    }

    fn batch_loop(&self, engine: &Engine, mut slots: Vec<Slot>) {
        let mut batch = engine.new_batch(slots.len());
        let mut pacer = Pacer::default();
        let mut plan: Vec<Option<Part>> = Vec::with_capacity(slots.len());
        let mut clock = 0u64;
        loop {
            clock += 1;
            self.admit_waiting(engine, &mut slots, clock);
            self.drop_departed(&mut slots, clock);
            self.record_kv(&slots);
            if slots.iter().all(|s| s.run.is_none()) {
                if !self.wait_for_work() {
                    return;
                }
                continue;
            }
            self.step(engine, &mut batch, &mut slots, &mut plan, &mut pacer, clock);
        }
    }

    /// Block until a job is queued (true) or the server closes with none (false).
    fn wait_for_work(&self) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !q.is_empty() {
                return true;
            }
            if self.closing.load(Ordering::Relaxed) {
                return false;
            }
            q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Move queued jobs into free slots, first come first served, while the KV budget holds
    /// their prompt plus `max_tokens`. The first job that does not fit waits (and every job
    /// behind it: none is starved by later, smaller ones) until running sequences end; cached
    /// prefixes are given up, least recently used first, to make room.
    fn admit_waiting(&self, engine: &Engine, slots: &mut [Slot], clock: u64) {
        let budget = self.kv_budget();
        while slots.iter().any(|s| s.run.is_none()) {
            let job = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let Some(job) = q.front_mut() else { return };
                // The client left while the job waited, or the server is going away: drop it
                // whatever the budget says.
                let gone = job.events.is_closed() || self.cancel_all.load(Ordering::Relaxed);
                let held: usize = slots.iter().filter(|s| s.run.is_some()).map(Slot::kv).sum();
                if !gone && held + job.kv_need(budget) > budget {
                    if !std::mem::replace(&mut job.waited_for_kv, true) {
                        self.metrics.kv_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                q.pop_front().expect("front")
            };
            if job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                self.in_system.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            if self.cancel_all.load(Ordering::Relaxed) {
                let _ = job.events.send(Event::ShuttingDown);
                self.in_system.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let need = job.kv_need(budget);
            let slot = self.take_prefix(slots, &job.prompt);
            self.make_room(slots, slot, need, budget);
            let s = &mut slots[slot];
            match engine.start(&mut s.session, &job.prompt, job.params.clone()) {
                Ok((gen, n_cached)) => {
                    if n_cached > 0 {
                        self.metrics
                            .prefix_cache_hits
                            .fetch_add(1, Ordering::Relaxed);
                        self.metrics
                            .prefix_cached_tokens
                            .fetch_add(n_cached as u64, Ordering::Relaxed);
                    }
                    self.running.fetch_add(1, Ordering::Relaxed);
                    s.run = Some(Running {
                        job,
                        gen,
                        fed: n_cached,
                        next: None,
                        order: clock,
                        last_text: None,
                        client_gone: false,
                        kv_need: need,
                    });
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                    self.in_system.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Bring the KV cache within `budget` once slot `slot` holds a sequence needing `need`
    /// tokens: give up other slots' cached prefixes, least recently used first, then this
    /// slot's own if it alone still holds too much. Admission checked that the running
    /// sequences leave room for `need`, so this always ends within the budget.
    fn make_room(&self, slots: &mut [Slot], slot: usize, need: usize, budget: usize) {
        let total = |slots: &[Slot]| -> usize {
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if i == slot {
                        s.session.resident().max(need)
                    } else {
                        s.kv()
                    }
                })
                .sum()
        };
        while total(slots) > budget {
            let lru = (0..slots.len())
                .filter(|&i| i != slot && slots[i].run.is_none() && slots[i].session.resident() > 0)
                .min_by_key(|&i| slots[i].last_used);
            let victim = match lru {
                Some(i) => i,
                None if slots[slot].session.resident() > need => slot,
                None => break,
            };
            slots[victim].session.release_memory();
            self.metrics.kv_evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publish the KV cache's use (tokens held by running sequences and cached prefixes).
    fn record_kv(&self, slots: &[Slot]) {
        let used: usize = slots.iter().map(Slot::kv).sum();
        self.metrics
            .kv_used_tokens
            .store(used as u64, Ordering::Relaxed);
    }

    /// The free slot for `prompt`: the one whose cache already starts like it, else the least
    /// recently used, given the longest prefix any slot holds when another holds more.
    fn take_prefix(&self, slots: &mut [Slot], prompt: &[u32]) -> usize {
        let shared = |s: &Slot| s.session.reusable_prefix(prompt);
        let free = (0..slots.len())
            .filter(|&i| slots[i].run.is_none())
            .max_by_key(|&i| (shared(&slots[i]), std::cmp::Reverse(slots[i].last_used)))
            .expect("a free slot");
        let own = shared(&slots[free]);
        let Some((donor, n)) = (0..slots.len())
            .map(|i| (i, shared(&slots[i])))
            .max_by_key(|&(_, n)| n)
        else {
            return free;
        };
        // At least one prompt token is always run, for its logits.
        let n = n.min(prompt.len().saturating_sub(1));
        if n > own {
            let (dst, src) = two_mut(slots, free, donor);
            dst.session.copy_prefix(&src.session, n);
        }
        free
    }

    /// Free the slots of sequences whose client went away (or all, on a forced shutdown
    /// before they produced text).
    fn drop_departed(&self, slots: &mut [Slot], clock: u64) {
        let cancel = self.cancel_all.load(Ordering::Relaxed);
        for s in slots.iter_mut() {
            let Some(run) = &s.run else { continue };
            if run.job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                self.release(s, clock);
            } else if cancel && run.next.is_none() {
                if let Some(run) = self.release(s, clock) {
                    let _ = run.job.events.send(Event::ShuttingDown);
                }
            }
        }
    }

    /// One forward pass for every running sequence, then each one's next token.
    fn step(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        slots: &mut [Slot],
        plan: &mut Vec<Option<Part>>,
        pacer: &mut Pacer,
        clock: u64,
    ) {
        let decoding = slots
            .iter()
            .filter(|s| s.run.as_ref().is_some_and(|r| r.next.is_some()))
            .count();
        plan.clear();
        plan.extend(slots.iter().map(|s| match &s.run {
            Some(r) if r.next.is_some() => Some(Part::Decode),
            _ => None,
        }));
        // Prompt chunks in admission order, as far as the budget goes.
        let mut budget = pacer
            .prompt_rows(decoding)
            .min(N_UBATCH - decoding.min(N_UBATCH));
        let mut prefilling: Vec<(u64, usize)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.run {
                Some(r) if r.next.is_none() => Some((r.order, i)),
                _ => None,
            })
            .collect();
        prefilling.sort_unstable();
        let mut prompt_rows = 0;
        for (_, i) in prefilling {
            if budget == 0 {
                break;
            }
            let run = slots[i].run.as_ref().expect("running");
            let take = (run.job.prompt.len() - run.fed).min(budget);
            plan[i] = Some(Part::Prompt(run.fed..run.fed + take));
            budget -= take;
            prompt_rows += take;
        }

        let t0 = Instant::now();
        let result = {
            let mut seqs: Vec<&mut Session> = Vec::with_capacity(slots.len());
            let mut rows: Vec<Rows> = Vec::with_capacity(slots.len());
            for (s, part) in slots.iter_mut().zip(plan.iter()) {
                let (Some(part), Some(run)) = (part, &s.run) else {
                    continue;
                };
                rows.push(match part {
                    Part::Decode => {
                        Rows::decode(std::slice::from_ref(run.next.as_ref().expect("decoding")))
                    }
                    Part::Prompt(r) => {
                        Rows::prompt(&run.job.prompt[r.clone()], run.job.prompt.len())
                    }
                });
                seqs.push(&mut s.session);
            }
            self.metrics.batch_steps.fetch_add(1, Ordering::Relaxed);
            let n = seqs.len() as u64;
            self.metrics.batch_sequences.fetch_add(n, Ordering::Relaxed);
            self.metrics
                .last_batch_sequences
                .store(n, Ordering::Relaxed);
            self.metrics
                .batch_rows
                .fetch_add((decoding + prompt_rows) as u64, Ordering::Relaxed);
            engine.eval_batch(batch, &mut seqs, &rows)
        };
        pacer.observe(decoding, prompt_rows, t0.elapsed().as_secs_f64());

        if let Err(e) = result {
            // A failed pass leaves the caches in an unknown state: those sequences start clean.
            let why = e.to_string();
            for (s, part) in slots.iter_mut().zip(plan.iter()) {
                if part.is_some() {
                    s.session.truncate(0);
                    if let Some(run) = self.release(s, clock) {
                        let _ = run.job.events.send(Event::Failed(why.clone()));
                    }
                }
            }
            return;
        }

        for (s, part) in slots.iter_mut().zip(plan.iter()) {
            let Some(part) = part else { continue };
            let run = s.run.as_mut().expect("running");
            if let Part::Prompt(r) = part {
                run.fed = r.end;
                if run.fed < run.job.prompt.len() {
                    continue;
                }
                run.gen.prompt_done();
            }
            self.next_token(engine, s, clock);
        }
    }

    /// Sample a sequence's next token from its logits and send its text; free its slot when
    /// the answer is over.
    fn next_token(&self, engine: &Engine, slot: &mut Slot, clock: u64) {
        let Slot { session, run, .. } = slot;
        let Some(run) = run else { return };
        let Running {
            job,
            gen,
            next,
            last_text,
            client_gone,
            ..
        } = run;
        let (n_past, n_ctx) = (session.n_past(), session.n_ctx());
        let metrics = &self.metrics;
        let cancel_all = &self.cancel_all;
        let events = &job.events;
        let admitted_at = job.admitted_at;
        let mut on_text = |piece: &str| {
            let now = Instant::now();
            match *last_text {
                None => metrics.time_to_first_token.observe(now - admitted_at),
                Some(t) => metrics.inter_token_latency.observe(now - t),
            }
            *last_text = Some(now);
            if events.send(Event::Text(piece.to_owned())).is_err() {
                *client_gone = true;
                return false;
            }
            !cancel_all.load(Ordering::Relaxed)
        };
        let step = gen.step(
            engine,
            session.logits_mut(),
            job.grammar.as_mut(),
            n_past,
            n_ctx,
            &mut on_text,
        );
        match step {
            Ok(Step::Next(id)) => *next = Some(id),
            Ok(Step::Done(outcome)) => {
                metrics.prompt_tokens.fetch_add(
                    (outcome.n_prompt - outcome.n_cached) as u64,
                    Ordering::Relaxed,
                );
                metrics
                    .generated_tokens
                    .fetch_add(outcome.tokens.len() as u64, Ordering::Relaxed);
                let gone = *client_gone;
                if gone {
                    metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                let run = self.release(slot, clock).expect("running");
                if !gone {
                    let _ = run.job.events.send(Event::Done(outcome));
                }
            }
            Err(e) => {
                session.truncate(0);
                let run = self.release(slot, clock).expect("running");
                let _ = run.job.events.send(Event::Failed(e.to_string()));
            }
        }
    }

    /// The slot's sequence is over; its cache stays for prefix reuse. The counters drop
    /// before the caller tells the client, so a client that reads `/metrics` right after its
    /// answer never sees its own sequence still running; a cancellation is counted before
    /// this, so once the running count shows a departed client gone, so does the cancel count.
    fn release(&self, slot: &mut Slot, clock: u64) -> Option<Running> {
        let run = slot.run.take()?;
        slot.last_used = clock;
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.in_system.fetch_sub(1, Ordering::Relaxed);
        Some(run)
    }
}

/// More sequences than this in one pass would not fit its rows anyway.
pub const MAX_PARALLEL: usize = 256;

/// A KV-cache session and the sequence using it, if any.
struct Slot {
    session: Session,
    run: Option<Running>,
    /// The step its last sequence ended (which cached prefix to give up first).
    last_used: u64,
}

impl Slot {
    /// KV cache tokens this slot counts against the budget: what its cache may hold in memory
    /// and, while a sequence runs, all that sequence may still fill.
    fn kv(&self) -> usize {
        let resident = self.session.resident();
        match &self.run {
            Some(r) => resident.max(r.kv_need),
            None => resident,
        }
    }
}

impl Job {
    /// The KV cache tokens this job may fill: its prompt plus `max_tokens`, within its
    /// context and the whole budget.
    fn kv_need(&self, budget: usize) -> usize {
        self.prompt
            .len()
            .saturating_add(self.params.max_tokens)
            .min(budget)
    }
}

/// A sequence in the batch.
struct Running {
    job: Job,
    gen: Generation,
    /// Prompt tokens in the cache so far.
    fed: usize,
    /// The token to run next, once the prompt has been read.
    next: Option<u32>,
    /// Admission order: prompts are read first come, first served.
    order: u64,
    /// KV cache tokens reserved for it (prompt plus `max_tokens`).
    kv_need: usize,
    last_text: Option<Instant>,
    client_gone: bool,
}

/// A slot's rows in a pass.
#[derive(Clone, Debug)]
enum Part {
    Decode,
    Prompt(std::ops::Range<usize>),
}

/// Sizes prompt chunks while sequences decode: a chunk may take about half as long as the
/// decode step it rides on, so their inter-token latency grows by about half while a long
/// prompt is read, which leaves room below the 3x bound for a noisy machine and for the
/// streams deepening. Learned from the passes themselves (moving averages of a decode-only
/// pass and of a prompt row's extra cost), so it holds on any machine and model.
#[derive(Default)]
struct Pacer {
    decode_step: Option<f64>,
    prompt_row: Option<f64>,
}

impl Pacer {
    /// Rows before the timings are known: few, since a long prompt's rows each attend to
    /// all the rows before them and the first pass must not stall the running streams.
    const FIRST_CHUNK: usize = 8;
    /// Fewer rows than this per pass would read a prompt mostly at decode speed. Small on
    /// purpose: with a long context a prompt row can cost a third of a decode step, and the
    /// running streams' inter-token latency is the bound that matters.
    const MIN_CHUNK: usize = 4;
    /// A prompt chunk's cost as a share of the decode step it rides on. At 1 (a chunk as
    /// long as the step) Gemma 3's streams saw p99 inter-token latencies of 2.4-3.6x their
    /// p50 while a 4000-token prompt was read in ~10 s; at 0.5, 1.9-2.1x and ~16 s
    /// (`scripts/bench-load --scenarios longprompt`, Zen 5, 2 threads).
    const CHUNK_SHARE: f64 = 0.5;
    /// Weight of the newest pass in the averages.
    const ALPHA: f64 = 0.2;

    fn prompt_rows(&self, decoding: usize) -> usize {
        if decoding == 0 {
            return N_UBATCH;
        }
        match (self.decode_step, self.prompt_row) {
            (Some(d), Some(r)) if r > 0.0 => {
                ((Self::CHUNK_SHARE * d / r) as usize).clamp(Self::MIN_CHUNK, N_UBATCH)
            }
            _ => Self::FIRST_CHUNK,
        }
    }

    fn observe(&mut self, decoding: usize, prompt_rows: usize, secs: f64) {
        let ema =
            |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o + Self::ALPHA * (new - o)));
        if prompt_rows == 0 {
            if decoding > 0 {
                self.decode_step = ema(self.decode_step, secs);
            }
            return;
        }
        let extra = if decoding > 0 {
            (secs - self.decode_step.unwrap_or(0.0)).max(0.0)
        } else {
            secs
        };
        self.prompt_row = ema(self.prompt_row, extra / prompt_rows as f64);
    }
}

/// Two distinct elements of a slice, the first mutable.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &l[b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_sizes_chunks_to_the_decode_step() {
        let mut p = Pacer::default();
        assert_eq!(p.prompt_rows(0), N_UBATCH);
        assert_eq!(p.prompt_rows(3), Pacer::FIRST_CHUNK);
        for _ in 0..50 {
            p.observe(3, 0, 0.010);
            // 10 ms of decode plus 64 rows at 0.25 ms each.
            p.observe(3, 64, 0.010 + 64.0 * 0.000_25);
        }
        // Half the step's time: 5 ms of rows.
        assert_eq!(p.prompt_rows(3), 20);
        // Rows so cheap the chunk would exceed a pass are capped.
        p.observe(3, 512, 0.010);
        for _ in 0..50 {
            p.observe(3, 512, 0.0101);
        }
        assert_eq!(p.prompt_rows(3), N_UBATCH);
        // Rows as dear as a quarter of the step: chunks shrink to the floor, not below.
        for _ in 0..50 {
            p.observe(3, 0, 0.010);
            p.observe(3, 4, 0.010 + 4.0 * 0.0025);
        }
        assert_eq!(p.prompt_rows(3), 4);
        for _ in 0..50 {
            p.observe(3, 4, 0.010 + 4.0 * 0.02);
        }
        assert_eq!(p.prompt_rows(3), Pacer::MIN_CHUNK);
    }

    #[test]
    fn two_mut_gives_both_orders() {
        let mut v = [1, 2, 3];
        let (a, b) = two_mut(&mut v, 2, 0);
        *a += *b;
        let (a, b) = two_mut(&mut v, 0, 2);
        *a += *b;
        assert_eq!(v, [5, 2, 4]);
    }
}
