//! txmq-client: make "change my database and publish an event" safe.
//!
//! Speaks the Apache RocketMQ 5 gRPC protocol, so it works with txmq and any compatible
//! broker.
//!
//! # Layout
//! - [`Producer`]: normal, FIFO, delay and batch sends, retried with the same message id.
//! - [`TransactionProducer`]: half messages, [`TransactionProducer::send_in_transaction`], and
//!   check-backs answered by a [`TransactionChecker`].
//! - [`db`] (feature `sqlite`, default; `postgres` for PostgreSQL): a transaction log whose checker answers from the
//!   application's database with a barrier against slow local transactions, the outbox used
//!   when the broker is down (and its relay), and idempotent consumption.
//! - [`SimpleConsumer`] and [`Consumer`]: receive/ack by hand, or run a handler with bounded
//!   concurrency, acking on success and retrying with backoff on failure.
//! - [`Error`]: every failure, with [`Error::is_retryable`].
//!
//! The Telemetry stream (which carries check-backs) is re-opened whenever it breaks, for
//! example across a broker restart.
//!
//! Calls batch naturally ([`Batching`], on by default): sends, half messages, acks and
//! transaction decisions made while others are in flight leave together in the next request
//! (decisions in txmq's `txmq.v1.Transactions/EndTransactions`, falling back to one
//! `EndTransaction` each on a broker without it), and each call still gets its own result. An
//! idle client sends each call at once: there is no linger.

#![deny(missing_docs)]

mod batch;
mod calls;
mod connection;
mod consumer;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod db;
mod error;
mod message;
mod producer;
mod session;
mod transaction;
mod transport;

pub use batch::Batching;
pub use consumer::{backoff, Consumer, SimpleConsumer, Subscription};
pub use error::{Error, Result};
pub use message::{new_message_id, Message, ReceivedMessage, SendReceipt};
pub use producer::Producer;
pub use transaction::{
    CheckRequest, PendingTransaction, Resolution, TransactionChecker, TransactionProducer, TxnContext,
};
pub use transport::{ClientConfig, Credentials, Signer};
