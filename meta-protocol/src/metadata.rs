//! Routable metadata: small, ordered key/value string pairs, stored as offsets into the
//! frame they were read from.

use std::ops::Range;

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;

/// Entries kept inline before [`Metadata`] spills to the heap.
///
/// Typical RPC requests carry a handful of keys (interface, method, version, group and a
/// few attachments); ten covers them without an allocation. An entry is 12 bytes (two
/// offsets into the frame and two 16-bit lengths), so the table is 128 bytes and a
/// whole [`crate::Message`] 256: the size up to which copying one (a message moves a
/// few times per request) takes a short fixed sequence of instructions instead of a
/// loop.
pub const INLINE_METADATA_ENTRIES: usize = 10;

/// A UTF-8 string shared with the frame it was read from.
///
/// Cloning is a reference-count increment; building one with [`MetaStr::from_static`]
/// or by slicing a frame's [`bytes::Bytes`] allocates nothing.
pub type MetaStr = ByteString;

/// Keys a codec names itself rather than reading them from the frame (Dubbo's
/// `interface` is the service path of the body, Thrift's `method` the message name):
/// kept as a number, so setting one stores nothing beside the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WellKnownKey {
    /// `interface`.
    Interface,
    /// `method`.
    Method,
    /// `version`.
    Version,
    /// `service`.
    Service,
    /// `group`.
    Group,
}

impl WellKnownKey {
    const ALL: [WellKnownKey; 5] = [
        WellKnownKey::Interface,
        WellKnownKey::Method,
        WellKnownKey::Version,
        WellKnownKey::Service,
        WellKnownKey::Group,
    ];

    /// The key's [`key_bit`], worked out when compiling.
    #[inline(always)]
    const fn bit(self) -> u64 {
        // Each key's bit at its discriminant, from `ALL`, so the list is not written twice.
        const BITS: [u64; WellKnownKey::ALL.len()] = {
            let mut bits = [0; WellKnownKey::ALL.len()];
            let mut i = 0;
            while i < bits.len() {
                let key = WellKnownKey::ALL[i];
                bits[key as usize] = key_bit(key.as_str().as_bytes());
                i += 1;
            }
            bits
        };
        BITS[self as usize]
    }

    /// The key as routes name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            WellKnownKey::Interface => "interface",
            WellKnownKey::Method => "method",
            WellKnownKey::Version => "version",
            WellKnownKey::Service => "service",
            WellKnownKey::Group => "group",
        }
    }
}

/// A key prepared for repeated lookups ([`Metadata::get_bytes_by`],
/// [`Metadata::get_by`]): its presence bit, and whether it names a [`WellKnownKey`],
/// worked out once instead of on every lookup. A route table builds one for each key it
/// matches on.
///
/// A lookup by a prepared key finds the same entry as a lookup by its name: a
/// well-known key a codec stored by number is found by that number (no bytes
/// compared), and the same key stored as a string is found by its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataKey {
    name: Box<str>,
    bit: u64,
    /// The packed key word ([`Entry`]) a codec stores this key under when it is
    /// well-known (its number and [`KNOWN`]); 0, which no such word is, otherwise.
    known: u32,
}

impl MetadataKey {
    /// Prepares `name` for lookups.
    pub fn new(name: &str) -> Self {
        MetadataKey {
            name: name.into(),
            bit: key_bit(name.as_bytes()),
            known: WellKnownKey::ALL
                .into_iter()
                .find(|k| k.as_str() == name)
                .map_or(0, |k| Slot::known(k).packed_start()),
        }
    }

    /// The key's name.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for MetadataKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl From<&str> for MetadataKey {
    fn from(name: &str) -> Self {
        MetadataKey::new(name)
    }
}

/// Where one key or value is: `len` bytes at `start` of the frame; or, when `len` has
/// [`OWNED`] set, the owned string at index `start`; or, with [`KNOWN`], the
/// [`WellKnownKey`] number `start`. The low bits of `len` are always the length, so
/// lookups compare lengths without resolving any string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    start: u32,
    len: u32,
}

/// The bit of `keys` for `key`, from its length and first and last bytes.
#[inline]
const fn key_bit(key: &[u8]) -> u64 {
    let (first, last) = match key {
        [] => (0, 0),
        [first, .., last] => (*first as usize, *last as usize),
        [only] => (*only as usize, *only as usize),
    };
    1 << ((key.len() * 7 + first + last * 3) & 63)
}

