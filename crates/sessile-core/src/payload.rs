//! [`Payload`]: the application's data, read in place from the stored bytes until changed.

use std::borrow::Cow;
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
/// allocation per key. A change makes a sorted list of entries in which only what changed is
/// owned: the rest still reads the stored bytes.
#[derive(Clone, Default)]
pub struct Payload {
    repr: Repr,
    size: usize,
}

#[derive(Clone)]
enum Repr {
    /// Entries inside shared bytes, sorted by key, unique: the stored map, unchanged.
    Stored { bytes: Bytes, index: Vec<Slot> },
    /// Changed since decoded, or made here: entries sorted by key, unique; those not changed
    /// still lie in `bytes`.
    Edited { bytes: Bytes, entries: Vec<Entry> },
}

impl Default for Repr {
    fn default() -> Self {
        Self::Edited {
            bytes: Bytes::new(),
            entries: Vec::new(),
        }
    }
}

/// Where one entry's key (UTF-8, checked) and value lie in the shared bytes.
#[derive(Clone)]
struct Slot {
    key: Range<u32>,
    value: Range<u32>,
}

/// An entry of an edited payload.
#[derive(Clone)]
struct Entry {
    key: Part<String>,
    value: Part<Vec<u8>>,
}

/// Bytes still in the stored buffer, or owned.
#[derive(Clone)]
enum Part<T> {
    Stored(Range<u32>),
    Owned(T),
}

impl<T: AsRef<[u8]>> Part<T> {
    fn bytes<'a>(&'a self, stored: &'a [u8]) -> &'a [u8] {
        match self {
            Self::Stored(r) => &stored[range(r)],
            Self::Owned(v) => v.as_ref(),
        }
    }
}

impl Part<Vec<u8>> {
    fn into_vec(self, stored: &[u8]) -> Vec<u8> {
        match self {
            Self::Stored(r) => stored[range(&r)].to_vec(),
            Self::Owned(v) => v,
        }
    }
}

/// A key known to be UTF-8: stored keys were checked when indexed, owned ones are `String`s.
fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

