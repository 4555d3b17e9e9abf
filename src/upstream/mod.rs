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
//!   Up --(failure_limit consecutive failures, the last refused, reset or garbled)--> Down (ejection)
//!   Up --(failure_limit consecutive failures, the last a stuck connection; or one missed write)--> Suspect
//!   Suspect --(claimed by the prober at once)--> Probing
//!   Down --(probe due; the prober claims it)--> Probing
//!   Probing --(version answered; log overflowed or a flush_all missed)--> Flushing --(flush_all OK)--> Up
//!   Probing --(version answered; log holds keys or nothing)--> Draining --(log empty, grace over)--> Up
//!   Probing / Flushing / Draining --(probe, flush or delete failed)--> Down (jittered backoff;
//!                                    an ejection for that reason if the episode began as Suspect)
//!   Draining --(log overflowed)--> Down, or Suspect (to be flushed at once) if it began as Suspect
//! ```
//! Every write acknowledged to a client without a server (it was out, or
//! failed while its replica succeeded) logs the key in the server's
//! [`MissedLog`]; the server may hold a stale value for exactly those keys.
//! A rejoin deletes them (`Draining`: the server takes absolute writes but
//! serves no reads) and goes up only when the log is empty, under the log's
//! lock, so a key logged before that moment is always deleted first. A
//! missed write that reaches a server already up makes it suspect again.
//! Only an overflowed log (or a missed `flush_all`) costs the whole cache.
//!
//! # Suspect: slow is not dead
//! A stuck connection (no reply bytes for the request timeout) or a missed
//! write says something is wrong with a server, not that it is dead. Such a
//! server turns *suspect*: to the data plane exactly like `Down` (no reads,
//! no writes: every write acknowledged without it is logged, as while it is
//! out), but the prober claims it at once instead of after a backoff, and
//! the episode counts as an ejection only if that probe (or the rejoin
//! after it) fails, with the probe's reason. A probe that is answered takes
//! it through the ordinary rejoin (drain, or flush), so it serves reads again
//! only with an empty log, and `suspects_cleared` counts it. Refused or
//! reset connections and garbled replies are real failures and still eject
//! directly. Whether an episode began as a suspicion travels in the
//! [`Probe`] token: only its holder moves a server out of `Probing`,
//! `Flushing` or `Draining`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod hedge;
pub mod hot;
pub mod missed;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use missed::{MissedLog, Pending};

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
    /// A connection was stuck or a write was missed: gets no traffic, and is
    /// probed at once (an answer brings it back without an ejection).
    Suspect,
    /// Ejected: gets no traffic until a probe succeeds.
    Down,
    /// A probe (or its flush) is running.
    Probing,
    /// Its missed keys are being deleted: takes absolute writes, serves no reads.
    Draining,
}

impl State {
    /// Every state, in `stats` and metrics order.
    pub const ALL: [State; 5] = [
        State::Up,
        State::Suspect,
        State::Down,
        State::Probing,
        State::Draining,
    ];

    /// As shown by `stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Suspect => "suspect",
            State::Down => "down",
            State::Probing => "probing",
            State::Draining => "draining",
        }
    }
}

// Raw states. Writes missed while a flush is pending are covered by it;
// writes missed in any other state are logged.
const UP: u8 = 0;
const DOWN: u8 = 1;
const PROBING_FLUSH: u8 = 2;
const PROBING: u8 = 3;
const DRAINING: u8 = 4;
const SUSPECT: u8 = 5;

/// Why a server was ejected or turned suspect (as shown by `stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Ejection {
    /// Never ejected.
    None = 0,
    /// Connections refused, reset or not established in time.
    Connect = 1,
    /// Requests made no progress within the request timeout.
    Timeout = 2,
    /// Connections closed under requests.
    Closed = 3,
    /// The server sent bytes that are not a reply.
    Protocol = 4,
    /// A write was acknowledged without it (a reason for suspicion only).
    MissedWrite = 5,
    /// Deleting its missed keys on rejoin failed.
    DrainFailed = 6,
    /// Its TLS session failed: its certificate did not verify, or the
    /// handshake or a record was refused.
    Tls = 7,
}

impl Ejection {
    /// How many values there are (counters indexed by `as usize`).
    pub const COUNT: usize = 8;

    /// The reasons a server is ejected for: the failures that take it out
    /// directly, and those a failed probe of a suspect server reports.
    pub const EJECTIONS: [Ejection; 6] = [
        Ejection::Connect,
        Ejection::Timeout,
        Ejection::Closed,
        Ejection::Protocol,
        Ejection::DrainFailed,
        Ejection::Tls,
    ];

    /// The reasons a server turns suspect.
    pub const SUSPICIONS: [Ejection; 2] = [Ejection::Timeout, Ejection::MissedWrite];

    /// As shown by `stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ejection::None => "none",
            Ejection::Connect => "connect",
            Ejection::Timeout => "timeout",
            Ejection::Closed => "closed",
            Ejection::Protocol => "protocol",
            Ejection::MissedWrite => "missed_write",
            Ejection::DrainFailed => "drain_failed",
            Ejection::Tls => "tls",
        }
    }

    fn from_raw(r: u8) -> Ejection {
        match r {
            1 => Ejection::Connect,
            2 => Ejection::Timeout,
            3 => Ejection::Closed,
            4 => Ejection::Protocol,
            5 => Ejection::MissedWrite,
            6 => Ejection::DrainFailed,
            7 => Ejection::Tls,
            _ => Ejection::None,
        }
    }
}

/// How a server last came back (as shown by `stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RejoinPath {
    /// Never rejoined.
    None = 0,
    /// Nothing was missed: back with its whole cache.
    Clean = 1,
    /// Its missed keys were deleted.
    Drain = 2,
    /// Flushed (log overflow or a missed `flush_all`).
    Flush = 3,
}

impl RejoinPath {
    /// As shown by `stats` and the rejoin log line.
    pub fn as_str(self) -> &'static str {
        match self {
            RejoinPath::None => "none",
            RejoinPath::Clean => "clean",
            RejoinPath::Drain => "drain",
            RejoinPath::Flush => "flush",
        }
    }

    fn from_raw(r: u8) -> RejoinPath {
        match r {
            1 => RejoinPath::Clean,
            2 => RejoinPath::Drain,
            3 => RejoinPath::Flush,
            _ => RejoinPath::None,
        }
    }
}

