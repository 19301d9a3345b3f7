//! # yorker-engine
//!
//! The push engine behind the `yorker` binary (package `yorker`; relays are `yorker-relay`). Thread-per-core: each shard thread owns an
//! io_uring, a SO_REUSEPORT listener, its connections and its subscriber index. Every decision
//! lives in the sans-IO [`proto`] layer; the [`driver`] only moves bytes and completions
//! between the kernel and it.
//!
//! See docs/ARCHITECTURE.md for the path of one update.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bus;
mod driver;
pub mod proto;
mod server;
mod stats;

pub use server::{ConfigError, Server, ServerConfig, StartError, Totals};
pub use stats::SharedStats;
