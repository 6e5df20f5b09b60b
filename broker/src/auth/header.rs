//! The request signature the official RocketMQ 5 clients send (docs/protocol.md, "Signed
//! requests"): `authorization: MQv2-HMAC-SHA1 Credential=<access key>,
//! SignedHeaders=x-mq-date-time, Signature=<hex HMAC-SHA1(secret, x-mq-date-time as sent)>`.
//!
//! Parsing never panics and accepts what the clients send: hex of either case, spaces around
//! the separators. The date is signed as sent; it is parsed only to refuse stale headers
//! (replays), in the formats the clients use.

use crate::model::Millis;

/// The signing algorithm the clients name.
pub const ALGORITHM: &str = "MQv2-HMAC-SHA1";
/// The one header the clients sign.
pub const DATE_HEADER: &str = "x-mq-date-time";

/// The parts of an `authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub access_key: String,
    pub signature: Vec<u8>,
}

/// Parses an `authorization` header value. The error says what is wrong (never echoing the
/// signature).
pub fn parse(value: &str) -> Result<Signed, &'static str> {
    let rest = value.trim_start();
    let rest = rest.strip_prefix(ALGORITHM).ok_or("the authorization header does not start with MQv2-HMAC-SHA1")?;
    if !rest.starts_with([' ', '\t']) {
        return Err("the authorization header does not start with MQv2-HMAC-SHA1");
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.split_once('=').ok_or("an authorization field has no '='")?;
        let slot = match k.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err("the authorization header has an unknown field"),
        };
        if slot.replace(v.trim()).is_some() {
            return Err("the authorization header repeats a field");
        }
    }
    let access_key = credential.filter(|c| !c.is_empty()).ok_or("no credential (access key) in the authorization")?;
    if !signed_headers.is_some_and(|h| h.eq_ignore_ascii_case(DATE_HEADER)) {
        return Err("the authorization must sign x-mq-date-time");
    }
    let signature = signature.ok_or("no signature in the authorization")?;
    let signature = crate::codec::unhex(signature).ok_or("the signature is not hex")?;
    if signature.len() != 20 {
        return Err("the signature is not 20 bytes of HMAC-SHA1");
    }
    Ok(Signed { access_key: access_key.to_string(), signature })
}

/// Whether `signature` is the HMAC-SHA1 of `date` under `secret` (compared in constant time).
pub fn verify(secret: &str, date: &str, signature: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    ring::hmac::verify(&key, date.as_bytes(), signature).is_ok()
}

/// A parsed `x-mq-date-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedAt {
    /// RFC 3339 with its offset (the Rust client): an exact instant.
    Exact(Millis),
    /// `YYYYMMDDTHHMMSSZ` (Python, Node, Java). Python and Java write their *local* time there
    /// despite the `Z`, so the instant is only known to within the world's time-zone offsets.
    LocalOrUtc(Millis),
}

/// Parses the date formats the clients send; `None` for anything else.
pub fn parse_date(s: &str) -> Option<SignedAt> {
    let b = s.as_bytes();
    if b.len() == 16 && b[8] == b'T' && b[15] == b'Z' {
        let n = |r: std::ops::Range<usize>| digits(&b[r]);
        let at = civil(n(0..4)?, n(4..6)?, n(6..8)?, n(9..11)?, n(11..13)?, n(13..15)?)?;
        return Some(SignedAt::LocalOrUtc(at));
    }
    // RFC 3339: YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits(&b[r]);
    let mut at = civil(n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?)?;
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &b[start..i.min(start + 3)];
        let ms = digits(frac)? * 10i64.pow(3 - frac.len() as u32);
        at += ms;
    }
    match b.get(i..)? {
        [b'Z' | b'z'] => {}
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let off = (digits(&[*h1, *h2])? * 60 + digits(&[*m1, *m2])?) * 60_000;
            at -= if *sign == b'+' { off } else { -off };
        }
        _ => return None,
    }
    Some(SignedAt::Exact(at))
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |n, d| n * 10 + (d - b'0') as i64))
}

/// Milliseconds since the epoch of a UTC calendar time; `None` when a field is out of range.
fn civil(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<Millis> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from 1970-01-01 (the proleptic Gregorian calendar).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000)
}

/// The widest time-zone offsets (UTC−12 to UTC+14), for dates written in local time.
const WEST_MS: Millis = 12 * 3600 * 1000;
const EAST_MS: Millis = 14 * 3600 * 1000;

/// Whether a header signed at `at` may still be accepted at `now`, `max_skew` either way.
/// Local-or-UTC dates are widened by the time-zone offsets: a captured header is refused
/// about a day later instead of never.
pub fn fresh(at: SignedAt, now: Millis, max_skew: Millis) -> bool {
    match at {
        SignedAt::Exact(t) => (t - now).abs() <= max_skew,
        SignedAt::LocalOrUtc(t) => t - now >= -(WEST_MS + max_skew) && t - now <= EAST_MS + max_skew,
    }
}