/// Marks a [`Slot`] that names an owned string.
const OWNED: u32 = 1 << 31;
/// Marks a [`Slot`] that names a [`WellKnownKey`].
const KNOWN: u32 = 1 << 30;
/// The flag bits of a [`Slot`]'s `len`.
const FLAGS: u32 = OWNED | KNOWN;
/// The length bits of a [`Slot`]: 16, so that an entry packs into 12 bytes. A string
/// of the frame that is longer is kept as an owned string (a shared slice of the
/// frame: no copy).
const LEN: u32 = 0xffff;
/// Slots start below this: packed, a start's top two bits carry the flags (frames are
/// far smaller).
const MAX_START: u32 = 1 << 30;

/// A key and its value, packed: each start with its slot's flags in the top two bits,
/// and both lengths in one word. 12 bytes where two [`Slot`]s take 16.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: u32,
    value: u32,
    /// The key's length in the low half, the value's in the high one.
    lens: u32,
}

impl Entry {
    #[inline]
    fn new(k: Slot, v: Slot) -> Entry {
        Entry {
            key: k.packed_start(),
            value: v.packed_start(),
            lens: (k.len & LEN) | ((v.len & LEN) << 16),
        }
    }

    #[inline]
    fn key(self) -> Slot {
        Slot {
            start: self.key & !FLAGS,
            len: (self.key & FLAGS) | (self.lens & LEN),
        }
    }

    #[inline]
    fn value(self) -> Slot {
        Slot {
            start: self.value & !FLAGS,
            len: (self.value & FLAGS) | (self.lens >> 16),
        }
    }

    #[inline]
    fn set_value(&mut self, v: Slot) {
        *self = Entry::new(self.key(), v);
    }
}

impl Slot {
    /// Owned string `index` (fewer than [`MAX_START`] are ever kept), of `len` bytes: a
    /// length over [`LEN`] is stored as [`LEN`], and lookups then compare the bytes.
    fn owned(index: usize, len: usize) -> Slot {
        Slot {
            start: (index as u32) & !FLAGS,
            len: OWNED | (len.min(LEN as usize) as u32),
        }
    }

    fn known(key: WellKnownKey) -> Slot {
        Slot {
            start: key as u32,
            len: KNOWN | key.as_str().len() as u32,
        }
    }

    /// The start as an [`Entry`] stores it, with the slot's flags in the top two bits.
    #[inline]
    fn packed_start(self) -> u32 {
        self.start | (self.len & FLAGS)
    }

    fn is_owned(self) -> bool {
        self.len & OWNED != 0
    }

    /// The string's length (an owned one over [`LEN`] bytes: [`LEN`]).
    fn byte_len(self) -> usize {
        (self.len & LEN) as usize
    }

    /// The frame range `r` as a slot, when it fits: at most [`LEN`] bytes, starting
    /// below [`MAX_START`].
    fn in_frame(r: &Range<usize>) -> Option<Slot> {
        let start = u32::try_from(r.start).ok()?;
        let len = u32::try_from(r.end.checked_sub(r.start)?).ok()?;
        (len <= LEN && start < MAX_START).then_some(Slot { start, len })
    }
}

/// Ordered key/value strings that routes match on.
///
/// Keys are matched case-sensitively. Lookups are linear scans, which beat hashing for
/// the dozen-or-so entries a request carries.
///
/// A codec records where each string is in the frame ([`Metadata::set_in_frame`],
/// [`Metadata::set_value_in_frame`]): an entry is two offset pairs, so filling the
/// table copies no bytes, counts no references and checks no UTF-8. The check happens
/// when a value is read as `&str` ([`Metadata::get`], [`Metadata::iter`]); a frame range
/// that is not UTF-8 or lies outside the frame reads as absent. Strings from elsewhere
/// ([`Metadata::set`] with a string that is not a slice of the frame) are kept beside
/// the table.
#[derive(Clone, Default)]
pub struct Metadata {
    frame: Bytes,
    /// One bit per key present ([`key_bit`]): a lookup of a key whose bit is clear
    /// (most of the codec's duplicate checks) scans nothing.
    keys: u64,
    entries: SmallVec<[Entry; INLINE_METADATA_ENTRIES]>,
    /// Strings not found in the frame (values set by filters, keys not known to the
    /// table, text a codec had to decode).
    owned: OwnedStrings,
}

