//! Carrying out one client request: routing, replication to the backup,
//! failover, read-through, and the reply the client gets.
//!
//! The decisions (which rule a verb follows, what converges the backup, what
//! quiet mode hides, how a multi-get merges) are pure functions in
//! [`crate::proxy`] and [`crate::upstream`]; this module sequences them
//! around upstream calls.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::metrics::{EjectReason, ReadThrough, UpstreamErrorKind};
use crate::protocol::compose::{
    self, compose_key_command, compose_storage_line, compose_value_line,
};
use crate::protocol::{frame_response, Expect, Framed, Request, Status, Verb};
use crate::proxy::{self, PartReply, Replicate, WriteRule};
use crate::stats::{Counter, ProcessView, ServerView};
use crate::upstream::{Observed, ServerId};

use super::core::{CallError, Core, Reply, Topology};
use super::io::Backend;

/// What the client gets for one request, in order.
#[derive(Debug)]
pub(crate) enum Out {
    /// Nothing (noreply, quiet mode).
    Nothing,
    /// One buffer.
    One(Bytes),
    /// Several buffers, written with one `writev`.
    Many(Vec<Bytes>),
    /// Close the connection after everything before it is written.
    Close,
}

/// A request being served: either already answered or a future.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Out>>>;

/// One parsed request with the bytes it came in.
pub(crate) struct Req {
    /// The parse result; ranges index `bytes`.
    pub r: Request,
    /// The whole request: line and data block.
    pub bytes: Bytes,
    /// Retrieval keys, ranges into `bytes`.
    pub keys: Keys,
}

/// Retrieval keys: the common single key is kept inline, so a get costs no
/// allocation for its key list.
pub(crate) enum Keys {
    /// One key (or none, for keyless requests).
    One(Option<Range<usize>>),
    /// A multi-key retrieval.
    Many(Vec<Range<usize>>),
}

impl Keys {
    /// Take the parser's key list, leaving it reusable when it held one key.
    pub fn take(parsed: &mut Vec<Range<usize>>) -> Keys {
        if parsed.len() <= 1 {
            let one = parsed.pop();
            Keys::One(one)
        } else {
            Keys::Many(std::mem::take(parsed))
        }
    }

    fn as_slice(&self) -> &[Range<usize>] {
        match self {
            Keys::One(k) => k.as_slice(),
            Keys::Many(v) => v,
        }
    }
}

impl Req {
    fn keys(&self) -> &[Range<usize>] {
        self.keys.as_slice()
    }

    fn key(&self) -> &[u8] {
        self.bytes.get(self.r.key.clone()).unwrap_or_default()
    }

    fn key_bytes(&self) -> Bytes {
        self.bytes.slice(self.r.key.clone())
    }

    /// The data block with its `\r\n`.
    fn data_block(&self) -> Bytes {
        self.bytes.slice(self.r.line_len.min(self.bytes.len())..)
    }
}

fn one(b: &'static [u8]) -> Out {
    Out::One(Bytes::from_static(b))
}

