//! Serving: both gRPC services on one listener, with graceful shutdown.
//!
//! [`run`] takes an already-bound listener and any shutdown future, so tests bind
//! `127.0.0.1:0`. Shutdown order: stop accepting, end Telemetry streams and long polls, wait
//! for in-flight calls and tracked tasks, then flush the store and stop its writer.

use crate::broker::Broker;
use crate::config::Config;
use crate::grpc::admin::AdminService;
use crate::grpc::clients::Clients;
use crate::grpc::messaging::Messaging;
use crate::grpc::route;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use txmq_proto::admin::admin_server::AdminServer;
use txmq_proto::v2::messaging_service_server::MessagingServiceServer;

/// Largest request accepted by the transport. Above the body limit so that an oversized body
/// gets a RocketMQ `MESSAGE_BODY_TOO_LARGE` answer rather than a transport error.
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Serves `broker` on `listener` (and metrics on `--metrics-listen`, when set) until
/// `shutdown` completes, then shuts down gracefully.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = match broker.config().metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    run_with_metrics(listener, metrics, broker, shutdown).await
}

/// [`run`] with an already-bound metrics listener.
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    let advertised = advertised_endpoints(broker.config(), local)?;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let clients = Arc::new(Clients::default());
    let messaging = Messaging {
        broker: broker.clone(),
        clients: clients.clone(),
        advertised,
        shutdown: token.clone(),
        tracker: tracker.clone(),
        long_polls: Arc::new(tokio::sync::Semaphore::new(broker.config().max_long_polls)),
        send_budget: Arc::new(tokio::sync::Semaphore::new((broker.config().max_inflight_bytes / 1024).max(4096))),
    };
    tracker.spawn(crate::tasks::retention::run(broker.clone(), token.clone()));
    if let Some(l) = metrics {
        tracing::info!(metrics = %l.local_addr()?, "serving Prometheus metrics at /metrics");
        tracker.spawn(crate::tasks::metrics_http::serve(l, broker.clone(), token.clone(), tracker.clone()));
    }
    tracker.spawn(crate::tasks::sweep::run(clients.clone(), token.clone()));
    tracker.spawn(crate::tasks::checkback::run(broker.clone(), clients, token.clone()));
    let admin = AdminService { broker: broker.clone() };
    tracing::info!(listen = %local, "txmq broker serving");
    let stop = token.clone();
    tonic::transport::Server::builder()
        // Ping every connection; one whose peer vanished without closing (no ping answer) is
        // closed, and with it its Telemetry streams, in seconds rather than the kernel's
        // ~15 minutes of retransmissions.
        .http2_keepalive_interval(Some(broker.config().keepalive_interval))
        .http2_keepalive_timeout(Some(broker.config().keepalive_timeout))
        .add_service(MessagingServiceServer::new(messaging).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AdminServer::new(admin))
        .serve_with_incoming_shutdown(limited(listener, broker.config().max_connections), async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, ending streams");
            stop.cancel();
        })
        .await?;
    tracker.close();
    tracker.wait().await;
    tokio::task::spawn_blocking(move || broker.shutdown()).await.map_err(std::io::Error::other)?;
    tracing::info!("store flushed; broker stopped");
    Ok(())
}

/// Accepted connections, at most `max` open at once: beyond it a new connection is closed at
/// once (before any HTTP/2), and the broker keeps serving the others.
fn limited(
    listener: TcpListener,
    max: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<LimitedConn>> + Send + 'static {
    use tokio_stream::StreamExt;
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    TcpListenerStream::new(listener).filter_map(move |conn| match conn {
        Ok(stream) => match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                // Without TCP_NODELAY a small response written after a partial segment waits for
                // the peer's delayed ACK (about 40 ms on Linux): a flat 40-45 ms p99 under load.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                Some(Ok(LimitedConn { stream, _permit: permit }))
            }
            Err(_) => {
                tracing::warn!(max, "connection limit reached; closing a new connection");
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
}

/// A connection holding one of the limited connection slots until it closes.
struct LimitedConn {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for LimitedConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for LimitedConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

fn advertised_endpoints(config: &Config, local: SocketAddr) -> Result<txmq_proto::v2::Endpoints, ServeError> {
    let (host, port) = match &config.advertise {
        Some(a) => route::parse_host_port(a).map_err(ServeError::Config)?,
        None if local.ip().is_unspecified() => ("127.0.0.1".to_string(), local.port()),
        None => (local.ip().to_string(), local.port()),
    };
    Ok(route::endpoints(&host, port))
}

/// A broker running in this process, for tests and examples.
pub struct RunningBroker {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The metrics endpoint's address, when `metrics_listen` was set.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl RunningBroker {
    /// `host:port` for clients.
    pub fn access_point(&self) -> String {
        self.addr.to_string()
    }

    /// Shuts down gracefully and waits until the store is flushed and closed.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Opens the store in `config.data_dir`, binds `config.listen` (port 0 picks one) and serves
/// in a background task.
pub async fn spawn(config: Config) -> Result<RunningBroker, ServeError> {
    spawn_with(config, None).await
}

/// [`spawn`] over a given store instead of the sled store in `config.data_dir` (fault
/// injection, in-memory tests).
pub async fn spawn_with(
    config: Config,
    store: Option<Arc<dyn crate::store::Store>>,
) -> Result<RunningBroker, ServeError> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mut config = config;
    if config.advertise.is_none() {
        config.advertise = Some(addr.to_string());
    }
    let metrics = match config.metrics_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
    let broker = match store {
        Some(store) => Broker::with_store(config, store),
        None => Broker::open(config),
    }
    .map_err(|e| ServeError::Config(e.to_string()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with_metrics(listener, metrics, broker, async move {
        let _ = stopped.await;
    }));
    Ok(RunningBroker { addr, metrics_addr, stop: Some(stop), task: Some(task) })
}
