//! runnel: a Kafka-compatible event-streaming platform built from sans-IO actors.
//!
//! This package is the real world around the actors of `runnel-actors`: the tokio driver
//! (real files, real timers), the Kafka TCP front, `server.properties` parsing, a small Kafka
//! client for the CLI, and the CLI itself (`src/main.rs`).

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod config;
pub mod dev_cluster;
pub mod driver;
pub mod group_cli;
pub mod net;
pub mod server;
pub mod transport;
