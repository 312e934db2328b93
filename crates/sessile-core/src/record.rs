//! The session record: identity, metadata and payload, and its one compact codec.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::payload::Payload;

use crate::SessionId;
use crate::clock::UnixMillis;

/// First byte of every encoded record body. A new layout gets a new number, and the decoder keeps
/// reading the old ones, so records survive an upgrade.
pub const CODEC_VERSION: u8 = 1;

/// A stored session.
///
/// `id`, `version` and `idle_deadline` travel beside the encoded body rather than inside it, because
/// stores compare and update them without decoding the body (the version for compare-and-set, the
/// idle deadline for a touch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Identity: never chosen by a client.
    pub id: SessionId,
    /// Incremented by every save; a save is a compare-and-set on it.
    pub version: u64,
    /// When the session expires if nothing touches it. Always at or before the absolute deadline,
    /// so it is also the record's time to live in the store.
    pub idle_deadline: UnixMillis,
    /// Facts about the session.
    pub meta: Metadata,
    /// The application's data.
    pub data: Payload,
}

/// Facts about a session that change rarely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// When the session was created.
    pub created_at: UnixMillis,
    /// The latest moment the session can live to, however active it is.
    pub absolute_deadline: UnixMillis,
    /// The logged-in user, for "log out everywhere".
    pub user_id: Option<String>,
    /// The tenant the session belongs to, when the application is multi-tenant.
    pub tenant: Option<String>,
    /// The routing hint the session was stamped with.
    pub hint: String,
}

/// Whether `tenant` can name a tenant: 1-64 visible ASCII characters without `:`, `{` or `}`,
/// so that stores can put it in keys and [`user_key`] stays unambiguous.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'{' | b'}'))
}

/// One string for a user within a tenant, for stores that index sessions by user:
/// `<tenant>:<user>`, or `:<user>` without a tenant. Unambiguous, since a tenant holds no `:`.
pub fn user_key(tenant: Option<&str>, user: &str) -> String {
    let mut key = Vec::with_capacity(tenant.map_or(0, str::len) + 1 + user.len());
    push_user_key(&mut key, tenant, user);
    // Made of `str`s and a `:`.
    String::from_utf8(key).unwrap_or_default()
}

/// [`user_key`], appended to `out`.
pub fn push_user_key(out: &mut Vec<u8>, tenant: Option<&str>, user: &str) {
    out.extend_from_slice(tenant.unwrap_or_default().as_bytes());
    out.push(b':');
    out.extend_from_slice(user.as_bytes());
}

impl Record {
    /// The user key of the record's user in its tenant (see [`user_key`]), if it has a user.
    pub fn user_key(&self) -> Option<String> {
        let user = self.meta.user_id.as_deref()?;
        Some(user_key(self.meta.tenant.as_deref(), user))
    }

    /// When the store may forget the record.
    pub fn expires_at(&self) -> UnixMillis {
        self.idle_deadline.min(self.meta.absolute_deadline)
    }

    /// Whether the record is past its idle or absolute deadline at `now`.
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now >= self.expires_at()
    }

    /// Encodes metadata and payload: [`CODEC_VERSION`], then MessagePack (a two-element array of
    /// the metadata and the payload map).
    pub fn encode_body(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(self.encoded_size_hint());
        self.encode_body_into(&mut out)?;
        Ok(out)
    }

    /// About how many bytes [`encode_body`](Self::encode_body) writes, for sizing a buffer.
    pub fn encoded_size_hint(&self) -> usize {
        64 + self.data.size() + 3 * self.data.len()
    }

    /// [`encode_body`](Self::encode_body), appended to `out`.
    pub fn encode_body_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let encode = |e| CodecError::Encode(Box::new(e));
        out.push(CODEC_VERSION);
        rmp::encode::write_array_len(out, 2)
            .map_err(|e| encode(rmp_serde::encode::Error::from(e)))?;
        rmp_serde::encode::write(out, &self.meta).map_err(encode)?;
        // Unchanged since it was decoded: the stored map, byte for byte.
        self.data.write_map(out);
        Ok(())
    }

    /// Rebuilds a record from the parts a store keeps. The body is copied; see
    /// [`decode_shared`](Self::decode_shared) to share it instead.
    pub fn decode(
        id: SessionId,
        version: u64,
        idle_deadline: UnixMillis,
        body: &[u8],
    ) -> Result<Self, CodecError> {
        Self::decode_shared(id, version, idle_deadline, Bytes::copy_from_slice(body))
    }

    /// [`decode`](Self::decode) without copying the body: the payload reads its values in place,
    /// from `body`, until it is changed.
    pub fn decode_shared(
        id: SessionId,
        version: u64,
        idle_deadline: UnixMillis,
        body: Bytes,
    ) -> Result<Self, CodecError> {
        let decode = |e| CodecError::Decode(Box::new(e));
        let (&codec, mut rest) = body.split_first().ok_or(CodecError::Empty)?;
        if codec != CODEC_VERSION {
            return Err(CodecError::UnknownVersion(codec));
        }
        let whole = rest;
        let parts = rmp::decode::read_array_len(&mut rest)
            .map_err(|e| decode(rmp_serde::decode::Error::from(e)))?;
        if parts != 2 {
            // Not the layout this crate writes: leave it to serde to say what is wrong.
            let (meta, data): (Metadata, Payload) = rmp_serde::from_slice(whole).map_err(decode)?;
            return Ok(Self::from_parts(id, version, idle_deadline, meta, data));
        }
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        let meta = Metadata::deserialize(&mut de).map_err(decode)?;
        let at = body.len() - rest.len();
        let data = match Payload::parse(&body.slice(at..)) {
            Some((data, _)) => data,
            None => rmp_serde::from_slice(rest).map_err(decode)?,
        };
        Ok(Self::from_parts(id, version, idle_deadline, meta, data))
    }

    fn from_parts(
        id: SessionId,
        version: u64,
        idle_deadline: UnixMillis,
        meta: Metadata,
        data: Payload,
    ) -> Self {
        Self {
            id,
            version,
            idle_deadline,
            meta,
            data,
        }
    }
}

