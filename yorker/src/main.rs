//! `yorker`: the push engine's command line.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use yorker::config::{RelayArgs, ServeArgs};
use yorker::settings_file;

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
    /// Print the effective settings of `yorker serve` (from --config, YORKER_* variables and
    /// flags; keys hidden) and check them as `serve` would; exit 2 when they are invalid.
    CheckConfig(ServeArgs),
    /// A backend that appends every client message (MESSAGE) of an engine to a Redis stream,
    /// keyed by the sender's user (docs/SCALE-OUT.md). Runs until SIGTERM/SIGINT; exits 1 when
    /// the engine refuses its key.
    Sink(yorker::config::SinkArgs),
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // The settings file feeds the environment before the command line is parsed, so that the
    // environment and then the flags override it, and every value goes through one parser.
    if let Some(path) = settings_file::config_path(&argv) {
        let sub = argv
            .get(1)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmd = Cli::command();
        let Some(sc) = cmd.find_subcommand(&sub).cloned() else {
            eprintln!(
                "error: --config needs a command (yorker serve|relay|check-config --config FILE)"
            );
            return ExitCode::from(2);
        };
        match settings_file::read(&path, &sc) {
            Ok(s) => settings_file::apply(s),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let matches = Cli::command().get_matches_from(&argv);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve(args) => yorker::cli::serve(args),
        Command::Relay { relay, serve } => yorker::cli::relay(serve, relay),
        Command::CheckConfig(args) => {
            let (_, m) = matches.subcommand().expect("a subcommand");
            check_config(&args, m)
        }
        Command::Sink(args) => yorker::cli::sink(args),
    }
}

/// Prints `setting = value  # source` for every setting, then validates.
fn check_config(args: &ServeArgs, m: &clap::ArgMatches) -> ExitCode {
    let cmd = Cli::command();
    let sc = cmd.find_subcommand("check-config").expect("defined");
    for a in sc.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let id = a.get_id().as_str();
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment or --config",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let value = match m.get_raw(id) {
            Some(vals) => vals
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
            None => continue,
        };
        let shown = if settings_file::SECRETS.contains(&long) {
            "<hidden>".to_string()
        } else {
            format!("{value:?}")
        };
        println!("{long} = {shown}  # {source}");
    }
    match args.to_config() {
        Ok(_) => {
            println!("# ok: these settings are valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
