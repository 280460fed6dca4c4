//! `backstop bench`: prompt processing (pp) and text generation (tg) speed in llama-bench's
//! terms, so the two tables compare line by line. Like llama-bench: random tokens, one warm-up
//! run excluded, `-r` repetitions reported as mean ± standard deviation.

use std::time::Instant;

use anyhow::{bail, Result};
use backstop_engine::generate::{Engine, EngineOptions};
use backstop_engine::gguf::keys;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF model: a path, OWNER/REPO[:QUANT] from the cache, or a name in ./models
    /// (repeatable).
    #[arg(short = 'm', long = "model", value_name = "MODEL", required = true)]
    pub models: Vec<String>,
    /// Prompt tokens for the pp test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens for the tg test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Thread counts, comma-separated (default: all cores).
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
}

/// A deterministic stream of token ids (xorshift), so runs compare.
struct Tokens(u64);
impl Tokens {
    fn next(&mut self, n_vocab: usize) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n_vocab as u64) as u32
    }
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    let threads = if a.threads.is_empty() {
        vec![std::thread::available_parallelism().map_or(1, |n| n.get())]
    } else {
        a.threads.clone()
    };
    println!("| model | size | params | backend | threads | test | t/s |");
    println!("| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |");
    let places = crate::models::Places::from_env();
    let paths = a
        .models
        .iter()
        .map(|m| crate::models::resolve(m, &places))
        .collect::<Result<Vec<_>, _>>()?;
    for path in &paths {
        for &t in &threads {
            let engine = Engine::load(
                path,
                &EngineOptions {
                    threads: t,
                    kernels: None,
                },
            )?;
            let desc = describe(&engine, path);
            let n_vocab = engine.model.cfg.n_vocab;
            let mut rng = Tokens(0x2545_F491_4F6C_DD1D);
            let mut session = engine.new_session((a.n_prompt + a.n_gen).max(16));
            let backend = format!("CPU/{}", engine.kernels.tier);
            if a.n_prompt > 0 {
                let toks: Vec<u32> = (0..a.n_prompt).map(|_| rng.next(n_vocab)).collect();
                let samples = measure(a.reps, || {
                    session.truncate(0);
                    let t0 = Instant::now();
                    engine.eval(&mut session, &toks)?;
                    Ok(t0.elapsed().as_secs_f64())
                })?;
                row(
                    &desc,
                    &backend,
                    t,
                    &format!("pp{}", a.n_prompt),
                    a.n_prompt,
                    &samples,
                );
            }
            if a.n_gen > 0 {
                let toks: Vec<u32> = (0..a.n_gen).map(|_| rng.next(n_vocab)).collect();
                let samples = measure(a.reps, || {
                    session.truncate(0);
                    let t0 = Instant::now();
                    engine.eval_each(&mut session, &toks)?;
                    Ok(t0.elapsed().as_secs_f64())
                })?;
                row(
                    &desc,
                    &backend,
                    t,
                    &format!("tg{}", a.n_gen),
                    a.n_gen,
                    &samples,
                );
            }
        }
    }
    Ok(())
}

/// One warm-up run, then `reps` timed runs (seconds each).
fn measure(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    f()?;
    (0..reps).map(|_| f()).collect()
}

fn row(
    desc: &(String, String, String),
    backend: &str,
    threads: usize,
    test: &str,
    n: usize,
    secs: &[f64],
) {
    let ts: Vec<f64> = secs.iter().map(|s| n as f64 / s).collect();
    let mean = ts.iter().sum::<f64>() / ts.len() as f64;
    let var = if ts.len() > 1 {
        ts.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (ts.len() - 1) as f64
    } else {
        0.0
    };
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
        desc.0,
        desc.1,
        desc.2,
        backend,
        threads,
        test,
        format!("{mean:.2} ± {:.2}", var.sqrt())
    );
}

fn describe(engine: &Engine, path: &std::path::Path) -> (String, String, String) {
    let h = &engine.model.file;
    let arch = h.get_str(keys::GENERAL_ARCHITECTURE).unwrap_or("?");
    let params: u64 = h.tensors.iter().map(|t| t.n_elements()).sum();
    let mut types: Vec<&str> = h
        .tensors
        .iter()
        .filter(|t| t.dims.len() > 1)
        .map(|t| t.ty.name())
        .collect();
    types.sort_unstable();
    types.dedup();
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    (
        format!("{arch} {}", types.join("/")),
        format!("{:.2} MiB", size as f64 / (1u64 << 20) as f64),
        format!("{:.2} M", params as f64 / 1e6),
    )
}
