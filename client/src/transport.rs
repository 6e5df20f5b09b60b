//! The SDK's connections to the broker, with the RocketMQ request headers on every call.

use crate::batch::Batching;
use crate::connection::{BoxError, Connection};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

/// Where and how to reach the broker.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker address, `host:port`; several, comma-separated (nodes of one cluster), spread
    /// requests over those that answer.
    pub endpoint: String,
    /// Deadline of each unary call.
    pub request_timeout: Duration,
    /// Access key and secret: every request is signed (for a broker run with `--auth`).
    pub credentials: Option<Credentials>,
    /// Connect over TLS. `Some(None)`: trust the system's roots; `Some(Some(file))`: trust the
    /// CA certificates (PEM) in `file`.
    pub tls: Option<Option<std::path::PathBuf>>,
    /// Natural batching of sends and transaction decisions (on by default; see [`Batching`]).
    pub batching: Batching,
    /// Sends and transaction decisions go as messages of one stream
    /// (`txmq.v1.Transactions/Calls`) where the broker offers it (on by default). Not with
    /// [`Self::credentials`]: a signature is checked on each call against the clock, so signed
    /// clients make one unary call per request.
    pub stream_calls: bool,
}

impl ClientConfig {
    /// Defaults (3 s requests, no credentials) for the broker at `endpoint` (`host:port`).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            request_timeout: Duration::from_secs(3),
            credentials: None,
            tls: None,
            batching: Batching::default(),
            stream_calls: true,
        }
    }

    /// Connects over TLS, trusting the CA certificates in `ca_file` (PEM) or, without one, the
    /// system's roots. The broker's certificate must name the endpoint's host (an IP address
    /// needs an IP subject alternative name).
    pub fn with_tls(mut self, ca_file: Option<std::path::PathBuf>) -> Self {
        self.tls = Some(ca_file);
        self
    }

    /// The endpoint to dial, with TLS when configured; connects lazily. With several
    /// addresses, the first.
    pub fn endpoint(&self) -> Result<Endpoint> {
        self.endpoints()?.into_iter().next().ok_or_else(|| Error::InvalidArgument("no broker address".into()))
    }

    /// Every address of `endpoint`, configured like [`Self::endpoint`].
    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        self.endpoint.split(',').map(str::trim).filter(|a| !a.is_empty()).map(|a| self.endpoint_for(a)).collect()
    }

    fn endpoint_for(&self, address: &str) -> Result<Endpoint> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| Error::InvalidArgument(format!("bad endpoint {address:?}: {e}")))?
            .connect_timeout(self.request_timeout)
            .tcp_nodelay(true);
        if let Some(ca_file) = &self.tls {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            tls = match ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        Error::InvalidArgument(format!("cannot read the CA file {}: {e}", path.display()))
                    })?;
                    tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?;
        }
        Ok(endpoint)
    }

    /// Sets the bounds of natural batching ([`Batching::off`]: one request per call).
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    /// Signs every request with `access_key` and `secret_key`.
    pub fn with_credentials(mut self, access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::new(access_key, secret_key));
        self
    }
}

/// An access key and its secret, as the RocketMQ clients take them. `Debug` never shows the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key (the broker's user name).
    pub access_key: String,
    secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key", &self.access_key).finish_non_exhaustive()
    }
}

impl Credentials {
    /// An access key and its secret.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self { access_key: access_key.into(), secret_key: secret_key.into() }
    }

    /// Adds `x-mq-date-time` (now, RFC 3339 in UTC) and its signature in `authorization`:
    /// `MQv2-HMAC-SHA1 Credential=…, SignedHeaders=x-mq-date-time, Signature=<hex HMAC-SHA1>`.
    pub fn sign(&self, md: &mut tonic::metadata::MetadataMap) -> Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let date = rfc3339_utc(now);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, self.secret_key.as_bytes());
        let signature: String =
            ring::hmac::sign(&key, date.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let value = format!(
            "MQv2-HMAC-SHA1 Credential={}, SignedHeaders=x-mq-date-time, Signature={signature}",
            self.access_key
        );
        let bad = |_| Error::InvalidArgument("the access key is not a valid header value".into());
        md.insert("x-mq-date-time", date.parse().map_err(bad)?);
        md.insert("authorization", value.parse().map_err(bad)?);
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the epoch.
fn rfc3339_utc(t: Duration) -> String {
    let secs = t.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, t.subsec_millis())
}