/// Answer a request the proxy serves alone, or start a future for the rest.
pub(crate) fn start<B: Backend>(core: &Rc<Core<B>>, req: Req) -> Result<Out, Pending> {
    let verb = req.r.verb;
    match verb {
        Verb::Quit => Ok(Out::Close),
        Verb::Version => Ok(Out::One(Bytes::from_static(
            concat!("VERSION memring-", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes(),
        ))),
        Verb::Verbosity => Ok(if req.r.noreply {
            Out::Nothing
        } else {
            one(compose::OK)
        }),
        Verb::MetaNoop => Ok(one(compose::MN)),
        Verb::Stats => Ok(stats(core, &req)),
        _ => {
            let core = core.clone();
            core.stats().active_requests.fetch_add(1, Ordering::Relaxed);
            Err(Box::pin(async move {
                let out = serve(&core, req).await;
                core.stats().active_requests.fetch_sub(1, Ordering::Relaxed);
                out
            }))
        }
    }
}

fn stats<B: Backend>(core: &Rc<Core<B>>, req: &Req) -> Out {
    let args = req.bytes.get(req.r.meta_flags.clone()).unwrap_or_default();
    if args == b"reset" {
        for s in &core.shared.stats {
            s.reset();
        }
        return one(compose::RESET);
    }
    let group = args.split(|&b| b == b' ').next().unwrap_or_default();
    let topo = core.topology();
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let p = ProcessView {
        pid: std::process::id(),
        started: core.shared.started,
        now_unix,
        threads: core.shared.stats.len(),
        max_connections: core.shared.cfg.max_conns,
        backend: core.shared.backend,
        config_generation: topo.generation,
    };
    let views: Vec<ServerView<'_>> = topo
        .servers
        .iter()
        .map(|s| ServerView {
            name: &s.name,
            role: s.role,
            health: &s.health,
        })
        .collect();
    match group {
        b"" => Out::One(Bytes::from(crate::stats::render(
            &core.shared.stats,
            &views,
            &p,
            Instant::now(),
        ))),
        // A reload keeps the settings that need a restart, so the config the
        // topology was built from is the effective one.
        b"settings" => Out::One(Bytes::from(crate::stats::render_settings(
            &topo.config,
            &p,
            core.shared.tcp_addr,
        ))),
        b"proxy" => {
            let snap = super::observe::snapshot(&core.shared, &topo);
            Out::One(Bytes::from(crate::stats::render_proxy(
                &core.shared.stats,
                &views,
                &snap,
                Instant::now(),
            )))
        }
        // These describe one memcached server each: ask the servers directly.
        b"items" | b"slabs" | b"sizes" | b"conns" | b"detail" | b"extstore" => one(compose::END),
        // Anything else is an unknown group, which memcached answers with
        // ERROR (`stats noreply` included).
        _ => one(compose::ERROR),
    }
}

async fn serve<B: Backend>(core: &Rc<Core<B>>, req: Req) -> Out {
    let topo = core.topology();
    let verb = req.r.verb;
    let st = core.stats();
    match verb {
        Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats => {
            st.add(Counter::CmdGet, req.keys().len() as u64);
            if matches!(verb, Verb::Gat | Verb::Gats) {
                st.incr(Counter::CmdTouch);
            }
            if req.keys().len() == 1 {
                get_one(core, &topo, &req).await
            } else {
                get_many(core, &topo, &req).await
            }
        }
        Verb::MetaGet | Verb::MetaDebug => {
            st.incr(Counter::CmdMeta);
            meta_read(core, &topo, &req).await
        }
        Verb::FlushAll => {
            st.incr(Counter::CmdFlush);
            flush_all(core, &topo, &req).await
        }
        _ => {
            if verb.is_storage() {
                st.incr(Counter::CmdSet);
            } else if verb == Verb::Touch {
                st.incr(Counter::CmdTouch);
            } else if matches!(
                verb,
                Verb::MetaSet | Verb::MetaDelete | Verb::MetaArithmetic
            ) {
                st.incr(Counter::CmdMeta);
            }
            write(core, &topo, &req).await
        }
    }
}

/// The request as it goes upstream: without `noreply` or `q`, so that every
/// upstream request gets exactly one reply and the FIFO stays in step.
fn upstream_parts(req: &Req) -> [Bytes; 2] {
    let line = &req.bytes[..req.r.line_len.min(req.bytes.len())];
    if req.r.noreply {
        let mut out = BytesMut::with_capacity(line.len());
        compose::compose_without_noreply(&mut out, line);
        [out.freeze(), req.data_block()]
    } else if req.r.quiet {
        let mut out = BytesMut::with_capacity(line.len());
        compose::compose_without_quiet(&mut out, line);
        [out.freeze(), req.data_block()]
    } else {
        [req.bytes.clone(), Bytes::new()]
    }
}

fn server_error(e: CallError) -> Out {
    match e {
        CallError::Timeout => one(compose::BACKEND_TIMEOUT),
        _ => one(compose::NO_SERVER),
    }
}

/// Record a call's outcome in the server's health.
fn note<T>(topo: &Topology, id: ServerId, r: &Result<T, CallError>) {
    let h = topo.health(id);
    match r {
        Ok(_) => h.record_success(),
        Err(_) => {
            if h.record_failure(Instant::now(), &topo.settings.policy)
                == crate::upstream::Verdict::Ejected
            {
                topo.servers[id.index()]
                    .metrics
                    .ejected(EjectReason::Failures);
                tracing::warn!(server = %topo.servers[id.index()].name, "server ejected after failures");
            }
        }
    }
}

fn missed_write(topo: &Topology, id: ServerId, seen: Observed) {
    let h = topo.health(id);
    if h.record_missed_write(Instant::now(), &topo.settings.policy, seen)
        == crate::upstream::Verdict::Ejected
    {
        topo.servers[id.index()]
            .metrics
            .ejected(EjectReason::MissedWrite);
        tracing::warn!(server = %topo.servers[id.index()].name, "server missed a write: ejected until flushed");
    }
}

fn count_failover(core_stats: &crate::stats::CoreStats, topo: &Topology, failed: ServerId) {
    core_stats.incr(Counter::Failovers);
    topo.health(failed)
        .failovers
        .fetch_add(1, Ordering::Relaxed);
}

/// Call a server if it is up, noting the outcome.
pub(super) async fn call_up<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    id: ServerId,
    parts: &[Bytes],
    expect: Expect,
) -> Result<Reply, CallError> {
    if !topo.health(id).is_up() {
        return Err(CallError::Closed);
    }
    let t0 = core.shared.timing.then(Instant::now);
    let r = core.call(topo, id, parts, expect).await;
    if let Some(m) = topo.servers.get(id.index()).map(|s| &s.metrics) {
        match &r {
            Ok(_) => {
                if let Some(t0) = t0 {
                    m.record_upstream(core.id, t0.elapsed());
                }
            }
            Err(e) => m.upstream_error(
                core.id,
                match e {
                    CallError::Connect => UpstreamErrorKind::Connect,
                    CallError::Timeout => UpstreamErrorKind::Timeout,
                    CallError::Closed => UpstreamErrorKind::Closed,
                    CallError::Protocol => UpstreamErrorKind::Protocol,
                },
            ),
        }
    }
    note(topo, id, &r);
    if matches!(r, Err(CallError::Timeout)) {
        core.stats().incr(Counter::BackendTimeouts);
    }
    r
}

