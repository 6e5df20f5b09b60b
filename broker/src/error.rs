//! The broker's error type. Each variant names a distinct answer a client can act on; the one
//! place that turns them into RocketMQ status codes is `grpc::status`.

use crate::store::StoreError;
use thiserror::Error;

/// Why a broker operation was refused or failed.
#[derive(Debug, Error, Clone)]
pub enum BrokerError {
    /// The request is malformed in a way no more specific variant covers.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("illegal topic: {0}")]
    IllegalTopic(String),
    #[error("topic not found: {0}")]
    TopicNotFound(String),
    #[error("topic already exists: {0}")]
    TopicExists(String),
    #[error("illegal consumer group: {0}")]
    IllegalGroup(String),
    #[error("illegal message id: {0}")]
    IllegalMessageId(String),
    #[error("illegal tag: {0}")]
    IllegalTag(String),
    #[error("illegal message key: {0}")]
    IllegalKey(String),
    #[error("illegal message group: {0}")]
    IllegalMessageGroup(String),
    #[error("illegal property key: {0}")]
    IllegalPropertyKey(String),
    #[error("message properties too large: {0}")]
    PropertiesTooLarge(String),
    #[error("message body too large: {size} bytes, the limit is {limit}")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("request too large: {0}")]
    PayloadTooLarge(String),
    #[error("illegal delivery time: {0}")]
    IllegalDeliveryTime(String),
    /// The message's type conflicts with its own fields or with its topic's type.
    #[error("message type conflict: {0}")]
    TypeConflict(String),
    #[error("illegal filter expression: {0}")]
    IllegalFilter(String),
    #[error("illegal invisible duration: {0}")]
    IllegalInvisibleTime(String),
    /// The receipt handle is malformed, stale (the message was redelivered) or already used.
    #[error("invalid receipt handle: {0}")]
    InvalidReceiptHandle(String),
    #[error("invalid transaction id: {0}")]
    InvalidTransactionId(String),
    /// The request conflicts with the current state (a contrary transaction decision).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
    /// A bound was hit (connections, in-flight work, long polls).
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    /// The request is not signed, or its signature, access key or date is wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The caller is known but its policy does not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// An admin request names something that does not exist (a user).
    #[error("not found: {0}")]
    NotFound(String),
    /// The broker's configuration (or a file it names) is unusable; only at start.
    #[error("configuration: {0}")]
    Config(String),
    /// A configured quota (topics, groups) is full; nothing was created.
    #[error("limit reached: {0}")]
    QuotaExceeded(String),
    /// A lite topic name is malformed. Only on lite paths (LITE messages, lite
    /// subscriptions), which the Rust 5.0.0 client cannot reach: its code is one it lacks.
    #[error("illegal lite topic: {0}")]
    IllegalLiteTopic(String),
    /// A LITE topic has as many lite topics as allowed (lite paths only, as above).
    #[error("lite topic quota exceeded: {0}")]
    LiteTopicQuotaExceeded(String),
    /// The broker holds as many lite subscriptions as allowed (lite paths only, as above).
    #[error("lite subscription quota exceeded: {0}")]
    LiteSubscriptionQuotaExceeded(String),
    /// The data directory's disk is nearly full: new messages are refused (`disk`); other
    /// writes go on.
    #[error("{0}")]
    DiskLow(String),
    /// The store refuses writes (failed flush) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or an impossible state; never caused by the request alone.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
