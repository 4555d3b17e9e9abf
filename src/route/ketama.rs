//! The libketama / nutcracker ketama continuum with md5 hashing.
//!
//! Bit-for-bit the ring of nutcracker 0.5 (`distribution: ketama`,
//! `hash: md5`, `auto_eject_hosts: false`), checked against the real binary
//! by `tests/ring_golden.rs`:
//!
//! - server `s` gets `points_per_server(w_s, Σw, n)` points: 4 per md5 digest
//!   of `"<name>-<i>"`, `i = 0, 1, …`, each point being 4 digest bytes read
//!   little-endian;
//! - the points are sorted by value; equal values keep server order
//!   (glibc's `qsort` is a stable merge sort at these sizes);
//! - a key goes to the first point `>= ketama_hash(key)`, wrapping to the
//!   first point.
//!
//! What `<name>` is matters: see [`nutcracker_name`]. Imports nothing outside
//! `route`.

use std::io::Write as _;

use md5::{Digest, Md5};

use super::Member;

/// Points per digest: an md5 digest is cut into four 32-bit points.
const POINTS_PER_HASH: u32 = 4;
/// Points of a server at equal weight (`KETAMA_POINTS_PER_SERVER`).
const POINTS_PER_SERVER: u32 = 160;
/// The port nutcracker leaves out of an unnamed server's ketama name.
const KETAMA_DEFAULT_PORT: u16 = 11211;

/// Ketama's key hash: the first 4 bytes of md5(key), little-endian.
pub fn ketama_hash(key: &[u8]) -> u32 {
    let d = Md5::digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// The name nutcracker hashes for an unnamed `servers:` entry
/// `host:port:weight`, given its `host:port` part.
///
/// nutcracker (`conf_add_server`) uses the explicit `name` when the entry
/// has one (`host:port:weight name`). Without one it uses `host:port`,
/// except that for port 11211 it uses `host` alone ("backward compatibility
/// with libmemcached"). The weight is never part of the name. So
/// `"127.0.0.1:10001"` stays `"127.0.0.1:10001"`, and `"127.0.0.1:11211"`
/// becomes `"127.0.0.1"`. The port is compared as a number, as nutcracker
/// does. Anything without a numeric `:port` tail is returned unchanged.
pub fn nutcracker_name(host_port: &str) -> &str {
    match host_port.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>() == Ok(KETAMA_DEFAULT_PORT) => host,
        _ => host_port,
    }
}

/// Number of continuum points nutcracker gives a server of `weight` out of
/// `total_weight` in a pool of `n` live servers (a multiple of 4).
///
/// This is nutcracker's single-precision expression, operation for
/// operation: `floorf((float)(pct * 160 / 4 * (float)n + 1e-10)) * 4` with
/// `pct = (float)weight / (float)total_weight`. Rounding in `f32` matters:
/// it decides whether a share lands just below or at a whole number.
/// For example 25 equally weighted servers get 156 points each, not 160.
/// The same goes for 47, 50, 100 and many larger pool sizes. When a pool grows
/// across such a size, every old server loses 4 points and a few keys move
/// between old servers, in nutcracker and here alike. Returns 0 when
/// `total_weight` is 0.
pub fn points_per_server(weight: u32, total_weight: u64, n: u32) -> u32 {
    if total_weight == 0 {
        return 0;
    }
    let pct = weight as f32 / total_weight as f32;
    let hashes = pct * POINTS_PER_SERVER as f32 / POINTS_PER_HASH as f32 * n as f32;
    // The C adds a double literal, then converts back to float for floorf.
    let hashes = ((hashes as f64) + 0.000_000_000_1) as f32;
    // `as u32` saturates; a share is at most 1, so this is at most 40 * n.
    (hashes.floor() as u32).saturating_mul(POINTS_PER_HASH)
}

/// A sorted continuum of (point, server index).
#[derive(Clone, Debug)]
pub struct Continuum {
    points: Vec<(u32, u32)>,
    n: usize,
}