fn is_miss(frame: &[u8]) -> bool {
    frame.starts_with(b"END")
}

async fn get_one<B: Backend>(core: &Rc<Core<B>>, topo: &Topology, req: &Req) -> Out {
    let Some(key_range) = req.keys().first().cloned() else {
        return one(compose::ERROR);
    };
    let key = req.bytes.slice(key_range);
    let (p, b) = topo.replicas(&key);
    let parts = [req.bytes.clone()];
    let st = core.stats();
    let mut failed = None;
    if topo.health(p).is_up() {
        match call_up(core, topo, p, &parts, Expect::Values).await {
            Ok(r) if r.status.is_error() || !is_miss(&r.frame) => {
                st.incr(if r.status.is_error() {
                    Counter::ServerErrors
                } else {
                    Counter::GetHits
                });
                touch_backups(core, topo, req);
                return Out::One(r.frame);
            }
            Ok(r) => {
                // A miss on the primary: the backup may hold the key (the
                // primary was flushed on rejoin, or evicted it).
                if let Some(b) = b.filter(|b| topo.health(*b).is_up()) {
                    if let Some([head, block]) = read_through(core, topo, req, &key, p, b).await {
                        st.incr(Counter::GetHits);
                        st.incr(Counter::ReadThroughHits);
                        return Out::Many(vec![head, block, Bytes::from_static(compose::END)]);
                    }
                }
                st.incr(Counter::GetMisses);
                return Out::One(r.frame);
            }
            Err(e) => failed = Some(e),
        }
    }
    let Some(b) = b else {
        st.incr(Counter::ServerErrors);
        return server_error(failed.unwrap_or(CallError::Closed));
    };
    match call_up(core, topo, b, &parts, Expect::Values).await {
        Ok(r) => {
            count_failover(st, topo, p);
            st.incr(if is_miss(&r.frame) {
                Counter::GetMisses
            } else {
                Counter::GetHits
            });
            Out::One(r.frame)
        }
        Err(e) => {
            st.incr(Counter::ServerErrors);
            server_error(failed.unwrap_or(e))
        }
    }
}

/// Fetch `key` from the backup with its flags and TTL and repair it into the
/// primary (see [`copy_item`]). Returns the VALUE line and the data block in
/// the client's retrieval form.
async fn read_through<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    req: &Req,
    key: &Bytes,
    primary: ServerId,
    backup: ServerId,
) -> Option<[Bytes; 2]> {
    let verb = req.r.verb;
    let touch = matches!(verb, Verb::Gat | Verb::Gats);
    let mut flags = BytesMut::with_capacity(32);
    flags.extend_from_slice(b"v f t c");
    if touch {
        flags.extend_from_slice(b" T");
        compose::put_i64(&mut flags, req.r.exptime);
    }
    let mut line = BytesMut::with_capacity(key.len() + 40);
    compose::compose_meta_get(&mut line, key, &flags);
    let m = core.metrics();
    let Ok(r) = call_up(core, topo, backup, &[line.freeze()], Expect::Meta).await else {
        m.read_through(ReadThrough::Error);
        return None;
    };
    let Some(item) = MetaItem::parse(&r) else {
        m.read_through(if r.status == Status::MetaEn {
            ReadThrough::Miss
        } else {
            ReadThrough::Error
        });
        return None;
    };
    m.read_through(ReadThrough::Hit);
    let cas = matches!(verb, Verb::Gets | Verb::Gats).then_some(item.cas);
    let mut head = BytesMut::with_capacity(key.len() + 48);
    compose_value_line(&mut head, key, item.flags, item.data_len, cas);
    let block = item.block.clone();
    repair(core, backup, primary, key, item);
    Some([head.freeze(), block])
}

