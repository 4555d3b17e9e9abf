//! Multi-get fan-out: group a request's keys by owning server, keeping each
//! group in the client's key order, with reusable buffers.

use std::ops::Range;

use super::Ring;

/// Keys of one multi-get grouped by server. Reused across requests.
#[derive(Clone, Debug, Default)]
pub struct FanoutPlan {
    /// `owner[i]` is the server of key `i`.
    pub owner: Vec<u32>,
    /// Distinct servers touched, in order of first appearance.
    pub servers: Vec<u32>,
}

impl FanoutPlan {
    /// Plan `keys` (ranges into `buf`) over `ring`, replacing the previous plan.
    pub fn build(&mut self, ring: &Ring, buf: &[u8], keys: &[Range<usize>]) {
        let _ = (ring, buf, keys);
        todo!("route helper implements")
    }

    /// Indices of the keys owned by `server`, in client order.
    pub fn keys_of(&self, server: u32) -> impl Iterator<Item = usize> + '_ {
        self.owner
            .iter()
            .enumerate()
            .filter(move |(_, s)| **s == server)
            .map(|(i, _)| i)
    }
}
