//! runnel's sans-IO actors.
//!
//! Everything stateful in runnel is an [`core::Actor`]: a state machine driven by messages, timers
//! and disk completions, answering with effects. Nothing in this crate performs IO, reads a clock,
//! draws randomness of its own or spawns a thread; the tokio driver (in the `runnel` package) and
//! the deterministic simulator execute the effects. clippy's `disallowed_methods` enforces this.

#![warn(missing_docs)]

pub mod broker;
pub mod client;
pub mod controller;
pub mod core;
pub mod group;
pub mod log;
pub mod partition;
