//! The idle lot's storage: connections in numbered slots (a slot's number is the token its
//! socket is registered with), each with its deadline, and the deadlines in order.
//!
//! Used only by the lot (`super`), under its lock. Deadlines are on tokio's clock, which the
//! lot's task sleeps on (and which tests pause). Slots come in chunks of 256 rather than one
//! growing vector: a parked connection's memory stays apart from the small allocations
//! connections make and free while they are served (which would otherwise keep the
//! allocator's pages in use around each one), and growing never copies the slots.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// Slots per chunk: 256 connections, about 30 KB.
const CHUNK: usize = 256;

/// One slot: an item and its deadline, or nothing.
type Slot<T> = Option<(Instant, T)>;

#[derive(Debug)]
pub(super) struct Slots<T> {
    chunks: Vec<Box<[Slot<T>]>>,
    /// Vacant slot numbers; the lowest comes out first.
    free: Vec<u32>,
    len: usize,
    /// Deadlines, earliest first. An item taken before its deadline leaves its entry here
    /// (skipped when it comes up); once those outnumber the items, the heap is rebuilt.
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
}

impl<T> Slots<T> {
    pub(super) fn new() -> Self {
        Slots {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
            deadlines: BinaryHeap::new(),
        }
    }

    /// A vacant slot's number, for `put` (or `release`, if it is not used after all). `None`
    /// past `u32` slots.
    pub(super) fn vacant(&mut self) -> Option<u32> {
        if self.free.is_empty() {
            let first = u32::try_from(self.chunks.len() * CHUNK).ok()?;
            let end = first.checked_add(CHUNK as u32)?;
            self.chunks.push((0..CHUNK).map(|_| None).collect());
            self.free.extend((first..end).rev());
        }
        self.free.pop()
    }

    /// Gives back a slot `vacant` gave that was not used.
    pub(super) fn release(&mut self, index: u32) {
        self.free.push(index);
    }

    /// Fills the slot `vacant` gave.
    pub(super) fn put(&mut self, index: u32, deadline: Instant, item: T) {
        let Some(slot) = self.slot(index) else {
            return;
        };
        *slot = Some((deadline, item));
        self.len += 1;
        self.deadlines.push(Reverse((deadline, index)));
        if self.deadlines.len() > 2 * self.len + CHUNK {
            self.rebuild_deadlines();
        }
    }

