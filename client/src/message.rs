//! Messages to send, messages received, and receipts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use txmq_proto::v2;

/// A message to send. Build it with [`Message::new`] and the `with_*` methods.
///
/// ```
/// use txmq_client::Message;
/// let m = Message::new("orders", b"order 42 created".to_vec()).with_tag("created").with_key("order-42");
/// assert_eq!(m.topic(), "orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) topic: String,
    pub(crate) body: Vec<u8>,
    pub(crate) tag: Option<String>,
    pub(crate) keys: Vec<String>,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) message_group: Option<String>,
    pub(crate) deliver_at: Option<SystemTime>,
    pub(crate) id: Option<String>,
    pub(crate) check_after: Option<Duration>,
}

impl Message {
    /// A normal message for `topic`.
    pub fn new(topic: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            body: body.into(),
            tag: None,
            keys: Vec::new(),
            properties: BTreeMap::new(),
            message_group: None,
            deliver_at: None,
            id: None,
            check_after: None,
        }
    }

    /// Sets the tag consumers filter on.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Adds a key (a business id, searchable with `txmq msg find`).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Adds a user property.
    pub fn with_property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.properties.insert(k.into(), v.into());
        self
    }

    /// Makes it a FIFO message: messages of one group are consumed in order.
    pub fn with_message_group(mut self, group: impl Into<String>) -> Self {
        self.message_group = Some(group.into());
        self
    }

    /// Makes it a delay message, delivered at `at`.
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver_at = Some(at);
        self
    }

    /// Makes it a delay message, delivered after `delay`.
    pub fn deliver_after(self, delay: Duration) -> Self {
        self.deliver_at(SystemTime::now() + delay)
    }

    /// Uses this message id instead of a generated one (sends are idempotent on it).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// For a transactional message: how long the broker waits for the commit or rollback
    /// before its first check-back (instead of the broker's `--txn-timeout`).
    pub fn with_check_after(mut self, wait: Duration) -> Self {
        self.check_after = Some(wait);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The keys.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The user properties.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// The message id set with [`Message::with_id`], if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub(crate) fn ensure_id(&mut self) -> String {
        self.id.get_or_insert_with(new_message_id).clone()
    }

    pub(crate) fn to_wire(&self, id: &str, transactional: bool) -> v2::Message {
        let ts = |t: SystemTime| {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
        };
        let message_type = if transactional {
            v2::MessageType::Transaction
        } else if self.deliver_at.is_some() {
            v2::MessageType::Delay
        } else if self.message_group.is_some() {
            v2::MessageType::Fifo
        } else {
            v2::MessageType::Normal
        };
        v2::Message {
            topic: crate::transport::resource(&self.topic),
            user_properties: self.properties.clone().into_iter().collect(),
            system_properties: Some(v2::SystemProperties {
                tag: self.tag.clone(),
                keys: self.keys.clone(),
                message_id: id.to_string(),
                body_encoding: v2::Encoding::Identity as i32,
                message_type: message_type as i32,
                born_timestamp: Some(ts(SystemTime::now())),
                born_host: std::env::var("HOSTNAME").unwrap_or_else(|_| "txmq-client".into()),
                message_group: if transactional { None } else { self.message_group.clone() },
                delivery_timestamp: if transactional { None } else { self.deliver_at.map(ts) },
                orphaned_transaction_recovery_duration: if transactional {
                    self.check_after.map(crate::transport::wire_duration)
                } else {
                    None
                },
                ..Default::default()
            }),
            body: self.body.clone(),
        }
    }
}

static ID_SEQ: AtomicU32 = AtomicU32::new(0);

/// A new message id: 34 upper-case hex characters like the official clients' (version byte,
/// process, seconds since 2021, sequence), unique per process and time.
pub fn new_message_id() -> String {
    let secs =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).saturating_sub(1_609_459_200);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!(
        "01{:012X}{:04X}{:08X}{:08X}",
        (u64::from(nanos) << 16) ^ u64::from(std::process::id()),
        std::process::id() & 0xFFFF,
        secs as u32,
        ID_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a successful send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message id (consumers see the same id).
    pub message_id: String,
    /// Queue offset (0 for half messages).
    pub offset: u64,
}

/// A message delivered to a consumer.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Topic it was received from.
    pub topic: String,
    /// Message id given by the producer.
    pub message_id: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: BTreeMap<String, String>,
    /// FIFO message group, if any.
    pub message_group: Option<String>,
    /// 1 on the first delivery, then 2, 3, … after redeliveries.
    pub delivery_attempt: u32,
    /// The body.
    pub body: Vec<u8>,
    pub(crate) receipt_handle: String,
}

impl ReceivedMessage {
    pub(crate) fn from_wire(m: v2::Message) -> Self {
        let sp = m.system_properties.unwrap_or_default();
        ReceivedMessage {
            topic: m.topic.map(|t| t.name).unwrap_or_default(),
            message_id: sp.message_id,
            tag: sp.tag,
            keys: sp.keys,
            properties: m.user_properties.into_iter().collect(),
            message_group: sp.message_group,
            delivery_attempt: sp.delivery_attempt.unwrap_or(1).max(1) as u32,
            body: m.body,
            receipt_handle: sp.receipt_handle.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_34_hex_characters_and_unique() {
        let (a, b) = (new_message_id(), new_message_id());
        assert_eq!(a.len(), 34);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn wire_types_follow_the_builder() {
        let fifo = Message::new("t", "x").with_message_group("g").to_wire("id", false);
        assert_eq!(fifo.system_properties.unwrap().message_type, v2::MessageType::Fifo as i32);
        let txn = Message::new("t", "x").with_message_group("g").to_wire("id", true);
        let sp = txn.system_properties.unwrap();
        assert_eq!(sp.message_type, v2::MessageType::Transaction as i32);
        assert_eq!(sp.message_group, None);
    }
}
