//! `txmq.v1.Transactions/Calls` (proto/proto/txmq/v1/transactions.proto): the txmq SDK's sends
//! and transaction decisions as messages of one long-lived stream.
//!
//! A unary call opens and closes an HTTP/2 stream each time (headers, trailers, HPACK), which
//! is most of what a small call costs both ends; a message on an open stream is one DATA frame.
//! Each call here goes through the very method its unary call uses, with the stream's headers
//! and connection, so it is authenticated, authorized, admitted and forwarded in a cluster as
//! that call would be. Calls run at once within the stream, and each result carries its call's
//! id.

use super::messaging::Messaging;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use prost::Message;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status, Streaming};
use txmq_proto::ext::call::Request as Kind;
use txmq_proto::ext::transactions_server::Transactions;
use txmq_proto::ext::{Call, CallResult, EndTransactionsRequest};
use txmq_proto::v2::messaging_service_server::MessagingService;
use txmq_proto::v2::SendMessageRequest;

/// Calls of one stream running at once; further calls wait in the stream (HTTP/2 flow control
/// holds the client back).
pub const MAX_RUNNING: usize = 256;

/// The results of a stream's calls, as they complete.
pub type Results = Pin<Box<dyn futures_util::Stream<Item = Result<CallResult, Status>> + Send>>;

type Running = Pin<Box<dyn Future<Output = CallResult> + Send>>;

/// Serves one stream of calls: reads calls while fewer than [`MAX_RUNNING`] run, and until the
/// client ends its side or the broker shuts down; ends once the calls read have answered.
pub fn serve(messaging: &Messaging, req: Request<Streaming<Call>>) -> Response<Results> {
    // Counts the stream among the RPCs served; each call counts as its own RPC too.
    let _timer = messaging.begin("Calls", &req).0;
    let (metadata, extensions, calls) = req.into_parts();
    let me = messaging.clone();
    let mut calls = Some(calls);
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut shutdown = Some(Box::pin(messaging.shutdown.clone().cancelled_owned()));
    let results = futures_util::stream::poll_fn(move |cx| {
        // The broker stops: no further calls (the client's next ones go to a new stream).
        if shutdown.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready()) {
            shutdown = None;
            calls = None;
        }
        while running.len() < MAX_RUNNING {
            let Some(inbound) = calls.as_mut() else { break };
            match inbound.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(call))) => {
                    let id = call.id;
                    let answered =
                        std::panic::AssertUnwindSafe(one(me.clone(), metadata.clone(), extensions.clone(), call));
                    // A call that panics fails alone, as a unary call's stream is reset alone.
                    running.push(Box::pin(answered.catch_unwind().map(move |r| {
                        r.unwrap_or_else(|_| {
                            tracing::error!("a call on a calls stream panicked");
                            failed(id, &Status::internal("the call failed"))
                        })
                    })));
                }
                // The client ended its side, or the stream broke: answer what was read.
                Poll::Ready(Some(Err(_)) | None) => calls = None,
                Poll::Pending => break,
            }
        }
        match running.poll_next_unpin(cx) {
            Poll::Ready(Some(result)) => Poll::Ready(Some(Ok(result))),
            Poll::Ready(None) if calls.is_none() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    });
    Response::new(Box::pin(results))
}

/// Runs one call through its unary method, with the stream's headers and connection.
async fn one(me: Messaging, metadata: MetadataMap, extensions: Extensions, call: Call) -> CallResult {
    let answer = match call.request {
        Some(Kind::SendMessage(bytes)) => match SendMessageRequest::decode(&bytes[..]) {
            Ok(r) => {
                me.send_message(Request::from_parts(metadata, extensions, r)).await.map(|r| r.get_ref().encode_to_vec())
            }
            Err(e) => Err(Status::invalid_argument(format!("send_message does not decode: {e}"))),
        },
        Some(Kind::EndTransactions(bytes)) => match EndTransactionsRequest::decode(&bytes[..]) {
            Ok(r) => me
                .end_transactions(Request::from_parts(metadata, extensions, r))
                .await
                .map(|r| r.get_ref().encode_to_vec()),
            Err(e) => Err(Status::invalid_argument(format!("end_transactions does not decode: {e}"))),
        },
        None => Err(Status::invalid_argument("a call without a request")),
    };
    match answer {
        Ok(response) => CallResult { id: call.id, grpc_code: 0, grpc_message: String::new(), response },
        Err(s) => failed(call.id, &s),
    }
}

/// The result of a call that could not be made.
fn failed(id: u64, s: &Status) -> CallResult {
    CallResult { id, grpc_code: s.code() as i32, grpc_message: s.message().to_string(), response: Vec::new() }
}
