//! The controller quorum: Raft over the `__cluster_metadata` log.

pub mod raft;
