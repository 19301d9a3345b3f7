//! `yorker`: the push engine's command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use yorker_engine::config::ServeArgs;

/// yorker: a thread-per-core io_uring push engine.
#[derive(Debug, Parser)]
#[command(name = "yorker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine until SIGTERM/SIGINT, then shut down gracefully (GOAWAY, drain, exit 0).
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => yorker_engine::cli::serve(args),
    }
}
