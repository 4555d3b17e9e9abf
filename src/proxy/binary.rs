//! The binary protocol front end as a pure adapter: binary request frames in,
//! the text/meta request bytes the text parser and the dispatcher already
//! serve out; their text/meta reply bytes in, binary response frames out.
//!
//! Nothing here routes, replicates or fails over: the translated request
//! takes exactly the path a text client's request takes, so those guarantees
//! hold unchanged. Must not import `server`, tokio, sockets or the clock.
//!
//! # Which upstream command carries each opcode
//! Chosen so that every field of the binary response survives:
//!
//! | opcode | sent as | why |
//! | --- | --- | --- |
//! | Get, GetK, GetQ, GetKQ (a run of them) | `gets k1 k2 ...` | flags and CAS in the VALUE lines; a run is one multi-get, split per server and merged like a text one |
//! | GAT, GATK, GATQ, GATKQ | `gats <exp> <key>` | the text touch path: backups touched, read-through |
//! | Touch | `gats <exp> <key>` (value dropped) | the response carries flags and CAS |
//! | Set, Add, Replace, Append, Prepend (+Q) | `ms <key> <len> c F T [C] M<mode>` | the response carries the new CAS; a CAS in the request becomes `C` |
//! | Delete (+Q) | `delete <key>`, or `md <key> C<cas>` with a CAS | |
//! | Increment, Decrement (+Q) | `ma <key> D<delta> v c [MD] [C]` | value and CAS in `VA`; see below for the initial value |
//! | Flush (+Q) | `flush_all [<exp>]` | to every server, as for text |
//! | Version, Verbosity, Stat | `version`, `verbosity <n>`, `stats [<group>]` | |
//! | NoOp, Quit, QuitQ, SASL, unknown | answered here | |
//!
//! # Increment/Decrement with an initial value: two steps
//! memcached creates a missing counter with the initial value unless the
//! expiration is `0xffffffff`. memring first sends a plain `ma` (no auto-create),
//! so that a counter the primary lost but the backup holds is put back and
//! incremented exactly as a text `incr` is (see `recover_from_backup`). Only
//! when both replicas miss does a second `ma ... N<exp> J<initial>` create it.
//! Later requests of the same connection start only once the counter is
//! answered (see [`Plan::may_take_two_steps`]), so they never overtake the
//! second step. The race: another client may create the key between the two steps; the
//! second `ma` then increments that value instead of failing. memcached
//! itself answers "Not stored." in that window, so memring's outcome is the one
//! a client retrying would get, and no acknowledged value is ever overwritten.
//!
//! # Quiet commands
//! Every request is sent upstream loud (no `q`, no `noreply`), so that every
//! upstream request gets exactly one reply; quietness is applied here, on the
//! way back: quiet gets say nothing on a miss, quiet writes nothing on
//! success, errors are always answered. Replies leave in request order, so a
//! NoOp (or any loud command) after quiet ones comes after all their answers.
//!
//! # Deviations from memcached 1.6
//! - Keys with bytes <= 0x20 or 0x7f cannot travel in the text protocol:
//!   answered "Invalid arguments" (memcached stores them).
//! - Verbosity, which memcached 1.6 answers "Unknown command", is served.
//! - When no server can serve a request: status 0x84 (internal error) with
//!   the proxy's message as the body.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::binary::{self as bin, compose_error, compose_response, FrameError, Opcode};
use crate::protocol::compose::put_u64;
use crate::protocol::{frame_response, Expect, Framed, Status, MAX_KEYS, MAX_LINE_LEN};

/// Expiration that tells Increment/Decrement not to create a missing counter.
const NO_CREATE: u32 = 0xffff_ffff;

/// What the connection does next with its buffer.
#[derive(Debug)]
pub enum Step {
    /// More bytes are needed. Not an error.
    Incomplete,
    /// Close the connection without an answer (bad magic).
    Close,
    /// Answer without any server: consume `consumed` bytes, then swallow
    /// `swallow` more as they arrive; write `reply` (may be empty) and close
    /// after it if `close`.
    Answer {
        /// Bytes of the buffer this step used.
        consumed: usize,
        /// Bytes beyond the buffer to discard as they arrive.
        swallow: usize,
        /// The response frames; empty for silence.
        reply: Bytes,
        /// Close after writing `reply`.
        close: bool,
    },
    /// Serve `request` (text/meta bytes) like a text client's, then turn its
    /// reply into binary with `plan`.
    Forward {
        /// Bytes of the buffer this step used (one frame, or a run of gets).
        consumed: usize,
        /// Bytes beyond the buffer to discard as they arrive (the value of
        /// a set refused as too large).
        swallow: usize,
        /// The text/meta request.
        request: Bytes,
        /// How to translate its reply.
        plan: Plan,
    },
}

