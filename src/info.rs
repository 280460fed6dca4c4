//! `backstop info`: what a GGUF file holds, read from its header only.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use backstop_engine::gguf::{keys, Array, GgufFile, Value};
use clap::Args;

#[derive(Args)]
pub struct InfoArgs {
    /// A GGUF file path, OWNER/REPO[:QUANT] from the cache, or a file name in ./models.
    #[arg(value_name = "MODEL", required_unless_present = "model")]
    pub file: Option<String>,
    #[arg(short = 'm', long = "model", value_name = "MODEL", hide = true)]
    pub model: Option<String>,
    /// Also list every tensor.
    #[arg(long)]
    pub tensors: bool,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let name = a.file.or(a.model).context("no model file given")?;
    let path = crate::models::resolve(&name, &crate::models::Places::from_env())?;
    let file = GgufFile::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let arch = file
        .get_str(keys::GENERAL_ARCHITECTURE)
        .unwrap_or("unknown");
    println!("file:          {}", path.display());
    println!("size:          {} ({} bytes)", human(size), size);
    println!("gguf version:  {}", file.version);
    println!("architecture:  {arch}");
    if let Ok(name) = file.get_str(keys::GENERAL_NAME) {
        println!("name:          {name}");
    }
    let n_params: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    println!("parameters:    {} ({n_params})", human_count(n_params));
    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in &file.tensors {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let types: Vec<String> = by_type
        .iter()
        .map(|(ty, (n, b))| format!("{ty}: {n} tensors, {}", human(*b)))
        .collect();
    println!("tensor types:  {}", types.join("; "));
    for (label, suffix) in [
        ("context:", "context_length"),
        ("embedding:", "embedding_length"),
        ("layers:", "block_count"),
        ("heads:", "attention.head_count"),
        ("kv heads:", "attention.head_count_kv"),
        ("ffn:", "feed_forward_length"),
    ] {
        if let Ok(v) = file.get_u32(&keys::arch_key(arch, suffix)) {
            println!("{label:<15}{v}");
        }
    }
    if let Ok(m) = file.get_str(keys::TOKENIZER_MODEL) {
        let n = match file.get_array(keys::TOKENIZER_TOKENS) {
            Ok(Array::String(t)) => t.len(),
            _ => 0,
        };
        let pre = file.get_str(keys::TOKENIZER_PRE).unwrap_or("-");
        println!("tokenizer:     {m} (pre: {pre}), {n} tokens");
    }
    let template = if file.get(keys::TOKENIZER_CHAT_TEMPLATE).is_some() {
        "from the file (tokenizer.chat_template)".to_string()
    } else {
        let (name, _) = backstop_engine::chat::builtin_template(arch);
        format!("none in the file; built-in {name} template is used")
    };
    println!("chat template: {template}");
    println!("metadata:");
    for (k, v) in &file.metadata {
        if k == keys::TOKENIZER_CHAT_TEMPLATE {
            continue;
        }
        println!("  {k} = {}", show(v));
    }
    if a.tensors {
        println!("tensors:");
        for t in &file.tensors {
            println!("  {:<40} {:<6} {:?}", t.name, t.ty.name(), t.dims);
        }
    }
    Ok(())
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let s: String = s.chars().take(80).collect();
            format!("{s:?}")
        }
        Value::Array(a) => format!("[{} x {}]", a.len(), a.elem_type_name()),
        other => format!("{other:?}")
            .split(['(', ')'])
            .nth(1)
            .unwrap_or("?")
            .to_string(),
    }
}

fn human(b: u64) -> String {
    let (v, unit) = match b {
        b if b >= 1 << 30 => (b as f64 / (1u64 << 30) as f64, "GiB"),
        b if b >= 1 << 20 => (b as f64 / (1u64 << 20) as f64, "MiB"),
        b if b >= 1 << 10 => (b as f64 / 1024.0, "KiB"),
        b => (b as f64, "B"),
    };
    format!("{v:.2} {unit}")
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n => format!("{n}"),
    }
}
