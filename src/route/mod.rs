//! Key placement, sans-IO: which pool and which servers own a key.
//!
//! Owns: the magent modula hash, the libketama/nutcracker ketama ring,
//! nutcracker's hashes, the [`Router`], the one place keys are placed
//! (pool by prefix route or listener, then primary and backup), and the
//! [`History`] of earlier placements a migration window reads from. A multi-key
//! get is split by the request machine, which groups its keys by the
//! replicas the router gives each one. Must not import `server`, sockets or
//! the clock.
//!
//! A [`Ring`] is built once per configuration and shared read-only across
//! cores; lookups neither allocate nor panic.
//!
//! ```
//! use memring::route::{Distribution, Member, Ring};
//!
//! let members: Vec<Member> = ["127.0.0.1:10001", "127.0.0.1:10002", "127.0.0.1:10003"]
//!     .iter()
//!     .map(|name| Member::new(name, 1))
//!     .collect();
//!
//! // magent's default: DJB2 over signed chars, modulo the pool size.
//! let modula = Ring::new(Distribution::Modula, &members);
//! assert_eq!(modula.server_for(b"hello"), 261_238_937 % 3);
//!
//! // `-k`: the nutcracker/libketama continuum.
//! let ketama = Ring::new(Distribution::Ketama, &members);
//! let owner = ketama.server_for(b"user:42");
//! assert!(owner < ketama.len());
//! assert_eq!(owner, ketama.server_for(b"user:42"));
//! ```

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod hash;
pub mod history;
pub mod ketama;
pub mod modula;
pub mod router;

pub use hash::KeyHash;
pub use history::{History, Owners};
pub use router::{Route, Router};

/// How keys are spread over a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Distribution {
    /// magent's DJB2 hash modulo the number of servers (the default).
    #[default]
    Modula,
    /// libketama / nutcracker `distribution: ketama, hash: md5` (`-k`).
    Ketama,
}

/// A pool of servers as the ring sees them: a name (`host:port`) and a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The name hashed onto the ring, `host:port` as given on the command line.
    ///
    /// Modula ignores it. Ketama hashes it verbatim; nutcracker hashes an
    /// unnamed `host:11211` server as just `host`, so use
    /// [`ketama::nutcracker_name`] to build a ring that agrees with it.
    pub name: String,
    /// Relative weight (1 by default).
    pub weight: u32,
}

impl Member {
    /// A member named `name` with `weight`.
    pub fn new(name: &str, weight: u32) -> Member {
        Member {
            name: name.to_string(),
            weight,
        }
    }

    /// A member that hashes like an *unnamed* nutcracker server
    /// `host:port:weight`: the name is [`ketama::nutcracker_name`] of
    /// `host_port` (`host` alone when the port is 11211).
    pub fn for_nutcracker(host_port: &str, weight: u32) -> Member {
        Member::new(ketama::nutcracker_name(host_port), weight)
    }
}

/// An immutable ring: built once per configuration and shared across cores.
#[derive(Clone, Debug)]
pub enum Ring {
    /// magent modula.
    Modula(modula::Modula),
    /// ketama continuum, keys hashed with md5 (libketama, nutcracker's
    /// `hash: md5`).
    Ketama(ketama::Continuum),
    /// ketama continuum, keys hashed with another of nutcracker's hashes.
    KetamaWith(ketama::Continuum, KeyHash),
    /// nutcracker's modula: `hash % total weight` over one slot per unit of
    /// weight, in server order.
    WeightedModula(Vec<u32>, KeyHash),
}

impl Ring {
    /// Build a ring over `members` (index order is server order) with the
    /// distribution's own hash: magent's for modula, md5 for ketama.
    pub fn new(dist: Distribution, members: &[Member]) -> Ring {
        match dist {
            Distribution::Modula => Ring::Modula(modula::Modula::new(members)),
            Distribution::Ketama => Ring::Ketama(ketama::Continuum::new(members)),
        }
    }

    /// Build a ring as nutcracker does with `hash:` set: ketama's continuum
    /// (its points are md5 whatever the hash) with keys hashed by `hash`, or
    /// nutcracker's weighted modula. `None` is [`Ring::new`].
    pub fn with_hash(dist: Distribution, hash: Option<KeyHash>, members: &[Member]) -> Ring {
        match (dist, hash) {
            (_, None) => Ring::new(dist, members),
            (Distribution::Ketama, Some(KeyHash::Md5)) => Ring::new(dist, members),
            (Distribution::Ketama, Some(h)) => Ring::KetamaWith(ketama::Continuum::new(members), h),
            (Distribution::Modula, Some(h)) => {
                let slots = members
                    .iter()
                    .enumerate()
                    .flat_map(|(i, m)| std::iter::repeat_n(i as u32, m.weight as usize))
                    .collect();
                Ring::WeightedModula(slots, h)
            }
        }
    }

    /// The index (into `members`) of the server that owns `key`.
    ///
    /// Never panics; on an empty ring (which the config layer refuses) it
    /// answers 0.
    pub fn server_for(&self, key: &[u8]) -> usize {
        self.server_for_hash(self.hash(key))
    }

    /// The hash this ring places `key` by. Rings of one distribution share
    /// the hash, so a key hashed once can be placed on both the primary and
    /// the backup ring with [`Ring::server_for_hash`].
    pub fn hash(&self, key: &[u8]) -> u32 {
        match self {
            Ring::Modula(_) => modula::magent_hash(key),
            Ring::Ketama(_) => ketama::ketama_hash(key),
            // nutcracker hashes an empty key as 0 (it never sees one: the
            // protocol refuses it).
            Ring::KetamaWith(..) | Ring::WeightedModula(..) if key.is_empty() => 0,
            Ring::KetamaWith(_, h) | Ring::WeightedModula(_, h) => h.hash(key),
        }
    }

    /// The owner of a key whose [`Ring::hash`] (by a ring of the same
    /// distribution) is `hash`.
    pub fn server_for_hash(&self, hash: u32) -> usize {
        match self {
            Ring::Modula(m) => m.server_for_hash(hash),
            Ring::Ketama(k) | Ring::KetamaWith(k, _) => k.server_for_hash(hash),
            Ring::WeightedModula(slots, _) => match slots.len() {
                0 => 0,
                n => slots.get(hash as usize % n).map_or(0, |&s| s as usize),
            },
        }
    }

    /// Number of servers on the ring.
    pub fn len(&self) -> usize {
        match self {
            Ring::Modula(m) => m.len(),
            Ring::Ketama(k) | Ring::KetamaWith(k, _) => k.len(),
            Ring::WeightedModula(slots, _) => slots.iter().max().map_or(0, |&m| m as usize + 1),
        }
    }

    /// True when the ring has no servers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
