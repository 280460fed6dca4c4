//! `backstop bench`: prompt processing (pp) and text generation (tg) speed in llama-bench's
//! terms, so the two tables compare line by line. Like llama-bench: random tokens, one warm-up
//! run excluded, `-r` repetitions reported as mean ± standard deviation.

use std::time::Instant;

use anyhow::{bail, Result};
use backstop_engine::backend::{BackendKind, DeviceSpec};
use backstop_engine::generate::{Backend, Engine, EngineOptions};
use backstop_engine::gguf::keys;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF model: a path, OWNER/REPO[:QUANT] from the cache, or a name in ./models
    /// (repeatable).
    #[arg(short = 'm', long = "model", value_name = "MODEL", required = true)]
    pub models: Vec<String>,
    /// Prompt tokens for the pp test, comma-separated list (0 = skip).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generated tokens for the tg test, comma-separated list (0 = skip).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Prompt then generation in one test, as `PP,TG` (llama-bench's `-pg`; repeatable).
    #[arg(long = "pg", value_name = "PP,TG")]
    pub pg: Vec<String>,
    /// Tokens already in the context before each test (comma-separated list).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub depth: Vec<usize>,
    /// Thread counts, comma-separated (default: all cores).
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Backends to compare, comma-separated: native, candle (default: native on the CPU,
    /// candle on a GPU).
    #[arg(long = "backend", value_delimiter = ',', value_name = "native|candle")]
    pub backends: Vec<BackendKind>,
    /// cpu, cuda, cuda:N or metal (the candle backend's device).
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// Output format: md (llama-bench's table), json (an array) or jsonl (one object a line),
    /// with llama-bench's field names.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Md)]
    pub output: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Md,
    Json,
    Jsonl,
}

/// One test: `n_prompt` tokens of prompt processing then `n_gen` decode steps, after
/// `n_depth` tokens already in the context (not timed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Test {
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
}

impl Test {
    /// llama-bench's test name: pp512, tg128, pp512+tg128, with " @ d1024" for depth.
    fn name(&self) -> String {
        let mut s = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        if self.n_depth > 0 {
            s.push_str(&format!(" @ d{}", self.n_depth));
        }
        s
    }
}

fn tests(a: &BenchArgs) -> Result<Vec<Test>> {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    pairs.extend(a.n_prompt.iter().filter(|&&p| p > 0).map(|&p| (p, 0)));
    pairs.extend(a.n_gen.iter().filter(|&&g| g > 0).map(|&g| (0, g)));
    for pg in &a.pg {
        let parsed = pg
            .split_once(',')
            .and_then(|(p, g)| Some((p.trim().parse().ok()?, g.trim().parse().ok()?)));
        match parsed {
            Some((p, g)) if p > 0 && g > 0 => pairs.push((p, g)),
            _ => bail!("-pg {pg:?}: expected two positive counts as PP,TG (e.g. -pg 512,128)"),
        }
    }
    let mut out = Vec::new();
    for &d in &a.depth {
        for &(p, g) in &pairs {
            out.push(Test {
                n_prompt: p,
                n_gen: g,
                n_depth: d,
            });
        }
    }
    Ok(out)
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
    if threads.contains(&0) {
        bail!("--threads must be at least 1");
    }
    let tests = tests(&a)?;
    let places = crate::models::Places::from_env();
    let paths = a
        .models
        .iter()
        .map(|m| crate::models::resolve(m, &places))
        .collect::<Result<Vec<_>, _>>()?;
    if a.output == Format::Md {
        println!("| model | size | params | backend | threads | test | t/s |");
        println!("| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |");
    }
    let backends = if a.backends.is_empty() {
        vec![crate::options::backend_for(None, a.device)]
    } else {
        a.backends.clone()
    };
    let runs: Vec<(BackendKind, usize)> = backends
        .iter()
        .flat_map(|&b| threads.iter().map(move |&t| (b, t)))
        .collect();
    let mut records = Vec::new();
    for path in &paths {
        for &(kind, t) in &runs {
            let engine = Engine::load(
                path,
                &EngineOptions {
                    threads: t,
                    kernels: None,
                    backend: kind,
                    device: a.device,
                    ..Default::default()
                },
            )?;
            let desc = describe(&engine, path);
            let n_vocab = engine.model.cfg.n_vocab;
            let longest = tests
                .iter()
                .map(|t| t.n_depth + t.n_prompt + t.n_gen)
                .max()
                .unwrap_or(0);
            let mut session = engine.new_session(longest.max(16))?;
            // llama-bench names the ggml backend ("CPU"); ours says which engine and where.
            let backend = match &engine.backend {
                Backend::Native => format!("CPU/{}", engine.kernels.best_variant().name()),
                Backend::Candle(m) => format!("candle/{}", m.device),
            };
            for test in &tests {
                let mut rng = Tokens(0x2545_F491_4F6C_DD1D);
                let depth: Vec<u32> = (0..test.n_depth).map(|_| rng.next(n_vocab)).collect();
                let prompt: Vec<u32> = (0..test.n_prompt).map(|_| rng.next(n_vocab)).collect();
                let gen: Vec<u32> = (0..test.n_gen).map(|_| rng.next(n_vocab)).collect();
                let samples = measure(a.reps, || {
                    session.truncate(0);
                    if !depth.is_empty() {
                        engine.eval(&mut session, &depth)?;
                    }
                    let t0 = Instant::now();
                    if !prompt.is_empty() {
                        engine.eval(&mut session, &prompt)?;
                    }
                    if !gen.is_empty() {
                        engine.eval_each(&mut session, &gen)?;
                    }
                    Ok(t0.elapsed().as_secs_f64())
                })?;
                let rec = Record {
                    path,
                    desc: &desc,
                    backend: &backend,
                    threads: t,
                    test: *test,
                    secs: samples,
                };
                match a.output {
                    Format::Md => rec.print_row(),
                    Format::Jsonl => println!("{}", rec.json()),
                    Format::Json => records.push(rec.json()),
                }
            }
        }
    }
    if a.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(())
}

