//! The keys one limit remembers, bounded: at most `max_keys` entries, the least recently seen
//! forgotten for a new one (nginx's zone does the same when its memory is full).
//!
//! An entry is identified by a 64-bit keyed hash of the key (SipHash with a random key per
//! limit), not the key itself: every entry has the same size whatever the key's length, so the
//! bound holds in bytes too (`BYTES_PER_KEY`). Two keys share an entry only if their hashes
//! collide, which a client cannot arrange without the random key, and which among 100 000 keys
//! happens with a chance of about 3 in 10^10.
//!
//! Entries live in one vector, linked in order of use by indices (most recent first); a map
//! from hash to index finds them. A slot that is reused for another key gets a new
//! generation, so a request in progress that holds the old key's slot (`Slot`) cannot touch
//! the new key's counts.

/// The end of the use order.
const NIL: u32 = u32::MAX;

/// Heap bytes per remembered key, at most: an [`Entry`] (40 bytes), plus the index's share (a
/// 4-byte slot per entry, slots at least twice the entries, doubled at worst by rounding to a
/// power of two: 16 bytes). A limit holds at most `max_keys * BYTES_PER_KEY` bytes (and 128
/// for a nearly empty index).
pub const BYTES_PER_KEY: usize = 56;

/// One key's state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    hash: u64,
    /// nginx's `last`: when the last request was accounted, in ms of the limiter's clock.
    pub(super) last: u64,
    /// nginx's `excess`: requests beyond the rate, in thousandths of a request.
    pub(super) excess: u64,
    /// Requests in progress (nginx's `limit_conn` count).
    pub(super) conns: u32,
    generation: u32,
    prev: u32,
    next: u32,
}

/// Where a key's entry is, as long as it is still that key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    index: u32,
    generation: u32,
}

/// Finds entries by hash: open addressing with linear probing over entry indices, at most half
/// full, with deletion by shifting back (no tombstones, so a steady churn of keys never grows
/// it). std's map was tried first: its tombstones made it grow to four times the keys.
#[derive(Debug)]
struct Index {
    slots: Vec<u32>,
}

impl Index {
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask()
    }

    /// The position of `hash`'s slot, or of the empty slot where it would go.
    fn position(&self, entries: &[Entry], hash: u64) -> usize {
        let mut i = self.home(hash);
        loop {
            match self.slots[i] {
                NIL => return i,
                e if entries[e as usize].hash == hash => return i,
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    fn find(&self, entries: &[Entry], hash: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        match self.slots[self.position(entries, hash)] {
            NIL => None,
            e => Some(e),
        }
    }

    /// Adds entry `index` (whose hash is not in yet); `len` entries are in already, and room
    /// is made for one more while keeping at most half the slots used.
    fn insert(&mut self, entries: &[Entry], index: u32, len: usize) {
        if (len + 1) * 2 > self.slots.len() {
            self.grow(entries, len + 1);
        }
        let at = self.position(entries, entries[index as usize].hash);
        self.slots[at] = index;
    }

    fn grow(&mut self, entries: &[Entry], want: usize) {
        let size = (want * 2).next_power_of_two().max(32);
        let old = std::mem::replace(&mut self.slots, vec![NIL; size]);
        for e in old.into_iter().filter(|&e| e != NIL) {
            let at = self.position(entries, entries[e as usize].hash);
            self.slots[at] = e;
        }
    }

    /// Removes `hash`, shifting back the entries after it that probed past its slot.
    fn remove(&mut self, entries: &[Entry], hash: u64) {
        let mut hole = self.position(entries, hash);
        if self.slots[hole] == NIL {
            return;
        }
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let e = self.slots[j];
            if e == NIL {
                break;
            }
            let home = self.home(entries[e as usize].hash);
            // Entry `e` may fill the hole if its home is not within (hole, j], cyclically.
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = e;
                hole = j;
            }
        }
        self.slots[hole] = NIL;
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<u32>()
    }
}

#[derive(Debug)]
pub(super) struct Keys {
    index: Index,
    entries: Vec<Entry>,
    /// Most and least recently used.
    head: u32,
    tail: u32,
    max: u32,
}

