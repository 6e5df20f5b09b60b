//! Stored records, write batches and receipt handles: decoding arbitrary bytes never panics,
//! and whatever decodes re-encodes to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txmq_broker::codec::Record;
use txmq_broker::consume::{handle, state::Inflight, GroupRecord};
use txmq_broker::model::{StoredMessage, TopicRecord};

/// `data` as a record of kind `R`, if it is one: it must survive a round trip.
fn round_trip<R: Record + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(r) = R::decode(data) {
        assert_eq!(R::decode(&r.encode()).ok(), Some(r));
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<StoredMessage>(data);
    let _ = StoredMessage::decode_header(data);
    round_trip::<TopicRecord>(data);
    round_trip::<Inflight>(data);
    round_trip::<GroupRecord>(data);
    round_trip::<txmq_broker::txn::state::Txn>(data);
    round_trip::<txmq_broker::audit::AuditEntry>(data);
    round_trip::<txmq_broker::topics::LiteRecord>(data);
    if let Ok(b) = txmq_broker::store::Batch::decode(data) {
        assert_eq!(txmq_broker::store::Batch::decode(&b.encode()).ok(), Some(b));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = handle::decode(s);
    }
});