/// An item read with `mg <key> v f t [c]`.
pub(super) struct MetaItem {
    flags: u32,
    ttl: i64,
    pub(super) cas: u64,
    data_len: usize,
    /// Data with its `\r\n`.
    block: Bytes,
}

impl MetaItem {
    pub(super) fn parse(r: &Reply) -> Option<MetaItem> {
        if r.status != Status::MetaValue {
            return None;
        }
        let line = r.frame.get(r.line.clone())?;
        let flags = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
        let num = |f: u8| compose::meta_flag(flags, f).and_then(proxy::parse_decimal);
        let end = r.data.end.checked_add(2).filter(|e| *e <= r.frame.len())?;
        Some(MetaItem {
            flags: u32::try_from(num(b'f').unwrap_or(0)).ok()?,
            ttl: num(b't').unwrap_or(-1),
            cas: num(b'c').unwrap_or(0).max(0) as u64,
            data_len: r.data.len(),
            block: r.frame.slice(r.data.start..end),
        })
    }

    /// `set`/`add` line and data that store this item under `key`.
    pub(super) fn store_parts(&self, verb: Verb, key: &[u8]) -> [Bytes; 2] {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut line = BytesMut::with_capacity(key.len() + 48);
        let exptime = proxy::ttl_to_exptime(self.ttl, now_unix);
        compose_storage_line(
            &mut line,
            verb,
            key,
            self.flags,
            exptime,
            self.data_len,
            None,
            false,
        );
        [line.freeze(), self.block.clone()]
    }
}

/// Copy a read-through hit into the primary in the background.
fn repair<B: Backend>(
    core: &Rc<Core<B>>,
    backup: ServerId,
    primary: ServerId,
    key: &[u8],
    item: MetaItem,
) {
    core.stats().incr(Counter::Repairs);
    let core = core.clone();
    let key = Bytes::copy_from_slice(key);
    tokio::task::spawn_local(async move {
        let topo = core.topology();
        copy_item(&core, &topo, backup, primary, &key, &item).await;
    });
}

/// Store `item`, just read from `src`, on `target` with `add` (never over a
/// newer value), then check that `src` still holds the same item (same cas).
/// If it changed or vanished meanwhile (a concurrent delete or write), the
/// copy is deleted again: a miss is safe, a resurrected value is not. True
/// when the copy stays.
pub(super) async fn copy_item<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    src: ServerId,
    target: ServerId,
    key: &[u8],
    item: &MetaItem,
) -> bool {
    let store = item.store_parts(Verb::Add, key);
    if !stored(call_up(core, topo, target, &store, Expect::Line).await) {
        // The target has the key already: a write reached it meanwhile.
        return false;
    }
    let mut check = BytesMut::with_capacity(key.len() + 8);
    compose::compose_meta_get(&mut check, key, b"c");
    let unchanged = match call_up(core, topo, src, &[check.freeze()], Expect::Meta).await {
        Ok(r) if r.status == Status::MetaHd => {
            let line = r.frame.get(r.line.clone()).unwrap_or_default();
            let flags = line.get(2..).unwrap_or_default();
            compose::meta_flag(flags, b'c').and_then(proxy::parse_decimal) == Some(item.cas as i64)
        }
        _ => false,
    };
    if !unchanged {
        delete(core, topo, target, key).await;
    }
    unchanged
}

/// Send a request whose reply nobody waits for (repairs, backup touches).
fn background<B: Backend>(core: &Rc<Core<B>>, id: ServerId, parts: [Bytes; 2]) {
    let core = core.clone();
    tokio::task::spawn_local(async move {
        let topo = core.topology();
        let _ = call_up(&core, &topo, id, &parts, Expect::Line).await;
    });
}

