//! The libketama / nutcracker ketama continuum with md5 hashing.

use super::Member;

/// Ketama's key hash: the first 4 bytes of md5(key), little-endian.
pub fn ketama_hash(key: &[u8]) -> u32 {
    let _ = key;
    todo!("route helper implements")
}

/// A sorted continuum of (point, server index).
#[derive(Clone, Debug)]
pub struct Continuum {
    points: Vec<(u32, u32)>,
    n: usize,
}

impl Continuum {
    /// Build over `members`, 160 points per server at equal weight.
    pub fn new(members: &[Member]) -> Continuum {
        let _ = members;
        todo!("route helper implements")
    }

    /// Owner of `key`.
    pub fn server_for(&self, key: &[u8]) -> usize {
        let _ = (key, &self.points);
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
