//! Receipt handles: opaque to clients, `(queue, offset, nonce)` to us, as 40 hex characters.
//! The nonce changes with every delivery, so a handle from an earlier delivery is refused.

use super::state::Pos;

/// Encodes a handle.
pub fn encode(pos: Pos, nonce: u64) -> String {
    format!("{:08x}{:016x}{:016x}", pos.0, pos.1, nonce)
}

/// Decodes a handle; `None` if it is not one of ours.
pub fn decode(s: &str) -> Option<(Pos, u64)> {
    if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let queue = u32::from_str_radix(s.get(0..8)?, 16).ok()?;
    let offset = u64::from_str_radix(s.get(8..24)?, 16).ok()?;
    let nonce = u64::from_str_radix(s.get(24..40)?, 16).ok()?;
    Some(((queue, offset), nonce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn handles_roundtrip(q in any::<u32>(), o in any::<u64>(), n in any::<u64>()) {
            prop_assert_eq!(decode(&encode((q, o), n)), Some(((q, o), n)));
        }

        #[test]
        fn garbage_is_refused_without_panic(s in ".{0,50}") {
            let _ = decode(&s);
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(decode("abc"), None);
        assert_eq!(decode(&"g".repeat(40)), None);
    }
}