/// gat/gats touch the item: the backups' copies get the same new exptime.
fn touch_backups<B: Backend>(core: &Rc<Core<B>>, topo: &Topology, req: &Req) {
    if !matches!(req.r.verb, Verb::Gat | Verb::Gats) {
        return;
    }
    for k in req.keys() {
        let key = &req.bytes[k.clone()];
        if let (_, Some(b)) = topo.replicas(key) {
            if topo.health(b).is_up() {
                let mut line = BytesMut::with_capacity(key.len() + 24);
                compose_key_command(&mut line, b"touch", key, Some(req.r.exptime));
                background(core, b, [line.freeze(), Bytes::new()]);
            }
        }
    }
}

async fn get_many<B: Backend>(core: &Rc<Core<B>>, topo: &Topology, req: &Req) -> Out {
    let n = req.keys().len();
    let st = core.stats();
    // Where each key is asked first: its primary, or its backup when the primary is out.
    let mut target: Vec<Option<ServerId>> = Vec::with_capacity(n);
    let mut backup_of: Vec<Option<ServerId>> = Vec::with_capacity(n);
    for k in req.keys() {
        let key = &req.bytes[k.clone()];
        let (p, b) = topo.replicas(key);
        let b = b.filter(|b| topo.health(*b).is_up());
        if topo.health(p).is_up() {
            target.push(Some(p));
            backup_of.push(b);
        } else {
            if b.is_some() {
                count_failover(st, topo, p);
            }
            target.push(b);
            backup_of.push(None);
        }
    }
    let mut found: Vec<Option<Bytes>> = vec![None; n];
    // Round 1: each server gets its keys, in parallel.
    let failed = fetch_parts(core, topo, req, &target, &mut found).await;
    // Round 2: keys whose server failed go to their backups.
    let mut retry: Vec<Option<ServerId>> = vec![None; n];
    let mut any_retry = false;
    for i in 0..n {
        if let Some(t) = target[i] {
            if failed.contains(&t) {
                if let Some(b) = backup_of[i] {
                    retry[i] = Some(b);
                    any_retry = true;
                    count_failover(st, topo, t);
                }
            }
        }
    }
    if any_retry {
        fetch_parts(core, topo, req, &retry, &mut found).await;
    }
    // Read-through: misses on a primary that answered, whose backup is up.
    let misses: Vec<(usize, ServerId, ServerId)> = (0..n)
        .filter(|&i| found[i].is_none())
        .filter_map(|i| match (target[i], backup_of[i]) {
            (Some(p), Some(b)) if !failed.contains(&p) => Some((i, p, b)),
            _ => None,
        })
        .collect();
    let mut through: Vec<Option<[Bytes; 2]>> = vec![None; if misses.is_empty() { 0 } else { n }];
    if !misses.is_empty() {
        let reads = misses.iter().map(|&(i, p, b)| async move {
            let key = req.bytes.slice(req.keys()[i].clone());
            (i, read_through(core, topo, req, &key, p, b).await)
        });
        for (i, hit) in futures_util::future::join_all(reads).await {
            if hit.is_some() {
                st.incr(Counter::ReadThroughHits);
            }
            through[i] = hit;
        }
    }
    let mut out = Vec::with_capacity(n + 1);
    let mut hits = 0u64;
    for (i, f) in found.into_iter().enumerate() {
        if let Some(block) = f {
            out.push(block);
            hits += 1;
        } else if let Some(pair) = through.get_mut(i).and_then(Option::take) {
            out.extend(pair);
            hits += 1;
        }
    }
    st.add(Counter::GetHits, hits);
    st.add(Counter::GetMisses, n as u64 - hits);
    touch_backups(core, topo, req);
    out.push(Bytes::from_static(compose::END));
    Out::Many(out)
}

