//! What a migration window remembers: the placements that came before the
//! live one, so that a key that misses on its new owner can be read from
//! where it lived, and a write can delete the copies it leaves there.
//!
//! Each earlier placement is a [`Router`] whose server numbers are
//! translated to the live topology's (a server that left is still numbered
//! there, as a leaving server, while the window is open). Lookups neither
//! allocate nor panic.

use super::Router;

/// How many earlier placements a window holds (reloads that move keys
/// while a window is open chain their placements up to this many).
pub const DEPTH: usize = 3;

/// A live number that names no server: an earlier server the live
/// topology could not keep. [`History::owners`] never names it.
pub const GONE: u32 = u32::MAX;

/// Most servers [`History::owners`] can name: a primary and a backup per
/// placement.
const MAX_OWNERS: usize = 2 * DEPTH;

/// The servers that held a key under earlier placements, newest first, each
/// once, none of them one of its live replicas. Copy, no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    ids: [u32; MAX_OWNERS],
    len: u8,
}

impl Owners {
    /// These servers, in order, each once (at most a window's worth).
    pub fn from_ids(ids: &[u32]) -> Owners {
        let mut o = Owners::default();
        for &id in ids {
            o.push(id);
        }
        o
    }

    /// The servers, newest placement first (a placement's primary before
    /// its backup).
    pub fn as_slice(&self) -> &[u32] {
        self.ids.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// No earlier placement put the key anywhere else.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, id: u32) {
        if self.as_slice().contains(&id) {
            return;
        }
        if let Some(slot) = self.ids.get_mut(usize::from(self.len)) {
            *slot = id;
            self.len += 1;
        }
    }
}

/// One earlier placement and its servers' live numbers.
#[derive(Clone, Debug)]
struct Earlier {
    router: Router,
    /// `ids[n]`: the live number of the earlier router's server `n`.
    ids: Vec<u32>,
}

impl Earlier {
    fn live(&self, n: u32) -> Option<u32> {
        self.ids.get(n as usize).copied().filter(|&id| id != GONE)
    }
}

/// The earlier placements of an open migration window, newest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    earlier: Vec<Earlier>,
}

impl History {
    /// No earlier placement: no window.
    pub fn is_empty(&self) -> bool {
        self.earlier.is_empty()
    }

    /// How many earlier placements are held.
    pub fn len(&self) -> usize {
        self.earlier.len()
    }

    /// `router` placed keys just before the live placement; `ids[n]` is the
    /// live number of its server `n`. It becomes the newest; when that
    /// makes more than [`DEPTH`], the oldest is dropped and true is
    /// returned (the caller must then treat the window as broken: copies
    /// placed by the dropped placement are no longer tracked).
    pub fn push_newest(&mut self, router: Router, ids: Vec<u32>) -> bool {
        self.earlier.insert(0, Earlier { router, ids });
        if self.earlier.len() > DEPTH {
            self.earlier.truncate(DEPTH);
            return true;
        }
        false
    }

    /// The live topology numbered its servers anew: `renumber(old)` is the
    /// new number of what was live number `old`.
    pub fn renumber(&mut self, renumber: impl Fn(u32) -> u32) {
        for e in &mut self.earlier {
            for id in &mut e.ids {
                *id = renumber(*id);
            }
        }
    }

