//! txmq broker: a transactional message broker that speaks the Apache RocketMQ 5 gRPC protocol.
//!
//! # Layout
//! - [`server`]: binds, serves both gRPC services, shuts down gracefully.
//! - [`grpc`]: the async shell: RocketMQ `MessagingService`, Telemetry, the admin API, and the
//!   single mapping from broker errors to RocketMQ status codes.
//! - [`broker`]: the broker: its parts (topics, message log, consumers, transactions) wired
//!   together, and the operations that span them.
//! - [`consume`]: consumer groups, POP-style receive/ack, redelivery, dead letters, FIFO.
//! - [`auth`]: users, signed requests, access policies.
//! - [`txn`]: transactional (half) messages: lifecycle, EndTransaction, check-back, timelines.
//! - [`log`]: queues of messages, offsets, durable high watermarks, idempotent appends.
//! - [`topics`]: topic names and the topic registry.
//! - [`model`]: domain types and their on-disk records.
//! - [`store`]: the storage trait, sled and memory stores, group commit.
//! - [`cluster`]: membership, placement, users and replica sets in etcd; peer security.
//! - [`replication`]: a node's store copied to followers; acknowledgement by the in-sync set.
//! - [`codec`]: the byte codec of keys and records (one versioned `Record` style).
//! - [`clock`]: the broker's clock.
//! - [`config`]: flags, environment, TOML file.
//! - [`disk`]: the data directory's free space; new messages refused below a floor.
//! - [`error`]: the broker's error enum.
//! - [`sync`]: the one policy for poisoned locks.
//! - [`tls`]: TLS beside plaintext on the one port, reloaded on SIGHUP.
//! - [`tasks`]: background work: check-backs, retention, client sweeps, the metrics endpoint.

pub mod audit;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod consume;
pub mod disk;
pub mod error;
pub mod grpc;
pub mod log;
pub mod metrics;
pub mod model;
pub mod replication;
pub mod server;
pub mod store;
pub mod sync;
pub mod tasks;
pub mod tls;
pub mod topics;
pub mod txn;
