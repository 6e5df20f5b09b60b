//! `apache.rocketmq.v2.MessagingService`: the RocketMQ 5 gRPC surface.
//!
//! Every RPC answers gRPC OK with the business outcome in its `Status` field (a non-OK gRPC
//! status is a transport error to the clients). RPCs whose feature has not landed answer
//! `NOT_IMPLEMENTED`.

use super::clients::Clients;
use super::convert::{self, Limits};
use super::route;
use super::status::{self, ok};
use super::telemetry::{self, Announced};
use crate::broker::{now_ms, Broker};
use crate::error::BrokerError;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Streaming};
use txmq_proto::v2;
use v2::messaging_service_server::MessagingService;

/// Most messages in one SendMessage request.
pub const MAX_MESSAGES_PER_SEND: usize = 1024;

type GrpcResult<T> = Result<Response<T>, tonic::Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// The service, sharing the broker with the admin API.
pub struct Messaging {
    pub(crate) broker: Arc<Broker>,
    pub(crate) clients: Arc<Clients>,
    pub(crate) advertised: v2::Endpoints,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// The caller's client id (`x-mq-client-id`), or one made from its address.
fn client_id<T>(req: &Request<T>) -> String {
    match req
        .metadata()
        .get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => match req.remote_addr() {
            Some(addr) => format!("anonymous@{addr}"),
            None => "anonymous".to_string(),
        },
    }
}

fn not_implemented(what: &'static str) -> v2::Status {
    status::status(&BrokerError::NotImplemented(what))
}

fn single_status_stream<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(tokio_stream::iter([Ok(item)]))
}

impl Messaging {
    fn limits(&self) -> Limits {
        let c = self.broker.config();
        Limits {
            max_body_size: c.max_body_size,
            max_delay_ms: c.max_delay.as_millis() as i64,
        }
    }

    fn announced(&self) -> Announced {
        let c = self.broker.config();
        Announced {
            max_body_size: c.max_body_size,
            long_polling_timeout: c.long_polling_max,
            max_delivery_attempts: c.max_delivery_attempts as i32,
        }
    }

