//! The whole schema of the store: one [`Key`] enum, encoded so that byte order is key order.
//!
//! Every key starts with a one-byte tag naming its kind, then its fields in order (numbers
//! big-endian, strings in the ordered form of [`crate::codec`]). Because all fields are
//! self-delimiting, a key's encoding followed by more fields never collides with another key,
//! and the fields of a prefix select a contiguous range (`Key::…_prefix` helpers).
//!
//! Tags are stable on disk: never reuse or renumber one. `0xFF` is never a tag: the sled store
//! keeps its own keys under it.

use crate::codec::{invalid, CodecError, Decoder, Encoder};

/// A key of the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// Broker metadata such as the schema version.
    Meta(String),
    /// A topic's configuration.
    Topic(String),
    /// One chunk of a stored message: records are split into chunks so that no sled value
    /// grows large enough to leave sled's fsynced log (see `store::chunks`).
    MessageChunk { topic: String, queue: u32, offset: u64, chunk: u16 },
    /// `(topic, message id)` → `(queue, offset)`: makes sends idempotent and ids searchable.
    MessageId { topic: String, message_id: String },
    /// Secondary index: a message key (business id) → the messages carrying it.
    MessageKey { topic: String, key: String, queue: u32, offset: u64 },
    /// A delay message its producer recalled before its delivery time → when. The message
    /// stays stored (for lookups) until retention, and is never delivered.
    Recalled { topic: String, queue: u32, offset: u64 },
    /// A lite topic of a LITE topic → its queue in the topic and when it was created.
    LiteTopic { topic: String, lite: String },
    /// The lowest offset of a queue that retention has not deleted → that offset. Written with
    /// every deletion by retention, so that a queue it emptied keeps its offsets across a
    /// restart (which otherwise reads them from the messages stored).
    QueueStart { topic: String, queue: u32 },
    /// A consumer group's configuration.
    Group(String),
    /// A group's next never-delivered offset in one queue.
    Cursor { group: String, topic: String, queue: u32 },
    /// A message delivered to a group (or deferred until its delivery time) and not yet acked.
    Inflight { group: String, topic: String, queue: u32, offset: u64 },
    /// A dead letter (in its `%DLQ%` topic) that an operator resent to its group → when.
    DeadLetterResent { topic: String, queue: u32, offset: u64 },
    /// A pull consumer group's committed offset in one queue (UpdateOffset) → the offset.
    PullOffset { group: String, topic: String, queue: u32 },
    /// A transaction's state and timeline.
    Txn(String),
    /// One chunk of a transaction's half message.
    HalfChunk { txn: String, chunk: u16 },
    /// `(topic, message id)` → transaction id: makes half sends idempotent.
    TxnByMessage { topic: String, message_id: String },
    /// Pending transactions by next check time: the check scheduler reads `..=now`.
    TxnDue { at: i64, txn: String },
    /// Resolved transactions by resolution time. No longer written: the purge walks the
    /// records in id (creation) order instead. Stores from before that keep these keys until
    /// their first start with the leaner indexes, which deletes them.
    TxnResolved { at: i64, txn: String },
    /// Parked transactions (state code 4) by creation time: `txn list --state parked` costs
    /// O(parked). Stores from before the leaner indexes also hold pending ones (state code 1),
    /// deleted at their first start; pending transactions are known from the due index.
    TxnOpen { state: u8, created_at: i64, txn: String },
    /// A user of the broker (authentication) with its secret (sealed when a key is given) and
    /// its access policy.
    User(String),
    /// An operator action, by time; `seq` orders those of one millisecond.
    Audit { at: i64, seq: u64 },
}

pub mod tag {
    pub const META: u8 = 0x01;
    pub const TOPIC: u8 = 0x02;
    pub const MESSAGE_CHUNK: u8 = 0x03;
    pub const MESSAGE_ID: u8 = 0x04;
    pub const MESSAGE_KEY: u8 = 0x05;
    pub const GROUP: u8 = 0x10;
    pub const CURSOR: u8 = 0x11;
    pub const INFLIGHT: u8 = 0x12;
    pub const DEAD_LETTER_RESENT: u8 = 0x13;
    pub const PULL_OFFSET: u8 = 0x14;
    pub const RECALLED: u8 = 0x06;
    pub const LITE_TOPIC: u8 = 0x07;
    pub const QUEUE_START: u8 = 0x08;
    pub const TXN: u8 = 0x20;
    pub const HALF_CHUNK: u8 = 0x21;
    pub const TXN_BY_MESSAGE: u8 = 0x22;
    pub const TXN_DUE: u8 = 0x23;
    pub const TXN_RESOLVED: u8 = 0x24;
    pub const TXN_OPEN: u8 = 0x25;
    pub const USER: u8 = 0x30;
    pub const AUDIT: u8 = 0x40;
}

