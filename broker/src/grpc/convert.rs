//! Conversions between wire messages and the broker's own types, with edge validation.
//!
//! Every check a producer's message must pass lives in [`new_message`]; each failure names the
//! field and maps to the RocketMQ code a client expects (docs/protocol.md §1).

use crate::consume::lite::SyncAction;
use crate::consume::service::LiteStart;
use crate::error::{BrokerError, Result};
use crate::model::{MessageType, Millis, NewMessage, StoredMessage};
use crate::topics;
use std::collections::BTreeMap;
use txmq_proto::v2;

/// Limits applied to incoming messages.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_size: usize,
    pub max_delay_ms: i64,
}

/// Most user properties on one message (RocketMQ's `userPropertyMaxNum`).
pub const MAX_PROPERTIES: usize = 128;
/// Most bytes of properties, tag and keys together (RocketMQ's `maxUserPropertySize`).
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;
/// Longest message id we accept (clients send 34 hex characters).
pub const MAX_MESSAGE_ID_LEN: usize = 128;
/// Longest message group (RocketMQ's `maxMessageGroupSize`).
pub const MAX_MESSAGE_GROUP_LEN: usize = 64;
/// Most keys on one message.
pub const MAX_KEYS: usize = 64;
/// Longest `born_host` (a host name or address; DNS names are at most 253 bytes).
pub const MAX_BORN_HOST_LEN: usize = 255;
/// Longest `trace_context` (a W3C traceparent is 55 bytes; the reference allows about 1 KiB).
pub const MAX_TRACE_CONTEXT_LEN: usize = 1024;
/// Longest transaction recovery duration a producer may ask for.
pub const MAX_RECOVERY_MS: i64 = 3_600_000;

/// Property names RocketMQ reserves for its own bookkeeping; a user property may not use them.
const RESERVED_PROPERTY_KEYS: &[&str] = &[
    "KEYS",
    "TAGS",
    "WAIT",
    "DELAY",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "TRAN_MSG",
    "PGROUP",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "BUYER_ID",
    "ORIGIN_MESSAGE_ID",
    "TRANSFER_FLAG",
    "CORRECTION_FLAG",
    "MQ2_FLAG",
    "RECONSUME_TIME",
    "MSG_REGION",
    "TRACE_ON",
    "UNIQ_KEY",
    "MAX_RECONSUME_TIMES",
    "CONSUME_START_TIME",
    "__STARTDELIVERTIME",
    "TIMER_DELIVER_MS",
    "TIMER_DELAY_SEC",
    "TIMER_DELAY_MS",
    "TIMER_OUT_MS",
    "TIMER_ENQUEUE_MS",
    "TIMER_DEQUEUE_MS",
    "TIMER_ROLL_TIMES",
    "TIMER_DEL_UNIQKEY",
    "__SHARDINGKEY",
    "__transactionId__",
    "TRANSACTION_CHECK_TIMES",
    "CHECK_IMMUNITY_TIME_IN_SECONDS",
    "TRAN_PREPARED_QUEUE_OFFSET",
    "INNER_MULTI_DISPATCH",
    "INNER_MULTI_QUEUE_OFFSET",
    "INNER_NUM",
    "POP_CK",
    "POP_CK_OFFSET",
    "1ST_POP_TIME",
    "SHARDING_KEY",
    "CLUSTER",
    "INSTANCE_ID",
    "TRACE_CONTEXT",
    "DUP_INFO",
    "EXTEND_UNIQ_INFO",
];

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn millis(ts: &prost_types::Timestamp) -> Option<Millis> {
    ts.seconds.checked_mul(1000)?.checked_add(i64::from(ts.nanos) / 1_000_000)
}

pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// The topic name of a wire resource (namespaces are not used by txmq).
pub fn resource_name(r: Option<&v2::Resource>, what: &str) -> Result<String> {
    match r {
        Some(r) if !r.name.is_empty() => Ok(r.name.clone()),
        _ => Err(BrokerError::BadRequest(format!("{what} is missing"))),
    }
}

