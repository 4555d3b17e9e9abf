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

    /// When the first timer is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, ..))| *at)
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

    /// Hand every due timer to its request, if that request still waits;
    /// returns when the next one is due.
    pub(super) fn fire_hedge_timers(&mut self, cx: &Ctx) -> Option<Instant> {
        // Bounded by the timers armed.
        while let Some(&Reverse((at, seq, r, call))) = self.hedges.timers.peek() {
            if at > cx.now {
                return Some(at);
            }
            self.hedges.timers.pop();
            if let Some(slot) = self.reqs.get_mut(r) {
                if slot.seq == seq && !slot.machine.is_done() {
                    // Counted like a call, so the slot lives until the
                    // outcome is handed over.
                    slot.outstanding += 1;
                    self.outcomes.push_back((r, call, Ok(Reply::grant())));
                }
            }
        }
        None
    }
}
