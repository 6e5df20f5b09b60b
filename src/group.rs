//! `txmq group` and `txmq dlq`: consumer groups, their backlogs and dead letters.

use crate::admin::{check, connect};
use crate::msg::{render_messages, MessageView};
use crate::output::{table, Output};
use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use txmq_proto::admin as pb;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a consumer group before its first consumer starts.
    Create { group: String },
    /// List consumer groups.
    List,
    /// Per topic: backlog, in flight, retrying, deferred; and the dead-letter count.
    Describe { group: String },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Messages in a group's dead-letter topic (`%DLQ%<group>`).
    List {
        group: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Deliver dead letters to the group again (same message id, attempts start over).
    Resend {
        group: String,
        #[arg(long = "message-id", conflicts_with = "all")]
        message_ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// Count what would be resent; resend nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Serialize)]
struct TopicView {
    topic: String,
    backlog: u64,
    in_flight: u64,
    retrying: u64,
    deferred: u64,
}

#[derive(Serialize)]
struct GroupView {
    name: String,
    created_at_ms: i64,
    dead_letters: u64,
    topics: Vec<TopicView>,
    pull_offsets: Vec<PullOffsetView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lite_subscriptions: Vec<LiteSubscriptionView>,
}

#[derive(Serialize)]
struct LiteSubscriptionView {
    client_id: String,
    topic: String,
    /// Lite topic → the group's backlog in it.
    lite_topics: Vec<(String, u64)>,
}

#[derive(Serialize)]
struct PullOffsetView {
    topic: String,
    queue: u32,
    offset: u64,
    end: u64,
}

fn view(g: pb::Group) -> GroupView {
    GroupView {
        name: g.name,
        created_at_ms: g.created_at_ms,
        dead_letters: g.dead_letters,
        pull_offsets: g
            .pull_offsets
            .into_iter()
            .map(|p| PullOffsetView { topic: p.topic, queue: p.queue, offset: p.offset, end: p.end })
            .collect(),
        lite_subscriptions: g
            .lite_subscriptions
            .into_iter()
            .map(|l| LiteSubscriptionView {
                client_id: l.client_id,
                topic: l.topic,
                lite_topics: l.lite_topics.into_iter().map(|b| (b.lite_topic, b.backlog)).collect(),
            })
            .collect(),
        topics: g
            .topics
            .into_iter()
            .map(|t| TopicView {
                topic: t.topic,
                backlog: t.backlog,
                in_flight: t.in_flight,
                retrying: t.retrying,
                deferred: t.deferred,
            })
            .collect(),
    }
}

pub async fn group(broker: &str, cmd: GroupCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        GroupCommand::Create { group } => {
            let r = c.create_group(pb::CreateGroupRequest { name: group }).await?.into_inner();
            check(r.status)?;
            let g = view(r.group.context("no group in the answer")?);
            out.emit(&g, || format!("group {} exists\n", g.name))
        }
        GroupCommand::List => {
            let r = c.list_groups(pb::ListGroupsRequest {}).await?.into_inner();
            check(r.status)?;
            let groups: Vec<GroupView> = r.groups.into_iter().map(view).collect();
            out.emit(&groups, || {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        let backlog: u64 = g.topics.iter().map(|t| t.backlog).sum();
                        let in_flight: u64 = g.topics.iter().map(|t| t.in_flight).sum();
                        vec![
                            g.name.clone(),
                            g.topics.len().to_string(),
                            backlog.to_string(),
                            in_flight.to_string(),
                            g.dead_letters.to_string(),
                        ]
                    })
                    .collect();
                table(&["GROUP", "TOPICS", "BACKLOG", "IN-FLIGHT", "DEAD-LETTERS"], &rows)
            })
        }
        GroupCommand::Describe { group } => {
            let r = c.describe_group(pb::DescribeGroupRequest { name: group }).await?.into_inner();
            check(r.status)?;
            let g = view(r.group.context("no group in the answer")?);
            out.emit(&g, || {
                let rows: Vec<Vec<String>> = g
                    .topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.topic.clone(),
                            t.backlog.to_string(),
                            t.in_flight.to_string(),
                            t.retrying.to_string(),
                            t.deferred.to_string(),
                        ]
                    })
                    .collect();
                let mut s = format!(
                    "group {} ({} dead letters)\n{}",
                    g.name,
                    g.dead_letters,
                    table(&["TOPIC", "BACKLOG", "IN-FLIGHT", "RETRYING", "DEFERRED"], &rows)
                );
                if !g.pull_offsets.is_empty() {
                    let rows: Vec<Vec<String>> = g
                        .pull_offsets
                        .iter()
                        .map(|p| {
                            let behind = p.end.saturating_sub(p.offset);
                            vec![p.topic.clone(), p.queue.to_string(), p.offset.to_string(), behind.to_string()]
                        })
                        .collect();
                    s.push_str("pull offsets\n");
                    s.push_str(&table(&["TOPIC", "QUEUE", "OFFSET", "BEHIND"], &rows));
                }
                if !g.lite_subscriptions.is_empty() {
                    let rows: Vec<Vec<String>> = g
                        .lite_subscriptions
                        .iter()
                        .flat_map(|l| {
                            l.lite_topics.iter().map(|(lite, backlog)| {
                                vec![l.client_id.clone(), l.topic.clone(), lite.clone(), backlog.to_string()]
                            })
                        })
                        .collect();
                    s.push_str("lite subscriptions\n");
                    s.push_str(&table(&["CLIENT", "TOPIC", "LITE-TOPIC", "BACKLOG"], &rows));
                }
                s
            })
        }
    }
}

pub async fn dlq(broker: &str, cmd: DlqCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        DlqCommand::List { group, limit } => {
            let r = c.list_dead_letters(pb::ListDeadLettersRequest { group, limit }).await?.into_inner();
            check(r.status)?;
            let ms: Vec<MessageView> = r.messages.into_iter().map(MessageView::from).collect();
            out.emit(&ms, || render_messages(&ms))
        }
        DlqCommand::Resend { group, message_ids, all, reason, dry_run } => {
            if !all && message_ids.is_empty() {
                anyhow::bail!("give --message-id ID (repeatable) or --all");
            }
            let r = c
                .resend_dead_letters(pb::ResendDeadLettersRequest {
                    group: group.clone(),
                    message_ids,
                    all,
                    reason,
                    actor: crate::admin::operator("cli"),
                    dry_run,
                })
                .await?
                .into_inner();
            check(r.status)?;
            #[derive(Serialize)]
            struct Resent {
                group: String,
                resent: u32,
            }
            let v = Resent { group, resent: r.resent };
            let verb = if dry_run { "would resend" } else { "resent" };
            out.emit(&v, || format!("{verb} {} dead letters to group {}\n", v.resent, v.group))
        }
    }
}
