//! One gRPC channel to the broker, with the RocketMQ request headers on every call.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

/// Where and how to reach the broker.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker address, `host:port`.
    pub endpoint: String,
    /// Deadline of each unary call.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// Defaults (3 s requests) for the broker at `endpoint` (`host:port`).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self { endpoint: endpoint.into(), request_timeout: Duration::from_secs(3) }
    }
}

#[derive(Clone)]
pub(crate) struct Headers {
    client_id: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        md.insert("x-mq-client-id", self.client_id.clone());
        md.insert("x-mq-language", tonic::metadata::MetadataValue::from_static("RUST"));
        md.insert("x-mq-protocol-version", tonic::metadata::MetadataValue::from_static("2.0.0"));
        md.insert("x-mq-client-version", tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")));
        Ok(req)
    }
}

pub(crate) type Rpc = MessagingServiceClient<InterceptedService<Channel, Headers>>;

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// A client id like the official clients': `host@pid#seq#time`.
pub(crate) fn new_client_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "txmq-client".into());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{host}@{}#{}#{now:x}", std::process::id(), CLIENT_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A lazily connected channel: calls fail with [`Error::Unavailable`] while the broker is down
/// and work again once it is back.
pub(crate) fn connect(config: &ClientConfig, client_id: &str) -> Result<Rpc> {
    let endpoint = Endpoint::from_shared(format!("http://{}", config.endpoint))
        .map_err(|e| Error::InvalidArgument(format!("bad endpoint {:?}: {e}", config.endpoint)))?
        .connect_timeout(config.request_timeout)
        .tcp_nodelay(true);
    let channel = endpoint.connect_lazy();
    let client_id = client_id
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("client id {client_id:?} is not a valid header value")))?;
    Ok(MessagingServiceClient::with_interceptor(channel, Headers { client_id }))
}

/// Checks a response status: OK passes, anything else is [`Error::Broker`].
pub(crate) fn check(status: Option<&v2::Status>) -> Result<()> {
    match status {
        Some(s) if s.code == v2::Code::Ok as i32 => Ok(()),
        Some(s) => Err(Error::Broker {
            code: s.code,
            code_name: v2::Code::try_from(s.code)
                .map(|c| c.as_str_name().to_string())
                .unwrap_or_else(|_| "UNKNOWN".into()),
            message: s.message.clone(),
        }),
        None => {
            Err(Error::Broker { code: 0, code_name: "NO_STATUS".into(), message: "response without status".into() })
        }
    }
}

/// A unary call with the configured deadline.
pub(crate) async fn call<T, F>(timeout: Duration, f: F) -> Result<T>
where
    F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(Error::from_status(&s, timeout)),
        Err(_) => Err(Error::Timeout(timeout)),
    }
}

pub(crate) fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.to_string() })
}
