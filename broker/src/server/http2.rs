//! The gRPC services over HTTP/2, one task per connection.
//!
//! tonic's own server hands every call (every HTTP/2 stream) to a task of its own. With two
//! runtime workers, such a task is often picked up by the other worker, and that wake-up across
//! threads cost about 30 % of a bare echo call's server CPU on our 2-core machines, and 13-17 %
//! of a unary send's (BENCHMARKS.md, "a connection's calls run in the connection's task";
//! bench/results/unary-floor-2026-12-06.txt). Here hyper serves each connection with an
//! executor that runs the calls inside the connection's own task, beside the connection's
//! reading and writing: a call's future is polled when its own event wakes that task, as
//! `FuturesUnordered` does. Connections still run on any worker, each in its own task.
//!
//! What tonic's server did around the services is kept: the request carries the connection's
//! [`ConnInfo`] in its extensions, a client's `grpc-timeout` ends its call with `CANCELLED`
//! ("Timeout expired"), HTTP/2 keep-alive pings find dead peers, and a graceful shutdown sends
//! GOAWAY and lets the calls in flight finish. A call that panics resets its own stream only.

use super::Conn;
use crate::grpc::caller::ConnInfo;
use crate::grpc::messaging::grpc_timeout;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;

/// The HTTP/2 settings the broker configures.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// Serves `routes` on every connection `incoming` yields until `shutdown` completes or
/// `incoming` ends, then asks each connection to close (GOAWAY) and waits for them.
pub(super) async fn serve(
    incoming: impl futures_util::Stream<Item = Conn>,
    routes: Routes,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, connections) = (CancellationToken::new(), TaskTracker::new());
    {
        let mut incoming = std::pin::pin!(incoming);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                conn = incoming.next() => match conn {
                    Some(conn) => {
                        connections.spawn(connection(conn, routes.clone(), settings, stop.clone()));
                    }
                    None => break,
                },
            }
        }
        // `incoming` is dropped here: no connection is accepted from now on.
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// A call's future, run inside its connection's task.
type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: hands each call to the connection's task.
#[derive(Clone)]
struct Local(tokio::sync::mpsc::UnboundedSender<Call>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, call: F) {
        // A panic ends this call (its stream is reset when the future is dropped), not the
        // connection and its other calls.
        let call = std::panic::AssertUnwindSafe(call).catch_unwind().map(|r| {
            if r.is_err() {
                tracing::error!("a call panicked; its stream is reset");
            }
        });
        // The receiver lives as long as the connection; a call made after it is gone has
        // nobody to answer anyway.
        let _ = self.0.send(Box::pin(call));
    }
}

/// Streams reset for a client's errors before its connection is closed (hyper's default).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// One connection: hyper's HTTP/2 and every call on it, in this one task.
async fn connection(mut conn: Conn, routes: Routes, settings: Settings, stop: CancellationToken) {
    conn.close_before_preface_on(&stop);
    let info = conn.connect_info();
    let (tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let mut builder = hyper::server::conn::http2::Builder::new(Local(tx));
    // As tonic's server configured hyper: no limit on concurrent streams, and pings. Resets
    // stay bounded as hyper and h2 bound them by default (streams a client resets before they
    // are accepted: h2's 20; streams reset for the client's errors: hyper's 1,024), so a client
    // that makes the server reset streams in a loop ("rapid reset") gets a GOAWAY.
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_concurrent_streams(None)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        // gRPC clients read no Date header; leaving it out saves encoding it on every answer.
        .auto_date_header(false);
    let mut calls = FuturesUnordered::new();
    // In a block, so that the connection (and its place under the connection limit) is let go
    // of before the last calls finish.
    {
        let served = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), Service { routes, info });
        let mut served = std::pin::pin!(served);
        let mut stopped = std::pin::pin!(stop.cancelled());
        let mut closing = false;
        std::future::poll_fn(|cx: &mut Context<'_>| loop {
            if !closing && stopped.as_mut().poll(cx).is_ready() {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            if let Poll::Ready(r) = served.as_mut().poll(cx) {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                return Poll::Ready(());
            }
            let mut new_calls = false;
            while let Poll::Ready(Some(call)) = arrived.poll_recv(cx) {
                calls.push(call);
                new_calls = true;
            }
            while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
            // New calls may have queued frames for the connection to write: go round once more.
            if !new_calls {
                return Poll::Pending;
            }
        })
        .await;
    }
    while let Ok(call) = arrived.try_recv() {
        calls.push(call);
    }
    // Calls whose answers were already handed to the connection finish their last steps here,
    // as spawned calls would; at shutdown nobody is left to answer, so they are dropped.
    tokio::select! {
        _ = calls.for_each(|()| async {}) => {}
        _ = stop.cancelled() => {}
    }
}

