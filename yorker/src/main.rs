//! `yorker`: the push engine's command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use yorker::config::{RelayArgs, ServeArgs};

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
    /// Run a relay engine: its updates come from an origin's multicast feed (--multicast-in) or
    /// from an upstream engine over TCP (--upstream); clients connect to it as to any engine.
    Relay {
        #[command(flatten)]
        relay: RelayArgs,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => yorker::cli::serve(args),
        Command::Relay { relay, serve } => yorker::cli::relay(serve, relay),
    }
}
