//! Admin commands over `txmq.admin.v1.Admin`.

use crate::output::{table, Output};
use anyhow::{bail, Context};
use clap::Subcommand;
use pb::admin_client::AdminClient;
use serde::Serialize;
use txmq_proto::admin as pb;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// NORMAL, FIFO, DELAY, TRANSACTION, MIXED, PRIORITY or LITE.
        #[arg(long = "type", default_value = "MIXED")]
        topic_type: String,
        /// Number of queues (0 = the broker's default).
        #[arg(long, default_value_t = 0)]
        queues: u32,
    },
    /// List topics.
    List,
    /// Show a topic's queues and offsets.
    Describe { name: String },
    /// Give a topic more queues (never fewer); in a cluster the new ones go to the least-loaded
    /// live nodes. Clients that refresh their routes (every 30 s) start using them.
    Scale {
        name: String,
        /// The topic's queue count afterwards.
        #[arg(long)]
        queues: u32,
    },
}

/// The admin API over one signed (and, if asked, TLS) connection.
pub type Admin = AdminClient<crate::connection::Signed>;

pub async fn connect(broker: &str) -> anyhow::Result<Admin> {
    Ok(AdminClient::new(crate::connection::connect(broker).await?))
}

/// Who runs an operator action, as the audit log records it: the local user and the tool
/// (`alice via cli`). With authentication on, the broker puts the authenticated user first.
pub fn operator(tool: &str) -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into());
    format!("{user} via {tool}")
}

/// Turns a non-OK admin status into an error.
pub fn check(status: Option<pb::Status>) -> anyhow::Result<()> {
    match status {
        Some(s) if s.code == pb::StatusCode::Ok as i32 => Ok(()),
        Some(s) => {
            let code = pb::StatusCode::try_from(s.code).map(|c| c.as_str_name()).unwrap_or("UNKNOWN");
            bail!("{code}: {}", s.message)
        }
        None => bail!("the broker answered without a status"),
    }
}

#[derive(Serialize)]
struct TopicView {
    name: String,
    #[serde(rename = "type")]
    topic_type: String,
    queues: u32,
    auto_created: bool,
    created_at_ms: i64,
}

