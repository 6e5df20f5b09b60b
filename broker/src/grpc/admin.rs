//! `txmq.admin.v1.Admin`: the operator API behind the `txmq` CLI.

use super::caller::Caller;
use super::clients::Clients;
use crate::audit::AuditEntry;
use crate::auth::acl::{Action, Actions, Decision, Pattern, Resource};
use crate::auth::UserKind;
use crate::broker::{now_ms, Broker};
use crate::cluster::Membership;
use crate::consume::admin::GroupStats;
use crate::consume::admin::MessageState;
use crate::error::BrokerError;
use crate::log::QueueOffsets;
use crate::model::{MessageType, StoredMessage, TopicRecord, TopicType};
use crate::txn::service::TxnFilter;
use crate::txn::state::{Actor, Event, Resolution, Txn, TxnState};
use pb::admin_server::Admin;
use std::sync::Arc;
use tonic::{Request, Response};
use txmq_proto::admin as pb;

type GrpcResult<T> = Result<Response<T>, tonic::Status>;

/// The admin API's gate when authentication is on: the caller must be a super user or hold an
/// Admin grant on `Cluster:*`. Refusals are gRPC errors (UNAUTHENTICATED, PERMISSION_DENIED):
/// the admin API is ours, and its clients read them.
#[derive(Clone)]
pub struct AdminGate {
    pub broker: Arc<Broker>,
}

impl tonic::service::Interceptor for AdminGate {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, tonic::Status> {
        if !self.broker.auth().enabled() {
            return Ok(req);
        }
        let client =
            req.metadata().get("x-mq-client-id").and_then(|v| v.to_str().ok()).unwrap_or("txmq-cli").to_string();
        let caller = Caller::of(&self.broker, &req, &client, "Admin");
        match caller.allow(&[(Resource::cluster(), Action::Admin)]) {
            Ok(()) => {
                // The handlers name this user in the audit log without verifying again.
                let user = caller.user().ok().flatten().map(|u| AdminUser(u.name.clone()));
                let mut req = req;
                if let Some(user) = user {
                    req.extensions_mut().insert(user);
                }
                Ok(req)
            }
            Err(BrokerError::Forbidden(why)) => Err(tonic::Status::permission_denied(why)),
            Err(e) => Err(tonic::Status::unauthenticated(e.to_string())),
        }
    }
}

/// The user an admin request authenticated as (set by [`AdminGate`] when authentication is
/// on).
#[derive(Debug, Clone)]
struct AdminUser(String);

/// The admin service over the shared broker.
pub struct AdminService {
    pub(crate) broker: Arc<Broker>,
    /// This node's cluster membership; `None` standalone.
    pub(crate) cluster: Option<Membership>,
    /// The clients connected to this node.
    pub(crate) clients: Arc<Clients>,
}

fn ok() -> Option<pb::Status> {
    Some(pb::Status { code: pb::StatusCode::Ok as i32, message: "OK".into() })
}

/// The admin status for a broker error (the admin API has its own small code set).
fn status(e: &BrokerError) -> Option<pb::Status> {
    use pb::StatusCode as C;
    let code = match e {
        BrokerError::TopicNotFound(_) | BrokerError::NotFound(_) => C::NotFound,
        BrokerError::TopicExists(_) => C::AlreadyExists,
        BrokerError::NotImplemented(_) => C::NotImplemented,
        BrokerError::InvalidTransactionId(_) => C::NotFound,
        BrokerError::PreconditionFailed(_) | BrokerError::QuotaExceeded(_) => C::FailedPrecondition,
        BrokerError::Store(_) | BrokerError::DiskLow(_) => C::Unavailable,
        BrokerError::Internal(_) => C::Internal,
        _ => C::InvalidArgument,
    };
    Some(pb::Status { code: code as i32, message: e.to_string() })
}

/// Lite topics `DescribeTopic` lists at most (by name); the count covers all of them.
const DESCRIBED_LITE_TOPICS: usize = 1000;

fn topic_type(t: pb::TopicType) -> Option<TopicType> {
    Some(match t {
        pb::TopicType::Unspecified => return None,
        pb::TopicType::Normal => TopicType::Normal,
        pb::TopicType::Fifo => TopicType::Fifo,
        pb::TopicType::Delay => TopicType::Delay,
        pb::TopicType::Transaction => TopicType::Transaction,
        pb::TopicType::Mixed => TopicType::Mixed,
        pb::TopicType::Priority => TopicType::Priority,
        pb::TopicType::Lite => TopicType::Lite,
    })
}

fn wire_topic(t: &TopicRecord) -> pb::Topic {
    pb::Topic {
        name: t.name.clone(),
        r#type: topic_type_wire(t.topic_type) as i32,
        queue_count: t.queue_count,
        created_at_ms: t.created_at,
        auto_created: t.auto_created,
    }
}

fn topic_type_wire(t: TopicType) -> pb::TopicType {
    match t {
        TopicType::Normal => pb::TopicType::Normal,
        TopicType::Fifo => pb::TopicType::Fifo,
        TopicType::Delay => pb::TopicType::Delay,
        TopicType::Transaction => pb::TopicType::Transaction,
        TopicType::Mixed => pb::TopicType::Mixed,
        TopicType::Priority => pb::TopicType::Priority,
        TopicType::Lite => pb::TopicType::Lite,
    }
}

/// Runs admin call `$method` with `$asked` at node `$node` of membership `$m`: this node's own
/// service, or the node's over the network; evaluates to the call's result.
macro_rules! admin_at {
    ($self:ident, $m:expr, $node:expr, $asked:expr, $method:ident) => {{
        let node: &str = $node;
        if node == $m.node_id() {
            Admin::$method($self, $asked).await
        } else {
            match $self.owner_admin($m, node).await {
                Ok(mut c) => c.$method($asked).await,
                Err(e) => Err(tonic::Status::unavailable(e)),
            }
        }
    }};
}

