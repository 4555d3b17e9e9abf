//! Hot keys, sans-IO: a heavy-hitter sketch of the keys a core reads
//! (Space-Saving over a sample of the reads, with counts that decay), and
//! the merge of every core's top entries into one list.
//!
//! Space-Saving keeps [`SLOTS`] counters; a sampled key that has none takes
//! the smallest one over, inheriting its count as its error bound, so a key
//! that takes a share of the reads above `1 / SLOTS` of the sample is
//! always held. Counts decay by [`DECAY`] each second, so they stand for
//! the last ten seconds or so: a count `c` is about `c * SAMPLE * (1 -
//! DECAY)` reads per second once steady. Keys are stored inline (no
//! allocation on the read path).

use std::time::{Duration, Instant};

/// Counters per core.
pub const SLOTS: usize = 64;
/// One read in this many is counted.
pub const SAMPLE: u32 = 8;
/// Counts are multiplied by this every [`STEP`].
pub const DECAY: f64 = 0.9;
/// How often counts decay (and a core publishes its top entries).
pub const STEP: Duration = Duration::from_secs(1);
/// Longest key memcached takes.
const MAX_KEY: usize = 250;

/// One counter.
#[derive(Clone)]
struct Slot {
    hash: u64,
    len: u8,
    key: [u8; MAX_KEY],
    count: f64,
}

impl Slot {
    fn key(&self) -> &[u8] {
        self.key.get(..usize::from(self.len)).unwrap_or_default()
    }
}

/// One hot key as a core publishes it, or as the merge reports it. The key
/// is inline, so that publishing into a reused list allocates nothing.
#[derive(Clone, PartialEq)]
pub struct HotKey {
    len: u8,
    bytes: [u8; MAX_KEY],
    /// Estimated reads per second.
    pub rate: f64,
    /// Its gets alternate between primary and backup (on some core).
    pub spread: bool,
}

impl HotKey {
    /// `key` (cut at 250 bytes) at `rate` reads per second.
    pub fn new(key: &[u8], rate: f64) -> HotKey {
        let key = key.get(..MAX_KEY).unwrap_or(key);
        let mut bytes = [0; MAX_KEY];
        if let Some(dst) = bytes.get_mut(..key.len()) {
            dst.copy_from_slice(key);
        }
        HotKey {
            len: key.len() as u8,
            bytes,
            rate,
            spread: false,
        }
    }

    /// The key as the client wrote it (a meta base64 key as written).
    pub fn key(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl std::fmt::Debug for HotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotKey")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("rate", &self.rate)
            .field("spread", &self.spread)
            .finish()
    }
}

/// One core's sketch.
pub struct Sketch {
    slots: Vec<Slot>,
    /// Reads until the next sampled one.
    skip: u32,
    /// When counts last decayed.
    stepped: Option<Instant>,
    /// Reads seen since the last step (all of them, not the sample).
    reads: u64,
    /// The slots holding keys hot enough to spread, as of the last step
    /// (`hot_len` of them).
    hot: [usize; MAX_SPREAD],
    hot_len: usize,
    /// Which replica the next read of a spread key starts on.
    spread_next: bool,
}

/// Most keys spread at once per core.
pub const MAX_SPREAD: usize = 8;

/// A key is spread when it takes more than this share of a core's reads
/// (and more than the threshold's reads per second).
pub const SPREAD_SHARE: f64 = 0.01;

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch::new()
    }
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("held", &self.slots.iter().filter(|s| s.count > 0.0).count())
            .finish()
    }
}

