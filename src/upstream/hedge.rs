//! Hedged reads, sans-IO: when a read's primary has not answered within
//! its hedge delay, the same read goes to the key's backup too, and the
//! first hit answers. Two pieces, one of each per core:
//!
//! - [`Delays`]: each server's recent reply latency (a log-scale histogram
//!   over a sliding window of two periods) and the hedge delay derived from
//!   it: its p95, at most four times its median, floored and capped;
//! - [`Budget`]: hedges allowed as a share of the reads that could be
//!   hedged, over the same kind of window, so that a sick fleet cannot
//!   double its own load.
//!
//! Every function takes `now`; nothing allocates after a server is first
//! seen.

use std::time::{Duration, Instant};

/// Length of one window period; a window is the current period and the one
/// before it.
pub const PERIOD: Duration = Duration::from_secs(1);

/// No hedge sooner than this: a reply within it is not late.
pub const FLOOR: Duration = Duration::from_millis(1);

/// The hedge delay is at most this many times a server's median reply.
pub const MEDIAN_TIMES: u32 = 4;

/// Replies a window must hold before its p95 is trusted; with fewer, the
/// delay is the cap (hedging starts once a server has a history).
const MIN_SAMPLES: u64 = 20;

/// Histogram buckets: four per power of two from 1 µs (bucket 0 is
/// everything below 1 µs, the last everything past about 67 s).
const BUCKETS: usize = 4 * 26 + 1;

/// The bucket of `d`: 4 log-linear steps per doubling of microseconds.
fn bucket(d: Duration) -> usize {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    if us == 0 {
        return 0;
    }
    let log = 63 - us.leading_zeros() as usize;
    // The two bits below the top one pick the step within the doubling.
    let step = if log >= 2 {
        ((us >> (log - 2)) & 3) as usize
    } else {
        ((us << (2 - log)) & 3) as usize
    };
    (1 + 4 * log + step).min(BUCKETS - 1)
}

/// The p95 of the replies `w` holds, at most [`MEDIAN_TIMES`] their median;
/// None with fewer than [`MIN_SAMPLES`].
fn robust(w: &Window<Hist>) -> Option<Duration> {
    let count = |b: usize| u64::from(w.current.0[b]) + u64::from(w.previous.0[b]);
    let total: u64 = (0..BUCKETS).map(count).sum();
    if total < MIN_SAMPLES {
        return None;
    }
    // The smallest buckets with half and with 95 % of the replies at or
    // below them.
    let (half, most) = (total.div_ceil(2), total - total / 20);
    let (mut seen, mut p50) = (0, None);
    for b in 0..BUCKETS {
        seen += count(b);
        if p50.is_none() && seen >= half {
            p50 = Some(upper(b));
        }
        if seen >= most {
            let p95 = upper(b);
            return Some(p50.map_or(p95, |m| p95.min(m * MEDIAN_TIMES)));
        }
    }
    None
}

/// The upper edge of bucket `b` (a delay read at it is not early).
fn upper(b: usize) -> Duration {
    if b == 0 {
        return Duration::from_micros(1);
    }
    let (log, step) = ((b - 1) / 4, ((b - 1) % 4) as u64);
    let base = 1u64 << log.min(62);
    // Bucket (log, step) spans base*(4+step)/4 ..base*(5+step)/4.
    Duration::from_micros(base.saturating_mul(5 + step) / 4)
}

/// Two periods of a histogram (or of counts), rotated by time.
#[derive(Clone, Debug)]
struct Window<T> {
    current: T,
    previous: T,
    /// When `current` began.
    began: Option<Instant>,
}

impl<T: Default + Clone> Window<T> {
    fn new() -> Window<T> {
        Window {
            current: T::default(),
            previous: T::default(),
            began: None,
        }
    }

    /// Rotate to `now`: a period over moves current to previous; two or
    /// more clear both.
    fn roll(&mut self, now: Instant) {
        let began = *self.began.get_or_insert(now);
        let age = now.saturating_duration_since(began);
        if age < PERIOD {
            return;
        }
        self.previous = if age < 2 * PERIOD {
            std::mem::take(&mut self.current)
        } else {
            self.current = T::default();
            T::default()
        };
        self.began = Some(now);
    }
}

/// One server's replies in a window.
#[derive(Clone, Debug)]
struct Hist([u32; BUCKETS]);

impl Default for Hist {
    fn default() -> Hist {
        Hist([0; BUCKETS])
    }
}

