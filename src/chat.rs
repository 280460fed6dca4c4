//! `backstop chat`: an interactive conversation on the terminal. The KV cache is kept between
//! turns, so each turn only evaluates the new messages.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use backstop_engine::chat::ChatMessage;
use clap::Args;

use crate::options::{print_stats, ModelArgs, SamplingArgs};
use crate::run::chat_tokens;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Print prompt and generation speed after each answer.
    #[arg(long)]
    pub verbose: bool,
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let engine = a.model.load_with_feedback()?;
    let mut session = engine.new_session(a.model.ctx_size)?;
    let params = a.sampling.params(session.n_ctx(), engine.n_vocab())?;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage::new("system", s.as_str()));
    }
    let initial = messages.len();
    eprintln!("backstop chat: type a message; /clear starts over, /bye or Ctrl-D quits.");
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        line.clear();
        if stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read stdin")?
            == 0
        {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match input.trim() {
            "" => continue,
            "/bye" | "/exit" | "/quit" => break,
            "/clear" => {
                messages.truncate(initial);
                session.truncate(0);
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", input));
        let tokens = chat_tokens(&engine, &messages)?;
        let mut reply = String::new();
        let outcome = engine.generate(&mut session, &tokens, &params, &mut |piece| {
            reply.push_str(piece);
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
            true
        });
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // A full context ends the conversation's memory, not the program.
                eprintln!("\nerror: {e}");
                messages.pop();
                continue;
            }
        };
        println!();
        if a.verbose {
            print_stats(&outcome);
        }
        messages.push(ChatMessage::new("assistant", reply));
    }
    Ok(())
}
