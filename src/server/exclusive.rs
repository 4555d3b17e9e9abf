//! Per-key exclusive sections across cores, for the writes whose backup copy
//! depends on the primary's current value (incr, append, add, cas...).
//!
//! Each core has its own upstream connections, so two cores' copies of one
//! key can reach the backup in either order: core A reads `5` back from the
//! primary, core B reads `6` and stores it, then A's `5` lands on top. A
//! request of that kind therefore runs its whole primary-then-copy sequence
//! inside the key's section; sections of one key follow each other in the
//! order they were asked for, so the primary applies the writes and the
//! backup receives their copies in the same order.
//!
//! The table is a fixed array of ticket locks indexed by a hash of the key
//! (distinct keys may share a slot: they then queue behind each other, which
//! costs latency, never correctness). Taking a ticket is one atomic add;
//! a waiter polls its slot once per loop turn, and the engine never blocks.
//! Mirrored writes (`set`, `delete`, `touch`) and reads never touch it.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::route::modula::magent_hash;

/// Slots in the table (a power of two): 16 Ki slots x 8 bytes.
const SLOTS: usize = 1 << 14;

/// One ticket lock: the next ticket to hand out and the one now served.
#[derive(Debug, Default)]
struct Ticket {
    next: AtomicU32,
    serving: AtomicU32,
}

/// A ticket taken for one slot; the section is held once [`Sections::granted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    slot: u32,
    ticket: u32,
}

/// The process-wide table of sections, shared by every core.
#[derive(Debug)]
pub(crate) struct Sections {
    slots: Box<[Ticket]>,
}

impl Default for Sections {
    fn default() -> Self {
        Sections {
            slots: (0..SLOTS).map(|_| Ticket::default()).collect(),
        }
    }
}

/// The key's slot, by magent's key hash (cheap, and spread well enough for a
/// table whose collisions only cost a wait).
fn slot_of(key: &[u8]) -> u32 {
    (magent_hash(key) as usize & (SLOTS - 1)) as u32
}

impl Sections {
    /// Queue for `key`'s section. Every ticket taken must be released with
    /// [`Sections::release`] once granted, or the slot stops for everyone.
    pub fn take(&self, key: &[u8]) -> Held {
        let slot = slot_of(key);
        let t = &self.slots[slot as usize];
        let ticket = t.next.fetch_add(1, Ordering::Relaxed);
        Held { slot, ticket }
    }

    /// Whether `held`'s turn has come.
    pub fn granted(&self, held: Held) -> bool {
        self.slots[held.slot as usize]
            .serving
            .load(Ordering::Acquire)
            == held.ticket
    }

    /// Leave a granted section: the next ticket of the slot is served.
    pub fn release(&self, held: Held) {
        self.slots[held.slot as usize]
            .serving
            .fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_key_is_served_in_ticket_order() {
        let s = Sections::default();
        let a = s.take(b"k");
        let b = s.take(b"k");
        assert!(s.granted(a));
        assert!(!s.granted(b));
        s.release(a);
        assert!(s.granted(b));
        s.release(b);
        let c = s.take(b"k");
        assert!(s.granted(c), "a free slot grants at once");
    }

    #[test]
    fn other_keys_are_not_held_up() {
        let s = Sections::default();
        // Find a key in another slot than "k".
        let other = (0..100u32)
            .map(|i| format!("other{i}"))
            .find(|k| slot_of(k.as_bytes()) != slot_of(b"k"))
            .expect("100 keys cannot all share one of 16 Ki slots");
        let a = s.take(b"k");
        let b = s.take(other.as_bytes());
        assert!(s.granted(a) && s.granted(b));
    }

    #[test]
    fn tickets_survive_wrapping() {
        let s = Sections::default();
        let slot = slot_of(b"w") as usize;
        s.slots[slot].next.store(u32::MAX, Ordering::Relaxed);
        s.slots[slot].serving.store(u32::MAX, Ordering::Relaxed);
        let a = s.take(b"w");
        let b = s.take(b"w");
        assert!(s.granted(a) && !s.granted(b));
        s.release(a);
        assert!(s.granted(b));
    }

    /// Threads that each hold the section while doing a non-atomic
    /// read-modify-write of a shared counter never lose an update.
    #[test]
    fn sections_exclude_across_threads() {
        let s = Arc::new(Sections::default());
        let counter = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (s, counter) = (s.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let h = s.take(b"shared");
                        while !s.granted(h) {
                            std::hint::spin_loop();
                            std::thread::yield_now();
                        }
                        let v = counter.load(Ordering::Relaxed);
                        std::thread::yield_now();
                        counter.store(v + 1, Ordering::Relaxed);
                        s.release(h);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
    }
}