/// Ask every server in `target` for its keys at once; fill `found` with the
/// VALUE blocks by key index. Returns the servers that failed.
async fn fetch_parts<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    req: &Req,
    target: &[Option<ServerId>],
    found: &mut [Option<Bytes>],
) -> Vec<ServerId> {
    let mut servers: Vec<ServerId> = Vec::new();
    for t in target.iter().flatten() {
        if !servers.contains(t) {
            servers.push(*t);
        }
    }
    let verb = req.r.verb;
    let whole = servers.len() == 1 && target.iter().all(|t| t.is_some());
    let futs = servers.iter().map(|&s| {
        let parts = if whole {
            req.bytes.clone()
        } else {
            let mut line = BytesMut::with_capacity(64);
            let keys = req
                .keys()
                .iter()
                .zip(target)
                .filter(|(_, t)| **t == Some(s))
                .map(|(k, _)| &req.bytes[k.clone()]);
            compose::compose_retrieval(&mut line, verb, req.r.exptime, keys);
            line.freeze()
        };
        async move { (s, call_up(core, topo, s, &[parts], Expect::Values).await) }
    });
    let results = futures_util::future::join_all(futs).await;
    let mut failed = Vec::new();
    let mut items = Vec::new();
    for (s, r) in results {
        let frame = match r {
            Ok(r) if !r.status.is_error() => r.frame,
            _ => {
                failed.push(s);
                continue;
            }
        };
        items.clear();
        if !matches!(
            frame_response(Expect::Values, &frame, usize::MAX, &mut items),
            Ok(Framed::Complete { .. })
        ) {
            failed.push(s);
            continue;
        }
        let mut part = PartReply {
            frame,
            items: std::mem::take(&mut items),
            cursor: 0,
        };
        for (i, k) in req.keys().iter().enumerate() {
            if target[i] == Some(s) && found[i].is_none() {
                found[i] = part.take(&req.bytes[k.clone()]);
            }
        }
        items = std::mem::take(&mut part.items);
    }
    failed
}

async fn meta_read<B: Backend>(core: &Rc<Core<B>>, topo: &Topology, req: &Req) -> Out {
    let (p, b) = topo.replicas(req.key());
    let parts = upstream_parts(req);
    let mut failed = None;
    let verb = req.r.verb;
    if topo.health(p).is_up() {
        match call_up(core, topo, p, &parts, Expect::Meta).await {
            Ok(r) => {
                let miss = r.status == Status::MetaEn;
                let retry =
                    miss && verb == Verb::MetaGet && b.is_some_and(|b| topo.health(b).is_up());
                if !retry {
                    return reply_out(req, r);
                }
                if let Some(b) = b {
                    let m = core.metrics();
                    match call_up(core, topo, b, &parts, Expect::Meta).await {
                        Ok(rb) if rb.status == Status::MetaValue || rb.status == Status::MetaHd => {
                            core.stats().incr(Counter::ReadThroughHits);
                            m.read_through(ReadThrough::Hit);
                            return reply_out(req, rb);
                        }
                        Ok(rb) if rb.status == Status::MetaEn => m.read_through(ReadThrough::Miss),
                        _ => m.read_through(ReadThrough::Error),
                    }
                }
                return reply_out(req, r);
            }
            Err(e) => failed = Some(e),
        }
    }
    let Some(b) = b else {
        return server_error(failed.unwrap_or(CallError::Closed));
    };
    match call_up(core, topo, b, &parts, Expect::Meta).await {
        Ok(r) => {
            count_failover(core.stats(), topo, p);
            reply_out(req, r)
        }
        Err(e) => server_error(failed.unwrap_or(e)),
    }
}

/// The client's view of a reply: nothing under `noreply`, and nothing for
/// the outcomes meta quiet mode hides.
fn reply_out(req: &Req, r: Reply) -> Out {
    if req.r.noreply || (req.r.quiet && proxy::quiet_hides(req.r.verb, r.status)) {
        Out::Nothing
    } else {
        Out::One(r.frame)
    }
}

fn count_write(core_stats: &crate::stats::CoreStats, verb: Verb, st: Status) {
    let c = match (verb, st) {
        (Verb::Delete, Status::Deleted) => Counter::DeleteHits,
        (Verb::Delete, Status::NotFound) => Counter::DeleteMisses,
        (Verb::Incr, Status::Number(_)) => Counter::IncrHits,
        (Verb::Incr, Status::NotFound) => Counter::IncrMisses,
        (Verb::Decr, Status::Number(_)) => Counter::DecrHits,
        (Verb::Decr, Status::NotFound) => Counter::DecrMisses,
        (Verb::Cas, Status::Stored) => Counter::CasHits,
        (Verb::Cas, Status::Exists) => Counter::CasBadval,
        (Verb::Cas, Status::NotFound) => Counter::CasMisses,
        (Verb::Touch, Status::Touched) => Counter::TouchHits,
        (Verb::Touch, Status::NotFound) => Counter::TouchMisses,
        (_, s) if s.is_error() => Counter::ServerErrors,
        _ => return,
    };
    core_stats.incr(c);
}

fn silent_or(req: &Req, out: Out) -> Out {
    if req.r.noreply {
        Out::Nothing
    } else {
        out
    }
}