/// One get of a run: enough to answer it.
#[derive(Clone, Debug)]
struct GetSlot {
    opcode: Opcode,
    opaque: u32,
    key: Bytes,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Gets and GATs: one slot per key, in order.
    Get(Vec<GetSlot>),
    /// Touch: flags and CAS, no value.
    Touch,
    /// ms: Set, Add, Replace, Append, Prepend.
    Store,
    /// `delete`, or `md` (`meta`) when the request carried a CAS.
    Delete { meta: bool },
    /// `ma`; `create` is the second step's request when a miss should create.
    Arith { create: Option<Bytes> },
    /// `flush_all`, `verbosity`: `OK`.
    Ok,
    /// `version`
    Version,
    /// `stats`
    Stat,
    /// The `delete` that follows a set refused as too large: "Too large.".
    TooLarge,
}

/// How to turn the text/meta reply of a forwarded request into binary.
#[derive(Clone, Debug)]
pub struct Plan {
    opcode: Opcode,
    opaque: u32,
    kind: Kind,
}

/// A translated reply.
#[derive(Debug)]
pub enum Translated {
    /// The response frames; empty for silence.
    Reply(Bytes),
    /// Serve this request next and translate its reply with the plan (the
    /// second step of Increment/Decrement with an initial value).
    Then {
        /// The text/meta request.
        request: Bytes,
        /// How to translate its reply.
        plan: Plan,
    },
}

