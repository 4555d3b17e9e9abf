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
//! # Keys of any bytes
//! A key with bytes <= 0x20 or 0x7f cannot travel in a text command line.
//! Gets, stores, deletes and arithmetic send it base64-encoded in meta
//! commands with the `b` flag (`mg`, `ms`, `md`, `ma`), which memcached
//! stores under the decoded key, and the engine places it by those decoded
//! bytes: the same server whichever protocol wrote it, and meta clients with
//! `b` read it back.
//!
//! # Deviations from memcached 1.6
//! - A key of any bytes longer than 186 bytes (its base64 form would pass
//!   memcached's 250-byte key limit), and such a key in GAT or Touch (no
//!   meta form also touches the backups), is answered "Invalid arguments"
//!   (memcached stores them).
//! - Verbosity, which memcached 1.6 answers "Unknown command", is served.
//! - When no server can serve a request: status 0x84 (internal error) with
//!   the proxy's message as the body.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::binary::{self as bin, compose_error, compose_response, BadFrame, Opcode};
use crate::protocol::compose::put_u64;
use crate::protocol::{frame_response, Expect, Framed, Status, MAX_LINE_LEN};

/// Most gets of one run joined into one multi-get (it also stays under
/// the text line limit, checked separately).
const MAX_KEYS: usize = 8192;

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
enum Shape {
    /// Gets and GATs: one slot per key, in order.
    Get(Vec<GetSlot>),
    /// A get of a key the text protocol cannot carry, as `mg <base64> b v f c`.
    MetaGet(GetSlot),
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
    kind: Shape,
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

/// Longest key of any bytes that travels as a meta base64 key: its base64
/// form must fit memcached's 250-byte key token (186 bytes -> 248).
const MAX_BASE64_KEY: usize = 186;

/// Whether `key` (not text-safe) can travel base64-encoded with the meta
/// `b` flag, as memcached's binary protocol would store it.
fn base64_ok(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_BASE64_KEY
}

/// The key as it goes in a command line: itself when text-safe, else its
/// base64 form (the command then carries the `b` flag).
fn wire_key(key: &[u8]) -> (std::borrow::Cow<'_, [u8]>, bool) {
    if key_ok(key) {
        (std::borrow::Cow::Borrowed(key), false)
    } else {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        (std::borrow::Cow::Owned(text.into_bytes()), true)
    }
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
        bin::ParsedFrame::Incomplete => return Step::Incomplete,
        bin::ParsedFrame::Error(BadFrame::BadMagic) => return Step::Close,
        bin::ParsedFrame::Error(BadFrame::Reject {
            opcode,
            opaque,
            status: bin::Status::TooLarge,
            skip,
            ..
        }) if matches!(Opcode::from_u8(opcode), Some(Opcode::Set | Opcode::SetQ)) => {
            return too_large_set(buf, opcode, opaque, skip)
        }
        bin::ParsedFrame::Error(BadFrame::Reject {
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
        bin::ParsedFrame::Complete(f) => f,
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
    let plan = |kind: Shape| Plan {
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
    // Keys of any bytes travel base64 in meta commands; the touches
    // (GAT, Touch) have no meta form that also touches the backups.
    let meta_carries = matches!(
        op.loud(),
        Opcode::Get
            | Opcode::GetK
            | Opcode::Set
            | Opcode::Add
            | Opcode::Replace
            | Opcode::Append
            | Opcode::Prepend
            | Opcode::Delete
            | Opcode::Increment
            | Opcode::Decrement
    ) && base64_ok(key);
    if (needs_key && !key_ok(key) && !meta_carries) || (op == Opcode::Stat && !stat_ok) {
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
                Shape::Touch
            } else {
                Shape::Get(vec![GetSlot {
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
            let (wkey, b64) = wire_key(key);
            req.extend_from_slice(b"ms ");
            req.extend_from_slice(&wkey);
            req.put_u8(b' ');
            put_u64(&mut req, value.len() as u64);
            if b64 {
                req.extend_from_slice(b" b");
            }
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
            Shape::Store
        }
        Opcode::Delete => {
            let (wkey, b64) = wire_key(key);
            let meta = h.cas != 0 || b64;
            if meta {
                req.extend_from_slice(b"md ");
                req.extend_from_slice(&wkey);
                if b64 {
                    req.extend_from_slice(b" b");
                }
                if h.cas != 0 {
                    req.extend_from_slice(b" C");
                    put_u64(&mut req, h.cas);
                }
            } else {
                req.extend_from_slice(b"delete ");
                req.extend_from_slice(key);
            }
            req.extend_from_slice(b"\r\n");
            Shape::Delete { meta }
        }
        Opcode::Increment | Opcode::Decrement => {
            let delta = be64(extras, 0);
            let initial = be64(extras, 8);
            let exp = be32(extras, 16);
            let (wkey, b64) = wire_key(key);
            let ma = |out: &mut BytesMut, create: bool| {
                out.extend_from_slice(b"ma ");
                out.extend_from_slice(&wkey);
                if b64 {
                    out.extend_from_slice(b" b");
                }
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
            Shape::Arith { create }
        }
        Opcode::Flush => {
            req.extend_from_slice(b"flush_all");
            let exp = be32(extras, 0);
            if exp != 0 {
                req.put_u8(b' ');
                put_u64(&mut req, u64::from(exp));
            }
            req.extend_from_slice(b"\r\n");
            Shape::Ok
        }
        Opcode::Verbosity => {
            req.extend_from_slice(b"verbosity ");
            put_u64(&mut req, u64::from(be32(extras, 0)));
            req.extend_from_slice(b"\r\n");
            Shape::Ok
        }
        Opcode::Version => {
            req.extend_from_slice(b"version\r\n");
            Shape::Version
        }
        Opcode::Stat => {
            req.extend_from_slice(b"stats");
            if !key.is_empty() {
                req.put_u8(b' ');
                req.extend_from_slice(key);
            }
            req.extend_from_slice(b"\r\n");
            Shape::Stat
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
    let Some(op) = Opcode::from_u8(opcode).filter(|_| key_ok(key) || base64_ok(key)) else {
        return Step::Answer {
            consumed,
            swallow,
            reply: error_frame(opcode, bin::Status::TooLarge, opaque).freeze(),
            close: false,
        };
    };
    let mut req = BytesMut::with_capacity(key.len() + 10);
    let (wkey, b64) = wire_key(key);
    if b64 {
        req.extend_from_slice(b"md ");
        req.extend_from_slice(&wkey);
        req.extend_from_slice(b" b\r\n");
    } else {
        req.extend_from_slice(b"delete ");
        req.extend_from_slice(key);
        req.extend_from_slice(b"\r\n");
    }
    Step::Forward {
        consumed,
        swallow,
        request: req.freeze(),
        plan: Plan {
            opcode: op,
            opaque,
            kind: Shape::TooLarge,
        },
    }
}

/// A get of a key the text protocol cannot carry: `mg <base64> b v f c`,
/// alone (its reply has no key to match a run's replies by).
fn meta_get(opcode: Opcode, opaque: u32, key: &[u8], consumed: usize) -> Step {
    let (wkey, _) = wire_key(key);
    let mut req = BytesMut::with_capacity(wkey.len() + 16);
    req.extend_from_slice(b"mg ");
    req.extend_from_slice(&wkey);
    req.extend_from_slice(b" b v f c\r\n");
    Step::Forward {
        consumed,
        swallow: 0,
        request: req.freeze(),
        plan: Plan {
            opcode,
            opaque,
            kind: Shape::MetaGet(GetSlot {
                opcode,
                opaque,
                key: Bytes::copy_from_slice(key),
            }),
        },
    }
}

/// A run of Get/GetK/GetQ/GetKQ frames at the front of `buf` (the first is
/// one), as one `gets` line. The run stops at the first other frame, an
/// incomplete one, or a key the text protocol cannot carry (a first frame
/// with such a key is sent alone as a meta get).
fn get_run(buf: &[u8], max_item_size: usize) -> Step {
    if let bin::ParsedFrame::Complete(f) = bin::parse_request(buf, max_item_size) {
        let key = buf.get(f.key.clone()).unwrap_or_default();
        if !key_ok(key) {
            return meta_get(f.opcode, f.header.opaque, key, f.consumed);
        }
    }
    let mut line = BytesMut::with_capacity(64);
    line.extend_from_slice(b"gets");
    let mut slots: Vec<(Opcode, u32, Range<usize>)> = Vec::new();
    let mut pos = 0;
    while slots.len() < MAX_KEYS {
        let Some(rest) = buf.get(pos..) else { break };
        let bin::ParsedFrame::Complete(f) = bin::parse_request(rest, max_item_size) else {
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
            kind: Shape::Get(slots),
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

/// The values a meta reply line (`VA 2 f30 c9`, `HD c9`) carries.
fn reply_values(line: &[u8]) -> crate::protocol::ReplyValues {
    crate::protocol::ReplyValues::parse(line.get(2..).unwrap_or_default())
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
        matches!(self.kind, Shape::Arith { create: Some(_) })
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
            Shape::Get(_) | Shape::Touch => Expect::Values,
            Shape::MetaGet(_) => Expect::Meta,
            Shape::Store | Shape::Arith { .. } | Shape::Delete { meta: true } => Expect::Meta,
            Shape::Stat => Expect::Stats,
            Shape::Delete { meta: false } | Shape::Ok | Shape::Version => Expect::Line,
            // `delete`, or `md ... b` for a key of any bytes: its outcome
            // does not matter, the set failed.
            Shape::TooLarge => {
                if text.starts_with(b"HD") || text.starts_with(b"NF") {
                    Expect::Meta
                } else {
                    Expect::Line
                }
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
        if status == Status::Error && matches!(kind, Shape::Stat) {
            // An unknown stats group, as memcached answers it.
            compose_error(&mut out, op, bin::Status::KeyNotFound, opaque);
            return Translated::Reply(out.freeze());
        }
        if status.is_error() && !matches!(kind, Shape::TooLarge) {
            let (st, body) = error_of(line);
            let slots = match &kind {
                Shape::Get(slots) => slots.iter().map(|s| (s.opcode as u8, s.opaque)).collect(),
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
            Shape::TooLarge => compose_error(&mut out, op, bin::Status::TooLarge, opaque),
            Shape::Get(slots) => {
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
            Shape::MetaGet(s) => match status {
                Status::MetaValue => {
                    let key: &[u8] = if s.opcode.returns_key() { &s.key } else { b"" };
                    let flags = reply_values(line).client_flags.unwrap_or(0) as u32;
                    compose_response(
                        &mut out,
                        op,
                        bin::Status::Success,
                        opaque,
                        reply_values(line).cas.unwrap_or(0),
                        &flags.to_be_bytes(),
                        key,
                        text.get(data).unwrap_or_default(),
                    );
                }
                Status::MetaEn if quiet => {}
                Status::MetaEn if s.opcode.returns_key() => compose_response(
                    &mut out,
                    op,
                    bin::Status::KeyNotFound,
                    opaque,
                    0,
                    b"",
                    &s.key,
                    b"",
                ),
                Status::MetaEn => fail(&mut out, bin::Status::KeyNotFound),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Shape::Touch => match items.first() {
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
            Shape::Store => match status {
                Status::MetaHd => ok(&mut out, reply_values(line).cas.unwrap_or(0), b""),
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
            Shape::Delete { .. } => match status {
                Status::Deleted | Status::MetaHd => ok(&mut out, 0, b""),
                Status::NotFound | Status::MetaNf => fail(&mut out, bin::Status::KeyNotFound),
                Status::MetaEx => fail(&mut out, bin::Status::KeyExists),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Shape::Arith { create } => match status {
                Status::MetaValue => {
                    let digits = text.get(data).unwrap_or_default();
                    match crate::protocol::parse_u64(digits) {
                        Some(v) => ok(
                            &mut out,
                            reply_values(line).cas.unwrap_or(0),
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
                                kind: Shape::Arith { create: None },
                            },
                        }
                    }
                    None => fail(&mut out, bin::Status::KeyNotFound),
                },
                Status::MetaEx => fail(&mut out, bin::Status::KeyExists),
                Status::MetaNs => fail(&mut out, bin::Status::NotStored),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Shape::Ok => match status {
                Status::Ok => ok(&mut out, 0, b""),
                _ => fail(&mut out, bin::Status::InternalError),
            },
            Shape::Version => {
                let v = line.strip_prefix(b"VERSION ").unwrap_or_default();
                compose_response(&mut out, op, bin::Status::Success, opaque, 0, b"", b"", v);
            }
            Shape::Stat => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::binary::{
        arithmetic_extras as incr_extras, request_frame as req, storage_extras as set_extras,
    };
    use proptest::prelude::*;

    const MAX_ITEM: usize = 1024;

    fn forward(wire: &[u8]) -> (usize, Bytes, Plan) {
        match next_step(wire, MAX_ITEM) {
            Step::Forward {
                consumed,
                swallow: 0,
                request,
                plan,
            } => (consumed, request, plan),
            other => panic!("not forwarded: {other:?}"),
        }
    }

    fn response(
        op: Opcode,
        status: bin::Status,
        opaque: u32,
        cas: u64,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Vec<u8> {
        let mut out = BytesMut::new();
        compose_response(&mut out, op as u8, status, opaque, cas, extras, key, value);
        out.to_vec()
    }

    fn reply(plan: Plan, text: &[u8]) -> Vec<u8> {
        match plan.translate(&[Bytes::copy_from_slice(text)]) {
            Translated::Reply(b) => b.to_vec(),
            Translated::Then { request, .. } => panic!("second step {request:?}"),
        }
    }

    /// Each opcode becomes the text/meta command that carries its fields.
    #[test]
    fn requests_become_text_and_meta_commands() {
        let four = 300u32.to_be_bytes();
        let table: Vec<(Vec<u8>, &[u8])> = vec![
            (req(Opcode::Get, 1, 0, b"", b"k", b""), b"gets k\r\n"),
            (req(Opcode::GetKQ, 1, 0, b"", b"k", b""), b"gets k\r\n"),
            (req(Opcode::Gat, 1, 0, &four, b"k", b""), b"gats 300 k\r\n"),
            (
                req(Opcode::Touch, 1, 0, &four, b"k", b""),
                b"gats 300 k\r\n",
            ),
            (
                req(Opcode::Set, 1, 0, &set_extras(7, 60), b"k", b"val"),
                b"ms k 3 c F7 T60 MS\r\nval\r\n",
            ),
            (
                req(Opcode::SetQ, 1, 99, &set_extras(0, 0), b"k", b""),
                b"ms k 0 c F0 T0 C99 MS\r\n\r\n",
            ),
            (
                req(Opcode::Add, 1, 0, &set_extras(1, 2), b"k", b"v"),
                b"ms k 1 c F1 T2 ME\r\nv\r\n",
            ),
            (
                req(Opcode::ReplaceQ, 1, 0, &set_extras(1, 2), b"k", b"v"),
                b"ms k 1 c F1 T2 MR\r\nv\r\n",
            ),
            (
                req(Opcode::Append, 1, 0, b"", b"k", b"v"),
                b"ms k 1 c MA\r\nv\r\n",
            ),
            (
                req(Opcode::PrependQ, 1, 5, b"", b"k", b"v"),
                b"ms k 1 c C5 MP\r\nv\r\n",
            ),
            (req(Opcode::Delete, 1, 0, b"", b"k", b""), b"delete k\r\n"),
            (req(Opcode::DeleteQ, 1, 8, b"", b"k", b""), b"md k C8\r\n"),
            // Keys of any bytes: base64 in meta commands with `b`.
            (
                req(Opcode::Get, 1, 0, b"", b"a b", b""),
                b"mg YSBi b v f c\r\n",
            ),
            (
                req(Opcode::GetKQ, 1, 0, b"", b"\x00\x01", b""),
                b"mg AAE= b v f c\r\n",
            ),
            (
                req(Opcode::Set, 1, 0, &set_extras(7, 60), b"a b", b"val"),
                b"ms YSBi 3 b c F7 T60 MS\r\nval\r\n",
            ),
            (
                req(Opcode::Delete, 1, 0, b"", b"a b", b""),
                b"md YSBi b\r\n",
            ),
            (
                req(Opcode::DeleteQ, 1, 8, b"", b"a b", b""),
                b"md YSBi b C8\r\n",
            ),
            (
                req(
                    Opcode::Increment,
                    1,
                    0,
                    &incr_extras(2, 0, NO_CREATE),
                    b"a b",
                    b"",
                ),
                b"ma YSBi b D2 v c\r\n",
            ),
            (
                req(
                    Opcode::Increment,
                    1,
                    0,
                    &incr_extras(5, 0, 0xffff_ffff),
                    b"k",
                    b"",
                ),
                b"ma k D5 v c\r\n",
            ),
            (
                req(Opcode::DecrementQ, 1, 3, &incr_extras(5, 9, 0), b"k", b""),
                b"ma k D5 v c MD C3\r\n",
            ),
            (req(Opcode::Flush, 1, 0, b"", b"", b""), b"flush_all\r\n"),
            (
                req(Opcode::FlushQ, 1, 0, &four, b"", b""),
                b"flush_all 300\r\n",
            ),
            (req(Opcode::Version, 1, 0, b"", b"", b""), b"version\r\n"),
            (
                req(Opcode::Verbosity, 1, 0, &four, b"", b""),
                b"verbosity 300\r\n",
            ),
            (req(Opcode::Stat, 1, 0, b"", b"", b""), b"stats\r\n"),
            (
                req(Opcode::Stat, 1, 0, b"", b"detail on", b""),
                b"stats detail on\r\n",
            ),
        ];
        for (wire, want) in table {
            let (consumed, request, _) = forward(&wire);
            assert_eq!(consumed, wire.len());
            assert_eq!(
                String::from_utf8_lossy(&request),
                String::from_utf8_lossy(want)
            );
            // Split points: every strict prefix waits for more.
            for cut in 0..wire.len() {
                assert!(
                    matches!(next_step(&wire[..cut], MAX_ITEM), Step::Incomplete),
                    "{want:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_run_of_gets_is_one_multi_get_answered_per_frame() {
        let mut wire = req(Opcode::GetKQ, 1, 0, b"", b"a", b"");
        wire.extend(req(Opcode::GetQ, 2, 0, b"", b"b", b""));
        wire.extend(req(Opcode::GetK, 3, 0, b"", b"c", b""));
        wire.extend(req(Opcode::Get, 4, 0, b"", b"d", b""));
        let noop = req(Opcode::NoOp, 5, 0, b"", b"", b"");
        wire.extend(&noop);
        let (consumed, request, plan) = forward(&wire);
        assert_eq!(
            consumed,
            wire.len() - noop.len(),
            "the run stops at the NoOp"
        );
        assert_eq!(&request[..], b"gets a b c d\r\n");
        let got = reply(
            plan,
            b"VALUE a 5 2 11\r\nva\r\nVALUE d 0 0 14\r\n\r\nEND\r\n",
        );
        let want = [
            response(
                Opcode::GetKQ,
                bin::Status::Success,
                1,
                11,
                &5u32.to_be_bytes(),
                b"a",
                b"va",
            ),
            // b: quiet miss, silent; c: loud GetK miss, the key echoed.
            response(Opcode::GetK, bin::Status::KeyNotFound, 3, 0, b"", b"c", b""),
            response(
                Opcode::Get,
                bin::Status::Success,
                4,
                14,
                &0u32.to_be_bytes(),
                b"",
                b"",
            ),
        ]
        .concat();
        assert_eq!(got, want);
    }

    #[test]
    fn replies_become_status_codes() {
        let se = set_extras(0, 0);
        let incr = incr_extras(1, 0, 0xffff_ffff);
        let four = 0u32.to_be_bytes();
        let table: Vec<(Vec<u8>, &[u8], Vec<u8>)> = vec![
            (
                req(Opcode::Set, 7, 0, &se, b"k", b"v"),
                b"HD c42\r\n",
                response(Opcode::Set, bin::Status::Success, 7, 42, b"", b"", b""),
            ),
            // A key of any bytes, read with `mg <base64> b v f c`.
            (
                req(Opcode::GetK, 7, 0, b"", b"a b", b""),
                b"VA 2 f5 c9\r\nhi\r\n",
                response(
                    Opcode::GetK,
                    bin::Status::Success,
                    7,
                    9,
                    &5u32.to_be_bytes(),
                    b"a b",
                    b"hi",
                ),
            ),
            (
                req(Opcode::Get, 7, 0, b"", b"a b", b""),
                b"EN\r\n",
                response(
                    Opcode::Get,
                    bin::Status::KeyNotFound,
                    7,
                    0,
                    b"",
                    b"",
                    b"Not found",
                ),
            ),
            (req(Opcode::GetQ, 7, 0, b"", b"a b", b""), b"EN\r\n", vec![]),
            (
                req(Opcode::GetKQ, 7, 0, b"", b"a\x00", b""),
                b"VA 1 f0 c3\r\nx\r\n",
                response(
                    Opcode::GetKQ,
                    bin::Status::Success,
                    7,
                    3,
                    &[0; 4],
                    b"a\x00",
                    b"x",
                ),
            ),
            (
                req(Opcode::SetQ, 7, 0, &se, b"k", b"v"),
                b"HD c42\r\n",
                vec![],
            ),
            (
                req(Opcode::AddQ, 7, 0, &se, b"k", b"v"),
                b"NS\r\n",
                response(
                    Opcode::AddQ,
                    bin::Status::KeyExists,
                    7,
                    0,
                    b"",
                    b"",
                    b"Data exists for key.",
                ),
            ),
            (
                req(Opcode::Replace, 7, 0, &se, b"k", b"v"),
                b"NS\r\n",
                response(
                    Opcode::Replace,
                    bin::Status::KeyNotFound,
                    7,
                    0,
                    b"",
                    b"",
                    b"Not found",
                ),
            ),
            (
                req(Opcode::Append, 7, 0, b"", b"k", b"v"),
                b"NS\r\n",
                response(
                    Opcode::Append,
                    bin::Status::NotStored,
                    7,
                    0,
                    b"",
                    b"",
                    b"Not stored.",
                ),
            ),
            (
                req(Opcode::Set, 7, 9, &se, b"k", b"v"),
                b"EX\r\n",
                response(
                    Opcode::Set,
                    bin::Status::KeyExists,
                    7,
                    0,
                    b"",
                    b"",
                    b"Data exists for key.",
                ),
            ),
            (
                req(Opcode::Set, 7, 0, &se, b"k", b"v"),
                b"SERVER_ERROR out of memory storing object\r\n",
                response(
                    Opcode::Set,
                    bin::Status::OutOfMemory,
                    7,
                    0,
                    b"",
                    b"",
                    b"Out of memory",
                ),
            ),
            (
                req(Opcode::SetQ, 7, 0, &se, b"k", b"v"),
                b"SERVER_ERROR no server available\r\n",
                response(
                    Opcode::SetQ,
                    bin::Status::InternalError,
                    7,
                    0,
                    b"",
                    b"",
                    b"no server available",
                ),
            ),
            (
                req(Opcode::Delete, 7, 0, b"", b"k", b""),
                b"DELETED\r\n",
                response(Opcode::Delete, bin::Status::Success, 7, 0, b"", b"", b""),
            ),
            (
                req(Opcode::Delete, 7, 0, b"", b"k", b""),
                b"NOT_FOUND\r\n",
                response(
                    Opcode::Delete,
                    bin::Status::KeyNotFound,
                    7,
                    0,
                    b"",
                    b"",
                    b"Not found",
                ),
            ),
            (
                req(Opcode::DeleteQ, 7, 3, b"", b"k", b""),
                b"EX\r\n",
                response(
                    Opcode::DeleteQ,
                    bin::Status::KeyExists,
                    7,
                    0,
                    b"",
                    b"",
                    b"Data exists for key.",
                ),
            ),
            (
                req(Opcode::Increment, 7, 0, &incr, b"k", b""),
                b"VA 2 c5\r\n15\r\n",
                response(
                    Opcode::Increment,
                    bin::Status::Success,
                    7,
                    5,
                    b"",
                    b"",
                    &15u64.to_be_bytes(),
                ),
            ),
            (
                req(Opcode::Increment, 7, 0, &incr, b"k", b""),
                b"NF\r\n",
                response(
                    Opcode::Increment,
                    bin::Status::KeyNotFound,
                    7,
                    0,
                    b"",
                    b"",
                    b"Not found",
                ),
            ),
            (
                req(Opcode::Increment, 7, 0, &incr, b"k", b""),
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
                response(
                    Opcode::Increment,
                    bin::Status::NonNumeric,
                    7,
                    0,
                    b"",
                    b"",
                    b"Non-numeric server-side value for incr or decr",
                ),
            ),
            (
                req(Opcode::Touch, 7, 0, &four, b"k", b""),
                b"VALUE k 9 1 77\r\nv\r\nEND\r\n",
                response(
                    Opcode::Touch,
                    bin::Status::Success,
                    7,
                    77,
                    &9u32.to_be_bytes(),
                    b"",
                    b"",
                ),
            ),
            (
                req(Opcode::Touch, 7, 0, &four, b"k", b""),
                b"END\r\n",
                response(
                    Opcode::Touch,
                    bin::Status::KeyNotFound,
                    7,
                    0,
                    b"",
                    b"",
                    b"Not found",
                ),
            ),
            (
                req(Opcode::GatKQ, 7, 0, &four, b"k", b""),
                b"END\r\n",
                vec![],
            ),
            (req(Opcode::FlushQ, 7, 0, b"", b"", b""), b"OK\r\n", vec![]),
            (
                req(Opcode::Version, 7, 0, b"", b"", b""),
                b"VERSION memring-1.2\r\n",
                response(
                    Opcode::Version,
                    bin::Status::Success,
                    7,
                    0,
                    b"",
                    b"",
                    b"memring-1.2",
                ),
            ),
            (
                req(Opcode::Stat, 7, 0, b"", b"", b""),
                b"STAT pid 12\r\nSTAT version memring 1\r\nEND\r\n",
                [
                    response(Opcode::Stat, bin::Status::Success, 7, 0, b"", b"pid", b"12"),
                    response(
                        Opcode::Stat,
                        bin::Status::Success,
                        7,
                        0,
                        b"",
                        b"version",
                        b"memring 1",
                    ),
                    response(Opcode::Stat, bin::Status::Success, 7, 0, b"", b"", b""),
                ]
                .concat(),
            ),
            (
                req(Opcode::Stat, 7, 0, b"", b"nosuch", b""),
                b"ERROR\r\n",
                response(
                    Opcode::Stat,
                    bin::Status::KeyNotFound,
                    7,
                    0,
                    b"",
                    b"",
                    b"Not found",
                ),
            ),
        ];
        for (wire, text, want) in table {
            let (_, request, plan) = forward(&wire);
            assert_eq!(
                reply(plan, text),
                want,
                "{} answered {}",
                String::from_utf8_lossy(&request),
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn incr_with_initial_value_creates_in_a_second_step() {
        let wire = req(Opcode::Decrement, 7, 0, &incr_extras(2, 10, 60), b"k", b"");
        let (_, request, plan) = forward(&wire);
        assert!(plan.may_take_two_steps());
        assert_eq!(&request[..], b"ma k D2 v c MD\r\n");
        let Translated::Then { request, plan } = plan.translate(&[Bytes::from_static(b"NF\r\n")])
        else {
            panic!("no second step");
        };
        assert_eq!(&request[..], b"ma k D2 v c MD N60 J10\r\n");
        assert!(!plan.may_take_two_steps());
        assert_eq!(
            reply(plan, b"VA 2 c3\r\n10\r\n"),
            response(
                Opcode::Decrement,
                bin::Status::Success,
                7,
                3,
                b"",
                b"",
                &10u64.to_be_bytes()
            )
        );
        // Without an initial value (expiration 0xffffffff), one step only.
        let wire = req(
            Opcode::Decrement,
            7,
            0,
            &incr_extras(2, 10, NO_CREATE),
            b"k",
            b"",
        );
        assert!(!forward(&wire).2.may_take_two_steps());
    }

    #[test]
    fn answered_without_a_server() {
        let answer = |wire: &[u8]| match next_step(wire, MAX_ITEM) {
            Step::Answer {
                consumed,
                swallow,
                reply,
                close,
            } => (consumed, swallow, reply.to_vec(), close),
            other => panic!("not answered: {other:?}"),
        };
        let noop = req(Opcode::NoOp, 3, 0, b"", b"", b"");
        assert_eq!(
            answer(&noop),
            (
                24,
                0,
                response(Opcode::NoOp, bin::Status::Success, 3, 0, b"", b"", b""),
                false
            )
        );
        let quit = req(Opcode::Quit, 3, 0, b"", b"", b"");
        assert_eq!(
            answer(&quit),
            (
                24,
                0,
                response(Opcode::Quit, bin::Status::Success, 3, 0, b"", b"", b""),
                true
            )
        );
        assert_eq!(
            answer(&req(Opcode::QuitQ, 3, 0, b"", b"", b"")),
            (24, 0, vec![], true)
        );
        // A key of any bytes travels base64 up to 186 bytes; past that,
        // and in a GAT, it is refused.
        for (op, key, extras) in [
            (Opcode::Get, vec![b' '; 187], &b""[..]),
            (Opcode::Gat, b"a b".to_vec(), &[0u8, 0, 0, 9][..]),
        ] {
            let r = req(op, 3, 0, extras, &key, b"");
            let a = answer(&r);
            assert_eq!(a.1, 0);
            assert_eq!(
                a.2,
                response(
                    op,
                    bin::Status::InvalidArguments,
                    3,
                    0,
                    b"",
                    b"",
                    b"Invalid arguments"
                ),
                "{op:?} with a {}-byte key",
                key.len()
            );
        }
        let spaced = req(Opcode::Get, 3, 0, b"", &[b' '; 187], b"");
        assert_eq!(
            answer(&spaced),
            (
                spaced.len(),
                0,
                response(
                    Opcode::Get,
                    bin::Status::InvalidArguments,
                    3,
                    0,
                    b"",
                    b"",
                    b"Invalid arguments"
                ),
                false
            )
        );
        // Unknown opcode: answered, its body skipped even before it arrives.
        let mut unknown = req(Opcode::Append, 3, 0, b"", b"", b"0123456789");
        unknown[1] = 0x50;
        let (consumed, swallow, _, close) = answer(&unknown[..30]);
        assert_eq!((consumed, swallow, close), (30, 4, false));
        assert!(matches!(next_step(b"\x00", MAX_ITEM), Step::Close));
        // A set too large for the item limit: a delete of the key (memcached
        // removes the old value), the value swallowed, "Too large." whatever
        // the delete found.
        let big = vec![b'x'; MAX_ITEM + 1];
        let wire = req(Opcode::SetQ, 3, 0, &set_extras(0, 0), b"k", &big);
        assert!(matches!(next_step(&wire[..30], MAX_ITEM), Step::Incomplete));
        let Step::Forward {
            consumed,
            swallow,
            request,
            plan,
        } = next_step(&wire[..100], MAX_ITEM)
        else {
            panic!("no delete");
        };
        assert_eq!(
            (consumed, swallow, &request[..]),
            (100, wire.len() - 100, &b"delete k\r\n"[..])
        );
        assert_eq!(
            reply(plan, b"DELETED\r\n"),
            response(
                Opcode::SetQ,
                bin::Status::TooLarge,
                3,
                0,
                b"",
                b"",
                b"Too large."
            )
        );
    }

    proptest! {
        #[test]
        fn any_bytes_make_a_step_and_any_reply_a_translation(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            text in proptest::collection::vec(any::<u8>(), 0..200),
            op in any::<u8>(),
        ) {
            let _ = next_step(&data, MAX_ITEM);
            // A well-formed frame of a random opcode, answered with random bytes.
            let mut wire = data.clone();
            wire.splice(0..0, req(Opcode::Get, 1, 0, b"", b"k", b""));
            wire[1] = op;
            if let Step::Forward { consumed, plan, .. } = next_step(&wire, MAX_ITEM) {
                prop_assert!(consumed <= wire.len());
                let _ = plan.translate(&[Bytes::from(text)]);
            }
        }
    }
}