/// The strings a [`Metadata`] keeps beside its table, out of line: one pointer, null
/// until the first string. A frame's own strings, which is all proxying reads, never
/// need it, and a message moves a few times per request: with four strings inline it
/// was 128 bytes larger, and dropping an empty vector cost a call.
// One word where a `Vec` is three, in every message; the second allocation comes only
// with the first owned string.
#[allow(clippy::box_collection)]
#[derive(Clone, Debug, Default)]
struct OwnedStrings(Option<Box<Vec<MetaStr>>>);

impl OwnedStrings {
    fn get(&self, i: usize) -> Option<&MetaStr> {
        self.0.as_ref()?.get(i)
    }

    /// Adds `s`; returns its index.
    fn push(&mut self, s: MetaStr) -> usize {
        let v = self.0.get_or_insert_with(Box::default);
        v.push(s);
        v.len() - 1
    }

    /// Replaces string `i` (which [`OwnedStrings::push`] returned).
    fn replace(&mut self, i: usize, s: MetaStr) {
        if let Some(slot) = self.0.as_mut().and_then(|v| v.get_mut(i)) {
            *slot = s;
        }
    }

    fn clear(&mut self) {
        if let Some(v) = &mut self.0 {
            v.clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }
}

impl Metadata {
    /// An empty set over no frame; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set whose entries may point into `frame`.
    pub fn over_frame(frame: Bytes) -> Self {
        // Field by field: `..Self::default()` would build a whole empty set first and
        // copy its inline table's (uninitialised) bytes along, a call to `memcpy` per
        // decoded message.
        Metadata {
            frame,
            keys: 0,
            entries: SmallVec::new_const(),
            owned: OwnedStrings::default(),
        }
    }

    /// The frame entries point into (empty for a set built without one).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    #[inline]
    fn bytes(&self, s: Slot) -> Option<&[u8]> {
        if s.is_owned() {
            self.owned
                .get(s.start as usize)
                .map(|m| m.as_bytes().as_ref())
        } else if s.len & KNOWN != 0 {
            WellKnownKey::ALL
                .get(s.start as usize)
                .map(|k| k.as_str().as_bytes())
        } else {
            let start = s.start as usize;
            self.frame.get(start..start + s.byte_len())
        }
    }

    #[inline]
    fn text(&self, s: Slot) -> Option<&str> {
        if s.is_owned() {
            self.owned.get(s.start as usize).map(|m| &**m)
        } else if s.len & KNOWN != 0 {
            WellKnownKey::ALL.get(s.start as usize).map(|k| k.as_str())
        } else {
            std::str::from_utf8(self.bytes(s)?).ok()
        }
    }

    /// The entry whose key is `key`: lengths are compared before any bytes. The test
    /// of the key's bit is inlined where it is called (most lookups by codecs are of
    /// keys not there yet, and end at it); the scan is a call.
    #[inline(always)]
    fn position(&self, key: &[u8]) -> Option<usize> {
        self.position_with_bit(key, key_bit(key))
    }

    /// [`Metadata::position`] for a caller that has the key's bit already (it needs
    /// the bit again to add the key, or it is a constant).
    #[inline(always)]
    fn position_with_bit(&self, key: &[u8], bit: u64) -> Option<usize> {
        if self.keys & bit == 0 {
            return None;
        }
        self.scan(key)
    }

    /// [`Metadata::position`] past the key's bit.
    fn scan(&self, key: &[u8]) -> Option<usize> {
        // A stored length is at most `LEN` (an owned key that long may be longer).
        let len = key.len().min(LEN as usize);
        self.entries.iter().position(|e| {
            let k = e.key();
            k.byte_len() == len && self.bytes(k) == Some(key)
        })
    }

    /// The value of `key`, if present.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&str> {
        let v = self.entries[self.position(key.as_bytes())?].value();
        self.text(v)
    }

    /// The bytes of `key`'s value, if present, without the UTF-8 check of
    /// [`Metadata::get`]: for comparing with a known string.
    #[inline]
    pub fn get_bytes(&self, key: &str) -> Option<&[u8]> {
        let v = self.entries[self.position(key.as_bytes())?].value();
        self.bytes(v)
    }