/// Runs admin call `$method` with `$req` (the caller's own request, credentials kept) at every
/// live node of membership `$m`; evaluates to `Ok([(node id, answer)])`, or `Err` naming the
/// first node that could not answer (a partial listing is never presented as whole).
macro_rules! everywhere {
    ($self:ident, $m:expr, $req:expr, $method:ident) => {{
        async {
            let members = $m.members().await.map_err(|e| e.to_string())?;
            let mut answers = Vec::with_capacity(members.len());
            for node in members {
                let asked = crate::grpc::forward::forwarded($req, $m, $req.get_ref().clone());
                let r = admin_at!($self, $m, &node.record.id, asked, $method)
                    .map_err(|s| format!("node {}: {}", node.record.id, s.message()))?
                    .into_inner();
                if let Some(s) = r.status.as_ref().filter(|s| s.code != pb::StatusCode::Ok as i32) {
                    return Err(format!("node {}: {}", node.record.id, s.message));
                }
                answers.push((node.record.id, r));
            }
            Ok::<_, String>(answers)
        }
        .await
    }};
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_user(&self, req: Request<pb::CreateUserRequest>) -> GrpcResult<pb::CreateUserResponse> {
        let r = req.into_inner();
        let outcome = async {
            let kind = UserKind::parse(&r.r#type)?;
            self.broker.auth().create_user(&r.name, &r.secret, kind, now_ms()).await
        }
        .await;
        tracing::info!(user = r.name, ok = outcome.is_ok(), "admin: create user");
        Ok(Response::new(pb::CreateUserResponse { status: outcome.map_or_else(|e| status(&e), |()| ok()) }))
    }

    async fn delete_user(&self, req: Request<pb::DeleteUserRequest>) -> GrpcResult<pb::DeleteUserResponse> {
        let r = req.into_inner();
        let outcome = self.broker.auth().delete_user(&r.name).await;
        tracing::info!(user = r.name, ok = outcome.is_ok(), "admin: delete user");
        Ok(Response::new(pb::DeleteUserResponse { status: outcome.map_or_else(|e| status(&e), |()| ok()) }))
    }

    async fn list_users(&self, _req: Request<pb::ListUsersRequest>) -> GrpcResult<pb::ListUsersResponse> {
        let users = self
            .broker
            .auth()
            .users()
            .iter()
            .map(|u| pb::User {
                name: u.name.clone(),
                r#type: u.kind.as_str().into(),
                created_at: u.created_at,
                policy: u
                    .policy
                    .iter()
                    .map(|e| pb::AclEntry {
                        resource: e.resource.to_string(),
                        actions: e.actions.to_string(),
                        allow: e.decision == Decision::Allow,
                        sources: e.sources.iter().map(|c| c.to_string()).collect(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListUsersResponse { status: ok(), users }))
    }

    async fn grant_acl(&self, req: Request<pb::GrantAclRequest>) -> GrpcResult<pb::GrantAclResponse> {
        let r = req.into_inner();
        let outcome = async {
            let e = r.entry.ok_or_else(|| BrokerError::BadRequest("no entry to grant".into()))?;
            let entry = crate::auth::entry(&e.resource, &e.actions, e.allow, &e.sources)?;
            self.broker.auth().grant(&r.user, entry).await
        }
        .await;
        tracing::info!(user = r.user, ok = outcome.is_ok(), "admin: grant");
        Ok(Response::new(pb::GrantAclResponse { status: outcome.map_or_else(|e| status(&e), |()| ok()) }))
    }

    async fn revoke_acl(&self, req: Request<pb::RevokeAclRequest>) -> GrpcResult<pb::RevokeAclResponse> {
        let r = req.into_inner();
        let outcome = async {
            let bad = |e: String| BrokerError::BadRequest(e);
            let resource = Pattern::parse(&r.resource).map_err(bad)?;
            let actions = Actions::parse(&r.actions).map_err(bad)?;
            self.broker.auth().revoke(&r.user, &resource, actions).await
        }
        .await;
        tracing::info!(user = r.user, ok = outcome.is_ok(), "admin: revoke");
        Ok(Response::new(pb::RevokeAclResponse { status: outcome.map_or_else(|e| status(&e), |()| ok()) }))
    }

    async fn create_topic(&self, req: Request<pb::CreateTopicRequest>) -> GrpcResult<pb::CreateTopicResponse> {
        let req = req.into_inner();
        let ty = pb::TopicType::try_from(req.r#type).ok().and_then(topic_type).unwrap_or(TopicType::Mixed);
        let res = match &self.cluster {
            Some(m) => self.create_placed_topic(m, &req.name, ty, req.queue_count).await,
            None => self.broker.create_topic(&req.name, ty, req.queue_count).await,
        };
        Ok(Response::new(match res {
            Ok(t) => pb::CreateTopicResponse { status: ok(), topic: Some(wire_topic(&t)) },
            Err(e) => pb::CreateTopicResponse { status: status(&e), topic: None },
        }))
    }

    async fn scale_topic(&self, req: Request<pb::ScaleTopicRequest>) -> GrpcResult<pb::ScaleTopicResponse> {
        let req = req.into_inner();
        let outcome = async {
            let Some(m) = &self.cluster else {
                return self.broker.grow_topic(&req.name, req.queue_count).await.map(|t| wire_topic(&t));
            };
            let p = m.scale_placement(&req.name, req.queue_count).await.map_err(|e| match e {
                crate::cluster::ClusterError::Config(why) => BrokerError::BadRequest(why),
                other => BrokerError::Internal(format!("cluster: {other}")),
            })?;
            // This node's shard grows now; the other owners' when a request reaches them.
            if let (Some(shard), Some(_)) = (p.shard(m.node_id()), self.broker.topic(&req.name)) {
                self.broker.grow_topic(&req.name, shard.queues).await?;
            }
            let ty = p.topic_type.parse::<TopicType>().map(|t| topic_type_wire(t) as i32).unwrap_or_default();
            Ok(pb::Topic { name: req.name.clone(), r#type: ty, queue_count: p.total_queues(), ..Default::default() })
        }
        .await;
        Ok(Response::new(match outcome {
            Ok(topic) => pb::ScaleTopicResponse { status: ok(), topic: Some(topic) },
            Err(e) => pb::ScaleTopicResponse { status: status(&e), topic: None },
        }))
    }

    async fn list_topics(&self, _req: Request<pb::ListTopicsRequest>) -> GrpcResult<pb::ListTopicsResponse> {
        let mut topics: Vec<pb::Topic> = self.broker.topics().iter().map(|t| wire_topic(t)).collect();
        // In a cluster: every placed topic, with its whole queue count (this node may hold
        // a shard of it, or none).
        if let Some(m) = &self.cluster {
            let placements = match m.placements().await {
                Ok(p) => p,
                Err(e) => {
                    return Ok(Response::new(pb::ListTopicsResponse { status: unavailable(e), topics: Vec::new() }))
                }
            };
            for p in placements {
                match topics.iter_mut().find(|t| t.name == p.topic) {
                    Some(t) => t.queue_count = p.total_queues(),
                    None => topics.push(pb::Topic {
                        name: p.topic.clone(),
                        r#type: p
                            .topic_type
                            .parse::<TopicType>()
                            .map(|t| topic_type_wire(t) as i32)
                            .unwrap_or_default(),
                        queue_count: p.total_queues(),
                        ..Default::default()
                    }),
                }
            }
            topics.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(Response::new(pb::ListTopicsResponse { status: ok(), topics }))
    }

    async fn cluster_status(&self, req: Request<pb::ClusterStatusRequest>) -> GrpcResult<pb::ClusterStatusResponse> {
        let Some(m) = &self.cluster else {
            return Ok(Response::new(pb::ClusterStatusResponse { status: ok(), ..Default::default() }));
        };
        let read = async {
            Ok::<_, crate::cluster::ClusterError>((m.members().await?, m.placements().await?, m.drained().await?))
        };
        let answer = match read.await {
            Ok((members, placements, drained)) => {
                let mut load: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
                for p in &placements {
                    for s in &p.shards {
                        *load.entry(s.node.as_str()).or_default() += s.queues;
                    }
                }
                let nodes = members
                    .iter()
                    .map(|n| pb::ClusterNode {
                        id: n.record.id.clone(),
                        address: n.record.address.clone(),
                        joined_at_ms: n.record.joined_at_ms,
                        epoch: n.epoch,
                        version: n.record.version.clone(),
                        owned_queues: load.get(n.record.id.as_str()).copied().unwrap_or(0),
                        drained: drained.contains(&n.record.id),
                    })
                    .collect();
                let placements = placements
                    .iter()
                    .map(|p| pb::TopicPlacement {
                        topic: p.topic.clone(),
                        r#type: p.topic_type.clone(),
                        shards: p.shards.iter().map(|s| pb::Shard { node: s.node.clone(), queues: s.queues }).collect(),
                    })
                    .collect();
                let shards = match self.shard_statuses(m, &req, &members).await {
                    Ok(s) => s,
                    Err(e) => {
                        let status =
                            Some(pb::Status { code: pb::StatusCode::Unavailable as i32, message: e.to_string() });
                        return Ok(Response::new(pb::ClusterStatusResponse {
                            status,
                            clustered: true,
                            ..Default::default()
                        }));
                    }
                };
                pb::ClusterStatusResponse {
                    status: ok(),
                    clustered: true,
                    node_id: m.node_id().to_string(),
                    lease_healthy: m.healthy(),
                    nodes,
                    placements,
                    shards,
                }
            }
            // etcd unreachable: say so, never an empty member list that looks true.
            Err(e) => pb::ClusterStatusResponse {
                status: Some(pb::Status { code: pb::StatusCode::Unavailable as i32, message: e.to_string() }),
                clustered: true,
                node_id: m.node_id().to_string(),
                lease_healthy: m.healthy(),
                ..Default::default()
            },
        };
        Ok(Response::new(answer))
    }

    async fn drain_node(&self, req: Request<pb::DrainNodeRequest>) -> GrpcResult<pb::DrainNodeResponse> {
        let req = req.into_inner();
        let Some(m) = &self.cluster else {
            let e = BrokerError::BadRequest("a standalone broker has no cluster to drain".into());
            return Ok(Response::new(pb::DrainNodeResponse { status: status(&e) }));
        };
        if let Err(e) = crate::cluster::validate_node_id(&req.node) {
            return Ok(Response::new(pb::DrainNodeResponse { status: status(&BrokerError::BadRequest(e)) }));
        }
        Ok(Response::new(match m.set_drained(&req.node, !req.undo).await {
            Ok(()) => {
                tracing::info!(node = req.node, drained = !req.undo, "node drain changed");
                pb::DrainNodeResponse { status: ok() }
            }
            Err(e) => pb::DrainNodeResponse {
                status: Some(pb::Status { code: pb::StatusCode::Unavailable as i32, message: e.to_string() }),
            },
        }))
    }

    async fn describe_topic(&self, req: Request<pb::DescribeTopicRequest>) -> GrpcResult<pb::DescribeTopicResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            return Ok(Response::new(self.describe_placed_topic(m, &req).await));
        }
        let name = req.into_inner().name;
        let Some(topic) = self.broker.topic(&name) else {
            return Ok(Response::new(pb::DescribeTopicResponse {
                status: status(&BrokerError::TopicNotFound(name)),
                ..Default::default()
            }));
        };
        let all = self.broker.queue_offsets(&topic);
        let message_count = all.iter().map(|q| q.durable.saturating_sub(q.min)).sum();
        let stats = |q: QueueOffsets, lite_topic: String| pb::QueueStats {
            queue_id: q.queue,
            min_offset: q.min,
            max_offset: q.durable,
            lite_topic,
            owner: String::new(),
        };
        let (queues, lite_topic_count) = if topic.topic_type == TopicType::Lite {
            let (lites, count) = self.broker.lite_topics(&topic.name, DESCRIBED_LITE_TOPICS);
            let queues = lites
                .into_iter()
                .filter_map(|(name, q)| Some(stats(self.broker.offsets(&topic.name, q)?, name.to_string())))
                .collect();
            (queues, count as u64)
        } else {
            (all.into_iter().map(|q| stats(q, String::new())).collect(), 0)
        };
        Ok(Response::new(pb::DescribeTopicResponse {
            status: ok(),
            topic: Some(wire_topic(&topic)),
            queues,
            message_count,
            lite_topic_count,
        }))
    }

    async fn list_transactions(
        &self,
        req: Request<pb::ListTransactionsRequest>,
    ) -> GrpcResult<pb::ListTransactionsResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            return Ok(Response::new(self.list_txns_everywhere(m, &req).await));
        }
        Ok(Response::new(self.list_txns(req.into_inner()).await))
    }

    async fn get_transaction(&self, req: Request<pb::GetTransactionRequest>) -> GrpcResult<pb::GetTransactionResponse> {
        if let Some((m, owner, raw)) = self.txn_owner(&req, &req.get_ref().id) {
            let asked = crate::grpc::forward::forwarded(&req, m, pb::GetTransactionRequest { id: raw });
            let mut r = match admin_at!(self, m, &owner, asked, get_transaction) {
                Ok(r) => r.into_inner(),
                Err(e) => pb::GetTransactionResponse { status: unavailable(e.message()), transaction: None },
            };
            tag_txn(&owner, r.transaction.as_mut());
            return Ok(Response::new(r));
        }
        Ok(Response::new(self.get_txn(req.into_inner()).await))
    }

    async fn resolve_transaction(
        &self,
        req: Request<pb::ResolveTransactionRequest>,
    ) -> GrpcResult<pb::ResolveTransactionResponse> {
        let r = if let Some((m, owner, raw)) = self.txn_owner(&req, &req.get_ref().id) {
            let body = pb::ResolveTransactionRequest { id: raw, ..req.get_ref().clone() };
            let asked = crate::grpc::forward::forwarded(&req, m, body);
            let mut r = match admin_at!(self, m, &owner, asked, resolve_transaction) {
                Ok(r) => r.into_inner(),
                Err(e) => pb::ResolveTransactionResponse { status: unavailable(e.message()), transaction: None },
            };
            tag_txn(&owner, r.transaction.as_mut());
            r
        } else {
            self.resolve_txn(req.get_ref().clone()).await
        };
        let action = if req.get_ref().commit { "commit" } else { "rollback" };
        self.audit(&req, action, &req.get_ref().id, r.status.as_ref()).await;
        Ok(Response::new(r))
    }

    async fn resume_transaction(
        &self,
        req: Request<pb::ResumeTransactionRequest>,
    ) -> GrpcResult<pb::ResumeTransactionResponse> {
        let r = if let Some((m, owner, raw)) = self.txn_owner(&req, &req.get_ref().id) {
            let body = pb::ResumeTransactionRequest { id: raw, ..req.get_ref().clone() };
            let asked = crate::grpc::forward::forwarded(&req, m, body);
            let mut r = match admin_at!(self, m, &owner, asked, resume_transaction) {
                Ok(r) => r.into_inner(),
                Err(e) => pb::ResumeTransactionResponse { status: unavailable(e.message()), transaction: None },
            };
            tag_txn(&owner, r.transaction.as_mut());
            r
        } else {
            self.resume_txn(req.get_ref().clone()).await
        };
        self.audit(&req, "resume", &req.get_ref().id, r.status.as_ref()).await;
        Ok(Response::new(r))
    }

    async fn broker_status(&self, req: Request<pb::BrokerStatusRequest>) -> GrpcResult<pb::BrokerStatusResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            return Ok(Response::new(self.status_everywhere(m, &req).await));
        }
        let s = self.broker.status();
        let txns = self.broker.transaction_counts().unwrap_or_default();
        let message_count =
            self.broker.topics().iter().flat_map(|t| self.broker.queue_offsets(t)).map(|q| q.durable - q.min).sum();
        Ok(Response::new(pb::BrokerStatusResponse {
            status: ok(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: s.started_at,
            store_writable: s.store_error.is_none(),
            store_error: s.store_error.unwrap_or_default(),
            topic_count: s.topic_count as u64,
            flush_count: s.commits.flushes,
            flushed_write_count: s.commits.jobs,
            store_bytes: s.store_bytes,
            message_count,
            group_count: self.broker.groups().len() as u64,
            pending_transactions: txns.pending,
            parked_transactions: txns.parked,
            nodes: Vec::new(),
            messages_in: self.broker.metrics().messages_in.total(),
            messages_out: self.broker.metrics().messages_out.total(),
            disk_free_bytes: self.broker.disk().free().unwrap_or(0),
            messages_refused: self.broker.disk().refusal().unwrap_or_default(),
            replication: self.broker.replication().map(|r| pb::ShardStatus {
                shard: r.shard.clone(),
                // Served from a copy (failover, drain): the node whose copy serves it.
                leader: self.broker.acting_on().map_or(r.shard, str::to_string),
                epoch: r.epoch,
                seq: r.seq,
                in_sync: r.followers.iter().filter(|(_, f)| f.in_sync).map(|(n, _)| n.clone()).collect(),
                replicas: r
                    .followers
                    .into_iter()
                    .map(|(node, f)| pb::ReplicaStatus {
                        node,
                        acked_seq: f.acked,
                        lag: r.seq.saturating_sub(f.acked),
                        in_sync: f.in_sync,
                        connected: f.stream == crate::replication::leader::Stream::Open,
                        snapshots: f.snapshots,
                        error: f.error,
                    })
                    .collect(),
                error: String::new(),
            }),
        }))
    }

    async fn create_group(&self, req: Request<pb::CreateGroupRequest>) -> GrpcResult<pb::CreateGroupResponse> {
        let name = req.into_inner().name;
        Ok(Response::new(match self.broker.ensure_group(&name).await {
            Ok(_) => pb::CreateGroupResponse { status: ok(), group: self.broker.group_stats(&name).map(wire_group) },
            Err(e) => pb::CreateGroupResponse { status: status(&e), group: None },
        }))
    }

    async fn list_groups(&self, req: Request<pb::ListGroupsRequest>) -> GrpcResult<pb::ListGroupsResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            return Ok(Response::new(match everywhere!(self, m, &req, list_groups) {
                Ok(answers) => {
                    let mut groups: Vec<pb::Group> = Vec::new();
                    for g in answers.into_iter().flat_map(|(_, r)| r.groups) {
                        match groups.iter_mut().find(|x| x.name == g.name) {
                            Some(into) => merge_group(into, g),
                            None => groups.push(g),
                        }
                    }
                    groups.sort_by(|a, b| a.name.cmp(&b.name));
                    pb::ListGroupsResponse { status: ok(), groups }
                }
                Err(e) => pb::ListGroupsResponse { status: unavailable(e), groups: Vec::new() },
            }));
        }
        let groups =
            self.broker.groups().iter().filter_map(|g| self.broker.group_stats(&g.name)).map(wire_group).collect();
        Ok(Response::new(pb::ListGroupsResponse { status: ok(), groups }))
    }

    async fn describe_group(&self, req: Request<pb::DescribeGroupRequest>) -> GrpcResult<pb::DescribeGroupResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            return Ok(Response::new(self.describe_group_everywhere(m, &req).await));
        }
        let name = req.into_inner().name;
        Ok(Response::new(match self.broker.group_stats(&name) {
            Some(g) => {
                let mut group = wire_group(g);
                group.lite_subscriptions = self
                    .broker
                    .lite_subscriptions(&name)
                    .into_iter()
                    .map(|(v, backlog)| pb::LiteSubscription {
                        client_id: v.client,
                        topic: v.topic,
                        lite_topics: v
                            .lite_topics
                            .into_iter()
                            .zip(backlog)
                            .map(|(lite_topic, backlog)| pb::LiteBacklog { lite_topic, backlog })
                            .collect(),
                    })
                    .collect();
                let in_flight = self
                    .broker
                    .inflight_messages(&name, 1000)
                    .into_iter()
                    .map(|v| pb::InFlightMessage {
                        message_id: self
                            .broker
                            .log()
                            .read(&v.topic, v.queue, v.offset)
                            .ok()
                            .flatten()
                            .map(|m| m.msg.message_id)
                            .unwrap_or_default(),
                        topic: v.topic,
                        queue: v.queue,
                        offset: v.offset,
                        attempt: v.attempt,
                        visible_at_ms: v.visible_at,
                        client_id: v.client,
                        delivered_at_ms: v.delivered_at,
                    })
                    .collect();
                pb::DescribeGroupResponse { status: ok(), group: Some(group), in_flight }
            }
            None => pb::DescribeGroupResponse {
                status: Some(pb::Status { code: pb::StatusCode::NotFound as i32, message: format!("no group {name}") }),
                group: None,
                in_flight: Vec::new(),
            },
        }))
    }

    async fn find_messages(&self, req: Request<pb::FindMessagesRequest>) -> GrpcResult<pb::FindMessagesResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            let limit = if req.get_ref().limit == 0 { 100 } else { req.get_ref().limit as usize };
            return Ok(Response::new(match everywhere!(self, m, &req, find_messages) {
                Ok(answers) => pb::FindMessagesResponse { status: ok(), messages: merge_messages(answers, limit) },
                Err(e) => pb::FindMessagesResponse { status: unavailable(e), messages: Vec::new() },
            }));
        }
        let req = req.into_inner();
        let limit = if req.limit == 0 { 100 } else { req.limit as usize };
        let found = self.broker.find_messages(&req.topic, &req.message_id, &req.key, limit);
        Ok(Response::new(match found {
            Ok(ms) => pb::FindMessagesResponse {
                status: ok(),
                messages: ms
                    .iter()
                    .map(|m| pb::StoredMessage {
                        recalled_at_ms: self.broker.recalled_at(m).unwrap_or(0),
                        group_states: self.broker.message_states(m).into_iter().map(wire_state).collect(),
                        transaction_id: match m.msg.message_type {
                            MessageType::Transaction => self
                                .broker
                                .transaction_of_message(&m.msg.topic, &m.msg.message_id)
                                .ok()
                                .flatten()
                                .unwrap_or_default(),
                            _ => String::new(),
                        },
                        ..wire_stored(m)
                    })
                    .collect(),
            },
            Err(e) => pb::FindMessagesResponse { status: status(&e), messages: Vec::new() },
        }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> GrpcResult<pb::ListDeadLettersResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            let limit = if req.get_ref().limit == 0 { 1000 } else { req.get_ref().limit as usize };
            return Ok(Response::new(match everywhere!(self, m, &req, list_dead_letters) {
                Ok(answers) => pb::ListDeadLettersResponse { status: ok(), messages: merge_messages(answers, limit) },
                Err(e) => pb::ListDeadLettersResponse { status: unavailable(e), messages: Vec::new() },
            }));
        }
        let req = req.into_inner();
        let limit = if req.limit == 0 { 1000 } else { req.limit as usize };
        Ok(Response::new(match self.broker.dead_letters(&req.group, limit) {
            Ok(letters) => pb::ListDeadLettersResponse {
                status: ok(),
                messages: letters
                    .iter()
                    .map(|l| pb::StoredMessage { resent_at_ms: l.resent_at.unwrap_or(0), ..wire_stored(&l.message) })
                    .collect(),
            },
            Err(e) => pb::ListDeadLettersResponse { status: status(&e), messages: Vec::new() },
        }))
    }

    async fn resend_dead_letters(
        &self,
        req: Request<pb::ResendDeadLettersRequest>,
    ) -> GrpcResult<pb::ResendDeadLettersResponse> {
        let r = self.resend_here_or_everywhere(&req).await;
        if !req.get_ref().dry_run {
            let what = if req.get_ref().all { "all".to_string() } else { req.get_ref().message_ids.join(", ") };
            let target = format!("group {}: {what}", req.get_ref().group);
            self.audit(&req, "resend-dead-letters", &target, r.status.as_ref()).await;
        }
        Ok(Response::new(r))
    }

    async fn list_clients(&self, req: Request<pb::ListClientsRequest>) -> GrpcResult<pb::ListClientsResponse> {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            return Ok(Response::new(match everywhere!(self, m, &req, list_clients) {
                Ok(answers) => pb::ListClientsResponse {
                    status: ok(),
                    clients: answers
                        .into_iter()
                        .flat_map(|(node, r)| {
                            r.clients.into_iter().map(move |mut c| {
                                c.node = node.clone();
                                c
                            })
                        })
                        .collect(),
                },
                Err(e) => pb::ListClientsResponse { status: unavailable(e), clients: Vec::new() },
            }));
        }
        let clients = self
            .clients
            .snapshot()
            .into_iter()
            .map(|c| pb::ConnectedClient {
                client_id: c.client_id,
                kind: c.kind,
                group: c.group,
                topics: c.topics,
                language: c.language,
                version: c.version,
                platform: c.platform,
                last_seen_ms: c.last_seen_ms,
                streams: c.streams as u32,
                node: String::new(),
                online: c.online,
            })
            .collect();
        Ok(Response::new(pb::ListClientsResponse { status: ok(), clients }))
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> GrpcResult<pb::ListAuditResponse> {
        let limit = if req.get_ref().limit == 0 { 200 } else { req.get_ref().limit as usize };
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(&req)) {
            return Ok(Response::new(match everywhere!(self, m, &req, list_audit) {
                Ok(answers) => {
                    let mut entries: Vec<pb::AuditEntry> = answers
                        .into_iter()
                        .flat_map(|(node, r)| {
                            r.entries.into_iter().map(move |mut e| {
                                e.node = node.clone();
                                e
                            })
                        })
                        .collect();
                    entries.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
                    entries.truncate(limit);
                    pb::ListAuditResponse { status: ok(), entries }
                }
                Err(e) => pb::ListAuditResponse { status: unavailable(e), entries: Vec::new() },
            }));
        }
        Ok(Response::new(match self.broker.audit().list(limit) {
            Ok(list) => pb::ListAuditResponse {
                status: ok(),
                entries: list
                    .into_iter()
                    .map(|e| pb::AuditEntry {
                        at_ms: e.at,
                        actor: e.actor,
                        action: e.action,
                        target: e.target,
                        reason: e.reason,
                        outcome: e.outcome,
                        node: String::new(),
                    })
                    .collect(),
            },
            Err(e) => pb::ListAuditResponse { status: status(&e), entries: Vec::new() },
        }))
    }
}