/// Whether `key` can travel in a text/meta command line.
fn key_ok(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= crate::protocol::MAX_KEY_LEN
        && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

fn answer(consumed: usize, reply: BytesMut) -> Step {
    Step::Answer {
        consumed,
        swallow: 0,
        reply: reply.freeze(),
        close: false,
    }
}

fn error_frame(opcode: u8, status: bin::Status, opaque: u32) -> BytesMut {
    let mut out = BytesMut::with_capacity(bin::HEADER_LEN + 48);
    compose_error(&mut out, opcode, status, opaque);
    out
}

/// Decide what to do with the front of a binary connection's buffer.
/// `max_item_size` bounds storage values. Never panics on any input.
pub fn next_step(buf: &[u8], max_item_size: usize) -> Step {
    let frame = match bin::parse_request(buf, max_item_size) {
        bin::Parsed::Incomplete => return Step::Incomplete,
        bin::Parsed::Error(FrameError::BadMagic) => return Step::Close,
        bin::Parsed::Error(FrameError::Reject {
            opcode,
            opaque,
            status: bin::Status::TooLarge,
            skip,
            ..
        }) if matches!(Opcode::from_u8(opcode), Some(Opcode::Set | Opcode::SetQ)) => {
            return too_large_set(buf, opcode, opaque, skip)
        }
        bin::Parsed::Error(FrameError::Reject {
            opcode,
            opaque,
            status,
            skip,
            close,
        }) => {
            let consumed = skip.min(buf.len());
            return Step::Answer {
                consumed,
                swallow: skip - consumed,
                reply: error_frame(opcode, status, opaque).freeze(),
                close,
            };
        }
        bin::Parsed::Complete(f) => f,
    };
    let op = frame.opcode;
    let h = frame.header;
    let at = |r: &Range<usize>| buf.get(r.clone()).unwrap_or_default();
    let key = at(&frame.key);
    let extras = at(&frame.extras);
    let value = at(&frame.value);
    let be32 = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map_or(0, u32::from_be_bytes)
    };
    let be64 = |b: &[u8], i: usize| {
        b.get(i..i + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map_or(0, u64::from_be_bytes)
    };
    let consumed = frame.consumed;
    let plan = |kind: Kind| Plan {
        opcode: op,
        opaque: h.opaque,
        kind,
    };
    let needs_key = !matches!(
        op.loud(),
        Opcode::NoOp
            | Opcode::Quit
            | Opcode::Version
            | Opcode::Flush
            | Opcode::Verbosity
            | Opcode::Stat
    );
    // A stat group may have arguments (`detail on`), but no line breaks.
    let stat_ok = key.iter().all(|&b| b >= b' ' && b != 0x7f);
    if (needs_key && !key_ok(key)) || (op == Opcode::Stat && !stat_ok) {
        let status = if op == Opcode::Stat {
            bin::Status::KeyNotFound
        } else {
            bin::Status::InvalidArguments
        };
        return answer(consumed, error_frame(op as u8, status, h.opaque));
    }
    let mut req = BytesMut::with_capacity(key.len() + value.len() + 64);
    let kind = match op.loud() {
        Opcode::Get | Opcode::GetK => return get_run(buf, max_item_size),
        Opcode::NoOp => {
            let mut out = BytesMut::with_capacity(bin::HEADER_LEN);
            compose_response(
                &mut out,
                op as u8,
                bin::Status::Success,
                h.opaque,
                0,
                b"",
                b"",
                b"",
            );
            return answer(consumed, out);
        }
        Opcode::Quit => {
            let mut out = BytesMut::new();
            if !op.is_quiet() {
                compose_response(
                    &mut out,
                    op as u8,
                    bin::Status::Success,
                    h.opaque,
                    0,
                    b"",
                    b"",
                    b"",
                );
            }
            return Step::Answer {
                consumed,
                swallow: 0,
                reply: out.freeze(),
                close: true,
            };
        }
        Opcode::Gat | Opcode::GatK | Opcode::Touch => {
            req.extend_from_slice(b"gats ");
            put_u64(&mut req, u64::from(be32(extras, 0)));
            req.put_u8(b' ');
            req.extend_from_slice(key);
            req.extend_from_slice(b"\r\n");
            let request = req.freeze();
            let key = request.slice(request.len() - 2 - key.len()..request.len() - 2);
            let kind = if op == Opcode::Touch {
                Kind::Touch
            } else {
                Kind::Get(vec![GetSlot {
                    opcode: op,
                    opaque: h.opaque,
                    key,
                }])
            };
            return Step::Forward {
                consumed,
                swallow: 0,
                request,
                plan: plan(kind),
            };
        }
        Opcode::Set | Opcode::Add | Opcode::Replace | Opcode::Append | Opcode::Prepend => {
            req.extend_from_slice(b"ms ");
            req.extend_from_slice(key);
            req.put_u8(b' ');
            put_u64(&mut req, value.len() as u64);
            req.extend_from_slice(b" c");
            if matches!(op.loud(), Opcode::Set | Opcode::Add | Opcode::Replace) {
                req.extend_from_slice(b" F");
                put_u64(&mut req, u64::from(be32(extras, 0)));
                req.extend_from_slice(b" T");
                put_u64(&mut req, u64::from(be32(extras, 4)));
            }
            if h.cas != 0 {
                req.extend_from_slice(b" C");
                put_u64(&mut req, h.cas);
            }
            req.extend_from_slice(match op.loud() {
                Opcode::Add => b" ME",
                Opcode::Replace => b" MR",
                Opcode::Append => b" MA",
                Opcode::Prepend => b" MP",
                _ => b" MS",
            });
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\n");
            Kind::Store
        }
        Opcode::Delete => {
            if h.cas != 0 {
                req.extend_from_slice(b"md ");
                req.extend_from_slice(key);
                req.extend_from_slice(b" C");
                put_u64(&mut req, h.cas);
            } else {
                req.extend_from_slice(b"delete ");
                req.extend_from_slice(key);
            }
            req.extend_from_slice(b"\r\n");
            Kind::Delete { meta: h.cas != 0 }
        }
        Opcode::Increment | Opcode::Decrement => {
            let delta = be64(extras, 0);
            let initial = be64(extras, 8);
            let exp = be32(extras, 16);
            let ma = |out: &mut BytesMut, create: bool| {
                out.extend_from_slice(b"ma ");
                out.extend_from_slice(key);
                out.extend_from_slice(b" D");
                put_u64(out, delta);
                out.extend_from_slice(b" v c");
                if op.loud() == Opcode::Decrement {
                    out.extend_from_slice(b" MD");
                }
                if create {
                    out.extend_from_slice(b" N");
                    put_u64(out, u64::from(exp));
                    out.extend_from_slice(b" J");
                    put_u64(out, initial);
                } else if h.cas != 0 {
                    out.extend_from_slice(b" C");
                    put_u64(out, h.cas);
                }
                out.extend_from_slice(b"\r\n");
            };
            ma(&mut req, false);
            let create = (exp != NO_CREATE).then(|| {
                let mut second = BytesMut::with_capacity(key.len() + 80);
                ma(&mut second, true);
                second.freeze()
            });
            Kind::Arith { create }
        }
        Opcode::Flush => {
            req.extend_from_slice(b"flush_all");
            let exp = be32(extras, 0);
            if exp != 0 {
                req.put_u8(b' ');
                put_u64(&mut req, u64::from(exp));
            }
            req.extend_from_slice(b"\r\n");
            Kind::Ok
        }
        Opcode::Verbosity => {
            req.extend_from_slice(b"verbosity ");
            put_u64(&mut req, u64::from(be32(extras, 0)));
            req.extend_from_slice(b"\r\n");
            Kind::Ok
        }
        Opcode::Version => {
            req.extend_from_slice(b"version\r\n");
            Kind::Version
        }
        Opcode::Stat => {
            req.extend_from_slice(b"stats");
            if !key.is_empty() {
                req.put_u8(b' ');
                req.extend_from_slice(key);
            }
            req.extend_from_slice(b"\r\n");
            Kind::Stat
        }
        // SASL and unknown opcodes never make a Frame; quiet forms were mapped by `loud`.
        _ => {
            return answer(
                consumed,
                error_frame(op as u8, bin::Status::UnknownCommand, h.opaque),
            )
        }
    };
    Step::Forward {
        consumed,
        swallow: 0,
        request: req.freeze(),
        plan: plan(kind),
    }
}

/// A Set refused as too large: memcached answers "Too large." and removes the
/// key's old value, so that no stale value outlives a failed set. The key is
/// waited for (at most 24 + 255 + 250 bytes); the value is swallowed.
fn too_large_set(buf: &[u8], opcode: u8, opaque: u32, skip: usize) -> Step {
    let Some(h) = bin::Header::decode(buf) else {
        return Step::Incomplete;
    };
    let start = bin::HEADER_LEN + usize::from(h.extras_len);
    let end = start + usize::from(h.key_len);
    let Some(key) = buf.get(start..end) else {
        return Step::Incomplete;
    };
    let consumed = skip.min(buf.len());
    let swallow = skip - consumed;
    let Some(op) = Opcode::from_u8(opcode).filter(|_| key_ok(key)) else {
        return Step::Answer {
            consumed,
            swallow,
            reply: error_frame(opcode, bin::Status::TooLarge, opaque).freeze(),
            close: false,
        };
    };
    let mut req = BytesMut::with_capacity(key.len() + 10);
    req.extend_from_slice(b"delete ");
    req.extend_from_slice(key);
    req.extend_from_slice(b"\r\n");
    Step::Forward {
        consumed,
        swallow,
        request: req.freeze(),
        plan: Plan {
            opcode: op,
            opaque,
            kind: Kind::TooLarge,
        },
    }
}

/// A run of Get/GetK/GetQ/GetKQ frames at the front of `buf` (the first is
/// one), as one `gets` line. The run stops at the first other frame, an
/// incomplete one, or a key the text protocol cannot carry.
fn get_run(buf: &[u8], max_item_size: usize) -> Step {
    let mut line = BytesMut::with_capacity(64);
    line.extend_from_slice(b"gets");
    let mut slots: Vec<(Opcode, u32, Range<usize>)> = Vec::new();
    let mut pos = 0;
    while slots.len() < MAX_KEYS {
        let Some(rest) = buf.get(pos..) else { break };
        let bin::Parsed::Complete(f) = bin::parse_request(rest, max_item_size) else {
            break;
        };
        if !matches!(f.opcode.loud(), Opcode::Get | Opcode::GetK) {
            break;
        }
        let key = rest.get(f.key.clone()).unwrap_or_default();
        // Leave room for the terminator within the text line limit.
        if !key_ok(key) || line.len() + 1 + key.len() + 2 > MAX_LINE_LEN {
            break;
        }
        line.put_u8(b' ');
        let start = line.len();
        line.extend_from_slice(key);
        slots.push((f.opcode, f.header.opaque, start..line.len()));
        pos += f.consumed;
    }
    line.extend_from_slice(b"\r\n");
    let request = line.freeze();
    let Some(&(opcode, opaque, _)) = slots.first() else {
        // Only reachable if the first frame changed under us: never for a pure function.
        return Step::Incomplete;
    };
    let slots = slots
        .into_iter()
        .map(|(opcode, opaque, r)| GetSlot {
            opcode,
            opaque,
            key: request.slice(r),
        })
        .collect();
    Step::Forward {
        consumed: pos,
        swallow: 0,
        request,
        plan: Plan {
            opcode,
            opaque,
            kind: Kind::Get(slots),
        },
    }
}

/// The binary status for an `ERROR`/`CLIENT_ERROR`/`SERVER_ERROR` line, and
/// the body to send with it.
fn error_of(line: &[u8]) -> (bin::Status, &[u8]) {
    let msg = |prefix: &[u8]| line.strip_prefix(prefix).unwrap_or_default();
    if line.starts_with(b"SERVER_ERROR object too large") {
        (bin::Status::TooLarge, bin::Status::TooLarge.message())
    } else if line.starts_with(b"SERVER_ERROR out of memory") {
        (bin::Status::OutOfMemory, bin::Status::OutOfMemory.message())
    } else if line.starts_with(b"CLIENT_ERROR cannot increment or decrement non-numeric value") {
        (bin::Status::NonNumeric, bin::Status::NonNumeric.message())
    } else if line.starts_with(b"CLIENT_ERROR") {
        (
            bin::Status::InvalidArguments,
            bin::Status::InvalidArguments.message(),
        )
    } else if line.starts_with(b"SERVER_ERROR ") {
        (bin::Status::InternalError, msg(b"SERVER_ERROR "))
    } else {
        (
            bin::Status::UnknownCommand,
            bin::Status::UnknownCommand.message(),
        )
    }
}

/// The reply as one contiguous buffer (it usually is one already).
fn joined(reply: &[Bytes]) -> Bytes {
    match reply {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut out = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for b in many {
                out.extend_from_slice(b);
            }
            out.freeze()
        }
    }
}

