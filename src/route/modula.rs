//! magent's placement: `hashme()` (DJB2 over the key as signed chars,
//! `& 0x7fffffff`) modulo the number of servers.

use super::Member;

/// magent's DJB2 variant.
pub fn magent_hash(key: &[u8]) -> u32 {
    let _ = key;
    todo!("route helper implements")
}

/// Modula placement over `n` servers (weights ignored, as in magent).
#[derive(Clone, Debug)]
pub struct Modula {
    n: usize,
}

impl Modula {
    /// Build over `members`.
    pub fn new(members: &[Member]) -> Modula {
        Modula { n: members.len() }
    }

    /// Owner of `key`.
    pub fn server_for(&self, key: &[u8]) -> usize {
        let _ = key;
        todo!("route helper implements")
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