fn view(t: &pb::Topic) -> TopicView {
    let ty = pb::TopicType::try_from(t.r#type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
    TopicView {
        name: t.name.clone(),
        topic_type: ty.to_string(),
        queues: t.queue_count,
        auto_created: t.auto_created,
        created_at_ms: t.created_at_ms,
    }
}

fn parse_type(s: &str) -> anyhow::Result<pb::TopicType> {
    pb::TopicType::from_str_name(&s.to_ascii_uppercase())
        .filter(|t| *t != pb::TopicType::Unspecified)
        .with_context(|| format!("unknown topic type {s:?} (NORMAL, FIFO, DELAY, TRANSACTION, MIXED, PRIORITY, LITE)"))
}

pub async fn topic(broker: &str, cmd: TopicCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        TopicCommand::Create { name, topic_type, queues } => {
            let r#type = parse_type(&topic_type)? as i32;
            let r = c.create_topic(pb::CreateTopicRequest { name, r#type, queue_count: queues }).await?.into_inner();
            check(r.status)?;
            let t = view(&r.topic.context("no topic in the answer")?);
            out.emit(&t, || format!("created topic {} ({}, {} queues)\n", t.name, t.topic_type, t.queues))
        }
        TopicCommand::Scale { name, queues } => {
            let r = c.scale_topic(pb::ScaleTopicRequest { name, queue_count: queues }).await?.into_inner();
            check(r.status)?;
            let t = view(&r.topic.context("no topic in the answer")?);
            out.emit(&t, || format!("topic {} has {} queues\n", t.name, t.queues))
        }
        TopicCommand::List => {
            let r = c.list_topics(pb::ListTopicsRequest {}).await?.into_inner();
            check(r.status)?;
            let topics: Vec<TopicView> = r.topics.iter().map(view).collect();
            out.emit(&topics, || {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| {
                        vec![t.name.clone(), t.topic_type.clone(), t.queues.to_string(), t.auto_created.to_string()]
                    })
                    .collect();
                table(&["NAME", "TYPE", "QUEUES", "AUTO-CREATED"], &rows)
            })
        }
        TopicCommand::Describe { name } => {
            let r = c.describe_topic(pb::DescribeTopicRequest { name }).await?.into_inner();
            check(r.status)?;
            #[derive(Serialize)]
            struct Queue {
                queue: u32,
                min_offset: u64,
                max_offset: u64,
                #[serde(skip_serializing_if = "String::is_empty")]
                lite_topic: String,
                /// In a cluster: the node owning the queue.
                #[serde(skip_serializing_if = "String::is_empty")]
                owner: String,
            }
            #[derive(Serialize)]
            struct Described {
                topic: TopicView,
                message_count: u64,
                lite_topic_count: u64,
                queues: Vec<Queue>,
            }
            let d = Described {
                topic: view(&r.topic.context("no topic in the answer")?),
                message_count: r.message_count,
                lite_topic_count: r.lite_topic_count,
                queues: r
                    .queues
                    .into_iter()
                    .map(|q| Queue {
                        queue: q.queue_id,
                        min_offset: q.min_offset,
                        max_offset: q.max_offset,
                        lite_topic: q.lite_topic,
                        owner: q.owner,
                    })
                    .collect(),
            };
            out.emit(&d, || {
                let mut s = format!(
                    "topic {} ({}, {} queues), {} messages stored\n",
                    d.topic.name, d.topic.topic_type, d.topic.queues, d.message_count
                );
                let row = |q: &Queue| vec![q.queue.to_string(), q.min_offset.to_string(), q.max_offset.to_string()];
                if d.topic.topic_type == "LITE" {
                    let shown = if d.lite_topic_count > d.queues.len() as u64 { " (first by name)" } else { "" };
                    s.push_str(&format!("{} lite topics{shown}\n", d.lite_topic_count));
                    let rows: Vec<Vec<String>> =
                        d.queues.iter().map(|q| [vec![q.lite_topic.clone()], row(q)].concat()).collect();
                    s.push_str(&table(&["LITE-TOPIC", "QUEUE", "MIN-OFFSET", "MAX-OFFSET"], &rows));
                } else if d.queues.iter().any(|q| !q.owner.is_empty()) {
                    let rows: Vec<Vec<String>> =
                        d.queues.iter().map(|q| [vec![q.owner.clone()], row(q)].concat()).collect();
                    s.push_str(&table(&["OWNER", "QUEUE", "MIN-OFFSET", "MAX-OFFSET"], &rows));
                } else {
                    let rows: Vec<Vec<String>> = d.queues.iter().map(row).collect();
                    s.push_str(&table(&["QUEUE", "MIN-OFFSET", "MAX-OFFSET"], &rows));
                }
                s
            })
        }
    }
}

#[derive(Serialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_s: i64,
    pub store_writable: bool,
    pub store_error: String,
    pub topics: u64,
    pub flushes: u64,
    pub flushed_writes: u64,
    pub store_bytes: u64,
    pub messages: u64,
    pub groups: u64,
    pub pending_transactions: u64,
    pub parked_transactions: u64,
    /// Free bytes on the data directory's disk (0: not known; a cluster: the least of any node).
    pub disk_free_bytes: u64,
    /// Why new messages are refused (the disk is nearly full); empty while they are taken.
    pub messages_refused: String,
    /// In a cluster: each live node (the figures above are then the cluster's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatusView>,
}

#[derive(Debug, Serialize)]
pub struct NodeStatusView {
    pub node_id: String,
    pub version: String,
    pub uptime_s: i64,
    pub store_writable: bool,
    pub store_error: String,
    pub store_bytes: u64,
    pub messages: u64,
    pub pending_transactions: u64,
    pub parked_transactions: u64,
    pub disk_free_bytes: u64,
    pub messages_refused: String,
}