/// How long a computed delay is reused: reading the histogram on every
/// hedgeable read would cost a pass over its buckets per request.
const REFRESH: Duration = Duration::from_millis(10);

/// Each server's hedge delay, from its own recent replies (one per core).
#[derive(Clone, Debug, Default)]
pub struct Delays {
    servers: Vec<Window<Hist>>,
    /// Per server: when its delay was last read off the histogram, and
    /// what it was (None: too few replies).
    cached: Vec<Option<(Instant, Option<Duration>)>>,
}

impl Delays {
    /// A reply of server `server` took `took` (from when its call was
    /// written to its last byte).
    pub fn observe(&mut self, server: usize, took: Duration, now: Instant) {
        if self.servers.len() <= server {
            self.servers.resize_with(server + 1, Window::new);
        }
        if let Some(w) = self.servers.get_mut(server) {
            w.roll(now);
            if let Some(c) = w.current.0.get_mut(bucket(took)) {
                *c = c.saturating_add(1);
            }
        }
    }

    /// How long a read of `server` waits before it is hedged: the p95 of
    /// its replies in the window, but at most [`MEDIAN_TIMES`] their median
    /// (a server that froze for a tenth of the window has its own freezes
    /// in its p95, never in its median), at least [`FLOOR`], at most `cap`;
    /// `cap` when the window holds too few replies. Read off the histogram
    /// at most once per [`REFRESH`].
    pub fn delay(&mut self, server: usize, now: Instant, cap: Duration) -> Duration {
        let cap = cap.max(FLOOR);
        let fresh = self
            .cached
            .get(server)
            .copied()
            .flatten()
            .filter(|(at, _)| now.saturating_duration_since(*at) < REFRESH);
        let robust = match fresh {
            Some((_, d)) => d,
            None => {
                let Some(w) = self.servers.get_mut(server) else {
                    return cap;
                };
                w.roll(now);
                let d = robust(w);
                if self.cached.len() <= server {
                    self.cached.resize(server + 1, None);
                }
                if let Some(slot) = self.cached.get_mut(server) {
                    *slot = Some((now, d));
                }
                d
            }
        };
        robust.map_or(cap, |d| d.clamp(FLOOR, cap))
    }

    /// When a read of `server` sent now is hedged: after its [`Delays::delay`],
    /// or at once when its connections have already made no progress for
    /// `stalled` (a frozen server will not answer this read in time either).
    pub fn due_in(
        &mut self,
        server: usize,
        now: Instant,
        cap: Duration,
        stalled: Duration,
    ) -> Duration {
        let delay = self.delay(server, now, cap);
        if stalled >= delay {
            Duration::ZERO
        } else {
            delay
        }
    }

    /// Hold exactly `len` servers (a reload changed the table): servers
    /// numbered from `len` on are forgotten, new ones start empty (so that
    /// recording a reply never allocates). The others keep their history
    /// (a reload keeps a server's number only by chance, so a renumbered
    /// one relearns within a window).
    pub fn resize(&mut self, len: usize) {
        self.servers.resize_with(len, Window::new);
        self.cached.clear();
        self.cached.resize(len, None);
    }
}

/// Reads that could be hedged, and hedges sent, in a window.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    reads: u64,
    hedges: u64,
}

/// The share of reads that may be hedged (one per core).
#[derive(Clone, Debug)]
pub struct Budget {
    /// Hedges per million hedgeable reads.
    ppm: u64,
    window: Window<Counts>,
}

impl Budget {
    /// At most `share` (0.0..=1.0) of the hedgeable reads are hedged.
    pub fn new(share: f64) -> Budget {
        Budget {
            ppm: (share.clamp(0.0, 1.0) * 1e6) as u64,
            window: Window::new(),
        }
    }

    /// A read that could be hedged started.
    pub fn read(&mut self, now: Instant) {
        self.window.roll(now);
        self.window.current.reads += 1;
    }