/// Validates a producer's message and converts it. `now` is the broker's clock.
pub fn new_message(m: v2::Message, limits: Limits, now: Millis) -> Result<NewMessage> {
    let topic = match &m.topic {
        Some(r) if !r.name.is_empty() => r.name.clone(),
        _ => return Err(BrokerError::IllegalTopic("message topic is missing".into())),
    };
    topics::validate_name(&topic)?;
    let sp = m.system_properties.ok_or_else(|| BrokerError::BadRequest("system_properties is missing".into()))?;

    let message_id = sp.message_id;
    if message_id.trim().is_empty() {
        return Err(BrokerError::IllegalMessageId("message id is empty".into()));
    }
    if message_id.len() > MAX_MESSAGE_ID_LEN || has_control(&message_id) {
        return Err(BrokerError::IllegalMessageId(format!(
            "message id must be at most {MAX_MESSAGE_ID_LEN} printable characters"
        )));
    }

    if m.body.is_empty() {
        // MESSAGE_BODY_EMPTY would crash the Rust 5.0.0 client; BAD_REQUEST is the safe answer.
        return Err(BrokerError::BadRequest("message body is empty".into()));
    }
    if m.body.len() > limits.max_body_size {
        return Err(BrokerError::BodyTooLarge { size: m.body.len(), limit: limits.max_body_size });
    }
    // GZIP bodies are stored and delivered as sent (the size limit applies to those bytes);
    // like RocketMQ's broker, we never decompress them.
    let body_gzip = match v2::Encoding::try_from(sp.body_encoding) {
        Ok(v2::Encoding::Identity | v2::Encoding::Unspecified) => false,
        Ok(v2::Encoding::Gzip) => true,
        Err(_) => return Err(BrokerError::BadRequest(format!("unknown body encoding {}", sp.body_encoding))),
    };

    let mut property_bytes = 0usize;
    if let Some(tag) = &sp.tag {
        if tag.trim().is_empty() || tag.contains('|') || has_control(tag) {
            return Err(BrokerError::IllegalTag(format!(
                "tag {tag:?} must be non-blank, without '|' or control characters"
            )));
        }
        property_bytes += tag.len();
    }
    if sp.keys.len() > MAX_KEYS {
        return Err(BrokerError::IllegalKey(format!("{} keys, the limit is {MAX_KEYS}", sp.keys.len())));
    }
    for key in &sp.keys {
        if key.trim().is_empty() || has_control(key) {
            return Err(BrokerError::IllegalKey(format!("key {key:?} must be non-blank, without control characters")));
        }
        property_bytes += key.len();
    }
    if let Some(group) = &sp.message_group {
        if group.trim().is_empty() || group.len() > MAX_MESSAGE_GROUP_LEN || has_control(group) {
            return Err(BrokerError::IllegalMessageGroup(format!(
                "message group must be 1 to {MAX_MESSAGE_GROUP_LEN} printable bytes"
            )));
        }
    }
    if m.user_properties.len() > MAX_PROPERTIES {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "{} user properties, the limit is {MAX_PROPERTIES}",
            m.user_properties.len()
        )));
    }
    let mut user_properties = BTreeMap::new();
    for (k, v) in m.user_properties {
        if k.trim().is_empty() || has_control(&k) || RESERVED_PROPERTY_KEYS.contains(&k.as_str()) {
            return Err(BrokerError::IllegalPropertyKey(format!(
                "property key {k:?} is empty, reserved or not printable"
            )));
        }
        property_bytes += k.len() + v.len();
        user_properties.insert(k, v);
    }
    if property_bytes > MAX_PROPERTIES_BYTES {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "properties, tag and keys take {property_bytes} bytes, the limit is {MAX_PROPERTIES_BYTES}"
        )));
    }

    // Every stored string ends up in each delivery: unbounded ones would let one message
    // outgrow the 4 MiB a client decodes and poison every receive that includes it.
    if sp.born_host.len() > MAX_BORN_HOST_LEN {
        return Err(BrokerError::BadRequest(format!(
            "born_host is {} bytes, the limit is {MAX_BORN_HOST_LEN}",
            sp.born_host.len()
        )));
    }
    if let Some(t) = sp.trace_context.as_ref().filter(|t| t.len() > MAX_TRACE_CONTEXT_LEN) {
        return Err(BrokerError::BadRequest(format!(
            "trace_context is {} bytes, the limit is {MAX_TRACE_CONTEXT_LEN}",
            t.len()
        )));
    }

    let delivery_timestamp = match &sp.delivery_timestamp {
        None => None,
        Some(ts) => {
            let at = millis(ts).ok_or_else(|| BrokerError::IllegalDeliveryTime("delivery time out of range".into()))?;
            if at > now.saturating_add(limits.max_delay_ms) {
                return Err(BrokerError::IllegalDeliveryTime(format!(
                    "delivery time is more than {} s ahead",
                    limits.max_delay_ms / 1000
                )));
            }
            Some(at)
        }
    };
    let recovery_duration_ms = match &sp.orphaned_transaction_recovery_duration {
        None => None,
        Some(d) => {
            let ms = d.seconds.saturating_mul(1000).saturating_add(i64::from(d.nanos) / 1_000_000);
            if !(0..=MAX_RECOVERY_MS).contains(&ms) {
                return Err(BrokerError::BadRequest("transaction recovery duration must be within 0..=3600 s".into()));
            }
            Some(ms)
        }
    };

    let message_type = message_type(sp.message_type, sp.message_group.is_some(), delivery_timestamp.is_some())?;
    // The range of a priority is its topic's queues; the broker checks it against the topic.
    let priority = match (message_type, sp.priority) {
        (MessageType::Priority, Some(p)) => {
            Some(u32::try_from(p).map_err(|_| BrokerError::BadRequest(format!("priority {p} is negative")))?)
        }
        (MessageType::Priority, None) => {
            return Err(BrokerError::TypeConflict("a PRIORITY message needs a priority".into()))
        }
        (_, Some(_)) => return Err(BrokerError::TypeConflict("only PRIORITY messages carry a priority".into())),
        (_, None) => None,
    };
    let lite_topic = match (message_type, sp.lite_topic) {
        (MessageType::Lite, Some(lite)) => {
            topics::validate_lite_name(&lite)?;
            Some(lite)
        }
        (MessageType::Lite, None) => return Err(BrokerError::TypeConflict("a LITE message needs a lite topic".into())),
        (_, Some(_)) => return Err(BrokerError::TypeConflict("only LITE messages carry a lite topic".into())),
        (_, None) => None,
    };
    Ok(NewMessage {
        topic,
        message_id,
        message_type,
        tag: sp.tag,
        keys: sp.keys,
        message_group: sp.message_group,
        born_timestamp: sp.born_timestamp.as_ref().and_then(millis).unwrap_or(now),
        born_host: sp.born_host,
        delivery_timestamp,
        trace_context: sp.trace_context,
        recovery_duration_ms,
        origin_topic: None,
        user_properties,
        body: m.body,
        body_gzip,
        priority,
        lite_topic,
    })
}

