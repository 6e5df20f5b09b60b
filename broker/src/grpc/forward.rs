//! The cluster's data path: any node serves any RocketMQ RPC by handing it to the node that
//! owns the queues it concerns (docs/cluster.md).
//!
//! A request a node passes on keeps its metadata (client id, signature) and carries
//! [`FORWARDED`]; the owner serves such a request as a standalone broker would, with its own
//! ids. Ids a client gets back name their owner: transaction ids, receipt handles and recall
//! handles are `<node id>~<owner's id>` ([`tag`]), so an EndTransaction, Ack,
//! ChangeInvisibleDuration or dead-letter forward reaches the owner from any node. Requests
//! for queues this node owns take the same path without the network hop.
//!
//! Placement decisions read the membership's caches (live nodes, topic placements): no etcd
//! request per message.

use crate::cluster::{Membership, Placement};
use crate::error::BrokerError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::Request;
use txmq_proto::cluster::cluster_client::ClusterClient;
use txmq_proto::cluster::cluster_server::Cluster;
use txmq_proto::cluster::{PushCheckRequest, PushCheckResponse, ReplicateRequest, ReplicateResponse};
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

/// Metadata key of a request one node passed to another: serve it here.
pub const FORWARDED: &str = crate::cluster::peer::FORWARDED_BY;

/// Metadata keys of the original client's address and certificate name, which a forwarding
/// node vouches for (signed) so that the owner applies source-address policies and
/// certificate identities as the first node would.
pub const CLIENT_ADDR: &str = "x-txmq-client-addr";
pub const CLIENT_CN: &str = "x-txmq-client-cn";

/// A request another node passed on (or this node's own cluster path passed to itself), as
/// the [`NodeGate`] accepted it: in the request's extensions. Only requests that carry it are
/// served as forwarded.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The node that passed the request on.
    pub by: String,
    /// The original client's address and certificate name.
    pub client_addr: Option<std::net::IpAddr>,
    pub client_cn: Option<String>,
}

/// Metadata key telling the owner its shard of the request's topic (`TYPE:queues`), so that it
/// can create its local topic without asking etcd.
pub const SHARD: &str = "x-txmq-shard";

/// Marks `req` with `node`'s shard of placement `p`, if it has one.
pub fn with_shard<T>(mut req: Request<T>, p: &Placement, node: &str) -> Request<T> {
    if let Some(s) = p.shard(node) {
        if let Ok(v) = format!("{}:{}", p.topic_type, s.queues).parse() {
            req.metadata_mut().insert(SHARD, v);
        }
    }
    req
}

/// The shard a forwarded request names: `(type name, queues)`.
pub fn shard_of<T>(req: &Request<T>) -> Option<(String, u32)> {
    if !is_forwarded(req) {
        return None;
    }
    let v = req.metadata().get(SHARD)?.to_str().ok()?;
    let (ty, n) = v.split_once(':')?;
    Some((ty.to_string(), n.parse().ok()?))
}

/// Separates the owner's node id from an id it made (node ids never contain it).
const SEP: char = '~';

/// `raw`, an id made by node `node`, as clients see it.
pub fn tag(node: &str, raw: &str) -> String {
    format!("{node}{SEP}{raw}")
}

/// The owner and the owner's own id of a client-held id; `None` when it names no node (an id
/// from before the node joined a cluster: its own).
pub fn untag(id: &str) -> Option<(&str, &str)> {
    id.split_once(SEP).filter(|(node, _)| crate::cluster::validate_node_id(node).is_ok())
}

/// The owner and the owner's own id of a client-held id, `me` (this node) when it names none.
pub fn owner_of(me: &str, id: &str) -> (String, String) {
    let (owner, raw) = untag(id).unwrap_or((me, id));
    (owner.to_string(), raw.to_string())
}

/// Whether a request came from another node (or from this node's own cluster path), as
/// the [`NodeGate`] accepted it.
pub fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.extensions().get::<Hop>().is_some()
}

/// The gate in front of every service of a clustered node: a request carrying the forwarding
/// mark is accepted as forwarded (a [`Hop`]) only with a valid node signature when the cluster
/// has a key; otherwise it is refused (UNAUTHENTICATED), never served as if a node sent it.
/// Requests without the mark pass as client requests; `peers_only` (the cluster service)
/// refuses those too.
#[derive(Clone)]
pub struct NodeGate {
    /// This node is a cluster member (a standalone broker refuses every forwarded request).
    pub clustered: bool,
    pub key: Option<Arc<crate::cluster::peer::NodeKey>>,
    pub max_skew: std::time::Duration,
    pub peers_only: bool,
}