/// FNV-1a over the key: fast enough for a sample, and stable.
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Sketch {
    /// An empty sketch (its counters are allocated here, once).
    pub fn new() -> Sketch {
        Sketch {
            slots: vec![
                Slot {
                    hash: 0,
                    len: 0,
                    key: [0; MAX_KEY],
                    count: 0.0,
                };
                SLOTS
            ],
            skip: 0,
            stepped: None,
            reads: 0,
            hot: [0; MAX_SPREAD],
            hot_len: 0,
            spread_next: false,
        }
    }

    /// Whether this read of `key` starts on the backup: a hot key's reads
    /// alternate between its replicas (see [`Sketch::is_hot`]).
    #[inline]
    pub fn spread(&mut self, key: &[u8]) -> bool {
        if !self.is_hot(key) {
            return false;
        }
        self.spread_next = !self.spread_next;
        self.spread_next
    }

    /// Whether `key` was hot enough to spread at the last step: above
    /// [`SPREAD_SHARE`] of this core's reads and `threshold` reads per
    /// second. Costs a hash only while some key is.
    #[inline]
    pub fn is_hot(&self, key: &[u8]) -> bool {
        if self.hot_len == 0 {
            return false;
        }
        let key = key.get(..MAX_KEY).unwrap_or(key);
        let h = hash(key);
        self.hot
            .iter()
            .take(self.hot_len)
            .filter_map(|&i| self.slots.get(i))
            .any(|s| s.hash == h && s.count > 0.0 && s.key() == key)
    }

    /// Recompute which keys are hot enough to spread (see
    /// [`Sketch::is_hot`]); `elapsed` is the time the reads counted since
    /// the last step took.
    fn mark_hot(&mut self, elapsed: Duration, threshold: f64) {
        let total = self.reads as f64 / elapsed.as_secs_f64().max(1e-3);
        self.reads = 0;
        self.hot_len = 0;
        let floor = threshold.max(total * SPREAD_SHARE);
        for (i, s) in self.slots.iter().enumerate() {
            if self.hot_len < MAX_SPREAD && s.count > 0.0 && rate(s.count) > floor {
                self.hot[self.hot_len] = i;
                self.hot_len += 1;
            }
        }
    }

    /// A read of `key`.
    #[inline]
    pub fn read(&mut self, key: &[u8]) {
        self.reads += 1;
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        self.skip = SAMPLE - 1;
        let key = key.get(..MAX_KEY).unwrap_or(key);
        let h = hash(key);
        if let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.hash == h && s.count > 0.0 && s.key() == key)
        {
            s.count += 1.0;
            return;
        }
        // The smallest counter is taken over (Space-Saving).
        let Some(min) = self
            .slots
            .iter_mut()
            .min_by(|a, b| a.count.total_cmp(&b.count))
        else {
            return;
        };
        min.hash = h;
        min.len = key.len() as u8;
        if let Some(dst) = min.key.get_mut(..key.len()) {
            dst.copy_from_slice(key);
        }
        min.count += 1.0;
    }

    /// Decay the counts if a step has passed, and mark the keys to spread
    /// (above `threshold` reads per second and [`SPREAD_SHARE`] of the
    /// reads; 0: none); true when it did (the caller then publishes
    /// [`Sketch::top`]).
    pub fn step(&mut self, now: Instant, threshold: Option<f64>) -> bool {
        let last = *self.stepped.get_or_insert(now);
        let elapsed = now.saturating_duration_since(last);
        let steps = elapsed.as_secs_f64() / STEP.as_secs_f64();
        if steps < 1.0 {
            return false;
        }
        match threshold {
            Some(t) => self.mark_hot(elapsed, t),
            None => {
                self.reads = 0;
                self.hot_len = 0;
            }
        }
        let factor = DECAY.powf(steps.floor());
        for s in &mut self.slots {
            s.count *= factor;
            if s.count < 0.5 {
                s.count = 0.0;
            }
        }
        self.stepped = Some(now);
        true
    }

    /// The `n` keys with the highest counts, as reads per second.
    pub fn top(&self, n: usize) -> Vec<HotKey> {
        let mut out = Vec::with_capacity(n);
        self.top_into(n, &mut out);
        out
    }

    /// [`Sketch::top`] into `out` (cleared first): once `out` has grown to
    /// `n`, this allocates nothing.
    pub fn top_into(&self, n: usize, out: &mut Vec<HotKey>) {
        out.clear();
        let hot = self.hot.get(..self.hot_len).unwrap_or_default();
        for (i, s) in self.slots.iter().enumerate().filter(|(_, s)| s.count > 0.0) {
            out.push(HotKey {
                len: s.len,
                bytes: s.key,
                rate: rate(s.count),
                spread: hot.contains(&i),
            });
        }
        out.sort_by(|a, b| b.rate.total_cmp(&a.rate));
        out.truncate(n);
    }
}

/// Reads per second a steady count stands for.
fn rate(count: f64) -> f64 {
    count * f64::from(SAMPLE) * (1.0 - DECAY) / STEP.as_secs_f64()
}

/// Every core's published entries summed per key, the `n` highest first.
pub fn merge<'a>(cores: impl IntoIterator<Item = &'a [HotKey]>, n: usize) -> Vec<HotKey> {
    let mut all: Vec<HotKey> = Vec::new();
    for core in cores {
        for k in core {
            match all.iter_mut().find(|a| a.key() == k.key()) {
                Some(a) => {
                    a.rate += k.rate;
                    a.spread |= k.spread;
                }
                None => all.push(k.clone()),
            }
        }
    }
    all.sort_by(|a, b| b.rate.total_cmp(&a.rate));
    all.truncate(n);
    all
}