pub async fn fetch_status(c: &mut Admin) -> anyhow::Result<StatusView> {
    let r = c.broker_status(pb::BrokerStatusRequest {}).await?.into_inner();
    check(r.status)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    Ok(StatusView {
        version: r.version,
        uptime_s: (now - r.started_at_ms) / 1000,
        store_writable: r.store_writable,
        store_error: r.store_error,
        topics: r.topic_count,
        flushes: r.flush_count,
        flushed_writes: r.flushed_write_count,
        store_bytes: r.store_bytes,
        messages: r.message_count,
        groups: r.group_count,
        pending_transactions: r.pending_transactions,
        parked_transactions: r.parked_transactions,
        disk_free_bytes: r.disk_free_bytes,
        messages_refused: r.messages_refused,
        nodes: r
            .nodes
            .into_iter()
            .map(|n| NodeStatusView {
                node_id: n.node_id,
                version: n.version,
                uptime_s: (now - n.started_at_ms) / 1000,
                store_writable: n.store_writable,
                store_error: n.store_error,
                store_bytes: n.store_bytes,
                messages: n.message_count,
                pending_transactions: n.pending_transactions,
                parked_transactions: n.parked_transactions,
                disk_free_bytes: n.disk_free_bytes,
                messages_refused: n.messages_refused,
            })
            .collect(),
    })
}

pub async fn status(broker: &str, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    let s = fetch_status(&mut c).await?;
    out.emit(&s, || {
        let store = store_state(s.store_writable, &s.store_error, &s.messages_refused);
        let nodes: String = s
            .nodes
            .iter()
            .map(|n| {
                let store = store_state(n.store_writable, &n.store_error, &n.messages_refused);
                format!(
                    "  node {}: txmq {} up {}s, store {store}, {} MiB, {} free, {} messages, {} pending / {} parked transactions\n",
                    n.node_id,
                    n.version,
                    n.uptime_s,
                    n.store_bytes / (1024 * 1024),
                    free_space(n.disk_free_bytes),
                    n.messages,
                    n.pending_transactions,
                    n.parked_transactions
                )
            })
            .collect();
        let cluster = if s.nodes.is_empty() { String::new() } else { format!("cluster of {} nodes:\n{nodes}", s.nodes.len()) };
        cluster + &format!(
            "txmq {} up {}s\nstore: {store}, {} MiB on disk, {} free\ntopics: {}, messages stored: {}, consumer groups: {}\ntransactions: {} pending, {} parked\nflushes: {} covering {} writes\n",
            s.version,
            s.uptime_s,
            s.store_bytes / (1024 * 1024),
            free_space(s.disk_free_bytes),
            s.topics,
            s.messages,
            s.groups,
            s.pending_transactions,
            s.parked_transactions,
            s.flushes,
            s.flushed_writes
        )
    })
}

/// The store's state in one phrase: read-only after a failed flush, else writable, and then
/// whether new messages are refused for lack of disk space.
fn store_state(writable: bool, error: &str, refused: &str) -> String {
    match (writable, refused.is_empty()) {
        (false, _) => format!("READ-ONLY: {error}"),
        (true, true) => "writable".to_string(),
        (true, false) => format!("writable, but {refused}"),
    }
}

