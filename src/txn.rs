//! `txmq txn`: in-doubt transactions — list, timeline, operator decisions.

use crate::admin::{check, connect};
use crate::output::{age, table, time, Output};
use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use txmq_proto::admin as pb;

#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// List transactions (half messages).
    List {
        #[arg(long)]
        topic: Option<String>,
        /// pending, committed, rolled-back or parked.
        #[arg(long)]
        state: Option<String>,
        /// Only those created at least this long ago (e.g. 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one transaction: its message and timeline.
    Show { id: String },
    /// Commit as an operator (the message becomes deliverable).
    Commit {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Roll back as an operator (the message is discarded).
    Rollback {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Restart checks of a parked transaction.
    Resume {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Serialize)]
struct EventView {
    at_ms: i64,
    kind: String,
    client: String,
    resolution: String,
    by: String,
    reason: String,
    latency_ms: i64,
    answered: bool,
    /// Checks: the broker's id of the Telemetry stream it was written to.
    stream: u64,
    /// "unreachable": attempts that found no producer, the latest at `last_ms`.
    attempts: u32,
    last_ms: i64,
}

#[derive(Serialize)]
struct TxnView {
    id: String,
    topic: String,
    message_id: String,
    producer: String,
    state: String,
    created_at_ms: i64,
    checks: u32,
    next_check_ms: i64,
    resolved_at_ms: i64,
    last_answer: String,
    tag: String,
    keys: Vec<String>,
    body_size: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    timeline: Vec<EventView>,
}

fn state_name(s: i32) -> String {
    match pb::TxnState::try_from(s) {
        Ok(pb::TxnState::Pending) => "pending",
        Ok(pb::TxnState::Committed) => "committed",
        Ok(pb::TxnState::RolledBack) => "rolled-back",
        Ok(pb::TxnState::Parked) => "parked",
        _ => "unknown",
    }
    .to_string()
}

fn parse_state(s: &str) -> anyhow::Result<pb::TxnState> {
    Ok(match s {
        "pending" => pb::TxnState::Pending,
        "committed" => pb::TxnState::Committed,
        "rolled-back" | "rolledback" | "rollback" => pb::TxnState::RolledBack,
        "parked" => pb::TxnState::Parked,
        _ => anyhow::bail!("unknown state {s:?} (pending, committed, rolled-back, parked)"),
    })
}

fn view(t: pb::Transaction) -> TxnView {
    TxnView {
        state: state_name(t.state),
        timeline: t
            .timeline
            .into_iter()
            .map(|e| EventView {
                at_ms: e.at_ms,
                kind: e.kind,
                client: e.client,
                resolution: e.resolution,
                by: e.by,
                reason: e.reason,
                latency_ms: e.latency_ms,
                answered: e.answered,
                stream: e.stream,
                attempts: e.attempts,
                last_ms: e.last_ms,
            })
            .collect(),
        id: t.id,
        topic: t.topic,
        message_id: t.message_id,
        producer: t.producer,
        created_at_ms: t.created_at_ms,
        checks: t.checks,
        next_check_ms: t.next_check_ms,
        resolved_at_ms: t.resolved_at_ms,
        last_answer: t.last_answer,
        tag: t.tag,
        keys: t.keys,
        body_size: t.body_size,
    }
}

fn describe_event(e: &EventView) -> String {
    match e.kind.as_str() {
        "sent" => format!("half message stored, sent by {}", e.client),
        "check" if e.answered => format!(
            "check sent to {} (stream {}) -> answered {} in {} ms",
            e.client, e.stream, e.resolution, e.latency_ms
        ),
        "check" => format!("check sent to {} (stream {}) -> no answer", e.client, e.stream),
        "unreachable" => format!(
            "no producer online to check with: {} attempts, the latest at {}",
            e.attempts,
            crate::output::time(e.last_ms)
        ),
        "answer" => format!("{} answered {} (no change)", e.by, e.resolution),
        "decision" if e.reason.is_empty() => format!("{} by {}", e.resolution, e.by),
        "decision" => format!("{} by {}: {}", e.resolution, e.by, e.reason),
        "parked" => "out of checks: parked for an operator".to_string(),
        "resumed" if e.reason.is_empty() => "checks resumed by operator".to_string(),
        "resumed" => format!("checks resumed by operator: {}", e.reason),
        other => other.to_string(),
    }
}

fn render_one(t: &TxnView) -> String {
    let mut s = format!(
        "transaction {}\n  topic:      {}\n  message id: {}\n  tag/keys:   {} / {}\n  body:       {} bytes\n  producer:   {}\n  state:      {} ({} checks{})\n  created:    {} ({} ago)\n\ntimeline:\n",
        t.id,
        t.topic,
        t.message_id,
        if t.tag.is_empty() { "-" } else { &t.tag },
        if t.keys.is_empty() { "-".to_string() } else { t.keys.join(",") },
        t.body_size,
        t.producer,
        t.state,
        t.checks,
        if t.next_check_ms > 0 { format!(", next check {}", time(t.next_check_ms)) } else { String::new() },
        time(t.created_at_ms),
        age(t.created_at_ms),
    );
    for e in &t.timeline {
        s.push_str(&format!("  {}  {}\n", time(e.at_ms), describe_event(e)));
    }
    s
}

pub async fn run(broker: &str, cmd: TxnCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        TxnCommand::List { topic, state, older_than, limit } => {
            let state = state.as_deref().map(parse_state).transpose()?.unwrap_or(pb::TxnState::Unspecified);
            let req = pb::ListTransactionsRequest {
                state: state as i32,
                topic: topic.unwrap_or_default(),
                older_than_ms: older_than.map(|d| d.as_millis() as i64).unwrap_or(0),
                limit,
            };
            let r = c.list_transactions(req).await?.into_inner();
            check(r.status)?;
            let list: Vec<TxnView> = r.transactions.into_iter().map(view).collect();
            out.emit(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.topic.clone(),
                            age(t.created_at_ms),
                            t.checks.to_string(),
                            t.state.clone(),
                            if t.last_answer.is_empty() { "-".into() } else { t.last_answer.clone() },
                        ]
                    })
                    .collect();
                table(&["ID", "TOPIC", "AGE", "CHECKS", "STATE", "LAST-ANSWER"], &rows)
            })
        }
        TxnCommand::Show { id } => {
            let r = c.get_transaction(pb::GetTransactionRequest { id }).await?.into_inner();
            check(r.status)?;
            let t = view(r.transaction.context("no transaction in the answer")?);
            out.emit(&t, || render_one(&t))
        }
        TxnCommand::Commit { id, reason } | TxnCommand::Rollback { id, reason } if reason.trim().is_empty() => {
            anyhow::bail!("--reason must not be empty: it is recorded in the timeline of {id}")
        }
        TxnCommand::Commit { id, reason } => decide(&mut c, id, true, reason, out).await,
        TxnCommand::Rollback { id, reason } => decide(&mut c, id, false, reason, out).await,
        TxnCommand::Resume { id, reason } => {
            let r = c
                .resume_transaction(pb::ResumeTransactionRequest { id, reason, actor: crate::admin::operator("cli") })
                .await?
                .into_inner();
            check(r.status)?;
            let t = view(r.transaction.context("no transaction in the answer")?);
            out.emit(&t, || format!("checks resumed for {}\n", t.id))
        }
    }
}

async fn decide(
    c: &mut crate::admin::Admin,
    id: String,
    commit: bool,
    reason: String,
    out: Output,
) -> anyhow::Result<()> {
    let r = c
        .resolve_transaction(pb::ResolveTransactionRequest { id, commit, reason, actor: crate::admin::operator("cli") })
        .await?
        .into_inner();
    check(r.status)?;
    let t = view(r.transaction.context("no transaction in the answer")?);
    out.emit(&t, || format!("transaction {} is {}\n", t.id, t.state))
}