/// Whether an encoded key is a `Key::MessageChunk` (the sled store keeps their values in its
/// value log).
pub fn is_message_chunk(key: &[u8]) -> bool {
    key.first() == Some(&tag::MESSAGE_CHUNK)
}

/// Whether an encoded key is a `MessageId` key, without decoding it.
pub fn is_message_id(key: &[u8]) -> bool {
    key.first() == Some(&tag::MESSAGE_ID)
}

impl Key {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(48);
        match self {
            Key::Meta(name) => e.u8(tag::META).ordered_str(name),
            Key::Topic(name) => e.u8(tag::TOPIC).ordered_str(name),
            Key::MessageChunk { topic, queue, offset, chunk } => {
                e.u8(tag::MESSAGE_CHUNK).ordered_str(topic).u32(*queue).u64(*offset).u16(*chunk)
            }
            Key::MessageId { topic, message_id } => e.u8(tag::MESSAGE_ID).ordered_str(topic).ordered_str(message_id),
            Key::Group(name) => e.u8(tag::GROUP).ordered_str(name),
            Key::Cursor { group, topic, queue } => e.u8(tag::CURSOR).ordered_str(group).ordered_str(topic).u32(*queue),
            Key::Inflight { group, topic, queue, offset } => {
                e.u8(tag::INFLIGHT).ordered_str(group).ordered_str(topic).u32(*queue).u64(*offset)
            }
            Key::Recalled { topic, queue, offset } => e.u8(tag::RECALLED).ordered_str(topic).u32(*queue).u64(*offset),
            Key::LiteTopic { topic, lite } => e.u8(tag::LITE_TOPIC).ordered_str(topic).ordered_str(lite),
            Key::QueueStart { topic, queue } => e.u8(tag::QUEUE_START).ordered_str(topic).u32(*queue),
            Key::PullOffset { group, topic, queue } => {
                e.u8(tag::PULL_OFFSET).ordered_str(group).ordered_str(topic).u32(*queue)
            }
            Key::DeadLetterResent { topic, queue, offset } => {
                e.u8(tag::DEAD_LETTER_RESENT).ordered_str(topic).u32(*queue).u64(*offset)
            }
            Key::Txn(id) => e.u8(tag::TXN).ordered_str(id),
            Key::HalfChunk { txn, chunk } => e.u8(tag::HALF_CHUNK).ordered_str(txn).u16(*chunk),
            Key::TxnByMessage { topic, message_id } => {
                e.u8(tag::TXN_BY_MESSAGE).ordered_str(topic).ordered_str(message_id)
            }
            Key::TxnDue { at, txn } => e.u8(tag::TXN_DUE).i64(*at).ordered_str(txn),
            Key::TxnResolved { at, txn } => e.u8(tag::TXN_RESOLVED).i64(*at).ordered_str(txn),
            Key::TxnOpen { state, created_at, txn } => e.u8(tag::TXN_OPEN).u8(*state).i64(*created_at).ordered_str(txn),
            Key::User(name) => e.u8(tag::USER).ordered_str(name),
            Key::Audit { at, seq } => e.u8(tag::AUDIT).i64(*at).u64(*seq),
            Key::MessageKey { topic, key, queue, offset } => {
                e.u8(tag::MESSAGE_KEY).ordered_str(topic).ordered_str(key).u32(*queue).u64(*offset)
            }
        };
        e.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Key, CodecError> {
        let mut d = Decoder::new(bytes);
        let key = match d.u8()? {
            tag::META => Key::Meta(d.ordered_str()?),
            tag::TOPIC => Key::Topic(d.ordered_str()?),
            tag::MESSAGE_CHUNK => {
                Key::MessageChunk { topic: d.ordered_str()?, queue: d.u32()?, offset: d.u64()?, chunk: d.u16()? }
            }
            tag::MESSAGE_ID => Key::MessageId { topic: d.ordered_str()?, message_id: d.ordered_str()? },
            tag::MESSAGE_KEY => {
                Key::MessageKey { topic: d.ordered_str()?, key: d.ordered_str()?, queue: d.u32()?, offset: d.u64()? }
            }
            tag::GROUP => Key::Group(d.ordered_str()?),
            tag::CURSOR => Key::Cursor { group: d.ordered_str()?, topic: d.ordered_str()?, queue: d.u32()? },
            tag::INFLIGHT => {
                Key::Inflight { group: d.ordered_str()?, topic: d.ordered_str()?, queue: d.u32()?, offset: d.u64()? }
            }
            tag::RECALLED => Key::Recalled { topic: d.ordered_str()?, queue: d.u32()?, offset: d.u64()? },
            tag::LITE_TOPIC => Key::LiteTopic { topic: d.ordered_str()?, lite: d.ordered_str()? },
            tag::QUEUE_START => Key::QueueStart { topic: d.ordered_str()?, queue: d.u32()? },
            tag::PULL_OFFSET => Key::PullOffset { group: d.ordered_str()?, topic: d.ordered_str()?, queue: d.u32()? },
            tag::DEAD_LETTER_RESENT => {
                Key::DeadLetterResent { topic: d.ordered_str()?, queue: d.u32()?, offset: d.u64()? }
            }
            tag::TXN => Key::Txn(d.ordered_str()?),
            tag::HALF_CHUNK => Key::HalfChunk { txn: d.ordered_str()?, chunk: d.u16()? },
            tag::TXN_BY_MESSAGE => Key::TxnByMessage { topic: d.ordered_str()?, message_id: d.ordered_str()? },
            tag::TXN_DUE => Key::TxnDue { at: d.i64()?, txn: d.ordered_str()? },
            tag::TXN_RESOLVED => Key::TxnResolved { at: d.i64()?, txn: d.ordered_str()? },
            tag::TXN_OPEN => Key::TxnOpen { state: d.u8()?, created_at: d.i64()?, txn: d.ordered_str()? },
            tag::USER => Key::User(d.ordered_str()?),
            tag::AUDIT => Key::Audit { at: d.i64()?, seq: d.u64()? },
            other => return Err(invalid("key tag", other)),
        };
        d.finish()?;
        Ok(key)
    }

