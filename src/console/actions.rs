//! The console's actions: a transaction committed, rolled back or resumed; the same over a
//! filtered set; dead letters resent. Each takes a required reason and a confirmation step
//! (bulk ones count first and act only on what was counted); the broker records each in its
//! audit log with this console's actor.

use super::layout::page;
use super::pages::{enc, select, state_name, InboxFilter};
use super::{checked, same_origin, PageError, Shared};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use txmq_proto::admin as pb;

/// A posted form: its fields in order (a name may repeat, like checked boxes).
type Fields = Vec<(String, String)>;

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

fn all<'a>(fields: &'a Fields, name: &'a str) -> impl Iterator<Item = &'a str> {
    fields.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The posted reason, required.
fn reason(fields: &Fields) -> Result<String, PageError> {
    let r = field(fields, "reason").trim();
    if r.is_empty() {
        return Err(PageError::bad_request("a reason is required: it goes into the timeline and the audit log"));
    }
    Ok(r.to_string())
}

/// The posted transaction action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Commit,
    Rollback,
    Resume,
}

impl Decision {
    fn parse(s: &str) -> Result<Self, PageError> {
        match s {
            "commit" => Ok(Decision::Commit),
            "rollback" => Ok(Decision::Rollback),
            "resume" => Ok(Decision::Resume),
            other => Err(PageError::bad_request(format!("unknown action {other:?}"))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Rollback => "rollback",
            Decision::Resume => "resume",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Decision::Commit => "Commit",
            Decision::Rollback => "Roll back",
            Decision::Resume => "Resume checks of",
        }
    }
}

/// Applies `decision` to transaction `id`; the admin status on failure.
async fn apply(
    admin: &mut crate::admin::Admin,
    actor: &str,
    id: &str,
    decision: Decision,
    reason: &str,
) -> Result<pb::Transaction, PageError> {
    let (status, txn) = match decision {
        Decision::Commit | Decision::Rollback => {
            let r = admin
                .resolve_transaction(pb::ResolveTransactionRequest {
                    id: id.to_string(),
                    commit: decision == Decision::Commit,
                    reason: reason.to_string(),
                    actor: actor.to_string(),
                })
                .await?
                .into_inner();
            (r.status, r.transaction)
        }
        Decision::Resume => {
            let r = admin
                .resume_transaction(pb::ResumeTransactionRequest {
                    id: id.to_string(),
                    reason: reason.to_string(),
                    actor: actor.to_string(),
                })
                .await?
                .into_inner();
            (r.status, r.transaction)
        }
    };
    checked(status)?;
    txn.ok_or_else(|| PageError::broker("the broker answered without the transaction".into()))
}

/// Hidden inputs carrying `fields` (but `confirm`) into the confirmation form.
fn carried(fields: &Fields) -> Markup {
    html! {
        @for (k, v) in fields.iter().filter(|(k, _)| k != "confirm" && k != "action") {
            input type="hidden" name=(k) value=(v);
        }
    }
}

/// A posted transaction decision from this console, with its required reason.
fn posted_decision(headers: &HeaderMap, fields: &Fields) -> Result<(Decision, String), PageError> {
    same_origin(headers)?;
    Ok((Decision::parse(field(fields, "action"))?, reason(fields)?))
}

/// POST /transactions/{id}/action: commit, rollback or resume one transaction.
pub async fn decide(
    State(console): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    let (decision, reason) = posted_decision(&headers, &fields)?;
    if field(&fields, "confirm") != "yes" {
        let content = html! {
            p.notice { (decision.verb()) " transaction " code { (id) } " with the reason: " em { (reason) } }
            form.action method="post" action=(format!("/transactions/{}/action", enc(&id))) {
                (carried(&fields))
                input type="hidden" name="confirm" value="yes";
                button.(if decision == Decision::Rollback { "rollback" } else { "commit" }) type="submit" name="action" value=(decision.name()) { "Yes, " (decision.name()) }
                " "
                a href=(format!("/transactions/{}", enc(&id))) { "Cancel" }
            }
        };
        return Ok(page("Confirm", "/transactions", content).into_response());
    }
    let mut admin = console.admin().await?;
    apply(&mut admin, &console.actor, &id, decision, &reason).await?;
    Ok(Redirect::to(&format!("/transactions/{}", enc(&id))).into_response())
}

/// POST /transactions-bulk: first a dry run (the transactions the filter selects now), then,
/// confirmed, the action on exactly those.
pub async fn bulk(
    State(console): State<Shared>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    let (decision, reason) = posted_decision(&headers, &fields)?;
    let mut admin = console.admin().await?;
    if field(&fields, "confirm") != "yes" {
        let filter = InboxFilter {
            topic: field(&fields, "topic").into(),
            why: field(&fields, "why").into(),
            older_than_min: field(&fields, "older_than_min").into(),
        };
        let selected = select(&mut admin, &filter).await?;
        let content = html! {
            p.notice #dry-run { "Dry run: " strong #count { (selected.len()) } " transactions match now. " (decision.verb()) " them with the reason: " em { (reason) } }
            @if !selected.is_empty() {
                form.action method="post" action="/transactions-bulk" {
                    input type="hidden" name="reason" value=(reason);
                    input type="hidden" name="confirm" value="yes";
                    @for (t, _) in &selected { input type="hidden" name="id" value=(t.id); }
                    button type="submit" name="action" value=(decision.name()) { "Yes, " (decision.name()) " these " (selected.len()) }
                    " "
                    a href="/transactions" { "Cancel" }
                }
                table { tbody { @for (t, why) in &selected { tr { td.mono { (t.id) } td { (t.topic) } td { (why.label()) } } } } }
            }
        };
        return Ok(page("Confirm a bulk action", "/transactions", content).into_response());
    }
    let mut results = Vec::new();
    for id in all(&fields, "id") {
        let outcome = match apply(&mut admin, &console.actor, id, decision, &reason).await {
            Ok(t) => state_name(t.state).to_string(),
            Err(e) => format!("refused: {}", e.message),
        };
        results.push((id.to_string(), outcome));
    }
    let content = html! {
        p.notice { (decision.verb()) ": " (results.len()) " transactions." }
        table { thead { tr { th { "Transaction" } th { "Outcome" } } }
            tbody { @for (id, outcome) in &results { tr { td.mono { a href=(format!("/transactions/{}", enc(id))) { (id) } } td { (outcome) } } } } }
        p { a href="/transactions" { "Back to the in-doubt transactions" } }
    };
    Ok(page("Bulk action done", "/transactions", content).into_response())
}

/// POST /dead-letters/resend: the selected dead letters of a group, or all not resent yet;
/// counted first (the broker's dry run), resent once confirmed.
pub async fn resend(
    State(console): State<Shared>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    same_origin(&headers)?;
    let group = field(&fields, "group").to_string();
    let reason = reason(&fields)?;
    let every = field(&fields, "scope") == "all";
    let ids: Vec<String> = if every { Vec::new() } else { all(&fields, "id").map(str::to_string).collect() };
    if !every && ids.is_empty() {
        return Err(PageError::bad_request("select the dead letters to resend, or resend all"));
    }
    let confirmed = field(&fields, "confirm") == "yes";
    let mut admin = console.admin().await?;
    let r = admin
        .resend_dead_letters(pb::ResendDeadLettersRequest {
            group: group.clone(),
            message_ids: ids,
            all: every,
            reason: reason.clone(),
            actor: console.actor.clone(),
            dry_run: !confirmed,
        })
        .await?
        .into_inner();
    checked(r.status)?;
    let content = if confirmed {
        html! {
            p.notice { "Resent " (r.resent) " dead letters to group " (group) "." }
            p { a href=(format!("/groups/{}", enc(&group))) { "The group" } " · " a href=(format!("/dead-letters?group={}", enc(&group))) { "Its dead letters" } }
        }
    } else {
        html! {
            p.notice #dry-run { "Dry run: " strong #count { (r.resent) } " dead letters of " (group) " would be resent, with the reason: " em { (reason) } }
            form.action method="post" action="/dead-letters/resend" {
                (carried(&fields))
                input type="hidden" name="confirm" value="yes";
                button type="submit" { "Yes, resend them" }
                " "
                a href=(format!("/dead-letters?group={}", enc(&group))) { "Cancel" }
            }
        }
    };
    Ok(page("Resend dead letters", "/dead-letters", content).into_response())
}
