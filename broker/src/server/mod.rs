//! Serving: both gRPC services on one listener, with graceful shutdown.
//!
//! [`run`] takes an already-bound listener and any shutdown future, so tests bind
//! `127.0.0.1:0`. Shutdown order: stop accepting, end Telemetry streams and long polls, wait
//! for in-flight calls and tracked tasks, then stop replicating and give the cluster lease
//! back, then flush the store and stop its writer.

mod failover;
mod http2;

use crate::broker::Broker;
use crate::config::Config;
use crate::grpc::admin::{AdminGate, AdminService};
use crate::grpc::caller::ConnInfo;
use crate::grpc::clients::Clients;
use crate::grpc::messaging::Messaging;
use crate::grpc::route;
use crate::tls::{Tls, TlsMode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
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
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another process holds this node id now (this node was replaced after a failover); run
    /// again, it rejoins as the shard's returning node.
    #[error("superseded: another process serves this node's shard now")]
    Superseded,
    /// The store refuses writes after a failed flush, and in-sync copies of it are on other
    /// nodes: this node stopped so that one of them serves its shard. Started again, it
    /// rejoins as after a crash.
    #[error(
        "the store refuses writes after a failed flush ({0}); this node stopped so that an in-sync copy \
         serves its shard: start it again (once the disk is sound) to rejoin"
    )]
    StoreFailed(String),
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
    // The shard's replication and the cluster lease outlast the drain: a write still in
    // flight when the stop begins needs its followers' acknowledgements, and the lease held
    // until then keeps another node from taking the shard over while this one still writes.
    let leave = CancellationToken::new();
    let lasting = TaskTracker::new();
    let clients = Arc::new(Clients::default());
    let cluster = match join_cluster(&broker, local).await? {
        Some(m) => {
            lasting.spawn(m.clone().keep_alive(leave.clone()));
            if broker.config().auth {
                // Users are the cluster's (in etcd), the same on every node.
                let at =
                    broker.auth().attach_cluster(m.clone()).await.map_err(|e| ServeError::Config(e.to_string()))?;
                let (b, stop) = (broker.clone(), token.clone());
                tracker.spawn(async move { b.auth().follow_cluster(at, stop).await });
            }
            Some(m)
        }
        None => None,
    };
    // A returning node stood by until its shard was handed back; it holds its id now.
    if let Some(standby) = broker.standby() {
        standby.cancel();
    }
    broker
        .init_user(std::env::var("TXMQ_AUTH_INIT_SECRET").ok().as_deref())
        .await
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let gate = |peers_only| crate::grpc::forward::NodeGate {
        clustered: cluster.is_some(),
        key: cluster.as_ref().and_then(|m| m.peer_settings().key.clone()),
        max_skew: match broker.config().auth_max_skew {
            d if d.is_zero() => std::time::Duration::from_secs(15 * 60),
            d => d,
        },
        peers_only,
    };
    let (messaging_gate, txn_gate, peers_gate) = (gate(false), gate(false), gate(true));
    let mut admin_gate = (gate(false), AdminGate { broker: broker.clone() });
    let forwarder = cluster.clone().map(|m| Arc::new(crate::grpc::forward::Forwarder::new(m)));
    let messaging = Messaging {
        cluster: forwarder.clone(),
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
    tracker.spawn(crate::disk::watch(broker.disk().clone(), token.clone()));
    let replicas = Arc::new(crate::replication::follower::Replicas::new(
        &broker.config().data_dir,
        broker.disk().clone(),
        token.clone(),
    ));
    let peers = forwarder.as_ref().map(|_| crate::grpc::forward::ClusterService {
        clients: clients.clone(),
        replicas: broker.acting_on().is_none().then(|| replicas.clone()),
    });
    if let (Some(m), true) = (&cluster, broker.config().replicas > 1) {
        let leader = broker
            .replicate(replication_settings(broker.config()), m.clone())
            .map_err(|e| ServeError::Config(e.to_string()))?;
        lasting.spawn(leader.run(leave.clone()));
        if broker.acting_on().is_none() {
            // This node takes over the shards of dead nodes it holds in-sync copies of.
            let host = Arc::new(failover::Host::new(broker.config().clone(), m.clone(), replicas.clone(), local));
            tracker.spawn(host.run(token.clone()));
        }
    }
    // With copies on other nodes, a store that refuses writes (a failed flush) is worse than a
    // stop: its shard would refuse writes, acks and decisions until a restart. The node stops
    // instead, giving its lease back, and an in-sync copy takes the shard over at the next
    // failover round.
    let store_failed = CancellationToken::new();
    if cluster.is_some() && broker.config().replicas > 1 && broker.acting_on().is_none() {
        tracker.spawn(watch_store(broker.clone(), store_failed.clone(), token.clone()));
    }
    let superseded = cluster.as_ref().map(|m| m.superseded()).unwrap_or_default();
    // Cancelled when the stop comes from `shutdown` (rather than from a successor or the store).
    let asked = CancellationToken::new();
    tracker.spawn(crate::tasks::checkback::run(broker.clone(), clients.clone(), forwarder, token.clone()));
    let tls = match (&broker.config().tls_cert, &broker.config().tls_key) {
        (Some(cert), Some(key)) => {
            let c = broker.config();
            let tls = Tls::load(cert, key, c.tls_client_ca.as_deref(), c.tls_mode)
                .map_err(|e| ServeError::Config(e.to_string()))?;
            let tls = Arc::new(tls);
            tracing::info!(mode = ?tls.mode, "TLS on the gRPC port");
            tracker.spawn(reload_on_hangup(tls.clone(), token.clone()));
            Some(tls)
        }
        _ => None,
    };
    let admin = AdminService { broker: broker.clone(), cluster, clients: clients.clone() };
    tracing::info!(listen = %local, "txmq broker serving");
    let stop = token.clone();
    let mut routes = tonic::service::Routes::new(tonic::service::interceptor::InterceptedService::new(
        txmq_proto::ext::transactions_server::TransactionsServer::new(messaging.clone())
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        txn_gate,
    ))
    .add_service(tonic::service::interceptor::InterceptedService::new(
        MessagingServiceServer::new(messaging).max_decoding_message_size(MAX_REQUEST_BYTES),
        messaging_gate,
    ))
    .add_service(AdminServer::with_interceptor(admin, move |req| {
        use tonic::service::Interceptor;
        admin_gate.0.call(req).and_then(|req| admin_gate.1.call(req))
    }));
    if let Some(p) = peers {
        routes =
            routes.add_service(txmq_proto::cluster::cluster_server::ClusterServer::with_interceptor(p, peers_gate));
    }
    // Ping every connection; one whose peer vanished without closing (no ping answer) is
    // closed, and with it its Telemetry streams, in seconds rather than the kernel's ~15 minutes
    // of retransmissions.
    let settings = http2::Settings {
        keepalive_interval: broker.config().keepalive_interval,
        keepalive_timeout: broker.config().keepalive_timeout,
    };
    let limits = Limits { max: broker.config().max_connections, handshake: broker.config().handshake_timeout };
    http2::serve(incoming(listener, limits, tls), routes, settings, {
        let (superseded, store_failed, asked) = (superseded.clone(), store_failed.clone(), asked.clone());
        async move {
            tokio::select! {
                _ = shutdown => asked.cancel(),
                _ = superseded.cancelled() => {}
                _ = store_failed.cancelled() => {}
            }
            tracing::info!("shutting down: no new connections, ending streams");
            stop.cancel();
        }
    })
    .await;
    tracker.close();
    tracker.wait().await;
    leave.cancel();
    lasting.close();
    lasting.wait().await;
    let failure = store_failed.is_cancelled().then(|| broker.store_failure().unwrap_or_default());
    tokio::task::spawn_blocking(move || broker.shutdown()).await.map_err(std::io::Error::other)?;
    tracing::info!("store flushed; broker stopped");
    if let Some(why) = failure {
        return Err(ServeError::StoreFailed(why));
    }
    // A stop asked for (SIGTERM) is a stop, even if the shard was taken over while it drained
    // (the lease lapsed meanwhile: etcd out, or the process stalled): running again as a
    // returning node would outlive it.
    if superseded.is_cancelled() && !asked.is_cancelled() {
        return Err(ServeError::Superseded);
    }
    Ok(())
}

