//! Key placement, sans-IO: which server owns a key, and how a multi-key get
//! splits across servers.
//!
//! Owns: the magent modula hash, the libketama/nutcracker ketama ring, the
//! [`Router`] (the one place keys are placed) and the multi-get fan-out
//! plan. Must not import `server`, sockets or the clock.
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

pub mod ketama;
pub mod modula;
pub mod plan;
pub mod router;

pub use plan::FanoutPlan;
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
    /// ketama continuum.
    Ketama(ketama::Continuum),
}

impl Ring {
    /// Build a ring over `members` (index order is server order).
    pub fn new(dist: Distribution, members: &[Member]) -> Ring {
        match dist {
            Distribution::Modula => Ring::Modula(modula::Modula::new(members)),
            Distribution::Ketama => Ring::Ketama(ketama::Continuum::new(members)),
        }
    }

    /// The index (into `members`) of the server that owns `key`.
    ///
    /// Never panics; on an empty ring (which the config layer refuses) it
    /// answers 0.
    pub fn server_for(&self, key: &[u8]) -> usize {
        match self {
            Ring::Modula(m) => m.server_for(key),
            Ring::Ketama(k) => k.server_for(key),
        }
    }

    /// The hash this ring places `key` by. Rings of one distribution share
    /// the hash, so a key hashed once can be placed on both the primary and
    /// the backup ring with [`Ring::server_for_hash`].
    pub fn hash(&self, key: &[u8]) -> u32 {
        match self {
            Ring::Modula(_) => modula::magent_hash(key),
            Ring::Ketama(_) => ketama::ketama_hash(key),
        }
    }

    /// The owner of a key whose [`Ring::hash`] (by a ring of the same
    /// distribution) is `hash`.
    pub fn server_for_hash(&self, hash: u32) -> usize {
        match self {
            Ring::Modula(m) => m.server_for_hash(hash),
            Ring::Ketama(k) => k.server_for_hash(hash),
        }
    }

    /// Number of servers on the ring.
    pub fn len(&self) -> usize {
        match self {
            Ring::Modula(m) => m.len(),
            Ring::Ketama(k) => k.len(),
        }
    }

    /// True when the ring has no servers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