/// Writes: to the primary and the backup, by the verb's replication rule.
async fn write<B: Backend>(core: &Rc<Core<B>>, topo: &Topology, req: &Req) -> Out {
    let verb = req.r.verb;
    let (p, b) = topo.replicas(req.key());
    let parts = upstream_parts(req);
    let expect = verb.expect();
    let st = core.stats();
    let p_seen = topo.health(p).observe();
    let b_seen = b.map(|b| (b, topo.health(b).observe()));
    let b_up = b_seen.filter(|(_, s)| s.is_up());
    let out = match (p_seen.is_up(), b_up) {
        (false, None) => {
            st.incr(Counter::ServerErrors);
            return silent_or(req, one(compose::NO_SERVER));
        }
        // Primary out: the backup takes the write alone; the primary is now stale.
        (false, Some((b, _))) => match call_up(core, topo, b, &parts, expect).await {
            Ok(r) => {
                count_failover(st, topo, p);
                if !r.status.is_error() {
                    missed_write(topo, p, p_seen);
                }
                r
            }
            Err(e) => {
                st.incr(Counter::ServerErrors);
                return silent_or(req, server_error(e));
            }
        },
        // No backup in service.
        (true, None) => match call_up(core, topo, p, &parts, expect).await {
            Ok(r) => {
                if let Some((b, seen)) = b_seen {
                    if !r.status.is_error() {
                        missed_write(topo, b, seen);
                    }
                }
                r
            }
            Err(e) => {
                st.incr(Counter::ServerErrors);
                return silent_or(req, server_error(e));
            }
        },
        (true, Some((b, b_seen))) => match proxy::write_rule(verb, meta_flags(req)) {
            WriteRule::Mirror => {
                let (rp, rb) = futures_util::future::join(
                    call_up(core, topo, p, &parts, expect),
                    call_up(core, topo, b, &parts, expect),
                )
                .await;
                match (rp, rb) {
                    (Ok(rp), Ok(rb)) => {
                        // The backup refused what the primary took: it may
                        // hold an older value now.
                        if !rp.status.is_error() && rb.status.is_error() {
                            missed_write(topo, b, b_seen);
                        }
                        if proxy::backup_answer_wins(rp.status, rb.status) {
                            rb
                        } else {
                            rp
                        }
                    }
                    (Ok(rp), Err(_)) => {
                        if !rp.status.is_error() {
                            missed_write(topo, b, b_seen);
                        }
                        rp
                    }
                    (Err(_), Ok(rb)) => {
                        count_failover(st, topo, p);
                        if !rb.status.is_error() {
                            missed_write(topo, p, p_seen);
                        }
                        rb
                    }
                    (Err(e), Err(_)) => {
                        st.incr(Counter::ServerErrors);
                        return silent_or(req, server_error(e));
                    }
                }
            }
            WriteRule::PrimaryThenCopy => match call_up(core, topo, p, &parts, expect).await {
                Ok(rp) => {
                    let rp = if proxy::primary_may_lack(verb, rp.status) {
                        recover_from_backup(core, topo, req, p, b, &parts, rp).await
                    } else {
                        rp
                    };
                    converge(core, topo, req, p, b, b_seen, &rp).await;
                    rp
                }
                Err(_) => match call_up(core, topo, b, &parts, expect).await {
                    // The primary may or may not have applied it: the backup decides.
                    Ok(rb) => {
                        count_failover(st, topo, p);
                        missed_write(topo, p, p_seen);
                        rb
                    }
                    Err(e) => {
                        st.incr(Counter::ServerErrors);
                        return silent_or(req, server_error(e));
                    }
                },
            },
        },
    };
    count_write(st, verb, out.status);
    reply_out(req, out)
}

/// The primary answered as if it did not hold the item. If the backup holds
/// it, it is an acknowledged item the primary lost (flushed on rejoin, or
/// evicted): put it back on the primary (`add`, or `set` over the value an
/// `add` just stored wrongly) and run the command again, so incr, append,
/// replace, cas and add act on the real item. Returns the answer to use.
async fn recover_from_backup<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    req: &Req,
    p: ServerId,
    b: ServerId,
    parts: &[Bytes],
    rp: Reply,
) -> Reply {
    let key = req.key();
    let mut line = BytesMut::with_capacity(key.len() + 16);
    compose::compose_readback(&mut line, key);
    let Ok(r) = call_up(core, topo, b, &[line.freeze()], Expect::Meta).await else {
        return rp;
    };
    let Some(item) = MetaItem::parse(&r) else {
        // The backup lacks it too: the primary's answer stands.
        return rp;
    };
    let verb = req.r.verb;
    let store_verb = if verb == Verb::Add {
        Verb::Set
    } else {
        Verb::Add
    };
    let store = item.store_parts(store_verb, key);
    if call_up(core, topo, p, &store, Expect::Line).await.is_err() {
        return rp;
    }
    core.stats().incr(Counter::Repairs);
    call_up(core, topo, p, parts, verb.expect())
        .await
        .unwrap_or(rp)
}

