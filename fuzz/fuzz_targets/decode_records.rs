//! Stored records and receipt handles: decoding arbitrary bytes never panics, and decoded
//! records re-encode to bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txmq_broker::consume::{handle, state::Inflight};
use txmq_broker::model::{StoredMessage, TopicRecord};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = StoredMessage::decode(data) {
        assert_eq!(StoredMessage::decode(&m.encode()).ok(), Some(m));
    }
    let _ = StoredMessage::decode_header(data);
    if let Ok(t) = TopicRecord::decode(data) {
        assert_eq!(TopicRecord::decode(&t.encode()).ok(), Some(t));
    }
    if let Ok(r) = Inflight::decode(data) {
        assert_eq!(Inflight::decode(&r.encode()).ok(), Some(r));
    }
    if let Ok(t) = txmq_broker::txn::decode(data) {
        assert_eq!(txmq_broker::txn::decode(&txmq_broker::txn::encode(&t)).ok(), Some(t));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = handle::decode(s);
    }
});