/// The declared type, checked against the fields that imply one; inferred when unspecified.
fn message_type(declared: i32, has_group: bool, has_delivery: bool) -> Result<MessageType> {
    let declared = v2::MessageType::try_from(declared)
        .map_err(|_| BrokerError::BadRequest(format!("unknown message type {declared}")))?;
    let t = match declared {
        v2::MessageType::Unspecified => match (has_group, has_delivery) {
            (true, true) => {
                return Err(BrokerError::TypeConflict(
                    "a message cannot have both a message group and a delivery time".into(),
                ))
            }
            (true, false) => MessageType::Fifo,
            (false, true) => MessageType::Delay,
            (false, false) => MessageType::Normal,
        },
        v2::MessageType::Normal => MessageType::Normal,
        v2::MessageType::Fifo => MessageType::Fifo,
        v2::MessageType::Delay => MessageType::Delay,
        v2::MessageType::Transaction => MessageType::Transaction,
        v2::MessageType::Priority => MessageType::Priority,
        v2::MessageType::Lite => MessageType::Lite,
    };
    let conflict =
        match t {
            MessageType::Normal => (has_group || has_delivery)
                .then_some("a NORMAL message has neither a message group nor a delivery time"),
            MessageType::Fifo => {
                (!has_group || has_delivery).then_some("a FIFO message needs a message group and no delivery time")
            }
            MessageType::Delay => {
                (!has_delivery || has_group).then_some("a DELAY message needs a delivery time and no message group")
            }
            MessageType::Transaction => (has_group || has_delivery)
                .then_some("a TRANSACTION message cannot have a message group or a delivery time"),
            MessageType::Priority => (has_group || has_delivery)
                .then_some("a PRIORITY message cannot have a message group or a delivery time"),
            MessageType::Lite => {
                (has_group || has_delivery).then_some("a LITE message cannot have a message group or a delivery time")
            }
        };
    match conflict {
        Some(why) => Err(BrokerError::TypeConflict(why.into())),
        None => Ok(t),
    }
}

