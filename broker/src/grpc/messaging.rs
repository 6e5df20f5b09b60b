//! `apache.rocketmq.v2.MessagingService`: the RocketMQ 5 gRPC surface.
//!
//! Every RPC answers gRPC OK with the business outcome in its `Status` field (a non-OK gRPC
//! status is a transport error to the clients). RPCs whose feature has not landed answer
//! `NOT_IMPLEMENTED`.

use super::caller::Caller;
use super::clients::Clients;
use super::convert::{self, Limits};
use super::forward::{self, Forwarder};
use super::route;
use super::status::{self, ok};
use super::telemetry::{self, Announced};
use crate::auth::acl::{Action, Resource};
use crate::broker::{now_ms, Broker};
use crate::consume::pull::PullRequest;
use crate::consume::service::{Delivery, ReceiveRequest, MAX_BATCH};
use crate::error::BrokerError;
use crate::model::MessageType;
use crate::txn::state::Actor;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Streaming};
use txmq_proto::v2;
use v2::messaging_service_server::MessagingService;
use v2::{receive_message_response, Code};

/// Longest client id kept.
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// Most messages in one SendMessage request.
pub const MAX_MESSAGES_PER_SEND: usize = 1024;

type GrpcResult<T> = Result<Response<T>, tonic::Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// The service, sharing the broker with the admin API.
#[derive(Clone)]
pub struct Messaging {
    pub(crate) broker: Arc<Broker>,
    pub(crate) clients: Arc<Clients>,
    pub(crate) advertised: v2::Endpoints,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Bounds the receives that may wait at once.
    pub(crate) long_polls: Arc<tokio::sync::Semaphore>,
    /// Message bytes being stored at once, in KiB permits.
    pub(crate) send_budget: Arc<tokio::sync::Semaphore>,
    /// The cluster's data path (`--etcd`); `None` standalone.
    pub(crate) cluster: Option<Arc<Forwarder>>,
}

/// The caller's client id (`x-mq-client-id`), or one made from its address.
fn client_id<T>(req: &Request<T>) -> String {
    match req.metadata().get("x-mq-client-id").and_then(|v| v.to_str().ok()) {
        // Official ids are ~40 characters; a longer one is cut so it cannot bloat the registry.
        // `to_str` admits visible ASCII only, so every byte is a character and the cut a slice.
        Some(id) if !id.is_empty() => id[..id.len().min(MAX_CLIENT_ID_LEN)].to_string(),
        _ => match Caller::peer(req) {
            Some(addr) => format!("anonymous@{addr}"),
            None => "anonymous".to_string(),
        },
    }
}

/// The group and queue a pull-side request names, once the caller may consume them.
fn group_queue(
    caller: &Caller,
    group: Option<&v2::Resource>,
    queue: Option<&v2::MessageQueue>,
) -> Result<(String, String, u32), BrokerError> {
    let group = convert::resource_name(group, "group")?;
    let (topic, queue) = convert::queue_of(queue)?;
    caller.allow(&[(Resource::topic(&topic), Action::Sub), (Resource::group(&group), Action::Sub)])?;
    Ok((group, topic, queue))
}

/// The status answered when node `owner` could not serve a passed request.
fn node_failed(owner: &str, s: &tonic::Status) -> v2::Status {
    status::status(&BrokerError::Internal(format!("node {owner}: {}", s.message())))
}

/// The message ids of a SendMessage request, in order (empty for a message without them).
fn message_ids(messages: &[v2::Message]) -> Vec<String> {
    messages.iter().map(|m| m.system_properties.as_ref().map(|s| s.message_id.clone()).unwrap_or_default()).collect()
}

/// A SendMessage answer refusing every message with `st`: exactly one entry per message (the
/// Rust client indexes `entries[0]`).
fn refused(st: v2::Status, ids: Vec<String>) -> v2::SendMessageResponse {
    let entries = ids.into_iter().map(|message_id| v2::SendResultEntry {
        status: Some(st.clone()),
        message_id,
        ..Default::default()
    });
    v2::SendMessageResponse { entries: entries.collect(), status: Some(st) }
}

/// The answer to a client over its in-flight limit.
pub(super) fn busy() -> v2::Status {
    status::status(&BrokerError::TooManyRequests("too many requests in progress for this client".into()))
}

fn receive_status(st: v2::Status) -> v2::ReceiveMessageResponse {
    v2::ReceiveMessageResponse { content: Some(receive_message_response::Content::Status(st)) }
}

fn receive_time() -> v2::ReceiveMessageResponse {
    v2::ReceiveMessageResponse {
        content: Some(receive_message_response::Content::DeliveryTimestamp(convert::timestamp(now_ms()))),
    }
}

/// The status shared by all entries, or MULTIPLE_RESULTS when they differ.
fn common_status(results: &[v2::Status]) -> v2::Status {
    match results.first() {
        Some(first) if results.iter().all(|r| r.code == first.code) => first.clone(),
        Some(_) => status::with(Code::MultipleResults, "entries have different results"),
        None => ok(),
    }
}

/// The time left before the client's gRPC deadline (`grpc-timeout` header), if it sent one.
fn grpc_deadline<T>(req: &Request<T>) -> Option<std::time::Duration> {
    grpc_timeout(req.metadata().get("grpc-timeout")?.as_bytes())
}

/// A `grpc-timeout` header's value: at most eight digits and a unit (`H`, `M`, `S`, `m`, `u`
/// or `n`). `None` when malformed; the call then runs without a deadline.
pub(crate) fn grpc_timeout(value: &[u8]) -> Option<std::time::Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => std::time::Duration::from_secs(n * 3600),
        b'M' => std::time::Duration::from_secs(n * 60),
        b'S' => std::time::Duration::from_secs(n),
        b'm' => std::time::Duration::from_millis(n),
        b'u' => std::time::Duration::from_micros(n),
        b'n' => std::time::Duration::from_nanos(n),
        _ => return None,
    })
}

fn single_status_stream<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(tokio_stream::iter([Ok(item)]))
}

/// Records an RPC's latency when dropped.
pub(crate) struct RpcTimer<'a> {
    broker: &'a Broker,
    rpc: &'static str,
    started: std::time::Instant,
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        self.broker.metrics().rpc(self.rpc, self.started.elapsed());
    }
}

