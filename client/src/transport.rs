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
    /// How a broker that froze (a stopped process, a hung machine: its socket stays open) is
    /// found out. A connection with calls or streams open pings the broker after this long
    /// without hearing from it, and closes when the ping is not answered within as long again:
    /// the calls on it fail, and with several addresses that one is left out until it answers.
    /// The default, 1 s, fails them within 2 s, before the default 3 s deadline. `None`: no
    /// pings, for a server that refuses frequent ones (gRPC Java's servers allow one per five
    /// minutes by default); a frozen broker's calls then only time out, and its streams wait.
    pub keepalive: Option<Duration>,
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
            keepalive: Some(Duration::from_secs(1)),
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
        if let Some(keepalive) = self.keepalive {
            endpoint = endpoint.http2_keep_alive_interval(keepalive).keep_alive_timeout(keepalive);
        }
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
        Spread::new(endpoints, config.request_timeout, config.keepalive)?,
        Headers { client_id, signer: Signer(config.credentials.clone()) },
    );
    Ok((
        MessagingServiceClient::with_interceptor(spread.clone(), headers.clone()),
        txmq_proto::ext::transactions_client::TransactionsClient::with_interceptor(spread, headers),
    ))
}

/// How often an address that failed a call is probed again until it answers, and how long a
/// probe waits for the answer.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The connections of a client, one per address, used in turn. An address whose call fails at the
/// transport (refused, reset, a ping unanswered: the node is down or frozen), before or after
/// its answer began, is left out from that moment until it answers a probe, so a node going
/// away costs the calls in flight to it, not later ones.
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
    fn new(endpoints: Vec<Endpoint>, connect_timeout: Duration, keepalive: Option<Duration>) -> Result<Self> {
        let connections: Vec<(String, Conn)> = endpoints
            .into_iter()
            .map(|e| {
                let uri = e.uri();
                let plain = uri.scheme_str() == Some("http");
                // Without a port, the scheme's own (as tonic's channel dialled).
                let port = uri.port_u16().unwrap_or(if plain { 80 } else { 443 });
                let address = format!("{}:{port}", uri.host().unwrap_or_default());
                let conn = if plain {
                    Connection::new(&address, connect_timeout, keepalive).map(Conn::Plain)?
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
                    for i in 0..inner.connections.len() {
                        let inner = inner.clone();
                        probes.spawn(async move { (i, inner.connections[i].1.answers().await) });
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
    /// Leaves address `i` out until it answers a probe.
    fn mark_down(self: &Arc<Self>, i: usize) {
        if self.connections.len() < 2 || self.down[i].swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::debug!(address = %self.connections[i].0, "left out until it answers");
        // The probe holds the client only while it probes, so that the probes of several
        // addresses left out do not keep each other's client alive once it is gone.
        let client = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(inner) = client.upgrade() else { return };
                if inner.connections[i].1.answers().await {
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
            match this.inner.connections[i].1.call(req).await {
                // A stream, or a long poll, whose node fails after answering its headers
                // leaves the node out too.
                Ok(response) => Ok(response
                    .map(|body| tonic::body::Body::new(Watched { body, failed: Some((this.inner.clone(), i)) }))),
                Err(e) => {
                    this.inner.mark_down(i);
                    Err(e)
                }
            }
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

impl Conn {
    async fn call(&self, req: HttpRequest) -> std::result::Result<HttpResponse, BoxError> {
        match self {
            Conn::Plain(connection) => connection.call(req).await,
            Conn::Tls(channel) => {
                use tonic::codegen::Service;
                let mut channel = channel.clone();
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                Ok(channel.call(req).await?)
            }
        }
    }

    /// True when something answers HTTP/2 at the address within [`PROBE_EVERY`]
    /// ([`txmq_proto::probe`]: a TCP connect would not do, since the kernel accepts
    /// connections for a process that is stopped).
    async fn answers(&self) -> bool {
        let probe = txmq_proto::probe::request();
        matches!(tokio::time::timeout(PROBE_EVERY, self.call(probe)).await, Ok(Ok(_)))
    }
}

/// A response body that leaves its address out when the connection fails under it.
struct Watched {
    body: tonic::body::Body,
    /// Taken when the address is left out, so that happens once per body.
    failed: Option<(Arc<SpreadInner>, usize)>,
}

impl http_body::Body for Watched {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &frame {
            if let Some((inner, i)) = self.failed.take() {
                inner.mark_down(i);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
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

/// `d` as a protobuf duration, its fraction of a second included.
pub(crate) fn wire_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub(crate) fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use tonic::codegen::Service as _;

    #[test]
    fn an_address_without_a_port_gets_the_schemes_port() {
        let spread = Spread::new(
            ClientConfig::new("localhost, 127.0.0.1:8081").endpoints().unwrap(),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        let addresses: Vec<&str> = spread.inner.connections.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(addresses, ["localhost:80", "127.0.0.1:8081"]);
    }

    /// An HTTP/2 server at a new address: `/x` answers at once (counted), `/stream` answers its
    /// headers and then a body that never ends; anything else (a probe) answers at once.
    async fn server() -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = counted.clone();
                let answer = hyper::service::service_fn(move |req: HttpRequestIn| {
                    let counted = counted.clone();
                    async move {
                        let body = match req.uri().path() {
                            "/stream" => tonic::body::Body::new(Forever),
                            path => {
                                if path == "/x" {
                                    counted.fetch_add(1, Ordering::Relaxed);
                                }
                                tonic::body::Body::empty()
                            }
                        };
                        tonic::codegen::http::Response::builder().status(200).body(body)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), answer),
                );
            }
        });
        (address, count)
    }

    type HttpRequestIn = tonic::codegen::http::Request<hyper::body::Incoming>;

    /// A body that never yields a frame.
    struct Forever;

    impl http_body::Body for Forever {
        type Data = tonic::codegen::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }

    /// A TCP proxy to `target` that can freeze: while frozen it accepts connections but passes
    /// no byte either way and closes nothing, as a stopped process or a hung machine does.
    async fn freezable_proxy(target: String) -> (String, tokio::sync::watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (frozen, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { return };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, watch.clone()));
                tokio::spawn(pass(server_read, client_write, watch.clone()));
            }
        });
        (address, frozen)
    }

    async fn pass(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0; 16 * 1024];
        loop {
            let Ok(n) = from.read(&mut buf).await else { return };
            if n == 0 || frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    async fn call(spread: &Spread, path: &str) -> std::result::Result<HttpResponse, BoxError> {
        let req = tonic::codegen::http::Request::post(path).body(tonic::body::Body::empty()).unwrap();
        spread.clone().call(req).await
    }

    #[tokio::test]
    async fn a_frozen_address_fails_its_calls_by_pings_and_is_left_out_until_it_answers() {
        let (frozen_at, frozen_count) = server().await;
        let (proxy, freeze) = freezable_proxy(frozen_at).await;
        let (other, other_count) = server().await;
        let config = ClientConfig::new(format!("{proxy},{other}"));
        let spread =
            Spread::new(config.endpoints().unwrap(), Duration::from_secs(1), Some(Duration::from_millis(200))).unwrap();

        // Addresses are taken in turn: the stream goes to the proxy, then one call each.
        let mut stream = call(&spread, "/stream").await.unwrap().into_body();
        call(&spread, "/x").await.unwrap();
        call(&spread, "/x").await.unwrap();
        assert_eq!((frozen_count.load(Ordering::Relaxed), other_count.load(Ordering::Relaxed)), (1, 1));

        // Frozen: the open stream fails by its unanswered ping, not by a deadline of its own.
        freeze.send(true).unwrap();
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_frame(cx));
        match tokio::time::timeout(Duration::from_secs(3), frame).await {
            Ok(Some(Err(_))) => {}
            Ok(other) => panic!("a stream on a frozen address: {:?}", other.map(|f| f.is_ok())),
            Err(_) => panic!("a stream on a frozen address waited past its pings"),
        }
        // The address is left out, and stays out while its probes go unanswered (a TCP connect
        // would succeed: the proxy, like a stopped process's kernel, accepts): every call goes
        // to the other one, and none fails.
        tokio::time::sleep(3 * PROBE_EVERY).await;
        for _ in 0..10 {
            call(&spread, "/x").await.unwrap();
        }
        assert_eq!((frozen_count.load(Ordering::Relaxed), other_count.load(Ordering::Relaxed)), (1, 11));

        // Thawed, it answers a probe and takes calls again.
        freeze.send(false).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while frozen_count.load(Ordering::Relaxed) == 1 {
            assert!(std::time::Instant::now() < deadline, "the thawed address never took a call again");
            call(&spread, "/x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn without_keepalive_a_stream_on_a_frozen_address_is_not_pinged() {
        let (frozen_at, _) = server().await;
        let (proxy, freeze) = freezable_proxy(frozen_at).await;
        let config = ClientConfig::new(proxy);
        let spread = Spread::new(config.endpoints().unwrap(), Duration::from_secs(1), None).unwrap();
        let mut stream = call(&spread, "/stream").await.unwrap().into_body();
        freeze.send(true).unwrap();
        // Five times what a 200 ms keep-alive needs to close it (the test above).
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_frame(cx));
        assert!(tokio::time::timeout(Duration::from_secs(2), frame).await.is_err(), "something ended the stream");
    }

    #[tokio::test]
    async fn the_probes_of_a_client_that_is_gone_stop() {
        let nobody = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let config = ClientConfig::new(format!("{},{}", nobody(), nobody()));
        let spread = Spread::new(config.endpoints().unwrap(), Duration::from_secs(1), None).unwrap();
        // Both addresses are left out at start, each with its probe going on.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !spread.inner.down.iter().all(|d| d.load(Ordering::Relaxed)) {
            assert!(std::time::Instant::now() < deadline, "the addresses were never left out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inner = Arc::downgrade(&spread.inner);
        drop(spread);
        tokio::time::sleep(3 * PROBE_EVERY).await;
        assert!(inner.upgrade().is_none(), "probes still hold the client they probe for");
    }

    #[test]
    fn durations_keep_their_fraction_of_a_second() {
        // A 500 ms long poll was sent as 0 s, so an empty receive returned at once.
        let d = wire_duration(Duration::from_millis(1_500));
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }

    #[test]
    fn dates_are_rfc3339_in_utc() {
        assert_eq!(rfc3339_utc(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(Duration::from_millis(951_868_800_250)), "2000-03-01T00:00:00.250Z");
        assert_eq!(rfc3339_utc(Duration::from_secs(1_798_761_599)), "2026-12-31T23:59:59.000Z");
    }
}
