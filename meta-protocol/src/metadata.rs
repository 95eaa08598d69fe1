//! Routable metadata: small, ordered key/value string pairs sliced from a frame.

use bytestring::ByteString;
use smallvec::SmallVec;

/// Entries kept inline before [`Metadata`] spills to the heap.
///
/// Typical RPC requests carry a handful of keys (interface, method, version, group and a
/// few attachments); twelve covers them without an allocation while keeping a message
/// small enough to move cheaply between tasks.
pub const INLINE_METADATA_ENTRIES: usize = 12;

/// A UTF-8 string shared with the frame it was read from.
///
/// Cloning is a reference-count increment; building one with [`MetaStr::from_static`]
/// or by slicing a frame's [`bytes::Bytes`] allocates nothing.
pub type MetaStr = ByteString;

/// Ordered key/value strings that routes match on.
///
/// Keys are matched case-sensitively. Lookups are linear scans, which beat hashing for
/// the dozen-or-so entries a request carries.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: SmallVec<[(MetaStr, MetaStr); INLINE_METADATA_ENTRIES]>,
}

impl Metadata {
    /// An empty set; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if present.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// The shared value of `key`, if present (cheap to clone).
    pub fn get_shared(&self, key: &str) -> Option<&MetaStr> {
        self.entries
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing an existing value.
    pub fn set(&mut self, key: MetaStr, value: MetaStr) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Adds `key` only when it is not present yet (an earlier, stronger source wins).
    pub fn set_if_absent(&mut self, key: MetaStr, value: MetaStr) {
        if !self.contains(&key) {
            self.entries.push((key, value));
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<MetaStr> {
        let pos = self.entries.iter().position(|(k, _)| &**k == key)?;
        Some(self.entries.remove(pos).1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry, keeping the storage.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<MetaStr>, V: Into<MetaStr>> FromIterator<(K, V)> for Metadata {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut metadata = Metadata::new();
        for (k, v) in iter {
            metadata.set(k.into(), v.into());
        }
        metadata
    }
}

/// Key/value pairs a codec writes into a message on encode (Dubbo attachments, Thrift
/// header-transport headers). Later pairs override earlier ones with the same key.
pub type Mutations = SmallVec<[(MetaStr, MetaStr); 4]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_set_if_absent_keeps_first() {
        let mut m = Metadata::new();
        m.set("method".into(), "a".into());
        m.set("method".into(), "b".into());
        m.set_if_absent("method".into(), "c".into());
        m.set_if_absent("group".into(), "g".into());
        assert_eq!(m.get("method"), Some("b"));
        assert_eq!(m.get("group"), Some("g"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.remove("method").as_deref(), Some("b"));
        assert_eq!(m.get("method"), None);
    }

    #[test]
    fn keys_are_case_sensitive() {
        let m: Metadata = [("Method", "x")].into_iter().collect();
        assert_eq!(m.get("method"), None);
        assert_eq!(m.get("Method"), Some("x"));
    }

    #[test]
    fn values_share_the_frame() {
        let frame = bytes::Bytes::from_static(b"interface=com.example.Demo");
        let value = MetaStr::try_from(frame.slice(10..)).unwrap();
        assert_eq!(value.as_bytes().as_ptr(), frame[10..].as_ptr());
    }
}