impl Messaging {
    /// Counts a request against its client's in-flight limit; `None` when over it.
    pub(super) fn admit(&self, client: &str) -> Option<super::clients::InFlight<'_>> {
        let max = self.broker.config().max_inflight_per_client;
        let slot = self.clients.admit(client, max);
        if slot.is_none() {
            tracing::debug!(client_id = client, max, "client over its in-flight limit");
        }
        slot
    }

    /// What every RPC does first: start its latency timer, name the caller (`x-mq-client-id`)
    /// and record the call as a sign of life.
    /// and who it is (an unauthenticated call is no sign of life); the RPC then checks what
    /// the caller may do.
    /// Tells a lite consumer it no longer subscribes to `lite_topic` (another consumer of its
    /// group took it over), on each of its Telemetry streams. Best effort, as in RocketMQ: the
    /// broker's set is what receives read, so a consumer that misses the notice (or, like the
    /// Python 5.1.2 client, ignores it) gets nothing more of that lite topic either way.
    fn notify_unsubscribe_lite(&self, client: &str, lite_topic: &str) {
        let command = v2::TelemetryCommand {
            status: Some(ok()),
            command: Some(v2::telemetry_command::Command::NotifyUnsubscribeLiteCommand(
                v2::NotifyUnsubscribeLiteCommand { lite_topic: lite_topic.to_string() },
            )),
        };
        for stream in self.clients.streams(client) {
            if stream.tx.try_send(Ok(command.clone())).is_err() {
                tracing::debug!(
                    client_id = client,
                    lite_topic,
                    "NotifyUnsubscribeLiteCommand not written (stream full or gone)"
                );
            }
        }
    }

    pub(super) fn begin<T>(&self, rpc: &'static str, req: &Request<T>) -> (RpcTimer<'_>, String, Caller) {
        let client = client_id(req);
        let caller = Caller::of(&self.broker, req, &client, rpc);
        if caller.authenticated() {
            self.clients.touch(&client);
        }
        (RpcTimer { broker: &self.broker, rpc, started: std::time::Instant::now() }, client, caller)
    }

    fn limits(&self) -> Limits {
        let c = self.broker.config();
        Limits { max_body_size: c.max_body_size, max_delay_ms: c.max_delay.as_millis() as i64 }
    }

    fn announced(&self) -> Announced {
        let c = self.broker.config();
        Announced {
            max_body_size: c.max_body_size,
            long_polling_timeout: c.long_polling_max,
            max_delivery_attempts: c.max_delivery_attempts as i32,
            lite_subscription_quota: i32::try_from(c.max_lite_subscriptions).unwrap_or(i32::MAX),
        }
    }

    /// Validates a receive request and runs it (long polling included).
    async fn receive(
        &self,
        client: &str,
        caller: &Caller,
        req: v2::ReceiveMessageRequest,
        deadline: Option<std::time::Duration>,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let config = self.broker.config();
        let group = convert::resource_name(req.group.as_ref(), "group")?;
        let topic = match req.message_queue.as_ref().and_then(|q| q.topic.as_ref()) {
            Some(t) if !t.name.is_empty() => t.name.clone(),
            _ => return Err(BrokerError::IllegalTopic("message_queue.topic is missing".into())),
        };
        caller.allow(&[(Resource::topic(&topic), Action::Sub), (Resource::group(&group), Action::Sub)])?;
        let filter = convert::filter(req.filter_expression.as_ref())?;
        let invisible = match req.invisible_duration {
            None => std::time::Duration::from_secs(30),
            Some(d) => std::time::Duration::try_from(d)
                .map_err(|_| BrokerError::IllegalInvisibleTime("negative duration".into()))?,
        };
        if !req.auto_renew {
            crate::consume::service::check_invisible(invisible, config.min_invisible)?;
        }
        let requested = req
            .long_polling_timeout
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .unwrap_or(config.long_polling_max);
        // Answer a second before the client gives up (the Rust client's deadline is its poll time).
        let mut poll = requested.min(config.long_polling_max);
        if let Some(left) = deadline {
            poll = poll.min(left.saturating_sub(std::time::Duration::from_secs(1)));
        }
        let permit = self
            .long_polls
            .clone()
            .try_acquire_owned()
            .map_err(|_| BrokerError::TooManyRequests("too many receives waiting at once".into()))?;
        let clients = self.clients.clone();
        let alive = move |id: &str| clients.alive(id, super::clients::ALIVE_WINDOW);
        let receive = ReceiveRequest {
            group,
            topic,
            filter,
            batch: usize::try_from(req.batch_size).unwrap_or(0).clamp(1, MAX_BATCH),
            invisible,
            auto_renew: req.auto_renew,
            poll,
            client: client.to_string(),
            alive: &alive,
        };
        let result = self.broker.receive(&receive, &self.shutdown).await;
        drop(permit);
        result
    }

    async fn send(
        &self,
        producer: &str,
        caller: &Caller,
        messages: Vec<v2::Message>,
    ) -> Result<Vec<v2::SendResultEntry>, (BrokerError, Vec<String>)> {
        let ids = message_ids(&messages);
        let fail = |e: BrokerError| (e, ids.clone());
        if messages.is_empty() {
            return Err(fail(BrokerError::BadRequest("no messages in the request".into())));
        }
        caller.user().map_err(fail)?;
        if messages.len() > MAX_MESSAGES_PER_SEND {
            return Err(fail(BrokerError::PayloadTooLarge(format!(
                "{} messages in one request, the limit is {MAX_MESSAGES_PER_SEND}",
                messages.len()
            ))));
        }
        let kib: usize = messages.iter().map(|m| m.body.len() / 1024 + 1).sum();
        let _budget =
            u32::try_from(kib).ok().and_then(|n| self.send_budget.clone().try_acquire_many_owned(n).ok()).ok_or_else(
                || fail(BrokerError::TooManyRequests("too many message bytes being stored; retry shortly".into())),
            )?;
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
            return Err(fail(BrokerError::BadRequest("all messages of one request must share a topic".into())));
        }
        caller.allow(&[(Resource::topic(&topic), Action::Pub)]).map_err(fail)?;
        let transactional = converted.iter().any(|m| m.message_type == MessageType::Transaction);
        let delayed: Vec<bool> = converted.iter().map(|m| m.delivery_timestamp.is_some()).collect();
        let placements = self.broker.send(&topic, converted, producer).await.map_err(fail)?;
        if transactional {
            // This client can answer check-backs for the topic from now on.
            self.clients.register_topic(producer, &topic);
        }
        Ok(placements
            .into_iter()
            .zip(ids.iter().zip(delayed))
            .map(|(p, (id, delayed))| v2::SendResultEntry {
                status: Some(ok()),
                message_id: id.clone(),
                // A delay message can be recalled until its delivery time.
                recall_handle: if delayed && p.transaction_id.is_none() {
                    crate::log::recall_handle(p.queue, p.offset, id)
                } else {
                    String::new()
                },
                transaction_id: p.transaction_id.unwrap_or_default(),
                offset: p.offset as i64,
            })
            .collect())
    }
}