    /// How many items the slots hold.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The earliest deadline (possibly of an item already taken).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|top| top.0.0)
    }

    /// The item in slot `index`, if any.
    pub(super) fn take(&mut self, index: u32) -> Option<T> {
        self.take_if(index, |_, _| true)
    }

    /// Every item whose deadline is `now` or past, earliest first.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<T> {
        let mut expired = Vec::new();
        while let Some(&Reverse((deadline, index))) = self.deadlines.peek()
            && deadline <= now
        {
            self.deadlines.pop();
            // The slot may hold a later item by now, with a later deadline of its own.
            expired.extend(self.take_if(index, |due, _| due <= now));
        }
        expired
    }

    /// Every item for which `pred` holds.
    pub(super) fn take_where(&mut self, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let mut taken = Vec::new();
        for index in 0..self.chunks.len() * CHUNK {
            if let Ok(index) = u32::try_from(index) {
                taken.extend(self.take_if(index, |_, item| pred(item)));
            }
        }
        taken
    }

    fn slot(&mut self, index: u32) -> Option<&mut Slot<T>> {
        let index = index as usize;
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    fn take_if(&mut self, index: u32, pred: impl Fn(Instant, &T) -> bool) -> Option<T> {
        let slot = self.slot(index)?;
        if !slot.as_ref().is_some_and(|(due, item)| pred(*due, item)) {
            return None;
        }
        let (_, item) = slot.take()?;
        self.free.push(index);
        self.len -= 1;
        if self.len == 0 && self.chunks.len() > 1 {
            // A burst of idle connections has gone: so does the memory it took.
            *self = Slots::new();
        }
        Some(item)
    }

    fn rebuild_deadlines(&mut self) {
        self.deadlines = self
            .chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .zip(0u32..)
            .filter_map(|(slot, i)| slot.as_ref().map(|(due, _)| Reverse((*due, i))))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    /// Puts `item` in a vacant slot with its deadline `secs` after `t0`.
    fn park(slots: &mut Slots<u32>, t0: Instant, secs: u64, item: u32) -> u32 {
        let index = slots.vacant().expect("a vacant slot");
        slots.put(index, at(t0, secs), item);
        index
    }

    #[test]
    fn slots_span_chunks_and_are_used_again_lowest_first() {
        let t0 = Instant::now();
        let mut slots = Slots::new();
        let indexes: Vec<u32> = (0..600).map(|i| park(&mut slots, t0, 60, i)).collect();
        assert_eq!(indexes, (0..600).collect::<Vec<u32>>());
        assert_eq!(slots.chunks.len(), 3);
        for i in [5, 300, 599] {
            assert_eq!(slots.take(i), Some(i));
            assert_eq!(slots.take(i), None);
        }
        assert_eq!(slots.len, 597);
        assert_eq!(park(&mut slots, t0, 60, 1000), 599);
        assert_eq!(slots.take(599), Some(1000));
        assert_eq!(slots.take(5000), None, "past the last chunk");
    }

    #[test]
    fn expiry_is_in_deadline_order_and_skips_what_left_or_came_later() {
        let t0 = Instant::now();
        let mut slots = Slots::new();
        let a = park(&mut slots, t0, 30, 1);
        park(&mut slots, t0, 10, 2);
        park(&mut slots, t0, 20, 3);
        // The first leaves early, and a later item takes its slot with a later deadline.
        assert_eq!(slots.take(a), Some(1));
        assert_eq!(park(&mut slots, t0, 50, 4), a);
        assert_eq!(slots.next_deadline(), Some(at(t0, 10)));
        assert_eq!(slots.expired(at(t0, 40)), vec![2, 3]);
        assert_eq!(slots.expired(at(t0, 49)), Vec::<u32>::new());
        assert_eq!(slots.expired(at(t0, 50)), vec![4]);
        assert_eq!(slots.len, 0);
    }

    #[test]
    fn deadlines_left_behind_are_bounded_and_expiry_still_exact() {
        let t0 = Instant::now();
        let mut slots = Slots::new();
        let stay = park(&mut slots, t0, 1_000_000, 0);
        for i in 1..10_000 {
            let index = park(&mut slots, t0, 100 + u64::from(i), i);
            assert_eq!(slots.take(index), Some(i));
        }
        assert!(slots.deadlines.len() <= 2 * slots.len + CHUNK + 1);
        let last = park(&mut slots, t0, 500, 7);
        assert_eq!(slots.expired(at(t0, 999_999)), vec![7]);
        assert_eq!(slots.take(last), None);
        // The one that stayed kept its deadline through the rebuilds.
        assert_eq!(slots.expired(at(t0, 1_000_000)), vec![0]);
        assert_eq!(slots.take(stay), None);
    }

    #[test]
    fn an_emptied_lot_gives_its_chunks_back_and_take_where_picks() {
        let t0 = Instant::now();
        let mut slots = Slots::new();
        for i in 0..700 {
            park(&mut slots, t0, 60, i);
        }
        let odd = slots.take_where(|item| item % 2 == 1);
        assert_eq!(odd.len(), 350);
        assert!(odd.iter().all(|item| item % 2 == 1));
        assert_eq!(slots.chunks.len(), 3);
        assert_eq!(slots.take_where(|_| true).len(), 350);
        assert_eq!((slots.len, slots.chunks.len()), (0, 0));
        assert_eq!(park(&mut slots, t0, 60, 1), 0);
    }
}
