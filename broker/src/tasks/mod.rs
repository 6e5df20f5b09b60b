//! Background work that is not an RPC: each task runs until the broker shuts down.
//!
//! Owns nothing durable: each task calls the [`Broker`](crate::broker::Broker) (and the client
//! registry of `grpc::clients`); none touches the store.
//!
//! # Layout
//! - [`checkback`]: finds due transactions and writes check-back commands to producers' streams.
//! - [`retention`]: deletes expired messages and purges resolved transactions.
//! - [`sweep`]: forgets clients that are gone.
//! - [`metrics_http`]: the Prometheus text endpoint.

pub mod checkback;
pub mod metrics_http;
pub mod retention;
pub mod sweep;
