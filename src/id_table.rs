//! An upstream connection's requests in flight, by the connection-local id the proxy
//! gave each one: a table indexed by the id's low bits, so finding a response's request
//! hashes nothing and touches one entry.
//!
//! Ids are handed out in sequence, skipping any whose place is taken, so the entries of
//! a steady stream of requests sit next to each other. The table is kept at most half
//! full (it doubles before an insert would pass that), which leaves every run of ids a
//! free place within the table's length. An entry keeps its whole id, so a response
//! for an id no longer in the table (expired and swept) matches nothing: ids repeat
//! only after 2^31 of them.

/// The largest id (ids are 31 bits: Thrift's sequence id is a signed 32-bit number).
pub(crate) const MAX_ID: u32 = 0x7fff_ffff;

/// The table's length once it has any entry.
const MIN_CAPACITY: usize = 16;

/// Values by connection-local id. See the module documentation.
pub(crate) struct IdTable<T> {
    /// A power of two in length (or empty); entry `id & (len - 1)` holds `id`.
    slots: Vec<Option<(u32, T)>>,
    len: usize,
    /// The last id handed out.
    last_id: u32,
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        IdTable {
            slots: Vec::new(),
            len: 0,
            last_id: 0,
        }
    }
}

impl<T> IdTable<T> {
    /// Entries in the table.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entry.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries the table has room for (twice what it may hold).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The next id in sequence whose place is free, growing the table first when one
    /// more entry would fill more than half of it. Nothing is stored until
    /// [`IdTable::insert`] with that id (a one-way request takes an id and no entry).
    pub(crate) fn next_free_id(&mut self) -> u32 {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        // At most half the places are taken, so this ends within `slots.len()` steps:
        // that many ids in a row name every place once.
        loop {
            self.last_id = self.last_id.wrapping_add(1) & MAX_ID;
            if self.slots[self.last_id as usize & mask].is_none() {
                return self.last_id;
            }
        }
    }

    /// Stores `value` under `id`, which [`IdTable::next_free_id`] returned with nothing
    /// inserted since (so its place is free and the table has room).
    pub(crate) fn insert(&mut self, id: u32, value: T) {
        let mask = self.slots.len().wrapping_sub(1);
        match self.slots.get_mut(id as usize & mask) {
            Some(slot @ None) => {
                *slot = Some((id, value));
                self.len += 1;
            }
            _ => debug_assert!(false, "insert without next_free_id"),
        }
    }

    /// Takes the value of `id` out of the table, if it is there.
    pub(crate) fn remove(&mut self, id: u64) -> Option<T> {
        let id = u32::try_from(id).ok()?;
        let mask = self.slots.len().checked_sub(1)?;
        let slot = self.slots.get_mut(id as usize & mask)?;
        match slot {
            Some((stored, _)) if *stored == id => {
                self.len -= 1;
                slot.take().map(|(_, value)| value)
            }
            _ => None,
        }
    }