impl tonic::service::Interceptor for NodeGate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
        let header = |name: &str| req.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let by = header(FORWARDED);
        if by.is_empty() {
            if self.peers_only {
                return Err(tonic::Status::unauthenticated("only nodes of this cluster may call this service"));
            }
            return Ok(req);
        }
        if !self.clustered {
            return Err(tonic::Status::unauthenticated("this broker is not a cluster node"));
        }
        let (addr, cn) = (header(CLIENT_ADDR), header(CLIENT_CN));
        if let Some(key) = &self.key {
            let signed = key
                .verify(&header(crate::cluster::peer::NODE_AUTH), &addr, &cn, crate::clock::now_ms(), self.max_skew)
                .and_then(|node| if node == by { Ok(node) } else { Err(format!("signed by {node}, not {by}")) });
            if let Err(why) = signed {
                tracing::warn!(forwarded_by = by, reason = why, "node authentication failed");
                return Err(tonic::Status::unauthenticated(format!("node authentication failed: {why}")));
            }
        }
        let hop = Hop { by, client_addr: addr.parse().ok(), client_cn: Some(cn).filter(|c| !c.is_empty()) };
        req.extensions_mut().insert(hop);
        Ok(req)
    }
}

/// The cluster side of the messaging service.
pub struct Forwarder {
    pub membership: Membership,
    /// Whose turn it is among the live owners, for sends and for receives apart: a client that
    /// alternates sends and receives through one node must still have its receives reach
    /// every shard.
    sends: AtomicU64,
    receives: AtomicU64,
}

impl Forwarder {
    pub fn new(membership: Membership) -> Self {
        Self { membership, sends: AtomicU64::new(0), receives: AtomicU64::new(0) }
    }

    pub fn node_id(&self) -> &str {
        self.membership.node_id()
    }

    fn unavailable(what: impl std::fmt::Display) -> BrokerError {
        // INTERNAL_SERVER_ERROR: every official client retries a send that gets it.
        BrokerError::Internal(format!("cluster: {what}"))
    }

    async fn channel(&self, node: &str) -> Result<Channel, BrokerError> {
        self.membership.channel(node).await.map_err(Self::unavailable)
    }

