//! Resync: after a server rejoins, copy the keys it owns from the other
//! replicas, so a primary (or backup) that came back empty holds its items
//! again before its partner can fail too.
//!
//! Keys come from `lru_crawler metadump all` on each server of the other
//! role; every key the rejoined server owns is read (`mg v f t c`) and stored
//! with `add`, which never overwrites a value written meanwhile. If the
//! source's item changed or vanished between the read and the `add` (a
//! concurrent delete), the copy is deleted again: a miss is safe, a
//! resurrected value would not be.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::protocol::compose;
use crate::protocol::metadump::{parse_dump_line, DumpLine};
use crate::protocol::Expect;
use crate::stats::Counter;
use crate::upstream::{Role, ServerId};

use super::core::{Core, Topology};
use super::dispatch::{call_up, copy_item, MetaItem};
use super::io::{Backend, Stream};

/// Keys copied concurrently (pipelined on the pooled connections).
const BATCH: usize = 64;

/// Longest metadump line accepted.
const MAX_DUMP_LINE: usize = 4096;

/// Copy every key `target` owns from the servers of the other role.
pub(super) async fn resync<B: Backend>(core: Rc<Core<B>>, topo: Arc<Topology>, target: ServerId) {
    let Some(info) = topo.servers.get(target.index()) else {
        return;
    };
    let sources: Vec<ServerId> = (0..topo.servers.len() as u32)
        .map(ServerId)
        .filter(|s| topo.servers[s.index()].role != info.role && topo.health(*s).is_up())
        .collect();
    let mut copied = 0u64;
    for src in sources {
        match resync_from(&core, &topo, src, target).await {
            Ok(n) => copied += n,
            Err(why) => {
                tracing::warn!(server = %info.name, source = %topo.servers[src.index()].name, why, "resync incomplete")
            }
        }
        if !topo.health(target).is_up() {
            break;
        }
    }
    tracing::info!(server = %info.name, copied, "resync finished");
}

fn owns(topo: &Topology, target: ServerId, role: Role, key: &[u8]) -> bool {
    let (p, b) = topo.replicas(key);
    match role {
        Role::Primary => p == target,
        Role::Backup => b == Some(target),
    }
}

async fn resync_from<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    src: ServerId,
    target: ServerId,
) -> Result<u64, &'static str> {
    let settings = topo.settings;
    let role = topo.servers[target.index()].role;
    let addr = topo.servers[src.index()].addr;
    let s = match tokio::time::timeout(settings.connect_timeout, B::connect(addr)).await {
        Ok(Ok(s)) => s,
        _ => return Err("cannot connect to the source"),
    };
    let cmd: &'static [u8] = b"lru_crawler metadump all\r\n";
    let (res, _) = s.writev(vec![Bytes::from_static(cmd)]).await;
    if res.ok() != Some(cmd.len()) {
        s.shutdown();
        return Err("cannot send metadump");
    }
    let result = copy_dump(core, topo, &s, src, target, role).await;
    s.shutdown();
    result
}

async fn copy_dump<B: Backend, S: Stream>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    s: &S,
    src: ServerId,
    target: ServerId,
    role: Role,
) -> Result<u64, &'static str> {
    // A dump stalls only while a batch is copied; otherwise the server
    // streams it, so a generous per-read limit is enough.
    let read_limit = topo.settings.request_timeout * 10;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut key = Vec::new();
    let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH);
    let mut copied = 0u64;
    loop {
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(pos + 1);
            match parse_dump_line(&line[..pos], &mut key) {
                DumpLine::Key if owns(topo, target, role, &key) => {
                    batch.push(Bytes::copy_from_slice(&key))
                }
                DumpLine::Key | DumpLine::Skip => {}
                DumpLine::End => {
                    copied += copy_batch(core, topo, src, target, &batch).await;
                    return Ok(copied);
                }
            }
            if batch.len() >= BATCH {
                copied += copy_batch(core, topo, src, target, &batch).await;
                batch.clear();
                if !topo.health(target).is_up() || !topo.health(src).is_up() {
                    return Err("a server went down during the resync");
                }
            }
        }
        if buf.len() > MAX_DUMP_LINE {
            return Err("metadump line too long");
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(read_limit, s.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => buf = b,
            _ => return Err("metadump stream ended early"),
        }
    }
}

async fn copy_batch<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    src: ServerId,
    target: ServerId,
    keys: &[Bytes],
) -> u64 {
    let copies = keys.iter().map(|k| copy_one(core, topo, src, target, k));
    let n = futures_util::future::join_all(copies)
        .await
        .into_iter()
        .filter(|c| *c)
        .count() as u64;
    core.stats().add(Counter::ResyncCopies, n);
    n
}

/// Copy one item; true when the target now holds the source's value.
async fn copy_one<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    src: ServerId,
    target: ServerId,
    key: &[u8],
) -> bool {
    let mut line = BytesMut::with_capacity(key.len() + 16);
    compose::compose_meta_get(&mut line, key, b"v f t c");
    let Ok(r) = call_up(core, topo, src, &[line.freeze()], Expect::Meta).await else {
        return false;
    };
    let Some(item) = MetaItem::parse(&r) else {
        return false;
    };
    copy_item(core, topo, src, target, key, &item).await
}