    /// Keeps only the values `keep` says to keep; hands the others to `removed`.
    pub(crate) fn retain_or(
        &mut self,
        mut keep: impl FnMut(&T) -> bool,
        mut removed: impl FnMut(T),
    ) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|(_, value)| !keep(value)) {
                if let Some((_, value)) = slot.take() {
                    removed(value);
                }
                self.len -= 1;
            }
        }
    }

    /// Takes every value out (in no particular order), keeping the room; what the
    /// iterator is not asked for stays.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        let len = &mut self.len;
        self.slots.iter_mut().filter_map(move |slot| {
            let (_, value) = slot.take()?;
            *len -= 1;
            Some(value)
        })
    }

    /// Frees the room when the table is empty.
    pub(crate) fn free_when_empty(&mut self) {
        if self.len == 0 && !self.slots.is_empty() {
            self.slots = Vec::new();
        }
    }

    fn grow(&mut self) {
        let length = (self.slots.len() * 2).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.slots, (0..length).map(|_| None).collect());
        let mask = length - 1;
        // Ids in different places of the smaller table are in different places of this
        // one too (its mask has the same low bits and one more).
        for (id, value) in old.into_iter().flatten() {
            self.slots[id as usize & mask] = Some((id, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_in_sequence_and_find_their_values() {
        let mut t = IdTable::default();
        let ids: Vec<u32> = (0..100)
            .map(|i| {
                let id = t.next_free_id();
                t.insert(id, i);
                id
            })
            .collect();
        assert_eq!(ids, (1..=100).collect::<Vec<u32>>());
        assert_eq!(t.len(), 100);
        assert!(t.capacity() >= 200, "at most half full");
        for (i, &id) in ids.iter().enumerate().rev() {
            assert_eq!(t.remove(u64::from(id)), Some(i));
            assert_eq!(t.remove(u64::from(id)), None, "taken once");
        }
        assert!(t.is_empty());
    }

    #[test]
    fn a_long_lived_entry_is_skipped_and_a_late_answer_for_a_removed_id_finds_nothing() {
        let mut t = IdTable::default();
        let old = t.next_free_id();
        t.insert(old, "slow");
        // Many requests come and go while the first stays: each later id is free of
        // it, and the table does not grow (one or two entries at a time).
        for _ in 0..10_000 {
            let id = t.next_free_id();
            assert_ne!(id as usize % t.capacity(), old as usize % t.capacity());
            t.insert(id, "fast");
            assert_eq!(t.remove(u64::from(id)), Some("fast"));
        }
        assert_eq!(t.capacity(), MIN_CAPACITY);
        // An id whose entry was swept: its place may hold another id by now.
        let swept = t.next_free_id();
        t.insert(swept, "swept");
        t.retain_or(|v| *v != "swept", drop);
        let next = t.next_free_id();
        t.insert(next, "next");
        assert_eq!(t.remove(u64::from(swept)), None);
        assert_eq!(t.remove(u64::from(old)), Some("slow"));
        assert_eq!(t.remove(u64::from(next)), Some("next"));
        // Ids the proxy never hands out find nothing.
        assert_eq!(t.remove(u64::MAX), None);
        assert_eq!(t.remove(u64::from(MAX_ID) + 1), None);
    }

    #[test]
    fn ids_wrap_within_31_bits_and_stay_unique() {
        let mut t = IdTable::<()> {
            last_id: MAX_ID - 2,
            ..IdTable::default()
        };
        let held = t.next_free_id();
        t.insert(held, ());
        let mut seen = vec![held];
        for _ in 0..5 {
            let id = t.next_free_id();
            assert!(id <= MAX_ID);
            assert!(!seen.contains(&id));
            t.insert(id, ());
            seen.push(id);
        }
        assert_eq!(seen, [MAX_ID - 1, MAX_ID, 0, 1, 2, 3]);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn growing_keeps_every_entry_and_an_emptied_table_frees_its_room() {
        let mut t = IdTable::default();
        let mut ids = Vec::new();
        for i in 0..1_000u32 {
            let id = t.next_free_id();
            t.insert(id, i);
            ids.push(id);
            // Remove every third, so the survivors are spread over the table.
            if i % 3 == 0 {
                assert_eq!(t.remove(u64::from(id)), Some(i));
            }
        }
        assert_eq!(t.len(), 666);
        assert!(t.capacity().is_power_of_two() && t.capacity() >= 2 * t.len());
        for (i, &id) in ids.iter().enumerate() {
            let expected = (i % 3 != 0).then_some(i as u32);
            assert_eq!(t.remove(u64::from(id)), expected);
        }
        t.free_when_empty();
        assert_eq!(t.capacity(), 0);
        // Usable again after freeing.
        let id = t.next_free_id();
        t.insert(id, 7);
        assert_eq!(t.remove(u64::from(id)), Some(7));
    }

    #[test]
    fn retain_or_and_drain_count_and_hand_over_what_they_take() {
        let mut t = IdTable::default();
        for i in 0..10 {
            let id = t.next_free_id();
            t.insert(id, i);
        }
        let mut removed = Vec::new();
        t.retain_or(|v| v % 2 == 0, |v| removed.push(v));
        removed.sort();
        assert_eq!(removed, [1, 3, 5, 7, 9]);
        assert_eq!(t.len(), 5);
        let mut rest: Vec<i32> = t.drain().collect();
        rest.sort();
        assert_eq!(rest, [0, 2, 4, 6, 8]);
        assert!(t.is_empty());
        t.free_when_empty();
        assert_eq!(t.capacity(), 0);
    }
}