    /// A client of live node `node`'s messaging service.
    pub async fn client(&self, node: &str) -> Result<MessagingServiceClient<Channel>, BrokerError> {
        Ok(MessagingServiceClient::new(self.channel(node).await?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    /// Makes `call` with a client of live node `node`. When it fails at the transport
    /// (UNAVAILABLE), the member list is read anew from etcd, and if the node now has another
    /// address — it restarted elsewhere, so what failed was its old process — the call is made
    /// once more there. Any other failure, or a node that has not moved (down, or the network
    /// failed), is the answer; one at the transport also leaves the node out until it answers
    /// a probe ([`Membership::mark_unreachable`]).
    pub async fn call_at<T, F, Fut>(&self, node: &str, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(MessagingServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let tried = self.membership.address_of(node);
        let once = || async {
            match self.client(node).await {
                Ok(c) => call(c).await,
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            }
        };
        let answer = match once().await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                let moved = self.membership.members().await.is_ok()
                    && self.membership.address_of(node).is_some_and(|now| tried.as_deref() != Some(now.as_str()));
                if moved {
                    once().await
                } else {
                    Err(s)
                }
            }
            answer => answer,
        };
        if let Err(s) = &answer {
            self.note_failure(node, s);
        }
        answer
    }

    /// Leaves node `node` out until it answers a probe when a call to it failed at the
    /// transport ([`unreached`]), not with its own answer.
    fn note_failure(&self, node: &str, s: &tonic::Status) {
        if unreached(s) {
            self.membership.mark_unreachable(node);
        }
    }

    /// Has node `node` write a check-back to a producer of `topic` it holds a stream of;
    /// returns the client that took it, `None` when it has none now.
    pub async fn push_check(
        &self,
        node: &str,
        topic: &str,
        originator: &str,
        command: &v2::TelemetryCommand,
    ) -> Result<Option<String>, BrokerError> {
        use prost::Message;
        let mut c = ClusterClient::new(self.channel(node).await?);
        let body = PushCheckRequest {
            topic: topic.to_string(),
            originator: originator.to_string(),
            command: command.encode_to_vec(),
        };
        let mut req = forwarded(&Request::new(()), &self.membership, body);
        req.set_timeout(std::time::Duration::from_secs(3));
        let r = c.push_check(req).await.map_err(|s| {
            self.note_failure(node, &s);
            Self::unavailable(format!("node {node}: {}", s.message()))
        })?;
        let r = r.into_inner();
        Ok(r.delivered.then_some(r.client_id))
    }

    /// The topic's placement, created (spread over the live nodes) when it has none and
    /// `create` says how (type name, queue count).
    pub async fn placement(
        &self,
        topic: &str,
        create: Option<(&str, u32)>,
    ) -> Result<Option<Arc<Placement>>, BrokerError> {
        if let Some(p) = self.membership.placement(topic).await.map_err(Self::unavailable)? {
            return Ok(Some(p));
        }
        let Some((topic_type, queues)) = create else { return Ok(None) };
        // Fresh from etcd (topic creation is rare): live, not drained, least loaded first.
        let mut nodes = self.membership.placement_candidates().await.map_err(Self::unavailable)?;
        if nodes.is_empty() {
            nodes.push(self.node_id().to_string());
        }
        let proposed = Placement::spread(topic, topic_type, queues, &nodes);
        let (p, created) = self.membership.create_placement(proposed).await.map_err(Self::unavailable)?;
        if created {
            tracing::info!(topic, shards = ?p.shards, "topic placed over the cluster");
        }
        Ok(Some(p))
    }

    /// The nodes a send may go to, in order: for FIFO messages the owner of their message
    /// group's queue (its hash over all queues, so one group stays on one shard) alone; for
    /// others the live owners, starting from the next in turn (round robin), so a send an owner
    /// fails to take goes to the next.
    pub fn owners_for_send(&self, p: &Placement, message_group: Option<&str>) -> Result<Vec<String>, BrokerError> {
        if let Some(g) = message_group {
            let q = (crate::codec::fnv1a(g) % u64::from(p.total_queues().max(1))) as u32;
            let shard = p.shard_of(q).ok_or_else(|| Self::unavailable("empty placement"))?;
            if !self.membership.is_reachable(&shard.node) {
                return Err(Self::unavailable(format!("node {} (message group {g}) is not answering", shard.node)));
            }
            return Ok(vec![shard.node.clone()]);
        }
        self.live_owners_in_turn(p, &self.sends)
    }

    /// The live owners of `p` for a receive that names no live owner, starting from the next
    /// in turn, so that successive receives through this node reach every shard.
    pub fn owners_for_receive(&self, p: &Placement) -> Result<Vec<String>, BrokerError> {
        self.live_owners_in_turn(p, &self.receives)
    }

    /// The live owners of `p`, starting from the one whose turn `turn` says; takes one turn.
    /// Owners that failed a call since ([`Membership::mark_unreachable`]) are left out, unless
    /// every live owner did.
    fn live_owners_in_turn(&self, p: &Placement, turn: &AtomicU64) -> Result<Vec<String>, BrokerError> {
        let owners = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
            p.shards.iter().map(|s| s.node.clone()).filter(|n| keep(n)).collect()
        };
        let mut live = owners(&|n| self.membership.is_reachable(n));
        if live.is_empty() {
            live = owners(&|n| self.membership.is_live(n));
        }
        if live.is_empty() {
            return Err(Self::unavailable(format!("no live node owns queues of {}", p.topic)));
        }
        let start = turn.fetch_add(1, Ordering::Relaxed) as usize % live.len();
        Ok((0..live.len()).map(|i| live[(start + i) % live.len()].clone()).collect())
    }
}

impl ClusterService {
    fn replicas(&self) -> Result<Arc<crate::replication::follower::Replicas>, tonic::Status> {
        self.replicas.clone().ok_or_else(|| {
            tonic::Status::failed_precondition("this broker serves a shard from a copy and holds no copies")
        })
    }
}

/// The `txmq.cluster.v1` service: what other nodes ask of this one.
pub struct ClusterService {
    pub clients: Arc<super::clients::Clients>,
    /// This node's copies of other nodes' stores (`None` for a broker serving a shard from a
    /// copy after a failover: it holds no copies; the node hosting it does).
    pub replicas: Option<Arc<crate::replication::follower::Replicas>>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    type ReplicateStream = tokio_stream::wrappers::ReceiverStream<Result<ReplicateResponse, tonic::Status>>;
    type FetchCopyStream = tokio_stream::wrappers::ReceiverStream<Result<ReplicateRequest, tonic::Status>>;