/// The services of one connection, as hyper calls them.
#[derive(Clone)]
struct Service {
    routes: Routes,
    info: ConnInfo,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Service {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let mut req = req.map(tonic::body::Body::new);
        req.extensions_mut().insert(self.info.clone());
        let timeout = req.headers().get("grpc-timeout").and_then(|v| grpc_timeout(v.as_bytes()));
        // `Routes` is always ready (it routes; the services behind it take every call).
        let answer = tower_service::Service::call(&mut self.routes.clone(), req);
        Box::pin(async move {
            let Some(timeout) = timeout else { return answer.await };
            match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::grpc::caller::ConnInfo;
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tonic::body::Body;
    use tower_service::Service;

    /// A service whose methods show what the server around it does: `Peer` answers the
    /// connection's address as the request saw it, `Sleep` answers after two seconds, and
    /// `Panic` panics.
    #[derive(Clone)]
    struct Probe;

    impl tonic::server::NamedService for Probe {
        const NAME: &'static str = "probe.Probe";
    }

    impl Service<http::Request<Body>> for Probe {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let peer = req.extensions().get::<ConnInfo>().and_then(|c| c.remote).map(|a| a.to_string());
            let path = req.uri().path().to_string();
            Box::pin(async move {
                match path.as_str() {
                    "/probe.Probe/Sleep" => tokio::time::sleep(Duration::from_secs(2)).await,
                    "/probe.Probe/Panic" => panic!("the probe panics, as asked"),
                    _ => {}
                }
                let mut answer = tonic::Status::ok("").into_http::<Body>();
                if let Some(peer) = peer {
                    answer.headers_mut().insert(
                        "x-peer",
                        http::HeaderValue::from_str(&peer).unwrap_or_else(|_| http::HeaderValue::from_static("?")),
                    );
                }
                Ok(answer)
            })
        }
    }

    /// An HTTP/2 client of one connection; hyper's own, since tonic's channel would enforce a
    /// `grpc-timeout` itself and hide what the server does.
    type Client = hyper::client::conn::http2::SendRequest<Body>;

    /// A broker-less server of [`Probe`] on the broker's serving path, and a client with one
    /// HTTP/2 connection to it.
    async fn probe_server(
    ) -> (Client, std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings =
            super::Settings { keepalive_interval: Duration::from_secs(10), keepalive_timeout: Duration::from_secs(10) };
        let server = tokio::spawn(super::serve(
            super::super::incoming(
                listener,
                super::super::Limits { max: 16, handshake: Duration::from_secs(10) },
                None,
            ),
            tonic::service::Routes::new(Probe),
            settings,
            async move {
                let _ = stopped.await;
            },
        ));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
        let (client, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}"));
        tokio::spawn(conn);
        (client, addr, stop, server)
    }

    /// One call of `method`, with `grpc-timeout` when given: the answer's headers, or the error.
    async fn call(client: &mut Client, method: &str, timeout: Option<&'static str>) -> Result<http::HeaderMap, String> {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://probe/probe.Probe/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        let req = req.body(Body::empty()).map_err(|e| e.to_string())?;
        client.ready().await.map_err(|e| e.to_string())?;
        let answer = client.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(answer.headers().clone())
    }

    fn status(headers: &http::HeaderMap) -> (Option<&str>, Option<&str>) {
        let get = |k| headers.get(k).and_then(|v: &http::HeaderValue| v.to_str().ok());
        (get("grpc-status"), get("grpc-message"))
    }

    #[tokio::test]
    async fn calls_see_their_connection_and_a_panic_resets_only_its_own_stream() {
        let (mut client, _addr, stop, server) = probe_server().await;
        let headers = call(&mut client, "Peer", None).await.unwrap_or_else(|e| panic!("peer: {e}"));
        assert_eq!(status(&headers).0, Some("0"));
        let peer = headers.get("x-peer").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(peer.starts_with("127.0.0.1:"), "the call saw the connection's address: {peer:?}");
        // A call in flight on the same connection while another panics.
        let mut other = client.clone();
        let sleeping = tokio::spawn(async move { call(&mut other, "Sleep", None).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(call(&mut client, "Panic", None).await.is_err(), "the panicking call has no answer");
        let slept = sleeping.await.unwrap_or_else(|e| panic!("join: {e}")).unwrap_or_else(|e| panic!("sleep: {e}"));
        assert_eq!(status(&slept).0, Some("0"), "the call beside it was answered");
        let again = call(&mut client, "Peer", None).await.unwrap_or_else(|e| panic!("after the panic: {e}"));
        assert_eq!(headers.get("x-peer"), again.get("x-peer"), "still the same connection");
        let _ = stop.send(());
        server.await.unwrap_or_else(|e| panic!("server: {e}"));
    }

    #[tokio::test]
    async fn a_client_deadline_ends_its_call_with_cancelled() {
        let (mut client, _addr, stop, server) = probe_server().await;
        let started = std::time::Instant::now();
        let headers = call(&mut client, "Sleep", Some("200m")).await.unwrap_or_else(|e| panic!("sleep: {e}"));
        // CANCELLED, as tonic's own server answers; gRPC percent-encodes the message.
        assert_eq!(status(&headers), (Some("1"), Some("Timeout%20expired")));
        assert!(started.elapsed() < Duration::from_millis(1500), "answered at the deadline, not after the sleep");
        // A deadline that is not reached changes nothing; a malformed one is ignored.
        assert_eq!(
            status(&call(&mut client, "Sleep", Some("10S")).await.unwrap_or_else(|e| panic!("{e}"))).0,
            Some("0")
        );
        assert_eq!(
            status(&call(&mut client, "Peer", Some("soon")).await.unwrap_or_else(|e| panic!("{e}"))).0,
            Some("0")
        );
        let _ = stop.send(());
        server.await.unwrap_or_else(|e| panic!("server: {e}"));
    }

    #[tokio::test]
    async fn shutdown_lets_the_call_in_flight_finish_and_accepts_no_more() {
        let (mut client, addr, stop, server) = probe_server().await;
        let mut other = client.clone();
        let sleeping = tokio::spawn(async move { call(&mut other, "Sleep", None).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        let slept = sleeping.await.unwrap_or_else(|e| panic!("join: {e}")).unwrap_or_else(|e| panic!("sleep: {e}"));
        assert_eq!(status(&slept).0, Some("0"), "the call in flight at shutdown was answered");
        server.await.unwrap_or_else(|e| panic!("server: {e}"));
        assert!(call(&mut client, "Peer", None).await.is_err(), "the connection was closed");
        // The accepting task lets go of the listener when it sees the server gone.
        let mut refused = false;
        for _ in 0..40 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused, "the listener is closed");
    }
}
