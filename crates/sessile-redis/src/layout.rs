//! The stored form of a record: one string, a fixed header then the user and the body (the table
//! is in the [scripts' docs](crate::scripts)). Built here, read here and by the scripts.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use fred::bytes::Bytes;
use sessile_core::SessionId;
use sessile_core::clock::UnixMillis;
use sessile_core::record::{CodecError, Record};
use sessile_core::store::WriteId;

/// First byte of a record.
const RECORD: u8 = b'R';
/// First byte of a rotated-away id's marker.
const MARKER: u8 = b'M';
/// Tag, version, idle deadline, generation, user length.
const HEADER: usize = 1 + 8 + 8 + 8 + 2;

/// What a record key holds.
#[derive(Debug)]
pub(crate) enum Stored {
    /// A record: its version, idle deadline and encoded body (shared with the reply).
    Record {
        version: u64,
        idle_deadline: UnixMillis,
        body: Bytes,
    },
    /// The id was rotated away.
    Marker,
}

/// Reads a record key's value.
pub(crate) fn parse(raw: Bytes) -> Result<Stored, CodecError> {
    match raw.first() {
        Some(&MARKER) => return Ok(Stored::Marker),
        Some(&RECORD) if raw.len() >= HEADER => {}
        _ => return Err(CodecError::Layout),
    }
    let word = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&raw[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let (version, idle_deadline) = (word(1), word(9));
    let user = usize::from(u16::from_be_bytes([raw[25], raw[26]]));
    let body = raw
        .get(HEADER + user..)
        .ok_or(CodecError::Layout)
        .map(|_| raw.slice(HEADER + user..))?;
    Ok(Stored::Record {
        version,
        idle_deadline,
        body,
    })
}

/// What goes before the generation: the tag, the version and the idle deadline.
#[cfg(test)]
pub(crate) fn head(version: u64, idle_deadline: UnixMillis) -> Vec<u8> {
    let mut b = Vec::with_capacity(17);
    push_head(&mut b, version, idle_deadline);
    b
}

/// [`head`], appended to `out`.
pub(crate) fn push_head(out: &mut Vec<u8>, version: u64, idle_deadline: UnixMillis) {
    out.push(RECORD);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&idle_deadline.to_be_bytes());
}

/// What goes after the generation: the user key's length and bytes, then the body. A user key
/// longer than 65 535 bytes cannot be stored.
#[cfg(test)]
pub(crate) fn tail(user: &str, body: &[u8]) -> Result<Vec<u8>, CodecError> {
    let len = u16::try_from(user.len()).map_err(|_| CodecError::Layout)?;
    let mut b = Vec::with_capacity(2 + user.len() + body.len());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(user.as_bytes());
    b.extend_from_slice(body);
    Ok(b)
}

/// The start of the tail, appended to `out`: the length and bytes of the record's user key
/// (see [`Record::user_key`]; empty without a user). Returns where the user key lies in `out`.
pub(crate) fn push_user(out: &mut Vec<u8>, record: &Record) -> Result<Range<usize>, CodecError> {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    if let Some(user) = record.meta.user_id.as_deref() {
        sessile_core::record::push_user_key(out, record.meta.tenant.as_deref(), user);
    }
    let len = u16::try_from(out.len() - at - 2).map_err(|_| CodecError::Layout)?;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
    Ok(at + 2..out.len())
}