/// Cancels `failed` once the store of `broker` refuses writes (looked at every 200 ms), unless
/// `stop` comes first.
async fn watch_store(broker: Arc<Broker>, failed: CancellationToken, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        if let Some(why) = broker.store_failure() {
            tracing::error!(
                error = %why,
                "the store refuses writes after a failed flush; stopping, so that an in-sync copy on another node serves this shard"
            );
            failed.cancel();
            return;
        }
    }
}

/// What `incoming` allows a connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections open at once; more are closed at once.
    max: usize,
    /// From its accept, how long a connection may take to finish its TLS handshake (if any)
    /// and send the HTTP/2 preface. Until then no HTTP/2 ping can find it silent, and it holds
    /// a place under `max`.
    handshake: std::time::Duration,
}

/// Accepted connections, at most `limits.max` open at once (more are closed at once), each
/// plain or TLS as its first byte says when `tls` is set. Accepting and handshakes run in
/// their own tasks, so a slow handshake never holds up the next connection.
fn incoming(
    listener: TcpListener,
    limits: Limits,
    tls: Option<Arc<Tls>>,
) -> impl tokio_stream::Stream<Item = Conn> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(64);
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max));
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(max = limits.max, "connection limit reached; closing a new connection");
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let deadline = tokio::time::Instant::now() + limits.handshake;
            match &tls {
                None => {
                    if tx.send(Conn::new(Io::Plain(stream), None, deadline, permit)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(io) = sniff(stream, &tls, deadline).await {
                            let client_cn = match &io {
                                Io::Tls(s) => s
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .and_then(|c| crate::tls::subject_common_name(c)),
                                Io::Plain(_) => None,
                            };
                            let _ = tx.send(Conn::new(io, client_cn, deadline, permit)).await;
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// TLS when the first byte is a handshake record, else plaintext (or nothing, when TLS is
/// required). `None` also for a connection that sends nothing or fails its handshake by
/// `deadline`.
async fn sniff(stream: tokio::net::TcpStream, tls: &Tls, deadline: tokio::time::Instant) -> Option<Io> {
    let peer = stream.peer_addr().ok();
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    if first[0] != crate::tls::HANDSHAKE {
        if tls.mode == TlsMode::Required {
            tracing::debug!(?peer, "plaintext connection closed: TLS is required");
            return None;
        }
        return Some(Io::Plain(stream));
    }
    match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => Some(Io::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Reads the TLS certificate again on every SIGHUP until shutdown.
async fn reload_on_hangup(tls: Arc<Tls>, shutdown: CancellationToken) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS certificate will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hangups.recv() => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the current one"),
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The client preface every HTTP/2 connection starts with (RFC 9113, section 3.4).
const HTTP2_PREFACE_LEN: usize = 24;

/// An accepted connection and its place under the connection limit.
struct Conn {
    io: Io,
    /// The common name of the client's certificate (mutual TLS).
    client_cn: Option<String>,
    /// Until the HTTP/2 preface is all read: what closes the connection first; `None` after.
    preface: Option<Preface>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A connection's wait for its HTTP/2 preface.
struct Preface {
    /// Bytes not read yet.
    left: usize,
    /// When the connection is closed if they have not come.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The server's shutdown, which closes the connection too: hyper's graceful shutdown waits
    /// for a connection's handshake to end, so a connection that says nothing would hold the
    /// shutdown up until its deadline.
    stop: Option<std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Conn {
    fn new(
        io: Io,
        client_cn: Option<String>,
        deadline: tokio::time::Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Conn {
        Conn {
            io,
            client_cn,
            preface: Some(Preface {
                left: HTTP2_PREFACE_LEN,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                stop: None,
            }),
            _permit: permit,
        }
    }

    /// Closes the connection when `stop` is cancelled if its preface is not all read by then.
    fn close_before_preface_on(&mut self, stop: &CancellationToken) {
        if let Some(p) = self.preface.as_mut() {
            p.stop = Some(Box::pin(stop.clone().cancelled_owned()));
        }
    }

    /// What every request on this connection is told about it.
    fn connect_info(&self) -> ConnInfo {
        let tcp = match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        ConnInfo { remote: tcp.peer_addr().ok(), client_cn: self.client_cn.clone() }
    }
}

/// Delegates to the plain or TLS stream.
macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Io::Tls($s) => {
                let $s = std::pin::Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let Some(p) = this.preface.as_mut() else { return read };
        // Until the preface is read, a read waits for data, the deadline or the shutdown,
        // whichever comes first.
        if read.is_ready() {
            p.left = p.left.saturating_sub(buf.filled().len() - before);
            if p.left == 0 {
                this.preface = None;
            }
            return read;
        }
        let late = p.deadline.as_mut().poll(cx).is_ready();
        let stopping = p.stop.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready());
        if late || stopping {
            tracing::debug!(remote = ?this.connect_info().remote, late, "connection closed before its HTTP/2 preface");
            return std::task::Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        both!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        both!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

fn advertised_endpoints(config: &Config, local: SocketAddr) -> Result<txmq_proto::v2::Endpoints, ServeError> {
    let (host, port) = match &config.advertise {
        Some(a) => crate::config::parse_host_port(a).map_err(ServeError::Config)?,
        None if local.ip().is_unspecified() => ("127.0.0.1".to_string(), local.port()),
        None => (local.ip().to_string(), local.port()),
    };
    Ok(route::endpoints(&host, port))
}

/// With `--etcd`: binds the data directory to this node id and joins the cluster (refused when
/// a live node holds the id). Standalone: nothing.
async fn join_cluster(broker: &Broker, local: SocketAddr) -> Result<Option<crate::cluster::Membership>, ServeError> {
    let c = broker.config();
    let Some(node_id) = &c.node_id else { return Ok(None) };
    if c.etcd.is_none() {
        return Ok(None);
    }
    broker.claim_node_id(node_id).await.map_err(|e| ServeError::Config(e.to_string()))?;
    let address = match &c.advertise {
        Some(a) => a.clone(),
        None => local.to_string(),
    };
    let settings = c
        .cluster_settings(address, broker.acting_on().map(str::to_string))
        .map_err(ServeError::Config)?
        .ok_or_else(|| ServeError::Config("--etcd needs --node-id".into()))?;
    let replicated = c.replicas > 1;
    let m = match crate::cluster::Membership::join(settings.clone(), crate::clock::now_ms()).await {
        Ok(m) => m,
        // Another node took this node's shard over while it was starting: run again, as a
        // returning node (it stands by and gets the shard back).
        Err(crate::cluster::ClusterError::NodeIdTaken { .. }) if replicated && acting_holder(settings).await => {
            return Err(ServeError::Superseded);
        }
        Err(e) => return Err(ServeError::Config(e.to_string())),
    };
    Ok(Some(m))
}

/// Whether the holder of this node's id is a broker serving its shard from a copy.
async fn acting_holder(settings: crate::cluster::ClusterSettings) -> bool {
    let id = settings.node_id.clone();
    match crate::cluster::Membership::connect(settings, crate::clock::now_ms()).await {
        Ok(m) => matches!(m.holder(&id).await, Ok(Some(h)) if h.acting_on.is_some()),
        Err(_) => false,
    }
}

fn replication_settings(c: &Config) -> crate::replication::Settings {
    crate::replication::Settings {
        replicas: c.replicas,
        min_insync: if c.min_insync_replicas == 0 { c.replicas.min(2) } else { c.min_insync_replicas },
        ack_timeout: c.replica_ack_timeout,
        log_bytes: c.replication_log_bytes,
        replace_after: c.replica_replace_after,
    }
}

/// A broker running in this process, for tests and examples.
pub struct RunningBroker {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The metrics endpoint's address, when `metrics_listen` was set.
    pub metrics_addr: Option<SocketAddr>,
    /// The broker it serves.
    pub broker: Arc<Broker>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl RunningBroker {
    /// `host:port` for clients.
    pub fn access_point(&self) -> String {
        self.addr.to_string()
    }

    /// Whether it stopped serving by itself (it could not join, or it was superseded).
    pub fn has_ended(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
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
    spawn_inner(config, store, None).await
}

/// A broker serving another node's shard from this node's copy (`host`: this node) after a
/// failover. (Boxed: the serving task it starts may start such brokers itself.)
fn spawn_acting(
    config: Config,
    host: String,
) -> std::pin::Pin<Box<dyn Future<Output = Result<RunningBroker, ServeError>> + Send>> {
    Box::pin(spawn_inner(config, None, Some(host)))
}

/// [`spawn`] over a given store, or for a broker acting on node `acting_on` (see
/// [`spawn_acting`]).
async fn spawn_inner(
    config: Config,
    store: Option<Arc<dyn crate::store::Store>>,
    acting_on: Option<String>,
) -> Result<RunningBroker, ServeError> {
    let standby = match (&store, &acting_on) {
        (None, None) => {
            crate::replication::rejoin::rejoin(&config).await.map_err(|e| ServeError::Config(e.to_string()))?
        }
        _ => None,
    };
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mut config = config;
    match &config.advertise {
        None => config.advertise = Some(addr.to_string()),
        // A host name with port 0: the port bound.
        Some(a) if a.ends_with(":0") => {
            config.advertise = Some(format!("{}:{}", &a[..a.len() - 2], addr.port()));
        }
        Some(_) => {}
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
    if let Some(host) = &acting_on {
        broker.set_acting_on(host);
    }
    if let Some(s) = standby {
        broker.set_standby(s);
    }
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with_metrics(listener, metrics, broker.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(RunningBroker { addr, metrics_addr, broker, stop: Some(stop), task: Some(task) })
}
