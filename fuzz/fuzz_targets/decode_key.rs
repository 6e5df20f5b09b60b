//! Store keys: decoding arbitrary bytes never panics, and whatever decodes re-encodes to the
//! same bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use txmq_broker::store::Key;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = Key::decode(data) {
        assert_eq!(key.encode(), data);
    }
});
