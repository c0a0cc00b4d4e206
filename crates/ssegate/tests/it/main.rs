//! Integration tests: real servers on port 0, real sockets, the project's own client.
//!
//! In-process nodes come from [`helpers::spawn_app`]; tests about the process itself
//! (signals, exit codes, memory) start the real `ssegate` binary with
//! [`helpers::spawn_process`].

#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod api;
mod body_bounds;
mod churn;
mod cluster;
mod cluster_failures;
mod config;
mod descriptor_bounds;
mod drain;
mod errors;
mod front;
mod helpers;
mod history_bounds;
mod hyper_bounds;
mod lb;
mod memory_bounds;
mod node_cache;
mod observability;
mod open_race;
mod overload;
mod pooled_close;
mod protocol;
mod pubsub_recovery;
mod redis_cluster;
mod redis_cluster_shards;
mod redis_server;
mod redis_tls;
mod replay_bounds;
mod resume;
mod security;
mod sentinel;
mod slow_consumer;
