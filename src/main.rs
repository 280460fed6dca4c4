//! The `backstop` command line: run, chat, info, tokenize, bench, serve.
//!
//! Errors end as one line on stderr and a non-zero exit. Only `pull` opens an outbound network
//! connection (and refuses under HF_HUB_OFFLINE=1 or --offline); every other command resolves
//! models from local files, and `serve` listens (on loopback by default).

mod bench;
mod chat;
mod info;
mod ls;
mod models;
mod options;
mod pull;
mod run;
mod serve;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "Run small quantized language models (GGUF) offline on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt (chat-formatted, or a raw completion with --raw) and exit.
    Run(run::RunArgs),
    /// Interactive multi-turn chat on the terminal.
    Chat(chat::ChatArgs),
    /// Print a GGUF file's metadata, architecture, tensor types and sizes.
    Info(info::InfoArgs),
    /// Print the token ids (and pieces) of a text, as llama-tokenize does.
    Tokenize(tokenize::TokenizeArgs),
    /// Prompt-processing and generation speed, in llama-bench's terms.
    Bench(bench::BenchArgs),
    /// Serve the model over HTTP with OpenAI- and Anthropic-compatible endpoints.
    Serve(serve::ServeArgs),
    /// Download a model from the Hugging Face hub into the local cache (the only command that
    /// uses the network).
    Pull(pull::PullArgs),
    /// List local models: downloads in the cache and files in ./models and BACKSTOP_MODELS.
    Ls(ls::LsArgs),
    /// Remove a downloaded model from the cache.
    Rm(ls::RmArgs),
}

fn main() -> ExitCode {
    // llama-bench spells its combined test `-pg`; clap's short flags are one letter.
    let args = std::env::args_os().map(|a| if a == "-pg" { "--pg".into() } else { a });
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own rendering for --help/--version; a bad flag gets its one-line summary.
            if e.use_stderr() {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("invalid arguments");
                eprintln!("{first}\n(run `backstop --help` for usage)");
                return ExitCode::from(2);
            }
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::chat(a),
        Command::Info(a) => info::info(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Pull(a) => pull::pull(a),
        Command::Ls(a) => ls::ls(a),
        Command::Rm(a) => ls::rm(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error chain on one line: "context: cause: cause".
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string().replace('\n', " "))
        .collect::<Vec<_>>()
        .join(": ")
}
