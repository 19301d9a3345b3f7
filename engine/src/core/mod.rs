//! The sans-IO core: every decision of the engine, in plain Rust, driven by bytes, completions
//! and `now`, and tested without sockets. The io_uring driver (`crate::shard`) only moves bytes.
#![forbid(unsafe_code)]

pub mod auth;
pub mod outbox;
pub mod shard_core;
pub mod subscribers;
pub mod topic;

#[cfg(test)]
mod sim;

pub use shard_core::{CoreConfig, CoreStats, ShardCore, SlowPolicy};
pub use topic::{Registry, UpdateMsg};

/// The time, as the driver read it once for a batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic milliseconds since the server started (timeouts).
    pub ms: u64,
    /// Wall clock, microseconds since the Unix epoch (UPDATE timestamps).
    pub unix_us: u64,
}

/// Where a published update goes: every shard's inbound queue. Called with the topic locked,
/// so implementations must only enqueue and wake, never block.
pub trait Bus: Send + Sync {
    /// Delivers `msg` to every shard (the publishing shard included).
    fn publish(&self, msg: UpdateMsg);
}
