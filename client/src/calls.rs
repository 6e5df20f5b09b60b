//! The SDK's sends and transaction decisions as messages of one long-lived stream
//! (`txmq.v1.Transactions/Calls`), instead of one unary call each.
//!
//! A unary call opens and closes an HTTP/2 stream each time; a message on an open stream is
//! one DATA frame, which costs both ends less CPU and each call less time (BENCHMARKS.md, "the
//! SDK's sends and decisions on one stream"). The broker handles each call exactly as its unary
//! call, with the stream's headers, so it is used only where those headers stay valid: not
//! with signed requests, whose signature is checked on each call against the clock.
//!
//! The stream is opened on the first call and again on the first call after it ended (the
//! broker restarted or went away, or a call timed out on it). A broker without `Calls` answers
//! UNIMPLEMENTED once; the client then makes unary calls for the rest of its life.

use crate::error::{Error, Result};
use crate::transport::TxnRpc;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use txmq_proto::ext::{call, Call, CallResult};

/// A client's stream of calls.
pub(crate) struct Calls {
    /// False when configured off, or once the broker answered that it has no `Calls`.
    enabled: AtomicBool,
    open: Mutex<Option<Arc<Open>>>,
    /// Held while opening, so the calls that find no stream open one between them.
    opening: tokio::sync::Mutex<()>,
}

/// One open stream: calls go out on `tx`, and their results come back to `waiting` by id.
struct Open {
    /// Taken when the stream is given up (closed): the client's side then ends.
    tx: Mutex<Option<mpsc::UnboundedSender<Call>>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<CallResult>>>,
    next: AtomicU64,
}

/// A call put on a stream: its id, and where its result comes.
struct Answer {
    id: u64,
    answer: oneshot::Receiver<CallResult>,
}

/// Nothing that holds these locks can panic, so a poisoned lock is taken as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Calls {
    pub(crate) fn new(enabled: bool) -> Self {
        Calls { enabled: AtomicBool::new(enabled), open: Mutex::new(None), opening: tokio::sync::Mutex::new(()) }
    }

    /// True while calls go on the stream.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Makes `request` on the stream and decodes its response; `None` when calls do not go on
    /// a stream (configured off, or a broker without `Calls`): make the unary call instead.
    pub(crate) async fn call<R: Message + Default>(
        &self,
        txns: &TxnRpc,
        timeout: Duration,
        mut request: call::Request,
    ) -> Option<Result<R>> {
        if !self.enabled() {
            return None;
        }
        // A stream that ended just before the call was put on it took nothing: the call goes
        // on a new stream, once.
        let mut attempts = 0;
        let (open, answer) = loop {
            let open = match self.stream(txns, timeout).await {
                Ok(Some(open)) => open,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            attempts += 1;
            match open.send(request) {
                Ok(answer) => break (open, answer),
                Err(Some(unsent)) if attempts < 2 => {
                    open.close();
                    request = unsent;
                }
                Err(_) => return Some(Err(Error::Unavailable("the broker ended the calls stream".into()))),
            }
        };
        let result = match open.answer(answer, timeout).await {
            Ok(result) => result,
            Err(e) => {
                if matches!(e, Error::Timeout(_)) {
                    // The broker may hang (a frozen node): the next calls go on a new stream.
                    open.close();
                }
                return Some(Err(e));
            }
        };
        Some(match result.grpc_code {
            0 => R::decode(&result.response[..])
                .map_err(|e| Error::Unavailable(format!("a response on the calls stream does not decode: {e}"))),
            code => Err(Error::from_status(&tonic::Status::new(code.into(), result.grpc_message), timeout)),
        })
    }

    /// The open stream, opened now if there is none; `None` when the broker has no `Calls`.
    async fn stream(&self, txns: &TxnRpc, timeout: Duration) -> Result<Option<Arc<Open>>> {
        if let Some(open) = self.current() {
            return Ok(Some(open));
        }
        let _opening = self.opening.lock().await;
        if let Some(open) = self.current() {
            return Ok(Some(open)); // another call opened it while this one waited
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let answer = match tokio::time::timeout(timeout, txns.clone().calls(calls)).await {
            Ok(answer) => answer,
            Err(_) => return Err(Error::Timeout(timeout)),
        };
        let mut results = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::info!("the broker has no txmq.v1.Transactions/Calls: one unary call per request");
                self.enabled.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            Err(s) => return Err(Error::from_status(&s, timeout)),
        };
        let open =
            Arc::new(Open { tx: Mutex::new(Some(tx)), waiting: Mutex::new(HashMap::new()), next: AtomicU64::new(0) });
        let reader = open.clone();
        tokio::spawn(async move {
            while let Ok(Some(result)) = results.message().await {
                let waiting = lock(&reader.waiting).remove(&result.id);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(result);
                }
            }
            // Ended: the calls still waiting learn it now, and the next calls open a new one.
            reader.close();
            lock(&reader.waiting).clear();
        });
        *lock(&self.open) = Some(open.clone());
        Ok(Some(open))
    }

    fn current(&self) -> Option<Arc<Open>> {
        lock(&self.open).as_ref().filter(|o| lock(&o.tx).is_some()).cloned()
    }
}