impl Payload {
    /// The encoded value under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match &self.repr {
            Repr::Stored { bytes, index } => index
                .binary_search_by(|s| bytes[range(&s.key)].cmp(key.as_bytes()))
                .ok()
                .map(|i| &bytes[range(&index[i].value)]),
            Repr::Edited { bytes, entries } => Self::find(bytes, entries, key)
                .ok()
                .map(|i| entries[i].value.bytes(bytes)),
        }
    }

    fn find(bytes: &[u8], entries: &[Entry], key: &str) -> Result<usize, usize> {
        entries.binary_search_by(|e| e.key.bytes(bytes).cmp(key.as_bytes()))
    }

    /// The entries, made from the stored index on the first change (one allocation: the keys
    /// and values stay where they are).
    fn edited(&mut self) -> (&Bytes, &mut Vec<Entry>) {
        if let Repr::Stored { bytes, index } = &mut self.repr {
            let mut entries = Vec::with_capacity(index.len() + 1);
            entries.extend(index.iter().map(|s| Entry {
                key: Part::Stored(s.key.clone()),
                value: Part::Stored(s.value.clone()),
            }));
            let bytes = std::mem::take(bytes);
            self.repr = Repr::Edited { bytes, entries };
        }
        match &mut self.repr {
            Repr::Edited { bytes, entries } => (bytes, entries),
            Repr::Stored { .. } => unreachable!("just edited"),
        }
    }

    /// Stores an encoded value, returning the old one.
    pub fn insert(&mut self, key: String, value: Vec<u8>) -> Option<Vec<u8>> {
        self.put(Cow::Owned(key), value)
    }

    /// Stores an encoded value under `key`, copying the key only when it is new.
    pub fn set(&mut self, key: &str, value: Vec<u8>) {
        self.put(Cow::Borrowed(key), value);
    }

    /// [`set`](Self::set), unless `value` is there already (`Ok(false)`) or the payload would
    /// then be larger than `limit` bytes (`Err` with that size; nothing changes). `Ok(true)`: it
    /// changed.
    pub fn set_within(&mut self, key: &str, value: Vec<u8>, limit: usize) -> Result<bool, usize> {
        let size = match self.get(key) {
            Some(old) if old == value.as_slice() => return Ok(false),
            Some(old) => self.size - old.len() + value.len(),
            None => self.size + key.len() + value.len(),
        };
        if size > limit {
            return Err(size);
        }
        self.set(key, value);
        Ok(true)
    }

    fn put(&mut self, key: Cow<'_, str>, value: Vec<u8>) -> Option<Vec<u8>> {
        let (key_len, new_len) = (key.len(), value.len());
        let (bytes, entries) = self.edited();
        match Self::find(bytes, entries, &key) {
            Ok(i) => {
                let old = std::mem::replace(&mut entries[i].value, Part::Owned(value));
                let old = old.into_vec(bytes);
                self.size = self.size - old.len() + new_len;
                Some(old)
            }
            Err(i) => {
                entries.insert(
                    i,
                    Entry {
                        key: Part::Owned(key.into_owned()),
                        value: Part::Owned(value),
                    },
                );
                self.size += key_len + new_len;
                None
            }
        }
    }

    /// Removes a value, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Vec<u8>> {
        self.get(key)?;
        let (bytes, entries) = self.edited();
        let i = Self::find(bytes, entries, key).ok()?;
        let old = entries.remove(i).value.into_vec(bytes);
        self.size -= key.len() + old.len();
        Some(old)
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.repr = Repr::default();
        self.size = 0;
    }

    /// Keys and encoded values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let (stored, edited) = match &self.repr {
            Repr::Stored { bytes, index } => (Some((bytes, index)), None),
            Repr::Edited { bytes, entries } => (None, Some((bytes, entries))),
        };
        let stored = stored.into_iter().flat_map(|(bytes, index)| {
            index
                .iter()
                .map(move |s| (text(&bytes[range(&s.key)]), &bytes[range(&s.value)]))
        });
        let edited = edited.into_iter().flat_map(|(bytes, entries)| {
            entries
                .iter()
                .map(move |e| (text(e.key.bytes(bytes)), e.value.bytes(bytes)))
        });
        stored.chain(edited)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Stored { index, .. } => index.len(),
            Repr::Edited { entries, .. } => entries.len(),
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
        match &mut self.repr {
            Repr::Stored { bytes, .. } => *bytes = Bytes::copy_from_slice(bytes),
            Repr::Edited { .. } => {
                // Written out and read back: one buffer of its own, indexed like a stored one
                // (always read back: the map is written sorted, with unique keys).
                let mut out = Vec::with_capacity(self.size + 6 * self.len() + 5);
                self.write_map(&mut out);
                if let Some((stored, _)) = Self::parse(&Bytes::from(out)) {
                    *self = stored;
                }
            }
        }
    }

    /// The encoded map as stored, when the payload is still the one decoded: it can be written
    /// back as it is.
    #[cfg(test)]
    fn stored_bytes(&self) -> Option<&[u8]> {
        match &self.repr {
            Repr::Stored { bytes, .. } => Some(bytes),
            Repr::Edited { .. } => None,
        }
    }

    /// Appends the payload as a MessagePack map of string keys to binary values, in key order:
    /// what [`parse`](Self::parse) reads in place.
    pub(crate) fn write_map(&self, out: &mut Vec<u8>) {
        let (bytes, entries) = match &self.repr {
            Repr::Stored { bytes, .. } => return out.extend_from_slice(bytes),
            Repr::Edited { bytes, entries } => (bytes, entries),
        };
        // Writing to a `Vec` cannot fail, and a payload's lengths fit MessagePack's 32 bits
        // (stores refuse records far smaller).
        let _ = rmp::encode::write_map_len(out, entries.len() as u32);
        for e in entries {
            let (k, v) = (e.key.bytes(bytes), e.value.bytes(bytes));
            let _ = rmp::encode::write_str_len(out, k.len() as u32);
            out.extend_from_slice(k);
            let _ = rmp::encode::write_bin_len(out, v.len() as u32);
            out.extend_from_slice(v);
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
        let entries = map
            .into_iter()
            .map(|(k, v)| Entry {
                key: Part::Owned(k),
                value: Part::Owned(v.into_vec()),
            })
            .collect();
        Ok(Self {
            repr: Repr::Edited {
                bytes: Bytes::new(),
                entries,
            },
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

    /// An edit on a payload read in place.
    #[derive(Debug, Clone)]
    enum Edit {
        Set(String, Vec<u8>),
        Insert(String, Vec<u8>),
        Remove(String),
        SetWithin(String, Vec<u8>, usize),
        Unshare,
    }

    fn edit() -> impl proptest::strategy::Strategy<Value = Edit> {
        use proptest::prelude::*;
        // Few keys, so edits hit stored entries, edited ones and new ones alike.
        let key = prop::sample::select(vec!["a", "b", "counter", "m", "zz"]).prop_map(String::from);
        let value = prop::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (key.clone(), value.clone()).prop_map(|(k, v)| Edit::Set(k, v)),
            (key.clone(), value).prop_map(|(k, v)| Edit::Insert(k, v)),
            key.clone().prop_map(Edit::Remove),
            (key, prop::collection::vec(any::<u8>(), 0..40), 0..200usize)
                .prop_map(|(k, v, limit)| Edit::SetWithin(k, v, limit)),
            Just(Edit::Unshare),
        ]
    }

    proptest::proptest! {
        /// Edits on a stored payload (whose untouched entries keep reading the stored bytes)
        /// behave as the same edits on a plain map, in what they return, read, measure and
        /// encode; and what is encoded reads back in place as the same payload.
        #[test]
        fn edits_on_a_stored_payload_act_as_on_a_map(
            start in proptest::collection::btree_map(
                "[a-z]{1,8}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..6),
            edits in proptest::collection::vec(edit(), 0..12),
        ) {
            let mut model: BTreeMap<String, Vec<u8>> = start.clone();
            let entries: Vec<(&str, &[u8])> =
                start.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let mut p = stored(&owned(&entries));
            for e in edits {
                match e {
                    Edit::Set(k, v) => {
                        p.set(&k, v.clone());
                        model.insert(k, v);
                    }
                    Edit::Insert(k, v) => {
                        proptest::prop_assert_eq!(p.insert(k.clone(), v.clone()), model.insert(k, v));
                    }
                    Edit::Remove(k) => {
                        proptest::prop_assert_eq!(p.remove(&k), model.remove(&k));
                    }
                    Edit::SetWithin(k, v, limit) => {
                        let mut after = model.clone();
                        after.insert(k.clone(), v.clone());
                        let size: usize = after.iter().map(|(k, v)| k.len() + v.len()).sum();
                        let expected = if model.get(&k) == Some(&v) {
                            Ok(false)
                        } else if size > limit {
                            Err(size)
                        } else {
                            model = after;
                            Ok(true)
                        };
                        proptest::prop_assert_eq!(p.set_within(&k, v, limit), expected);
                    }
                    Edit::Unshare => {
                        p.unshare();
                        proptest::prop_assert!(
                            !matches!(&p.repr, Repr::Edited { bytes, entries }
                                if !bytes.is_empty() || entries.iter().any(|e| matches!(
                                    (&e.key, &e.value), (Part::Stored(_), _) | (_, Part::Stored(_))))),
                            "an unshared payload still reads the buffer it was parsed from"
                        );
                    }
                }
                let size: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
                proptest::prop_assert_eq!((p.len(), p.size()), (model.len(), size));
                for (k, v) in &model {
                    proptest::prop_assert_eq!(p.get(k), Some(v.as_slice()));
                }
                proptest::prop_assert!(
                    p.iter().map(|(k, v)| (k.to_owned(), v.to_vec())).eq(model.clone()),
                    "iterates as the map, in key order"
                );
            }
            let mut out = Vec::new();
            p.write_map(&mut out);
            proptest::prop_assert_eq!(&out, &rmp_serde::to_vec(&p).expect("encode"));
            let (back, used) = Payload::parse(&Bytes::from(out.clone())).expect("reads in place");
            proptest::prop_assert_eq!(used, out.len());
            proptest::prop_assert_eq!(back, p);
        }
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
