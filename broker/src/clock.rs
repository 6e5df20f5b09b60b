//! The broker's clock. Every part takes `now` from here (and the pure state machines take it
//! as an argument), so no part reads the system time its own way.

use crate::model::Millis;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}