/// Tunables of the health state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that eject a server.
    pub failure_limit: u32,
    /// First probe delay after ejection; doubles per failed probe.
    pub retry_interval: Duration,
    /// Upper bound of the probe delay.
    pub max_retry_interval: Duration,
    /// Bytes of one server's missed-key log before it falls back to a flush.
    pub missed_keys_limit: usize,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failure_limit: 2,
            retry_interval: Duration::from_millis(500),
            max_retry_interval: Duration::from_secs(10),
            missed_keys_limit: missed::DEFAULT_LIMIT,
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

    /// True when the server took absolute writes (`set`, `delete`, `touch`):
    /// in service, or draining its missed keys. A suspect server takes none:
    /// it may be stuck, and a write acknowledged without it is logged.
    pub fn takes_writes(self) -> bool {
        self.raw == UP || self.raw == DRAINING
    }
}

/// Shared health of one server. All methods but the missed-key ones are
/// lock-free.
#[derive(Debug)]
pub struct Health {
    base: Instant,
    state: AtomicU8,
    flush_epoch: AtomicU64,
    consecutive: AtomicU32,
    probe_failures: AtomicU32,
    next_probe_ms: AtomicU64,
    changed_ms: AtomicU64,
    last_ejection: AtomicU8,
    last_suspicion: AtomicU8,
    last_rejoin: AtomicU8,
    missed: Mutex<MissedLog>,
    /// Connections given up with requests unanswered whose sockets are not
    /// closed yet (see [`Health::fence`]).
    fenced: AtomicU32,
    /// Connections given up with requests unanswered (reset, not closed).
    pub aborts: AtomicU64,
    /// The topology generation through which this server holds no key it
    /// does not own (see [`Health::sweep_done`]).
    swept: AtomicU64,
    /// Sweeps finished (keys it no longer owned deleted after a reload).
    pub sweeps: AtomicU64,
    /// Times its host name resolved to a new address.
    pub addr_changes: AtomicU64,
    /// Re-resolutions of its host name that failed (the last address kept).
    pub dns_failures: AtomicU64,
    /// Keys those sweeps deleted.
    pub swept_keys: AtomicU64,
    /// Requests that failed (error, timeout, connection loss).
    pub failures: AtomicU64,
    /// Requests answered by the other replica because this one failed or was down.
    pub failovers: AtomicU64,
    /// Times this server was flushed on rejoin.
    pub flushes: AtomicU64,
    /// Times this server was ejected.
    pub ejections: AtomicU64,
    /// Ejections by reason, indexed by [`Ejection`].
    pub ejected_for: [AtomicU64; Ejection::COUNT],
    /// Times this server turned suspect.
    pub suspects: AtomicU64,
    /// Suspicions by reason, indexed by [`Ejection`].
    pub suspected_for: [AtomicU64; Ejection::COUNT],
    /// Suspicions that ended with the server back up, without an ejection.
    pub suspects_cleared: AtomicU64,
    /// Keys put in the missed-key log.
    pub keys_logged: AtomicU64,
    /// Rejoins that deleted missed keys instead of flushing.
    pub drains: AtomicU64,
    /// Keys deleted by drains.
    pub drained_keys: AtomicU64,
}

/// A copy of a server's counters, for `stats` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests that failed.
    pub failures: u64,
    /// Requests answered by the other replica.
    pub failovers: u64,
    /// Flushes on rejoin.
    pub flushes: u64,
    /// Ejections.
    pub ejections: u64,
    /// Ejections by reason, indexed by [`Ejection`].
    pub ejected_for: [u64; Ejection::COUNT],
    /// Suspicions.
    pub suspects: u64,
    /// Suspicions by reason, indexed by [`Ejection`].
    pub suspected_for: [u64; Ejection::COUNT],
    /// Suspicions that ended back up without an ejection.
    pub suspects_cleared: u64,
    /// Keys put in the missed-key log.
    pub keys_logged: u64,
    /// Rejoins that deleted missed keys.
    pub drains: u64,
    /// Keys deleted by drains.
    pub drained_keys: u64,
    /// Connections given up with requests unanswered, reset instead of closed.
    pub aborts: u64,
    /// Sweeps finished after reloads that moved keys.
    pub sweeps: u64,
    /// Keys those sweeps deleted.
    pub swept_keys: u64,
    /// Times its host name resolved to a new address.
    pub addr_changes: u64,
    /// Failed re-resolutions of its host name.
    pub dns_failures: u64,
}

/// What the caller must do after reporting a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The server stays in service (or was already out).
    Stays,
    /// This report ejected the server.
    Ejected,
    /// This report made the server suspect: wake the prober.
    Suspected,
}

/// A claimed probe (Suspect or Down -> Probing); only its holder may move
/// the server on. It remembers whether the episode began as a suspicion, so
/// that its end is counted as an ejection or as a cleared suspicion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    suspect: bool,
}

impl Probe {
    /// True when the probed server was suspect rather than ejected.
    pub fn of_suspect(self) -> bool {
        self.suspect
    }
}

/// How a server that answered its probe comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// Send `flush_all`, then [`Health::probe_succeeded`].
    Flush,
    /// Delete the missed keys: [`Health::drain_step`] until it says so.
    Drain,
}

/// The next thing a drain must do.
#[derive(Debug, PartialEq, Eq)]
pub enum DrainStep {
    /// Delete these keys on the server, then report with
    /// [`Health::drained`] or [`Health::drain_failed`].
    Delete(Vec<Box<[u8]>>),
    /// Nothing logged, but writes decided while the server was out may still
    /// be in flight: ask again shortly.
    Wait,
    /// Back in service.
    Rejoined,
    /// The drain is over without a rejoin (the log overflowed meanwhile:
    /// the server is down again and will be flushed).
    Aborted,
}

