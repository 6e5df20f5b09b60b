//! The SDK's error type.

use thiserror::Error;

/// Why an SDK call failed. Branch on the variant, or ask [`Error::is_retryable`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached (connection refused, reset, DNS, TLS).
    #[error("broker unreachable: {0}")]
    Unavailable(String),
    /// The broker did not answer in time.
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The broker answered with a RocketMQ status other than OK.
    #[error("broker refused: {code_name} ({code}): {message}")]
    Broker {
        /// The RocketMQ status code (for example 40002 for ILLEGAL_TOPIC).
        code: i32,
        /// Its name, such as `ILLEGAL_TOPIC`.
        code_name: String,
        /// The broker's explanation.
        message: String,
    },
    /// The call's arguments are invalid (checked before anything is sent).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The database failed (transaction log, outbox, idempotency records).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The client was shut down.
    #[error("client is shut down")]
    Closed,
}

impl Error {
    /// True when the same call may succeed if retried later (with the same message id).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Timeout(_) => true,
            // TOO_MANY_REQUESTS, INTERNAL_*, HA_NOT_AVAILABLE, PROXY_TIMEOUT, *_PERSISTENCE_TIMEOUT.
            Error::Broker { code, .. } => matches!(code, 42900 | 50000 | 50001 | 50002 | 50400 | 50401 | 50402),
            _ => false,
        }
    }

    /// The same error again, for each call of a batch that failed as a whole.
    pub(crate) fn same(&self) -> Self {
        match self {
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            Error::Timeout(t) => Error::Timeout(*t),
            Error::Broker { code, code_name, message } => {
                Error::Broker { code: *code, code_name: code_name.clone(), message: message.clone() }
            }
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            Error::Database(e) => Error::Unavailable(format!("database: {e}")),
            Error::Closed => Error::Closed,
        }
    }

    /// True when the broker could not be reached at all (the outbox fallback's trigger).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }

    pub(crate) fn from_status(s: &tonic::Status, timeout: std::time::Duration) -> Self {
        match s.code() {
            tonic::Code::DeadlineExceeded => Error::Timeout(timeout),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                Error::Unavailable(s.message().to_string())
            }
            other => {
                // The nearest RocketMQ code, so that is_retryable() tells: refusals are final,
                // an overloaded or failing server may be tried again.
                let code = match other {
                    tonic::Code::Unauthenticated => 40100,
                    tonic::Code::PermissionDenied => 40300,
                    tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::AlreadyExists => 40000,
                    tonic::Code::NotFound => 40400,
                    tonic::Code::Unimplemented => 50100,
                    tonic::Code::FailedPrecondition => 42800,
                    tonic::Code::ResourceExhausted => 42900,
                    _ => 50000,
                };
                Error::Broker { code, code_name: format!("GRPC_{other:?}"), message: s.message().to_string() }
            }
        }
    }
}

/// Result alias of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_final_and_failures_may_be_retried() {
        let of = |code: tonic::Code| Error::from_status(&tonic::Status::new(code, "x"), std::time::Duration::ZERO);
        for final_code in [
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::FailedPrecondition,
            tonic::Code::Unimplemented,
        ] {
            assert!(!of(final_code).is_retryable(), "{final_code:?}");
        }
        for passing in [tonic::Code::ResourceExhausted, tonic::Code::Internal, tonic::Code::Unavailable] {
            assert!(of(passing).is_retryable(), "{passing:?}");
        }
        assert!(of(tonic::Code::DeadlineExceeded).is_unreachable());
        let Error::Broker { code_name, .. } = of(tonic::Code::Unimplemented) else { panic!() };
        assert_eq!(code_name, "GRPC_Unimplemented", "the batched-decision fallback looks for it");
    }
}
