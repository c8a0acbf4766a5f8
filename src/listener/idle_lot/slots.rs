//! The idle lot's storage: connections in numbered slots (a slot's number is the token its
//! socket is registered with), each with its deadline, and the deadlines in order.
//!
//! Used only by the lot (`super`), under its lock. A deadline is a whole number of
//! milliseconds on the lot's clock (`u32`: the lot converts, and now and then moves its
//! clock's start forward, `rebase`), kept in the item itself. A slot is then no larger than
//! its item (96 bytes for a parked connection; with an `Instant` beside it, 112), and a
//! deadline in the heap takes 8 bytes (24 with an `Instant`). Slots come in chunks of 256
//! rather than one growing vector: a parked connection's memory stays apart from the small
//! allocations connections make and free while they are served (which would otherwise keep
//! the allocator's pages in use around each one), and growing never copies the slots.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Slots per chunk: 256 connections, about 25 KB.
const CHUNK: usize = 256;

/// What the slots hold: an item that carries its deadline.
pub(super) trait Due {
    /// The deadline, in milliseconds on the lot's clock.
    fn due(&self) -> u32;
    fn due_mut(&mut self) -> &mut u32;
}

/// One slot: an item, or nothing.
type Slot<T> = Option<T>;

#[derive(Debug)]
pub(super) struct Slots<T> {
    chunks: Vec<Box<[Slot<T>]>>,
    /// Vacant slot numbers; the lowest comes out first.
    free: Vec<u32>,
    len: usize,
    /// Deadlines, earliest first. An item taken before its deadline leaves its entry here
    /// (skipped when it comes up); once those outnumber the items, the heap is rebuilt.
    deadlines: BinaryHeap<Reverse<(u32, u32)>>,
}