/// Adds node `g`'s view of a group to `into` (the same group on another node): counts summed.
fn merge_group(into: &mut pb::Group, g: pb::Group) {
    into.created_at_ms = into.created_at_ms.min(g.created_at_ms);
    into.dead_letters += g.dead_letters;
    into.pull_offsets.extend(g.pull_offsets);
    into.lite_subscriptions.extend(g.lite_subscriptions);
    for t in g.topics {
        match into.topics.iter_mut().find(|x| x.topic == t.topic) {
            Some(x) => {
                x.backlog += t.backlog;
                x.in_flight += t.in_flight;
                x.retrying += t.retrying;
                x.deferred += t.deferred;
                x.queues.extend(t.queues);
            }
            None => into.topics.push(t),
        }
    }
}

/// Wire form of a message's state for one group.
fn wire_state((group, state): (String, MessageState)) -> pb::MessageGroupState {
    let mut w = pb::MessageGroupState { group, ..Default::default() };
    w.state = match state {
        MessageState::Pending => "pending".into(),
        MessageState::Deferred { visible_at } => {
            w.visible_at_ms = visible_at;
            "deferred".into()
        }
        MessageState::InFlight { attempt, client, visible_at } => {
            w.attempt = attempt;
            w.client_id = client;
            w.visible_at_ms = visible_at;
            "in flight".into()
        }
        MessageState::Acked => "acked".into(),
        MessageState::DeadLettered => "dead-lettered".into(),
    };
    w
}

