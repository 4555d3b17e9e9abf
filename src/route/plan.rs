//! Multi-get fan-out: group a request's keys by owning server, keeping each
//! group in the client's key order, with reusable buffers.
//!
//! A plan is meant to live in the connection and be rebuilt for every
//! multi-get: once its vectors have grown to the largest request seen, a
//! rebuild does not allocate. Imports nothing outside `route`.

use std::ops::Range;

use super::Ring;

/// Marks a server that has no slot in the plan being built.
const NO_SLOT: u32 = u32::MAX;

/// Keys of one multi-get grouped by server. Reused across requests.
#[derive(Clone, Debug, Default)]
pub struct FanoutPlan {
    /// `owner[i]` is the server of key `i`.
    pub owner: Vec<u32>,
    /// Distinct servers touched, in order of first appearance.
    pub servers: Vec<u32>,
    /// Key indices grouped by slot: slot `j`'s keys are
    /// `grouped[start[j]..start[j + 1]]`, in client order.
    grouped: Vec<u32>,
    /// Group boundaries into `grouped`, `servers.len() + 1` entries.
    start: Vec<u32>,
    /// Server index -> slot in `servers`, `NO_SLOT` between builds.
    slot_of: Vec<u32>,
}

impl FanoutPlan {
    /// Plan `keys` (ranges into `buf`) over `ring`, replacing the previous plan.
    ///
    /// A range outside `buf` (a caller bug, never client input) is hashed as
    /// the empty key rather than panicking.
    pub fn build(&mut self, ring: &Ring, buf: &[u8], keys: &[Range<usize>]) {
        self.owner.clear();
        self.servers.clear();
        self.start.clear();
        // `server_for` answers 0 on an empty ring, so keep at least one entry.
        let width = ring.len().max(1);
        if self.slot_of.len() < width {
            self.slot_of.resize(width, NO_SLOT);
        }

        // Pass 1: owners, first-appearance order, and group sizes (counted
        // in `start[slot + 1]`).
        self.start.push(0);
        for r in keys {
            debug_assert!(
                buf.get(r.clone()).is_some(),
                "key range {r:?} outside buffer"
            );
            let key = buf.get(r.clone()).unwrap_or_default();
            let server = ring.server_for(key).min(width - 1) as u32;
            self.owner.push(server);
            let slot = &mut self.slot_of[server as usize];
            if *slot == NO_SLOT {
                *slot = self.servers.len() as u32;
                self.servers.push(server);
                self.start.push(0);
            }
            self.start[*slot as usize + 1] += 1;
        }
        // Prefix sums: start[j] = first position of slot j.
        for j in 1..self.start.len() {
            self.start[j] += self.start[j - 1];
        }

        // Pass 2: place key indices. `slot_of` doubles as the write cursor
        // (positions fit in u32 like the key indices themselves), then it is
        // reset for exactly the servers touched, so the next build is
        // O(keys) however large the ring.
        for (j, &server) in self.servers.iter().enumerate() {
            self.slot_of[server as usize] = self.start[j];
        }
        self.grouped.clear();
        self.grouped.resize(keys.len(), 0);
        for (i, &server) in self.owner.iter().enumerate() {
            let cursor = &mut self.slot_of[server as usize];
            self.grouped[*cursor as usize] = i as u32;
            *cursor += 1;
        }
        for &server in &self.servers {
            self.slot_of[server as usize] = NO_SLOT;
        }
    }

    /// Number of keys in the plan.
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    /// True when the plan has no keys.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    /// Indices of the keys sent to `servers[slot]`, in client order (empty
    /// when `slot` is out of range).
    pub fn group(&self, slot: usize) -> &[u32] {
        match (self.start.get(slot), self.start.get(slot + 1)) {
            (Some(&a), Some(&b)) => self.grouped.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// `(server, key indices)` for every server touched, in order of first
    /// appearance.
    pub fn groups(&self) -> impl Iterator<Item = (u32, &[u32])> + '_ {
        self.servers
            .iter()
            .enumerate()
            .map(move |(slot, &server)| (server, self.group(slot)))
    }

    /// Indices of the keys owned by `server`, in client order.
    pub fn keys_of(&self, server: u32) -> impl Iterator<Item = usize> + '_ {
        let slot = self.servers.iter().position(|&s| s == server);
        let group = slot.map_or(&[][..], |slot| self.group(slot));
        group.iter().map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Distribution, Member};
    use proptest::prelude::*;

