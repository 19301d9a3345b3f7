//! `yorker-sim`: load generator, match simulator and reference client for yorker.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use yorker::config::ServeArgs;
use yorker_sim::{attack, bench, cmd, demo, probe, swarm, token, watch};

/// yorker-sim: simulated game clients, a simulated match feed, benchmarks and the demo.
#[derive(Debug, Parser)]
#[command(name = "yorker-sim", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulated game clients subscribing to matches (one process, io_uring, > fd limit).
    Subscribe(cmd::SubscribeArgs),
    /// A match simulator (ball by ball) or raw benchmark payloads at a rate.
    Publish(cmd::PublishArgs),
    /// Subscribers and a publisher in one command: latency, fan-out completion, fairness, loss.
    Bench(bench::BenchArgs),
    /// Follow one match with a live scorecard in the terminal.
    Watch(watch::WatchArgs),
    /// The demo: engine + simulated clients + simulated matches for ~20 s, then a summary.
    Demo(demo::DemoArgs),
    /// Hostile or heavy clients against a running engine, with a canary measured before and
    /// during (relay HELLO storms, subscribe floods, dripping frames, HELLOs per second ...).
    Attack(attack::AttackArgs),
    /// Thousands of small rooms whose members POST to each other: losses and latency.
    Rooms(swarm::RoomsArgs),
    /// Clients sending MESSAGEs to backend stubs while a publisher broadcasts to all.
    Bets(swarm::BetsArgs),
    /// Mint a signed token (JWT) for a server started with --jwt-key.
    Token(token::TokenArgs),
    /// A PING (and MESSAGE) latency probe controlled over stdin (`busy`, `stop`); started by
    /// `bench --probe-ms`.
    Probe(probe::ProbeArgs),
    /// Run the engine itself (same as `yorker serve`); the demo starts it this way.
    #[command(hide = true)]
    Serve(Box<ServeArgs>),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Subscribe(a) => cmd::subscribe(&a),
        Command::Publish(a) => cmd::publish(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Watch(a) => watch::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Attack(a) => attack::run(&a),
        Command::Token(a) => token::run(&a),
        Command::Probe(a) => probe::run(&a),
        Command::Rooms(a) => swarm::rooms(&a),
        Command::Bets(a) => swarm::bets(&a),
        Command::Serve(a) => return yorker::cli::serve(*a),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("yorker-sim: {e}");
            ExitCode::from(1)
        }
    }
}
