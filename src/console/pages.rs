//! The console's pages: what an operator reads. Each page asks the admin API at request time.

use super::layout::{ago, at, card, now_ms, page, short};
use super::{checked, PageError, Shared};
use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::BTreeSet;
use txmq_proto::admin as pb;

type Page = Result<Html<String>, PageError>;

pub async fn overview(State(console): State<Shared>) -> Page {
    let mut admin = console.admin().await?;
    let status = match admin.broker_status(pb::BrokerStatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            console.reset().await;
            return Err(e.into());
        }
    };
    checked(status.status.clone())?;
    // The oldest pending transaction: pending ones are listed oldest first.
    let oldest = admin
        .list_transactions(pb::ListTransactionsRequest {
            state: pb::TxnState::Pending as i32,
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    checked(oldest.status.clone())?;
    let oldest = oldest.transactions.first().map(|t| t.created_at_ms);
    let groups = admin.list_groups(pb::ListGroupsRequest {}).await?.into_inner();
    checked(groups.status.clone())?;
    let rates = console.rates.lock().await.per_second;
    let dead_letters: u64 = groups.groups.iter().map(|g| g.dead_letters).sum();
    let behind: Vec<(&pb::Group, u64)> = groups
        .groups
        .iter()
        .map(|g| (g, g.topics.iter().map(|t| t.backlog + t.in_flight).sum::<u64>()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let nodes: Vec<pb::NodeStatus> = if status.nodes.is_empty() {
        vec![pb::NodeStatus {
            node_id: "standalone".into(),
            started_at_ms: status.started_at_ms,
            store_writable: status.store_writable,
            store_error: status.store_error.clone(),
            store_bytes: status.store_bytes,
            message_count: status.message_count,
            pending_transactions: status.pending_transactions,
            parked_transactions: status.parked_transactions,
            version: status.version.clone(),
            disk_free_bytes: status.disk_free_bytes,
            messages_refused: status.messages_refused.clone(),
        }]
    } else {
        status.nodes.clone()
    };
    let content = html! {
        div.cards {
            (card("Store", html! {
                @if !status.store_writable { span.badge.bad { "not writable" } }
                @else if !status.messages_refused.is_empty() { span.badge.bad { "new messages refused" } }
                @else { span.badge.good { "writable" } }
            }, [&status.store_error, &status.messages_refused].into_iter().find(|s| !s.is_empty()).map(String::as_str)))
            (card("Messages in / s", rates.map_or("…".into(), |r| format!("{:.1}", r.0)), Some("last 5 s")))
            (card("Deliveries / s", rates.map_or("…".into(), |r| format!("{:.1}", r.1)), Some("last 5 s")))
            (card("Pending transactions", status.pending_transactions, oldest.map(ago).map(|a| format!("oldest {a}")).as_deref()))
            (card("Parked transactions", status.parked_transactions, Some("waiting for an operator")))
            (card("Dead letters", dead_letters, None))
            (card("Groups behind", behind.len(), Some("backlog or in flight")))
        }
        h2 { "Brokers" }
        table {
            thead { tr { th { "Node" } th { "Version" } th { "Up" } th { "Store" } th.num { "Stored bytes" } th.num { "Messages" } th.num { "Pending" } th.num { "Parked" } } }
            tbody {
                @for n in &nodes {
                    tr {
                        td.mono { (n.node_id) }
                        td { (n.version) }
                        td { (ago(n.started_at_ms)) }
                        td {
                            @if !n.store_writable { span.badge.bad { "not writable" } " " span.muted { (n.store_error) } }
                            @else if !n.messages_refused.is_empty() { span.badge.bad { "new messages refused" } " " span.muted { (n.messages_refused) } }
                            @else { span.badge.good { "writable" } }
                        }
                        td.num { (n.store_bytes) }
                        td.num { (n.message_count) }
                        td.num { (n.pending_transactions) }
                        td.num { (n.parked_transactions) }
                    }
                }
            }
        }
        h2 { "Consumer groups behind" }
        @if behind.is_empty() { p.muted { "Every group is caught up." } }
        @else {
            table {
                thead { tr { th { "Group" } th.num { "Backlog" } th.num { "In flight" } th.num { "Dead letters" } } }
                tbody {
                    @for (g, _) in &behind {
                        tr {
                            td { a href=(format!("/groups/{}", enc(&g.name))) { (g.name) } }
                            td.num { (g.topics.iter().map(|t| t.backlog).sum::<u64>()) }
                            td.num { (g.topics.iter().map(|t| t.in_flight).sum::<u64>()) }
                            td.num { (g.dead_letters) }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Overview", "/", content))
}

/// Pending and parked transactions, oldest first.
pub(super) async fn open_transactions(admin: &mut crate::admin::Admin) -> Result<Vec<pb::Transaction>, PageError> {
    let mut all = Vec::new();
    for state in [pb::TxnState::Pending, pb::TxnState::Parked] {
        let r = admin
            .list_transactions(pb::ListTransactionsRequest { state: state as i32, limit: 1000, ..Default::default() })
            .await?
            .into_inner();
        checked(r.status)?;
        all.extend(r.transactions);
    }
    all.sort_by_key(|t| t.created_at_ms);
    Ok(all)
}

/// Topics that have a transactional producer online now (check-backs can reach it).
pub(super) async fn online_producer_topics(admin: &mut crate::admin::Admin) -> Result<BTreeSet<String>, PageError> {
    let r = admin.list_clients(pb::ListClientsRequest {}).await?.into_inner();
    checked(r.status)?;
    Ok(r.clients.into_iter().filter(|c| c.online).flat_map(|c| c.topics).collect())
}

/// Why a transaction is still undecided, as the inbox classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    ParkedByPolicy,
    NoProducerOnline,
    AnswersUnknown,
    ChecksUnanswered,
    NotCheckedYet,
}

impl Stuck {
    pub const ALL: [Stuck; 5] = [
        Stuck::NoProducerOnline,
        Stuck::AnswersUnknown,
        Stuck::ChecksUnanswered,
        Stuck::ParkedByPolicy,
        Stuck::NotCheckedYet,
    ];

    pub fn of(t: &pb::Transaction, producer_online: bool) -> Stuck {
        if t.state == pb::TxnState::Parked as i32 {
            Stuck::ParkedByPolicy
        } else if !producer_online {
            Stuck::NoProducerOnline
        } else if t.last_answer == "UNKNOWN" {
            Stuck::AnswersUnknown
        } else if t.checks > 0 {
            Stuck::ChecksUnanswered
        } else {
            Stuck::NotCheckedYet
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Stuck::ParkedByPolicy => "parked by policy",
            Stuck::NoProducerOnline => "no producer online",
            Stuck::AnswersUnknown => "producer answers UNKNOWN",
            Stuck::ChecksUnanswered => "checks unanswered",
            Stuck::NotCheckedYet => "not checked yet",
        }
    }

    /// The filter value in URLs.
    pub fn key(self) -> &'static str {
        match self {
            Stuck::ParkedByPolicy => "parked",
            Stuck::NoProducerOnline => "no-producer",
            Stuck::AnswersUnknown => "unknown",
            Stuck::ChecksUnanswered => "unanswered",
            Stuck::NotCheckedYet => "unchecked",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Stuck::NotCheckedYet => "badge",
            Stuck::ChecksUnanswered | Stuck::AnswersUnknown => "badge warn",
            Stuck::NoProducerOnline | Stuck::ParkedByPolicy => "badge bad",
        }
    }
}

/// The inbox's filter (also what a bulk action applies to).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct InboxFilter {
    #[serde(default)]
    pub topic: String,
    /// A [`Stuck::key`].
    #[serde(default)]
    pub why: String,
    /// Only those at least this many minutes old.
    #[serde(default)]
    pub older_than_min: String,
}

impl InboxFilter {
    fn min_age_ms(&self) -> Result<i64, PageError> {
        match self.older_than_min.trim() {
            "" => Ok(0),
            m => m
                .parse::<u32>()
                .map(|m| i64::from(m) * 60_000)
                .map_err(|_| PageError::bad_request(format!("older than: {m:?} is not a number of minutes"))),
        }
    }
}

/// The open transactions `filter` selects, each with why it is stuck, oldest first.
pub(super) async fn select(
    admin: &mut crate::admin::Admin,
    filter: &InboxFilter,
) -> Result<Vec<(pb::Transaction, Stuck)>, PageError> {
    let min_age = filter.min_age_ms()?;
    let online = online_producer_topics(admin).await?;
    let now = now_ms();
    Ok(open_transactions(admin)
        .await?
        .into_iter()
        .map(|t| {
            let why = Stuck::of(&t, online.contains(&t.topic));
            (t, why)
        })
        .filter(|(t, why)| {
            (filter.topic.is_empty() || t.topic == filter.topic)
                && (filter.why.is_empty() || why.key() == filter.why)
                && now - t.created_at_ms >= min_age
        })
        .collect())
}

pub async fn inbox(State(console): State<Shared>, Query(filter): Query<InboxFilter>) -> Page {
    let mut admin = console.admin().await?;
    let rows = select(&mut admin, &filter).await?;
    let content = html! {
        p.muted { "Half messages nobody decided yet, oldest first. A producer is online when a client that sends transactional messages to the topic (or declared it) holds a live Telemetry stream: check-backs can reach it." }
        form.filters method="get" action="/transactions" {
            label { "Topic" input name="topic" value=(filter.topic); }
            label { "Why stuck"
                select name="why" {
                    option value="" { "any" }
                    @for s in Stuck::ALL { option value=(s.key()) selected[filter.why == s.key()] { (s.label()) } }
                }
            }
            label { "Older than (minutes)" input name="older_than_min" size="6" value=(filter.older_than_min); }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() { p.notice { "No in-doubt transaction matches." } }
        @else {
            table #inbox {
                thead { tr { th { "Age" } th { "Transaction" } th { "Topic" } th { "Producer" } th { "Producer online" } th.num { "Checks" } th { "Last answer" } th { "Why stuck" } } }
                tbody {
                    @for (t, why) in &rows {
                        tr data-txn=(t.id) {
                            td { (ago(t.created_at_ms)) }
                            td.mono { a href=(format!("/transactions/{}", enc(&t.id))) { (t.id) } }
                            td { (t.topic) }
                            td.mono { (t.producer) }
                            td { @if *why == Stuck::NoProducerOnline { span.badge.bad { "no" } } @else if *why == Stuck::ParkedByPolicy { "-" } @else { span.badge.good { "yes" } } }
                            td.num { (t.checks) }
                            td { @if t.last_answer.is_empty() { span.muted { "none" } } @else { (t.last_answer) } }
                            td { span class=(why.class()) { (why.label()) } }
                        }
                    }
                }
            }
            h2 { "Decide all " (rows.len()) " shown" }
            form.action method="post" action="/transactions-bulk" {
                input type="hidden" name="topic" value=(filter.topic);
                input type="hidden" name="why" value=(filter.why);
                input type="hidden" name="older_than_min" value=(filter.older_than_min);
                p.muted { "The next step shows how many transactions the filter selects then; nothing changes until you confirm there." }
                label { "Action"
                    select name="action" {
                        option value="commit" { "commit" }
                        option value="rollback" { "roll back" }
                        option value="resume" { "resume checks (parked ones)" }
                    }
                }
                label { "Reason (recorded in each timeline and the audit log)" textarea name="reason" required {} }
                button type="submit" { "Count first (dry run)" }
            }
        }
    };
    Ok(page("In-doubt transactions", "/transactions", content))
}

pub async fn transaction(State(console): State<Shared>, Path(id): Path<String>) -> Page {
    let mut admin = console.admin().await?;
    let r = admin.get_transaction(pb::GetTransactionRequest { id: id.clone() }).await?.into_inner();
    checked(r.status)?;
    let t = r.transaction.ok_or_else(|| PageError::not_found(format!("no transaction {id}")))?;
    let online = online_producer_topics(&mut admin).await?.contains(&t.topic);
    let open = t.state == pb::TxnState::Pending as i32 || t.state == pb::TxnState::Parked as i32;
    let content = html! {
        dl.fields {
            dt { "Transaction" } dd.mono #txn-id { (t.id) }
            dt { "State" } dd #txn-state { (state_name(t.state)) }
            @if open { dt { "Why stuck" } dd { (Stuck::of(&t, online).label()) } }
            dt { "Topic" } dd { (t.topic) }
            dt { "Message" } dd.mono { a href=(format!("/messages?topic={}&id={}", enc(&t.topic), enc(&t.message_id))) { (t.message_id) } }
            dt { "Tag / keys" } dd { (t.tag) " " span.muted { (t.keys.join(", ")) } }
            dt { "Body" } dd { (t.body_size) " bytes" }
            dt { "Producer" } dd.mono { (t.producer) " " @if online { span.badge.good { "a producer of the topic is online" } } @else { span.badge.bad { "no producer online" } } }
            dt { "Sent" } dd { (at(t.created_at_ms)) " (" (ago(t.created_at_ms)) " ago)" }
            dt { "Checks" } dd { (t.checks) @if t.next_check_ms > 0 && open { span.muted { " · next " (at(t.next_check_ms)) } } }
            dt { "Last answer" } dd { @if t.last_answer.is_empty() { "none" } @else { (t.last_answer) } }
            @if t.resolved_at_ms > 0 { dt { "Decided" } dd { (at(t.resolved_at_ms)) } }
        }
        h2 { "Timeline" }
        table #timeline {
            thead { tr { th { "At" } th { "Event" } th { "Client" } th { "Stream" } th { "Answer / decision" } th.num { "Latency" } th { "By" } th { "Reason" } } }
            tbody {
                @for e in &t.timeline {
                    tr {
                        td { (at(e.at_ms)) }
                        td { (event_label(e)) }
                        td.mono { (e.client) }
                        td { @if e.stream > 0 { (e.stream) } }
                        td { (e.resolution) @if e.kind == "check" && !e.answered { span.badge.warn { "no answer" } } }
                        td.num { @if e.latency_ms > 0 { (e.latency_ms) " ms" } }
                        td { (e.by) }
                        td { (e.reason) }
                    }
                }
            }
        }
        @if open {
            h2 { "Decide" }
            form.action #decide method="post" action=(format!("/transactions/{}/action", enc(&t.id))) {
                label { "Reason (required; recorded in the timeline and the audit log)" textarea #reason name="reason" required {} }
                p { label { input #confirm type="checkbox" name="confirm" value="yes"; "I checked the order's real state: this decision is final" } }
                button.commit #commit type="submit" name="action" value="commit" { "Commit" }
                " "
                button.rollback #rollback type="submit" name="action" value="rollback" { "Roll back" }
                @if t.state == pb::TxnState::Parked as i32 {
                    " "
                    button #resume type="submit" name="action" value="resume" { "Resume checks" }
                }
            }
        }
    };
    Ok(page(&format!("Transaction {}", short_id(&t.id)), "/transactions", content))
}

fn event_label(e: &pb::TxnEvent) -> String {
    match e.kind.as_str() {
        "sent" => "half message stored".into(),
        "check" => "check-back sent".into(),
        "answer" => "producer decided".into(),
        "decision" => "decided".into(),
        "parked" => "parked (max checks)".into(),
        "unreachable" => format!("no producer reachable ({} attempts, last {})", e.attempts, at(e.last_ms)),
        "resumed" => "checks resumed".into(),
        other => other.to_string(),
    }
}

pub fn state_name(s: i32) -> &'static str {
    match pb::TxnState::try_from(s) {
        Ok(pb::TxnState::Pending) => "PENDING",
        Ok(pb::TxnState::Committed) => "COMMITTED",
        Ok(pb::TxnState::RolledBack) => "ROLLED_BACK",
        Ok(pb::TxnState::Parked) => "PARKED",
        _ => "UNKNOWN",
    }
}

fn short_id(id: &str) -> &str {
    let n = id.char_indices().nth(24).map_or(id.len(), |(i, _)| i);
    &id[..n]
}

pub async fn groups(State(console): State<Shared>) -> Page {
    let mut admin = console.admin().await?;
    let r = admin.list_groups(pb::ListGroupsRequest {}).await?.into_inner();
    checked(r.status)?;
    let content = html! {
        @if r.groups.is_empty() { p.notice { "No consumer group yet." } }
        @else {
            table #groups {
                thead { tr { th { "Group" } th { "Topics" } th.num { "Backlog" } th.num { "In flight" } th.num { "Retrying" } th.num { "Delayed" } th.num { "Dead letters" } } }
                tbody {
                    @for g in &r.groups {
                        tr {
                            td { a href=(format!("/groups/{}", enc(&g.name))) { (g.name) } }
                            td { (g.topics.iter().map(|t| t.topic.as_str()).collect::<Vec<_>>().join(", ")) }
                            td.num { (g.topics.iter().map(|t| t.backlog).sum::<u64>()) }
                            td.num { (g.topics.iter().map(|t| t.in_flight).sum::<u64>()) }
                            td.num { (g.topics.iter().map(|t| t.retrying).sum::<u64>()) }
                            td.num { (g.topics.iter().map(|t| t.deferred).sum::<u64>()) }
                            td.num { @if g.dead_letters > 0 { a href=(format!("/dead-letters?group={}", enc(&g.name))) { (g.dead_letters) } } @else { "0" } }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Consumer groups", "/groups", content))
}

pub async fn group(State(console): State<Shared>, Path(name): Path<String>) -> Page {
    let mut admin = console.admin().await?;
    let r = admin.describe_group(pb::DescribeGroupRequest { name: name.clone() }).await?.into_inner();
    checked(r.status)?;
    let g = r.group.ok_or_else(|| PageError::not_found(format!("no group {name}")))?;
    let clients = admin.list_clients(pb::ListClientsRequest {}).await?.into_inner();
    checked(clients.status)?;
    let members: Vec<&pb::ConnectedClient> = clients.clients.iter().filter(|c| c.group == name).collect();
    let now = now_ms();
    let overdue = r.in_flight.iter().filter(|m| m.attempt > 0 && m.visible_at_ms < now).count();
    let content = html! {
        div.cards {
            (card("Backlog", html! { span #backlog { (g.topics.iter().map(|t| t.backlog).sum::<u64>()) } }, Some("stored, not delivered yet")))
            (card("In flight", g.topics.iter().map(|t| t.in_flight).sum::<u64>(), Some("delivered, not acked")))
            (card("Retrying", g.topics.iter().map(|t| t.retrying).sum::<u64>(), None))
            (card("Past invisible time", overdue, Some("due for redelivery")))
            (card("Dead letters", g.dead_letters, None))
            (card("Connected clients", members.len(), None))
        }
        h2 { "Topics and queues" }
        table #queues {
            thead { tr { th { "Topic" } th { "Queue" } th.num { "Backlog" } th { "Oldest waiting" } th.num { "In flight" } } }
            tbody {
                @for t in &g.topics {
                    tr.topic-total data-topic=(t.topic) {
                        td { strong { (t.topic) } } td { "all" }
                        td.num.backlog { (t.backlog) }
                        td { (t.queues.iter().filter(|q| q.oldest_stored_at_ms > 0).map(|q| q.oldest_stored_at_ms).min().map_or("-".to_string(), |ms| format!("{} ago", ago(ms)))) }
                        td.num { (t.in_flight) }
                    }
                    @for q in &t.queues {
                        tr {
                            td.muted { (t.topic) } td { (q.queue) }
                            td.num { (q.backlog) }
                            td { @if q.oldest_stored_at_ms > 0 { (ago(q.oldest_stored_at_ms)) " ago" } @else { "-" } }
                            td.num { (q.in_flight) }
                        }
                    }
                }
            }
        }
        h2 { "Connected clients" }
        @if members.is_empty() { p.muted { "No client of this group is connected now (simple consumers show up once they sent Settings)." } }
        @else {
            table {
                thead { tr { th { "Client" } th { "Kind" } th { "Language" } th { "Version" } th { "Last heartbeat" } th { "Node" } } }
                tbody {
                    @for c in &members {
                        tr { td.mono { (c.client_id) } td { (c.kind) } td { (c.language) } td { (c.version) } td { (ago(c.last_seen_ms)) " ago" } td { (c.node) } }
                    }
                }
            }
        }
        h2 { "In-flight messages" }
        @if r.in_flight.is_empty() { p.muted { "None." } }
        @else {
            table {
                thead { tr { th { "Message" } th { "Topic" } th { "Queue / offset" } th.num { "Attempt" } th { "Client" } th { "Delivered" } th { "Visible again" } } }
                tbody {
                    @for m in &r.in_flight {
                        tr {
                            td.mono { a href=(format!("/messages?topic={}&id={}", enc(&m.topic), enc(&m.message_id))) { (m.message_id) } }
                            td { (m.topic) }
                            td { (m.queue) " / " (m.offset) }
                            td.num { (m.attempt) }
                            td.mono { (m.client_id) }
                            td { (ago(m.delivered_at_ms)) " ago" }
                            td {
                                @if m.attempt > 0 && m.visible_at_ms < now { span.badge.warn { "past by " (short(now - m.visible_at_ms)) } }
                                @else { "in " (short(m.visible_at_ms - now)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&format!("Group {name}"), "/groups", content))
}

#[derive(Debug, Default, Deserialize)]
pub struct MessageQuery {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    key: String,
}

pub async fn messages(State(console): State<Shared>, Query(q): Query<MessageQuery>) -> Page {
    let searched = !q.id.is_empty() || !q.key.is_empty();
    let found = if searched {
        let mut admin = console.admin().await?;
        let r = admin
            .find_messages(pb::FindMessagesRequest {
                topic: q.topic.clone(),
                message_id: q.id.clone(),
                key: q.key.clone(),
                limit: 50,
            })
            .await?
            .into_inner();
        checked(r.status)?;
        let mut shown = Vec::new();
        for m in r.messages {
            let txn = if m.transaction_id.is_empty() {
                None
            } else {
                let t = admin.get_transaction(pb::GetTransactionRequest { id: m.transaction_id.clone() }).await?;
                t.into_inner().transaction
            };
            shown.push((m, txn));
        }
        shown
    } else {
        Vec::new()
    };
    let content = html! {
        form.filters method="get" action="/messages" {
            label { "Topic (empty: every topic, for ids)" input name="topic" value=(q.topic); }
            label { "Message id" input name="id" size="36" value=(q.id); }
            label { "or key" input name="key" value=(q.key); }
            button type="submit" { "Look up" }
        }
        @if searched && found.is_empty() { p.notice { "No stored message matches." } }
        @for (m, txn) in &found { (message_view(m, txn.as_ref())) }
    };
    Ok(page("Messages", "/messages", content))
}

fn message_view(m: &pb::StoredMessage, txn: Option<&pb::Transaction>) -> Markup {
    html! {
        h2.mono { (m.message_id) }
        dl.fields {
            dt { "Topic / queue / offset" } dd { (m.topic) " / " (m.queue) " / " (m.offset) @if !m.node.is_empty() { span.muted { " on " (m.node) } } }
            dt { "Type" } dd { (m.message_type) }
            dt { "Tag / keys" } dd { (m.tag) " " span.muted { (m.keys.join(", ")) } }
            @if !m.message_group.is_empty() { dt { "Message group" } dd { (m.message_group) } }
            dt { "Stored" } dd { (at(m.stored_at_ms)) " (" (ago(m.stored_at_ms)) " ago)" }
            @if m.deliver_at_ms > 0 { dt { "Deliver at" } dd { (at(m.deliver_at_ms)) } }
            dt { "Producer" } dd.mono { (m.producer) " " span.muted { (m.born_host) } }
            @if !m.origin_topic.is_empty() { dt { "Origin topic" } dd { (m.origin_topic) } }
            dt { "Body" } dd { (m.body_size) " bytes" @if !m.body_preview.is_empty() { br; code { (m.body_preview) } } }
            @for (k, v) in &m.properties { dt { (k) } dd { (v) } }
        }
        @if !m.group_states.is_empty() {
            table.states {
                thead { tr { th { "Group" } th { "State" } th.num { "Attempt" } th { "Client" } th { "Visible again" } } }
                tbody {
                    @for s in &m.group_states {
                        tr {
                            td { a href=(format!("/groups/{}", enc(&s.group))) { (s.group) } }
                            td { (s.state) }
                            td.num { @if s.attempt > 0 { (s.attempt) } }
                            td.mono { (s.client_id) }
                            td { @if s.visible_at_ms > 0 { (at(s.visible_at_ms)) } }
                        }
                    }
                }
            }
        }
        @if let Some(t) = txn {
            p.from-txn { "From transaction " a.mono href=(format!("/transactions/{}", enc(&t.id))) { (t.id) } ": " (state_name(t.state)) }
            table {
                thead { tr { th { "At" } th { "Event" } th { "Answer / decision" } th { "By" } th { "Reason" } } }
                tbody {
                    @for e in &t.timeline {
                        tr { td { (at(e.at_ms)) } td { (event_label(e)) } td { (e.resolution) } td { (e.by) } td { (e.reason) } }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupQuery {
    #[serde(default)]
    group: String,
}

pub async fn dead_letters(State(console): State<Shared>, Query(q): Query<GroupQuery>) -> Page {
    let mut admin = console.admin().await?;
    let groups = admin.list_groups(pb::ListGroupsRequest {}).await?.into_inner();
    checked(groups.status)?;
    let letters = if q.group.is_empty() {
        Vec::new()
    } else {
        let r = admin
            .list_dead_letters(pb::ListDeadLettersRequest { group: q.group.clone(), limit: 500 })
            .await?
            .into_inner();
        checked(r.status)?;
        r.messages
    };
    let content = html! {
        table {
            thead { tr { th { "Group" } th.num { "Dead letters" } } }
            tbody {
                @for g in groups.groups.iter().filter(|g| g.dead_letters > 0) {
                    tr { td { a href=(format!("/dead-letters?group={}", enc(&g.name))) { (g.name) } } td.num { (g.dead_letters) } }
                }
            }
        }
        @if !q.group.is_empty() {
            h2 { "Dead letters of " (q.group) }
            @if letters.is_empty() { p.notice { "None." } }
            @else {
                form.action method="post" action="/dead-letters/resend" {
                    input type="hidden" name="group" value=(q.group);
                    table #dead-letters {
                        thead { tr { th {} th { "Message" } th { "Origin topic" } th { "Moved" } th { "Why" } th.num { "Attempts" } th { "Resent" } } }
                        tbody {
                            @for m in &letters {
                                tr {
                                    td { input type="checkbox" name="id" value=(m.message_id); }
                                    td.mono { a href=(format!("/messages?topic={}&id={}", enc(&m.origin_topic), enc(&m.message_id))) { (m.message_id) } }
                                    td { (m.origin_topic) }
                                    td { (ago(m.stored_at_ms)) " ago" }
                                    td { (m.properties.get("TXMQ_DLQ_REASON").map_or("-", String::as_str)) }
                                    td.num { (m.properties.get("TXMQ_DLQ_ATTEMPTS").map_or("-", String::as_str)) }
                                    td { @if m.resent_at_ms > 0 { (ago(m.resent_at_ms)) " ago" } }
                                }
                            }
                        }
                    }
                    label { "Reason (recorded in the audit log)" textarea name="reason" required {} }
                    p.muted { "The next step counts what would be resent; nothing is resent until you confirm there." }
                    button type="submit" name="scope" value="selected" { "Resend selected (dry run first)" }
                    " "
                    button type="submit" name="scope" value="all" { "Resend all not resent yet (dry run first)" }
                }
            }
        }
    };
    Ok(page("Dead letters", "/dead-letters", content))
}

pub async fn audit(State(console): State<Shared>) -> Page {
    let mut admin = console.admin().await?;
    let r = admin.list_audit(pb::ListAuditRequest { limit: 500 }).await?.into_inner();
    checked(r.status)?;
    let content = html! {
        p.muted { "Operator actions recorded by the broker, newest first (also: " code { "txmq audit list" } ")." }
        @if r.entries.is_empty() { p.notice { "No operator action yet." } }
        @else {
            table #audit {
                thead { tr { th { "At" } th { "Actor" } th { "Action" } th { "Target" } th { "Reason" } th { "Outcome" } th { "Node" } } }
                tbody {
                    @for e in &r.entries {
                        tr {
                            td { (at(e.at_ms)) }
                            td { (e.actor) }
                            td { (e.action) }
                            td.mono {
                                @if e.action == "commit" || e.action == "rollback" || e.action == "resume" {
                                    a href=(format!("/transactions/{}", enc(&e.target))) { (e.target) }
                                } @else { (e.target) }
                            }
                            td { (e.reason) }
                            td { @if e.outcome == "ok" { span.badge.good { "ok" } } @else { span.badge.bad { (e.outcome) } } }
                            td { (e.node) }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Audit log", "/audit", content))
}

/// `s` for a URL path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(state: pb::TxnState, checks: u32, last_answer: &str) -> pb::Transaction {
        pb::Transaction { state: state as i32, checks, last_answer: last_answer.into(), ..Default::default() }
    }

    #[test]
    fn why_a_transaction_is_stuck() {
        assert_eq!(Stuck::of(&txn(pb::TxnState::Parked, 15, "UNKNOWN"), true), Stuck::ParkedByPolicy);
        assert_eq!(Stuck::of(&txn(pb::TxnState::Pending, 3, ""), false), Stuck::NoProducerOnline);
        assert_eq!(Stuck::of(&txn(pb::TxnState::Pending, 3, "UNKNOWN"), true), Stuck::AnswersUnknown);
        assert_eq!(Stuck::of(&txn(pb::TxnState::Pending, 3, ""), true), Stuck::ChecksUnanswered);
        assert_eq!(Stuck::of(&txn(pb::TxnState::Pending, 0, ""), true), Stuck::NotCheckedYet);
    }

    #[test]
    fn url_parts_are_percent_encoded() {
        assert_eq!(enc("a b/%DLQ%g"), "a%20b%2F%25DLQ%25g");
        assert_eq!(enc("node-1:ABC_9.x~"), "node-1%3AABC_9.x~");
    }
}
