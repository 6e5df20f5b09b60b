//! The byte codec shared by store keys and record values.
//!
//! Numbers are fixed-width big-endian, so encoded keys sort like the values they hold.
//! Strings and byte strings come in two forms:
//! - *ordered* (keys): `0x00` is escaped as `0x00 0xFF` and the string ends with `0x00 0x00`,
//!   which keeps byte order equal to string order and lets any field follow a string;
//! - *length-prefixed* (values): a `u32` length, then the bytes.
//!
//! Records where bytes count (a stored message is written once per message) may use the
//! compact forms instead: numbers as LEB128 varints (seven bits a byte, low bits first; signed
//! ones zigzag-mapped so small negatives stay short) and bytes prefixed by a varint length.
//!
//! Decoding never panics: truncated or malformed input is a [`CodecError`].
//!
//! Every stored record (topic, message, group, in-flight delivery, transaction) implements
//! [`Record`]: a one-byte version, then its fields, nothing after them. Index values that hold
//! a single number or id (a cursor's next offset, a resend time, a transaction id) are stored
//! bare, with no version: their meaning is fixed by their key.

use thiserror::Error;

/// Why bytes could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("unexpected end of input while reading {0}")]
    Truncated(&'static str),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self { buf: Vec::with_capacity(n) }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Signed numbers flip the sign bit so that negative values sort first.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.u64((v as u64) ^ (1 << 63))
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// Order-preserving, self-delimiting bytes (for keys).
    pub fn ordered_bytes(&mut self, v: &[u8]) -> &mut Self {
        for &b in v {
            self.buf.push(b);
            if b == 0 {
                self.buf.push(0xFF);
            }
        }
        self.buf.extend_from_slice(&[0, 0]);
        self
    }

    pub fn ordered_str(&mut self, v: &str) -> &mut Self {
        self.ordered_bytes(v.as_bytes())
    }

    /// Length-prefixed bytes (for values).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Values are bounded far below 4 GiB by request limits; saturate rather than wrap.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.u8(1).str(s),
            None => self.u8(0),
        }
    }

    pub fn opt_i64(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(x) => self.u8(1).i64(x),
            None => self.u8(0),
        }
    }

    /// A LEB128 varint: 1 byte below 128, at most 10.
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
        self
    }

    /// A signed varint, zigzag-mapped (0, -1, 1, -2, … → 0, 1, 2, 3, …).
    pub fn zigzag(&mut self, v: i64) -> &mut Self {
        self.varint(((v << 1) ^ (v >> 63)) as u64)
    }

    /// Bytes prefixed by their length as a varint.
    pub fn var_bytes(&mut self, v: &[u8]) -> &mut Self {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn var_str(&mut self, v: &str) -> &mut Self {
        self.var_bytes(v.as_bytes())
    }

    /// Bytes with no length: the reader knows how many.
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
}

/// Reads fields from a byte slice in the order they were encoded.
#[derive(Debug)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing(self.rest.len()))
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1, "u8")?[0])
    }

    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array("u16")?))
    }

    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array("u32")?))
    }

    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array("u64")?))
    }

    pub fn i64(&mut self) -> Result<i64, CodecError> {
        Ok((self.u64()? ^ (1 << 63)) as i64)
    }

    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid("bool", other)),
        }
    }

    pub fn ordered_bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        loop {
            match self.u8()? {
                0 => match self.u8()? {
                    0 => return Ok(out),
                    0xFF => out.push(0),
                    other => return Err(invalid("escape in ordered bytes", other)),
                },
                b => out.push(b),
            }
        }
    }

    pub fn ordered_str(&mut self) -> Result<String, CodecError> {
        utf8(self.ordered_bytes()?)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u32()? as usize;
        self.take(len, "bytes")
    }

    pub fn str(&mut self) -> Result<String, CodecError> {
        utf8(self.bytes()?.to_vec())
    }

    pub fn opt_str(&mut self) -> Result<Option<String>, CodecError> {
        Ok(if self.bool()? { Some(self.str()?) } else { None })
    }

    pub fn opt_i64(&mut self) -> Result<Option<i64>, CodecError> {
        Ok(if self.bool()? { Some(self.i64()?) } else { None })
    }

    /// A LEB128 varint; one longer than 10 bytes, or past 64 bits, is invalid.
    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.take(1, "varint")?[0];
            let bits = u64::from(b & 0x7F);
            if i == 9 && bits > 1 {
                return Err(invalid("varint", "more than 64 bits"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid("varint", "more than 10 bytes"))
    }

    pub fn zigzag(&mut self) -> Result<i64, CodecError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    pub fn var_bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = usize::try_from(self.varint()?).map_err(|_| CodecError::Truncated("bytes"))?;
        self.take(len, "bytes")
    }

    pub fn var_str(&mut self) -> Result<String, CodecError> {
        utf8(self.var_bytes()?.to_vec())
    }

    /// The next `n` bytes, written with no length.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        self.take(n, "bytes")
    }
}

pub(crate) fn invalid(what: &'static str, detail: impl std::fmt::Display) -> CodecError {
    CodecError::Invalid { what, detail: detail.to_string() }
}

fn utf8(bytes: Vec<u8>) -> Result<String, CodecError> {
    String::from_utf8(bytes).map_err(|e| invalid("utf-8 string", e))
}

