//! `txmq msg`: find stored messages by id or by key.

use crate::admin::{check, connect};
use crate::output::{table, time, Output};
use clap::Subcommand;
use serde::Serialize;
use std::collections::BTreeMap;
use txmq_proto::admin as pb;

#[derive(Debug, Subcommand)]
pub enum MsgCommand {
    /// Show a message by id (searched in every topic unless --topic is given).
    Show {
        message_id: String,
        #[arg(long)]
        topic: Option<String>,
    },
    /// Find messages of a topic by key.
    Find {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        key: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Serialize)]
pub struct MessageView {
    topic: String,
    queue: u32,
    offset: u64,
    message_id: String,
    message_type: String,
    tag: String,
    keys: Vec<String>,
    message_group: String,
    born_at_ms: i64,
    born_host: String,
    stored_at_ms: i64,
    deliver_at_ms: i64,
    properties: BTreeMap<String, String>,
    body_size: u32,
    body_preview: String,
    producer: String,
    origin_topic: String,
    /// Dead letters: when an operator last resent it (0: never).
    resent_at_ms: i64,
    /// Delay messages: when its producer recalled it (0: never).
    recalled_at_ms: i64,
    body_gzip: bool,
    /// PRIORITY messages: the priority (-1: none).
    priority: i32,
    /// In a cluster: the node that stores it (its queue numbers are that node's).
    #[serde(skip_serializing_if = "String::is_empty")]
    node: String,
}

impl From<pb::StoredMessage> for MessageView {
    fn from(m: pb::StoredMessage) -> Self {
        MessageView {
            topic: m.topic,
            queue: m.queue,
            offset: m.offset,
            message_id: m.message_id,
            message_type: m.message_type,
            tag: m.tag,
            keys: m.keys,
            message_group: m.message_group,
            born_at_ms: m.born_at_ms,
            born_host: m.born_host,
            stored_at_ms: m.stored_at_ms,
            deliver_at_ms: m.deliver_at_ms,
            properties: m.properties.into_iter().collect(),
            body_size: m.body_size,
            body_preview: m.body_preview,
            producer: m.producer,
            origin_topic: m.origin_topic,
            resent_at_ms: m.resent_at_ms,
            recalled_at_ms: m.recalled_at_ms,
            body_gzip: m.body_gzip,
            priority: m.priority,
            node: m.node,
        }
    }
}

/// A table of messages.
pub fn render_messages(ms: &[MessageView]) -> String {
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            vec![
                m.message_id.clone(),
                m.topic.clone(),
                if m.node.is_empty() {
                    format!("{}:{}", m.queue, m.offset)
                } else {
                    format!("{}/{}:{}", m.node, m.queue, m.offset)
                },
                if m.tag.is_empty() { "-".into() } else { m.tag.clone() },
                time(m.stored_at_ms),
                m.body_size.to_string(),
                if m.origin_topic.is_empty() { "-".into() } else { m.origin_topic.clone() },
                if m.resent_at_ms == 0 { "-".into() } else { time(m.resent_at_ms) },
            ]
        })
        .collect();
    table(&["MESSAGE-ID", "TOPIC", "QUEUE:OFFSET", "TAG", "STORED", "BYTES", "ORIGIN", "RESENT"], &rows)
}

fn render_one(m: &MessageView) -> String {
    let mut s = format!(
        "message {}\n  topic:    {} (queue {}, offset {})\n  type:     {}\n  tag:      {}\n  keys:     {}\n  born:     {} on {}\n  stored:   {} from {}\n  body:     {} bytes\n",
        m.message_id,
        m.topic,
        m.queue,
        m.offset,
        m.message_type,
        if m.tag.is_empty() { "-" } else { &m.tag },
        if m.keys.is_empty() { "-".to_string() } else { m.keys.join(",") },
        time(m.born_at_ms),
        m.born_host,
        time(m.stored_at_ms),
        m.producer,
        m.body_size,
    );
    if !m.node.is_empty() {
        s.push_str(&format!("  node:     {}\n", m.node));
    }
    if !m.message_group.is_empty() {
        s.push_str(&format!("  group:    {}\n", m.message_group));
    }
    if m.deliver_at_ms > 0 {
        s.push_str(&format!("  deliver:  {}\n", time(m.deliver_at_ms)));
    }
    if m.recalled_at_ms > 0 {
        s.push_str(&format!("  recalled: {} (never delivered)\n", time(m.recalled_at_ms)));
    }
    if m.body_gzip {
        s.push_str("  encoding: gzip\n");
    }
    if m.priority >= 0 {
        s.push_str(&format!("  priority: {}\n", m.priority));
    }
    for (k, v) in &m.properties {
        s.push_str(&format!("  property: {k}={v}\n"));
    }
    if !m.body_preview.is_empty() {
        s.push_str(&format!("  preview:  {}\n", m.body_preview));
    }
    s
}

pub async fn run(broker: &str, cmd: MsgCommand, out: Output) -> anyhow::Result<()> {
    let mut c = connect(broker).await?;
    match cmd {
        MsgCommand::Show { message_id, topic } => {
            let req = pb::FindMessagesRequest {
                topic: topic.unwrap_or_default(),
                message_id: message_id.clone(),
                key: String::new(),
                limit: 10,
            };
            let r = c.find_messages(req).await?.into_inner();
            check(r.status)?;
            let ms: Vec<MessageView> = r.messages.into_iter().map(MessageView::from).collect();
            if ms.is_empty() {
                anyhow::bail!("NOT_FOUND: no stored message with id {message_id}");
            }
            out.emit(&ms, || ms.iter().map(render_one).collect::<Vec<_>>().join("\n"))
        }
        MsgCommand::Find { topic, key, limit } => {
            let r = c
                .find_messages(pb::FindMessagesRequest { topic, message_id: String::new(), key, limit })
                .await?
                .into_inner();
            check(r.status)?;
            let ms: Vec<MessageView> = r.messages.into_iter().map(MessageView::from).collect();
            out.emit(&ms, || render_messages(&ms))
        }
    }
}
