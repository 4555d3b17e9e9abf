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

use super::{Distribution, Member, Ring};

/// Longest key memcached accepts (the decode buffer of a base64 key).
const MAX_KEY: usize = 250;

/// One pool: its name and its two rings.
#[derive(Clone, Debug)]
struct Pool {
    name: String,
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
}

impl Router {
    /// The single `default` pool: `primaries` numbered from 0, then
    /// `backups` (an empty list: no backups).
    pub fn single(dist: Distribution, primaries: &[Member], backups: &[Member]) -> Router {
        Router {
            pools: vec![Pool {
                name: "default".to_string(),
                primary: Ring::new(dist, primaries),
                backup: (!backups.is_empty()).then(|| Ring::new(dist, backups)),
                first_primary: 0,
                first_backup: primaries.len() as u32,
            }],
        }
    }

    /// The pool a key belongs to (one pool today: prefix routes will choose).
    fn pool_of(&self, _key: &[u8]) -> usize {
        0
    }

    /// The route of `key`: hashed once, placed on both of its pool's rings.
    pub fn route(&self, key: &[u8]) -> Route {
        let pool = self.pool_of(key);
        let Some(p) = self.pools.get(pool) else {
            return Route {
                pool: 0,
                primary: 0,
                backup: None,
            };
        };
        let h = p.primary.hash(key);
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
        if !base64 {
            return self.route(key);
        }
        use base64::Engine as _;
        let mut raw = [0u8; MAX_KEY];
        match base64::engine::general_purpose::STANDARD.decode_slice(key, &mut raw[..]) {
            Ok(n) => self.route(raw.get(..n).unwrap_or_default()),
            Err(_) => self.route(key),
        }
    }

    /// The name of pool `pool` (`default`).
    pub fn pool_name(&self, pool: usize) -> &str {
        self.pools.get(pool).map_or("default", |p| p.name.as_str())
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