    /// Whether one more hedge stays within the budget now; if so it is
    /// counted as sent.
    pub fn try_hedge(&mut self, now: Instant) -> bool {
        self.window.roll(now);
        let (c, p) = (self.window.current, self.window.previous);
        let reads = c.reads + p.reads;
        let hedges = c.hedges + p.hedges;
        if (hedges + 1).saturating_mul(1_000_000) > reads.saturating_mul(self.ppm) {
            return false;
        }
        self.window.current.hedges += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_millis(500);

    #[test]
    fn buckets_grow_by_quarters_and_their_edges_bound_them() {
        for us in [
            1u64, 2, 3, 5, 7, 100, 150, 999, 1000, 4096, 65_537, 10_000_000,
        ] {
            let d = Duration::from_micros(us);
            let b = bucket(d);
            assert!(
                upper(b) >= d,
                "{us} us under its bucket's edge {:?}",
                upper(b)
            );
            if b > 1 {
                assert!(upper(b - 1) <= d, "{us} us above the previous edge");
            }
        }
        assert!(bucket(Duration::from_micros(101)) < bucket(Duration::from_micros(130)));
        assert_eq!(bucket(Duration::from_secs(1_000_000)), BUCKETS - 1);
    }

    #[test]
    fn the_delay_is_the_recent_p95_floored_and_capped() {
        let t0 = Instant::now();
        let mut d = Delays::default();
        assert_eq!(d.delay(3, t0, CAP), CAP, "no history: the cap");
        // 95 replies of 2 ms and 5 of 40 ms: p95 is about 2 ms.
        for i in 0..100 {
            let took = if i % 20 == 0 { 40 } else { 2 };
            d.observe(3, Duration::from_millis(took), t0);
        }
        let p95 = d.delay(3, t0, CAP);
        assert!(
            p95 >= Duration::from_millis(2) && p95 <= Duration::from_micros(2500),
            "{p95:?}"
        );
        // Fast replies: the floor.
        for _ in 0..1000 {
            d.observe(4, Duration::from_micros(80), t0);
        }
        assert_eq!(d.delay(4, t0, CAP), FLOOR);
        // Slow ones: the cap.
        for _ in 0..100 {
            d.observe(5, Duration::from_secs(2), t0);
        }
        assert_eq!(d.delay(5, t0, CAP), CAP);
    }

    #[test]
    fn a_server_that_freezes_a_tenth_of_the_time_keeps_a_short_delay() {
        let t0 = Instant::now();
        let mut d = Delays::default();
        // 90 % of replies in 300 us, 10 % held 50-100 ms by freezes: its
        // p95 is a freeze, its median is not.
        for i in 0..1000u64 {
            let took = if i % 10 == 0 {
                Duration::from_millis(50 + i % 50)
            } else {
                Duration::from_micros(300)
            };
            d.observe(0, took, t0);
        }
        let delay = d.delay(0, t0, CAP);
        assert!(delay <= Duration::from_micros(1600), "{delay:?}");
        // A server already stalled that long is hedged at once.
        assert_eq!(d.due_in(0, t0, CAP, delay), Duration::ZERO);
        assert_eq!(d.due_in(0, t0, CAP, Duration::ZERO), delay);
        // The delay is reused for a while, then read off the histogram again.
        for _ in 0..10_000 {
            d.observe(0, Duration::from_millis(20), t0);
        }
        assert_eq!(d.delay(0, t0 + REFRESH / 2, CAP), delay, "reused");
        assert!(d.delay(0, t0 + REFRESH, CAP) > delay, "refreshed");
    }

    #[test]
    fn the_window_forgets_what_is_two_periods_old() {
        let t0 = Instant::now();
        let mut d = Delays::default();
        for _ in 0..100 {
            d.observe(0, Duration::from_millis(50), t0);
        }
        assert!(
            d.delay(0, t0 + PERIOD, CAP) >= Duration::from_millis(50),
            "one period: kept"
        );
        for _ in 0..100 {
            d.observe(0, Duration::from_millis(3), t0 + PERIOD + PERIOD / 2);
        }
        let later = d.delay(0, t0 + 3 * PERIOD, CAP);
        assert_eq!(later, CAP, "all history too old: the cap again");
    }

    #[test]
    fn the_budget_allows_its_share_of_reads_and_no_more() {
        let t0 = Instant::now();
        let mut b = Budget::new(0.05);
        assert!(!b.try_hedge(t0), "no reads yet: no hedge");
        for _ in 0..100 {
            b.read(t0);
        }
        let sent = (0..20).filter(|_| b.try_hedge(t0)).count();
        assert_eq!(sent, 5, "5 % of 100 reads");
        // Two periods on, the window is empty again.
        assert!(!b.try_hedge(t0 + 2 * PERIOD));
        for _ in 0..40 {
            b.read(t0 + 2 * PERIOD);
        }
        assert_eq!((0..10).filter(|_| b.try_hedge(t0 + 2 * PERIOD)).count(), 2);
        // A zero budget never hedges.
        let mut none = Budget::new(0.0);
        none.read(t0);
        assert!(!none.try_hedge(t0));
    }
}