pub fn wire_message_type(t: MessageType) -> v2::MessageType {
    match t {
        MessageType::Normal => v2::MessageType::Normal,
        MessageType::Fifo => v2::MessageType::Fifo,
        MessageType::Delay => v2::MessageType::Delay,
        MessageType::Transaction => v2::MessageType::Transaction,
        MessageType::Priority => v2::MessageType::Priority,
        MessageType::Lite => v2::MessageType::Lite,
    }
}

/// A stored message as clients receive it (delivery fields are set by the caller).
pub fn wire_message(s: &StoredMessage) -> v2::Message {
    let m = &s.msg;
    v2::Message {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: m.topic.clone() }),
        user_properties: m.user_properties.clone().into_iter().collect(),
        system_properties: Some(v2::SystemProperties {
            tag: m.tag.clone(),
            keys: m.keys.clone(),
            message_id: m.message_id.clone(),
            body_digest: Some(v2::Digest { r#type: v2::DigestType::Md5 as i32, checksum: s.body_md5.clone() }),
            body_encoding: if m.body_gzip { v2::Encoding::Gzip } else { v2::Encoding::Identity } as i32,
            message_type: wire_message_type(m.message_type) as i32,
            born_timestamp: Some(timestamp(m.born_timestamp)),
            born_host: m.born_host.clone(),
            store_timestamp: Some(timestamp(s.store_timestamp)),
            delivery_timestamp: m.delivery_timestamp.map(timestamp),
            queue_id: s.queue as i32,
            queue_offset: Some(s.offset as i64),
            message_group: m.message_group.clone(),
            priority: m.priority.map(|p| p as i32),
            lite_topic: m.lite_topic.clone(),
            trace_context: m.trace_context.clone(),
            ..Default::default()
        }),
        body: m.body.clone(),
    }
}

/// A delivery as the client sees it: the stored message plus its receipt for this delivery.
pub fn delivered(d: crate::consume::service::Delivery) -> v2::Message {
    let mut m = wire_message(&d.message);
    if let Some(sp) = m.system_properties.as_mut() {
        sp.receipt_handle = Some(d.handle);
        sp.delivery_attempt = Some(d.attempt as i32);
        sp.invisible_duration =
            Some(super::telemetry::duration(std::time::Duration::from_millis(d.invisible_ms.max(0) as u64)));
        if let Some(origin) = &d.message.msg.origin_topic {
            sp.dead_letter_queue =
                Some(v2::DeadLetterQueue { topic: origin.clone(), message_id: d.message.msg.message_id.clone() });
        }
    }
    m
}

