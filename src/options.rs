//! Flags shared by the commands that load a model and generate, spelled as llama.cpp's tools
//! spell them.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backstop_engine::backend::{BackendKind, DeviceSpec};
use backstop_engine::chat::{ChatTemplate, TemplateSource};
use backstop_engine::cpu::Tier;
use backstop_engine::generate::{Engine, EngineOptions, GenerateParams, Outcome};
use backstop_engine::sampling::{SamplingField, SamplingParams};
use clap::{Args, ValueEnum};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file path, a download as OWNER/REPO[:QUANT] (see `backstop ls`), or a file name
    /// in ./models or a BACKSTOP_MODELS folder. Resolved from local files only.
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub model: String,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    pub threads: usize,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: usize,
    /// Force a kernel tier instead of the best one this CPU supports.
    #[arg(long, value_enum)]
    pub kernels: Option<KernelTier>,
    /// native (our kernels, CPU) or candle (candle's models, any --device). Default: native
    /// on the CPU, candle on a GPU.
    #[arg(long, value_name = "native|candle")]
    pub backend: Option<BackendKind>,
    /// cpu, cuda, cuda:N or metal (GPUs need a build with --features cuda or metal).
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// A Jinja chat template to use instead of the file's (as llama.cpp's option).
    #[arg(long, value_name = "FILE")]
    pub chat_template_file: Option<PathBuf>,
}

/// The backend a `--backend` flag (or its absence) means on `device`.
pub fn backend_for(backend: Option<BackendKind>, device: DeviceSpec) -> BackendKind {
    backend.unwrap_or(if device.is_cpu() {
        BackendKind::Native
    } else {
        BackendKind::Candle
    })
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum KernelTier {
    Ref,
    Avx2,
    Avx512,
    Neon,
}

impl ModelArgs {
    pub fn engine_options(&self) -> Result<EngineOptions> {
        let kernels = self.kernels.map(|k| match k {
            KernelTier::Ref => Tier::Ref,
            KernelTier::Avx2 => Tier::Avx2,
            KernelTier::Avx512 => Tier::Avx512,
            KernelTier::Neon => Tier::Neon,
        });
        let chat_template = match &self.chat_template_file {
            Some(p) => {
                let src = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the chat template {}", p.display()))?;
                // A template that does not compile is an error now, not at the first chat.
                ChatTemplate::new(
                    src.clone(),
                    TemplateSource::Custom,
                    String::new(),
                    String::new(),
                )
                .with_context(|| format!("in {}", p.display()))?;
                Some(src)
            }
            None => None,
        };
        Ok(EngineOptions {
            threads: self.threads,
            kernels,
            backend: backend_for(self.backend, self.device),
            device: self.device,
            chat_template,
        })
    }

    /// The model file the argument names (local files only).
    pub fn path(&self) -> Result<PathBuf> {
        Ok(crate::models::resolve(
            &self.model,
            &crate::models::Places::from_env(),
        )?)
    }

    pub fn load(&self) -> Result<Engine> {
        let path = self.path()?;
        Engine::load(&path, &self.engine_options()?)
            .with_context(|| format!("cannot load {}", path.display()))
    }

    /// Load with feedback on stderr: progress while a big file is read in (on a terminal) and
    /// the time the load took.
    pub fn load_with_feedback(&self) -> Result<Engine> {
        let path = self.path()?;
        let t0 = Instant::now();
        let size = read_in(&path);
        let engine = Engine::load(&path, &self.engine_options()?)
            .with_context(|| format!("cannot load {}", path.display()))?;
        eprintln!(
            "loaded {} ({}) in {:.2} s",
            self.model,
            crate::pull::human(size),
            t0.elapsed().as_secs_f64()
        );
        Ok(engine)
    }
}

/// Files at least this large show reading progress on a terminal.
const BIG_FILE: u64 = 128 << 20;

/// Read a big model file through once, with progress on a terminal, so the memory-mapped load
/// that follows finds it in the page cache. Returns the file's size. Best effort: a read error
/// here is left for the load to report.
pub fn read_in(path: &Path) -> u64 {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    if size < BIG_FILE || !std::io::stderr().is_terminal() {
        return size;
    }
    let Ok(mut file) = std::fs::File::open(path) else {
        return size;
    };
    let label = path
        .file_name()
        .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned());
    let mut progress = crate::pull::Progress::new(&format!("reading {label}"), 0, size);
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        done += n as u64;
        progress.update(done.min(size));
    }
    progress.clear();
    size
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Tokens to generate (-1 = until the model stops or the context is full).
    #[arg(short = 'n', long = "max-tokens", visible_alias = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    pub max_tokens: i64,
    /// Temperature; 0 = greedy.
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    pub temp: f32,
    /// Top-k (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Top-p / nucleus (1.0 = off).
    #[arg(long = "top-p", default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Min-p (0.0 = off).
    #[arg(long = "min-p", default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(
        long = "repeat-penalty",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub repeat_penalty: f32,
    /// Recent tokens the penalties look at.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (default: a fresh one each run).
    #[arg(short = 's', long = "seed")]
    pub seed: Option<u64>,
    /// Stop when this text is generated (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Never sample end of generation: the answer runs to --max-tokens (llama-cli's
    /// --ignore-eos).
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// The settings, checked as the sampler needs them (`n_vocab` bounds `--top-k`).
    pub fn params(&self, n_ctx: usize, n_vocab: usize) -> Result<GenerateParams> {
        let max_tokens = match self.max_tokens {
            -1 => n_ctx,
            n if n >= 0 => n as usize,
            n => bail!("--max-tokens must be -1 or a count, got {n}"),
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let sampling = SamplingParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: Vec::new(),
            seed,
        };
        if let Err(e) = sampling.validate(n_vocab) {
            bail!("{} {}", flag(e.field), e.message);
        }
        Ok(GenerateParams {
            max_tokens,
            sampling,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
        })
    }
}

/// The command-line flag of a sampling setting.
fn flag(f: SamplingField) -> &'static str {
    match f {
        SamplingField::Temperature => "--temp",
        SamplingField::TopK => "--top-k",
        SamplingField::TopP => "--top-p",
        SamplingField::MinP => "--min-p",
        SamplingField::RepeatPenalty => "--repeat-penalty",
        SamplingField::PresencePenalty => "--presence-penalty",
        SamplingField::FrequencyPenalty => "--frequency-penalty",
        SamplingField::LogitBias => "--logit-bias",
    }
}

/// The prompt from the argument, a file (byte for byte) or stdin when it is not a terminal.
pub fn read_prompt(arg: Option<&str>, file: Option<&PathBuf>) -> Result<String> {
    match (arg, file) {
        (Some(_), Some(_)) => bail!("give the prompt either as an argument or with -f, not both"),
        (Some(p), None) => Ok(p.to_string()),
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read prompt file {}", path.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "prompt file {} is not valid UTF-8 (byte {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })
        }
        (None, None) => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("no prompt: pass one as an argument, with -f FILE, or on stdin");
            }
            let mut bytes = Vec::new();
            stdin
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read the prompt from stdin")?;
            String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("the prompt on stdin is not valid UTF-8"))
        }
    }
}

/// The line llama.cpp users look for after a run.
pub fn print_stats(o: &Outcome) {
    eprintln!(
        "prompt: {} tokens ({} cached), {:.1} tok/s | generation: {} tokens, {:.1} tok/s | stop: {:?}",
        o.n_prompt,
        o.n_cached,
        o.prompt_tps(),
        o.tokens.len(),
        o.gen_tps(),
        o.stop_reason
    );
}
