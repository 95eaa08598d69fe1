//! The token a client connection gives each request it sends upstream, so that the
//! response (or failure) finds its way back to the right in-flight entry.

/// Names one in-flight request of one client connection: the request's slot in the
/// connection's in-flight table and the generation the connection stamped on it. Slots
/// are reused once a request completes; a response or deadline that arrives for an
/// older generation of the slot is stale and must be dropped, which
/// [`RequestToken::is_for`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RequestToken {
    generation: u32,
    slot: u32,
}

impl RequestToken {
    /// The token of the request stored at `slot` with `generation`. The in-flight table
    /// is bounded by the cluster's `max_pending_requests`, far below 2^32 slots; a slot
    /// beyond that would wrap and then fail the generation check rather than panic.
    pub(crate) fn new(slot: usize, generation: u32) -> Self {
        RequestToken {
            generation,
            slot: slot as u32,
        }
    }

    /// The request's slot in the in-flight table.
    pub(crate) fn slot(self) -> usize {
        self.slot as usize
    }

    /// Whether an entry stamped with `generation` is the request this token names (and
    /// not a later request that reused the slot).
    pub(crate) fn is_for(self, generation: u32) -> bool {
        self.generation == generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slab::Slab;

    #[test]
    fn slot_and_generation_round_trip() {
        for (slot, generation) in [(0, 0), (7, 1), (65_535, 9), (u32::MAX as usize, u32::MAX)] {
            let t = RequestToken::new(slot, generation);
            assert_eq!(t.slot(), slot);
            assert!(t.is_for(generation));
            assert!(!t.is_for(generation.wrapping_add(1)));
        }
        assert_eq!(std::mem::size_of::<RequestToken>(), 8);
    }

    #[test]
    fn a_reused_slot_does_not_match_the_old_token() {
        // The connection's protocol: stamp a new generation per request, store it with
        // the request, and accept a token only when both slot and generation agree.
        let mut inflight: Slab<u32> = Slab::new();
        let mut generation = 0u32;
        let mut send = |inflight: &mut Slab<u32>| {
            generation = generation.wrapping_add(1);
            let token = RequestToken::new(inflight.vacant_key(), generation);
            inflight.insert(generation);
            token
        };
        let first = send(&mut inflight);
        inflight.remove(first.slot());
        let second = send(&mut inflight);
        assert_eq!(first.slot(), second.slot(), "the slot was reused");
        assert_ne!(first, second);
        let live = |t: RequestToken, inflight: &Slab<u32>| {
            inflight.get(t.slot()).is_some_and(|g| t.is_for(*g))
        };
        assert!(
            !live(first, &inflight),
            "a late response to the first is stale"
        );
        assert!(live(second, &inflight));
    }
}
