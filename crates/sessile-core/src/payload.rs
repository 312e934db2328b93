//! [`Payload`]: the application's data, read in place from the stored bytes until changed.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

/// The application's data: string keys to MessagePack-encoded values.
///
/// Values stay encoded until read, so a record that passes through a request untouched is never
/// decoded into application types, and replaying a request's operations after a conflict works on
/// bytes. The payload tracks its own size (keys plus values) for the size limit.
///
/// A payload decoded from a stored record keeps the stored bytes (shared, not copied: the memory
/// store's copy or the Redis reply) and an index into them, so a request that only reads costs no
/// allocation per key; the first change turns it into an owned map.
#[derive(Clone, Default)]
pub struct Payload {
    repr: Repr,
    size: usize,
}

#[derive(Clone)]
enum Repr {
    /// Entries inside shared bytes, sorted by key, unique.
    Stored {
        bytes: Bytes,
        index: Vec<Slot>,
    },
    Owned(BTreeMap<String, ByteBuf>),
}

impl Default for Repr {
    fn default() -> Self {
        Self::Owned(BTreeMap::new())
    }
}

/// Where one entry's key (UTF-8, checked) and value lie in the shared bytes.
#[derive(Clone)]
struct Slot {
    key: Range<u32>,
    value: Range<u32>,
}

impl Payload {
    /// The encoded value under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match &self.repr {
            Repr::Stored { bytes, index } => index
                .binary_search_by(|s| bytes[range(&s.key)].cmp(key.as_bytes()))
                .ok()
                .map(|i| &bytes[range(&index[i].value)]),
            Repr::Owned(map) => map.get(key).map(|v| v.as_slice()),
        }
    }

    /// The owned map, made from the stored entries on the first change.
    fn owned(&mut self) -> &mut BTreeMap<String, ByteBuf> {
        if let Repr::Stored { .. } = self.repr {
            let map = self
                .iter()
                .map(|(k, v)| (k.to_owned(), ByteBuf::from(v.to_vec())))
                .collect();
            self.repr = Repr::Owned(map);
        }
        match &mut self.repr {
            Repr::Owned(map) => map,
            Repr::Stored { .. } => unreachable!("just made owned"),
        }
    }

    /// Stores an encoded value, returning the old one.
    pub fn insert(&mut self, key: String, value: Vec<u8>) -> Option<Vec<u8>> {
        let (key_len, new_len) = (key.len(), value.len());
        match self.owned().insert(key, ByteBuf::from(value)) {
            Some(old) => {
                self.size = self.size - old.len() + new_len;
                Some(old.into_vec())
            }
            None => {
                self.size += key_len + new_len;
                None
            }
        }
    }

    /// Removes a value, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Vec<u8>> {
        self.get(key)?;
        let old = self.owned().remove(key)?;
        self.size -= key.len() + old.len();
        Some(old.into_vec())
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.repr = Repr::default();
        self.size = 0;
    }

    /// Keys and encoded values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let (stored, owned) = match &self.repr {
            Repr::Stored { bytes, index } => (Some((bytes, index)), None),
            Repr::Owned(map) => (None, Some(map)),
        };
        let stored = stored.into_iter().flat_map(|(bytes, index)| {
            index.iter().map(move |s| {
                // Checked as UTF-8 when the index was built.
                let key = std::str::from_utf8(&bytes[range(&s.key)]).unwrap_or_default();
                (key, &bytes[range(&s.value)])
            })
        });
        let owned = owned
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        stored.chain(owned)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Stored { index, .. } => index.len(),
            Repr::Owned(map) => map.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and encoded values.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The size after replacing `key`'s value with one of `new_len` bytes.
    pub fn size_with(&self, key: &str, new_len: usize) -> usize {
        match self.get(key) {
            Some(old) => self.size - old.len() + new_len,
            None => self.size + key.len() + new_len,
        }
    }

    /// Copies the stored bytes this payload reads from into an allocation of its own, so that it
    /// no longer keeps a larger shared buffer alive (a network reply's read buffer, a store's
    /// copy): for payloads kept beyond the request, such as a cache's.
    pub fn unshare(&mut self) {
        if let Repr::Stored { bytes, .. } = &mut self.repr {
            *bytes = Bytes::copy_from_slice(bytes);
        }
    }

    /// The encoded map as stored, when the payload is still the one decoded: it can be written
    /// back as it is.
    pub(crate) fn stored_bytes(&self) -> Option<&[u8]> {
        match &self.repr {
            Repr::Stored { bytes, .. } => Some(bytes),
            Repr::Owned(_) => None,
        }
    }

    /// Reads a MessagePack map of string keys to binary values from the start of `bytes`, in
    /// place; returns the payload and how many bytes it took. `None` if the bytes are not such a
    /// map, or its keys are not sorted and unique (as this crate writes them): the caller then
    /// decodes the general way.
    pub(crate) fn parse(bytes: &Bytes) -> Option<(Self, usize)> {
        let mut rest: &[u8] = bytes;
        let entries = rmp::decode::read_map_len(&mut rest).ok()? as usize;
        // Each entry takes at least two bytes, so a count beyond that is corrupt: no huge
        // allocation on garbage.
        if entries > rest.len() / 2 {
            return None;
        }
        let mut index = Vec::with_capacity(entries);
        let mut size = 0;
        for _ in 0..entries {
            let key_len = rmp::decode::read_str_len(&mut rest).ok()? as usize;
            let key = take(bytes, &mut rest, key_len)?;
            // Keys are short and nearly always ASCII: checked at a byte per step, and as UTF-8
            // only when they are not.
            let k = &bytes[range(&key)];
            if !k.is_ascii() {
                std::str::from_utf8(k).ok()?;
            }
            let value_len = rmp::decode::read_bin_len(&mut rest).ok()? as usize;
            let value = take(bytes, &mut rest, value_len)?;
            if let Some(last) = index.last() {
                let last: &Slot = last;
                if bytes[range(&last.key)] >= bytes[range(&key)] {
                    return None;
                }
            }
            size += key_len + value_len;
            index.push(Slot { key, value });
        }
        let used = bytes.len() - rest.len();
        let payload = Self {
            repr: Repr::Stored {
                bytes: bytes.slice(..used),
                index,
            },
            size,
        };
        Some((payload, used))
    }
}

