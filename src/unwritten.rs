//! An upstream connection's requests encoded but not yet completely written, kept for
//! a retry should the connection go away before they are.
//!
//! A request is about 500 bytes. A `VecDeque` push copies it twice (into the argument,
//! then into the queue, about 76 instructions each), on every two-way request. This
//! ring keeps its free entries as `None` in place, so taking a request is one swap of
//! the caller's slot with a free entry, and a request written in full is dropped where
//! it lies.

use meta_protocol::Message;

/// Requests in the order they were encoded: (end offset in the connection's output
/// stream, connection-local id, request).
#[derive(Default)]
pub(crate) struct Unwritten {
    /// Every entry outside the live range holds `None`. Its length is 0 or a power of
    /// two, so an index wraps with a mask.
    slots: Vec<Entry>,
    /// Index of the oldest live entry.
    head: usize,
    /// Live entries.
    len: usize,
}

struct Entry {
    end: u64,
    id: u64,
    msg: Option<Message>,
}

impl Unwritten {
    /// Takes the request in `msg` (leaving `None` there) as the newest entry: its last
    /// byte is at `end` in the output stream.
    pub(crate) fn push(&mut self, end: u64, id: u64, msg: &mut Option<Message>) {
        if self.len == self.slots.len() {
            self.grow();
        }
        let i = self.index(self.len);
        let entry = &mut self.slots[i];
        entry.end = end;
        entry.id = id;
        // A free entry holds none. (`take` compiles to two copies of the message,
        // through a temporary; a swap, to a word-by-word loop twice as long.)
        debug_assert!(entry.msg.is_none());
        entry.msg = msg.take();
        self.len += 1;
    }

    /// Drops the requests whose last byte is at or before `written`: they are sent.
    pub(crate) fn written_up_to(&mut self, written: u64) {
        while self.len > 0 && self.slots[self.head].end <= written {
            self.slots[self.head].msg = None;
            self.head = self.index(1);
            self.len -= 1;
        }
    }

    /// Takes the oldest request out, as (id, request).
    pub(crate) fn pop_oldest(&mut self) -> Option<(u64, Option<Message>)> {
        if self.len == 0 {
            return None;
        }
        let entry = &mut self.slots[self.head];
        let oldest = (entry.id, entry.msg.take());
        self.head = self.index(1);
        self.len -= 1;
        Some(oldest)
    }

    /// Requests kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries the ring has room for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Frees the ring's room when it holds nothing.
    pub(crate) fn free_when_empty(&mut self) {
        if self.len == 0 && !self.slots.is_empty() {
            *self = Unwritten::default();
        }
    }

    /// The ids kept, oldest first.
    #[cfg(test)]
    pub(crate) fn ids(&self) -> Vec<u64> {
        (0..self.len)
            .map(|k| self.slots[self.index(k)].id)
            .collect()
    }

    fn index(&self, k: usize) -> usize {
        (self.head + k) & self.slots.len().wrapping_sub(1)
    }

    /// Doubles the room (at least 4 entries), the live entries first.
    fn grow(&mut self) {
        self.slots.rotate_left(self.head);
        self.head = 0;
        let more = self.slots.len().max(4);
        self.slots.resize_with(self.slots.len() + more, || Entry {
            end: 0,
            id: 0,
            msg: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use meta_protocol::MessageKind;

    fn request(id: u64) -> Option<Message> {
        Some(Message::new(
            MessageKind::Request,
            id,
            Bytes::from_static(b"frame"),
        ))
    }

    #[test]
    fn a_request_is_kept_until_its_last_byte_is_written() {
        let mut ring = Unwritten::default();
        for (end, id) in [(100, 1), (200, 2), (300, 3)] {
            let mut slot = request(id);
            ring.push(end, id, &mut slot);
            assert!(slot.is_none(), "the request moved into the ring");
        }
        ring.written_up_to(150);
        assert_eq!(ring.ids(), [2, 3], "request 2 is half written: still kept");
        ring.written_up_to(200);
        assert_eq!(ring.len(), 1);
        ring.written_up_to(300);
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn entries_wrap_around_and_grow_in_order() {
        let mut ring = Unwritten::default();
        let mut next = 0u64;
        // Keep 3 in flight while 20 go through a ring of 4: the live range wraps.
        for _ in 0..20 {
            next += 1;
            ring.push(next * 10, next, &mut request(next));
            if ring.len() > 3 {
                ring.written_up_to((next - 3) * 10);
            }
        }
        assert_eq!(ring.capacity(), 4, "three in flight fit in the first room");
        assert_eq!(ring.ids(), [18, 19, 20]);
        // Now 10 more without any written: it grows, oldest first still.
        for _ in 0..10 {
            next += 1;
            ring.push(next * 10, next, &mut request(next));
        }
        assert_eq!(ring.ids(), (18..=30).collect::<Vec<_>>());
        let drained: Vec<(u64, bool)> = std::iter::from_fn(|| ring.pop_oldest())
            .map(|(id, m)| (id, m.is_some()))
            .collect();
        assert_eq!(
            drained,
            (18..=30).map(|id| (id, true)).collect::<Vec<_>>(),
            "a retry gets every request back, oldest first"
        );
        assert_eq!(ring.len(), 0);
        // The entries it left are free again: a new request takes one and hands
        // nothing back.
        let mut slot = request(31);
        ring.push(310, 31, &mut slot);
        assert!(slot.is_none());
        assert_eq!(ring.ids(), [31]);
    }

    #[test]
    fn written_requests_are_dropped_in_place_and_an_empty_ring_frees_its_room() {
        let mut ring = Unwritten::default();
        let frame = Bytes::from(vec![7u8; 64]);
        for id in 0..1_000 {
            let mut slot = Some(Message::new(MessageKind::Request, id, frame.clone()));
            ring.push(id, id, &mut slot);
        }
        assert!(ring.capacity() >= 1_000);
        ring.written_up_to(999);
        assert_eq!(ring.len(), 0);
        assert!(
            frame.is_unique(),
            "every written request was dropped, not kept in a free entry"
        );
        ring.free_when_empty();
        assert_eq!(ring.capacity(), 0);
    }
}
