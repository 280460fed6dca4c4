//! `backstop run`: one prompt in, the answer streamed to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use backstop_engine::chat::ChatMessage;
use backstop_engine::generate::Engine;
use backstop_engine::grammar::Constraint;
use clap::Args;

use crate::options::{print_stats, read_prompt, ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt (or use -f FILE, or pipe it on stdin).
    pub prompt: Option<String>,
    /// Read the prompt from a file, byte for byte.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Raw completion: no chat template; stdout carries only the generated text.
    #[arg(long)]
    pub raw: bool,
    /// System prompt (chat mode).
    #[arg(long)]
    pub system: Option<String>,
    /// Constrain the output to JSON valid against this schema (a file, or the JSON itself).
    #[arg(long = "json-schema", short = 'j', value_name = "FILE|JSON")]
    pub json_schema: Option<String>,
    /// Constrain the output to a Lark grammar read from FILE (llguidance's dialect).
    #[arg(
        long = "grammar",
        alias = "grammar-file",
        value_name = "FILE",
        conflicts_with = "json_schema"
    )]
    pub grammar: Option<PathBuf>,
}

/// The output constraint the flags ask for, if any.
fn constraint(a: &RunArgs) -> Result<Option<Constraint>> {
    if let Some(arg) = &a.json_schema {
        let text = if arg.trim_start().starts_with('{') {
            arg.clone()
        } else {
            std::fs::read_to_string(arg)
                .with_context(|| format!("--json-schema: cannot read {arg}"))?
        };
        let schema: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("--json-schema is not valid JSON: {e}"))?;
        if !schema.is_object() {
            bail!("--json-schema must be a JSON object");
        }
        return Ok(Some(Constraint::JsonSchema(schema)));
    }
    if let Some(path) = &a.grammar {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--grammar: cannot read {}", path.display()))?;
        return Ok(Some(Constraint::Lark(text)));
    }
    Ok(None)
}

pub fn run(a: RunArgs) -> Result<()> {
    let prompt = read_prompt(a.prompt.as_deref(), a.file.as_ref())?;
    let constraint = constraint(&a)?;
    let engine = a.model.load()?;
    let mut session = engine.new_session(a.model.ctx_size)?;
    let params = a.sampling.params(session.n_ctx(), engine.n_vocab())?;
    let mut grammar = match &constraint {
        Some(c) => Some(engine.compile_constraint(c)?),
        None => None,
    };
    let tokens = if a.raw {
        engine.tokenizer.encode(&prompt, true)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(ChatMessage::new("system", s.as_str()));
        }
        messages.push(ChatMessage::new("user", prompt));
        chat_tokens(&engine, &messages)?
    };
    let mut stdout = std::io::stdout();
    let mut write_err = None;
    let outcome = engine.generate_with(
        &mut session,
        &tokens,
        &params,
        grammar.as_mut(),
        &mut |piece| match stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
        {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        },
    )?;
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write to stdout");
        }
    }
    if !a.raw {
        let _ = writeln!(stdout);
    }
    print_stats(&outcome);
    Ok(())
}

/// Render `messages` with the model's chat template and tokenize the result.
pub fn chat_tokens(engine: &Engine, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let template = engine
        .template
        .as_ref()
        .map_err(|e| anyhow::anyhow!("no usable chat template ({e}); use --raw"))?;
    let adds_bos = engine.tokenizer.add_bos();
    let text = template.render_prompt(messages, &[], true, adds_bos)?;
    Ok(engine.tokenizer.encode(&text, true)?)
}