    /// Every live number an earlier placement names (those servers must
    /// stay reachable while the window is open), with repeats.
    pub fn servers(&self) -> impl Iterator<Item = u32> + '_ {
        self.earlier.iter().flat_map(|e| e.ids.iter().copied())
    }

    /// Where `key` (as written on the wire; `base64`: a meta `b` key) lived
    /// under the earlier placements, in the pool named `pool` there, leaving
    /// out its live `primary` and `backup`. A pool an earlier placement did
    /// not have contributes nothing.
    pub fn owners(
        &self,
        pool: &str,
        key: &[u8],
        base64: bool,
        primary: u32,
        backup: Option<u32>,
    ) -> Owners {
        let mut out = Owners::default();
        for e in &self.earlier {
            let Some(p) = e.router.pool_index(pool) else {
                continue;
            };
            let r = e.router.route_key_in(Some(p), key, base64);
            for n in std::iter::once(r.primary).chain(r.backup) {
                match e.live(n) {
                    Some(id) if id != primary && Some(id) != backup => out.push(id),
                    _ => {}
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Distribution, Member};

    fn members(names: &[&str]) -> Vec<Member> {
        names.iter().map(|n| Member::new(n, 1)).collect()
    }

    fn router(names: &[&str]) -> Router {
        Router::single(Distribution::Ketama, &members(names), &[])
    }

    #[test]
    fn a_key_that_moved_names_its_old_owner_and_one_that_stayed_none() {
        let old = ["a:1", "b:1", "c:1"];
        let new = ["a:1", "b:1", "c:1", "d:1"];
        let (before, now) = (router(&old), router(&new));
        let mut h = History::default();
        // The earlier servers keep their numbers (d is appended).
        assert!(!h.push_newest(before.clone(), vec![0, 1, 2]));
        let (mut moved, mut stayed) = (0, 0);
        for i in 0..2000 {
            let key = format!("key:{i}");
            let live = now.route(key.as_bytes());
            let o = h.owners("default", key.as_bytes(), false, live.primary, None);
            let was = before.route(key.as_bytes()).primary;
            if was == live.primary {
                assert!(o.is_empty(), "{key} did not move");
                stayed += 1;
            } else {
                assert_eq!(o.as_slice(), &[was], "{key} moved from {was}");
                assert_eq!(live.primary, 3, "ketama moves keys only to the new server");
                moved += 1;
            }
        }
        // About a quarter of the keys move to the fourth server.
        assert!((300..700).contains(&moved), "moved {moved}");
        assert!(stayed > 1000);
    }

    #[test]
    fn chained_placements_are_asked_newest_first_each_server_once() {
        let mut h = History::default();
        // Two earlier one-server placements: x (live 5), then y (live 7).
        h.push_newest(router(&["x:1"]), vec![5]);
        h.push_newest(router(&["y:1"]), vec![7]);
        let o = h.owners("default", b"k", false, 0, None);
        assert_eq!(o.as_slice(), &[7, 5]);
        // The live primary is left out; a repeat is named once.
        assert_eq!(h.owners("default", b"k", false, 7, None).as_slice(), &[5]);
        h.push_newest(router(&["x:1"]), vec![5]);
        assert_eq!(
            h.owners("default", b"k", false, 0, None).as_slice(),
            &[5, 7]
        );
        // A server that could not be kept is never named.
        let mut gone = History::default();
        gone.push_newest(router(&["x:1"]), vec![GONE]);
        assert!(gone.owners("default", b"k", false, 0, None).is_empty());
        // A fourth placement drops the oldest.
        assert!(h.push_newest(router(&["z:1"]), vec![9]));
        assert_eq!(h.len(), DEPTH);
        assert_eq!(
            h.owners("default", b"k", false, 0, None).as_slice(),
            &[9, 5, 7]
        );
        // Renumbered with the live topology.
        h.renumber(|n| n + 100);
        assert_eq!(
            h.owners("default", b"k", false, 0, None).as_slice(),
            &[109, 105, 107]
        );
        // A pool the earlier placements did not have: nothing.
        assert!(h.owners("other", b"k", false, 0, None).is_empty());
    }

    #[test]
    fn backups_of_earlier_placements_are_owners_too() {
        let before = Router::single(Distribution::Modula, &members(&["p:1"]), &members(&["b:1"]));
        let mut h = History::default();
        h.push_newest(before, vec![3, 4]);
        assert_eq!(
            h.owners("default", b"k", false, 0, Some(1)).as_slice(),
            &[3, 4]
        );
        // The earlier backup is the live backup: only the primary is named.
        assert_eq!(
            h.owners("default", b"k", false, 0, Some(4)).as_slice(),
            &[3]
        );
    }
}