/// The decimal value of meta flag `flag` in a meta reply line.
fn meta_number(line: &[u8], flag: u8) -> Option<u64> {
    let flags = line.get(2..).unwrap_or_default();
    let tok = crate::protocol::compose::meta_flag(flags, flag)?;
    crate::protocol::request::parse_u64(tok)
}

impl Plan {
    /// The opcode of the (first) request this plan answers.
    pub fn opcode(&self) -> Opcode {
        self.opcode
    }

    /// Whether the reply may need a second request ([`Translated::Then`]).
    /// Later requests of the connection must not start before this one is
    /// answered, or they would overtake its second step.
    pub fn may_take_two_steps(&self) -> bool {
        matches!(self.kind, Kind::Arith { create: Some(_) })
    }

    /// Turn the text/meta reply (its buffers in order) into binary.
    pub fn translate(self, reply: &[Bytes]) -> Translated {
        let text = joined(reply);
        let mut out = BytesMut::with_capacity(text.len() + 64);
        let Plan {
            opcode,
            opaque,
            kind,
        } = self;
        let quiet = opcode.is_quiet();
        let op = opcode as u8;
        let expect = match kind {
            Kind::Get(_) | Kind::Touch => Expect::Values,
            Kind::Store | Kind::Arith { .. } | Kind::Delete { meta: true } => Expect::Meta,
            Kind::Stat => Expect::Stats,
            Kind::Delete { meta: false } | Kind::Ok | Kind::Version | Kind::TooLarge => {
                Expect::Line
            }
        };
        let mut items = Vec::new();
        let framed = frame_response(expect, &text, usize::MAX, &mut items);
        let (status, line, data) = match framed {
            Ok(Framed::Complete {
                status, line, data, ..
            }) => (status, line, data),
            // A reply the framer does not take cannot come from the
            // dispatcher; answer an internal error rather than nothing.
            _ => (Status::ServerError, 0..0, 0..0),
        };
        let line = text.get(line).unwrap_or_default();
        if status == Status::Error && matches!(kind, Kind::Stat) {
            // An unknown stats group, as memcached answers it.
            compose_error(&mut out, op, bin::Status::KeyNotFound, opaque);
            return Translated::Reply(out.freeze());
        }
        if status.is_error() && !matches!(kind, Kind::TooLarge) {
            let (st, body) = error_of(line);
            let slots = match &kind {
                Kind::Get(slots) => slots.iter().map(|s| (s.opcode as u8, s.opaque)).collect(),
                _ => vec![(op, opaque)],
            };
            for (op, opaque) in slots {
                compose_response(&mut out, op, st, opaque, 0, b"", b"", body);
            }
            return Translated::Reply(out.freeze());
        }
        let ok = |out: &mut BytesMut, cas: u64, value: &[u8]| {
            if !quiet {
                compose_response(out, op, bin::Status::Success, opaque, cas, b"", b"", value);
            }
        };
        let fail = |out: &mut BytesMut, st: bin::Status| compose_error(out, op, st, opaque);
        match kind {
            // Whatever the delete found, the set failed.
            Kind::TooLarge => compose_error(&mut out, op, bin::Status::TooLarge, opaque),
            Kind::Get(slots) => {
                let mut cursor = 0;
                for s in slots {
                    let hit = items
                        .get(cursor)
                        .filter(|it| text.get(it.key.clone()) == Some(&s.key[..]));
                    let sop = s.opcode as u8;
                    match hit {
                        Some(it) => {
                            cursor += 1;
                            let key: &[u8] = if s.opcode.returns_key() { &s.key } else { b"" };
                            let value = text.get(it.data.clone()).unwrap_or_default();
                            compose_response(
                                &mut out,
                                sop,
                                bin::Status::Success,
                                s.opaque,
                                it.cas.unwrap_or(0),
                                &it.flags.to_be_bytes(),
                                key,
                                value,
                            );
                        }
                        None if s.opcode.is_quiet() => {}
                        None if s.opcode.returns_key() => compose_response(
                            &mut out,
                            sop,
                            bin::Status::KeyNotFound,
                            s.opaque,
                            0,
                            b"",
                            &s.key,
                            b"",
                        ),
                        None => compose_error(&mut out, sop, bin::Status::KeyNotFound, s.opaque),
                    }
                }
            }
            Kind::Touch => match items.first() {
                Some(it) => compose_response(
                    &mut out,
                    op,
                    bin::Status::Success,
                    opaque,
                    it.cas.unwrap_or(0),
                    &it.flags.to_be_bytes(),
                    b"",
                    b"",
                ),
                None => fail(&mut out, bin::Status::KeyNotFound),
            },
            Kind::Store => match status {
                Status::MetaHd => ok(&mut out, meta_number(line, b'c').unwrap_or(0), b""),
                Status::MetaNs => fail(
                    &mut out,
                    match opcode.loud() {
                        Opcode::Add => bin::Status::KeyExists,
                        Opcode::Replace => bin::Status::KeyNotFound,
                        _ => bin::Status::NotStored,
                    },
                ),
                Status::MetaEx => fail(&mut out, bin::Status::KeyExists),
                Status::MetaNf => fail(&mut out, bin::Status::KeyNotFound),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Kind::Delete { .. } => match status {
                Status::Deleted | Status::MetaHd => ok(&mut out, 0, b""),
                Status::NotFound | Status::MetaNf => fail(&mut out, bin::Status::KeyNotFound),
                Status::MetaEx => fail(&mut out, bin::Status::KeyExists),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Kind::Arith { create } => match status {
                Status::MetaValue => {
                    let digits = text.get(data).unwrap_or_default();
                    match crate::protocol::request::parse_u64(digits) {
                        Some(v) => ok(
                            &mut out,
                            meta_number(line, b'c').unwrap_or(0),
                            &v.to_be_bytes(),
                        ),
                        None => fail(&mut out, bin::Status::NonNumeric),
                    }
                }
                Status::MetaNf => match create {
                    Some(request) => {
                        return Translated::Then {
                            request,
                            plan: Plan {
                                opcode,
                                opaque,
                                kind: Kind::Arith { create: None },
                            },
                        }
                    }
                    None => fail(&mut out, bin::Status::KeyNotFound),
                },
                Status::MetaEx => fail(&mut out, bin::Status::KeyExists),
                Status::MetaNs => fail(&mut out, bin::Status::NotStored),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Kind::Ok => match status {
                Status::Ok => ok(&mut out, 0, b""),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Kind::Version => {
                let v = line.strip_prefix(b"VERSION ").unwrap_or_default();
                compose_response(&mut out, op, bin::Status::Success, opaque, 0, b"", b"", v);
            }
            Kind::Stat => {
                if status == Status::Stats {
                    for l in text.split(|&b| b == b'\n') {
                        let l = l.strip_suffix(b"\r").unwrap_or(l);
                        let Some(rest) = l.strip_prefix(b"STAT ") else {
                            continue;
                        };
                        let (name, value) = match rest.iter().position(|&b| b == b' ') {
                            Some(i) => (&rest[..i], &rest[i + 1..]),
                            None => (rest, &b""[..]),
                        };
                        compose_response(
                            &mut out,
                            op,
                            bin::Status::Success,
                            opaque,
                            0,
                            b"",
                            name,
                            value,
                        );
                    }
                }
                // The terminator: an empty stat (also the whole answer to `reset`).
                compose_response(&mut out, op, bin::Status::Success, opaque, 0, b"", b"", b"");
            }
        }
        Translated::Reply(out.freeze())
    }
}
