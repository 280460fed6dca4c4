//! `backstop tokenize`: token ids of a text, as llama.cpp's llama-tokenize prints them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use backstop_engine::gguf::GgufFile;
use backstop_engine::tokenizer::Tokenizer;
use clap::Args;

use crate::options::read_prompt;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Path to a GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub model: String,
    /// The text (or use -f FILE, or pipe it on stdin).
    pub text: Option<String>,
    /// Read the text from a file, byte for byte.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print only the ids, as a list: [504, 3575, 282].
    #[arg(long)]
    pub ids: bool,
    /// Do not add BOS/EOS even where the model's metadata asks for them.
    #[arg(long = "no-bos")]
    pub no_bos: bool,
    /// Tokenize special-token text (e.g. <|im_start|>) as plain text.
    #[arg(long = "no-parse-special")]
    pub no_parse_special: bool,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let text = read_prompt(a.text.as_deref(), a.file.as_ref())?;
    let path = crate::models::resolve(&a.model, &crate::models::Places::from_env())?;
    let file = GgufFile::open(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let tok = Tokenizer::from_gguf(&file).context("cannot build the tokenizer")?;
    let ids = tok.encode_with(&text, !a.no_bos, !a.no_parse_special)?;
    if a.ids {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("[{}]", list.join(", "));
    } else {
        for id in ids {
            let piece = String::from_utf8_lossy(tok.token_piece(id, true));
            println!("{id:6} -> '{piece}'");
        }
    }
    Ok(())
}
