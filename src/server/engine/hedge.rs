//! Hedged reads in the shell: the machines ask (see
//! [`crate::proxy::machine::Hedge`]); this core keeps the servers' hedge
//! delays, its budget and the timers, and counts.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::metrics::HedgeResult;
use crate::proxy::machine::{CallError, CallId, Hedge, Reply};
use crate::stats::Counter;
use crate::upstream::hedge::{Budget, Delays};
use crate::upstream::ServerId;

use super::super::driver::Driver;
use super::{Core, Ctx};

/// A timer: when, the slot's life, the slot, the call it answers.
type Timer = Reverse<(Instant, u64, usize, CallId)>;

/// One core's hedging state.
pub(super) struct Hedges {
    delays: Delays,
    budget: Budget,
    /// The budget's share, to notice a reload that changes it.
    share: f64,
    timers: BinaryHeap<Timer>,
}

impl Hedges {
    pub(super) fn new(share: f64) -> Hedges {
        Hedges {
            delays: Delays::default(),
            budget: Budget::new(share),
            share,
            timers: BinaryHeap::with_capacity(256),
        }
    }

    /// A reply of `server` took `took`.
    pub(super) fn observe(&mut self, server: ServerId, took: Duration, now: Instant) {
        self.delays.observe(server.index(), took, now);
    }

    /// A reload installed `servers` servers with budget `share`.
    pub(super) fn reconfigure(&mut self, servers: usize, share: f64) {
        self.delays.resize(servers);
        if share != self.share {
            self.budget = Budget::new(share);
            self.share = share;
        }
    }
}

impl Core {
    /// Carry out a machine's hedge step for request `r`.
    pub(super) fn hedge<D: Driver>(&mut self, d: &mut D, cx: &Ctx, r: usize, h: Hedge) {
        match h {
            Hedge::Timer { call, primary } => {
                let Some(seq) = self.reqs.get(r).map(|s| s.seq) else {
                    return;
                };
                self.hedges.budget.read(cx.now);
                // At most half the request timeout: a hedge is worth
                // sending well before the primary is given up.
                let cap = cx.topo.settings.request_timeout / 2;
                let stalled = self
                    .pools
                    .get(primary.index())
                    .into_iter()
                    .flatten()
                    .filter_map(|&ci| self.ups.get(ci))
                    .map(|u| u.stalled(cx.now))
                    .min()
                    .unwrap_or_default();
                let hx = &mut self.hedges;
                let at = cx.now + hx.delays.due_in(primary.index(), cx.now, cap, stalled);
                hx.timers.push(Reverse((at, seq, r, call)));
            }
            Hedge::Send {
                call,
                backup,
                primary,
                parts,
                expect,
            } => {
                let metrics = cx.topo.servers.get(primary.index()).map(|s| &s.metrics);
                if self.hedges.budget.try_hedge(cx.now) {
                    cx.stats().incr(Counter::HedgesSent);
                    if let Some(m) = metrics {
                        m.hedge(cx.id, HedgeResult::Sent);
                    }
                    self.send_call(d, cx, r, call, backup, parts, expect);
                } else {
                    cx.stats().incr(Counter::HedgesSkipped);
                    if let Some(m) = metrics {
                        m.hedge(cx.id, HedgeResult::Skipped);
                    }
                    if let Some(slot) = self.reqs.get_mut(r) {
                        slot.outstanding += 1;
                        let e = CallError::no_call(backup, expect);
                        self.outcomes.push_back((r, call, Err(e)));
                    }
                }
            }
            Hedge::Won { primary } => {
                cx.stats().incr(Counter::HedgesWon);
                if let Some(s) = cx.topo.servers.get(primary.index()) {
                    s.metrics.hedge(cx.id, HedgeResult::Won);
                }
            }
        }
    }

    /// Whether the request in slot `r` armed at `seq` still waits for its
    /// timers (a finished machine does not: they are dropped unfired).
    fn waits(&self, r: usize, seq: u64) -> bool {
        self.reqs
            .get(r)
            .is_some_and(|s| s.seq == seq && !s.machine.is_done())
    }

    /// When the first timer a request still waits for is due. Timers of
    /// finished requests are dropped on the way, so that they never wake the
    /// loop: most reads are answered well before their hedge delay.
    pub(super) fn next_hedge_due(&mut self) -> Option<Instant> {
        // Bounded by the timers armed.
        while let Some(&Reverse((at, seq, r, _))) = self.hedges.timers.peek() {
            if self.waits(r, seq) {
                return Some(at);
            }
            self.hedges.timers.pop();
        }
        None
    }

    /// Hand every due timer to its request, if that request still waits.
    pub(super) fn fire_hedge_timers(&mut self, cx: &Ctx) {
        // Bounded by the timers armed.
        while let Some(&Reverse((at, seq, r, call))) = self.hedges.timers.peek() {
            if at > cx.now {
                return;
            }
            self.hedges.timers.pop();
            if self.waits(r, seq) {
                if let Some(slot) = self.reqs.get_mut(r) {
                    // Counted like a call, so the slot lives until the
                    // outcome is handed over.
                    slot.outstanding += 1;
                    self.outcomes.push_back((r, call, Ok(Reply::grant())));
                }
            }
        }
    }
}