/// Signs each request of a channel when it has credentials (for clients of other services on
/// the broker's port, such as the admin API).
#[derive(Clone, Debug, Default)]
pub struct Signer(pub Option<Credentials>);

impl tonic::service::Interceptor for Signer {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(c) = &self.0 {
            c.sign(req.metadata_mut()).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        }
        Ok(req)
    }
}

#[derive(Clone)]
pub(crate) struct Headers {
    client_id: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    signer: Signer,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        md.insert("x-mq-client-id", self.client_id.clone());
        md.insert("x-mq-language", tonic::metadata::MetadataValue::from_static("RUST"));
        md.insert("x-mq-protocol-version", tonic::metadata::MetadataValue::from_static("2.0.0"));
        md.insert("x-mq-client-version", tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")));
        self.signer.call(req)
    }
}

pub(crate) type Rpc = MessagingServiceClient<InterceptedService<Spread, Headers>>;
/// txmq's extension (`txmq.v1.Transactions`), over the same connections and headers.
pub(crate) type TxnRpc = txmq_proto::ext::transactions_client::TransactionsClient<InterceptedService<Spread, Headers>>;

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// A client id like the official clients': `host@pid#seq#time`.
pub(crate) fn new_client_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "txmq-client".into());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{host}@{}#{}#{now:x}", std::process::id(), CLIENT_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Lazily connected: calls fail with [`Error::Unavailable`] while the broker is down
/// and work again once it is back. With several addresses (nodes of a cluster, any of which
/// serves every call), see [`Spread`].
pub(crate) fn connect(config: &ClientConfig, client_id: &str) -> Result<(Rpc, TxnRpc)> {
    let endpoints = config.endpoints()?;
    if endpoints.is_empty() {
        return Err(Error::InvalidArgument("no broker address".into()));
    }
    let client_id = client_id
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("client id {client_id:?} is not a valid header value")))?;
    let (spread, headers) = (
        Spread::new(endpoints, config.request_timeout)?,
        Headers { client_id, signer: Signer(config.credentials.clone()) },
    );
    Ok((
        MessagingServiceClient::with_interceptor(spread.clone(), headers.clone()),
        txmq_proto::ext::transactions_client::TransactionsClient::with_interceptor(spread, headers),
    ))
}

/// How often an address that failed a call is tried again (by a TCP connect) until it answers.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The connections of a client, one per address, used in turn. An address whose call fails at the
/// transport (refused, reset: the node is down) is left out from that moment until it accepts
/// a connection again, so a node going away costs the calls in flight to it, not later ones.
#[derive(Clone)]
pub(crate) struct Spread {
    inner: Arc<SpreadInner>,
}

struct SpreadInner {
    connections: Vec<(String, Conn)>,
    down: Vec<std::sync::atomic::AtomicBool>,
    next: AtomicU64,
    /// True once every address was tried at start (several addresses only): the first calls
    /// wait for it (a few milliseconds), so they avoid an address that is down from the start.
    probed: tokio::sync::watch::Receiver<bool>,
}

