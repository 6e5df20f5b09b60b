//! The gRPC shell: RocketMQ's `MessagingService` and our `Admin` service over one [`Broker`].
//!
//! # Layout
//! - [`messaging`]: the RocketMQ 5 RPCs.
//! - [`telemetry`]: the Telemetry stream and the Settings the broker announces.
//! - [`clients`]: connected clients and their live streams.
//! - [`route`]: queues and endpoints in routes.
//! - [`convert`]: wire ↔ domain conversion with edge validation.
//! - [`status`]: broker errors → RocketMQ codes (the only place).
//! - [`admin`]: the operator API.
//! - [`caller`]: who is calling, and what they may do.
//! - [`transactions`]: `txmq.v1.Transactions`, many transaction decisions in one call.
//! - [`calls`]: `txmq.v1.Transactions/Calls`, the SDK's sends and decisions on one stream.
//!
//! Owns: connected clients and their streams ([`clients`]). Never touches the store or a
//! part of the broker directly: every call goes through [`Broker`].
//!
//! [`Broker`]: crate::broker::Broker

pub mod admin;
pub mod caller;
pub mod calls;
pub mod clients;
pub mod convert;
pub mod forward;
pub mod messaging;
pub mod route;
pub mod status;
pub mod telemetry;
pub mod transactions;
