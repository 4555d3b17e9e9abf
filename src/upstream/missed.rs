//! The missed-key log of one server: which keys it may hold a stale value
//! for, so that a rejoin deletes exactly those instead of flushing the whole
//! cache.
//!
//! Keys only, never values, deduplicated, bounded in bytes. Touched only
//! while a server is failing or rejoining (a missed write is rare in normal
//! operation), so a short mutex per logged key is acceptable; nothing here
//! runs per request while every server is up.
//!
//! An empty key means "everything" (a `flush_all` the server missed) and,
//! like an overflow, turns the log into "flush on rejoin".

use std::collections::HashSet;

/// Bookkeeping bytes charged per logged key on top of its length: the
/// hash-set slot and the boxed slice's header and allocator rounding.
pub const PER_KEY_OVERHEAD: usize = 48;

/// Default bound of one server's log: 64 MiB, about 750 000 keys of 40
/// bytes; a server that misses more than that is cheaper to flush.
pub const DEFAULT_LIMIT: usize = 64 << 20;

/// Keys a server missed, or "flush" when they did not fit.
#[derive(Debug, Default)]
pub struct MissedLog {
    keys: HashSet<Box<[u8]>>,
    bytes: usize,
    flush: bool,
}

/// What a rejoin must do about the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Pending {
    /// Nothing was missed.
    Nothing,
    /// Delete these keys.
    Keys(Vec<Box<[u8]>>),
    /// The log overflowed or a flush was missed: flush the server.
    Flush,
}

impl MissedLog {
    /// Remember `key` (empty: a missed `flush_all`); `limit` bounds the
    /// log's bytes. Returns true when the key was new to the log.
    pub fn add(&mut self, key: &[u8], limit: usize) -> bool {
        if self.flush {
            return false;
        }
        if key.is_empty() {
            self.overflow();
            return true;
        }
        if self.keys.contains(key) {
            return false;
        }
        let cost = key.len() + PER_KEY_OVERHEAD;
        if self.bytes + cost > limit {
            self.overflow();
            return true;
        }
        self.keys.insert(key.into());
        self.bytes += cost;
        true
    }

    /// Give up on single keys: the server will be flushed.
    pub fn overflow(&mut self) {
        self.flush = true;
        self.keys = HashSet::new();
        self.bytes = 0;
    }

    /// True when the server must be flushed rather than drained.
    pub fn must_flush(&self) -> bool {
        self.flush
    }

    /// True when nothing is logged.
    pub fn is_empty(&self) -> bool {
        !self.flush && self.keys.is_empty()
    }

    /// Keys logged now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Take up to `max` keys out of the log (or the flush verdict, which
    /// leaves the log empty).
    pub fn take(&mut self, max: usize) -> Pending {
        if self.flush {
            self.flush = false;
            return Pending::Flush;
        }
        if self.keys.is_empty() {
            return Pending::Nothing;
        }
        let out: Vec<Box<[u8]>> = if self.keys.len() <= max {
            std::mem::take(&mut self.keys).into_iter().collect()
        } else {
            let picked: Vec<Box<[u8]>> = self.keys.iter().take(max).cloned().collect();
            for k in &picked {
                self.keys.remove(k);
            }
            picked
        };
        self.bytes = self.keys.iter().map(|k| k.len() + PER_KEY_OVERHEAD).sum();
        Pending::Keys(out)
    }

    /// Put back keys a failed drain did not delete for sure.
    pub fn restore(&mut self, keys: Vec<Box<[u8]>>, limit: usize) {
        for k in keys {
            if k.is_empty() {
                continue;
            }
            self.add(&k, limit);
        }
    }

    /// Forget everything (a flush is about to cover it).
    pub fn clear(&mut self) {
        *self = MissedLog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deduplicated_and_charged() {
        let mut l = MissedLog::default();
        assert!(l.add(b"a", 1 << 20));
        assert!(!l.add(b"a", 1 << 20));
        assert!(l.add(b"bb", 1 << 20));
        assert_eq!(l.len(), 2);
        assert_eq!(l.bytes(), 3 + 2 * PER_KEY_OVERHEAD);
        let Pending::Keys(mut k) = l.take(10) else {
            panic!("keys expected")
        };
        k.sort();
        assert_eq!(k, vec![b"a".to_vec().into(), b"bb".to_vec().into()]);
        assert!(l.is_empty());
        assert_eq!(l.bytes(), 0);
        assert_eq!(l.take(10), Pending::Nothing);
    }

    #[test]
    fn overflow_and_empty_key_mean_flush() {
        let limit = 2 * (4 + PER_KEY_OVERHEAD);
        let mut l = MissedLog::default();
        assert!(l.add(b"k001", limit));
        assert!(l.add(b"k002", limit));
        assert!(!l.must_flush());
        assert!(l.add(b"k003", limit));
        assert!(l.must_flush());
        assert_eq!(l.len(), 0, "an overflowed log keeps no keys");
        assert!(!l.add(b"k004", limit));
        assert_eq!(l.take(10), Pending::Flush);
        assert!(l.is_empty());

        assert!(l.add(b"", limit));
        assert!(l.must_flush());
    }

    #[test]
    fn take_is_batched_and_restore_puts_back() {
        let mut l = MissedLog::default();
        for i in 0..10u8 {
            l.add(&[b'k', i], 1 << 20);
        }
        let Pending::Keys(first) = l.take(4) else {
            panic!("keys expected")
        };
        assert_eq!(first.len(), 4);
        assert_eq!(l.len(), 6);
        assert_eq!(l.bytes(), 6 * (2 + PER_KEY_OVERHEAD));
        l.restore(first, 1 << 20);
        assert_eq!(l.len(), 10);
    }
}
