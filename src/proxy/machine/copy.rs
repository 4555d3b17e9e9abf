//! Copying one item between replicas: the repair after a read-through hit
//! and resync's copies.
//!
//! The item is stored on the target with `add` (never over a newer value),
//! then the source is asked whether it still holds the same item (same cas).
//! If it changed or vanished meanwhile (a concurrent delete or write), the
//! copy is deleted again: a miss is safe, a resurrected value is not.

use bytes::{Bytes, BytesMut};

use super::{delete_parts, stored, CallError, CallId, Cx, Reply};
use crate::protocol::compose;
use crate::protocol::{Expect, Status, Verb};
use crate::proxy;
use crate::upstream::ServerId;

/// An item read with `mg <key> v f t [c]`.
#[derive(Clone, Debug)]
pub struct MetaItem {
    /// Client flags.
    pub flags: u32,
    /// Remaining TTL in seconds; -1 when it never expires.
    pub ttl: i64,
    /// The cas unique on the server it was read from (0 when not asked).
    pub cas: u64,
    /// Length of the data without its `\r\n`.
    pub data_len: usize,
    /// Data with its `\r\n`.
    pub block: Bytes,
}

impl MetaItem {
    /// The item in a `VA` reply; `None` for any other reply.
    pub fn parse(r: &Reply) -> Option<MetaItem> {
        if r.status != Status::MetaValue {
            return None;
        }
        let line = r.frame.get(r.line.clone())?;
        let flags = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
        let v = crate::protocol::ReplyValues::parse(flags);
        let end = r.data.end.checked_add(2).filter(|e| *e <= r.frame.len())?;
        if r.data.start > r.data.end {
            return None;
        }
        Some(MetaItem {
            flags: u32::try_from(v.client_flags.unwrap_or(0)).ok()?,
            ttl: v.ttl.unwrap_or(-1),
            cas: v.cas.unwrap_or(0),
            data_len: r.data.len(),
            block: r.frame.slice(r.data.start..end),
        })
    }

    /// `set`/`add` line and data that store this item under `key`, with its
    /// remaining TTL as an exptime (absolute past 30 days, from `now_unix`).
    pub fn store_parts(&self, verb: Verb, key: &[u8], now_unix: i64) -> [Bytes; 2] {
        self.store_parts_for(verb, key, false, now_unix).0
    }

    /// [`MetaItem::store_parts`] for a key that may be base64 (a meta store
    /// with `b` then), with the reply shape of the store.
    pub fn store_parts_for(
        &self,
        verb: Verb,
        key: &[u8],
        base64: bool,
        now_unix: i64,
    ) -> ([Bytes; 2], Expect) {
        let exptime = proxy::ttl_to_exptime(self.ttl, now_unix);
        super::store_parts_for(
            verb,
            key,
            base64,
            self.flags,
            exptime,
            self.data_len,
            self.block.clone(),
        )
    }
}

/// The detached copy of one item from `src` onto `target`.
#[derive(Debug)]
pub(super) struct CopyItem {
    src: ServerId,
    target: ServerId,
    key: Bytes,
    item: MetaItem,
    stage: Stage,
    kept: Option<bool>,
}

#[derive(Debug)]
enum Stage {
    /// Handed over by a Spawn; `begin` sends the store.
    Unstarted,
    /// `add` on the target.
    Store(CallId),
    /// `mg <key> c` on the source.
    Check(CallId),
    /// The source changed: `delete` the copy on the target.
    Delete(CallId),
    Done,
}

impl CopyItem {
    pub(super) fn new(src: ServerId, target: ServerId, key: Bytes, item: MetaItem) -> CopyItem {
        CopyItem {
            src,
            target,
            key,
            item,
            stage: Stage::Unstarted,
            kept: None,
        }
    }

    pub(super) fn begin(&mut self, cx: &mut Cx<'_>) {
        if !matches!(self.stage, Stage::Unstarted) {
            return;
        }
        let store = self
            .item
            .store_parts(Verb::Add, &self.key, cx.view.now_unix());
        match cx.send_up(self.target, store, Expect::Line) {
            Some(call) => self.stage = Stage::Store(call),
            None => self.on_store(Err(CallError::no_call(self.target, Expect::Line)), cx),
        }
    }

    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        match self.stage {
            Stage::Store(c) if c == call => self.on_store(r, cx),
            Stage::Check(c) if c == call => self.on_check(r, cx),
            Stage::Delete(c) if c == call => self.stage = Stage::Done,
            _ => {}
        }
    }

    fn on_store(&mut self, r: Result<Reply, CallError>, cx: &mut Cx<'_>) {
        if !stored(&r) {
            // The target has the key already: a write reached it meanwhile.
            self.kept = Some(false);
            self.stage = Stage::Done;
            return;
        }
        let mut check = BytesMut::with_capacity(self.key.len() + 8);
        compose::compose_meta_get(&mut check, &self.key, b"c");
        match cx.send_up(self.src, [check.freeze(), Bytes::new()], Expect::Meta) {
            Some(call) => self.stage = Stage::Check(call),
            None => self.on_check(Err(CallError::no_call(self.src, Expect::Meta)), cx),
        }
    }

    fn on_check(&mut self, r: Result<Reply, CallError>, cx: &mut Cx<'_>) {
        let unchanged = match r {
            Ok(r) if r.status == Status::MetaHd => {
                let line = r.frame.get(r.line.clone()).unwrap_or_default();
                let flags = line.get(2..).unwrap_or_default();
                crate::protocol::ReplyValues::parse(flags).cas == Some(self.item.cas)
            }
            _ => false,
        };
        self.kept = Some(unchanged);
        if unchanged {
            self.stage = Stage::Done;
            return;
        }
        match cx.send_up(self.target, delete_parts(&self.key), Expect::Line) {
            Some(call) => self.stage = Stage::Delete(call),
            None => self.stage = Stage::Done,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Whether the target kept the copy, once that is known.
    pub(super) fn result(&self) -> Option<bool> {
        self.kept
    }
}