impl Open {
    /// Puts a call on the stream; gives the request back when the stream ended.
    fn send(&self, request: call::Request) -> std::result::Result<Answer, Option<call::Request>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        lock(&self.waiting).insert(id, reply);
        // While the sender is here, the reader has not let go of the waiting calls (it gives
        // the sender up first): a call put on the stream now gets its result, or learns that
        // the stream ended.
        let unsent = match lock(&self.tx).as_ref() {
            Some(tx) => match tx.send(Call { id, request: Some(request) }) {
                Ok(()) => return Ok(Answer { id, answer }),
                Err(e) => e.0.request,
            },
            None => Some(request),
        };
        lock(&self.waiting).remove(&id);
        Err(unsent)
    }

    /// Waits for a call's result.
    async fn answer(&self, answer: Answer, timeout: Duration) -> Result<CallResult> {
        match tokio::time::timeout(timeout, answer.answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(Error::Unavailable("the broker ended the calls stream".into())),
            Err(_) => {
                lock(&self.waiting).remove(&answer.id);
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Gives the stream up: no new calls on it, and its client side ends (the calls already
    /// on it still get their results).
    fn close(&self) {
        lock(&self.tx).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{self, ClientConfig};
    use tonic::codegen::http::{Request, Response};
    use txmq_proto::v2;

    /// An HTTP/2 server at a new address that answers every gRPC call UNIMPLEMENTED, as a
    /// broker without the call does.
    async fn unimplemented_everywhere() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = hyper::service::service_fn(|_: Request<hyper::body::Incoming>| async {
                    Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "12")
                        .body(tonic::body::Body::empty())
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), answer),
                );
            }
        });
        address
    }

    async fn send(calls: &Calls, address: &str) -> Option<Result<v2::SendMessageResponse>> {
        let (_, txns) = transport::connect(&ClientConfig::new(address), "test-client").unwrap();
        calls.call(&txns, Duration::from_secs(2), call::Request::SendMessage(Vec::new())).await
    }

    #[tokio::test]
    async fn a_broker_without_calls_turns_them_off_and_one_that_is_down_does_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nobody = listener.local_addr().unwrap().to_string();
        drop(listener);
        let calls = Calls::new(true);
        match send(&calls, &nobody).await {
            Some(Err(Error::Unavailable(_))) => {}
            other => panic!("a broker that is down: {other:?}"),
        }
        assert!(calls.enabled(), "a broker that is down may have Calls when it is back");

        let calls = Calls::new(true);
        assert!(send(&calls, &unimplemented_everywhere().await).await.is_none(), "make the unary call");
        assert!(!calls.enabled());
        // Configured off: not even dialled.
        assert!(send(&Calls::new(false), &nobody).await.is_none());
    }
}