/// One warm-up run, then `reps` timed runs (seconds each).
fn measure(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    f()?;
    (0..reps).map(|_| f()).collect()
}

struct Record<'a> {
    path: &'a std::path::Path,
    desc: &'a Desc,
    backend: &'a str,
    threads: usize,
    test: Test,
    /// Seconds per timed run.
    secs: Vec<f64>,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (mean, var.sqrt())
}

impl Record<'_> {
    fn tokens(&self) -> usize {
        self.test.n_prompt + self.test.n_gen
    }

    fn ts(&self) -> Vec<f64> {
        self.secs.iter().map(|s| self.tokens() as f64 / s).collect()
    }

    fn print_row(&self) {
        let (mean, sd) = mean_sd(&self.ts());
        println!(
            "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
            self.desc.name,
            format!("{:.2} MiB", self.desc.size as f64 / (1u64 << 20) as f64),
            format!("{:.2} M", self.desc.params as f64 / 1e6),
            self.backend,
            self.threads,
            self.test.name(),
            format!("{mean:.2} ± {sd:.2}")
        );
    }

    /// llama-bench's JSON record (the fields its tooling reads; GPU ones at their CPU values).
    fn json(&self) -> serde_json::Value {
        let ns: Vec<u64> = self.secs.iter().map(|s| (s * 1e9) as u64).collect();
        let ns_f: Vec<f64> = ns.iter().map(|&n| n as f64).collect();
        let (avg_ns, sd_ns) = mean_sd(&ns_f);
        let ts = self.ts();
        let (avg_ts, sd_ts) = mean_sd(&ts);
        serde_json::json!({
            "build_commit": option_env!("BACKSTOP_GIT_COMMIT").unwrap_or("unknown"),
            "build_number": 0,
            "cpu_info": cpu_model(),
            "gpu_info": "",
            "backends": self.backend,
            "model_filename": self.path.display().to_string(),
            "model_type": self.desc.name,
            "model_size": self.desc.size,
            "model_n_params": self.desc.params,
            "n_batch": 2048,
            "n_ubatch": 512,
            "n_threads": self.threads,
            "cpu_mask": "0x0",
            "cpu_strict": false,
            "poll": 50,
            "type_k": "f16",
            "type_v": "f16",
            "n_gpu_layers": 0,
            "split_mode": "layer",
            "main_gpu": 0,
            "no_kv_offload": false,
            "flash_attn": false,
            "tensor_split": "0.00",
            "use_mmap": true,
            "embeddings": false,
            "n_prompt": self.test.n_prompt,
            "n_gen": self.test.n_gen,
            "n_depth": self.test.n_depth,
            "test_time": test_time(),
            "avg_ns": avg_ns as u64,
            "stddev_ns": sd_ns as u64,
            "avg_ts": avg_ts,
            "stddev_ts": sd_ts,
            "samples_ns": ns,
            "samples_ts": ts,
        })
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// RFC 3339 UTC, as llama-bench writes `test_time`.
fn test_time() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Desc {
    name: String,
    size: u64,
    params: u64,
}

fn describe(engine: &Engine, path: &std::path::Path) -> Desc {
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
    Desc {
        name: format!("{arch} {}", types.join("/")),
        size,
        params,
    }
}