#[tonic::async_trait]
impl MessagingService for Messaging {
    async fn query_route(&self, req: Request<v2::QueryRouteRequest>) -> GrpcResult<v2::QueryRouteResponse> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_query_route(&fw, req)).await;
        }
        let (_timer, _client, caller) = self.begin("QueryRoute", &req);
        let req = req.into_inner();
        let answer = async {
            let name = convert::resource_name(req.topic.as_ref(), "topic")
                .map_err(|_| BrokerError::IllegalTopic("topic is missing".into()))?;
            let t = Resource::topic(&name);
            caller.allow_any(&[(t, Action::Pub), (t, Action::Sub)])?;
            let topic = self.broker.topic_or_create(&name).await?;
            let at = route::route_endpoints(&self.advertised, req.endpoints.as_ref());
            let namespace = req.topic.as_ref().map(|r| r.resource_namespace.clone()).unwrap_or_default();
            Ok::<_, BrokerError>(route::queues(&topic, &namespace, &at))
        }
        .await;
        Ok(Response::new(match answer {
            Ok(message_queues) => v2::QueryRouteResponse { status: Some(ok()), message_queues },
            Err(e) => v2::QueryRouteResponse { status: Some(status::status(&e)), message_queues: Vec::new() },
        }))
    }

    async fn heartbeat(&self, req: Request<v2::HeartbeatRequest>) -> GrpcResult<v2::HeartbeatResponse> {
        let (_timer, _client, caller) = self.begin("Heartbeat", &req);
        let group = req.get_ref().group.as_ref().map(|g| g.name.as_str()).filter(|g| !g.is_empty());
        let allowed = match group {
            Some(g) => caller.allow(&[(Resource::group(g), Action::Sub)]),
            None => caller.allow(&[]),
        };
        let st = allowed.map_or_else(|e| status::status(&e), |()| ok());
        Ok(Response::new(v2::HeartbeatResponse { status: Some(st) }))
    }

    async fn send_message(&self, req: Request<v2::SendMessageRequest>) -> GrpcResult<v2::SendMessageResponse> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_send(&fw, req)).await;
        }
        let topic = req.get_ref().messages.first().and_then(|m| m.topic.as_ref()).map(|t| t.name.clone());
        let (_timer, producer, caller) = self.begin("SendMessage", &req);
        if let Err(e) = self.ensure_local_topic(&req, &caller, topic.as_deref().unwrap_or_default(), Action::Pub).await
        {
            return Ok(Response::new(refused(status::status(&e), message_ids(&req.get_ref().messages))));
        }
        let messages = req.into_inner().messages;
        let Some(_slot) = self.admit(&producer) else {
            return Ok(Response::new(refused(busy(), message_ids(&messages))));
        };
        let response = match self.send(&producer, &caller, messages).await {
            Ok(entries) => v2::SendMessageResponse { status: Some(ok()), entries },
            Err((e, ids)) => {
                tracing::debug!(client_id = producer, error = %e, "send refused");
                refused(status::status(&e), ids)
            }
        };
        Ok(Response::new(response))
    }

    async fn query_assignment(
        &self,
        req: Request<v2::QueryAssignmentRequest>,
    ) -> GrpcResult<v2::QueryAssignmentResponse> {
        let (_timer, _client, caller) = self.begin("QueryAssignment", &req);
        let req = req.into_inner();
        let answer = async {
            let name = convert::resource_name(req.topic.as_ref(), "topic")?;
            if caller.user()?.is_some() {
                let group = convert::resource_name(req.group.as_ref(), "group")?;
                caller.allow(&[(Resource::topic(&name), Action::Sub), (Resource::group(&group), Action::Sub)])?;
            }
            let topic = self.broker.topic_or_create(&name).await?;
            let at = route::route_endpoints(&self.advertised, req.endpoints.as_ref());
            // Every receive is served from all queues, so one assignment ("any queue of this
            // broker", id -1 as the reference proxy does) is the whole answer.
            let mut queue = route::queues(&topic, "", &at).into_iter().next();
            if let Some(q) = queue.as_mut() {
                q.id = -1;
                q.topic = req.topic.clone();
            }
            Ok::<_, BrokerError>(queue.map(|q| v2::Assignment { message_queue: Some(q) }).into_iter().collect())
        }
        .await;
        Ok(Response::new(match answer {
            Ok(assignments) => v2::QueryAssignmentResponse { status: Some(ok()), assignments },
            Err(e) => v2::QueryAssignmentResponse { status: Some(status::status(&e)), assignments: Vec::new() },
        }))
    }

    type ReceiveMessageStream = BoxStream<v2::ReceiveMessageResponse>;

    async fn receive_message(&self, req: Request<v2::ReceiveMessageRequest>) -> GrpcResult<Self::ReceiveMessageStream> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_receive(&fw, req)).await;
        }
        let topic = req.get_ref().message_queue.as_ref().and_then(|q| q.topic.as_ref()).map(|t| t.name.clone());
        let (_timer, client, caller) = self.begin("ReceiveMessage", &req);
        if let Err(e) = self.ensure_local_topic(&req, &caller, topic.as_deref().unwrap_or_default(), Action::Sub).await
        {
            return Ok(Response::new(single_status_stream(receive_status(status::status(&e)))));
        }
        let deadline = grpc_deadline(&req);
        let Some(_slot) = self.admit(&client) else {
            return Ok(Response::new(single_status_stream(receive_status(busy()))));
        };
        let items = match self.receive(&client, &caller, req.into_inner(), deadline).await {
            Ok(deliveries) if deliveries.is_empty() => {
                vec![receive_status(status::with(Code::MessageNotFound, "no new message")), receive_time()]
            }
            Ok(deliveries) => {
                let mut items = Vec::with_capacity(deliveries.len() + 2);
                items.push(receive_status(ok()));
                items.extend(deliveries.into_iter().map(|d| v2::ReceiveMessageResponse {
                    content: Some(receive_message_response::Content::Message(convert::delivered(d))),
                }));
                items.push(receive_time());
                items
            }
            Err(e) => vec![receive_status(status::status(&e)), receive_time()],
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(items.into_iter().map(Ok)))))
    }

    async fn ack_message(&self, req: Request<v2::AckMessageRequest>) -> GrpcResult<v2::AckMessageResponse> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_ack(&fw, req)).await;
        }
        let (_timer, client, caller) = self.begin("AckMessage", &req);
        let req = req.into_inner();
        let entries = req.entries;
        let Some(_slot) = self.admit(&client) else {
            let mut out: Vec<v2::AckMessageResultEntry> = entries
                .into_iter()
                .map(|e| v2::AckMessageResultEntry {
                    message_id: e.message_id,
                    receipt_handle: e.receipt_handle,
                    status: Some(busy()),
                })
                .collect();
            if out.is_empty() {
                out.push(v2::AckMessageResultEntry { status: Some(busy()), ..Default::default() });
            }
            return Ok(Response::new(v2::AckMessageResponse { status: Some(busy()), entries: out }));
        };
        let handles: Vec<String> = entries.iter().map(|e| e.receipt_handle.clone()).collect();
        let outcome = async {
            let group = convert::resource_name(req.group.as_ref(), "group")?;
            let topic = convert::resource_name(req.topic.as_ref(), "topic")?;
            caller.allow(&[(Resource::topic(&topic), Action::Sub), (Resource::group(&group), Action::Sub)])?;
            if handles.is_empty() {
                return Err(BrokerError::BadRequest("no entries to ack".into()));
            }
            self.broker.ack(&group, &topic, &handles).await
        }
        .await;
        let results: Vec<v2::Status> = match outcome {
            Ok(results) => results.iter().map(|r| r.as_ref().map_or_else(status::status, |_| ok())).collect(),
            Err(e) => vec![status::status(&e); entries.len().max(1)],
        };
        let top = common_status(&results);
        let mut out: Vec<v2::AckMessageResultEntry> = entries
            .into_iter()
            .zip(results)
            .map(|(e, st)| v2::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: Some(st),
            })
            .collect();
        if out.is_empty() {
            // The Rust client reads entries[0]: never answer with none.
            out.push(v2::AckMessageResultEntry { status: Some(top.clone()), ..Default::default() });
        }
        Ok(Response::new(v2::AckMessageResponse { status: Some(top), entries: out }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> GrpcResult<v2::ForwardMessageToDeadLetterQueueResponse> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_forward_to_dlq(&fw, req)).await;
        }
        let (_timer, client, caller) = self.begin("ForwardMessageToDeadLetterQueue", &req);
        let req = req.into_inner();
        let Some(_slot) = self.admit(&client) else {
            return Ok(Response::new(v2::ForwardMessageToDeadLetterQueueResponse { status: Some(busy()) }));
        };
        let outcome = async {
            let group = convert::resource_name(req.group.as_ref(), "group")?;
            let topic = convert::resource_name(req.topic.as_ref(), "topic")?;
            caller.allow(&[(Resource::topic(&topic), Action::Sub), (Resource::group(&group), Action::Sub)])?;
            self.broker.forward_to_dead_letter(&group, &topic, &req.receipt_handle).await
        }
        .await;
        let st = outcome.map_or_else(|e| status::status(&e), |()| ok());
        Ok(Response::new(v2::ForwardMessageToDeadLetterQueueResponse { status: Some(st) }))
    }

    type PullMessageStream = BoxStream<v2::PullMessageResponse>;

    async fn pull_message(&self, req: Request<v2::PullMessageRequest>) -> GrpcResult<Self::PullMessageStream> {
        use v2::pull_message_response::Content;
        let (_timer, client, caller) = self.begin("PullMessage", &req);
        let deadline = grpc_deadline(&req);
        let status_only =
            |st| Response::new(single_status_stream(v2::PullMessageResponse { content: Some(Content::Status(st)) }));
        let Some(_slot) = self.admit(&client) else { return Ok(status_only(busy())) };
        let req = req.into_inner();
        let pulled = async {
            let (group, topic, queue) = group_queue(&caller, req.group.as_ref(), req.message_queue.as_ref())?;
            let offset = u64::try_from(req.offset).map_err(|_| BrokerError::BadRequest("negative offset".into()))?;
            let config = self.broker.config();
            let mut poll = req
                .long_polling_timeout
                .and_then(|d| std::time::Duration::try_from(d).ok())
                .unwrap_or(config.long_polling_max)
                .min(config.long_polling_max);
            if let Some(left) = deadline {
                poll = poll.min(left.saturating_sub(std::time::Duration::from_secs(1)));
            }
            let _permit = self
                .long_polls
                .clone()
                .try_acquire_owned()
                .map_err(|_| BrokerError::TooManyRequests("too many long polls waiting at once".into()))?;
            let pull = PullRequest {
                group,
                topic,
                queue,
                offset,
                batch: usize::try_from(req.batch_size).unwrap_or(0),
                filter: convert::filter(req.filter_expression.as_ref())?,
                poll,
            };
            self.broker.pull(&pull, &self.shutdown).await
        }
        .await;
        let pulled = match pulled {
            Ok(p) => p,
            Err(e) => return Ok(status_only(status::status(&e))),
        };
        let mut items = Vec::with_capacity(pulled.messages.len() + 2);
        let st = if pulled.messages.is_empty() { status::with(Code::MessageNotFound, "no new message") } else { ok() };
        items.push(v2::PullMessageResponse { content: Some(Content::Status(st)) });
        for m in &pulled.messages {
            items.push(v2::PullMessageResponse { content: Some(Content::Message(convert::wire_message(m))) });
        }
        items.push(v2::PullMessageResponse { content: Some(Content::NextOffset(pulled.next_offset as i64)) });
        Ok(Response::new(Box::pin(tokio_stream::iter(items.into_iter().map(Ok)))))
    }

    async fn update_offset(&self, req: Request<v2::UpdateOffsetRequest>) -> GrpcResult<v2::UpdateOffsetResponse> {
        let (_timer, _client, caller) = self.begin("UpdateOffset", &req);
        let req = req.into_inner();
        let outcome = async {
            let (group, topic, queue) = group_queue(&caller, req.group.as_ref(), req.message_queue.as_ref())?;
            let offset = u64::try_from(req.offset).map_err(|_| BrokerError::BadRequest("negative offset".into()))?;
            self.broker.update_offset(&group, &topic, queue, offset).await
        }
        .await;
        Ok(Response::new(v2::UpdateOffsetResponse {
            status: Some(outcome.map_or_else(|e| status::status(&e), |()| ok())),
        }))
    }

    async fn get_offset(&self, req: Request<v2::GetOffsetRequest>) -> GrpcResult<v2::GetOffsetResponse> {
        let (_timer, _client, caller) = self.begin("GetOffset", &req);
        let req = req.into_inner();
        let outcome = (|| {
            let (group, topic, queue) = group_queue(&caller, req.group.as_ref(), req.message_queue.as_ref())?;
            self.broker.get_offset(&group, &topic, queue)
        })();
        Ok(Response::new(match outcome {
            Ok(offset) => v2::GetOffsetResponse { status: Some(ok()), offset: offset as i64 },
            Err(e) => v2::GetOffsetResponse { status: Some(status::status(&e)), offset: 0 },
        }))
    }

    async fn query_offset(&self, req: Request<v2::QueryOffsetRequest>) -> GrpcResult<v2::QueryOffsetResponse> {
        let (_timer, _client, caller) = self.begin("QueryOffset", &req);
        let req = req.into_inner();
        let outcome = (|| {
            let (topic, queue) = convert::queue_of(req.message_queue.as_ref())?;
            caller.allow(&[(Resource::topic(&topic), Action::Sub)])?;
            let at = convert::offset_query(req.query_offset_policy, req.timestamp.as_ref())?;
            self.broker.query_offset(&topic, queue, at)
        })();
        Ok(Response::new(match outcome {
            Ok(offset) => v2::QueryOffsetResponse { status: Some(ok()), offset: offset as i64 },
            Err(e) => v2::QueryOffsetResponse { status: Some(status::status(&e)), offset: 0 },
        }))
    }

    async fn end_transaction(&self, req: Request<v2::EndTransactionRequest>) -> GrpcResult<v2::EndTransactionResponse> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_end_transaction(&fw, req)).await;
        }
        let (_timer, client, caller) = self.begin("EndTransaction", &req);
        let req = req.into_inner();
        let Some(_slot) = self.admit(&client) else {
            return Ok(Response::new(v2::EndTransactionResponse { status: Some(busy()) }));
        };
        Ok(Response::new(v2::EndTransactionResponse { status: Some(self.decide(&client, &caller, req).await) }))
    }

    type TelemetryStream = ReceiverStream<Result<v2::TelemetryCommand, tonic::Status>>;

    async fn telemetry(&self, req: Request<Streaming<v2::TelemetryCommand>>) -> GrpcResult<Self::TelemetryStream> {
        let client = client_id(&req);
        let caller = Caller::of(&self.broker, &req, &client, "Telemetry");
        // Refused at the start: the clients report a failed start instead of waiting on a
        // stream that will never carry a command.
        let user = caller.user().map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        let identity = user.map(|u| (u.clone(), caller.from));
        let rx = telemetry::serve(
            client,
            identity,
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
        let (_timer, client, caller) = self.begin("NotifyClientTermination", &req);
        let user = match caller.user() {
            Ok(user) => user,
            Err(e) => {
                return Ok(Response::new(v2::NotifyClientTerminationResponse { status: Some(status::status(&e)) }))
            }
        };
        tracing::debug!(client_id = client, "client terminated");
        if self.clients.terminate(&client, user.map(|u| u.as_ref())) {
            self.broker.forget_client(&client);
        }
        Ok(Response::new(v2::NotifyClientTerminationResponse { status: Some(ok()) }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> GrpcResult<v2::ChangeInvisibleDurationResponse> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_change_invisible(&fw, req)).await;
        }
        let (_timer, client, caller) = self.begin("ChangeInvisibleDuration", &req);
        let req = req.into_inner();
        let Some(_slot) = self.admit(&client) else {
            let handle = req.receipt_handle;
            return Ok(Response::new(v2::ChangeInvisibleDurationResponse {
                status: Some(busy()),
                receipt_handle: handle,
            }));
        };
        let outcome = async {
            let group = convert::resource_name(req.group.as_ref(), "group")?;
            let topic = convert::resource_name(req.topic.as_ref(), "topic")?;
            caller.allow(&[(Resource::topic(&topic), Action::Sub), (Resource::group(&group), Action::Sub)])?;
            let d = req
                .invisible_duration
                .ok_or_else(|| BrokerError::IllegalInvisibleTime("invisible_duration is missing".into()))?;
            let d = std::time::Duration::try_from(d)
                .map_err(|_| BrokerError::IllegalInvisibleTime("negative duration".into()))?;
            self.broker.change_invisible(&group, &topic, &req.receipt_handle, d).await
        }
        .await;
        // Python replaces its handle with ours before checking the status: on failure give its
        // own back, so a later ack still names the delivery it holds.
        let response = match outcome {
            Ok(handle) => v2::ChangeInvisibleDurationResponse { status: Some(ok()), receipt_handle: handle },
            Err(e) => v2::ChangeInvisibleDurationResponse {
                status: Some(status::status(&e)),
                receipt_handle: req.receipt_handle,
            },
        };
        Ok(Response::new(response))
    }

    async fn recall_message(&self, req: Request<v2::RecallMessageRequest>) -> GrpcResult<v2::RecallMessageResponse> {
        if let Some(fw) = self.cluster_path(&req) {
            return Box::pin(self.cluster_recall(&fw, req)).await;
        }
        let (_timer, _client, caller) = self.begin("RecallMessage", &req);
        let req = req.into_inner();
        let outcome = async {
            let topic = convert::resource_name(req.topic.as_ref(), "topic")?;
            caller.allow(&[(Resource::topic(&topic), Action::Pub)])?;
            self.broker.recall(&topic, &req.recall_handle).await
        }
        .await;
        Ok(Response::new(match outcome {
            Ok(message_id) => v2::RecallMessageResponse { status: Some(ok()), message_id },
            Err(e) => v2::RecallMessageResponse { status: Some(status::status(&e)), message_id: String::new() },
        }))
    }

    async fn sync_lite_subscription(
        &self,
        req: Request<v2::SyncLiteSubscriptionRequest>,
    ) -> GrpcResult<v2::SyncLiteSubscriptionResponse> {
        let (_timer, client, caller) = self.begin("SyncLiteSubscription", &req);
        let req = req.into_inner();
        let Some(_slot) = self.admit(&client) else {
            return Ok(Response::new(v2::SyncLiteSubscriptionResponse { status: Some(busy()) }));
        };
        let outcome = async {
            let group = convert::resource_name(req.group.as_ref(), "group")?;
            let topic = convert::resource_name(req.topic.as_ref(), "topic")?;
            caller.allow(&[(Resource::topic(&topic), Action::Sub), (Resource::group(&group), Action::Sub)])?;
            let action = convert::lite_action(req.action)?;
            let start = convert::lite_start(req.offset_option.as_ref())?;
            self.broker.sync_lite(&client, &group, &topic, action, &req.lite_topic_set, req.version, start).await
        }
        .await;
        let status = match outcome {
            Ok(evicted) => {
                for e in evicted {
                    self.notify_unsubscribe_lite(&e.client, &e.lite_topic);
                }
                ok()
            }
            Err(e) => status::status(&e),
        };
        Ok(Response::new(v2::SyncLiteSubscriptionResponse { status: Some(status) }))
    }
}