    /// The bytes of the prepared `key`'s value, if present: [`Metadata::get_bytes`]
    /// without working out the key's bit, and with a well-known key matched by number.
    #[inline(always)]
    pub fn get_bytes_by(&self, key: &MetadataKey) -> Option<&[u8]> {
        let v = self.entries[self.position_by(key)?].value();
        self.bytes(v)
    }

    /// The value of the prepared `key`, if present ([`Metadata::get`]).
    #[inline]
    pub fn get_by(&self, key: &MetadataKey) -> Option<&str> {
        let v = self.entries[self.position_by(key)?].value();
        self.text(v)
    }

    /// [`Metadata::position`] for a prepared key: an entry stored under a well-known
    /// number matches when it is this key's number (another number is another key),
    /// any other entry when its bytes are the key's.
    #[inline(always)]
    fn position_by(&self, key: &MetadataKey) -> Option<usize> {
        if self.keys & key.bit == 0 {
            return None;
        }
        let name = key.name.as_bytes();
        let len = name.len().min(LEN as usize);
        self.entries.iter().position(|e| {
            if e.key & KNOWN != 0 {
                e.key == key.known
            } else {
                (e.lens & LEN) as usize == len && self.bytes(e.key()) == Some(name)
            }
        })
    }

    /// The value of `key` as a shared string (a slice of the frame or a clone of the
    /// string set; no copy).
    pub fn get_shared(&self, key: &str) -> Option<MetaStr> {
        let v = self.entries[self.position(key.as_bytes())?].value();
        self.shared(v)
    }

