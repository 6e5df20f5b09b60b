//! `txmq audit`: the operator actions a broker recorded (who, when, what, why, outcome).

use crate::admin::{check, connect};
use crate::output::{table, time, Output};
use clap::Subcommand;
use serde::Serialize;
use txmq_proto::admin as pb;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Newest first: transactions committed, rolled back or resumed by hand, dead letters
    /// resent (from the CLI or the console).
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Serialize)]
struct EntryView {
    at_ms: i64,
    actor: String,
    action: String,
    target: String,
    reason: String,
    outcome: String,
    node: String,
}

pub async fn run(broker: &str, cmd: AuditCommand, out: Output) -> anyhow::Result<()> {
    let AuditCommand::List { limit } = cmd;
    let r = connect(broker).await?.list_audit(pb::ListAuditRequest { limit }).await?.into_inner();
    check(r.status)?;
    let entries: Vec<EntryView> = r
        .entries
        .into_iter()
        .map(|e| EntryView {
            at_ms: e.at_ms,
            actor: e.actor,
            action: e.action,
            target: e.target,
            reason: e.reason,
            outcome: e.outcome,
            node: e.node,
        })
        .collect();
    out.emit(&entries, || {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    time(e.at_ms),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    e.reason.clone(),
                    e.outcome.clone(),
                ]
            })
            .collect();
        table(&["AT", "ACTOR", "ACTION", "TARGET", "REASON", "OUTCOME"], &rows)
    })
}
