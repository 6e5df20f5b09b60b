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
//! While calls are open on it, the connection pings the broker whenever it has heard nothing
//! for the keep-alive interval (`ClientConfig::keepalive`), and closes if the ping is not
//! answered within it. A broker that froze (a stopped process, a machine that hangs) keeps its
//! socket open, so without the pings its calls would only time out, and a stream on it would
//! wait for ever.

use std::sync::Mutex;
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
        let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        if let Some(keepalive) = self.keepalive {
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(keepalive)
                .keep_alive_timeout(keepalive);
        }
        let (sender, connection) = builder
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unavailable("HTTP/2 handshake with", &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection to the broker ended");
            }
        });
        *self.slot() = Some(sender.clone());
        Ok(sender)
    }
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
}