    fn ring(dist: Distribution, n: usize) -> Ring {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("127.0.0.1:{}", 10001 + i),
                weight: 1,
            })
            .collect();
        Ring::new(dist, &members)
    }

    /// Split `line` on spaces into (buffer, ranges), as the parser would.
    fn split(line: &str) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut ranges = Vec::new();
        let mut at = 0;
        for word in line.split(' ') {
            ranges.push(at..at + word.len());
            at += word.len() + 1;
        }
        (line.as_bytes().to_vec(), ranges)
    }

    #[test]
    fn groups_keep_client_order() {
        let r = ring(Distribution::Modula, 3);
        // magent_hash % 3 (see modula's vectors): "hello" -> 2, "a" -> 1,
        // "é" -> 0, "ab" -> 2.
        let (buf, keys) = split("hello a é ab a");
        let mut plan = FanoutPlan::default();
        plan.build(&r, &buf, &keys);
        assert_eq!(plan.owner, vec![2, 1, 0, 2, 1]);
        assert_eq!(plan.servers, vec![2, 1, 0]);
        assert_eq!(plan.group(0), &[0, 3]);
        assert_eq!(plan.group(1), &[1, 4]);
        assert_eq!(plan.group(2), &[2]);
        assert_eq!(plan.group(3), &[] as &[u32]);
        assert_eq!(plan.keys_of(1).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(plan.keys_of(7).count(), 0);
        let groups: Vec<_> = plan.groups().collect();
        assert_eq!(
            groups,
            vec![(2, &[0, 3][..]), (1, &[1, 4][..]), (0, &[2][..])]
        );
    }

    #[test]
    fn rebuild_replaces_and_reuses() {
        let r = ring(Distribution::Ketama, 4);
        let mut plan = FanoutPlan::default();
        let (buf, keys) = split("k1 k2 k3 k4 k5 k6 k7 k8 k9 k10 k11 k12");
        plan.build(&r, &buf, &keys);
        let caps = (
            plan.owner.capacity(),
            plan.servers.capacity(),
            plan.grouped.capacity(),
            plan.start.capacity(),
            plan.slot_of.capacity(),
        );
        let ptrs = (plan.owner.as_ptr(), plan.grouped.as_ptr());
        let (buf2, keys2) = split("k3 k1");
        plan.build(&r, &buf2, &keys2);
        assert_eq!(plan.len(), 2);
        assert_eq!(
            plan.owner,
            vec![r.server_for(b"k3") as u32, r.server_for(b"k1") as u32]
        );
        // Warm rebuilds of a smaller or equal request reuse every buffer.
        plan.build(&r, &buf, &keys);
        assert_eq!(
            caps,
            (
                plan.owner.capacity(),
                plan.servers.capacity(),
                plan.grouped.capacity(),
                plan.start.capacity(),
                plan.slot_of.capacity(),
            )
        );
        assert_eq!(ptrs, (plan.owner.as_ptr(), plan.grouped.as_ptr()));
        plan.build(&r, &buf, &[]);
        assert!(plan.is_empty());
        assert!(plan.servers.is_empty());
        assert_eq!(plan.groups().count(), 0);
    }

    #[test]
    fn empty_ring_does_not_panic() {
        let r = Ring::new(Distribution::Ketama, &[]);
        let mut plan = FanoutPlan::default();
        let (buf, keys) = split("a b");
        plan.build(&r, &buf, &keys);
        assert_eq!(plan.servers, vec![0]);
        assert_eq!(plan.group(0), &[0, 1]);
    }

    proptest! {
        #[test]
        fn plan_is_a_partition_in_client_order(
            keys in proptest::collection::vec("[a-z0-9]{1,12}", 0..100),
            n in 1usize..9,
            ketama in any::<bool>(),
        ) {
            let dist = if ketama { Distribution::Ketama } else { Distribution::Modula };
            let r = ring(dist, n);
            let (buf, ranges) = split(&keys.join(" "));
            let ranges = if keys.is_empty() { Vec::new() } else { ranges };
            let mut plan = FanoutPlan::default();
            // Build twice over different inputs: state must not leak.
            plan.build(&r, b"zz", std::slice::from_ref(&(0..2)));
            plan.build(&r, &buf, &ranges);
            prop_assert_eq!(plan.len(), keys.len());
            let mut seen = vec![false; keys.len()];
            for (slot, &server) in plan.servers.iter().enumerate() {
                let g = plan.group(slot);
                prop_assert!(!g.is_empty());
                prop_assert!(g.windows(2).all(|w| w[0] < w[1]));
                for &i in g {
                    let i = i as usize;
                    prop_assert!(!seen[i]);
                    seen[i] = true;
                    prop_assert_eq!(plan.owner[i], server);
                    prop_assert_eq!(r.server_for(keys[i].as_bytes()) as u32, server);
                }
            }
            prop_assert!(seen.iter().all(|&s| s));
            // First-appearance order.
            let mut firsts = Vec::new();
            for &o in &plan.owner {
                if !firsts.contains(&o) {
                    firsts.push(o);
                }
            }
            prop_assert_eq!(&firsts, &plan.servers);
        }
    }
}