/// A short, stable name for a key that does not show it (Prometheus labels:
/// bounded cardinality, no key in the clear).
pub fn label(key: &[u8]) -> String {
    format!("{:016x}", hash(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read stream: key `hot` takes `share` of the reads, the rest are
    /// spread over `others` keys, in a fixed pseudo-random order.
    fn feed(s: &mut Sketch, reads: usize, share: f64, others: usize) {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..reads {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (x % 1000) as f64 / 1000.0 < share {
                s.read(b"hot");
            } else {
                s.read(format!("k{}", i % others).as_bytes());
            }
        }
    }

    #[test]
    fn a_key_with_a_third_of_the_reads_is_first_and_its_rate_is_about_right() {
        let t0 = Instant::now();
        let mut s = Sketch::new();
        // Ten steady seconds of 10 000 reads, 30 % on one key.
        for sec in 0..30 {
            feed(&mut s, 10_000, 0.3, 5_000);
            s.step(t0 + STEP * (sec + 1), None);
        }
        let top = s.top(20);
        assert_eq!(top[0].key(), b"hot");
        // About 3 000 reads a second (sampling and the decay's start-up).
        assert!((2_400.0..3_600.0).contains(&top[0].rate), "{}", top[0].rate);
        // Nothing else comes near.
        assert!(top.get(1).is_none_or(|k| k.rate < 600.0), "{top:?}");
    }

    #[test]
    fn a_key_that_cools_falls_out() {
        let t0 = Instant::now();
        let mut s = Sketch::new();
        feed(&mut s, 20_000, 0.5, 100);
        s.step(t0 + STEP, None);
        assert_eq!(s.top(1)[0].key(), b"hot");
        // A quiet minute and a half: the counts decay to nothing.
        for sec in 2..92 {
            s.step(t0 + STEP * sec, None);
        }
        assert!(s.top(20).is_empty());
    }

    #[test]
    fn a_key_above_the_threshold_and_its_share_is_spread_until_it_cools() {
        let t0 = Instant::now();
        let mut s = Sketch::new();
        assert!(!s.is_hot(b"hot"));
        // 20 000 reads a second, 30 % on one key: 6 000/s, hot.
        for sec in 0..5 {
            feed(&mut s, 20_000, 0.3, 5_000);
            s.step(t0 + STEP * (sec + 1), Some(1000.0));
        }
        assert!(s.is_hot(b"hot"));
        assert!(!s.is_hot(b"k1"), "a cold key is not");
        // Its reads alternate between the replicas.
        let starts: Vec<bool> = (0..4).map(|_| s.spread(b"hot")).collect();
        assert_eq!(starts, [true, false, true, false]);
        assert!(!s.spread(b"k1"));
        // A threshold above its rate: not spread.
        feed(&mut s, 20_000, 0.3, 5_000);
        s.step(t0 + STEP * 6, Some(50_000.0));
        assert!(!s.is_hot(b"hot"));
        // Cooled: after a quiet half minute it is not spread any more.
        for sec in 7..40 {
            s.step(t0 + STEP * sec, Some(1000.0));
        }
        assert!(!s.is_hot(b"hot"));
    }

    #[test]
    fn long_keys_are_held_whole_and_cores_merge_by_key() {
        let mut s = Sketch::new();
        let long = vec![b'x'; 250];
        for _ in 0..(SAMPLE * 10) {
            s.read(&long);
        }
        assert_eq!(s.top(1)[0].key(), long);
        // Publishing into a list that has grown allocates nothing new.
        let mut out = Vec::with_capacity(SLOTS);
        let cap = out.capacity();
        s.top_into(SLOTS, &mut out);
        assert_eq!(out.capacity(), cap);
        let a = vec![HotKey::new(b"a", 10.0), HotKey::new(b"b", 5.0)];
        let b = vec![HotKey::new(b"b", 7.0)];
        let m = merge([a.as_slice(), b.as_slice()], 20);
        assert_eq!(m[0], HotKey::new(b"b", 12.0));
        assert_eq!(m[1].key(), b"a");
        assert_eq!(label(b"a").len(), 16);
        assert_ne!(label(b"a"), label(b"b"));
    }
}