/// Whether an owner's answer says it could not store what a send or receive needs it to now:
/// its disk nearly full (`disk`), its store read-only after a failed flush or failing, its
/// shard short of in-sync copies, or the node shutting down. That is what
/// `INTERNAL_SERVER_ERROR` means from an owner (`status::code`); another owner may do it.
fn not_stored(s: &v2::Status) -> bool {
    s.code == Code::InternalServerError as i32
}

/// Serves a unary RPC `$method` at `$owner` — this node's standalone path, or the owner's
/// service over the network — counting a forward; evaluates to the answer. `$make` builds the
/// request (a closure: a call that failed because the owner restarted at another address is
/// made once more there, see [`Forwarder::call_at`]).
macro_rules! at_owner {
    ($self:ident, $fw:ident, $owner:ident, $make:ident, $method:ident, $rpc:literal) => {{
        let started = std::time::Instant::now();
        let answer = if $owner == $fw.node_id() {
            <Self as MessagingService>::$method($self, $make()).await
        } else {
            $fw.call_at(&$owner, |mut c| {
                let request = $make();
                async move { c.$method(request).await }
            })
            .await
        };
        $self.note_forward($rpc, &$owner, started);
        answer
    }};
}

/// The cluster paths (`--etcd`): requests a client sent to this node, served by the owners of
/// what they concern (see `grpc::forward`). A request another node passed on takes the
/// standalone path.
impl Messaging {
    /// Counts a request passed to another node and how long it took.
    fn note_forward(&self, rpc: &'static str, owner: &str, started: std::time::Instant) {
        if self.cluster.as_ref().is_some_and(|fw| fw.node_id() != owner) {
            self.broker.metrics().forward(rpc, owner, started.elapsed());
        }
    }

