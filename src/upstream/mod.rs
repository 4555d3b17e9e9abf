//! Server health bookkeeping, sans-IO: failures, ejection, probing and
//! rejoin. Every function takes `now` instead of reading a clock.
//!
//! Must not import `server`, tokio or sockets.
//!
//! Health is shared by every core (relaxed atomics only, per the house style):
//! when one core sees a server fail, the others stop reading from it at once.
//!
//! # States
//! ```text
//!   Up --(failure_limit consecutive failures, or one missed write)--> Down
//!   Down --(probe due; one core claims it)--> Probing
//!   Probing --(version answered; flush_all if dirty)--> Up
//!   Probing --(probe failed)--> Down (next probe after a jittered backoff)
//! ```
//! A server is *dirty* when a write was acknowledged to a client without it.
//! A dirty server may hold stale values, so it is flushed before it serves
//! again; a clean one (e.g. it only timed out on reads) keeps its cache.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Index of a server in the process-wide server table (primaries first, then backups).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub u32);

impl ServerId {
    /// As a table index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A server's place in the pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Owns keys on the primary ring (`-s`).
    Primary,
    /// Owns keys on the backup ring (`-b`).
    Backup,
}

impl Role {
    /// As shown by `stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// Health state of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Serving reads and writes.
    Up,
    /// Ejected: gets no traffic until a probe succeeds.
    Down,
    /// A core is probing it (and flushing it when dirty).
    Probing,
}

impl State {
    /// As shown by `stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Probing => "probing",
        }
    }
}

// Raw states. A probe that will flush is told apart from a clean one: writes
// missed while a flush is pending are harmless, writes missed during a clean
// probe must abort it.
const UP: u8 = 0;
const DOWN: u8 = 1;
const PROBING_FLUSH: u8 = 2;
const PROBING_CLEAN: u8 = 3;

/// Tunables of the health state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that eject a server.
    pub failure_limit: u32,
    /// First probe delay after ejection; doubles per failed probe.
    pub retry_interval: Duration,
    /// Upper bound of the probe delay.
    pub max_retry_interval: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failure_limit: 2,
            retry_interval: Duration::from_millis(500),
            max_retry_interval: Duration::from_secs(10),
        }
    }
}

/// What a request saw of a server when it decided whether to use it; handed
/// back to [`Health::record_missed_write`] so that a flush that started after
/// the decision is recognised as covering the missed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    raw: u8,
    epoch: u64,
}

impl Observed {
    /// What a request sees of a server that is not in the topology (any
    /// more): out of service.
    pub fn gone() -> Observed {
        Observed {
            raw: DOWN,
            epoch: 0,
        }
    }

    /// True when the server was in service.
    pub fn is_up(self) -> bool {
        self.raw == UP
    }
}

/// Shared health of one server. All methods are lock-free.
#[derive(Debug)]
pub struct Health {
    base: Instant,
    state: AtomicU8,
    dirty: AtomicU8,
    flush_epoch: AtomicU64,
    consecutive: AtomicU32,
    probe_failures: AtomicU32,
    next_probe_ms: AtomicU64,
    changed_ms: AtomicU64,
    /// Requests that failed (error, timeout, connection loss).
    pub failures: AtomicU64,
    /// Requests answered by the other replica because this one failed or was down.
    pub failovers: AtomicU64,
    /// Times this server was flushed on rejoin.
    pub flushes: AtomicU64,
    /// Times this server was ejected.
    pub ejections: AtomicU64,
}

/// What the caller must do after reporting a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The server stays in service (or was already out).
    Stays,
    /// This report ejected the server.
    Ejected,
}

/// A claimed probe: whether it must flush the server before it rejoins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Send `flush_all` after the server answers, before it rejoins.
    pub flush: bool,
}

impl Health {
    /// A healthy, clean server; `base` anchors the stored millisecond clocks.
    pub fn new(base: Instant) -> Health {
        Health {
            base,
            state: AtomicU8::new(UP),
            dirty: AtomicU8::new(0),
            flush_epoch: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            changed_ms: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Snapshot taken when a request decides whether to use this server.
    pub fn observe(&self) -> Observed {
        // Epoch first: a flush claimed between the two loads shows up as a
        // newer epoch at report time, which errs towards "covered".
        let epoch = self.flush_epoch.load(Ordering::Acquire);
        let raw = self.state.load(Ordering::Acquire);
        Observed { raw, epoch }
    }

    /// Current state.
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            UP => State::Up,
            DOWN => State::Down,
            _ => State::Probing,
        }
    }

