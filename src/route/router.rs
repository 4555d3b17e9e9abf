//! The router: every placement decision in one pure value.
//!
//! A [`Router`] is built from the configuration's pools (today the one
//! `default` pool: the `-s` ring and the `-b` ring) and answers, for a key,
//! which pool, which primary and which backup own it ([`Router::route`]).
//! Servers are numbered across the whole topology, primaries first, then
//! backups, as the engine numbers them. Nothing else hashes keys: the
//! engine, the control plane and `stats route` all ask the router, and a
//! reload swaps it whole with the topology.
//!
//! A base64 key (meta `b` flag) is placed by the bytes it stands for
//! ([`Router::route_key`]), where a text command naming the same key lands.
//! Lookups neither allocate nor panic.

use super::{Distribution, KeyHash, Member, Ring};

/// Longest key memcached accepts (the decode buffer of a base64 key).
const MAX_KEY: usize = 250;

/// One pool: its name, its hash tag and its two rings.
#[derive(Clone, Debug)]
struct Pool {
    name: String,
    /// nutcracker's `hash_tag`: only the part of a key between these two
    /// bytes (when both are there and it is not empty) is hashed.
    hash_tag: Option<[u8; 2]>,
    primary: Ring,
    backup: Option<Ring>,
    /// Topology-wide number of the pool's first primary and first backup.
    first_primary: u32,
    first_backup: u32,
}

/// Where a key goes: its pool and the topology-wide numbers of its
/// primary and (when the pool has backups) its backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Index of the pool ([`Router::pool_name`]).
    pub pool: usize,
    /// The primary's number.
    pub primary: u32,
    /// The backup's number, if the pool has backups.
    pub backup: Option<u32>,
}

/// All placement of one configuration.
#[derive(Clone, Debug)]
pub struct Router {
    pools: Vec<Pool>,
    /// Prefix routes, longest prefix first: (prefix, pool index).
    routes: Vec<(Vec<u8>, usize)>,
}

/// One pool to build a router from.
#[derive(Clone, Copy, Debug)]
pub struct PoolSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// How it places keys.
    pub how: Placement,
    /// Its primaries.
    pub primaries: &'a [Member],
    /// Its backups (may be empty).
    pub backups: &'a [Member],
}

/// How one pool places its keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct Placement {
    /// Modula or ketama.
    pub distribution: Distribution,
    /// nutcracker's `hash:`; None: the distribution's own (magent's DJB2
    /// for modula, md5 for ketama).
    pub hash: Option<KeyHash>,
    /// nutcracker's `hash_tag:` (e.g. `{}`).
    pub hash_tag: Option<[u8; 2]>,
}

impl Router {
    /// The single `default` pool: `primaries` numbered from 0, then
    /// `backups` (an empty list: no backups).
    pub fn single(dist: Distribution, primaries: &[Member], backups: &[Member]) -> Router {
        let how = Placement {
            distribution: dist,
            ..Placement::default()
        };
        Router::with_placement(how, primaries, backups)
    }

    /// The single `default` pool, placed `how`.
    pub fn with_placement(how: Placement, primaries: &[Member], backups: &[Member]) -> Router {
        let spec = PoolSpec {
            name: "default",
            how,
            primaries,
            backups,
        };
        Router::new(&[spec], &[])
    }