/// Every node's messages, each marked with its node, oldest stored first, at most `limit`.
fn merge_messages<R: HasMessages>(answers: Vec<(String, R)>, limit: usize) -> Vec<pb::StoredMessage> {
    let mut all: Vec<pb::StoredMessage> = answers
        .into_iter()
        .flat_map(|(node, r)| {
            r.messages().into_iter().map(move |mut m| {
                // A transaction is committed by its owner into its own log: the message's node.
                if !m.transaction_id.is_empty() {
                    m.transaction_id = crate::grpc::forward::tag(&node, &m.transaction_id);
                }
                m.node = node.clone();
                m
            })
        })
        .collect();
    all.sort_by_key(|m| m.stored_at_ms);
    all.truncate(limit);
    all
}

/// Answers that list stored messages.
trait HasMessages {
    fn messages(self) -> Vec<pb::StoredMessage>;
}

impl HasMessages for pb::FindMessagesResponse {
    fn messages(self) -> Vec<pb::StoredMessage> {
        self.messages
    }
}

impl HasMessages for pb::ListDeadLettersResponse {
    fn messages(self) -> Vec<pb::StoredMessage> {
        self.messages
    }
}

/// Wire form of a transaction; the timeline only when `with_timeline`.
fn wire_txn(t: &Txn, half: Option<&StoredMessage>, with_timeline: bool) -> pb::Transaction {
    let resolution = |r: Resolution| match r {
        Resolution::Commit => "COMMIT",
        Resolution::Rollback => "ROLLBACK",
        Resolution::Unknown => "UNKNOWN",
    };
    let timeline = if with_timeline {
        t.history
            .iter()
            .map(|e| match e {
                Event::Sent { at, client } => {
                    pb::TxnEvent { at_ms: *at, kind: "sent".into(), client: client.clone(), ..Default::default() }
                }
                Event::Checked { at, client, stream, answer } => pb::TxnEvent {
                    at_ms: *at,
                    kind: "check".into(),
                    client: client.clone(),
                    stream: *stream,
                    resolution: answer.map(|(r, _)| resolution(r).to_string()).unwrap_or_default(),
                    by: "check".into(),
                    latency_ms: answer.map(|(_, l)| l).unwrap_or(0),
                    answered: answer.is_some(),
                    ..Default::default()
                },
                Event::Answered { at, resolution: r, by } => pb::TxnEvent {
                    at_ms: *at,
                    kind: "answer".into(),
                    resolution: resolution(*r).into(),
                    by: by.as_str().into(),
                    ..Default::default()
                },
                Event::Decided { at, resolution: r, by, reason } => pb::TxnEvent {
                    at_ms: *at,
                    kind: "decision".into(),
                    resolution: resolution(*r).into(),
                    by: by.as_str().into(),
                    reason: reason.clone().unwrap_or_default(),
                    ..Default::default()
                },
                Event::Parked { at } => {
                    pb::TxnEvent { at_ms: *at, kind: "parked".into(), by: "policy".into(), ..Default::default() }
                }
                Event::Unreachable { since, attempts, last } => pb::TxnEvent {
                    at_ms: *since,
                    kind: "unreachable".into(),
                    attempts: *attempts,
                    last_ms: *last,
                    ..Default::default()
                },
                Event::Resumed { at, reason } => pb::TxnEvent {
                    at_ms: *at,
                    kind: "resumed".into(),
                    by: "operator".into(),
                    reason: reason.clone().unwrap_or_default(),
                    ..Default::default()
                },
            })
            .collect()
    } else {
        Vec::new()
    };
    let state = match t.state {
        TxnState::Pending => pb::TxnState::Pending,
        TxnState::Committed => pb::TxnState::Committed,
        TxnState::RolledBack => pb::TxnState::RolledBack,
        TxnState::Parked => pb::TxnState::Parked,
    };
    pb::Transaction {
        id: t.id.clone(),
        topic: t.topic.clone(),
        message_id: t.message_id.clone(),
        producer: t.producer.clone(),
        created_at_ms: t.created_at,
        state: state as i32,
        checks: t.checks,
        next_check_ms: t.next_check.unwrap_or(0),
        resolved_at_ms: t.resolved_at.unwrap_or(0),
        last_answer: t.last_answer().map(|r| resolution(r).to_string()).unwrap_or_default(),
        timeline,
        tag: half.and_then(|h| h.msg.tag.clone()).unwrap_or_default(),
        keys: half.map(|h| h.msg.keys.clone()).unwrap_or_default(),
        body_size: half.map(|h| h.msg.body.len() as u32).unwrap_or(0),
    }
}