fn meta_flags(req: &Req) -> &[u8] {
    req.bytes.get(req.r.meta_flags.clone()).unwrap_or_default()
}

/// Bring the backup in line with what the primary just did (see the table in
/// [`crate::proxy`]). If that fails, the backup cannot be trusted for this key:
/// it is marked as having missed a write.
async fn converge<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    req: &Req,
    p: ServerId,
    b: ServerId,
    b_seen: Observed,
    rp: &Reply,
) {
    let key = req.key();
    let ok = match proxy::after_primary(req.r.verb, rp.status) {
        Replicate::Nothing => true,
        Replicate::SetRequestItem => {
            let mut line = BytesMut::with_capacity(key.len() + 48);
            let len = req.r.data.len();
            compose_storage_line(
                &mut line,
                Verb::Set,
                key,
                req.r.flags,
                req.r.exptime,
                len,
                None,
                false,
            );
            let parts = [line.freeze(), req.data_block()];
            stored(call_up(core, topo, b, &parts, Expect::Line).await)
        }
        Replicate::CopyItem => {
            let mut line = BytesMut::with_capacity(key.len() + 16);
            compose::compose_readback(&mut line, key);
            match call_up(core, topo, p, &[line.freeze()], Expect::Meta).await {
                Ok(r) => match MetaItem::parse(&r) {
                    Some(item) => {
                        let parts = item.store_parts(Verb::Set, key);
                        stored(call_up(core, topo, b, &parts, Expect::Line).await)
                    }
                    None if r.status == Status::MetaEn => {
                        delete(core, topo, b, &req.key_bytes()).await
                    }
                    None => false,
                },
                Err(_) => delete(core, topo, b, &req.key_bytes()).await,
            }
        }
        Replicate::Delete => delete(core, topo, b, &req.key_bytes()).await,
    };
    if !ok {
        core.stats().incr(Counter::ReplicationErrors);
        missed_write(topo, b, b_seen);
    }
}

pub(super) fn stored(r: Result<Reply, CallError>) -> bool {
    matches!(
        r,
        Ok(Reply {
            status: Status::Stored,
            ..
        })
    )
}

pub(super) async fn delete<B: Backend>(
    core: &Rc<Core<B>>,
    topo: &Topology,
    b: ServerId,
    key: &[u8],
) -> bool {
    let mut line = BytesMut::with_capacity(key.len() + 16);
    compose_key_command(&mut line, b"delete", key, None);
    matches!(
        call_up(core, topo, b, &[line.freeze()], Expect::Line).await,
        Ok(Reply {
            status: Status::Deleted | Status::NotFound,
            ..
        })
    )
}

/// `flush_all` goes to every server; one that is out is marked so that it is
/// flushed before it serves again.
async fn flush_all<B: Backend>(core: &Rc<Core<B>>, topo: &Topology, req: &Req) -> Out {
    let parts = upstream_parts(req);
    let ids: Vec<ServerId> = (0..topo.servers.len() as u32).map(ServerId).collect();
    let futs = ids.iter().map(|&id| {
        let seen = topo.health(id).observe();
        let parts = &parts;
        async move {
            if !seen.is_up() {
                return (id, seen, None);
            }
            (
                id,
                seen,
                Some(call_up(core, topo, id, parts, Expect::Line).await),
            )
        }
    });
    let mut all_ok = true;
    let mut any_ok = false;
    for (id, seen, r) in futures_util::future::join_all(futs).await {
        match r {
            Some(Ok(Reply {
                status: Status::Ok, ..
            })) => any_ok = true,
            _ => {
                all_ok = false;
                missed_write(topo, id, seen);
            }
        }
    }
    let out = if all_ok && any_ok {
        one(compose::OK)
    } else if any_ok {
        one(b"SERVER_ERROR flush_all reached only some servers\r\n")
    } else {
        one(compose::NO_SERVER)
    };
    silent_or(req, out)
}
