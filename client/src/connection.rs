//! One plaintext HTTP/2 connection to a broker address, called from the caller's own task.
//!
//! tonic's `Channel` hands each call to a worker task of its own (a `tower` buffer), which
//! hands it on to the task that owns the connection. Here the caller gives its request to
//! hyper's HTTP/2 sender itself: one task switch fewer per call, and less CPU per message in
//! the SDK (BENCHMARKS.md, "the SDK's calls without tonic's channel worker").
//!
//! The connection is dialled on the first call and again on the first call after it closed
//! (the broker restarted, or went away). A dial that fails answers `UNAVAILABLE`, as tonic's
//! channel does, so the SDK treats a broker that is down the same way on both. TLS
//! connections stay on tonic's channel, which brings the TLS connector.
//!
//! hyper's HTTP/2 client hands its executor the connection's reading and writing, and for every
//! call a future that sends the request's body and one that waits for the answer. Spawned as
//! tokio tasks, every unary call started two tasks of its own, each woken in turn, often on the
//! other worker. Here they run inside the one task that serves the connection, polled when their
//! own event wakes it, as the broker's server runs its calls (the broker's `server::http2`):
//! about a sixth less of the caller's CPU per unary call (BENCHMARKS.md, "the SDK's connection
//! in one task").
//!
//! While calls are open on it, the connection pings the broker whenever it has heard nothing
//! for the keep-alive interval (`ClientConfig::keepalive`), and closes if the ping is not
//! answered within it. A broker that froze (a stopped process, a machine that hangs) keeps its
//! socket open, so without the pings its calls would only time out, and a stream on it would
//! wait for ever.

use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::http::uri::{Authority, Scheme};
use tonic::codegen::http::{Request, Response, Uri};

type Sender = hyper::client::conn::http2::SendRequest<tonic::body::Body>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) struct Connection {
    /// `host:port`, as dialled.
    address: String,
    /// The `:authority` of every request (tonic's generated clients send only the path).
    authority: Authority,
    connect_timeout: Duration,
    /// Ping after this long without a frame from the broker; close if unanswered within it.
    keepalive: Option<Duration>,
    /// The open connection's sender; `None` before the first dial.
    sender: Mutex<Option<Sender>>,
    /// Held while dialling, so the calls that find the connection closed dial once.
    dialing: tokio::sync::Mutex<()>,
}

impl Connection {
    /// A connection to `address` (`host:port`), dialled on the first call.
    pub(crate) fn new(address: &str, connect_timeout: Duration, keepalive: Option<Duration>) -> Result<Self, BoxError> {
        Ok(Self {
            address: address.to_string(),
            authority: address.parse()?,
            connect_timeout,
            keepalive,
            sender: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        })
    }

    /// Sends one request on the connection, dialling it first when it is not open.
    pub(crate) async fn call(
        &self,
        mut req: Request<tonic::body::Body>,
    ) -> Result<Response<tonic::body::Body>, BoxError> {
        let mut sender = self.sender().await?;
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        *req.uri_mut() = Uri::from_parts(uri)?;
        sender.ready().await?;
        let response = sender.send_request(req).await?;
        Ok(response.map(tonic::body::Body::new))
    }

    /// The sender of the connection, if it is open.
    fn open(&self) -> Option<Sender> {
        self.slot().as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The sender's slot. Nothing that holds it can panic, so a poisoned lock is taken as is.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Sender>> {
        self.sender.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn sender(&self) -> Result<Sender, BoxError> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(sender) = self.open() {
            return Ok(sender); // another call dialled while this one waited
        }
        let unavailable =
            |what: &str, e: &dyn std::fmt::Display| tonic::Status::unavailable(format!("{what} {}: {e}", self.address));
        let stream = match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(&self.address))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unavailable("cannot connect to", &e).into()),
            Err(_) => return Err(unavailable("timed out connecting to", &format!("{:?}", self.connect_timeout)).into()),
        };
        stream.set_nodelay(true)?;
        let (local, spawned) = tokio::sync::mpsc::unbounded_channel();
        let mut builder = hyper::client::conn::http2::Builder::new(InConnection(local));
        if let Some(keepalive) = self.keepalive {
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(keepalive)
                .keep_alive_timeout(keepalive);
        }
        let (sender, dispatch) = builder
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unavailable("HTTP/2 handshake with", &e))?;
        tokio::spawn(serve(dispatch, spawned));
        *self.slot() = Some(sender.clone());
        Ok(sender)
    }
}