/// An UNAVAILABLE admin status.
fn unavailable(why: impl std::fmt::Display) -> Option<pb::Status> {
    Some(pb::Status { code: pb::StatusCode::Unavailable as i32, message: why.to_string() })
}

/// A transaction as clients and operators see it in a cluster: its id names its owner.
fn tag_txn(owner: &str, t: Option<&mut pb::Transaction>) {
    if let Some(t) = t {
        t.id = crate::grpc::forward::tag(owner, &t.id);
    }
}

impl AdminService {
    /// In a cluster, for a request not passed on already: the owner named in transaction id
    /// `id` and the owner's own id (an id naming no node is this node's).
    fn txn_owner<T>(&self, req: &Request<T>, id: &str) -> Option<(&Membership, String, String)> {
        let m = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(req))?;
        let (owner, raw) = crate::grpc::forward::owner_of(m.node_id(), id);
        Some((m, owner, raw))
    }

    /// The admin API of another node `node`.
    async fn owner_admin(
        &self,
        m: &Membership,
        node: &str,
    ) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, String> {
        let channel = m.channel(node).await.map_err(|e| e.to_string())?;
        Ok(pb::admin_client::AdminClient::new(channel))
    }

    /// In a cluster: every live node's transactions (ids naming their owner), oldest first.
    async fn list_txns_everywhere(
        &self,
        m: &Membership,
        req: &Request<pb::ListTransactionsRequest>,
    ) -> pb::ListTransactionsResponse {
        let members = match m.members().await {
            Ok(members) => members,
            Err(e) => return pb::ListTransactionsResponse { status: unavailable(e), transactions: Vec::new() },
        };
        let mut all = Vec::new();
        for node in members {
            let asked = crate::grpc::forward::forwarded(req, m, req.get_ref().clone());
            let answer = admin_at!(self, m, &node.record.id, asked, list_transactions)
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string());
            match answer {
                Ok(r) if r.status.as_ref().is_some_and(|s| s.code == pb::StatusCode::Ok as i32) => {
                    all.extend(r.transactions.into_iter().map(|mut t| {
                        tag_txn(&node.record.id, Some(&mut t));
                        t
                    }));
                }
                Ok(r) => return r,
                Err(e) => {
                    return pb::ListTransactionsResponse {
                        status: unavailable(format!("node {}: {e}", node.record.id)),
                        transactions: Vec::new(),
                    }
                }
            }
        }
        all.sort_by_key(|t| t.created_at_ms);
        all.truncate(if req.get_ref().limit == 0 { 1000 } else { req.get_ref().limit as usize });
        pb::ListTransactionsResponse { status: ok(), transactions: all }
    }

    /// Every replicated shard: its replica set from etcd, with the figures of its leader when
    /// the leader is live (asked with the caller's credentials).
    async fn shard_statuses(
        &self,
        m: &Membership,
        req: &Request<pb::ClusterStatusRequest>,
        members: &[crate::cluster::Member],
    ) -> Result<Vec<pb::ShardStatus>, crate::cluster::ClusterError> {
        let mut out = Vec::new();
        for record in m.shard_records().await? {
            let leader = members.iter().find(|n| n.record.id == record.shard);
            let mut shard = pb::ShardStatus {
                shard: record.shard.clone(),
                leader: record.shard.clone(),
                epoch: leader.map_or(0, |n| n.epoch),
                in_sync: record.in_sync.clone(),
                replicas: record
                    .followers
                    .iter()
                    .map(|f| pb::ReplicaStatus {
                        node: f.clone(),
                        in_sync: record.in_sync.contains(f),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            if leader.is_none() {
                shard.error = format!("leader {} is not live", record.shard);
                out.push(shard);
                continue;
            }
            let asked = crate::grpc::forward::forwarded(req, m, pb::BrokerStatusRequest {});
            match admin_at!(self, m, &record.shard, asked, broker_status).map(|r| r.into_inner().replication) {
                Ok(Some(mut live)) => {
                    live.in_sync = record.in_sync.clone();
                    out.push(live);
                }
                Ok(None) => {
                    shard.error = format!("node {} does not replicate (started without --replicas?)", record.shard);
                    out.push(shard);
                }
                Err(s) => {
                    shard.error = format!("node {}: {}", record.shard, s.message());
                    out.push(shard);
                }
            }
        }
        Ok(out)
    }

    /// In a cluster: every live node's status, and the cluster's (counts summed, writable only
    /// if every store is, groups counted once by name, topics as placed).
    async fn status_everywhere(
        &self,
        m: &Membership,
        req: &Request<pb::BrokerStatusRequest>,
    ) -> pb::BrokerStatusResponse {
        let failed = |e: String| pb::BrokerStatusResponse { status: unavailable(e), ..Default::default() };
        let answers = match everywhere!(self, m, req, broker_status) {
            Ok(a) => a,
            Err(e) => return failed(e),
        };
        let groups_asked = crate::grpc::forward::forwarded(req, m, pb::ListGroupsRequest {});
        let groups = match Admin::list_groups(self, groups_asked).await.map(|r| r.into_inner()) {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.code == pb::StatusCode::Ok as i32) => r.groups.len(),
            Ok(r) => return failed(r.status.map(|s| s.message).unwrap_or_default()),
            Err(s) => return failed(s.message().to_string()),
        };
        let topics = match m.placements().await {
            Ok(p) => p.len(),
            Err(e) => return failed(e.to_string()),
        };
        let mut total = pb::BrokerStatusResponse {
            status: ok(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: self.broker.status().started_at,
            store_writable: true,
            topic_count: topics as u64,
            group_count: groups as u64,
            ..Default::default()
        };
        for (node, s) in answers {
            total.store_writable &= s.store_writable;
            if !s.store_error.is_empty() && total.store_error.is_empty() {
                total.store_error = format!("node {node}: {}", s.store_error);
            }
            if !s.messages_refused.is_empty() && total.messages_refused.is_empty() {
                total.messages_refused = format!("node {node}: {}", s.messages_refused);
            }
            if s.disk_free_bytes != 0 && (total.disk_free_bytes == 0 || s.disk_free_bytes < total.disk_free_bytes) {
                total.disk_free_bytes = s.disk_free_bytes;
            }
            total.flush_count += s.flush_count;
            total.flushed_write_count += s.flushed_write_count;
            total.store_bytes += s.store_bytes;
            total.message_count += s.message_count;
            total.messages_in += s.messages_in;
            total.messages_out += s.messages_out;
            total.pending_transactions += s.pending_transactions;
            total.parked_transactions += s.parked_transactions;
            total.nodes.push(pb::NodeStatus {
                node_id: node,
                started_at_ms: s.started_at_ms,
                store_writable: s.store_writable,
                store_error: s.store_error,
                store_bytes: s.store_bytes,
                message_count: s.message_count,
                pending_transactions: s.pending_transactions,
                parked_transactions: s.parked_transactions,
                version: s.version,
                disk_free_bytes: s.disk_free_bytes,
                messages_refused: s.messages_refused,
            });
        }
        total
    }

    /// In a cluster: the group as every live node sees it (each holds the group's state on its
    /// own shards), summed per topic; asked with the caller's own credentials.
    async fn describe_group_everywhere(
        &self,
        m: &Membership,
        req: &Request<pb::DescribeGroupRequest>,
    ) -> pb::DescribeGroupResponse {
        let members = match m.members().await {
            Ok(members) => members,
            Err(e) => {
                return pb::DescribeGroupResponse {
                    status: Some(pb::Status { code: pb::StatusCode::Unavailable as i32, message: e.to_string() }),
                    group: None,
                    in_flight: Vec::new(),
                }
            }
        };
        let mut merged: Option<pb::Group> = None;
        let mut in_flight = Vec::new();
        for node in members {
            let asked = crate::grpc::forward::forwarded(req, m, req.get_ref().clone());
            let answer = admin_at!(self, m, &node.record.id, asked, describe_group);
            let g = match answer.map(|r| r.into_inner()) {
                Ok(pb::DescribeGroupResponse { group: Some(g), in_flight: held, .. }) => {
                    in_flight.extend(held);
                    g
                }
                Ok(_) => continue, // the group has no state there
                Err(e) => {
                    return pb::DescribeGroupResponse {
                        status: Some(pb::Status {
                            code: pb::StatusCode::Unavailable as i32,
                            message: format!("node {}: {}", node.record.id, e.message()),
                        }),
                        group: None,
                        in_flight: Vec::new(),
                    }
                }
            };
            let Some(into) = merged.as_mut() else {
                merged = Some(g);
                continue;
            };
            merge_group(into, g);
        }
        match merged {
            Some(mut g) => {
                g.topics.sort_by(|a, b| a.topic.cmp(&b.topic));
                in_flight.sort_by_key(|m: &pb::InFlightMessage| m.delivered_at_ms);
                in_flight.truncate(1000);
                pb::DescribeGroupResponse { status: ok(), group: Some(g), in_flight }
            }
            None => pb::DescribeGroupResponse {
                status: Some(pb::Status {
                    code: pb::StatusCode::NotFound as i32,
                    message: format!("no group {}", req.get_ref().name),
                }),
                group: None,
                in_flight: Vec::new(),
            },
        }
    }

    /// In a cluster: the topic over all its owners — each owner's queues (marked with the
    /// owner), the message count summed. Asks each owner with the caller's own credentials.
    async fn describe_placed_topic(
        &self,
        m: &Membership,
        req: &Request<pb::DescribeTopicRequest>,
    ) -> pb::DescribeTopicResponse {
        let name = req.get_ref().name.clone();
        let unavailable = |e: String| pb::DescribeTopicResponse {
            status: Some(pb::Status { code: pb::StatusCode::Unavailable as i32, message: e }),
            ..Default::default()
        };
        let p = match m.placement(&name).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return pb::DescribeTopicResponse {
                    status: status(&BrokerError::TopicNotFound(name)),
                    ..Default::default()
                }
            }
            Err(e) => return unavailable(e.to_string()),
        };
        let mut out = pb::DescribeTopicResponse { status: ok(), ..Default::default() };
        for shard in &p.shards {
            let asked = crate::grpc::forward::forwarded(req, m, req.get_ref().clone());
            let answer = admin_at!(self, m, &shard.node, asked, describe_topic);
            let r = match answer {
                Ok(r) => r.into_inner(),
                Err(e) => return unavailable(format!("node {}: {}", shard.node, e.message())),
            };
            if r.status.as_ref().is_some_and(|s| s.code != pb::StatusCode::Ok as i32) && r.topic.is_none() {
                // An owner that has not stored anything of the topic yet has no local topic.
                out.queues.extend((0..shard.queues).map(|q| pb::QueueStats {
                    queue_id: q,
                    owner: shard.node.clone(),
                    ..Default::default()
                }));
                continue;
            }
            out.message_count += r.message_count;
            out.lite_topic_count += r.lite_topic_count;
            out.queues.extend(r.queues.into_iter().map(|q| pb::QueueStats { owner: shard.node.clone(), ..q }));
            if out.topic.is_none() {
                out.topic = r.topic;
            }
        }
        let ty = p.topic_type.parse::<TopicType>().map(|t| topic_type_wire(t) as i32).unwrap_or_default();
        let topic = out.topic.get_or_insert_with(|| pb::Topic { name: name.clone(), ..Default::default() });
        topic.r#type = ty;
        topic.queue_count = p.total_queues();
        out
    }

    /// In a cluster: places the topic's queues over the live nodes (in etcd; refused if the
    /// topic is placed already), then creates this node's shard. The topic as answered has the
    /// whole topic's queue count.
    async fn create_placed_topic(
        &self,
        m: &Membership,
        name: &str,
        ty: TopicType,
        queue_count: u32,
    ) -> Result<Arc<TopicRecord>, BrokerError> {
        let count = if queue_count == 0 { self.broker.config().default_queue_count } else { queue_count };
        let record = crate::topics::new_record(name, ty, count, now_ms(), false)?;
        if crate::topics::is_reserved(name) {
            return Err(BrokerError::IllegalTopic(format!("{name} is a reserved system topic name")));
        }
        let nodes = m.placement_candidates().await.map_err(|e| BrokerError::Internal(format!("cluster: {e}")))?;
        let proposed = crate::cluster::Placement::spread(name, ty.as_str(), count, &nodes);
        let (placed, created) =
            m.create_placement(proposed).await.map_err(|e| BrokerError::Internal(format!("cluster: {e}")))?;
        if !created {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        if let Some(shard) = placed.shard(m.node_id()) {
            self.broker.create_topic(name, ty, shard.queues).await?;
        }
        Ok(Arc::new(record))
    }

    /// Who asks for an operator action: with authentication on, the authenticated user (and
    /// the actor the tool named, when it differs); off, the named actor or `anonymous`.
    fn actor_of<T>(&self, req: &Request<T>, named: &str) -> String {
        let user = req.extensions().get::<AdminUser>().map(|u| u.0.clone());
        match (user, named.trim()) {
            (Some(u), n) if n.is_empty() || n == u => u,
            (Some(u), n) => format!("{u} ({n})"),
            (None, "") => "anonymous".into(),
            (None, n) => n.to_string(),
        }
    }

    /// Records an operator action in the audit log of the node that received it (a request
    /// passed on from another node was recorded there). A failure to record is logged; the
    /// action's own answer stands.
    async fn audit<T: Audited>(&self, req: &Request<T>, action: &str, target: &str, outcome: Option<&pb::Status>) {
        if crate::grpc::forward::is_forwarded(req) {
            return;
        }
        let outcome = match outcome {
            Some(s) if s.code != pb::StatusCode::Ok as i32 => s.message.clone(),
            _ => "ok".into(),
        };
        let entry = AuditEntry {
            at: now_ms(),
            actor: self.actor_of(req, req.get_ref().actor()),
            action: action.into(),
            target: target.into(),
            reason: req.get_ref().reason().into(),
            outcome,
        };
        if let Err(e) = self.broker.audit().record(&entry).await {
            tracing::error!(error = %e, action, target, "operator action not recorded in the audit log");
        }
    }

    /// Resends dead letters here, or (cluster) on every node, summing the counts; with
    /// `dry_run`, counts only.
    async fn resend_here_or_everywhere(
        &self,
        req: &Request<pb::ResendDeadLettersRequest>,
    ) -> pb::ResendDeadLettersResponse {
        if let Some(m) = self.cluster.as_ref().filter(|_| !crate::grpc::forward::is_forwarded(req)) {
            // Each node resends the dead letters it stores; the count is the sum.
            return match everywhere!(self, m, req, resend_dead_letters) {
                Ok(answers) => {
                    pb::ResendDeadLettersResponse { status: ok(), resent: answers.iter().map(|(_, r)| r.resent).sum() }
                }
                Err(e) => pb::ResendDeadLettersResponse { status: unavailable(e), resent: 0 },
            };
        }
        let req = req.get_ref();
        if !req.all && req.message_ids.is_empty() {
            let e = BrokerError::BadRequest("name message ids or ask for all".into());
            return pb::ResendDeadLettersResponse { status: status(&e), resent: 0 };
        }
        let done = if req.dry_run {
            self.broker.count_resendable(&req.group, &req.message_ids, req.all)
        } else {
            self.broker.resend_dead_letters(&req.group, &req.message_ids, req.all).await
        };
        match done {
            Ok(n) => pb::ResendDeadLettersResponse { status: ok(), resent: n as u32 },
            Err(e) => pb::ResendDeadLettersResponse { status: status(&e), resent: 0 },
        }
    }

    /// A transaction with its half-message summary and timeline.
    fn full_txn(&self, t: &Txn) -> pb::Transaction {
        let half = self.broker.half_message(&t.id).ok().flatten();
        wire_txn(t, half.as_ref(), true)
    }
}

/// Requests of operator actions: who they name and why.
trait Audited {
    fn actor(&self) -> &str;
    fn reason(&self) -> &str;
}

impl Audited for pb::ResolveTransactionRequest {
    fn actor(&self) -> &str {
        &self.actor
    }
    fn reason(&self) -> &str {
        &self.reason
    }
}

impl Audited for pb::ResumeTransactionRequest {
    fn actor(&self) -> &str {
        &self.actor
    }
    fn reason(&self) -> &str {
        &self.reason
    }
}

impl Audited for pb::ResendDeadLettersRequest {
    fn actor(&self) -> &str {
        &self.actor
    }
    fn reason(&self) -> &str {
        &self.reason
    }
}

fn txn_state(s: i32) -> Option<TxnState> {
    match pb::TxnState::try_from(s).ok()? {
        pb::TxnState::Unspecified => None,
        pb::TxnState::Pending => Some(TxnState::Pending),
        pb::TxnState::Committed => Some(TxnState::Committed),
        pb::TxnState::RolledBack => Some(TxnState::RolledBack),
        pb::TxnState::Parked => Some(TxnState::Parked),
    }
}

fn not_found(id: &str) -> Option<pb::Status> {
    Some(pb::Status { code: pb::StatusCode::NotFound as i32, message: format!("no transaction {id}") })
}

fn reason(r: String) -> Option<String> {
    (!r.trim().is_empty()).then_some(r)
}

/// The transaction RPCs, called from the `Admin` impl.
impl AdminService {
    pub(crate) async fn list_txns(&self, req: pb::ListTransactionsRequest) -> pb::ListTransactionsResponse {
        let filter = TxnFilter {
            state: txn_state(req.state),
            topic: (!req.topic.is_empty()).then_some(req.topic),
            older_than_ms: (req.older_than_ms > 0).then_some(req.older_than_ms),
            limit: if req.limit == 0 { 1000 } else { req.limit as usize },
        };
        match self.broker.list_transactions(&filter) {
            Ok(list) => pb::ListTransactionsResponse {
                status: ok(),
                transactions: list.iter().map(|t| wire_txn(t, None, false)).collect(),
            },
            Err(e) => pb::ListTransactionsResponse { status: status(&e), transactions: Vec::new() },
        }
    }

    pub(crate) async fn get_txn(&self, req: pb::GetTransactionRequest) -> pb::GetTransactionResponse {
        match self.broker.transaction(&req.id) {
            Ok(Some(t)) => pb::GetTransactionResponse { status: ok(), transaction: Some(self.full_txn(&t)) },
            Ok(None) => pb::GetTransactionResponse { status: not_found(&req.id), transaction: None },
            Err(e) => pb::GetTransactionResponse { status: status(&e), transaction: None },
        }
    }

    pub(crate) async fn resolve_txn(&self, req: pb::ResolveTransactionRequest) -> pb::ResolveTransactionResponse {
        let resolution = if req.commit { Resolution::Commit } else { Resolution::Rollback };
        let Ok(Some(t)) = self.broker.transaction(&req.id) else {
            return pb::ResolveTransactionResponse { status: not_found(&req.id), transaction: None };
        };
        match self.broker.end_transaction(&t.topic, "", &req.id, resolution, Actor::Operator, reason(req.reason)).await
        {
            Ok(t) => pb::ResolveTransactionResponse { status: ok(), transaction: Some(self.full_txn(&t)) },
            Err(e) => pb::ResolveTransactionResponse { status: status(&e), transaction: None },
        }
    }

    pub(crate) async fn resume_txn(&self, req: pb::ResumeTransactionRequest) -> pb::ResumeTransactionResponse {
        match self.broker.resume_transaction(&req.id, reason(req.reason)).await {
            Ok(t) => pb::ResumeTransactionResponse { status: ok(), transaction: Some(self.full_txn(&t)) },
            Err(e) => pb::ResumeTransactionResponse { status: status(&e), transaction: None },
        }
    }
}

fn wire_group(g: GroupStats) -> pb::Group {
    pb::Group {
        name: g.name,
        created_at_ms: g.created_at,
        dead_letters: g.dead_letters,
        pull_offsets: g
            .pull_offsets
            .into_iter()
            .map(|(topic, queue, offset, end)| pb::PullOffset { topic, queue, offset, end })
            .collect(),
        topics: g
            .topics
            .into_iter()
            .map(|t| pb::GroupTopicStats {
                topic: t.topic,
                backlog: t.backlog,
                in_flight: t.in_flight,
                retrying: t.retrying,
                deferred: t.deferred,
                queues: t
                    .queues
                    .into_iter()
                    .map(|q| pb::GroupQueueStats {
                        queue: q.queue,
                        backlog: q.backlog,
                        oldest_stored_at_ms: q.oldest_stored_at.unwrap_or(0),
                        in_flight: q.in_flight,
                    })
                    .collect(),
            })
            .collect(),
        lite_subscriptions: Vec::new(),
    }
}

/// Wire form of a stored message, with a short text preview of the body.
fn wire_stored(m: &StoredMessage) -> pb::StoredMessage {
    let preview = match std::str::from_utf8(&m.msg.body) {
        Ok(s) if s.len() <= 256 => s.to_string(),
        _ => String::new(),
    };
    pb::StoredMessage {
        topic: m.msg.topic.clone(),
        queue: m.queue,
        offset: m.offset,
        message_id: m.msg.message_id.clone(),
        message_type: format!("{:?}", m.msg.message_type).to_uppercase(),
        tag: m.msg.tag.clone().unwrap_or_default(),
        keys: m.msg.keys.clone(),
        message_group: m.msg.message_group.clone().unwrap_or_default(),
        born_at_ms: m.msg.born_timestamp,
        born_host: m.msg.born_host.clone(),
        stored_at_ms: m.store_timestamp,
        deliver_at_ms: m.msg.delivery_timestamp.unwrap_or(0),
        properties: m.msg.user_properties.clone().into_iter().collect(),
        body_size: m.msg.body.len() as u32,
        body_preview: preview,
        producer: m.producer.clone(),
        origin_topic: m.msg.origin_topic.clone().unwrap_or_default(),
        resent_at_ms: 0,
        recalled_at_ms: 0,
        body_gzip: m.msg.body_gzip,
        priority: m.msg.priority.map_or(-1, |p| p as i32),
        node: String::new(),
        group_states: Vec::new(),
        transaction_id: String::new(),
    }
}