/// A version (or a generation) as the scripts compare it.
pub(crate) fn word(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

/// A rotated-away id's marker: the new id and the rotating write, hex.
pub(crate) fn marker(new: &SessionId, write: WriteId) -> Bytes {
    let mut s = String::with_capacity(1 + 32 + 16);
    s.push(char::from(MARKER));
    sessile_core::push_hex(&mut s, new.as_bytes());
    sessile_core::push_hex(&mut s, write.as_bytes());
    Bytes::from(s)
}

/// The invalidation a write publishes: `<id hex>:<version, or - when gone>:<ms now>`.
pub(crate) fn invalidation(id: &SessionId, version: Option<u64>) -> Bytes {
    let mut s = String::with_capacity(32 + 1 + 20 + 1 + 13);
    sessile_core::push_hex(&mut s, id.as_bytes());
    s.push(':');
    let mut digits = itoa::Buffer::new();
    match version {
        Some(v) => s.push_str(digits.format(v)),
        None => s.push('-'),
    }
    s.push(':');
    s.push_str(digits.format(now_ms()));
    Bytes::from(s)
}

/// The writer's clock, as the invalidation delay compares it with the listener's.
pub(crate) fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::bytes::{BufMut, BytesMut};
    use sessile_core::record::{Metadata, Payload, Record};

    /// The whole stored value of `record` at `generation`, as `SET` by the scripts (for tests).
    fn value(record: &Record, generation: u64, body: &[u8]) -> Bytes {
        let user = record.user_key().unwrap_or_default();
        let mut b = BytesMut::new();
        b.put_slice(&head(record.version, record.expires_at()));
        b.put_slice(&word(generation));
        b.put_slice(&tail(&user, body).expect("short user"));
        b.freeze()
    }

    fn record(user: Option<&str>) -> Record {
        Record {
            id: SessionId::random(),
            version: 0x0102_0304_0506_0708,
            idle_deadline: 1_900_000_000_123,
            meta: Metadata {
                created_at: 1,
                absolute_deadline: 2_000_000_000_000,
                user_id: user.map(str::to_owned),
                tenant: None,
                hint: String::new(),
            },
            data: Payload::default(),
        }
    }

    #[test]
    fn a_record_reads_back_with_or_without_a_user() {
        for user in [None, Some("alice"), Some(&*"u".repeat(300))] {
            let r = record(user);
            let raw = value(&r, 7, b"body bytes");
            assert_eq!(raw.len(), HEADER + r.user_key().map_or(0, |u| u.len()) + 10);
            match parse(raw).expect("parses") {
                Stored::Record {
                    version,
                    idle_deadline,
                    body,
                } => {
                    assert_eq!(version, r.version);
                    assert_eq!(idle_deadline, r.idle_deadline);
                    assert_eq!(&body[..], b"body bytes");
                }
                Stored::Marker => panic!("a record read as a marker"),
            }
        }
    }

    #[test]
    fn garbage_is_a_layout_error_not_a_panic() {
        let r = record(Some("alice"));
        let raw = value(&r, 0, b"x");
        for cut in 0..raw.len() - 1 {
            // Cut inside the header or the user: refused.
            let short = raw.slice(..cut);
            if cut < HEADER + 6 {
                assert!(
                    matches!(parse(short), Err(CodecError::Layout)),
                    "cut at {cut}"
                );
            }
        }
        for junk in [&b""[..], b"hello", b"\x01\x02", &[b'R'; 5][..]] {
            assert!(matches!(
                parse(Bytes::copy_from_slice(junk)),
                Err(CodecError::Layout)
            ));
        }
        let marker = marker(&SessionId::random(), WriteId::random());
        assert!(matches!(parse(marker), Ok(Stored::Marker)));
    }

    #[test]
    fn a_user_key_too_long_to_store_is_refused() {
        assert!(tail(&"u".repeat(65_536), b"").is_err());
        assert!(tail(&"u".repeat(65_535), b"").is_ok());
    }

    #[test]
    fn invalidations_read_as_the_listener_parses_them() {
        let id = SessionId::random();
        let msg = invalidation(&id, Some(12_345));
        let text = std::str::from_utf8(&msg).expect("ascii");
        let mut parts = text.split(':');
        assert_eq!(parts.next(), Some(id.to_hex().as_str()));
        assert_eq!(parts.next(), Some("12345"));
        let ms: u64 = parts.next().expect("ms").parse().expect("number");
        assert!(ms.abs_diff(now_ms()) < 60_000);
        let gone = invalidation(&id, None);
        assert!(std::str::from_utf8(&gone).expect("ascii").contains(":-:"));
    }
}