impl Continuum {
    /// Build over `members`, 160 points per server at equal weight.
    ///
    /// Weights scale the point count as in nutcracker (see
    /// [`points_per_server`]). nutcracker rejects weight 0; here such a server
    /// simply gets no points, and a pool whose weights are all 0 is treated
    /// as equally weighted. `Member::name` is hashed as is: pass
    /// [`nutcracker_name`] of `host:port` to agree with an unnamed nutcracker
    /// server on port 11211. nutcracker formats `"<name>-<i>"` into an
    /// 86-byte buffer, so it is only well defined for names up to 81 bytes;
    /// here longer names are hashed in full.
    pub fn new(members: &[Member]) -> Continuum {
        let n = members.len();
        let mut total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
        let all_zero = total == 0;
        if all_zero {
            total = n as u64;
        }
        let mut points = Vec::with_capacity(n * POINTS_PER_SERVER as usize);
        let mut label = Vec::with_capacity(96);
        for (index, m) in members.iter().enumerate() {
            let weight = if all_zero { 1 } else { m.weight };
            let hashes = points_per_server(weight, total, n as u32) / POINTS_PER_HASH;
            for i in 0..hashes {
                label.clear();
                label.extend_from_slice(m.name.as_bytes());
                // Writing into a Vec cannot fail.
                let _ = write!(label, "-{i}");
                let d = Md5::digest(&label);
                for chunk in d.chunks_exact(4) {
                    let point = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    points.push((point, index as u32));
                }
            }
        }
        // Stable: equal points keep insertion (= server) order, like glibc's
        // merge-sort qsort in nutcracker.
        points.sort_by_key(|&(point, _)| point);
        Continuum { points, n }
    }

    /// Owner of `key`. Returns 0 when the continuum has no points.
    pub fn server_for(&self, key: &[u8]) -> usize {
        self.server_for_hash(ketama_hash(key))
    }

    /// Owner of a precomputed [`ketama_hash`]: the first point `>= hash`,
    /// wrapping to the first point.
    pub fn server_for_hash(&self, hash: u32) -> usize {
        let i = self.points.partition_point(|&(point, _)| point < hash);
        match self.points.get(i).or_else(|| self.points.first()) {
            Some(&(_, server)) => server as usize,
            None => 0,
        }
    }

    /// The sorted `(point, server index)` pairs (for tests and diagnostics).
    pub fn points(&self) -> &[(u32, u32)] {
        &self.points
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(name: &str, weight: u32) -> Member {
        Member {
            name: name.to_string(),
            weight,
        }
    }

    fn pool(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| member(&format!("127.0.0.1:{}", 10001 + i), 1))
            .collect()
    }