/// A receive's filter: tag expressions; SQL92 is not implemented.
pub fn filter(f: Option<&v2::FilterExpression>) -> Result<crate::consume::filter::Filter> {
    use crate::consume::filter::Filter;
    let Some(f) = f else { return Ok(Filter::All) };
    match v2::FilterType::try_from(f.r#type) {
        Ok(v2::FilterType::Tag | v2::FilterType::Unspecified) => Filter::tags(&f.expression),
        Ok(v2::FilterType::Sql) => Filter::sql(&f.expression),
        Err(_) => Err(BrokerError::IllegalFilter(format!("unknown filter type {}", f.r#type))),
    }
}

/// The topic and queue id a request names in its `message_queue`.
pub fn queue_of(q: Option<&v2::MessageQueue>) -> Result<(String, u32)> {
    let q = q.ok_or_else(|| BrokerError::BadRequest("message_queue is missing".into()))?;
    let topic = resource_name(q.topic.as_ref(), "topic")?;
    let id = u32::try_from(q.id).map_err(|_| BrokerError::BadRequest(format!("queue id {} is not a queue", q.id)))?;
    Ok((topic, id))
}

/// A QueryOffset policy (and its timestamp).
pub fn offset_query(policy: i32, at: Option<&prost_types::Timestamp>) -> Result<crate::consume::pull::OffsetQuery> {
    use crate::consume::pull::OffsetQuery;
    Ok(match v2::QueryOffsetPolicy::try_from(policy) {
        Ok(v2::QueryOffsetPolicy::Beginning) => OffsetQuery::Beginning,
        Ok(v2::QueryOffsetPolicy::End) => OffsetQuery::End,
        Ok(v2::QueryOffsetPolicy::Timestamp) => OffsetQuery::Time(
            at.and_then(millis).ok_or_else(|| BrokerError::BadRequest("a TIMESTAMP query needs a timestamp".into()))?,
        ),
        Err(_) => return Err(BrokerError::BadRequest(format!("unknown query offset policy {policy}"))),
    })
}

/// An EndTransaction's resolution and who made it (a check-back answer or the producer).
pub fn decision(resolution: i32, source: i32) -> Result<(crate::txn::state::Resolution, crate::txn::state::Actor)> {
    use crate::txn::state::{Actor, Resolution};
    let resolution = match v2::TransactionResolution::try_from(resolution) {
        Ok(v2::TransactionResolution::Commit) => Resolution::Commit,
        Ok(v2::TransactionResolution::Rollback) => Resolution::Rollback,
        Ok(v2::TransactionResolution::Unspecified) => Resolution::Unknown,
        Err(_) => return Err(BrokerError::BadRequest(format!("unknown resolution {resolution}"))),
    };
    let by = match v2::TransactionSource::try_from(source) {
        Ok(v2::TransactionSource::SourceServerCheck) => Actor::Check,
        _ => Actor::Producer,
    };
    Ok((resolution, by))
}

/// The action of a SyncLiteSubscription.
pub fn lite_action(action: i32) -> Result<SyncAction> {
    Ok(match v2::LiteSubscriptionAction::try_from(action) {
        Ok(v2::LiteSubscriptionAction::PartialAdd) => SyncAction::PartialAdd,
        Ok(v2::LiteSubscriptionAction::PartialRemove) => SyncAction::PartialRemove,
        Ok(v2::LiteSubscriptionAction::CompleteAdd) => SyncAction::CompleteAdd,
        Ok(v2::LiteSubscriptionAction::CompleteRemove) => SyncAction::CompleteRemove,
        Err(_) => return Err(BrokerError::BadRequest(format!("unknown lite subscription action {action}"))),
    })
}

/// Where a lite subscriber starts (`offset_option`). `LAST` and a timestamp keep the group's
/// position, as RocketMQ's broker does (it ignores timestamps for lite topics).
pub fn lite_start(option: Option<&v2::OffsetOption>) -> Result<Option<LiteStart>> {
    use v2::offset_option::{OffsetType, Policy};
    let Some(kind) = option.and_then(|o| o.offset_type) else { return Ok(None) };
    Ok(match kind {
        OffsetType::Policy(p) => match Policy::try_from(p) {
            Ok(Policy::Last) => None,
            Ok(Policy::Min) => Some(LiteStart::Oldest),
            Ok(Policy::Max) => Some(LiteStart::End),
            Err(_) => return Err(BrokerError::BadRequest(format!("unknown offset policy {p}"))),
        },
        OffsetType::Offset(n) => Some(LiteStart::Offset(
            u64::try_from(n).map_err(|_| BrokerError::BadRequest(format!("offset {n} is negative")))?,
        )),
        OffsetType::TailN(n) => Some(LiteStart::Tail(
            u64::try_from(n).map_err(|_| BrokerError::BadRequest(format!("tail_n {n} is negative")))?,
        )),
        OffsetType::Timestamp(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_body_size: 1024, max_delay_ms: 86_400_000 };
    const NOW: Millis = 1_800_000_000_000;

    fn msg() -> v2::Message {
        v2::Message {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: "orders".into() }),
            user_properties: [("k".to_string(), "v".to_string())].into(),
            system_properties: Some(v2::SystemProperties {
                message_id: "01ABC".into(),
                message_type: v2::MessageType::Normal as i32,
                body_encoding: v2::Encoding::Identity as i32,
                tag: Some("created".into()),
                keys: vec!["order-1".into()],
                ..Default::default()
            }),
            body: b"{}".to_vec(),
        }
    }

    fn with(f: impl FnOnce(&mut v2::Message)) -> Result<NewMessage> {
        let mut m = msg();
        f(&mut m);
        new_message(m, LIMITS, NOW)
    }

    fn sp(m: &mut v2::Message) -> &mut v2::SystemProperties {
        m.system_properties.as_mut().unwrap()
    }

    #[test]
    fn a_plain_message_converts() {
        let m = with(|_| {}).unwrap();
        assert_eq!(m.topic, "orders");
        assert_eq!(m.message_type, MessageType::Normal);
        assert_eq!(m.born_timestamp, NOW);
    }

    #[test]
    fn each_bad_field_gets_its_own_error() {
        assert!(matches!(with(|m| m.topic = None), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(with(|m| m.topic.as_mut().unwrap().name = "a b".into()), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(with(|m| m.system_properties = None), Err(BrokerError::BadRequest(_))));
        assert!(matches!(with(|m| sp(m).message_id.clear()), Err(BrokerError::IllegalMessageId(_))));
        assert!(matches!(with(|m| m.body.clear()), Err(BrokerError::BadRequest(_))));
        assert!(matches!(with(|m| m.body = vec![0; 1025]), Err(BrokerError::BodyTooLarge { size: 1025, limit: 1024 })));
        assert!(with(|m| m.body = vec![0; 1024]).is_ok());
        assert!(matches!(with(|m| sp(m).tag = Some("a||b".into())), Err(BrokerError::IllegalTag(_))));
        assert!(matches!(with(|m| sp(m).tag = Some(" ".into())), Err(BrokerError::IllegalTag(_))));
        assert!(matches!(with(|m| sp(m).keys = vec!["".into()]), Err(BrokerError::IllegalKey(_))));
        assert!(matches!(
            with(|m| {
                m.user_properties.insert("UNIQ_KEY".into(), "x".into());
            }),
            Err(BrokerError::IllegalPropertyKey(_))
        ));
        assert!(matches!(
            with(|m| m.user_properties = (0..129).map(|i| (format!("k{i}"), String::new())).collect()),
            Err(BrokerError::PropertiesTooLarge(_))
        ));
        assert!(matches!(
            with(|m| {
                m.user_properties.insert("big".into(), "x".repeat(MAX_PROPERTIES_BYTES));
            }),
            Err(BrokerError::PropertiesTooLarge(_))
        ));
        assert!(matches!(with(|m| sp(m).message_type = 99), Err(BrokerError::BadRequest(_))));
        assert!(matches!(with(|m| sp(m).body_encoding = 7), Err(BrokerError::BadRequest(_))));
    }

    #[test]
    fn types_must_agree_with_group_and_delivery_time() {
        let group = |m: &mut v2::Message| sp(m).message_group = Some("g".into());
        let later = |m: &mut v2::Message| sp(m).delivery_timestamp = Some(timestamp(NOW + 5000));
        assert!(matches!(with(group), Err(BrokerError::TypeConflict(_))));
        assert!(matches!(
            with(|m| {
                sp(m).message_type = v2::MessageType::Fifo as i32;
                group(m)
            })
            .map(|m| m.message_type),
            Ok(MessageType::Fifo)
        ));
        assert!(matches!(
            with(|m| sp(m).message_type = v2::MessageType::Fifo as i32),
            Err(BrokerError::TypeConflict(_))
        ));
        assert!(matches!(
            with(|m| { sp(m).message_type = v2::MessageType::Delay as i32; later(m) }).map(|m| m.delivery_timestamp),
            Ok(Some(t)) if t == NOW + 5000
        ));
        assert!(matches!(
            with(|m| {
                sp(m).message_type = v2::MessageType::Transaction as i32;
                group(m)
            }),
            Err(BrokerError::TypeConflict(_))
        ));
        assert!(matches!(
            with(|m| {
                sp(m).message_type = v2::MessageType::Unspecified as i32;
                later(m)
            })
            .map(|m| m.message_type),
            Ok(MessageType::Delay)
        ));
    }

    #[test]
    fn delivery_time_is_bounded() {
        let too_far = |m: &mut v2::Message| {
            sp(m).message_type = v2::MessageType::Delay as i32;
            sp(m).delivery_timestamp = Some(timestamp(NOW + 86_400_000 + 1000));
        };
        assert!(matches!(with(too_far), Err(BrokerError::IllegalDeliveryTime(_))));
    }

    #[test]
    fn timestamps_convert_both_ways() {
        assert_eq!(millis(&timestamp(-1500)), Some(-1500));
        assert_eq!(millis(&timestamp(NOW + 7)), Some(NOW + 7));
    }
}
