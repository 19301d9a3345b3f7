//! # yorker-engine
//!
//! The push engine behind the `yorker` binary. Thread-per-core: each [`shard`] owns an io_uring,
//! a SO_REUSEPORT listener, its connections and its subscriber index. Every decision lives in
//! the sans-IO [`core`]; the shard driver only moves bytes between the kernel and the core.
//!
//! See docs/ARCHITECTURE.md for the path of one update.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bus;
pub mod cli;
pub mod config;
pub mod core;
pub mod relay;
pub mod server;
pub mod shard;
pub mod stats;

pub use server::{Server, ServerConfig, StartError, Totals};