    #[test]
    fn key_hash_is_md5_prefix_little_endian() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(ketama_hash(b""), 0xd98c_1dd4);
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(ketama_hash(b"a"), 0xb975_c10c);
        // md5("hello") = 5d41402abc4b2a76b9719d911017c592
        assert_eq!(ketama_hash(b"hello"), 0x2a40_415d);
    }

    #[test]
    fn member_for_nutcracker() {
        assert_eq!(
            Member::for_nutcracker("10.0.0.1:11211", 2),
            member("10.0.0.1", 2)
        );
        assert_eq!(
            Member::for_nutcracker("10.0.0.1:10001", 1),
            member("10.0.0.1:10001", 1)
        );
    }

    #[test]
    fn naming_rule() {
        assert_eq!(nutcracker_name("127.0.0.1:10001"), "127.0.0.1:10001");
        assert_eq!(nutcracker_name("127.0.0.1:11211"), "127.0.0.1");
        assert_eq!(nutcracker_name("cache-1:11211"), "cache-1");
        assert_eq!(nutcracker_name("127.0.0.1:011211"), "127.0.0.1");
        assert_eq!(nutcracker_name("cache-1"), "cache-1");
        assert_eq!(nutcracker_name("/tmp/mc.sock"), "/tmp/mc.sock");
    }

    #[test]
    fn point_counts() {
        // Equal weights: 160 each for the small pools people run...
        for n in 1..=24 {
            assert_eq!(points_per_server(1, n as u64, n), 160, "n={n}");
        }
        // ...but f32 rounding gives 39 digests at some sizes (golden eq25).
        for n in [25, 47, 50, 100, 200] {
            assert_eq!(points_per_server(1, n as u64, n), 156, "n={n}");
        }
        // ...weights 1,2,3: floor(40*3*w/6)*4 = 80, 160, 240.
        assert_eq!(points_per_server(1, 6, 3), 80);
        assert_eq!(points_per_server(2, 6, 3), 160);
        assert_eq!(points_per_server(3, 6, 3), 240);
        // Shares that do not divide: 1/(1+1+1+4) * 40 * 4 = 22.86 -> 22 hashes.
        assert_eq!(points_per_server(1, 7, 4), 88);
        assert_eq!(points_per_server(4, 7, 4), 364);
        assert_eq!(points_per_server(1, 0, 3), 0);
    }

    #[test]
    fn continuum_shape() {
        let c = Continuum::new(&pool(3));
        assert_eq!(c.len(), 3);
        assert_eq!(c.points().len(), 480);
        assert!(c.points().windows(2).all(|w| w[0].0 <= w[1].0));
        for s in 0..3u32 {
            assert_eq!(c.points().iter().filter(|p| p.1 == s).count(), 160);
        }
        let w = Continuum::new(&[member("a:1", 1), member("b:1", 2), member("c:1", 3)]);
        assert_eq!(w.points().len(), 480);
        assert_eq!(w.points().iter().filter(|p| p.1 == 2).count(), 240);
    }

    #[test]
    fn first_point_at_or_after_and_wrap() {
        // A hand-made continuum pins the lookup rule, ties included.
        let c = Continuum {
            points: vec![(10, 2), (20, 0), (20, 1), (30, 1)],
            n: 3,
        };
        assert_eq!(c.server_for_hash(0), 2);
        assert_eq!(c.server_for_hash(10), 2);
        assert_eq!(c.server_for_hash(11), 0);
        assert_eq!(c.server_for_hash(20), 0);
        assert_eq!(c.server_for_hash(21), 1);
        assert_eq!(c.server_for_hash(30), 1);
        assert_eq!(c.server_for_hash(31), 2);
        assert_eq!(c.server_for_hash(u32::MAX), 2);
    }

    #[test]
    fn ties_keep_server_order() {
        // Two servers with the same name produce identical points: every
        // tie must resolve to the lower index, as after a stable qsort.
        let c = Continuum::new(&[member("same", 1), member("same", 1)]);
        for i in 0..2000 {
            assert_eq!(c.server_for(format!("k{i}").as_bytes()), 0);
        }
    }

    #[test]
    fn degenerate_pools_do_not_panic() {
        let empty = Continuum::new(&[]);
        assert!(empty.is_empty());
        assert_eq!(empty.server_for(b"k"), 0);
        let zero = Continuum::new(&[member("a", 0), member("b", 0)]);
        assert_eq!(zero.points().len(), 320);
        let one_zero = Continuum::new(&[member("a", 0), member("b", 1)]);
        for i in 0..100 {
            assert_eq!(one_zero.server_for(format!("k{i}").as_bytes()), 1);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Adding a server only moves keys onto the new server.
        #[test]
        fn adding_a_server_only_moves_keys_onto_it(
            n in 1usize..8,
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 1..200),
        ) {
            let before = Continuum::new(&pool(n));
            let after = Continuum::new(&pool(n + 1));
            for k in &keys {
                let (a, b) = (before.server_for(k), after.server_for(k));
                prop_assert!(b == a || b == n, "key {:?} moved {} -> {}", k, a, b);
            }
        }

        #[test]
        fn lookup_is_in_range(
            weights in proptest::collection::vec(1u32..20, 1..10),
            key in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let members: Vec<Member> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| member(&format!("10.0.0.{i}:11211"), w))
                .collect();
            let c = Continuum::new(&members);
            prop_assert!(c.server_for(&key) < members.len());
        }
    }
}