    /// All keys of one kind: `[tag]`.
    pub fn topic_prefix() -> Vec<u8> {
        vec![tag::TOPIC]
    }

    pub fn group_prefix() -> Vec<u8> {
        vec![tag::GROUP]
    }

    pub fn txn_prefix() -> Vec<u8> {
        vec![tag::TXN]
    }

    pub fn txn_due_prefix() -> Vec<u8> {
        vec![tag::TXN_DUE]
    }

    pub fn txn_resolved_prefix() -> Vec<u8> {
        vec![tag::TXN_RESOLVED]
    }

    /// Open transactions in one state (by its record code), oldest first.
    pub fn txn_open_prefix(state: u8) -> Vec<u8> {
        vec![tag::TXN_OPEN, state]
    }

    pub fn user_prefix() -> Vec<u8> {
        vec![tag::USER]
    }

    /// The audit log, oldest first.
    pub fn audit_prefix() -> Vec<u8> {
        vec![tag::AUDIT]
    }

    /// Every key of the same kind as this one (its tag byte): for counting keys in tests and
    /// tools.
    pub fn kind_prefix(&self) -> Vec<u8> {
        self.encode()[..1].to_vec()
    }

    /// All chunks of one half message.
    pub fn half_prefix(txn: &str) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(tag::HALF_CHUNK).ordered_str(txn);
        e.finish()
    }

    /// Every message carrying `key` in `topic`.
    pub fn message_key_prefix(topic: &str, key: &str) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(tag::MESSAGE_KEY).ordered_str(topic).ordered_str(key);
        e.finish()
    }

    /// Every recall mark.
    pub fn recalled_prefix() -> Vec<u8> {
        vec![tag::RECALLED]
    }

    /// Every lite topic of every topic.
    pub fn lite_topic_prefix() -> Vec<u8> {
        vec![tag::LITE_TOPIC]
    }

    /// Every pull offset of every group.
    pub fn pull_offset_prefix() -> Vec<u8> {
        vec![tag::PULL_OFFSET]
    }

    /// Every cursor of one group.
    pub fn cursor_prefix(group: &str) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(tag::CURSOR).ordered_str(group);
        e.finish()
    }

    /// Every in-flight record of one group.
    pub fn inflight_prefix(group: &str) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(tag::INFLIGHT).ordered_str(group);
        e.finish()
    }

    /// All chunks of one queue's messages.
    pub fn queue_prefix(topic: &str, queue: u32) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(tag::MESSAGE_CHUNK).ordered_str(topic).u32(queue);
        e.finish()
    }

    /// All chunks of one message.
    pub fn message_prefix(topic: &str, queue: u32, offset: u64) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(tag::MESSAGE_CHUNK).ordered_str(topic).u32(queue).u64(offset);
        e.finish()
    }
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when no such bound exists (a prefix of only `0xFF`s): the exclusive end of a prefix range.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_key() -> impl Strategy<Value = Key> {
        let s = "[a-z%\\x00_-]{0,12}";
        prop_oneof![
            s.prop_map(Key::Meta),
            s.prop_map(Key::Topic),
            (s, any::<u32>(), any::<u64>(), any::<u16>())
                .prop_map(|(topic, queue, offset, chunk)| { Key::MessageChunk { topic, queue, offset, chunk } }),
            (s, s).prop_map(|(topic, message_id)| Key::MessageId { topic, message_id }),
            s.prop_map(Key::Group),
            s.prop_map(Key::User),
            (any::<i64>(), any::<u64>()).prop_map(|(at, seq)| Key::Audit { at, seq }),
            (s, any::<u32>(), any::<u64>()).prop_map(|(topic, queue, offset)| Key::Recalled { topic, queue, offset }),
            (s, s).prop_map(|(topic, lite)| Key::LiteTopic { topic, lite }),
            (s, any::<u32>()).prop_map(|(topic, queue)| Key::QueueStart { topic, queue }),
            (s, s, any::<u32>()).prop_map(|(group, topic, queue)| Key::PullOffset { group, topic, queue }),
            (s, s, any::<u32>()).prop_map(|(group, topic, queue)| Key::Cursor { group, topic, queue }),
            (s, s, any::<u32>(), any::<u64>())
                .prop_map(|(group, topic, queue, offset)| { Key::Inflight { group, topic, queue, offset } }),
            (s, any::<u32>(), any::<u64>()).prop_map(|(topic, queue, offset)| Key::DeadLetterResent {
                topic,
                queue,
                offset
            }),
            s.prop_map(Key::Txn),
            (s, any::<u16>()).prop_map(|(txn, chunk)| Key::HalfChunk { txn, chunk }),
            (s, s).prop_map(|(topic, message_id)| Key::TxnByMessage { topic, message_id }),
            (any::<i64>(), s).prop_map(|(at, txn)| Key::TxnDue { at, txn }),
            (any::<i64>(), s).prop_map(|(at, txn)| Key::TxnResolved { at, txn }),
            (any::<u8>(), any::<i64>(), s).prop_map(|(state, created_at, txn)| Key::TxnOpen { state, created_at, txn }),
            (s, s, any::<u32>(), any::<u64>()).prop_map(|(topic, key, queue, offset)| Key::MessageKey {
                topic,
                key,
                queue,
                offset
            }),
        ]
    }

    proptest! {
        #[test]
        fn keys_roundtrip(k in any_key()) {
            prop_assert_eq!(Key::decode(&k.encode()).unwrap(), k);
        }

        #[test]
        fn encoding_preserves_order(a in any_key(), b in any_key()) {
            prop_assert_eq!(a.cmp(&b), a.encode().cmp(&b.encode()));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Key::decode(&bytes);
        }
    }

    #[test]
    fn message_chunks_sit_inside_their_prefixes() {
        let k = Key::MessageChunk { topic: "t".into(), queue: 3, offset: 9, chunk: 2 }.encode();
        for prefix in [Key::queue_prefix("t", 3), Key::message_prefix("t", 3, 9)] {
            assert!(k.starts_with(&prefix));
            assert!(k < prefix_end(&prefix).unwrap());
        }
        assert!(!k.starts_with(&Key::queue_prefix("t", 4)));
        assert!(!k.starts_with(&Key::queue_prefix("t\0", 3)));
    }

    #[test]
    fn prefix_end_carries_over_ff() {
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