impl Health {
    /// A healthy, clean server; `base` anchors the stored millisecond clocks.
    pub fn new(base: Instant) -> Health {
        Health {
            base,
            state: AtomicU8::new(UP),
            flush_epoch: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            changed_ms: AtomicU64::new(0),
            last_ejection: AtomicU8::new(Ejection::None as u8),
            last_suspicion: AtomicU8::new(Ejection::None as u8),
            last_rejoin: AtomicU8::new(RejoinPath::None as u8),
            missed: Mutex::new(MissedLog::default()),
            fenced: AtomicU32::new(0),
            aborts: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
            addr_changes: AtomicU64::new(0),
            dns_failures: AtomicU64::new(0),
            swept_keys: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            ejected_for: std::array::from_fn(|_| AtomicU64::new(0)),
            suspects: AtomicU64::new(0),
            suspected_for: std::array::from_fn(|_| AtomicU64::new(0)),
            suspects_cleared: AtomicU64::new(0),
            keys_logged: AtomicU64::new(0),
            drains: AtomicU64::new(0),
            drained_keys: AtomicU64::new(0),
        }
    }

    /// A server a reload added (or added back): out of service until a
    /// probe has flushed it. Nothing recorded the writes it missed while it
    /// was not in the topology, and it may still hold values from before it
    /// left; an empty server loses nothing to the flush.
    pub fn added_by_reload(base: Instant, generation: u64) -> Health {
        let h = Health::new(base);
        h.must_flush();
        h.swept.store(generation, Ordering::Release);
        h
    }

    /// Take the server out of service until a probe has flushed it (its
    /// state is DOWN, due for a probe now; a flush covers every earlier
    /// write, so the missed-key log is dropped).
    pub fn must_flush(&self) {
        self.log().overflow();
        self.next_probe_ms.store(0, Ordering::Relaxed);
        self.state.store(DOWN, Ordering::Release);
    }

    /// A reload from generation `previous` to `next` keeps this server;
    /// `moved`: it changes where keys go. Placement unchanged, a server
    /// clean under `previous` is clean under `next`. Keys moved, one that
    /// was not clean (its sweep for an earlier move had not finished) may
    /// hold copies of keys it lost then and owns again now, older than
    /// writes made elsewhere meanwhile: it is taken out until a flush, and
    /// true is returned. The others wait for this move's sweep.
    pub fn settle_reload(&self, previous: u64, next: u64, moved: bool) -> bool {
        let clean = self.clean_through(previous);
        if !moved {
            if clean {
                self.sweep_done(next, None);
            }
            return false;
        }
        if clean {
            return false;
        }
        self.must_flush();
        // Nothing older survives the flush it waits for.
        self.sweep_done(next, None);
        true
    }

    /// Whether the server holds no key it does not own under topology
    /// generation `generation` (as far as memring knows).
    pub fn clean_through(&self, generation: u64) -> bool {
        self.swept.load(Ordering::Acquire) >= generation
    }

    /// The server holds no key it does not own under `generation`: its
    /// sweep finished (`deleted` keys), or the placement did not change
    /// (`deleted` None) since it was last clean.
    pub fn sweep_done(&self, generation: u64, deleted: Option<u64>) {
        self.swept.fetch_max(generation, Ordering::AcqRel);
        if let Some(n) = deleted {
            self.sweeps.fetch_add(1, Ordering::Relaxed);
            self.swept_keys.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    /// The missed-key log; a poisoned lock still holds a usable log.
    fn log(&self) -> MutexGuard<'_, MissedLog> {
        self.missed.lock().unwrap_or_else(|e| e.into_inner())
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
            SUSPECT => State::Suspect,
            DOWN => State::Down,
            DRAINING => State::Draining,
            _ => State::Probing,
        }
    }

    /// True when the server may take traffic.
    pub fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    /// True when the server may hold stale values (its log is not empty).
    pub fn is_dirty(&self) -> bool {
        !self.log().is_empty()
    }

    /// Keys in the missed-key log now, and whether it overflowed.
    pub fn missed_keys(&self) -> (usize, bool) {
        let log = self.log();
        (log.len(), log.must_flush())
    }

    /// Why the server was last ejected.
    pub fn last_ejection(&self) -> Ejection {
        Ejection::from_raw(self.last_ejection.load(Ordering::Relaxed))
    }

    /// Why the server last turned suspect.
    pub fn last_suspicion(&self) -> Ejection {
        Ejection::from_raw(self.last_suspicion.load(Ordering::Relaxed))
    }

