//! `txmq user` and `txmq acl`: the broker's users and their access policies.
//!
//! Secrets are never flags (they would land in shell history and `ps`): `user create` reads the
//! new user's secret from `TXMQ_NEW_USER_SECRET`, or from the first line of standard input.
//! Listings never show a secret (the broker does not send them).

use crate::admin::{check, connect};
use crate::output::{table, Output};
use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;
use txmq_proto::admin as pb;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; its secret comes from TXMQ_NEW_USER_SECRET or standard input.
    Create {
        /// The user's name: the access key its clients sign with.
        name: String,
        /// super (bypasses policies, may use the admin API) or normal.
        #[arg(long = "type", default_value = "normal")]
        user_type: String,
    },
    /// List users and their policies.
    List,
    /// Delete a user: its requests fail from now on.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow (or with --deny, deny) actions on a resource to a user.
    Grant {
        user: String,
        /// Topic:NAME, Topic:PREFIX*, Group:NAME, Group:PREFIX*, Cluster:* (admin API) or *.
        resource: String,
        /// Pub, Sub, Admin or All (comma-separated).
        actions: String,
        /// A deny entry instead of an allow entry.
        #[arg(long)]
        deny: bool,
        /// Only from these networks (CIDR); repeat for several.
        #[arg(long = "source")]
        sources: Vec<String>,
    },
    /// Remove actions from a user's entries for a resource.
    Revoke { user: String, resource: String, actions: String },
    /// List the policy entries of every user (or of one).
    List { user: Option<String> },
}

#[derive(Serialize)]
struct EntryView {
    user: String,
    resource: String,
    actions: String,
    decision: &'static str,
    sources: Vec<String>,
}

#[derive(Serialize)]
struct UserView {
    name: String,
    #[serde(rename = "type")]
    user_type: String,
    created_at_ms: i64,
    entries: usize,
}

fn new_user_secret() -> anyhow::Result<String> {
    if let Ok(s) = std::env::var("TXMQ_NEW_USER_SECRET") {
        return Ok(s);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the secret from standard input")?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("give the new user's secret in TXMQ_NEW_USER_SECRET or on standard input");
    }
    Ok(secret)
}

pub async fn user(broker: &str, cmd: UserCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        UserCommand::Create { name, user_type } => {
            let secret = new_user_secret()?;
            let r = c.create_user(pb::CreateUserRequest { name: name.clone(), secret, r#type: user_type }).await?;
            check(r.into_inner().status)?;
            out.emit(&serde_json::json!({ "created": name }), || format!("created user {name}\n"))
        }
        UserCommand::Delete { name } => {
            check(c.delete_user(pb::DeleteUserRequest { name: name.clone() }).await?.into_inner().status)?;
            out.emit(&serde_json::json!({ "deleted": name }), || format!("deleted user {name}\n"))
        }
        UserCommand::List => {
            let r = c.list_users(pb::ListUsersRequest {}).await?.into_inner();
            check(r.status)?;
            let users: Vec<UserView> = r
                .users
                .iter()
                .map(|u| UserView {
                    name: u.name.clone(),
                    user_type: u.r#type.clone(),
                    created_at_ms: u.created_at,
                    entries: u.policy.len(),
                })
                .collect();
            out.emit(&users, || {
                let rows: Vec<Vec<String>> =
                    users.iter().map(|u| vec![u.name.clone(), u.user_type.clone(), u.entries.to_string()]).collect();
                table(&["NAME", "TYPE", "POLICY-ENTRIES"], &rows)
            })
        }
    }
}

pub async fn acl(broker: &str, cmd: AclCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        AclCommand::Grant { user, resource, actions, deny, sources } => {
            let entry = pb::AclEntry { resource: resource.clone(), actions: actions.clone(), allow: !deny, sources };
            let r = c.grant_acl(pb::GrantAclRequest { user: user.clone(), entry: Some(entry) }).await?;
            check(r.into_inner().status)?;
            let verb = if deny { "denied" } else { "allowed" };
            out.emit(&serde_json::json!({ "user": user, "resource": resource, "actions": actions, verb: true }), || {
                format!("{verb} {actions} on {resource} to {user}\n")
            })
        }
        AclCommand::Revoke { user, resource, actions } => {
            let r = c
                .revoke_acl(pb::RevokeAclRequest {
                    user: user.clone(),
                    resource: resource.clone(),
                    actions: actions.clone(),
                })
                .await?;
            check(r.into_inner().status)?;
            out.emit(&serde_json::json!({ "user": user, "resource": resource, "revoked": actions }), || {
                format!("revoked {actions} on {resource} from {user}\n")
            })
        }
        AclCommand::List { user } => {
            let r = c.list_users(pb::ListUsersRequest {}).await?.into_inner();
            check(r.status)?;
            if let Some(u) = &user {
                if !r.users.iter().any(|x| &x.name == u) {
                    bail!("no user {u}");
                }
            }
            let entries: Vec<EntryView> = r
                .users
                .iter()
                .filter(|u| user.as_ref().is_none_or(|x| x == &u.name))
                .flat_map(|u| {
                    u.policy.iter().map(|e| EntryView {
                        user: u.name.clone(),
                        resource: e.resource.clone(),
                        actions: e.actions.clone(),
                        decision: if e.allow { "allow" } else { "deny" },
                        sources: e.sources.clone(),
                    })
                })
                .collect();
            out.emit(&entries, || {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        let sources = if e.sources.is_empty() { "any".into() } else { e.sources.join(",") };
                        vec![e.user.clone(), e.resource.clone(), e.actions.clone(), e.decision.into(), sources]
                    })
                    .collect();
                table(&["USER", "RESOURCE", "ACTIONS", "DECISION", "SOURCES"], &rows)
            })
        }
    }
}