    async fn send(
        &self,
        producer: &str,
        messages: Vec<v2::Message>,
    ) -> Result<Vec<v2::SendResultEntry>, (BrokerError, Vec<String>)> {
        let ids: Vec<String> = messages
            .iter()
            .map(|m| {
                m.system_properties
                    .as_ref()
                    .map(|s| s.message_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        let fail = |e: BrokerError| (e, ids.clone());
        if messages.is_empty() {
            return Err(fail(BrokerError::BadRequest(
                "no messages in the request".into(),
            )));
        }
        if messages.len() > MAX_MESSAGES_PER_SEND {
            return Err(fail(BrokerError::PayloadTooLarge(format!(
                "{} messages in one request, the limit is {MAX_MESSAGES_PER_SEND}",
                messages.len()
            ))));
        }
        let (limits, now) = (self.limits(), now_ms());
        let mut converted = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let m = convert::new_message(m, limits, now).map_err(|e| {
                tracing::debug!(index = i, error = %e, "message rejected");
                fail(e)
            })?;
            converted.push(m);
        }
        let topic = converted[0].topic.clone();
        if converted.iter().any(|m| m.topic != topic) {
            return Err(fail(BrokerError::BadRequest(
                "all messages of one request must share a topic".into(),
            )));
        }
        let placements = self
            .broker
            .send(&topic, converted, producer)
            .await
            .map_err(fail)?;
        Ok(placements
            .into_iter()
            .zip(&ids)
            .map(|(p, id)| v2::SendResultEntry {
                status: Some(ok()),
                message_id: id.clone(),
                transaction_id: String::new(),
                offset: p.offset as i64,
                recall_handle: String::new(),
            })
            .collect())
    }
}

#[tonic::async_trait]
impl MessagingService for Messaging {
    async fn query_route(
        &self,
        req: Request<v2::QueryRouteRequest>,
    ) -> GrpcResult<v2::QueryRouteResponse> {
        let client = client_id(&req);
        self.clients.touch(&client);
        let req = req.into_inner();
        let answer = async {
            let name = convert::resource_name(req.topic.as_ref(), "topic")
                .map_err(|_| BrokerError::IllegalTopic("topic is missing".into()))?;
            let topic = self.broker.topic_or_create(&name).await?;
            let at = route::route_endpoints(&self.advertised, req.endpoints.as_ref());
            let namespace = req
                .topic
                .as_ref()
                .map(|r| r.resource_namespace.clone())
                .unwrap_or_default();
            Ok::<_, BrokerError>(route::queues(&topic, &namespace, &at))
        }
        .await;
        Ok(Response::new(match answer {
            Ok(message_queues) => v2::QueryRouteResponse {
                status: Some(ok()),
                message_queues,
            },
            Err(e) => v2::QueryRouteResponse {
                status: Some(status::status(&e)),
                message_queues: Vec::new(),
            },
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v2::HeartbeatRequest>,
    ) -> GrpcResult<v2::HeartbeatResponse> {
        self.clients.touch(&client_id(&req));
        Ok(Response::new(v2::HeartbeatResponse { status: Some(ok()) }))
    }

    async fn send_message(
        &self,
        req: Request<v2::SendMessageRequest>,
    ) -> GrpcResult<v2::SendMessageResponse> {
        let producer = client_id(&req);
        self.clients.touch(&producer);
        let messages = req.into_inner().messages;
        let response = match self.send(&producer, messages).await {
            Ok(entries) => v2::SendMessageResponse {
                status: Some(ok()),
                entries,
            },
            Err((e, ids)) => {
                tracing::debug!(client_id = producer, error = %e, "send refused");
                let st = status::status(&e);
                // Exactly one entry per message: the Rust client indexes entries[0].
                let entries = ids
                    .into_iter()
                    .map(|message_id| v2::SendResultEntry {
                        status: Some(st.clone()),
                        message_id,
                        ..Default::default()
                    })
                    .collect();
                v2::SendMessageResponse {
                    status: Some(st),
                    entries,
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn query_assignment(
        &self,
        _req: Request<v2::QueryAssignmentRequest>,
    ) -> GrpcResult<v2::QueryAssignmentResponse> {
        Ok(Response::new(v2::QueryAssignmentResponse {
            status: Some(not_implemented("QueryAssignment")),
            assignments: Vec::new(),
        }))
    }

    type ReceiveMessageStream = BoxStream<v2::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        _req: Request<v2::ReceiveMessageRequest>,
    ) -> GrpcResult<Self::ReceiveMessageStream> {
        let st = not_implemented("ReceiveMessage");
        Ok(Response::new(single_status_stream(
            v2::ReceiveMessageResponse {
                content: Some(v2::receive_message_response::Content::Status(st)),
            },
        )))
    }

    async fn ack_message(
        &self,
        req: Request<v2::AckMessageRequest>,
    ) -> GrpcResult<v2::AckMessageResponse> {
        let st = not_implemented("AckMessage");
        let entries = req
            .into_inner()
            .entries
            .into_iter()
            .map(|e| v2::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: Some(st.clone()),
            })
            .collect();
        Ok(Response::new(v2::AckMessageResponse {
            status: Some(st),
            entries,
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        _req: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> GrpcResult<v2::ForwardMessageToDeadLetterQueueResponse> {
        Ok(Response::new(v2::ForwardMessageToDeadLetterQueueResponse {
            status: Some(not_implemented("ForwardMessageToDeadLetterQueue")),
        }))
    }

    type PullMessageStream = BoxStream<v2::PullMessageResponse>;

    async fn pull_message(
        &self,
        _req: Request<v2::PullMessageRequest>,
    ) -> GrpcResult<Self::PullMessageStream> {
        Ok(Response::new(single_status_stream(
            v2::PullMessageResponse {
                content: Some(v2::pull_message_response::Content::Status(not_implemented(
                    "PullMessage",
                ))),
            },
        )))
    }

    async fn update_offset(
        &self,
        _req: Request<v2::UpdateOffsetRequest>,
    ) -> GrpcResult<v2::UpdateOffsetResponse> {
        Ok(Response::new(v2::UpdateOffsetResponse {
            status: Some(not_implemented("UpdateOffset")),
        }))
    }

    async fn get_offset(
        &self,
        _req: Request<v2::GetOffsetRequest>,
    ) -> GrpcResult<v2::GetOffsetResponse> {
        Ok(Response::new(v2::GetOffsetResponse {
            status: Some(not_implemented("GetOffset")),
            offset: 0,
        }))
    }

    async fn query_offset(
        &self,
        _req: Request<v2::QueryOffsetRequest>,
    ) -> GrpcResult<v2::QueryOffsetResponse> {
        Ok(Response::new(v2::QueryOffsetResponse {
            status: Some(not_implemented("QueryOffset")),
            offset: 0,
        }))
    }

    async fn end_transaction(
        &self,
        _req: Request<v2::EndTransactionRequest>,
    ) -> GrpcResult<v2::EndTransactionResponse> {
        Ok(Response::new(v2::EndTransactionResponse {
            status: Some(not_implemented("EndTransaction")),
        }))
    }

    type TelemetryStream = ReceiverStream<Result<v2::TelemetryCommand, tonic::Status>>;

    async fn telemetry(
        &self,
        req: Request<Streaming<v2::TelemetryCommand>>,
    ) -> GrpcResult<Self::TelemetryStream> {
        let client = client_id(&req);
        let rx = telemetry::serve(
            client,
            req.into_inner(),
            self.clients.clone(),
            self.announced(),
            self.shutdown.clone(),
            &self.tracker,
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn notify_client_termination(
        &self,
        req: Request<v2::NotifyClientTerminationRequest>,
    ) -> GrpcResult<v2::NotifyClientTerminationResponse> {
        let client = client_id(&req);
        tracing::debug!(client_id = client, "client terminated");
        self.clients.terminate(&client);
        Ok(Response::new(v2::NotifyClientTerminationResponse {
            status: Some(ok()),
        }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> GrpcResult<v2::ChangeInvisibleDurationResponse> {
        // Python replaces its handle with ours before checking the status: give its own back.
        let handle = req.into_inner().receipt_handle;
        Ok(Response::new(v2::ChangeInvisibleDurationResponse {
            status: Some(not_implemented("ChangeInvisibleDuration")),
            receipt_handle: handle,
        }))
    }

    async fn recall_message(
        &self,
        _req: Request<v2::RecallMessageRequest>,
    ) -> GrpcResult<v2::RecallMessageResponse> {
        Ok(Response::new(v2::RecallMessageResponse {
            status: Some(not_implemented("RecallMessage")),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _req: Request<v2::SyncLiteSubscriptionRequest>,
    ) -> GrpcResult<v2::SyncLiteSubscriptionResponse> {
        Ok(Response::new(v2::SyncLiteSubscriptionResponse {
            status: Some(not_implemented("SyncLiteSubscription")),
        }))
    }
}