fn free_space(bytes: u64) -> String {
    match bytes {
        0 => "unknown space".to_string(),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{} MiB", b >> 20),
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The live nodes (as etcd lists them), their load, and which node owns which queues.
    Status,
    /// Take a node out of service, e.g. for an upgrade: no new queues go to it, and with
    /// --replicas its shard moves to an in-sync copy on another node (no acknowledged write
    /// lost, no lease to wait for) and its copies of other shards move to nodes without one.
    /// The node then serves nothing until taken back with --undo.
    Drain {
        node: String,
        /// Take the node back: it gets its shard back, and new queues may go to it again.
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Serialize)]
struct ClusterView {
    clustered: bool,
    node_id: String,
    lease_healthy: bool,
    nodes: Vec<ClusterNodeView>,
    /// Topic → `(node, queues)` per shard.
    placements: Vec<(String, Vec<(String, u32)>)>,
    /// With --replicas: each shard's leader, epoch, in-sync set and replicas.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shards: Vec<ShardView>,
}

#[derive(Serialize)]
struct ShardView {
    shard: String,
    leader: String,
    epoch: i64,
    seq: u64,
    in_sync: Vec<String>,
    replicas: Vec<ReplicaView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

#[derive(Serialize)]
struct ReplicaView {
    node: String,
    acked_seq: u64,
    lag: u64,
    in_sync: bool,
    connected: bool,
    snapshots: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

#[derive(Serialize)]
struct ClusterNodeView {
    id: String,
    address: String,
    member_for_s: i64,
    epoch: i64,
    version: String,
    owned_queues: u32,
    drained: bool,
}

pub async fn cluster(broker: &str, cmd: ClusterCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        ClusterCommand::Status => {
            let r = c.cluster_status(pb::ClusterStatusRequest {}).await?.into_inner();
            check(r.status)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            let v = ClusterView {
                clustered: r.clustered,
                node_id: r.node_id,
                lease_healthy: r.lease_healthy,
                nodes: r
                    .nodes
                    .into_iter()
                    .map(|n| ClusterNodeView {
                        id: n.id,
                        address: n.address,
                        member_for_s: (now - n.joined_at_ms).max(0) / 1000,
                        epoch: n.epoch,
                        version: n.version,
                        owned_queues: n.owned_queues,
                        drained: n.drained,
                    })
                    .collect(),
                placements: r
                    .placements
                    .into_iter()
                    .map(|p| (p.topic, p.shards.into_iter().map(|s| (s.node, s.queues)).collect()))
                    .collect(),
                shards: r
                    .shards
                    .into_iter()
                    .map(|s| ShardView {
                        shard: s.shard,
                        leader: s.leader,
                        epoch: s.epoch,
                        seq: s.seq,
                        in_sync: s.in_sync,
                        replicas: s
                            .replicas
                            .into_iter()
                            .map(|r| ReplicaView {
                                node: r.node,
                                acked_seq: r.acked_seq,
                                lag: r.lag,
                                in_sync: r.in_sync,
                                connected: r.connected,
                                snapshots: r.snapshots,
                                error: r.error,
                            })
                            .collect(),
                        error: s.error,
                    })
                    .collect(),
            };
            out.emit(&v, || {
                if !v.clustered {
                    return "standalone broker (no --etcd)\n".to_string();
                }
                let lease = if v.lease_healthy { "renewed" } else { "NOT RENEWED" };
                let rows: Vec<Vec<String>> = v
                    .nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.clone(),
                            n.address.clone(),
                            format!("{}s", n.member_for_s),
                            n.epoch.to_string(),
                            n.version.clone(),
                        ]
                    })
                    .collect();
                let mut text = format!(
                    "answered by node {} (lease {lease}); {} live nodes\n{}",
                    v.node_id,
                    v.nodes.len(),
                    table(&["NODE", "ADDRESS", "MEMBER-FOR", "EPOCH", "VERSION"], &rows)
                );
                if !v.shards.is_empty() {
                    let rows: Vec<Vec<String>> = v
                        .shards
                        .iter()
                        .map(|s| {
                            let replicas: Vec<String> = s
                                .replicas
                                .iter()
                                .map(|r| {
                                    let state = if r.in_sync { "in sync" } else { "OUT OF SYNC" };
                                    if r.error.is_empty() {
                                        format!("{} ({state}, lag {})", r.node, r.lag)
                                    } else {
                                        format!("{} ({state}, lag {}: {})", r.node, r.lag, r.error)
                                    }
                                })
                                .collect();
                            vec![
                                s.shard.clone(),
                                s.leader.clone(),
                                s.epoch.to_string(),
                                s.seq.to_string(),
                                if s.error.is_empty() { replicas.join(", ") } else { s.error.clone() },
                            ]
                        })
                        .collect();
                    text.push_str("\nreplication:\n");
                    text.push_str(&table(&["SHARD", "LEADER", "EPOCH", "SEQ", "REPLICAS"], &rows));
                }
                text
            })
        }
        ClusterCommand::Drain { node, undo } => {
            let r = c.drain_node(pb::DrainNodeRequest { node: node.clone(), undo }).await?.into_inner();
            check(r.status)?;
            #[derive(Serialize)]
            struct Drained {
                node: String,
                drained: bool,
            }
            let d = Drained { node, drained: !undo };
            out.emit(&d, || {
                if d.drained {
                    format!(
                        "node {} drained: no new queues go to it; with replicas its shard and copies move to other \
                         nodes (watch `txmq cluster status`)\n",
                        d.node
                    )
                } else {
                    format!("node {} taken back: it gets its shard back and takes new queues again\n", d.node)
                }
            })
        }
    }
}