    fn shared(&self, s: Slot) -> Option<MetaStr> {
        if s.is_owned() {
            self.owned.get(s.start as usize).cloned()
        } else if s.len & KNOWN != 0 {
            WellKnownKey::ALL
                .get(s.start as usize)
                .map(|k| MetaStr::from_static(k.as_str()))
        } else {
            let bytes = self.bytes(s)?;
            MetaStr::try_from(self.frame.slice_ref(bytes)).ok()
        }
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The slot of frame range `r`, when it lies inside the frame (and fits a slot).
    #[inline]
    fn frame_slot(&self, r: &Range<usize>) -> Option<Slot> {
        if r.end > self.frame.len() {
            return None;
        }
        Slot::in_frame(r)
    }

    /// The slot of frame range `r`; when it is too long for one, an owned string that
    /// shares the frame's bytes (no copy), if they are UTF-8 (if not, `None`: such a
    /// value would read as absent anyway).
    #[inline(always)]
    fn frame_or_owned(&mut self, r: &Range<usize>) -> Option<Slot> {
        match self.frame_slot(r) {
            Some(slot) => Some(slot),
            None => self.long_in_frame(r),
        }
    }

    /// [`Metadata::frame_or_owned`] for a range no slot holds.
    #[cold]
    #[inline(never)]
    fn long_in_frame(&mut self, r: &Range<usize>) -> Option<Slot> {
        self.frame.get(r.clone())?;
        let s = MetaStr::try_from(self.frame.slice(r.clone())).ok()?;
        let len = s.len();
        Some(Slot::owned(self.owned.push(s), len))
    }

    /// `s`'s place in the frame, when it is a slice of it.
    fn place_in_frame(&self, s: &MetaStr) -> Option<Slot> {
        let base = self.frame.as_ptr() as usize;
        let at = (s.as_bytes().as_ptr() as usize).checked_sub(base)?;
        (!s.is_empty())
            .then(|| self.frame_slot(&(at..at + s.len())))
            .flatten()
    }

    /// A slot for `s`: its place in the frame when it is a slice of it, else a new
    /// owned string.
    fn slot_for(&mut self, s: MetaStr) -> Slot {
        if let Some(slot) = self.place_in_frame(&s) {
            return slot;
        }
        let len = s.len();
        let index = self.owned.push(s);
        Slot::owned(index, len)
    }

    /// Points entry `i` at a new value, reusing its owned string's place when it had one.
    fn replace_value(&mut self, i: usize, value: MetaStr) {
        let old = self.entries[i].value();
        let new = match self.place_in_frame(&value) {
            Some(slot) => slot,
            None if old.is_owned() => {
                let len = value.len();
                self.owned.replace(old.start as usize, value);
                Slot::owned(old.start as usize, len)
            }
            None => self.slot_for(value),
        };
        self.entries[i].set_value(new);
    }

    /// Sets `key` to `value`, replacing an existing value. A string that is a slice of
    /// the frame is stored as its offsets; any other is kept beside the table.
    pub fn set(&mut self, key: MetaStr, value: MetaStr) {
        let bit = key_bit(key.as_bytes());
        match self.position_with_bit(key.as_bytes(), bit) {
            Some(i) => self.replace_value(i, value),
            None => {
                let k = self.slot_for(key);
                let v = self.slot_for(value);
                self.push(bit, k, v);
            }
        }
    }

    #[inline]
    fn push(&mut self, bit: u64, k: Slot, v: Slot) {
        self.keys |= bit;
        self.entries.push(Entry::new(k, v));
    }

    /// Recomputes the key bits after entries were removed.
    fn rebuild_keys(&mut self) {
        self.keys = 0;
        for i in 0..self.entries.len() {
            let bit = self.bytes(self.entries[i].key()).map_or(0, key_bit);
            self.keys |= bit;
        }
    }

    /// Sets the key at frame range `key` to the value at frame range `value`,
    /// replacing an existing value. Both must be UTF-8 (the codec checks; a range that
    /// is not reads as absent) and lie inside the frame (a range that does not is
    /// ignored). Copies nothing and counts no reference, unless a string is over 64 KiB:
    /// that one is kept as a shared slice of the frame (one reference), and ignored when
    /// it is not UTF-8.
    #[inline]
    pub fn set_in_frame(&mut self, key: Range<usize>, value: Range<usize>) {
        // The key is checked before the value takes an owned string (a long one).
        let Some(key_bytes) = self.frame.get(key.clone()) else {
            return;
        };
        let bit = key_bit(key_bytes);
        let found = self.position_with_bit(key_bytes, bit);
        let Some(v) = self.frame_or_owned(&value) else {
            return;
        };
        match found {
            Some(i) => self.entries[i].set_value(v),
            None => {
                if let Some(k) = self.frame_or_owned(&key) {
                    self.push(bit, k, v);
                }
            }
        }
    }

    /// Sets `key` (typically [`MetaStr::from_static`]) to the value at frame range
    /// `value`, under the rules of [`Metadata::set_in_frame`].
    #[inline]
    pub fn set_value_in_frame(&mut self, key: MetaStr, value: Range<usize>) {
        let Some(v) = self.frame_or_owned(&value) else {
            return;
        };
        let bit = key_bit(key.as_bytes());
        match self.position_with_bit(key.as_bytes(), bit) {
            Some(i) => self.entries[i].set_value(v),
            None => {
                let k = self.slot_for(key);
                self.push(bit, k, v);
            }
        }
    }

    /// Sets the well-known `key` to the value at frame range `value`, under the rules
    /// of [`Metadata::set_in_frame`]; the key takes no room beside the table.
    #[inline(always)]
    pub fn set_known_in_frame(&mut self, key: WellKnownKey, value: Range<usize>) {
        // The common case, a codec filling a new message: the key is absent, the value
        // fits a slot and the inline table has room. Anything else takes the call.
        let bit = key.bit();
        match self.frame_slot(&value) {
            Some(v) if self.keys & bit == 0 && self.entries.len() < INLINE_METADATA_ENTRIES => {
                self.keys |= bit;
                self.entries.push(Entry::new(Slot::known(key), v));
            }
            _ => self.set_known_in_frame_slow(key, value),
        }
    }

    /// [`Metadata::set_known_in_frame`] when the key is present, the value is long or
    /// the table spills.
    #[inline(never)]
    fn set_known_in_frame_slow(&mut self, key: WellKnownKey, value: Range<usize>) {
        let Some(v) = self.frame_or_owned(&value) else {
            return;
        };
        let bit = key.bit();
        match self.position_with_bit(key.as_str().as_bytes(), bit) {
            Some(i) => self.entries[i].set_value(v),
            None => self.push(bit, Slot::known(key), v),
        }
    }

    /// Adds `key` only when it is not present yet (an earlier, stronger source wins).
    pub fn set_if_absent(&mut self, key: MetaStr, value: MetaStr) {
        let bit = key_bit(key.as_bytes());
        if self.position_with_bit(key.as_bytes(), bit).is_none() {
            let k = self.slot_for(key);
            let v = self.slot_for(value);
            self.push(bit, k, v);
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<MetaStr> {
        let i = self.position(key.as_bytes())?;
        self.remove_at(i)
    }

    /// Removes the key at frame range `key` (a codec's "a later null value wins").
    pub fn remove_in_frame(&mut self, key: Range<usize>) {
        if let Some(i) = self.frame.get(key).and_then(|k| self.position(k)) {
            self.remove_at(i);
        }
    }

    fn remove_at(&mut self, i: usize) -> Option<MetaStr> {
        let v = self.entries.remove(i).value();
        self.rebuild_keys();
        self.shared(v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps the first `len` entries (in insertion order) and drops the rest: undoes
    /// what a codec added since [`Metadata::len`] was `len`, when it adds entries only.
    pub fn truncate(&mut self, len: usize) {
        if len < self.entries.len() {
            self.entries.truncate(len);
            self.rebuild_keys();
        }
    }

    /// Removes every entry, keeping the storage and the frame.
    pub fn clear(&mut self) {
        self.keys = 0;
        self.entries.clear();
        self.owned.clear();
    }

    /// The entries in insertion order (an entry that is not UTF-8 is left out).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries
            .iter()
            .filter_map(|e| Some((self.text(e.key())?, self.text(e.value())?)))
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Metadata {}

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

/// A message's metadata, open for changes in place: every change [`Metadata`] offers
/// (it reads as a `&Metadata` too), but not replacing the whole set. The metadata also
/// holds the frame its entries point into, which the message forwards: a whole set
/// assigned over it would swap the bytes sent along with it, so
/// [`crate::Message::metadata_mut`] hands out this instead of `&mut Metadata`.
///
/// ```compile_fail
/// # use meta_protocol::{bytes::Bytes, Message, MessageKind, Metadata};
/// let mut msg = Message::new(MessageKind::Request, 1, Bytes::from_static(b"frame"));
/// *msg.metadata_mut() = Metadata::new(); // refused: the frame would go with it
/// ```
pub struct MetadataMut<'a>(&'a mut Metadata);

impl<'a> MetadataMut<'a> {
    /// Opens `metadata` for changes (what [`crate::Message::metadata_mut`] does).
    pub(crate) fn new(metadata: &'a mut Metadata) -> Self {
        MetadataMut(metadata)
    }

    /// [`Metadata::set`].
    #[inline]
    pub fn set(&mut self, key: MetaStr, value: MetaStr) {
        self.0.set(key, value)
    }

    /// [`Metadata::set_in_frame`].
    #[inline]
    pub fn set_in_frame(&mut self, key: Range<usize>, value: Range<usize>) {
        self.0.set_in_frame(key, value)
    }

    /// [`Metadata::set_value_in_frame`].
    #[inline]
    pub fn set_value_in_frame(&mut self, key: MetaStr, value: Range<usize>) {
        self.0.set_value_in_frame(key, value)
    }

    /// [`Metadata::set_known_in_frame`].
    #[inline(always)]
    pub fn set_known_in_frame(&mut self, key: WellKnownKey, value: Range<usize>) {
        self.0.set_known_in_frame(key, value)
    }

    /// [`Metadata::set_if_absent`].
    #[inline]
    pub fn set_if_absent(&mut self, key: MetaStr, value: MetaStr) {
        self.0.set_if_absent(key, value)
    }

    /// [`Metadata::remove`].
    #[inline]
    pub fn remove(&mut self, key: &str) -> Option<MetaStr> {
        self.0.remove(key)
    }

    /// [`Metadata::remove_in_frame`].
    #[inline]
    pub fn remove_in_frame(&mut self, key: Range<usize>) {
        self.0.remove_in_frame(key)
    }

    /// [`Metadata::truncate`].
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.0.truncate(len)
    }

    /// [`Metadata::clear`]: every entry goes, the frame stays.
    #[inline]
    pub fn clear(&mut self) {
        self.0.clear()
    }
}

impl std::ops::Deref for MetadataMut<'_> {
    type Target = Metadata;

    fn deref(&self) -> &Metadata {
        self.0
    }
}

impl std::fmt::Debug for MetadataMut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
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
        let frame = Bytes::from_static(b"interface=com.example.Demo");
        let mut m = Metadata::over_frame(frame.clone());
        m.set(
            "interface".into(),
            MetaStr::try_from(frame.slice(10..)).unwrap(),
        );
        // A slice of the frame is kept as offsets, not as a second reference.
        assert!(m.owned.len() == 1, "only the key is owned: {:?}", m.owned);
        let value = m.get_shared("interface").unwrap();
        assert_eq!(value.as_bytes().as_ptr(), frame[10..].as_ptr());
        assert_eq!(m.get("interface"), Some("com.example.Demo"));
    }

    #[test]
    fn frame_ranges_are_read_back_and_a_later_key_wins() {
        let frame = Bytes::from_static(b"user=alice;user=bob;group=g");
        let mut m = Metadata::over_frame(frame);
        m.set_in_frame(0..4, 5..10);
        m.set_in_frame(11..15, 16..19);
        m.set_in_frame(20..25, 26..27);
        m.set_value_in_frame(MetaStr::from_static("method"), 5..10);
        assert_eq!(m.get("user"), Some("bob"));
        assert_eq!(m.get_bytes("group"), Some(&b"g"[..]));
        assert_eq!(m.get("method"), Some("alice"));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("user", "bob"), ("group", "g"), ("method", "alice")]
        );
        m.remove_in_frame(0..4);
        assert_eq!(m.get("user"), None);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_range_that_is_not_utf8_reads_as_absent_and_one_outside_is_ignored() {
        let frame = Bytes::from_static(b"k\xffv");
        let mut m = Metadata::over_frame(frame);
        m.set_in_frame(0..1, 1..2);
        assert_eq!(m.get("k"), None);
        assert_eq!(m.get_bytes("k"), Some(&[0xff][..]));
        assert_eq!(m.iter().count(), 0);
        m.set_in_frame(0..1, 2..9);
        m.set_in_frame(7..9, 0..1);
        assert_eq!(m.len(), 1, "ranges outside the frame are not stored");
        assert_eq!(m.get_bytes("k"), Some(&[0xff][..]));
    }