impl<T: Due> Slots<T> {
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
    pub(super) fn put(&mut self, index: u32, item: T) {
        let deadline = item.due();
        let Some(slot) = self.slot(index) else {
            return;
        };
        *slot = Some(item);
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
    pub(super) fn next_deadline(&self) -> Option<u32> {
        self.deadlines.peek().map(|top| top.0.0)
    }

    /// The item in slot `index`, if any.
    pub(super) fn take(&mut self, index: u32) -> Option<T> {
        self.take_if(index, |_| true)
    }

    /// Every item whose deadline is `now` or past, earliest first.
    pub(super) fn expired(&mut self, now: u32) -> Vec<T> {
        let mut expired = Vec::new();
        while let Some(&Reverse((deadline, index))) = self.deadlines.peek()
            && deadline <= now
        {
            self.deadlines.pop();
            // The slot may hold a later item by now, with a later deadline of its own.
            expired.extend(self.take_if(index, |item| item.due() <= now));
        }
        expired
    }

    /// Every item for which `pred` holds.
    pub(super) fn take_where(&mut self, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let mut taken = Vec::new();
        for index in 0..self.chunks.len() * CHUNK {
            if let Ok(index) = u32::try_from(index) {
                taken.extend(self.take_if(index, &pred));
            }
        }
        taken
    }

    fn slot(&mut self, index: u32) -> Option<&mut Slot<T>> {
        let index = index as usize;
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    /// Moves every deadline `by` milliseconds earlier (the lot's clock now starts that much
    /// later); one already past stays past.
    pub(super) fn rebase(&mut self, by: u32) {
        for item in self
            .chunks
            .iter_mut()
            .flat_map(|chunk| chunk.iter_mut())
            .flatten()
        {
            let due = item.due_mut();
            *due = due.saturating_sub(by);
        }
        self.rebuild_deadlines();
    }

    fn take_if(&mut self, index: u32, pred: impl Fn(&T) -> bool) -> Option<T> {
        let slot = self.slot(index)?;
        if !slot.as_ref().is_some_and(&pred) {
            return None;
        }
        let item = slot.take()?;
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
            .filter_map(|(slot, i)| slot.as_ref().map(|item| Reverse((item.due(), i))))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test item: its deadline (in seconds, as milliseconds would do) and a number.
    #[derive(Debug, PartialEq)]
    struct Item {
        due: u32,
        id: u32,
    }

    impl Due for Item {
        fn due(&self) -> u32 {
            self.due
        }

        fn due_mut(&mut self) -> &mut u32 {
            &mut self.due
        }
    }

    /// Puts item `id` in a vacant slot with its deadline at `due`.
    fn park(slots: &mut Slots<Item>, due: u32, id: u32) -> u32 {
        let index = slots.vacant().expect("a vacant slot");
        slots.put(index, Item { due, id });
        index
    }

    fn ids(items: Vec<Item>) -> Vec<u32> {
        items.into_iter().map(|item| item.id).collect()
    }

    fn take(slots: &mut Slots<Item>, index: u32) -> Option<u32> {
        slots.take(index).map(|item| item.id)
    }

    #[test]
    fn slots_span_chunks_and_are_used_again_lowest_first() {
        let mut slots = Slots::new();
        let indexes: Vec<u32> = (0..600).map(|i| park(&mut slots, 60, i)).collect();
        assert_eq!(indexes, (0..600).collect::<Vec<u32>>());
        assert_eq!(slots.chunks.len(), 3);
        for i in [5, 300, 599] {
            assert_eq!(take(&mut slots, i), Some(i));
            assert_eq!(take(&mut slots, i), None);
        }
        assert_eq!(slots.len, 597);
        assert_eq!(park(&mut slots, 60, 1000), 599);
        assert_eq!(take(&mut slots, 599), Some(1000));
        assert_eq!(take(&mut slots, 5000), None, "past the last chunk");
    }

    #[test]
    fn expiry_is_in_deadline_order_and_skips_what_left_or_came_later() {
        let mut slots = Slots::new();
        let a = park(&mut slots, 30, 1);
        park(&mut slots, 10, 2);
        park(&mut slots, 20, 3);
        // The first leaves early, and a later item takes its slot with a later deadline.
        assert_eq!(take(&mut slots, a), Some(1));
        assert_eq!(park(&mut slots, 50, 4), a);
        assert_eq!(slots.next_deadline(), Some(10));
        assert_eq!(ids(slots.expired(40)), vec![2, 3]);
        assert_eq!(ids(slots.expired(49)), Vec::<u32>::new());
        assert_eq!(ids(slots.expired(50)), vec![4]);
        assert_eq!(slots.len, 0);
    }

    #[test]
    fn deadlines_left_behind_are_bounded_and_expiry_still_exact() {
        let mut slots = Slots::new();
        let stay = park(&mut slots, 1_000_000, 0);
        for i in 1..10_000 {
            let index = park(&mut slots, 100 + i, i);
            assert_eq!(take(&mut slots, index), Some(i));
        }
        assert!(slots.deadlines.len() <= 2 * slots.len + CHUNK + 1);
        let last = park(&mut slots, 500, 7);
        assert_eq!(ids(slots.expired(999_999)), vec![7]);
        assert_eq!(take(&mut slots, last), None);
        // The one that stayed kept its deadline through the rebuilds.
        assert_eq!(ids(slots.expired(1_000_000)), vec![0]);
        assert_eq!(take(&mut slots, stay), None);
    }

    #[test]
    fn an_emptied_lot_gives_its_chunks_back_and_take_where_picks() {
        let mut slots = Slots::new();
        for i in 0..700 {
            park(&mut slots, 60, i);
        }
        let odd = slots.take_where(|item| item.id % 2 == 1);
        assert_eq!(odd.len(), 350);
        assert!(odd.iter().all(|item| item.id % 2 == 1));
        assert_eq!(slots.chunks.len(), 3);
        assert_eq!(slots.take_where(|_| true).len(), 350);
        assert_eq!((slots.len, slots.chunks.len()), (0, 0));
        assert_eq!(park(&mut slots, 60, 1), 0);
    }

    #[test]
    fn a_rebase_moves_every_deadline_and_keeps_their_order() {
        let mut slots = Slots::new();
        park(&mut slots, 5_000, 1);
        park(&mut slots, 3_000, 2);
        let gone = park(&mut slots, 4_000, 3);
        assert_eq!(take(&mut slots, gone), Some(3));
        // One already past its deadline stays past.
        park(&mut slots, 900, 4);
        slots.rebase(1_000);
        assert_eq!(slots.next_deadline(), Some(0));
        assert_eq!(ids(slots.expired(0)), vec![4]);
        assert_eq!(ids(slots.expired(1_999)), Vec::<u32>::new());
        assert_eq!(ids(slots.expired(2_000)), vec![2]);
        assert_eq!(ids(slots.expired(3_999)), Vec::<u32>::new());
        assert_eq!(ids(slots.expired(4_000)), vec![1]);
    }
}