/// A record body could not be encoded or decoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The body is empty.
    #[error("record body is empty")]
    Empty,
    /// The body was written by a codec version this build does not know.
    #[error("record codec version {0} is unknown")]
    UnknownVersion(u8),
    /// MessagePack encoding failed.
    #[error("record could not be encoded")]
    Encode(#[source] Box<rmp_serde::encode::Error>),
    /// MessagePack decoding failed.
    #[error("record could not be decoded")]
    Decode(#[source] Box<rmp_serde::decode::Error>),
    /// A field a store keeps beside the body (the version, the deadline) is not a number.
    #[error("record field {0:?} is not a valid number")]
    Field(&'static str),
    /// What a store holds under a record's key is not in a layout this build writes (a key of
    /// another type, a value cut short, a foreign value).
    #[error("stored record has an unknown layout")]
    Layout,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut data = Payload::default();
        data.insert("user".into(), rmp_serde::to_vec("alice").expect("encode"));
        data.insert("n".into(), rmp_serde::to_vec(&7u32).expect("encode"));
        Record {
            id: SessionId::random(),
            version: 3,
            idle_deadline: 1_000,
            meta: Metadata {
                created_at: 10,
                absolute_deadline: 900,
                user_id: Some("alice".into()),
                tenant: None,
                hint: "n1".into(),
            },
            data,
        }
    }

    #[test]
    fn body_format_v1_is_pinned_by_a_known_answer_vector() {
        // If this fails, stored sessions would stop decoding after a deploy: bump CODEC_VERSION
        // and keep decoding v1 instead.
        let mut data = Payload::default();
        data.insert("n".into(), rmp_serde::to_vec(&7u32).expect("encode"));
        data.insert("user".into(), rmp_serde::to_vec("alice").expect("encode"));
        let r = Record {
            id: SessionId::from_bytes([1; 16]),
            version: 3,
            idle_deadline: 1_000,
            meta: Metadata {
                created_at: 10,
                absolute_deadline: 900,
                user_id: Some("alice".into()),
                tenant: Some("acme".into()),
                hint: "n1".into(),
            },
            data,
        };
        let body = r.encode_body().expect("encode");
        let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, BODY_V1);
        let bytes: Vec<u8> = (0..BODY_V1.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&BODY_V1[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(Record::decode(r.id, 3, 1_000, &bytes).expect("decode"), r);
    }

    const BODY_V1: &str =
        "0192950acd0384a5616c696365a461636d65a26e3182a16ec40107a475736572c406a5616c696365";

    #[test]
    fn body_round_trips() {
        let r = record();
        let body = r.encode_body().expect("encode");
        assert_eq!(body[0], CODEC_VERSION);
        let back = Record::decode(r.id, r.version, r.idle_deadline, &body).expect("decode");
        assert_eq!(back, r);
        assert_eq!(back.data.size(), r.data.size());
        // A decoded payload is written back as it was stored.
        assert_eq!(back.encode_body().expect("encode"), body);
    }

    #[test]
    fn corrupt_bodies_are_typed_errors() {
        let r = record();
        let body = r.encode_body().expect("encode");
        let id = r.id;
        assert!(matches!(
            Record::decode(id, 1, 1, &[]),
            Err(CodecError::Empty)
        ));
        assert!(matches!(
            Record::decode(id, 1, 1, &[9, 1, 2]),
            Err(CodecError::UnknownVersion(9))
        ));
        for cut in 1..body.len() {
            assert!(
                Record::decode(id, 1, 1, &body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn payload_tracks_its_size() {
        let mut p = Payload::default();
        p.insert("ab".into(), vec![0; 10]);
        assert_eq!(p.size(), 12);
        assert_eq!(p.size_with("ab", 3), 5);
        assert_eq!(p.size_with("cde", 3), 18);
        p.insert("ab".into(), vec![0; 4]);
        assert_eq!(p.size(), 6);
        p.insert("c".into(), vec![0; 1]);
        assert_eq!(p.size(), 8);
        assert_eq!(p.remove("ab"), Some(vec![0; 4]));
        assert_eq!(p.size(), 2);
        p.clear();
        assert_eq!((p.size(), p.len()), (0, 0));
    }

    #[test]
    fn expiry_uses_the_earlier_deadline() {
        let mut r = record();
        assert_eq!(r.expires_at(), 900);
        assert!(!r.is_expired(899));
        assert!(r.is_expired(900));
        r.idle_deadline = 100;
        assert!(r.is_expired(100));
    }
}