    async fn copy_position(
        &self,
        req: Request<txmq_proto::cluster::CopyPositionRequest>,
    ) -> Result<tonic::Response<txmq_proto::cluster::CopyPositionResponse>, tonic::Status> {
        let at = self.replicas()?.position(&req.into_inner().shard).await?;
        Ok(tonic::Response::new(txmq_proto::cluster::CopyPositionResponse { epoch: at.epoch, seq: at.seq }))
    }

    async fn fetch_copy(
        &self,
        req: Request<txmq_proto::cluster::FetchCopyRequest>,
    ) -> Result<tonic::Response<Self::FetchCopyStream>, tonic::Status> {
        let replicas = self.replicas()?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(replicas.fetch(req.into_inner().shard, tx));
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn replicate(
        &self,
        req: Request<tonic::Streaming<ReplicateRequest>>,
    ) -> Result<tonic::Response<Self::ReplicateStream>, tonic::Status> {
        let replicas = self.replicas()?;
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| tonic::Status::invalid_argument("empty stream"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(replicas.follow(first, stream, tx));
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn push_check(
        &self,
        req: Request<PushCheckRequest>,
    ) -> Result<tonic::Response<PushCheckResponse>, tonic::Status> {
        use prost::Message;
        let req = req.into_inner();
        let command = v2::TelemetryCommand::decode(req.command.as_slice())
            .map_err(|e| tonic::Status::invalid_argument(format!("command: {e}")))?;
        if !matches!(command.command, Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(_))) {
            return Err(tonic::Status::invalid_argument("only check-back commands are pushed"));
        }
        for (client, stream) in self.clients.check_candidates(&req.topic, &req.originator, &[]) {
            if stream.tx.try_send(Ok(command.clone())).is_ok() {
                return Ok(tonic::Response::new(PushCheckResponse { delivered: true, client_id: client }));
            }
        }
        Ok(tonic::Response::new(PushCheckResponse { delivered: false, client_id: String::new() }))
    }
}

/// Whether a call to a peer failed at the transport (refused, reset, a ping unanswered, its
/// deadline passed), rather than with the peer's own answer: a status the peer sent carries no
/// underlying error.
pub fn unreached(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// `req` as node `m` passes it on, around `body`: its metadata, the forwarding mark, the
/// original client's address and certificate name, and (when the cluster has a key) this
/// node's signature over them. It also carries the [`Hop`] itself, for this node's own path.
pub fn forwarded<T, U>(req: &Request<T>, m: &Membership, body: U) -> Request<U> {
    let mut out = Request::new(body);
    for kv in req.metadata().iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
            let ours = [FORWARDED, CLIENT_ADDR, CLIENT_CN, crate::cluster::peer::NODE_AUTH, SHARD];
            if k.as_str() != "grpc-timeout" && !ours.contains(&k.as_str()) {
                out.metadata_mut().insert(k.clone(), v.clone());
            }
        }
    }
    let (addr, cn) = match req.extensions().get::<Hop>() {
        Some(h) => (h.client_addr, h.client_cn.clone()),
        None => {
            let conn = req.extensions().get::<super::caller::ConnInfo>();
            (conn.and_then(|c| c.remote).map(|a| a.ip()), conn.and_then(|c| c.client_cn.clone()))
        }
    };
    let by = m.node_id();
    let addr_text = addr.map(|a| a.to_string()).unwrap_or_default();
    let cn_text = cn.clone().unwrap_or_default();
    let mut mark = |key: &'static str, value: &str| {
        if let Ok(v) = value.parse() {
            out.metadata_mut().insert(key, v);
        }
    };
    mark(FORWARDED, by);
    if !addr_text.is_empty() {
        mark(CLIENT_ADDR, &addr_text);
    }
    if !cn_text.is_empty() {
        mark(CLIENT_CN, &cn_text);
    }
    if let Some(key) = &m.peer_settings().key {
        mark(crate::cluster::peer::NODE_AUTH, &key.sign(by, crate::clock::now_ms(), &addr_text, &cn_text));
    }
    out.extensions_mut().insert(Hop { by: by.to_string(), client_addr: addr, client_cn: cn });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_owner() {
        assert_eq!(tag("n3", "abc~def"), "n3~abc~def");
        assert_eq!(untag("n3~abc~def"), Some(("n3", "abc~def")));
        assert_eq!(untag("no-owner"), None);
        assert_eq!(untag("bad node~x"), None);
    }
}