/// A stored record: one version byte, then the fields [`Record::write`] puts, nothing after.
/// A layout change bumps [`Record::VERSION`]; [`Record::read`] gets the version it finds, so
/// records written by an older broker (down to [`Record::OLDEST`]) are still read.
pub trait Record: Sized {
    /// What the record is, for errors ("transaction record").
    const KIND: &'static str;
    /// The version this broker writes.
    const VERSION: u8;
    /// The oldest version this broker still reads.
    const OLDEST: u8 = Self::VERSION;

    /// Writes the fields (after the version byte).
    fn write(&self, e: &mut Encoder);

    /// Reads the fields of a record of `version`.
    fn read(d: &mut Decoder<'_>, version: u8) -> Result<Self, CodecError>;

    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(Self::VERSION);
        self.write(&mut e);
        e.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut d = Decoder::new(bytes);
        let version = read_version::<Self>(&mut d)?;
        let r = Self::read(&mut d, version)?;
        d.finish()?;
        Ok(r)
    }
}

/// Reads and checks the version byte of a `R` record (for partial reads of its first fields).
pub fn read_version<R: Record>(d: &mut Decoder<'_>) -> Result<u8, CodecError> {
    match d.u8()? {
        v if (R::OLDEST..=R::VERSION).contains(&v) => Ok(v),
        v => Err(CodecError::Invalid {
            what: R::KIND,
            detail: format!("version {v} (this broker reads {} to {})", R::OLDEST, R::VERSION),
        }),
    }
}

/// `bytes` as hex digits, lower or upper case.
pub fn hex(bytes: &[u8], upper: bool) -> String {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(digits[usize::from(b >> 4)]));
        s.push(char::from(digits[usize::from(b & 0xF)]));
    }
    s
}

/// The bytes of hex digits of either case; `None` for anything else (odd length, a sign, …).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// FNV-1a of `s`: a stable hash (the same in every process and release) for spreading keys
/// over queues and lock stripes.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_round_trips_in_either_case_and_refuses_the_rest() {
        assert_eq!(hex(&[0x0f, 0xa0], false), "0fa0");
        assert_eq!(hex(&[0x0f, 0xa0], true), "0FA0");
        assert_eq!(unhex("0fA0"), Some(vec![0x0f, 0xa0]));
        for bad in ["0", "zz", "+1", "0g"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }

    #[test]
    fn varints_take_as_few_bytes_as_their_value_needs_and_refuse_overlong_input() {
        let enc = |v: u64| {
            let mut e = Encoder::new();
            e.varint(v);
            e.finish()
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7F]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(u64::MAX).len(), 10);
        let mut e = Encoder::new();
        e.zigzag(-1).zigzag(1).zigzag(i64::MIN);
        assert_eq!(&e.finish()[..2], [1, 2]);
        for bad in [&[0x80u8][..], &[0xFF; 11][..], &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02][..]] {
            assert!(Decoder::new(bad).varint().is_err(), "{bad:?}");
        }
        assert!(Decoder::new(&[5, b'a']).var_bytes().is_err(), "a length past the input");
    }

    proptest! {
        #[test]
        fn varints_roundtrip(u in any::<u64>(), i in any::<i64>(), b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut e = Encoder::new();
            e.varint(u).zigzag(i).var_bytes(&b);
            let bytes = e.finish();
            let mut d = Decoder::new(&bytes);
            prop_assert_eq!(d.varint().unwrap(), u);
            prop_assert_eq!(d.zigzag().unwrap(), i);
            prop_assert_eq!(d.var_bytes().unwrap(), &b[..]);
            prop_assert!(d.finish().is_ok());
        }

        #[test]
        fn ordered_bytes_roundtrip_and_keep_order(a in proptest::collection::vec(any::<u8>(), 0..40),
                                                  b in proptest::collection::vec(any::<u8>(), 0..40),
                                                  x in any::<u64>(), y in any::<u64>()) {
            let enc = |s: &[u8], n: u64| { let mut e = Encoder::new(); e.ordered_bytes(s).u64(n); e.finish() };
            let (ea, eb) = (enc(&a, x), enc(&b, y));
            prop_assert_eq!((a.clone(), x).cmp(&(b.clone(), y)), ea.cmp(&eb));
            let mut d = Decoder::new(&ea);
            prop_assert_eq!(d.ordered_bytes().unwrap(), a);
            prop_assert_eq!(d.u64().unwrap(), x);
            prop_assert!(d.finish().is_ok());
        }

        #[test]
        fn signed_numbers_keep_order(a in any::<i64>(), b in any::<i64>()) {
            let enc = |n: i64| { let mut e = Encoder::new(); e.i64(n); e.finish() };
            prop_assert_eq!(a.cmp(&b), enc(a).cmp(&enc(b)));
            prop_assert_eq!(Decoder::new(&enc(a)).i64().unwrap(), a);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = Decoder::new(&bytes);
            let _ = d.ordered_str();
            let _ = d.str();
            let _ = d.opt_i64();
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut e = Encoder::new();
        e.str("hello");
        let bytes = e.finish();
        assert!(matches!(Decoder::new(&bytes[..4]).str(), Err(CodecError::Truncated(_))));
    }
}