/// The next `len` bytes of `rest` (a tail of `whole`), as a range of `whole`.
fn take(whole: &[u8], rest: &mut &[u8], len: usize) -> Option<Range<u32>> {
    if len > rest.len() {
        return None;
    }
    let start = whole.len() - rest.len();
    *rest = &rest[len..];
    Some(u32::try_from(start).ok()?..u32::try_from(start + len).ok()?)
}

fn range(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.size == other.size && self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    /// Keys only: values are the application's data and stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("keys", &self.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("size", &self.size)
            .finish()
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        // The length up front: MessagePack writes it first, and without it rmp-serde buffers.
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, serde_bytes::Bytes::new(v))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, ByteBuf>::deserialize(d)?;
        let size = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        Ok(Self {
            repr: Repr::Owned(map),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(entries: &[(&str, &[u8])]) -> Payload {
        let mut p = Payload::default();
        for (k, v) in entries {
            p.insert((*k).to_owned(), v.to_vec());
        }
        p
    }

    fn stored(p: &Payload) -> Payload {
        let bytes = Bytes::from(rmp_serde::to_vec(p).expect("encode"));
        let (parsed, used) = Payload::parse(&bytes).expect("parses in place");
        assert_eq!(used, bytes.len());
        assert!(parsed.stored_bytes().is_some());
        parsed
    }

    #[test]
    fn a_stored_payload_reads_in_place_like_an_owned_one() {
        let p = owned(&[("b", b"2"), ("a", b"1"), ("long key", &[7; 300])]);
        let s = stored(&p);
        assert_eq!(s, p);
        assert_eq!((s.len(), s.size()), (p.len(), p.size()));
        assert_eq!(s.get("a"), Some(&b"1"[..]));
        assert_eq!(s.get("long key").map(<[u8]>::len), Some(300));
        assert_eq!(s.get("c"), None);
        assert_eq!(s.size_with("a", 5), p.size_with("a", 5));
        assert_eq!(
            s.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "b", "long key"]
        );
        // Written back unchanged, byte for byte.
        assert_eq!(
            s.stored_bytes(),
            Some(&rmp_serde::to_vec(&p).expect("encode")[..])
        );
    }

    #[test]
    fn the_first_change_makes_it_owned_and_keeps_the_rest() {
        let p = owned(&[("a", b"1"), ("b", b"2")]);
        let mut s = stored(&p);
        assert_eq!(s.remove("zz"), None);
        assert!(
            s.stored_bytes().is_some(),
            "removing nothing changes nothing"
        );
        assert_eq!(s.insert("c".into(), b"3".to_vec()), None);
        assert!(s.stored_bytes().is_none());
        assert_eq!(s, owned(&[("a", b"1"), ("b", b"2"), ("c", b"3")]));
        let mut s = stored(&p);
        assert_eq!(s.remove("a"), Some(b"1".to_vec()));
        assert_eq!((s.len(), s.size()), (1, 2));
        let mut s = stored(&p);
        s.unshare();
        assert_eq!(s, p);
        assert!(
            s.stored_bytes().is_some(),
            "still read in place, from its own copy"
        );
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.size(), 0);
    }

    #[test]
    fn maps_not_written_this_way_are_left_to_serde() {
        // Keys out of order, a duplicate key, a value that is not binary, garbage: all refused
        // here (the record decoder then asks serde, which decides).
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, 2).expect("write");
        for k in ["b", "a"] {
            rmp::encode::write_str(&mut out, k).expect("write");
            rmp::encode::write_bin(&mut out, b"1").expect("write");
        }
        assert!(Payload::parse(&Bytes::from(out)).is_none());
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, 2).expect("write");
        for k in ["a", "a"] {
            rmp::encode::write_str(&mut out, k).expect("write");
            rmp::encode::write_bin(&mut out, b"1").expect("write");
        }
        assert!(Payload::parse(&Bytes::from(out)).is_none());
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, 1).expect("write");
        rmp::encode::write_str(&mut out, "a").expect("write");
        rmp::encode::write_u8(&mut out, 1).expect("write");
        assert!(Payload::parse(&Bytes::from(out)).is_none());
        assert!(Payload::parse(&Bytes::from_static(&[0xdf, 0xff, 0xff, 0xff, 0xff])).is_none());
        assert!(Payload::parse(&Bytes::from_static(&[0x81, 0xa1, 0xff, 0xc4, 0x00])).is_none());
    }

    #[test]
    fn debug_output_shows_keys_never_values() {
        let p = stored(&owned(&[("token", b"secret-value")]));
        let shown = format!("{p:?}");
        assert!(
            shown.contains("token") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
