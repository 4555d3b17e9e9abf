//! Key placement, sans-IO: which server owns a key, and how a multi-key get
//! splits across servers.
//!
//! Owns: the magent modula hash, the libketama/nutcracker ketama ring, and the
//! multi-get fan-out plan. Must not import `server`, sockets or the clock.

pub mod ketama;
pub mod modula;
pub mod plan;

pub use plan::FanoutPlan;

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
    pub name: String,
    /// Relative weight (1 by default).
    pub weight: u32,
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
    pub fn server_for(&self, key: &[u8]) -> usize {
        match self {
            Ring::Modula(m) => m.server_for(key),
            Ring::Ketama(k) => k.server_for(key),
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
