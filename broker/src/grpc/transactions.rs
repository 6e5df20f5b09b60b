//! `txmq.v1.Transactions/EndTransactions` (proto/proto/txmq/v1/transactions.proto): many
//! transaction decisions in one call, for the txmq SDK. Each decision goes the way one
//! `EndTransaction` goes — through the same checks, to the shard that owns it in a cluster —
//! and they all run at once, so the committer makes the decisions of one call durable in one
//! group (one fsync) rather than one each.

use super::messaging::Messaging;
use super::status;
use tonic::{Request, Response};
use txmq_proto::ext::transactions_server::Transactions;
use txmq_proto::ext::{DecisionResult, EndTransactionsRequest, EndTransactionsResponse, MAX_DECISIONS};
use txmq_proto::v2::{self, Code};

fn answer(st: v2::Status, results: Vec<DecisionResult>) -> Response<EndTransactionsResponse> {
    Response::new(EndTransactionsResponse { code: st.code, message: st.message, results })
}

/// A decision as the EndTransaction request with the same fields.
fn single(d: txmq_proto::ext::Decision) -> v2::EndTransactionRequest {
    v2::EndTransactionRequest {
        topic: Some(v2::Resource { name: d.topic, ..Default::default() }),
        message_id: d.message_id,
        transaction_id: d.transaction_id,
        resolution: d.resolution,
        source: d.source,
        trace_context: String::new(),
    }
}

#[tonic::async_trait]
impl Transactions for Messaging {
    type CallsStream = super::calls::Results;

    async fn calls(
        &self,
        req: Request<tonic::Streaming<txmq_proto::ext::Call>>,
    ) -> Result<Response<Self::CallsStream>, tonic::Status> {
        Ok(super::calls::serve(self, req))
    }

    async fn end_transactions(
        &self,
        req: Request<EndTransactionsRequest>,
    ) -> Result<Response<EndTransactionsResponse>, tonic::Status> {
        let n = req.get_ref().decisions.len();
        if n > MAX_DECISIONS {
            let why = format!("{n} decisions in one call; at most {MAX_DECISIONS}");
            return Ok(answer(status::with(Code::BadRequest, why), Vec::new()));
        }
        let (metadata, extensions, body) = req.into_parts();
        let probe = Request::from_parts(metadata, extensions, ());
        let (_timer, client, caller) = self.begin("EndTransactions", &probe);
        let Some(_slot) = self.admit(&client) else {
            return Ok(answer(super::messaging::busy(), Vec::new()));
        };
        // In a cluster each decision is forwarded to its owner, as EndTransaction forwards it
        // (with this call's headers: the caller's signature and the client it names).
        if let Some(fw) = self.cluster_path(&probe) {
            let calls = body.decisions.into_iter().map(|d| {
                let req = Request::from_parts(probe.metadata().clone(), probe.extensions().clone(), single(d));
                Box::pin(self.cluster_end_transaction(&fw, req))
            });
            let results = futures_util::future::join_all(calls)
                .await
                .into_iter()
                .map(|r| {
                    let st = match r {
                        Ok(r) => {
                            r.into_inner().status.unwrap_or_else(|| status::with(Code::InternalError, "no status"))
                        }
                        Err(s) => status::with(Code::InternalError, s.message()),
                    };
                    DecisionResult { code: st.code, message: st.message }
                })
                .collect();
            return Ok(answer(status::ok(), results));
        }
        let calls = body.decisions.into_iter().map(|d| self.decide(&client, &caller, single(d)));
        let results = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|st| DecisionResult { code: st.code, message: st.message })
            .collect();
        Ok(answer(status::ok(), results))
    }
}