    /// True when the server may take traffic.
    pub fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    /// True when a write was acknowledged without this server since its last flush.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire) != 0
    }

    /// Time since the last state change.
    pub fn since_change(&self, now: Instant) -> Duration {
        Duration::from_millis(
            self.ms(now)
                .saturating_sub(self.changed_ms.load(Ordering::Relaxed)),
        )
    }

    /// A request succeeded: the failure streak ends.
    pub fn record_success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed. The server is ejected after `failure_limit`
    /// consecutive failures; see [`Health::record_missed_write`] for writes.
    pub fn record_failure(&self, now: Instant, policy: &HealthPolicy) -> Verdict {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= policy.failure_limit.max(1) {
            self.eject_from(UP, now, policy)
        } else {
            Verdict::Stays
        }
    }

    /// A write was acknowledged to a client without this server (it was out,
    /// or failed while its replica succeeded); `seen` is what the request
    /// observed when it decided. Unless a flush started since, the server may
    /// now hold a stale value: it is marked dirty and ejected at once, and a
    /// clean probe in progress is aborted.
    pub fn record_missed_write(
        &self,
        now: Instant,
        policy: &HealthPolicy,
        seen: Observed,
    ) -> Verdict {
        if seen.raw == PROBING_FLUSH || self.flush_epoch.load(Ordering::Acquire) != seen.epoch {
            return Verdict::Stays;
        }
        // Dirty before the state change: a prober that claims after this sees it.
        self.dirty.store(1, Ordering::Release);
        match self.eject_from(UP, now, policy) {
            Verdict::Ejected => Verdict::Ejected,
            Verdict::Stays => self.eject_from(PROBING_CLEAN, now, policy),
        }
    }

    fn eject_from(&self, from: u8, now: Instant, policy: &HealthPolicy) -> Verdict {
        if self
            .state
            .compare_exchange(from, DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Verdict::Stays;
        }
        let at = self.ms(now);
        self.changed_ms.store(at, Ordering::Relaxed);
        if from == UP {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            self.probe_failures.store(0, Ordering::Relaxed);
            self.next_probe_ms.store(
                at + policy.retry_interval.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        Verdict::Ejected
    }

    /// If a probe is due, claim it (Down -> Probing); only one core wins.
    pub fn try_claim_probe(&self, now: Instant) -> Option<Probe> {
        if self.state.load(Ordering::Acquire) != DOWN
            || self.ms(now) < self.next_probe_ms.load(Ordering::Relaxed)
        {
            return None;
        }
        let dirty = self.is_dirty();
        let to = if dirty { PROBING_FLUSH } else { PROBING_CLEAN };
        self.state
            .compare_exchange(DOWN, to, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // A write missed between the dirty load and the claim: flush after all.
        let flush = dirty
            || (self.is_dirty()
                && self
                    .state
                    .compare_exchange(
                        PROBING_CLEAN,
                        PROBING_FLUSH,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok());
        if flush {
            self.flush_epoch.fetch_add(1, Ordering::AcqRel);
            self.dirty.store(0, Ordering::Release);
        } else if self.state.load(Ordering::Acquire) != PROBING_CLEAN {
            return None; // aborted by a missed write already
        }
        Some(Probe { flush })
    }

    /// The probe (and its flush) succeeded: back in service, unless a missed
    /// write aborted a clean probe meanwhile. Returns whether it rejoined.
    pub fn probe_succeeded(&self, now: Instant, probe: Probe) -> bool {
        let from = if probe.flush {
            PROBING_FLUSH
        } else {
            PROBING_CLEAN
        };
        if self
            .state
            .compare_exchange(from, UP, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if probe.flush {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
        self.consecutive.store(0, Ordering::Relaxed);
        self.probe_failures.store(0, Ordering::Relaxed);
        self.changed_ms.store(self.ms(now), Ordering::Relaxed);
        true
    }

    /// The probe failed: back to Down, next probe after an exponential
    /// backoff with `jitter` in [0, 1) spreading the cores' and servers' probes.
    pub fn probe_failed(&self, now: Instant, policy: &HealthPolicy, probe: Probe, jitter: f64) {
        if probe.flush {
            // The flush may not have run: the server may still be stale.
            self.dirty.store(1, Ordering::Release);
        }
        let n = self.probe_failures.fetch_add(1, Ordering::Relaxed).min(16);
        let delay = backoff(policy, n, jitter);
        self.next_probe_ms
            .store(self.ms(now) + delay.as_millis() as u64, Ordering::Relaxed);
        self.state.store(DOWN, Ordering::Release);
    }
}

/// Exponential backoff `retry_interval * 2^attempt`, capped, scaled by a
/// jitter in [0.5, 1.5).
pub fn backoff(policy: &HealthPolicy, attempt: u32, jitter: f64) -> Duration {
    let base = policy
        .retry_interval
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.max_retry_interval);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            failure_limit: 2,
            retry_interval: Duration::from_millis(100),
            max_retry_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn read_failures_eject_after_the_limit_and_success_resets() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        assert_eq!(h.record_failure(t0, &policy()), Verdict::Stays);
        h.record_success();
        assert_eq!(h.record_failure(t0, &policy()), Verdict::Stays);
        assert_eq!(h.record_failure(t0, &policy()), Verdict::Ejected);
        assert_eq!(h.state(), State::Down);
        assert!(!h.is_dirty(), "read failures do not make a server stale");
        assert_eq!(h.failures.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_missed_write_ejects_at_once_and_marks_dirty() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        let seen = h.observe();
        assert_eq!(h.record_missed_write(t0, &policy(), seen), Verdict::Ejected);
        assert_eq!(h.state(), State::Down);
        assert!(h.is_dirty());
        assert_eq!(h.record_missed_write(t0, &policy(), seen), Verdict::Stays);
        assert_eq!(h.ejections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn dirty_server_is_flushed_by_exactly_one_prober() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe());
        assert_eq!(h.try_claim_probe(t0 + Duration::from_millis(99)), None);
        let t1 = t0 + Duration::from_millis(100);
        let probe = h.try_claim_probe(t1).expect("due");
        assert!(probe.flush);
        assert_eq!(
            h.try_claim_probe(t1),
            None,
            "a second core must not probe too"
        );
        assert_eq!(h.state(), State::Probing);
        assert!(h.probe_succeeded(t1, probe));
        assert_eq!(h.state(), State::Up);
        assert!(!h.is_dirty());
        assert_eq!(h.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(
            h.since_change(t1 + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn clean_server_rejoins_without_flush() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_failure(t0, &policy());
        h.record_failure(t0, &policy());
        let probe = h.try_claim_probe(t0 + Duration::from_secs(1)).expect("due");
        assert!(!probe.flush, "only read failures: the cache is still valid");
        assert!(h.probe_succeeded(t0 + Duration::from_secs(1), probe));
    }

    #[test]
    fn write_missed_during_a_clean_probe_aborts_it() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_failure(t0, &policy());
        h.record_failure(t0, &policy());
        let seen = h.observe();
        let t1 = t0 + Duration::from_secs(1);
        let probe = h.try_claim_probe(t1).expect("due");
        assert!(!probe.flush);
        assert_eq!(h.record_missed_write(t1, &policy(), seen), Verdict::Ejected);
        assert!(
            !h.probe_succeeded(t1, probe),
            "stale server must not rejoin unflushed"
        );
        assert_eq!(h.state(), State::Down);
        assert!(h.is_dirty());
    }

    #[test]
    fn write_missed_before_a_flush_is_covered_by_it() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe());
        let seen_while_down = h.observe();
        let t1 = t0 + Duration::from_secs(1);
        let probe = h.try_claim_probe(t1).expect("due");
        let seen_while_flushing = h.observe();
        assert!(h.probe_succeeded(t1, probe));
        // Both writes were decided before the rejoin but acknowledged after it.
        assert_eq!(
            h.record_missed_write(t1, &policy(), seen_while_down),
            Verdict::Stays
        );
        assert_eq!(
            h.record_missed_write(t1, &policy(), seen_while_flushing),
            Verdict::Stays
        );
        assert_eq!(h.state(), State::Up);
        assert!(!h.is_dirty());
    }

    #[test]
    fn failed_flush_probe_keeps_the_server_dirty_and_backs_off() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe());
        let t1 = t0 + Duration::from_millis(100);
        let probe = h.try_claim_probe(t1).expect("due");
        h.probe_failed(t1, &policy(), probe, 0.5);
        assert_eq!(h.state(), State::Down);
        assert!(h.is_dirty());
        // attempt 0 at jitter 0.5 -> exactly the retry interval
        assert_eq!(h.try_claim_probe(t1 + Duration::from_millis(99)), None);
        assert!(h.try_claim_probe(t1 + Duration::from_millis(100)).is_some());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        assert_eq!(backoff(&p, 0, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(&p, 1, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(&p, 10, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(&p, 10, 0.0), Duration::from_millis(500));
        assert!(backoff(&p, 10, 0.999) < Duration::from_millis(1500));
    }
}
