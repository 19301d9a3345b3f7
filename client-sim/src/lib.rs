//! # yorker-sim
//!
//! Load generator, match simulator and reference client of the yorker protocol.
//!
//! * [`fleet`]: thousands of simulated subscribers over io_uring, with per-client checks.
//! * [`bench`]: subscribers and a publisher in one command; burst and rate modes.
//! * [`demo`]: the README's main command.
//! * [`matchsim`], [`feed`], [`scorecard`], [`watch`]: the cricket side.
//! * [`proto`]: the protocols spoken, as sans-IO stream parsers.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod attack;
pub mod bench;
pub mod check;
pub mod cmd;
pub mod demo;
pub mod feed;
pub mod fleet;
pub mod matchsim;
pub mod probe;
pub mod proto;
pub mod publisher;
pub mod report;
pub mod scorecard;
pub mod swarm;
pub mod token;
pub mod watch;