    /// A copy of the counters.
    pub fn counters(&self) -> Counters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            failures: get(&self.failures),
            failovers: get(&self.failovers),
            flushes: get(&self.flushes),
            ejections: get(&self.ejections),
            ejected_for: std::array::from_fn(|i| get(&self.ejected_for[i])),
            suspects: get(&self.suspects),
            suspected_for: std::array::from_fn(|i| get(&self.suspected_for[i])),
            suspects_cleared: get(&self.suspects_cleared),
            keys_logged: get(&self.keys_logged),
            drains: get(&self.drains),
            drained_keys: get(&self.drained_keys),
            aborts: get(&self.aborts),
            sweeps: get(&self.sweeps),
            addr_changes: get(&self.addr_changes),
            dns_failures: get(&self.dns_failures),
            swept_keys: get(&self.swept_keys),
        }
    }

    /// How the server last rejoined.
    pub fn last_rejoin(&self) -> RejoinPath {
        RejoinPath::from_raw(self.last_rejoin.load(Ordering::Relaxed))
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

    /// A request failed (`why`). After `failure_limit` consecutive failures
    /// a server that is up turns suspect when the last one was a stuck
    /// connection (slow is not dead: a probe decides), and is ejected when it
    /// was refused, reset or garbled. See [`Health::record_missed_write`]
    /// for writes.
    pub fn record_failure(&self, now: Instant, policy: &HealthPolicy, why: Ejection) -> Verdict {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.failure_limit.max(1) {
            Verdict::Stays
        } else if why == Ejection::Timeout {
            self.suspect(now, why)
        } else {
            self.eject(now, policy, why)
        }
    }

    /// A write of `key` (empty: a `flush_all`) was acknowledged to a client
    /// without this server (it was out, or failed while its replica
    /// succeeded); `seen` is what the request observed when it decided.
    /// Unless a flush started since, the key is logged, and a server that is
    /// up turns suspect at once (it may now serve a stale value, so it stops
    /// serving until a rejoin has deleted the key); a server on its way back
    /// deletes the key before it serves again.
    pub fn record_missed_write(
        &self,
        now: Instant,
        policy: &HealthPolicy,
        seen: Observed,
        key: &[u8],
    ) -> Verdict {
        if seen.raw == PROBING_FLUSH || self.flush_epoch.load(Ordering::Acquire) != seen.epoch {
            return Verdict::Stays;
        }
        // Under the log's lock: a drain cannot pass to Up without this key.
        let mut log = self.log();
        if log.add(key, policy.missed_keys_limit) {
            self.keys_logged.fetch_add(1, Ordering::Relaxed);
        }
        self.suspect(now, Ejection::MissedWrite)
    }

    /// Up -> Suspect; the prober claims it at once.
    fn suspect(&self, now: Instant, why: Ejection) -> Verdict {
        if self
            .state
            .compare_exchange(UP, SUSPECT, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Verdict::Stays;
        }
        self.changed_ms.store(self.ms(now), Ordering::Relaxed);
        self.last_suspicion.store(why as u8, Ordering::Relaxed);
        self.suspects.fetch_add(1, Ordering::Relaxed);
        self.suspected_for[why as usize].fetch_add(1, Ordering::Relaxed);
        Verdict::Suspected
    }

    /// Up -> Down, first probe after the retry interval.
    fn eject(&self, now: Instant, policy: &HealthPolicy, why: Ejection) -> Verdict {
        if self
            .state
            .compare_exchange(UP, DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Verdict::Stays;
        }
        let at = self.ms(now);
        self.changed_ms.store(at, Ordering::Relaxed);
        self.count_ejection(why);
        self.probe_failures.store(0, Ordering::Relaxed);
        self.next_probe_ms.store(
            at + policy.retry_interval.as_millis() as u64,
            Ordering::Relaxed,
        );
        Verdict::Ejected
    }

    fn count_ejection(&self, why: Ejection) {
        self.last_ejection.store(why as u8, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.ejected_for[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection to this server was given up with requests unanswered
    /// and is being reset: until [`Health::unfence`] says its socket is
    /// closed, no probe starts, so the server cannot return to service
    /// while that socket might still deliver the requests.
    pub fn fence(&self) {
        self.fenced.fetch_add(1, Ordering::AcqRel);
        self.aborted();
    }

    /// A connection to this server was reset with requests unanswered.
    pub fn aborted(&self) {
        self.aborts.fetch_add(1, Ordering::Relaxed);
    }

    /// A fenced socket is closed (its reset sent, its send queue dropped).
    pub fn unfence(&self) {
        let _ = self
            .fenced
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// If a probe is due, claim it (Suspect or Down -> Probing); only one
    /// thread wins. A suspect server is due at once. None while a fenced
    /// socket is still open.
    pub fn try_claim_probe(&self, now: Instant) -> Option<Probe> {
        if self.fenced.load(Ordering::Acquire) > 0 {
            return None;
        }
        let from = match self.state.load(Ordering::Acquire) {
            SUSPECT => SUSPECT,
            DOWN if self.ms(now) >= self.next_probe_ms.load(Ordering::Relaxed) => DOWN,
            _ => return None,
        };
        self.state
            .compare_exchange(from, PROBING, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(Probe {
            suspect: from == SUSPECT,
        })
    }

    /// The server answered its probe: decide how it comes back. A flush
    /// starts a new epoch (covering every write decided before it) and
    /// empties the log; a drain starts taking absolute writes at once.
    pub fn begin_rejoin(&self, now: Instant, _probe: Probe) -> Rejoin {
        let mut log = self.log();
        if log.must_flush() {
            log.clear();
            self.flush_epoch.fetch_add(1, Ordering::AcqRel);
            self.state.store(PROBING_FLUSH, Ordering::Release);
            Rejoin::Flush
        } else {
            self.changed_ms.store(self.ms(now), Ordering::Relaxed);
            self.state.store(DRAINING, Ordering::Release);
            Rejoin::Drain
        }
    }

    /// The flush succeeded: back in service.
    pub fn probe_succeeded(&self, now: Instant, probe: Probe) -> bool {
        if self
            .state
            .compare_exchange(PROBING_FLUSH, UP, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.last_rejoin
            .store(RejoinPath::Flush as u8, Ordering::Relaxed);
        self.back_up(now, probe);
        true
    }

    fn back_up(&self, now: Instant, probe: Probe) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.probe_failures.store(0, Ordering::Relaxed);
        self.changed_ms.store(self.ms(now), Ordering::Relaxed);
        if probe.suspect {
            self.suspects_cleared.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next step of a drain: up to `max` keys to delete, or, once the
    /// log is empty and the server has drained for `grace` (the request
    /// timeout: every write decided while it was out has been acknowledged
    /// or failed by then), back in service. `deleted_so_far` picks the path
    /// shown by `stats`.
    pub fn drain_step(
        &self,
        now: Instant,
        policy: &HealthPolicy,
        probe: Probe,
        grace: Duration,
        max: usize,
        deleted_so_far: u64,
    ) -> DrainStep {
        let mut log = self.log();
        if self.state.load(Ordering::Acquire) != DRAINING {
            return DrainStep::Aborted;
        }
        match log.take(max.max(1)) {
            Pending::Keys(keys) => DrainStep::Delete(keys),
            Pending::Flush => {
                // Overflowed mid-drain: stop taking writes, flush later (a
                // suspect server at once: nothing says it failed).
                log.overflow();
                let at = self.ms(now);
                self.changed_ms.store(at, Ordering::Relaxed);
                self.next_probe_ms.store(
                    at + policy.retry_interval.as_millis() as u64,
                    Ordering::Relaxed,
                );
                let to = if probe.suspect { SUSPECT } else { DOWN };
                self.state.store(to, Ordering::Release);
                DrainStep::Aborted
            }
            Pending::Nothing if self.since_change(now) < grace => DrainStep::Wait,
            Pending::Nothing => {
                self.state.store(UP, Ordering::Release);
                let path = if deleted_so_far > 0 {
                    self.drains.fetch_add(1, Ordering::Relaxed);
                    RejoinPath::Drain
                } else {
                    RejoinPath::Clean
                };
                self.last_rejoin.store(path as u8, Ordering::Relaxed);
                self.back_up(now, probe);
                DrainStep::Rejoined
            }
        }
    }

    /// A drain deleted `n` keys.
    pub fn drained(&self, n: u64) {
        self.drained_keys.fetch_add(n, Ordering::Relaxed);
    }

    /// Deleting `undone` failed: they go back to the log and the server
    /// goes down until a later probe (an ejection, if it was suspect).
    pub fn drain_failed(
        &self,
        now: Instant,
        policy: &HealthPolicy,
        probe: Probe,
        undone: Vec<Box<[u8]>>,
        jitter: f64,
    ) {
        let mut log = self.log();
        log.restore(undone, policy.missed_keys_limit);
        if self.state.load(Ordering::Acquire) == DRAINING {
            if probe.suspect {
                self.count_ejection(Ejection::DrainFailed);
            } else {
                self.last_ejection
                    .store(Ejection::DrainFailed as u8, Ordering::Relaxed);
            }
            self.down_after_failed_probe(now, policy, jitter);
        }
    }

    /// The probe or its flush failed (`why`): back to Down, next probe after
    /// an exponential backoff with `jitter` in [0, 1) spreading the cores'
    /// and servers' probes. A suspect server is ejected now, for `why`.
    pub fn probe_failed(
        &self,
        now: Instant,
        policy: &HealthPolicy,
        probe: Probe,
        why: Ejection,
        jitter: f64,
    ) {
        let mut log = self.log();
        if self.state.load(Ordering::Acquire) == PROBING_FLUSH {
            // The flush may not have run: the server may still be stale.
            log.overflow();
        }
        if probe.suspect {
            self.count_ejection(why);
        }
        self.down_after_failed_probe(now, policy, jitter);
    }

    /// The probe could not even start (no thread for it): a suspect server
    /// stays suspect and is claimed again, a down one backs off. Nothing is
    /// counted: the server was not asked anything.
    pub fn probe_not_run(&self, now: Instant, policy: &HealthPolicy, probe: Probe, jitter: f64) {
        if probe.suspect {
            self.state.store(SUSPECT, Ordering::Release);
        } else {
            self.down_after_failed_probe(now, policy, jitter);
        }
    }

    fn down_after_failed_probe(&self, now: Instant, policy: &HealthPolicy, jitter: f64) {
        let n = self.probe_failures.fetch_add(1, Ordering::Relaxed).min(16);
        let delay = backoff(policy, n, jitter);
        self.next_probe_ms
            .store(self.ms(now) + delay.as_millis() as u64, Ordering::Relaxed);
        self.state.store(DOWN, Ordering::Release);
    }
}

/// The jitter of backoffs and probe ticks: a xorshift64 generator of
/// numbers in [0, 1). Not for anything secret; seeded per core or thread so
/// that they do not move in step.
#[derive(Clone, Copy, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator from `seed` (a zero seed is replaced: xorshift stays at 0).
    pub fn new(seed: u64) -> Jitter {
        Jitter(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next number in [0, 1).
    pub fn sample(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
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
    #[test]
    fn jitter_stays_in_the_unit_interval_and_moves() {
        let mut j = Jitter::new(0);
        let xs: Vec<f64> = (0..1000).map(|_| j.sample()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
        assert_ne!(Jitter::new(1).sample(), Jitter::new(2).sample());
    }

    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            failure_limit: 2,
            retry_interval: Duration::from_millis(100),
            max_retry_interval: Duration::from_secs(1),
            missed_keys_limit: 1 << 20,
        }
    }

    const GRACE: Duration = Duration::from_millis(50);

    /// Drain to the end, returning the keys deleted.
    fn drain(h: &Health, probe: Probe, mut now: Instant) -> Vec<Box<[u8]>> {
        let mut all = Vec::new();
        for _ in 0..100 {
            match h.drain_step(now, &policy(), probe, GRACE, 2, all.len() as u64) {
                DrainStep::Delete(k) => {
                    h.drained(k.len() as u64);
                    all.extend(k);
                }
                DrainStep::Wait => now += Duration::from_millis(10),
                DrainStep::Rejoined => return all,
                DrainStep::Aborted => panic!("drain aborted"),
            }
        }
        panic!("drain did not end");
    }

    /// Eject `h` for refused connections (a real failure: Down, not suspect).
    fn refused(h: &Health, now: Instant) {
        for _ in 0..policy().failure_limit {
            h.record_failure(now, &policy(), Ejection::Connect);
        }
        assert_eq!(h.state(), State::Down);
    }

    fn n(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    #[test]
    fn refused_connections_eject_after_the_limit_and_success_resets() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        let p = policy();
        assert_eq!(h.record_failure(t0, &p, Ejection::Timeout), Verdict::Stays);
        h.record_success();
        assert_eq!(h.record_failure(t0, &p, Ejection::Timeout), Verdict::Stays);
        assert_eq!(
            h.record_failure(t0, &p, Ejection::Connect),
            Verdict::Ejected
        );
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.last_ejection(), Ejection::Connect);
        assert!(!h.is_dirty(), "read failures do not make a server stale");
        assert_eq!(n(&h.failures), 3);
        assert_eq!(n(&h.ejections), 1);
        assert_eq!(n(&h.ejected_for[Ejection::Connect as usize]), 1);
        assert_eq!(n(&h.suspects), 0);
        // Closed and garbled connections eject directly too.
        for why in [Ejection::Closed, Ejection::Protocol] {
            let h = Health::new(t0);
            h.record_failure(t0, &p, why);
            assert_eq!(h.record_failure(t0, &p, why), Verdict::Ejected);
            assert_eq!(h.last_ejection(), why);
        }
    }

    #[test]
    fn stuck_connections_make_a_server_suspect_not_down() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        let p = policy();
        assert_eq!(h.record_failure(t0, &p, Ejection::Timeout), Verdict::Stays);
        assert_eq!(
            h.record_failure(t0, &p, Ejection::Timeout),
            Verdict::Suspected
        );
        assert_eq!(h.state(), State::Suspect);
        let seen = h.observe();
        assert!(!seen.is_up(), "a suspect serves no reads");
        assert!(!seen.takes_writes(), "nor writes: they are logged instead");
        assert_eq!(h.last_suspicion(), Ejection::Timeout);
        assert_eq!(h.last_ejection(), Ejection::None);
        assert_eq!(n(&h.ejections), 0);
        assert_eq!(n(&h.suspects), 1);
        assert_eq!(n(&h.suspected_for[Ejection::Timeout as usize]), 1);
        // More failures while suspect change nothing: the probe decides.
        assert_eq!(h.record_failure(t0, &p, Ejection::Connect), Verdict::Stays);
        assert_eq!(h.record_failure(t0, &p, Ejection::Timeout), Verdict::Stays);
        assert_eq!(h.state(), State::Suspect);
        assert_eq!((n(&h.suspects), n(&h.ejections)), (1, 0));
    }

    #[test]
    fn a_suspect_is_probed_at_once_and_an_answer_clears_it_without_an_ejection() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_failure(t0, &policy(), Ejection::Timeout);
        h.record_failure(t0, &policy(), Ejection::Timeout);
        // No retry interval to wait.
        let probe = h.try_claim_probe(t0).expect("a suspect is due at once");
        assert!(probe.of_suspect());
        assert_eq!(h.try_claim_probe(t0), None, "one prober only");
        assert_eq!(h.state(), State::Probing);
        assert_eq!(h.begin_rejoin(t0, probe), Rejoin::Drain);
        assert_eq!(
            h.drain_step(t0, &policy(), probe, Duration::ZERO, 10, 0),
            DrainStep::Rejoined,
            "nothing missed: back at once"
        );
        assert!(h.is_up());
        assert_eq!(h.last_rejoin(), RejoinPath::Clean);
        assert_eq!(n(&h.suspects_cleared), 1);
        assert_eq!(n(&h.ejections), 0);
        assert_eq!(h.last_ejection(), Ejection::None);
        // The streak is over: one more stuck connection is not enough.
        assert_eq!(
            h.record_failure(t0, &policy(), Ejection::Timeout),
            Verdict::Stays
        );
    }

    #[test]
    fn a_server_added_by_reload_is_flushed_before_it_serves() {
        let t0 = Instant::now();
        let h = Health::added_by_reload(t0, 3);
        assert!(h.clean_through(3) && !h.clean_through(4));
        assert_eq!(h.state(), State::Down);
        assert!(!h.observe().is_up() && !h.observe().takes_writes());
        let probe = h.try_claim_probe(t0).expect("due at once");
        assert_eq!(h.begin_rejoin(t0, probe), Rejoin::Flush);
        assert!(h.probe_succeeded(t0, probe));
        assert!(h.is_up());
        assert_eq!(n(&h.ejections), 0, "not an ejection");
    }

    #[test]
    fn a_reload_flushes_a_server_only_when_keys_move_before_its_sweep() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        // Clean at 0; a reload that moves nothing carries that on.
        assert!(!h.settle_reload(0, 1, false));
        assert!(h.clean_through(1));
        // Keys move at 2: it waits for the sweep, still serving.
        assert!(!h.settle_reload(1, 2, true));
        assert!(h.is_up() && !h.clean_through(2));
        // Nothing moves at 3: still not clean (its sweep never ran).
        assert!(!h.settle_reload(2, 3, false));
        assert!(!h.clean_through(3));
        // Keys move again at 4 before any sweep: flushed first.
        assert!(h.settle_reload(3, 4, true));
        assert_eq!(h.state(), State::Down);
        assert!(h.clean_through(4));
        let probe = h.try_claim_probe(t0).expect("due at once");
        assert_eq!(h.begin_rejoin(t0, probe), Rejoin::Flush);
    }

    #[test]
    fn no_probe_starts_while_a_reset_socket_is_still_open() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.fence();
        h.record_failure(t0, &policy(), Ejection::Timeout);
        h.record_failure(t0, &policy(), Ejection::Timeout);
        assert_eq!(h.state(), State::Suspect);
        assert_eq!(
            h.try_claim_probe(t0),
            None,
            "fenced: its writes may still arrive"
        );
        h.fence();
        h.unfence();
        assert_eq!(h.try_claim_probe(t0), None, "one of two sockets still open");
        h.unfence();
        assert!(
            h.try_claim_probe(t0).is_some(),
            "both closed: probe at once"
        );
        h.unfence();
        assert_eq!(h.fenced.load(Ordering::Relaxed), 0, "never below zero");
        assert_eq!(n(&h.aborts), 2);
    }

    #[test]
    fn a_suspect_that_fails_its_probe_is_ejected_for_the_probes_reason() {
        let t0 = Instant::now();
        let p = policy();
        for why in [Ejection::Timeout, Ejection::Connect, Ejection::Closed] {
            let h = Health::new(t0);
            h.record_failure(t0, &p, Ejection::Timeout);
            h.record_failure(t0, &p, Ejection::Timeout);
            let probe = h.try_claim_probe(t0).expect("due");
            h.probe_failed(t0, &p, probe, why, 0.5);
            assert_eq!(h.state(), State::Down);
            assert_eq!(n(&h.ejections), 1, "{why:?}");
            assert_eq!(n(&h.ejected_for[why as usize]), 1, "{why:?}");
            assert_eq!(h.last_ejection(), why);
            assert_eq!(n(&h.suspects_cleared), 0);
            // Now an ordinary ejected server: backoff, and its later probes
            // count nothing more.
            assert_eq!(h.try_claim_probe(t0 + Duration::from_millis(99)), None);
            let t1 = t0 + Duration::from_millis(100);
            let probe = h.try_claim_probe(t1).expect("due after the backoff");
            assert!(!probe.of_suspect());
            h.probe_failed(t1, &p, probe, Ejection::Timeout, 0.5);
            assert_eq!(n(&h.ejections), 1);
            let t2 = t1 + Duration::from_secs(1);
            let probe = h.try_claim_probe(t2).expect("due");
            assert_eq!(h.begin_rejoin(t2, probe), Rejoin::Drain);
            drain(&h, probe, t2);
            assert!(h.is_up());
            assert_eq!((n(&h.ejections), n(&h.suspects_cleared)), (1, 0));
        }
    }

    #[test]
    fn a_missed_write_makes_an_up_server_suspect_and_logs_the_key() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        let seen = h.observe();
        assert_eq!(
            h.record_missed_write(t0, &policy(), seen, b"k"),
            Verdict::Suspected
        );
        assert_eq!(h.state(), State::Suspect);
        assert!(h.is_dirty());
        assert_eq!(h.last_suspicion(), Ejection::MissedWrite);
        assert_eq!(
            h.record_missed_write(t0, &policy(), seen, b"k"),
            Verdict::Stays
        );
        assert_eq!(n(&h.ejections), 0);
        assert_eq!(n(&h.suspected_for[Ejection::MissedWrite as usize]), 1);
        assert_eq!(n(&h.keys_logged), 1, "deduplicated");
        assert_eq!(h.missed_keys(), (1, false));
    }

    #[test]
    fn a_suspect_drains_its_missed_keys_before_it_serves_again() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"a");
        // A write decided while it is suspect does not reach it: logged.
        let seen_while_suspect = h.observe();
        assert!(!seen_while_suspect.takes_writes());
        h.record_missed_write(t0, &policy(), seen_while_suspect, b"b");
        let probe = h.try_claim_probe(t0).expect("due at once");
        assert_eq!(h.begin_rejoin(t0, probe), Rejoin::Drain);
        let DrainStep::Delete(mut keys) = h.drain_step(t0, &policy(), probe, GRACE, 10, 0) else {
            panic!("keys expected")
        };
        h.drained(keys.len() as u64);
        keys.sort();
        assert_eq!(keys, vec![b"a"[..].into(), b"b"[..].into()]);
        assert!(!h.observe().is_up(), "no read before the grace is over");
        // Acknowledged during the drain, decided while suspect: deleted too.
        h.record_missed_write(t0, &policy(), seen_while_suspect, b"c");
        let rest = drain(&h, probe, t0);
        assert_eq!(rest, vec![b"c"[..].into()]);
        assert!(h.is_up());
        assert_eq!(h.last_rejoin(), RejoinPath::Drain);
        assert_eq!(n(&h.drains), 1);
        assert_eq!(n(&h.suspects_cleared), 1);
        assert_eq!(n(&h.ejections), 0);
        // Decided while suspect, acknowledged after the rejoin: the key was
        // not drained, so the server stops serving again at once.
        assert_eq!(
            h.record_missed_write(t0, &policy(), seen_while_suspect, b"late"),
            Verdict::Suspected
        );
        assert!(!h.observe().is_up());
        assert_eq!(n(&h.suspects), 2);
    }

    #[test]
    fn a_rejoin_deletes_exactly_the_logged_keys_then_waits_out_the_grace() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        refused(&h, t0);
        for k in [&b"a"[..], b"b", b"c"] {
            assert_eq!(
                h.record_missed_write(t0, &policy(), h.observe(), k),
                Verdict::Stays
            );
        }
        assert_eq!(h.try_claim_probe(t0 + Duration::from_millis(99)), None);
        let t1 = t0 + Duration::from_millis(100);
        let probe = h.try_claim_probe(t1).expect("due");
        assert!(!probe.of_suspect());
        assert_eq!(h.try_claim_probe(t1), None, "one prober only");
        assert_eq!(h.begin_rejoin(t1, probe), Rejoin::Drain);
        assert_eq!(h.state(), State::Draining);
        assert!(h.observe().takes_writes() && !h.observe().is_up());
        let mut keys = drain(&h, probe, t1);
        keys.sort();
        assert_eq!(
            keys,
            vec![b"a"[..].into(), b"b"[..].into(), b"c"[..].into()]
        );
        assert_eq!(h.state(), State::Up);
        assert_eq!(h.last_rejoin(), RejoinPath::Drain);
        assert_eq!(n(&h.drains), 1);
        assert_eq!(n(&h.drained_keys), 3);
        assert_eq!(n(&h.flushes), 0);
        assert_eq!(n(&h.suspects_cleared), 0, "it was ejected, not suspect");
        assert!(!h.is_dirty());
    }

    #[test]
    fn the_drain_does_not_end_before_the_grace() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        refused(&h, t0);
        let t1 = t0 + Duration::from_secs(1);
        let probe = h.try_claim_probe(t1).expect("due");
        assert_eq!(h.begin_rejoin(t1, probe), Rejoin::Drain);
        let step = |t| h.drain_step(t, &policy(), probe, GRACE, 10, 0);
        assert_eq!(step(t1), DrainStep::Wait);
        assert_eq!(step(t1 + Duration::from_millis(49)), DrainStep::Wait);
        assert_eq!(step(t1 + GRACE), DrainStep::Rejoined);
        assert_eq!(h.last_rejoin(), RejoinPath::Clean);
        assert_eq!(n(&h.drains), 0);
    }

    #[test]
    fn a_write_missed_during_the_drain_extends_it() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        refused(&h, t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"a");
        let seen_while_down = h.observe();
        let t1 = t0 + Duration::from_secs(1);
        let probe = h.try_claim_probe(t1).expect("due");
        assert_eq!(h.begin_rejoin(t1, probe), Rejoin::Drain);
        let seen_while_draining = h.observe();
        let DrainStep::Delete(first) = h.drain_step(t1, &policy(), probe, GRACE, 10, 0) else {
            panic!("keys expected")
        };
        assert_eq!(first, vec![b"a"[..].into()]);
        // Decided while out, acknowledged now; and a write that failed on it.
        for (seen, k) in [(seen_while_down, &b"b"[..]), (seen_while_draining, b"c")] {
            assert_eq!(
                h.record_missed_write(t1, &policy(), seen, k),
                Verdict::Stays,
                "no suspicion while draining"
            );
        }
        let mut rest = drain(&h, probe, t1);
        rest.sort();
        assert_eq!(rest, vec![b"b"[..].into(), b"c"[..].into()]);
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn a_write_missed_after_the_rejoin_takes_the_server_out_again() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        refused(&h, t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"a");
        let seen_while_down = h.observe();
        let t1 = t0 + Duration::from_secs(1);
        let probe = h.try_claim_probe(t1).expect("due");
        h.begin_rejoin(t1, probe);
        drain(&h, probe, t1);
        assert!(h.is_up());
        assert_eq!(
            h.record_missed_write(t1, &policy(), seen_while_down, b"late"),
            Verdict::Suspected,
            "the late key was not drained: the server must not serve it"
        );
        assert!(!h.observe().is_up());
        assert_eq!(h.missed_keys(), (1, false));
    }

    #[test]
    fn overflow_falls_back_to_a_flush_that_covers_earlier_writes() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        let tiny = HealthPolicy {
            missed_keys_limit: 60,
            ..policy()
        };
        h.record_missed_write(t0, &tiny, h.observe(), b"k1");
        h.record_missed_write(t0, &tiny, h.observe(), b"k2");
        assert_eq!(h.missed_keys(), (0, true));
        let seen_while_suspect = h.observe();
        let t1 = t0 + Duration::from_secs(1);
        let probe = h.try_claim_probe(t1).expect("due");
        assert_eq!(h.begin_rejoin(t1, probe), Rejoin::Flush);
        assert_eq!(h.state(), State::Probing);
        let seen_while_flushing = h.observe();
        assert!(!seen_while_flushing.takes_writes());
        assert!(h.probe_succeeded(t1, probe));
        assert_eq!(h.last_rejoin(), RejoinPath::Flush);
        assert_eq!(n(&h.flushes), 1);
        assert_eq!((n(&h.suspects_cleared), n(&h.ejections)), (1, 0));
        // Both writes were decided before the flush but acknowledged after it.
        for seen in [seen_while_suspect, seen_while_flushing] {
            assert_eq!(
                h.record_missed_write(t1, &tiny, seen, b"k3"),
                Verdict::Stays
            );
        }
        assert!(h.is_up());
        assert!(!h.is_dirty());
    }

    #[test]
    fn a_missed_flush_all_means_flush() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"");
        let probe = h.try_claim_probe(t0).expect("due");
        assert_eq!(h.begin_rejoin(t0, probe), Rejoin::Flush);
    }

    #[test]
    fn overflow_during_a_drain_sends_the_server_down_for_a_flush() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        let t1 = t0 + Duration::from_secs(1);
        refused(&h, t0);
        let probe = h.try_claim_probe(t1).expect("due");
        h.begin_rejoin(t1, probe);
        h.record_missed_write(t1, &policy(), h.observe(), b"");
        assert_eq!(
            h.drain_step(t1, &policy(), probe, GRACE, 10, 0),
            DrainStep::Aborted
        );
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.try_claim_probe(t1), None, "after the retry interval");
        let t2 = t1 + Duration::from_secs(1);
        let probe = h.try_claim_probe(t2).expect("due");
        assert_eq!(h.begin_rejoin(t2, probe), Rejoin::Flush);
    }

    #[test]
    fn overflow_during_a_suspects_drain_flushes_it_at_once_without_an_ejection() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"a");
        let probe = h.try_claim_probe(t0).expect("due");
        h.begin_rejoin(t0, probe);
        h.record_missed_write(t0, &policy(), h.observe(), b"");
        assert_eq!(
            h.drain_step(t0, &policy(), probe, GRACE, 10, 0),
            DrainStep::Aborted
        );
        assert_eq!(h.state(), State::Suspect);
        let probe = h.try_claim_probe(t0).expect("due at once");
        assert!(probe.of_suspect());
        assert_eq!(h.begin_rejoin(t0, probe), Rejoin::Flush);
        assert!(h.probe_succeeded(t0, probe));
        assert_eq!((n(&h.ejections), n(&h.suspects_cleared)), (0, 1));
    }

    #[test]
    fn a_failed_drain_keeps_its_keys_and_backs_off() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"a");
        let t1 = t0 + Duration::from_millis(100);
        let probe = h.try_claim_probe(t1).expect("due");
        h.begin_rejoin(t1, probe);
        let DrainStep::Delete(keys) = h.drain_step(t1, &policy(), probe, GRACE, 10, 0) else {
            panic!("keys expected")
        };
        h.drain_failed(t1, &policy(), probe, keys, 0.5);
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.last_ejection(), Ejection::DrainFailed);
        assert_eq!(n(&h.ejected_for[Ejection::DrainFailed as usize]), 1);
        assert_eq!(n(&h.ejections), 1, "a suspect whose drain fails is ejected");
        assert_eq!(h.missed_keys(), (1, false));
        assert_eq!(h.try_claim_probe(t1 + Duration::from_millis(99)), None);
        let t2 = t1 + Duration::from_millis(100);
        let probe = h.try_claim_probe(t2).expect("due");
        h.begin_rejoin(t2, probe);
        let DrainStep::Delete(keys) = h.drain_step(t2, &policy(), probe, GRACE, 10, 0) else {
            panic!("keys expected")
        };
        h.drain_failed(t2, &policy(), probe, keys, 0.5);
        assert_eq!(n(&h.ejections), 1, "already out: not counted again");
    }

    #[test]
    fn failed_flush_keeps_the_server_dirty_and_backs_off() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"");
        let t1 = t0 + Duration::from_millis(100);
        let probe = h.try_claim_probe(t1).expect("due");
        assert_eq!(h.begin_rejoin(t1, probe), Rejoin::Flush);
        h.probe_failed(t1, &policy(), probe, Ejection::Timeout, 0.5);
        assert_eq!(h.state(), State::Down);
        assert!(h.is_dirty());
        assert_eq!(n(&h.ejected_for[Ejection::Timeout as usize]), 1);
        // attempt 0 at jitter 0.5 -> exactly the retry interval
        assert_eq!(h.try_claim_probe(t1 + Duration::from_millis(99)), None);
        let probe = h
            .try_claim_probe(t1 + Duration::from_millis(100))
            .expect("due");
        assert_eq!(h.begin_rejoin(t1, probe), Rejoin::Flush);
    }

    #[test]
    fn a_probe_that_never_ran_leaves_a_suspect_suspect() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_failure(t0, &policy(), Ejection::Timeout);
        h.record_failure(t0, &policy(), Ejection::Timeout);
        let probe = h.try_claim_probe(t0).expect("due");
        h.probe_not_run(t0, &policy(), probe, 0.5);
        assert_eq!(h.state(), State::Suspect);
        assert_eq!(n(&h.ejections), 0);
        assert!(h.try_claim_probe(t0).is_some());
    }

    #[test]
    fn counters_copy_every_field() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.record_missed_write(t0, &policy(), h.observe(), b"a");
        let probe = h.try_claim_probe(t0).expect("due");
        h.probe_failed(t0, &policy(), probe, Ejection::Connect, 0.5);
        h.failovers.fetch_add(3, Ordering::Relaxed);
        h.fence();
        let c = h.counters();
        assert_eq!(c.failovers, 3);
        assert_eq!(c.aborts, 1);
        assert_eq!(c.keys_logged, 1);
        assert_eq!((c.suspects, c.suspects_cleared, c.ejections), (1, 0, 1));
        assert_eq!(c.suspected_for[Ejection::MissedWrite as usize], 1);
        assert_eq!(c.ejected_for[Ejection::Connect as usize], 1);
        assert_eq!(c.ejected_for.iter().sum::<u64>(), c.ejections);
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
