//! # yorker
//!
//! The `yorker` binary's process layer: flags and environment ([`config`]), and running an
//! engine (`yorker serve`) or a relay (`yorker relay`) until a signal ([`cli`]): signals, the
//! stats line, the relay feed threads; the admin HTTP listener ([`admin`]); the settings file
//! ([`settings_file`]). The engine is `yorker-engine`, relays `yorker-relay`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod settings_file;