impl Keys {
    pub(super) fn new(max: u32) -> Keys {
        Keys {
            index: Index { slots: Vec::new() },
            entries: Vec::new(),
            head: NIL,
            tail: NIL,
            max: max.max(1),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry of `hash`, made the most recently used; a new one (excess 0, last `now`) if
    /// the key is not remembered. `true` with a new entry.
    pub(super) fn find_or_insert(&mut self, hash: u64, now: u64) -> (Slot, &mut Entry, bool) {
        let (index, new) = match self.index.find(&self.entries, hash) {
            Some(index) => {
                self.unlink(index);
                (index, false)
            }
            None => (self.make_room(hash, now), true),
        };
        self.push_front(index);
        let entry = &mut self.entries[index as usize];
        let slot = Slot {
            index,
            generation: entry.generation,
        };
        (slot, entry, new)
    }

    /// The entry at `slot`, unless it was forgotten since (and perhaps reused).
    pub(super) fn get_mut(&mut self, slot: Slot) -> Option<&mut Entry> {
        self.entries
            .get_mut(slot.index as usize)
            .filter(|e| e.generation == slot.generation)
    }

    /// A slot for the new key `hash`, linked nowhere yet: a fresh one below the bound, else
    /// the least recently used entry's. Entries with requests in progress are passed over
    /// (moved to the front) a few times, so that a flood of new keys does not reset the
    /// counts of slow requests; if all of those few are busy, the oldest goes anyway, since
    /// the bound on memory comes first.
    fn make_room(&mut self, hash: u64, now: u64) -> u32 {
        let fresh = Entry {
            hash,
            last: now,
            excess: 0,
            conns: 0,
            generation: 0,
            prev: NIL,
            next: NIL,
        };
        let len = self.entries.len();
        if len < self.max as usize {
            if len == self.entries.capacity() {
                // Grow by doubling, but never past the bound: `push` could double to twice it.
                let extra = len.clamp(16, 1 << 20).min(self.max as usize - len);
                self.entries.reserve_exact(extra);
            }
            self.entries.push(fresh);
            let index = len as u32;
            self.index.insert(&self.entries, index, len);
            return index;
        }
        let mut victim = self.tail;
        for _ in 0..8 {
            if self.entries[victim as usize].conns == 0 {
                break;
            }
            self.unlink(victim);
            self.push_front(victim);
            victim = self.tail;
        }
        self.unlink(victim);
        let old_hash = self.entries[victim as usize].hash;
        self.index.remove(&self.entries, old_hash);
        let old = &mut self.entries[victim as usize];
        *old = Entry {
            generation: old.generation.wrapping_add(1),
            ..fresh
        };
        self.index.insert(&self.entries, victim, len - 1);
        victim
    }

    fn unlink(&mut self, index: u32) {
        let Entry { prev, next, .. } = self.entries[index as usize];
        match prev {
            NIL => self.head = next,
            p => self.entries[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.entries[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, index: u32) {
        let old_head = self.head;
        {
            let e = &mut self.entries[index as usize];
            e.prev = NIL;
            e.next = old_head;
        }
        match old_head {
            NIL => self.tail = index,
            h => self.entries[h as usize].prev = index,
        }
        self.head = index;
    }

    /// The heap memory held, from the capacities of the entries and the index (the only
    /// allocations).
    pub(super) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Entry>() + self.index.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes most to least recently used.
    fn order(keys: &Keys) -> Vec<u64> {
        let mut out = Vec::new();
        let mut i = keys.head;
        while i != NIL {
            out.push(keys.entries[i as usize].hash);
            i = keys.entries[i as usize].next;
        }
        out
    }

    #[test]
    fn the_least_recently_seen_key_is_forgotten() {
        let mut keys = Keys::new(3);
        for h in [1, 2, 3] {
            keys.find_or_insert(h, 0);
        }
        assert_eq!(order(&keys), [3, 2, 1]);
        let (_, _, new) = keys.find_or_insert(1, 0);
        assert!(!new);
        assert_eq!(order(&keys), [1, 3, 2]);
        let (_, _, new) = keys.find_or_insert(4, 0);
        assert!(new);
        assert_eq!(order(&keys), [4, 1, 3], "2 was the least recently seen");
        assert_eq!(keys.len(), 3);
        assert!(keys.index.find(&keys.entries, 2).is_none());
        for h in [1, 3, 4] {
            assert!(keys.index.find(&keys.entries, h).is_some());
        }
    }

    #[test]
    fn a_reused_slot_is_not_the_old_keys() {
        let mut keys = Keys::new(1);
        let (old, e, _) = keys.find_or_insert(1, 0);
        e.conns = 0;
        keys.find_or_insert(2, 0);
        assert!(keys.get_mut(old).is_none(), "key 1's slot now holds key 2");
    }

    #[test]
    fn keys_with_requests_in_progress_are_passed_over() {
        let mut keys = Keys::new(3);
        let (_, e, _) = keys.find_or_insert(1, 0);
        e.conns = 1;
        keys.find_or_insert(2, 0);
        keys.find_or_insert(3, 0);
        keys.find_or_insert(4, 0);
        assert_eq!(order(&keys), [4, 1, 3], "2 went, not the busy 1");
    }

    /// Churn with clustered hashes (small numbers: many share a home slot): every entry stays
    /// findable where it is, and the index holds nothing else.
    #[test]
    fn the_index_survives_churn() {
        let mut keys = Keys::new(500);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            keys.find_or_insert(rng.u64(0..2_000), 0);
            for (i, e) in keys.entries.iter().enumerate() {
                assert_eq!(keys.index.find(&keys.entries, e.hash), Some(i as u32));
            }
            let indexed = keys.index.slots.iter().filter(|&&s| s != NIL).count();
            assert_eq!(indexed, keys.len());
        }
        assert_eq!(order(&keys).len(), 500);
    }

    /// A million distinct keys through a limit of 10 000: the entries stay at the bound, and
    /// so does the memory, by `BYTES_PER_KEY`.
    #[test]
    fn a_million_keys_stay_within_the_bound() {
        const MAX: u32 = 10_000;
        let mut keys = Keys::new(MAX);
        let mut peak = 0;
        for h in 0..1_000_000u64 {
            // Spread like the SipHash values real keys get.
            let hash = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            keys.find_or_insert(hash, h);
            assert!(keys.len() <= MAX as usize);
            peak = peak.max(keys.heap_bytes());
        }
        assert_eq!(keys.len(), MAX as usize);
        let indexed = keys.index.slots.iter().filter(|&&s| s != NIL).count();
        assert_eq!(
            indexed, MAX as usize,
            "the index holds the entries, no more"
        );
        // Every remembered key is found, and no forgotten one.
        for h in (990_000..1_000_000u64).map(|h| h.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            assert!(keys.index.find(&keys.entries, h).is_some());
        }
        assert!(keys.index.find(&keys.entries, 0).is_none());
        assert!(
            peak <= MAX as usize * BYTES_PER_KEY,
            "{peak} bytes for {MAX} keys"
        );
        assert_eq!(
            keys.entries.capacity(),
            MAX as usize,
            "grown to the bound, not past it"
        );
        // The most recent keys are the ones remembered.
        let last = 999_999u64.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        assert_eq!(order(&keys)[0], last);
        assert_eq!(order(&keys).len(), MAX as usize);
    }
}