    /// One transaction decision (EndTransaction's, or one of an EndTransactions call's) made
    /// here; the caller was admitted already.
    pub(crate) async fn decide(&self, client: &str, caller: &Caller, req: v2::EndTransactionRequest) -> v2::Status {
        let outcome = async {
            let topic = req.topic.as_ref().map(|t| t.name.clone()).unwrap_or_default();
            let (resolution, by) = convert::decision(req.resolution, req.source)?;
            caller.user()?;
            if by == Actor::Check && !req.transaction_id.is_empty() {
                // The check is answered: no longer waited for (and its stream responsive again,
                // when it went to this client), whatever the answer decides.
                self.clients.check_answered(&req.transaction_id, client);
            }
            // The policy is checked on the transaction's own topic, whatever the request names.
            let may_end = |own: &str| caller.allow(&[(Resource::topic(own), Action::Pub)]);
            self.broker
                .end_transaction_if(&topic, &req.message_id, &req.transaction_id, resolution, by, None, may_end)
                .await
        }
        .await;
        match outcome {
            Ok(_) => ok(),
            Err(e) => {
                tracing::debug!(client_id = client, transaction_id = req.transaction_id, error = %e, "end transaction refused");
                status::status(&e)
            }
        }
    }

    /// The forwarder, when this request is one to route (clustered, and not forwarded).
    ///
    /// Callers box the forwarding call (`Box::pin(self.cluster_send(..))`): its future holds a
    /// gRPC client call, about 10 KB, and unboxed it would make every request's future that
    /// large, to be allocated and copied per call on the local path too (SendMessage's went
    /// from 11,240 to 2,808 bytes).
    pub(super) fn cluster_path<T>(&self, req: &Request<T>) -> Option<Arc<Forwarder>> {
        self.cluster.clone().filter(|_| !forward::is_forwarded(req))
    }