/// A future hyper gives its executor: the connection's I/O, a request body being sent, or an
/// answer being waited for.
type Local = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: hands each future to the connection's task.
#[derive(Clone)]
struct InConnection(tokio::sync::mpsc::UnboundedSender<Local>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for InConnection {
    fn execute(&self, future: F) {
        // The receiver lives until the connection and everything it started have ended.
        let _ = self.0.send(Box::pin(future));
    }
}

/// The connection's task: hyper's dispatch of the calls and every future it starts, until the
/// dispatch has ended (the connection closed, or every sender is gone) and they have all ended.
async fn serve(
    dispatch: impl Future<Output = hyper::Result<()>>,
    mut spawned: tokio::sync::mpsc::UnboundedReceiver<Local>,
) {
    // Dropped as soon as it ends: the connection's I/O closes the connection only once the
    // dispatch, which holds the HTTP/2 handle, is gone.
    let mut dispatch = Some(Box::pin(dispatch));
    let mut running = FuturesUnordered::new();
    std::future::poll_fn(|cx: &mut Context<'_>| loop {
        if let Some(Poll::Ready(r)) = dispatch.as_mut().map(|d| d.as_mut().poll(cx)) {
            dispatch = None;
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection to the broker ended");
            }
        }
        let mut started = false;
        while let Poll::Ready(Some(future)) = spawned.poll_recv(cx) {
            running.push(future);
            started = true;
        }
        while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
        if dispatch.is_none() && running.is_empty() {
            return Poll::Ready(());
        }
        // A future just started may have woken another (a frame queued for the connection to
        // write): go round once more.
        if !started {
            return Poll::Pending;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broker_that_is_down_answers_unavailable_and_is_dialled_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let connection = Connection::new(&address, Duration::from_secs(1), Some(Duration::from_secs(1))).unwrap();
        let request = || Request::builder().uri("/x").body(tonic::body::Body::empty()).unwrap();

        let error = connection.call(request()).await.unwrap_err();
        assert_eq!(tonic::Status::from_error(error).code(), tonic::Code::Unavailable);

        // Something answers HTTP/2 at the address now: the next call dials and gets through.
        let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                let status = if req.uri().path() == "/x" && req.uri().authority().is_some() { 200 } else { 400 };
                Response::builder().status(status).body(tonic::body::Body::empty())
            });
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                .await
                .unwrap();
        });
        // Both calls go on the one connection the listener accepted: a second dial would never
        // be served, and the call would time out.
        for _ in 0..2 {
            let answer = tokio::time::timeout(Duration::from_secs(5), connection.call(request())).await;
            assert_eq!(answer.unwrap().unwrap().status(), 200);
        }
    }

    /// Many calls at once on the one connection, each answered with its own body after a
    /// pause, and the connection closed once the `Connection` is dropped: the connection's
    /// task ends with its calls, and leaves nothing behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_the_connection_and_it_closes_when_dropped() {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let served = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let echo = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                tokio::time::sleep(Duration::from_millis(u64::from(body[0] % 20))).await;
                Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(body)))
            });
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), echo)
                .await
        });
        let connection = std::sync::Arc::new(Connection::new(&address, Duration::from_secs(1), None).unwrap());
        let calls = (0..200u8).map(|i| {
            let connection = connection.clone();
            tokio::spawn(async move {
                let body = tonic::body::Body::new(http_body_util::Full::new(tonic::codegen::Bytes::from(vec![i; 300])));
                let answer = connection.call(Request::builder().uri("/echo").body(body).unwrap()).await.unwrap();
                answer.into_body().collect().await.unwrap().to_bytes() == vec![i; 300]
            })
        });
        for call in futures_util::future::join_all(calls).await {
            assert!(call.unwrap(), "an answer came back with another call's body");
        }
        drop(connection);
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(ended.expect("the connection stayed open after the Connection was dropped").unwrap().is_ok());
    }
}