    #[test]
    fn well_known_keys_read_like_any_other() {
        let frame = Bytes::from_static(b"svc.Demo/sayHi");
        let mut m = Metadata::over_frame(frame);
        m.set_known_in_frame(WellKnownKey::Interface, 0..8);
        m.set_known_in_frame(WellKnownKey::Method, 9..14);
        m.set_known_in_frame(WellKnownKey::Method, 9..12);
        assert_eq!(m.owned.len(), 0, "no string kept beside the table");
        assert_eq!(m.get("interface"), Some("svc.Demo"));
        assert_eq!(m.get("method"), Some("say"));
        assert_eq!(m.get_shared("method").as_deref(), Some("say"));
        m.set("method".into(), "other".into());
        assert_eq!(m.get("method"), Some("other"));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("interface", "svc.Demo"), ("method", "other")]
        );
        assert_eq!(m.remove("interface").as_deref(), Some("svc.Demo"));
        for k in WellKnownKey::ALL {
            assert_eq!(Slot::known(k).byte_len(), k.as_str().len());
        }
    }

    #[test]
    fn keys_are_found_after_removals_and_truncation() {
        let mut m = Metadata::new();
        let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
        for k in &keys {
            m.set(k.as_str().into(), "v".into());
        }
        assert!(keys.iter().all(|k| m.contains(k)));
        m.remove("key-3");
        m.truncate(30);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.contains(k), i != 3 && i < 31, "{k}");
        }
        m.set("key-3".into(), "again".into());
        assert_eq!(m.get("key-3"), Some("again"));
        m.clear();
        assert!(!m.contains("key-0"));
    }

    #[test]
    fn replacing_an_owned_value_reuses_its_place() {
        let mut m = Metadata::new();
        for v in ["a", "b", "c", "d", "e", "f"] {
            m.set("k".into(), MetaStr::from(v.to_owned()));
        }
        assert_eq!(m.get("k"), Some("f"));
        assert_eq!(m.owned.len(), 2, "one key and one value: {:?}", m.owned);
    }

    #[test]
    fn equality_compares_contents_not_where_they_are_kept() {
        let frame = Bytes::from_static(b"user=alice");
        let mut a = Metadata::over_frame(frame);
        a.set_in_frame(0..4, 5..10);
        let b: Metadata = [("user", "alice")].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let c: Metadata = [("user", "bob")].into_iter().collect();
        assert_ne!(a, c);
    }

    #[test]
    fn a_well_known_keys_bit_is_the_bit_of_its_name() {
        for key in WellKnownKey::ALL {
            assert_eq!(key.bit(), key_bit(key.as_str().as_bytes()), "{key:?}");
        }
        assert_eq!(key_bit(b""), 1);
        assert_eq!(key_bit(b"a"), 1 << ((7 + 97 * 4) & 63));
    }

    #[test]
    fn strings_longer_than_a_slot_share_the_frame_and_read_back_whole() {
        let long = LEN as usize + 10;
        let mut bytes = b"key=".to_vec();
        bytes.extend(std::iter::repeat_n(b'v', long));
        bytes.extend_from_slice(b"\xff\xfe");
        let frame = Bytes::from(bytes);
        let mut m = Metadata::over_frame(frame.clone());
        m.set_in_frame(0..3, 4..4 + long);
        assert_eq!(m.get("key").map(str::len), Some(long));
        m.set_known_in_frame(WellKnownKey::Method, 4..4 + long);
        assert_eq!(m.get_by(&"method".into()).map(str::len), Some(long));
        // A long key, then long values that are not UTF-8: those are left out.
        m.set_in_frame(4..4 + long, 0..3);
        assert_eq!(
            m.get(std::str::from_utf8(&frame[4..4 + long]).unwrap()),
            Some("key")
        );
        m.set_value_in_frame("bad".into(), 4..frame.len());
        assert_eq!(m.get("bad"), None);
        assert_eq!(m.len(), 3);
        // Kept as slices of the frame: the long strings were not copied.
        let shared = m.get_shared("key").unwrap();
        assert_eq!(shared.as_ptr(), frame[4..].as_ptr());
        // An owned key over the length field still compares whole.
        let owned_key = "k".repeat(long);
        m.set(owned_key.as_str().into(), "x".into());
        let mut other = owned_key.clone();
        other.push('k');
        assert_eq!(m.get(&owned_key), Some("x"));
        assert_eq!(m.get(&other), None);
        assert_eq!(m.get(&owned_key[..LEN as usize]), None);
    }

    #[test]
    fn a_prepared_key_finds_what_its_name_finds() {
        let frame = Bytes::from_static(b"svc.Demo say version 1.0 method x");
        let mut m = Metadata::over_frame(frame);
        m.set_known_in_frame(WellKnownKey::Interface, 0..8);
        // `version` stored as frame bytes, not by number: found by its bytes.
        m.set_in_frame(13..20, 21..24);
        m.set("user".into(), "alice".into());
        m.set_known_in_frame(WellKnownKey::Method, 9..12);
        for name in [
            "interface",
            "method",
            "version",
            "user",
            "service",
            "group",
            "nope",
            "",
        ] {
            let key = MetadataKey::new(name);
            assert_eq!(key.as_str(), name);
            assert_eq!(m.get_by(&key), m.get(name), "{name}");
            assert_eq!(m.get_bytes_by(&key), m.get_bytes(name), "{name}");
        }
        assert_eq!(m.get_by(&"interface".into()), Some("svc.Demo"));
        assert_eq!(m.get_by(&"version".into()), Some("1.0"));
        // `service` has `version`'s length and a known number of its own: not a match.
        assert_eq!(m.get_by(&"service".into()), None);
        m.set("method".into(), "other".into());
        assert_eq!(m.get_by(&"method".into()), Some("other"));
        m.remove("interface");
        assert_eq!(m.get_by(&"interface".into()), None);
    }

    #[test]
    fn a_message_is_small_enough_to_move_cheaply() {
        // Two offsets and two 16-bit lengths per entry: the inline table is 12 bytes an
        // entry.
        assert_eq!(std::mem::size_of::<Entry>(), 12);
        assert!(
            std::mem::size_of::<Metadata>() <= 176,
            "{}",
            std::mem::size_of::<Metadata>()
        );
    }
}
