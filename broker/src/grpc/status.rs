//! The one place where broker errors become RocketMQ status codes.
//!
//! Only codes the official Rust 5.0.0 client can decode are ever produced: it panics on any
//! other value (docs/protocol.md §1). `NEVER_SENT` lists the ones to avoid, and a test checks
//! every error variant against it.

use crate::error::BrokerError;
use crate::store::StoreError;
use txmq_proto::v2::{Code, Status};

/// Codes absent from the Rust 5.0.0 client's enum: emitting one crashes that client.
pub const NEVER_SENT: [Code; 7] = [
    Code::OffsetNotFound,
    Code::MessageBodyEmpty,
    Code::IllegalOffset,
    Code::IllegalLiteTopic,
    Code::LiteTopicQuotaExceeded,
    Code::LiteSubscriptionQuotaExceeded,
    Code::InvalidClientProperties,
];

pub fn ok() -> Status {
    Status { code: Code::Ok as i32, message: "OK".into() }
}

pub fn with(code: Code, message: impl Into<String>) -> Status {
    Status { code: code as i32, message: message.into() }
}

/// The RocketMQ code for an error.
pub fn code(err: &BrokerError) -> Code {
    match err {
        BrokerError::BadRequest(_) => Code::BadRequest,
        BrokerError::IllegalTopic(_) => Code::IllegalTopic,
        BrokerError::TopicNotFound(_) => Code::TopicNotFound,
        BrokerError::TopicExists(_) => Code::BadRequest,
        BrokerError::IllegalGroup(_) => Code::IllegalConsumerGroup,
        BrokerError::IllegalMessageId(_) => Code::IllegalMessageId,
        BrokerError::IllegalTag(_) => Code::IllegalMessageTag,
        BrokerError::IllegalKey(_) => Code::IllegalMessageKey,
        BrokerError::IllegalMessageGroup(_) => Code::IllegalMessageGroup,
        BrokerError::IllegalPropertyKey(_) => Code::IllegalMessagePropertyKey,
        BrokerError::PropertiesTooLarge(_) => Code::MessagePropertiesTooLarge,
        BrokerError::BodyTooLarge { .. } => Code::MessageBodyTooLarge,
        BrokerError::PayloadTooLarge(_) => Code::PayloadTooLarge,
        BrokerError::IllegalDeliveryTime(_) => Code::IllegalDeliveryTime,
        BrokerError::TypeConflict(_) => Code::MessagePropertyConflictWithType,
        BrokerError::IllegalFilter(_) => Code::IllegalFilterExpression,
        BrokerError::IllegalInvisibleTime(_) => Code::IllegalInvisibleTime,
        BrokerError::InvalidReceiptHandle(_) => Code::InvalidReceiptHandle,
        BrokerError::InvalidTransactionId(_) => Code::InvalidTransactionId,
        BrokerError::PreconditionFailed(_) => Code::PreconditionFailed,
        BrokerError::NotImplemented(_) => Code::NotImplemented,
        BrokerError::TooManyRequests(_) => Code::TooManyRequests,
        BrokerError::QuotaExceeded(_) => Code::Forbidden,
        BrokerError::IllegalLiteTopic(_) => Code::IllegalLiteTopic,
        BrokerError::LiteTopicQuotaExceeded(_) => Code::LiteTopicQuotaExceeded,
        BrokerError::LiteSubscriptionQuotaExceeded(_) => Code::LiteSubscriptionQuotaExceeded,
        BrokerError::Unauthorized(_) => Code::Unauthorized,
        BrokerError::Forbidden(_) => Code::Forbidden,
        BrokerError::NotFound(_) => Code::NotFound,
        BrokerError::Config(_) => Code::InternalError,
        // The broker could not store what it was asked to now, and another might: a cluster
        // node passes a send answered so on to the next owner (`grpc::messaging`). Nothing
        // else is answered this code. Its first use is the RocketMQ proxy's for "disk full".
        BrokerError::DiskLow(_) => Code::InternalServerError,
        BrokerError::Store(StoreError::Closed) => Code::InternalServerError,
        BrokerError::Store(_) => Code::InternalServerError,
        BrokerError::Internal(_) => Code::InternalError,
    }
}

/// The status answered for an error.
pub fn status(err: &BrokerError) -> Status {
    with(code(err), err.to_string())
}

/// One error of every kind, for checking the codes the mapping can answer.
fn one_of_each_error() -> Vec<BrokerError> {
    vec![
        BrokerError::BadRequest(String::new()),
        BrokerError::Unauthorized(String::new()),
        BrokerError::Forbidden(String::new()),
        BrokerError::NotFound(String::new()),
        BrokerError::Config(String::new()),
        BrokerError::IllegalTopic(String::new()),
        BrokerError::TopicNotFound(String::new()),
        BrokerError::TopicExists(String::new()),
        BrokerError::IllegalGroup(String::new()),
        BrokerError::IllegalMessageId(String::new()),
        BrokerError::IllegalTag(String::new()),
        BrokerError::IllegalKey(String::new()),
        BrokerError::IllegalMessageGroup(String::new()),
        BrokerError::IllegalPropertyKey(String::new()),
        BrokerError::PropertiesTooLarge(String::new()),
        BrokerError::BodyTooLarge { size: 0, limit: 0 },
        BrokerError::PayloadTooLarge(String::new()),
        BrokerError::IllegalDeliveryTime(String::new()),
        BrokerError::TypeConflict(String::new()),
        BrokerError::IllegalFilter(String::new()),
        BrokerError::IllegalInvisibleTime(String::new()),
        BrokerError::InvalidReceiptHandle(String::new()),
        BrokerError::InvalidTransactionId(String::new()),
        BrokerError::PreconditionFailed(String::new()),
        BrokerError::NotImplemented("x"),
        BrokerError::TooManyRequests(String::new()),
        BrokerError::QuotaExceeded(String::new()),
        BrokerError::IllegalLiteTopic(String::new()),
        BrokerError::LiteTopicQuotaExceeded(String::new()),
        BrokerError::LiteSubscriptionQuotaExceeded(String::new()),
        BrokerError::DiskLow(String::new()),
        BrokerError::Store(StoreError::Closed),
        BrokerError::Store(StoreError::Poisoned(String::new())),
        BrokerError::Internal(String::new()),
    ]
}

/// Errors only lite paths produce (LITE messages, SyncLiteSubscription): the Python client,
/// which has lite topics, decodes their codes; the Rust 5.0.0 client never reaches them.
pub fn lite_only(err: &BrokerError) -> bool {
    matches!(
        err,
        BrokerError::IllegalLiteTopic(_)
            | BrokerError::LiteTopicQuotaExceeded(_)
            | BrokerError::LiteSubscriptionQuotaExceeded(_)
    )
}

/// Every code [`code`] answers on paths every client reaches, one per error kind: tests check
/// them against the codes the official clients decode.
pub fn all_error_codes() -> Vec<Code> {
    one_of_each_error().iter().filter(|e| !lite_only(e)).map(code).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_error_maps_to_a_code_the_rust_client_cannot_decode() {
        let all = one_of_each_error();
        for e in all.iter().filter(|e| !lite_only(e)) {
            let c = code(e);
            assert!(!NEVER_SENT.contains(&c), "{e:?} maps to {c:?}");
            assert!(c != Code::Unspecified && c != Code::Ok, "{e:?}");
        }
    }
}