impl Spread {
    fn new(endpoints: Vec<Endpoint>, connect_timeout: Duration) -> Result<Self> {
        let connections: Vec<(String, Conn)> = endpoints
            .into_iter()
            .map(|e| {
                let uri = e.uri();
                let plain = uri.scheme_str() == Some("http");
                // Without a port, the scheme's own (as tonic's channel dialled).
                let port = uri.port_u16().unwrap_or(if plain { 80 } else { 443 });
                let address = format!("{}:{port}", uri.host().unwrap_or_default());
                let conn = if plain {
                    Connection::new(&address, connect_timeout).map(Conn::Plain)?
                } else {
                    Conn::Tls(e.connect_lazy())
                };
                Ok((address, conn))
            })
            .collect::<std::result::Result<_, BoxError>>()
            .map_err(|e| Error::InvalidArgument(format!("bad broker address: {e}")))?;
        let down = connections.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        let single = connections.len() < 2;
        let (done, probed) = tokio::sync::watch::channel(single);
        let spread = Self { inner: Arc::new(SpreadInner { connections, down, next: AtomicU64::new(0), probed }) };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !single => {
                let inner = spread.inner.clone();
                rt.spawn(async move {
                    let mut probes = tokio::task::JoinSet::new();
                    for (i, (address, _)) in inner.connections.iter().enumerate() {
                        let address = address.clone();
                        probes.spawn(async move {
                            let answer =
                                tokio::time::timeout(PROBE_EVERY, tokio::net::TcpStream::connect(address)).await;
                            (i, matches!(answer, Ok(Ok(_))))
                        });
                    }
                    while let Some(Ok((i, answers))) = probes.join_next().await {
                        if !answers {
                            inner.mark_down(i);
                        }
                    }
                    let _ = done.send(true);
                });
            }
            _ => {
                let _ = done.send(true);
            }
        }
        Ok(spread)
    }

    /// The next address in turn that is not down (any, when all are).
    fn pick(&self) -> usize {
        let n = self.inner.connections.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) as usize;
        (0..n).map(|k| (start + k) % n).find(|i| !self.inner.down[*i].load(Ordering::Relaxed)).unwrap_or(start % n)
    }
}

impl SpreadInner {
    /// Leaves address `i` out until it accepts a connection again.
    fn mark_down(self: &Arc<Self>, i: usize) {
        if self.connections.len() < 2 || self.down[i].swap(true, Ordering::Relaxed) {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            let address = inner.connections[i].0.clone();
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if Arc::strong_count(&inner) == 1 {
                    return; // the client is gone
                }
                let probe = tokio::time::timeout(PROBE_EVERY, tokio::net::TcpStream::connect(&address)).await;
                if matches!(probe, Ok(Ok(_))) {
                    inner.down[i].store(false, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl tonic::codegen::Service<HttpRequest> for Spread {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<HttpResponse, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        // Each call waits for its own connection's readiness.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut probed = this.inner.probed.clone();
            if !*probed.borrow() {
                let _ = tokio::time::timeout(PROBE_EVERY, probed.wait_for(|done| *done)).await;
            }
            let i = this.pick();
            let answer = match &this.inner.connections[i].1 {
                Conn::Plain(connection) => connection.call(req).await,
                Conn::Tls(channel) => {
                    let mut channel = channel.clone();
                    match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                        Ok(()) => channel.call(req).await.map_err(Into::into),
                        Err(e) => Err(e.into()),
                    }
                }
            };
            if answer.is_err() {
                this.inner.mark_down(i);
            }
            answer
        })
    }
}

/// How the SDK reaches one address.
enum Conn {
    /// Plaintext: the SDK's own HTTP/2 connection, called from the caller's task.
    Plain(Connection),
    /// TLS: tonic's channel.
    Tls(Channel),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_gets_the_schemes_port() {
        let spread =
            Spread::new(ClientConfig::new("localhost, 127.0.0.1:8081").endpoints().unwrap(), Duration::from_secs(1))
                .unwrap();
        let addresses: Vec<&str> = spread.inner.connections.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(addresses, ["localhost:80", "127.0.0.1:8081"]);
    }

    #[test]
    fn dates_are_rfc3339_in_utc() {
        assert_eq!(rfc3339_utc(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(Duration::from_millis(951_868_800_250)), "2000-03-01T00:00:00.250Z");
        assert_eq!(rfc3339_utc(Duration::from_secs(1_798_761_599)), "2026-12-31T23:59:59.000Z");
    }
}