/// The header value a client with `access_key` and `secret` sends for `date` (tests and docs;
/// the SDK signs with the same scheme).
pub fn sign(access_key: &str, secret: &str, date: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, date.as_bytes());
    let hex = crate::codec::hex(tag.as_ref(), false);
    format!("{ALGORITHM} Credential={access_key}, SignedHeaders={DATE_HEADER}, Signature={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_clients_header_parses_and_verifies() {
        let date = "2026-12-01T09:30:00.123456789+08:00";
        let lower = sign("ak", "sk", date);
        let s = parse(&lower).unwrap();
        assert_eq!(s.access_key, "ak");
        assert!(verify("sk", date, &s.signature));
        assert!(!verify("other", date, &s.signature));
        assert!(!verify("sk", "2026-12-01T09:30:01+08:00", &s.signature));
        // Node: upper-case hex; extra spaces are tolerated.
        let upper = lower.replace(
            &lower[lower.find("Signature=").unwrap() + 10..],
            &lower[lower.find("Signature=").unwrap() + 10..].to_uppercase(),
        );
        assert!(verify("sk", date, &parse(&upper).unwrap().signature));
        assert!(parse("MQv2-HMAC-SHA1  Credential = ak ,SignedHeaders=x-mq-date-time,  Signature=00112233445566778899aabbccddeeff00112233").is_ok());
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        for bad in [
            "",
            "Basic abc",
            "MQv2-HMAC-SHA1",
            "MQv2-HMAC-SHA1Credential=ak, SignedHeaders=x-mq-date-time, Signature=00",
            // Python sends an empty credential when none is configured.
            "MQv2-HMAC-SHA1 Credential=, SignedHeaders=x-mq-date-time, Signature=",
            "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=host, Signature=00112233445566778899aabbccddeeff00112233",
            "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, Signature=zz",
            "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, Signature=0011",
            "MQv2-HMAC-SHA1 Credential=ak, Credential=ak, SignedHeaders=x-mq-date-time, Signature=00",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_clients_date_formats_parse() {
        let utc = civil(2026, 12, 1, 1, 30, 0).unwrap();
        assert_eq!(parse_date("2026-12-01T09:30:00+08:00"), Some(SignedAt::Exact(utc)));
        assert_eq!(parse_date("2026-12-01T01:30:00Z"), Some(SignedAt::Exact(utc)));
        assert_eq!(parse_date("2026-12-01T01:30:00.25Z"), Some(SignedAt::Exact(utc + 250)));
        assert_eq!(parse_date("2026-11-30T20:30:00.123456789-05:00"), Some(SignedAt::Exact(utc + 123)));
        assert_eq!(parse_date("20261201T013000Z"), Some(SignedAt::LocalOrUtc(utc)));
        assert_eq!(civil(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(civil(2000, 3, 1, 0, 0, 0), Some(951_868_800_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-01T01:30:00",
            "20261201T013000",
            "2026-12-01T01:30:00+0800",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn stale_dates_are_not_fresh() {
        let now = civil(2026, 12, 1, 12, 0, 0).unwrap();
        let skew = 15 * 60_000;
        assert!(fresh(SignedAt::Exact(now - skew), now, skew));
        assert!(!fresh(SignedAt::Exact(now - skew - 1), now, skew));
        assert!(!fresh(SignedAt::Exact(now + skew + 1), now, skew));
        // Local time in Shanghai labelled Z: 8 h ahead, still accepted; two days old is not.
        assert!(fresh(SignedAt::LocalOrUtc(now + 8 * 3_600_000), now, skew));
        assert!(!fresh(SignedAt::LocalOrUtc(now - 48 * 3_600_000), now, skew));
    }

    proptest! {
        #[test]
        fn parsing_any_header_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
            let _ = parse_date(&s);
        }

        #[test]
        fn a_header_verifies_only_with_its_own_secret_and_date(
            ak in "[A-Za-z0-9]{1,20}", sk in "[ -~]{1,40}", other in "[ -~]{1,40}", date in "[0-9TZ:+-]{1,30}",
            flip in 0usize..20,
        ) {
            let header = sign(&ak, &sk, &date);
            let s = parse(&header).unwrap();
            prop_assert_eq!(&s.access_key, &ak);
            prop_assert!(verify(&sk, &date, &s.signature));
            prop_assume!(other != sk);
            prop_assert!(!verify(&other, &date, &s.signature));
            let mut tampered = s.signature.clone();
            tampered[flip] ^= 1;
            prop_assert!(!verify(&sk, &date, &tampered));
        }
    }
}