    /// Makes sure this node holds its shard of `topic` as a local topic (type and queue count
    /// from the placement) before a forwarded request uses it. The caller is checked first
    /// (`action` on the topic): a topic is made, or grown, only for one who may use it.
    async fn ensure_local_topic<T>(
        &self,
        req: &Request<T>,
        caller: &Caller,
        topic: &str,
        action: Action,
    ) -> Result<(), BrokerError> {
        let Some(fw) = self.cluster.as_ref().filter(|_| forward::is_forwarded(req)) else { return Ok(()) };
        if topic.is_empty() {
            return Ok(());
        }
        caller.allow(&[(Resource::topic(topic), action)])?;
        // A topic here already only grows, when its shard did (`txmq topic scale`).
        if let Some(local) = self.broker.topic(topic) {
            if let Some((_, queues)) = forward::shard_of(req).filter(|(_, q)| *q > local.queue_count) {
                Box::pin(self.broker.grow_topic(topic, queues)).await?;
            }
            return Ok(());
        }
        // The forwarding node names our shard; without it (an older node), etcd does.
        let (ty, queues) = match forward::shard_of(req) {
            Some(s) => s,
            None => {
                let Some(p) = Box::pin(fw.placement(topic, None)).await? else { return Ok(()) };
                let Some(shard) = p.shard(fw.node_id()) else { return Ok(()) };
                (p.topic_type.clone(), shard.queues)
            }
        };
        let ty: crate::model::TopicType = ty.parse().map_err(BrokerError::BadRequest)?;
        match Box::pin(self.broker.create_topic(topic, ty, queues)).await {
            Ok(_) | Err(BrokerError::TopicExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The placement of `topic`, created as the broker would auto-create the topic (or as
    /// this node's local topic of that name is) when it has none.
    async fn placement_of(&self, fw: &Forwarder, topic: &str) -> Result<Arc<crate::cluster::Placement>, BrokerError> {
        let c = self.broker.config();
        let local = self.broker.topic(topic);
        let create = match &local {
            Some(t) => Some((t.topic_type.as_str(), t.queue_count)),
            None if c.auto_create_topics && !crate::topics::is_reserved(topic) => {
                Some(("MIXED", c.default_queue_count))
            }
            None => None,
        };
        crate::topics::validate_name(topic)?;
        fw.placement(topic, create).await?.ok_or_else(|| BrokerError::TopicNotFound(topic.to_string()))
    }

    async fn cluster_query_route(
        &self,
        fw: &Forwarder,
        req: Request<v2::QueryRouteRequest>,
    ) -> GrpcResult<v2::QueryRouteResponse> {
        let (_timer, _client, caller) = self.begin("QueryRoute", &req);
        let req = req.into_inner();
        let answer = async {
            let name = convert::resource_name(req.topic.as_ref(), "topic")
                .map_err(|_| BrokerError::IllegalTopic("topic is missing".into()))?;
            let t = Resource::topic(&name);
            caller.allow_any(&[(t, Action::Pub), (t, Action::Sub)])?;
            let p = self.placement_of(fw, &name).await?;
            let ty: crate::model::TopicType = p.topic_type.parse().map_err(BrokerError::BadRequest)?;
            let accept: Vec<i32> = ty.accepted().into_iter().map(|t| convert::wire_message_type(t) as i32).collect();
            // Every queue at the address the client used (as RocketMQ's proxy answers): this
            // node serves them all by forwarding; one broker name per owning node.
            let at = route::route_endpoints(&self.advertised, req.endpoints.as_ref());
            let namespace = req.topic.as_ref().map(|r| r.resource_namespace.clone()).unwrap_or_default();
            let queues = p
                .shards
                .iter()
                .flat_map(|s| {
                    let (at, accept, namespace, name) = (&at, &accept, &namespace, &name);
                    (0..s.queues).map(move |id| v2::MessageQueue {
                        topic: Some(v2::Resource { resource_namespace: namespace.clone(), name: name.clone() }),
                        id: id as i32,
                        permission: v2::Permission::ReadWrite as i32,
                        broker: Some(v2::Broker { name: s.node.clone(), id: 0, endpoints: Some(at.clone()) }),
                        accept_message_types: accept.clone(),
                    })
                })
                .collect();
            Ok::<_, BrokerError>(queues)
        }
        .await;
        Ok(Response::new(match answer {
            Ok(message_queues) => v2::QueryRouteResponse { status: Some(ok()), message_queues },
            Err(e) => v2::QueryRouteResponse { status: Some(status::status(&e)), message_queues: Vec::new() },
        }))
    }

    async fn cluster_send(
        &self,
        fw: &Forwarder,
        req: Request<v2::SendMessageRequest>,
    ) -> GrpcResult<v2::SendMessageResponse> {
        let ids = message_ids(&req.get_ref().messages);
        let answer = async {
            let first = req.get_ref().messages.first().ok_or_else(|| BrokerError::BadRequest("no message".into()))?;
            let topic = convert::resource_name(first.topic.as_ref(), "topic")?;
            let group = first.system_properties.as_ref().and_then(|s| s.message_group.clone());
            // Checked here too (the owner checks every message): a placement is made for one
            // who may send to the topic, not for anyone who asks.
            Caller::of(&self.broker, &req, &client_id(&req), "SendMessage")
                .allow(&[(Resource::topic(&topic), Action::Pub)])?;
            let p = self.placement_of(fw, &topic).await?;
            let mut failed = None;
            let mut answered = None;
            let mut not_taken = None;
            // An owner that cannot be reached (down, its lease not expired yet) passes the send
            // to the next, and so does one that answers it cannot store it now (see
            // `not_stored`), unless the send belongs to a message group (its queue has one
            // owner); one that answers otherwise, answers for good. A send an owner failed to
            // store may be stored by it all the same (a failed flush), and then by the next
            // one too: at least once, as a send the client retried.
            for owner in fw.owners_for_send(&p, group.as_deref())? {
                let body = v2::SendMessageRequest { messages: req.get_ref().messages.clone() };
                let fwd = || forward::with_shard(forward::forwarded(&req, &fw.membership, body.clone()), &p, &owner);
                let r = at_owner!(self, fw, owner, fwd, send_message, "SendMessage");
                match r {
                    Ok(r) if group.is_none() && r.get_ref().status.as_ref().is_some_and(not_stored) => {
                        tracing::debug!(node = owner, "send not stored; trying the next owner");
                        not_taken = Some(r.into_inner());
                    }
                    Ok(r) => {
                        answered = Some((owner, r.into_inner()));
                        break;
                    }
                    Err(s) => {
                        tracing::debug!(node = owner, error = %s.message(), "send not forwarded; trying the next owner");
                        failed = Some(BrokerError::Internal(format!("node {owner}: {}", s.message())));
                    }
                }
            }
            let (owner, mut r) = match (answered, not_taken, failed) {
                (Some(a), _, _) => a,
                // Every owner that answered could not store it: the last one's is the answer.
                (None, Some(r), _) => return Ok(r),
                (None, None, Some(e)) => return Err(e),
                (None, None, None) => return Err(BrokerError::Internal("cluster: no owner to send to".into())),
            };
            for e in &mut r.entries {
                if !e.transaction_id.is_empty() {
                    e.transaction_id = forward::tag(&owner, &e.transaction_id);
                }
                if !e.recall_handle.is_empty() {
                    e.recall_handle = forward::tag(&owner, &e.recall_handle);
                }
            }
            Ok::<_, BrokerError>(r)
        }
        .await;
        Ok(Response::new(answer.unwrap_or_else(|e| refused(status::status(&e), ids))))
    }

    async fn cluster_receive(
        &self,
        fw: &Forwarder,
        req: Request<v2::ReceiveMessageRequest>,
    ) -> GrpcResult<BoxStream<v2::ReceiveMessageResponse>> {
        let body = req.get_ref().clone();
        let topic =
            body.message_queue.as_ref().and_then(|q| q.topic.as_ref()).map(|t| t.name.clone()).unwrap_or_default();
        let asked = body.message_queue.as_ref().and_then(|q| q.broker.as_ref()).map(|b| b.name.clone());
        // Checked here too (the owner checks it again): a placement is made for one who may
        // read the topic, not for anyone who asks.
        let group = body.group.as_ref().map(|g| g.name.clone()).unwrap_or_default();
        let caller = Caller::of(&self.broker, &req, &client_id(&req), "ReceiveMessage");
        if let Err(e) = caller.allow(&[(Resource::topic(&topic), Action::Sub), (Resource::group(&group), Action::Sub)])
        {
            return Ok(Response::new(single_status_stream(receive_status(status::status(&e)))));
        }
        let p = match self.placement_of(fw, &topic).await {
            Ok(p) => p,
            Err(e) => return Ok(Response::new(single_status_stream(receive_status(status::status(&e))))),
        };
        // The owner of the broker name the client asked; if it is down, or the client names no
        // owner (a client that does not read routes), the live owners in turn, so that
        // successive receives reach every shard. An owner that cannot be reached (dead, its
        // lease not expired yet) passes the receive to the next live owner, as a send does:
        // the client sees messages of another shard, not an error. So does one that answers at
        // once that it cannot serve it now (its shard short of in-sync copies, its store
        // read-only: `not_stored`'s code), since a receive writes. A receive takes one turn
        // only: with two turns each, and an even number of live owners, every receive would
        // start at the same owner.
        let in_turn = fw.owners_for_receive(&p).unwrap_or_default();
        let first = match asked.filter(|n| fw.membership.is_reachable(n)) {
            Some(n) => n,
            None => in_turn.first().cloned().unwrap_or_else(|| fw.node_id().to_string()),
        };
        let mut owners = vec![first.clone()];
        owners.extend(in_turn.into_iter().filter(|o| *o != first));
        let timeout = grpc_deadline(&req);
        let make = |owner: &str| {
            let mut fwd = forward::with_shard(forward::forwarded(&req, &fw.membership, body.clone()), &p, owner);
            if let Some(t) = timeout {
                fwd.set_timeout(t);
            }
            fwd
        };
        let mut failed = None;
        let mut answered = None;
        let mut not_served = None;
        for owner in owners {
            let started = std::time::Instant::now();
            let stream: BoxStream<v2::ReceiveMessageResponse> = if owner == fw.node_id() {
                <Self as MessagingService>::receive_message(self, make(&owner)).await?.into_inner()
            } else {
                let r = fw
                    .call_at(&owner, |mut c| {
                        let request = make(&owner);
                        async move { c.receive_message(request).await }
                    })
                    .await;
                match r {
                    Ok(r) => {
                        self.note_forward("ReceiveMessage", &owner, started);
                        Box::pin(r.into_inner())
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable || forward::unreached(&s) => {
                        tracing::debug!(node = owner, error = %s.message(), "receive not forwarded; trying the next owner");
                        failed = Some(BrokerError::Internal(format!("node {owner}: {}", s.message())));
                        continue;
                    }
                    Err(s) => {
                        failed = Some(BrokerError::Internal(format!("node {owner}: {}", s.message())));
                        break;
                    }
                }
            };
            // The first item is the answer's status (a long poll's comes when it ends).
            let mut rest = stream;
            let first = tokio_stream::StreamExt::next(&mut rest).await;
            match first {
                Some(Ok(v2::ReceiveMessageResponse {
                    content: Some(receive_message_response::Content::Status(st)),
                })) if not_stored(&st) => {
                    tracing::debug!(node = owner, error = %st.message, "receive not served; trying the next owner");
                    not_served = Some(st);
                }
                Some(item) => {
                    let whole: BoxStream<v2::ReceiveMessageResponse> =
                        Box::pin(tokio_stream::StreamExt::chain(tokio_stream::once(item), rest));
                    answered = Some((owner, whole));
                    break;
                }
                None => {
                    answered = Some((owner, Box::pin(tokio_stream::empty())));
                    break;
                }
            }
        }
        let (owner, stream) = match (answered, not_served, failed) {
            (Some(a), _, _) => a,
            // Every owner that answered could not serve it: the last one's is the answer.
            (None, Some(st), _) => return Ok(Response::new(single_status_stream(receive_status(st)))),
            (None, None, e) => {
                let e = e.unwrap_or_else(|| BrokerError::Internal("cluster: no owner to receive from".into()));
                return Ok(Response::new(single_status_stream(receive_status(status::status(&e)))));
            }
        };
        let tagged = tokio_stream::StreamExt::map(stream, move |item| {
            item.map(|mut r| {
                if let Some(receive_message_response::Content::Message(m)) = r.content.as_mut() {
                    if let Some(h) = m.system_properties.as_mut().and_then(|s| s.receipt_handle.as_mut()) {
                        *h = forward::tag(&owner, h);
                    }
                }
                r
            })
        });
        Ok(Response::new(Box::pin(tagged)))
    }

    async fn cluster_ack(
        &self,
        fw: &Forwarder,
        req: Request<v2::AckMessageRequest>,
    ) -> GrpcResult<v2::AckMessageResponse> {
        let body = req.get_ref().clone();
        // Entries by owner, each remembering its place in the request.
        let mut by_owner: Vec<(String, Vec<(usize, v2::AckMessageEntry)>)> = Vec::new();
        for (i, e) in body.entries.iter().enumerate() {
            let (owner, raw) = forward::owner_of(fw.node_id(), &e.receipt_handle);
            let entry = v2::AckMessageEntry { receipt_handle: raw, ..e.clone() };
            match by_owner.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, v)) => v.push((i, entry)),
                None => by_owner.push((owner, vec![(i, entry)])),
            }
        }
        let mut results: Vec<Option<v2::AckMessageResultEntry>> = vec![None; body.entries.len()];
        for (owner, entries) in by_owner {
            let (places, entries): (Vec<usize>, Vec<v2::AckMessageEntry>) = entries.into_iter().unzip();
            let part = v2::AckMessageRequest { group: body.group.clone(), topic: body.topic.clone(), entries };
            let fwd = || forward::forwarded(&req, &fw.membership, part.clone());
            let answer = at_owner!(self, fw, owner, fwd, ack_message, "AckMessage");
            match answer {
                Ok(r) => {
                    for (place, entry) in places.into_iter().zip(r.into_inner().entries) {
                        results[place] = Some(entry);
                    }
                }
                Err(s) => {
                    let st = node_failed(&owner, &s);
                    for place in places {
                        results[place] =
                            Some(v2::AckMessageResultEntry { status: Some(st.clone()), ..Default::default() });
                    }
                }
            }
        }
        // Each entry answers with the handle and id the client sent.
        let entries: Vec<v2::AckMessageResultEntry> = results
            .into_iter()
            .zip(&body.entries)
            .map(|(r, asked)| v2::AckMessageResultEntry {
                message_id: asked.message_id.clone(),
                receipt_handle: asked.receipt_handle.clone(),
                status: r.and_then(|r| r.status),
            })
            .collect();
        let statuses: Vec<v2::Status> = entries.iter().filter_map(|e| e.status.clone()).collect();
        Ok(Response::new(v2::AckMessageResponse { status: Some(common_status(&statuses)), entries }))
    }

    async fn cluster_change_invisible(
        &self,
        fw: &Forwarder,
        req: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> GrpcResult<v2::ChangeInvisibleDurationResponse> {
        let body = req.get_ref().clone();
        let (owner, raw) = forward::owner_of(fw.node_id(), &body.receipt_handle);
        let part = v2::ChangeInvisibleDurationRequest { receipt_handle: raw, ..body.clone() };
        let fwd = || forward::forwarded(&req, &fw.membership, part.clone());
        let answer = at_owner!(self, fw, owner, fwd, change_invisible_duration, "ChangeInvisibleDuration");
        Ok(Response::new(match answer {
            Ok(r) => {
                let mut r = r.into_inner();
                r.receipt_handle = forward::tag(&owner, &r.receipt_handle);
                r
            }
            Err(s) => v2::ChangeInvisibleDurationResponse {
                status: Some(node_failed(&owner, &s)),
                receipt_handle: body.receipt_handle,
            },
        }))
    }

    async fn cluster_forward_to_dlq(
        &self,
        fw: &Forwarder,
        req: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> GrpcResult<v2::ForwardMessageToDeadLetterQueueResponse> {
        let body = req.get_ref().clone();
        let (owner, raw) = forward::owner_of(fw.node_id(), &body.receipt_handle);
        let part = v2::ForwardMessageToDeadLetterQueueRequest { receipt_handle: raw, ..body };
        let fwd = || forward::forwarded(&req, &fw.membership, part.clone());
        let answer =
            at_owner!(self, fw, owner, fwd, forward_message_to_dead_letter_queue, "ForwardMessageToDeadLetterQueue");
        Ok(answer.unwrap_or_else(|s| {
            Response::new(v2::ForwardMessageToDeadLetterQueueResponse { status: Some(node_failed(&owner, &s)) })
        }))
    }

    pub(super) async fn cluster_end_transaction(
        &self,
        fw: &Forwarder,
        req: Request<v2::EndTransactionRequest>,
    ) -> GrpcResult<v2::EndTransactionResponse> {
        let body = req.get_ref().clone();
        let (owner, raw) = forward::owner_of(fw.node_id(), &body.transaction_id);
        let part = v2::EndTransactionRequest { transaction_id: raw, ..body };
        let fwd = || forward::forwarded(&req, &fw.membership, part.clone());
        let answer = at_owner!(self, fw, owner, fwd, end_transaction, "EndTransaction");
        Ok(answer
            .unwrap_or_else(|s| Response::new(v2::EndTransactionResponse { status: Some(node_failed(&owner, &s)) })))
    }

    async fn cluster_recall(
        &self,
        fw: &Forwarder,
        req: Request<v2::RecallMessageRequest>,
    ) -> GrpcResult<v2::RecallMessageResponse> {
        let body = req.get_ref().clone();
        let (owner, raw) = forward::owner_of(fw.node_id(), &body.recall_handle);
        let part = v2::RecallMessageRequest { recall_handle: raw, ..body };
        let fwd = || forward::forwarded(&req, &fw.membership, part.clone());
        let answer = at_owner!(self, fw, owner, fwd, recall_message, "RecallMessage");
        Ok(answer.unwrap_or_else(|s| {
            Response::new(v2::RecallMessageResponse {
                status: Some(node_failed(&owner, &s)),
                message_id: String::new(),
            })
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_bad_ones_ignored() {
        assert_eq!(grpc_timeout(b"3S"), Some(std::time::Duration::from_secs(3)));
        assert_eq!(grpc_timeout(b"2H"), Some(std::time::Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(b"5M"), Some(std::time::Duration::from_secs(300)));
        assert_eq!(grpc_timeout(b"1500m"), Some(std::time::Duration::from_millis(1500)));
        assert_eq!(grpc_timeout(b"99999999u"), Some(std::time::Duration::from_micros(99_999_999)));
        assert_eq!(grpc_timeout(b"7n"), Some(std::time::Duration::from_nanos(7)));
        for bad in [&b""[..], b"S", b"123456789S", b"12x", b"-1S", b"1.5S", b"10"] {
            assert_eq!(grpc_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_client_id_is_kept_whole_up_to_the_limit_and_cut_past_it() {
        let of = |id: &str| {
            let mut req = Request::new(());
            req.metadata_mut().insert("x-mq-client-id", id.parse().unwrap());
            client_id(&req)
        };
        let official = "014EDA657FE6FF2AA386740f2800000001";
        assert_eq!(of(official), official);
        let at_limit = "a".repeat(MAX_CLIENT_ID_LEN);
        assert_eq!(of(&at_limit), at_limit);
        assert_eq!(of(&"b".repeat(MAX_CLIENT_ID_LEN + 10)), "b".repeat(MAX_CLIENT_ID_LEN));
        assert_eq!(client_id(&Request::new(())), "anonymous", "no id and no peer address");
    }
}