    /// Pools (the first is `default`, where unrouted keys go) numbered in
    /// order, each pool's primaries then its backups, and prefix routes
    /// `(prefix, pool index)`; the longest matching prefix wins.
    pub fn new(pools: &[PoolSpec<'_>], routes: &[(&[u8], usize)]) -> Router {
        let mut next = 0u32;
        let pools = pools
            .iter()
            .map(|p| {
                let ring = |m: &[Member]| Ring::with_hash(p.how.distribution, p.how.hash, m);
                let first_primary = next;
                let first_backup = next + p.primaries.len() as u32;
                next = first_backup + p.backups.len() as u32;
                Pool {
                    name: p.name.to_string(),
                    hash_tag: p.how.hash_tag,
                    primary: ring(p.primaries),
                    backup: (!p.backups.is_empty()).then(|| ring(p.backups)),
                    first_primary,
                    first_backup,
                }
            })
            .collect();
        let mut routes: Vec<(Vec<u8>, usize)> =
            routes.iter().map(|(p, i)| (p.to_vec(), *i)).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Router { pools, routes }
    }

    /// The pool a key belongs to: its longest matching prefix route's, or
    /// `default`.
    fn pool_of(&self, key: &[u8]) -> usize {
        self.routes
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .map_or(0, |&(_, pool)| pool)
    }

    /// The route of `key`: hashed once, placed on both of its pool's rings.
    pub fn route(&self, key: &[u8]) -> Route {
        self.route_at(self.pool_of(key), key)
    }

    /// The route of `key` in pool `pool` (a client on a pool's own
    /// listener), whatever its prefix.
    pub fn route_at(&self, pool: usize, key: &[u8]) -> Route {
        let Some(p) = self.pools.get(pool) else {
            return Route {
                pool: 0,
                primary: 0,
                backup: None,
            };
        };
        let h = p.primary.hash(tagged(key, p.hash_tag));
        Route {
            pool,
            primary: p.first_primary + p.primary.server_for_hash(h) as u32,
            backup: p
                .backup
                .as_ref()
                .map(|r| p.first_backup + r.server_for_hash(h) as u32),
        }
    }

    /// The route of a request's key as written on the wire: a base64 key
    /// (`base64`, meta `b` flag) by the bytes it stands for; one that does
    /// not decode (memcached refuses it) as written.
    pub fn route_key(&self, key: &[u8], base64: bool) -> Route {
        self.route_key_in(None, key, base64)
    }

    /// [`Router::route_key`] in pool `pool` when given (a pool's own
    /// listener), else in the pool the key's prefix picks.
    pub fn route_key_in(&self, pool: Option<usize>, key: &[u8], base64: bool) -> Route {
        let place = |k: &[u8]| match pool {
            Some(p) => self.route_at(p, k),
            None => self.route(k),
        };
        if !base64 {
            return place(key);
        }
        use base64::Engine as _;
        let mut raw = [0u8; MAX_KEY];
        match base64::engine::general_purpose::STANDARD.decode_slice(key, &mut raw[..]) {
            Ok(n) => place(raw.get(..n).unwrap_or_default()),
            Err(_) => place(key),
        }
    }

    /// The index of the pool named `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// The name of pool `pool` (`default`).
    pub fn pool_name(&self, pool: usize) -> &str {
        self.pools.get(pool).map_or("default", |p| p.name.as_str())
    }
}

/// The part of `key` its pool hashes: with a hash tag `{}`, what stands
/// between the first `{` and the next `}` after it, when both are there and
/// it is not empty; otherwise the whole key (nutcracker's rule).
fn tagged(key: &[u8], tag: Option<[u8; 2]>) -> &[u8] {
    let Some([open, close]) = tag else {
        return key;
    };
    let Some(start) = key.iter().position(|&b| b == open) else {
        return key;
    };
    let inner = key.get(start + 1..).unwrap_or_default();
    match inner.iter().position(|&b| b == close) {
        Some(end) if end > 0 => &inner[..end],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<Member> {
        names.iter().map(|n| Member::for_nutcracker(n, 1)).collect()
    }

    #[test]
    fn the_default_pool_places_as_its_rings_do_and_numbers_backups_after_primaries() {
        let p = members(&["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]);
        let b = members(&["10.0.1.1:11211", "10.0.1.2:11211"]);
        for dist in [Distribution::Modula, Distribution::Ketama] {
            let router = Router::single(dist, &p, &b);
            let (pr, br) = (Ring::new(dist, &p), Ring::new(dist, &b));
            for i in 0..2000 {
                let key = format!("key:{i}");
                let r = router.route(key.as_bytes());
                assert_eq!(r.pool, 0);
                assert_eq!(r.primary as usize, pr.server_for(key.as_bytes()));
                assert_eq!(r.backup, Some(3 + br.server_for(key.as_bytes()) as u32));
            }
            assert_eq!(router.pool_name(0), "default");
        }
        let no_backups = Router::single(Distribution::Modula, &p, &[]);
        assert_eq!(no_backups.route(b"k").backup, None);
    }

    #[test]
    fn prefix_routes_choose_the_pool_and_the_longest_prefix_wins() {
        let d = members(&["d1:1", "d2:1"]);
        let (s, sb) = (members(&["s1:1", "s2:1", "s3:1"]), members(&["sb1:1"]));
        let x = members(&["x1:1"]);
        let ketama = Placement {
            distribution: Distribution::Ketama,
            ..Placement::default()
        };
        let pools = [
            PoolSpec {
                name: "default",
                how: Placement::default(),
                primaries: &d,
                backups: &[],
            },
            PoolSpec {
                name: "sessions",
                how: ketama,
                primaries: &s,
                backups: &sb,
            },
            PoolSpec {
                name: "x",
                how: ketama,
                primaries: &x,
                backups: &[],
            },
        ];
        let router = Router::new(&pools, &[(b"s:", 1), (b"s:x:", 2)]);
        let only = Router::single(Distribution::Ketama, &s, &sb);
        for i in 0..500 {
            let key = format!("s:{i}");
            let r = router.route(key.as_bytes());
            assert_eq!(r.pool, 1);
            // Numbered after the default pool's two servers.
            let alone = only.route(key.as_bytes());
            assert_eq!(r.primary, 2 + alone.primary);
            assert_eq!(r.backup, Some(5));
            assert_eq!(router.route(format!("s:x:{i}").as_bytes()).primary, 6);
            let d = router.route(format!("user:{i}").as_bytes());
            assert!(d.pool == 0 && d.primary < 2 && d.backup.is_none());
        }
        assert_eq!(router.pool_name(1), "sessions");
    }

    #[test]
    fn a_hash_tag_hashes_what_stands_between_its_bytes() {
        let tag = Some(*b"{}");
        for (key, hashed) in [
            (&b"user:{42}:profile"[..], &b"42"[..]),
            (b"{42}", b"42"),
            (b"{a}{b}", b"a"),
            (b"no tag", b"no tag"),
            (b"empty {} tag", b"empty {} tag"),
            (b"open {only", b"open {only"),
            (b"close} first {x}", b"x"),
        ] {
            assert_eq!(tagged(key, tag), hashed, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(tagged(b"a{b}c", None), b"a{b}c");
        let p = members(&["a:1", "b:1", "c:1", "d:1"]);
        let router = Router::with_placement(
            Placement {
                distribution: Distribution::Ketama,
                hash: Some(KeyHash::Fnv1a64),
                hash_tag: tag,
            },
            &p,
            &[],
        );
        let home = router.route(b"42");
        for i in 0..50 {
            assert_eq!(router.route(format!("u{i}:{{42}}").as_bytes()), home);
        }
    }

    #[test]
    fn a_base64_key_lands_where_its_bytes_do() {
        let p = members(&["a:1", "b:1", "c:1", "d:1", "e:1"]);
        let router = Router::single(Distribution::Ketama, &p, &p);
        for (text, b64) in [
            (&b"plain"[..], &b"cGxhaW4="[..]),
            (b"\x00\x01", b"AAE="),
            (b"a b", b"YSBi"),
        ] {
            assert_eq!(router.route_key(b64, true), router.route(text));
            assert_eq!(router.route_key(text, false), router.route(text));
        }
        // Not base64: placed as written (memcached refuses it anyway).
        assert_eq!(router.route_key(b"!!", true), router.route(b"!!"));
    }
}
