//! Per-request proxy decisions, sans-IO: how each write is replicated to the
//! backup, what a meta `q` flag hides, and how split multi-get replies are
//! merged back into the client's key order.
//!
//! Must not import `server`, tokio, sockets or the clock.
//!
//! # Replication rules
//! The primary is the source of truth; the backup must converge to it command
//! by command. Commands whose effect does not depend on the item's current
//! value are mirrored; the others run on the primary first and their *result*
//! is copied, so cas tokens, counters and appends never diverge.
//!
//! | verb | rule |
//! | --- | --- |
//! | set, delete, touch, `ms` (set mode, no cas), `md` (no cas) | mirrored in parallel |
//! | add, replace, cas | primary; on STORED the same item is `set` on the backup |
//! | append, prepend, incr, decr, `ma`, other `ms`/`md` | primary; on success the item is read back (`mg v f t`) and `set` on the backup |
//! | `ms` in add, replace, append, prepend or cas mode | as its classic verb (see [`meta_set_as_classic`]), the item read back |
//! | every primary-first write above | runs inside its key's exclusive section ([`machine::Effect::Exclusive`]), so the backup gets the copies of one key's writes in the order the primary applied them |
//! | any of the above answered "not there" by the primary | if the backup holds the item (the primary lost it to a flush or an eviction) it is put back on the primary and the command runs again; otherwise `delete` on the backup |

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod binary;
pub mod client;
pub mod machine;
pub mod pipeline;

use bytes::Bytes;

use crate::protocol::{compose, parse_i64, Expect, MetaFlags, Status, ValueItem, Verb};

/// How a write reaches the backup when both replicas are up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRule {
    /// Send the same command to both in parallel; the result does not depend
    /// on the prior value.
    Mirror,
    /// Primary first; then copy its outcome (see [`after_primary`]).
    PrimaryThenCopy,
}

/// What to do on the backup once the primary answered a
/// [`WriteRule::PrimaryThenCopy`] write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicate {
    /// Nothing changed on the primary (or the outcome says the backup is already right).
    Nothing,
    /// `set` the request's own item (flags, exptime, data) on the backup.
    SetRequestItem,
    /// Read the item back from the primary and `set` it on the backup.
    CopyItem,
    /// The primary does not hold the key: delete it on the backup.
    Delete,
}

/// The answer to a request the proxy gives without any server: `quit`
/// (a close), `version`, `verbosity` (`OK`, nothing with `noreply`) and
/// `mn`. None for every other request. The engine and the request machine
/// both answer through here.
pub fn local_answer(r: &crate::protocol::Request) -> Option<machine::Answer> {
    let one = |b: &'static [u8]| machine::Answer::One(Bytes::from_static(b));
    Some(match r.verb {
        Verb::Quit => machine::Answer::Close,
        Verb::Version => one(compose::VERSION),
        Verb::Verbosity if r.noreply => machine::Answer::Nothing,
        Verb::Verbosity => one(compose::OK),
        Verb::MetaNoop => one(compose::MN),
        _ => return None,
    })
}

/// The replication rule of a write verb. `meta` are the request's meta
/// flags (ignored for classic verbs).
pub fn write_rule(verb: Verb, meta: MetaFlags) -> WriteRule {
    match verb {
        Verb::Set | Verb::Delete | Verb::Touch => WriteRule::Mirror,
        Verb::MetaSet => {
            if meta.mode() == b'S' && !meta.cas() && !meta.invalidate() {
                WriteRule::Mirror
            } else {
                WriteRule::PrimaryThenCopy
            }
        }
        Verb::MetaDelete => {
            if meta.cas() || meta.invalidate() {
                WriteRule::PrimaryThenCopy
            } else {
                WriteRule::Mirror
            }
        }
        _ => WriteRule::PrimaryThenCopy,
    }
}

/// How to bring the backup in line after the primary answered `status`.
pub fn after_primary(verb: Verb, status: Status) -> Replicate {
    match (verb, status) {
        (Verb::Add | Verb::Replace | Verb::Cas, Status::Stored) => Replicate::SetRequestItem,
        // replace NOT_STORED / cas NOT_FOUND: the primary has no item.
        (Verb::Replace, Status::NotStored) | (Verb::Cas, Status::NotFound) => Replicate::Delete,
        (Verb::Append | Verb::Prepend, Status::Stored) => Replicate::CopyItem,
        (Verb::Append | Verb::Prepend, Status::NotStored) => Replicate::Delete,
        (Verb::Incr | Verb::Decr, Status::Number(_)) => Replicate::CopyItem,
        (Verb::Incr | Verb::Decr, Status::NotFound) => Replicate::Delete,
        (Verb::MetaSet | Verb::MetaArithmetic, Status::MetaHd | Status::MetaValue) => {
            Replicate::CopyItem
        }
        (Verb::MetaArithmetic, Status::MetaNf) => Replicate::Delete,
        (Verb::MetaSet, Status::MetaNf) => Replicate::Delete,
        (Verb::MetaDelete, Status::MetaHd | Status::MetaNf) => Replicate::Delete,
        _ => Replicate::Nothing,
    }
}

/// Whether the primary's answer says it does not hold the item: the backup
/// may still have an acknowledged copy (the primary was flushed on rejoin, or
/// evicted it), which must be put back before the command is judged.
///
/// Only "not there" answers count: a successful `md` (`HD`) also deletes the
/// key on the backup, but it proves the primary held the item, so it must not
/// start a recovery (that put the item back and replayed the delete, which
/// then failed its `C<cas>` check with `EX`).
pub fn primary_may_lack(verb: Verb, status: Status) -> bool {
    match (verb, status) {
        (Verb::Add, Status::Stored) => true,
        // `md` answered HD: the primary held the item and deleted (or
        // invalidated) it. Putting the backup's copy back and running the md
        // again would undo the delete and answer EX to a cas that matched.
        (Verb::MetaDelete, Status::MetaHd) => false,
        _ => after_primary(verb, status) == Replicate::Delete,
    }
}

/// The classic verb whose replication an `ms` request follows, by its mode:
/// `ME` add, `MR` replace, `MA` append, `MP` prepend, set mode with `C` cas.
/// `None` for plain set mode and for every other verb. (The binary front end
/// sends all its storage commands as `ms`, so they converge exactly as text
/// add/replace/append/prepend/cas do.)
pub fn meta_set_as_classic(verb: Verb, meta: MetaFlags) -> Option<Verb> {
    if verb != Verb::MetaSet {
        return None;
    }
    match meta.mode() {
        b'E' => Some(Verb::Add),
        b'R' => Some(Verb::Replace),
        b'A' => Some(Verb::Append),
        b'P' => Some(Verb::Prepend),
        b'S' if meta.cas() => Some(Verb::Cas),
        _ => None,
    }
}

/// A meta status as the classic status of the same outcome.
fn classic_status(status: Status) -> Status {
    match status {
        Status::MetaHd => Status::Stored,
        Status::MetaNs => Status::NotStored,
        Status::MetaNf => Status::NotFound,
        Status::MetaEx => Status::Exists,
        s => s,
    }
}

/// [`after_primary`] for a request with its meta flags: an `ms` in add,
/// replace, append, prepend or cas mode follows its classic verb (the item
/// is read back rather than taken from the request, whose flags are meta).
pub fn after_primary_for(verb: Verb, meta: MetaFlags, status: Status) -> Replicate {
    match meta_set_as_classic(verb, meta) {
        Some(v) => match after_primary(v, classic_status(status)) {
            Replicate::SetRequestItem => Replicate::CopyItem,
            r => r,
        },
        None => after_primary(verb, status),
    }
}

/// [`primary_may_lack`] for a request with its meta flags (see [`after_primary_for`]).
pub fn primary_may_lack_for(verb: Verb, meta: MetaFlags, status: Status) -> bool {
    match meta_set_as_classic(verb, meta) {
        Some(v) => primary_may_lack(v, classic_status(status)),
        None => primary_may_lack(verb, status),
    }
}

/// Whether an item recovered from the backup must overwrite (`set`) what the
/// primary holds rather than be `add`ed: after an add, the primary holds the
/// value the add wrongly stored.
pub fn recovery_overwrites(verb: Verb, meta: MetaFlags) -> bool {
    verb == Verb::Add || meta_set_as_classic(verb, meta) == Some(Verb::Add)
}

/// For mirrored writes: the backup's answer wins when it found the item and
/// the primary did not (the primary lost it to a flush or an eviction).
pub fn backup_answer_wins(primary: Status, backup: Status) -> bool {
    matches!(
        (primary, backup),
        (Status::NotFound, Status::Deleted | Status::Touched) | (Status::MetaNf, Status::MetaHd)
    )
}

/// Seconds in 30 days: memcached reads a larger exptime as a unix time.
pub const RELATIVE_EXPTIME_MAX: i64 = 60 * 60 * 24 * 30;

/// Turn a remaining TTL from `mg ... t` (-1 = never expires) into an exptime
/// for `set`, using `now_unix` when the TTL exceeds the relative range.
pub fn ttl_to_exptime(ttl: i64, now_unix: i64) -> i64 {
    if ttl < 0 {
        0
    } else if ttl == 0 {
        // Expiring this very second: keep it alive for the shortest time.
        1
    } else if ttl > RELATIVE_EXPTIME_MAX {
        now_unix.saturating_add(ttl)
    } else {
        ttl
    }
}

/// Whether a meta reply is hidden from a client that set the `q` flag.
///
/// protocol.txt: quiet mode hides the nominal outcome only, as memcached's
/// meta commands do: `mg` its miss (`EN`), `ms` and `md` their success (`HD`;
/// an `md` miss, `NF`, is shown), `ma` its success whether it is `HD` or, with
/// `v`, `VA` (memcached skips every successful `ma` under `q`; 1.6.18 still
/// showed `VA`). `NF`, `NS`, `EX` and errors are always shown.
pub fn quiet_hides(verb: Verb, status: Status) -> bool {
    match verb {
        Verb::MetaGet => status == Status::MetaEn,
        Verb::MetaSet | Verb::MetaDelete => status == Status::MetaHd,
        Verb::MetaArithmetic => matches!(status, Status::MetaHd | Status::MetaValue),
        _ => false,
    }
}

/// A retrieval answer without its closing `END\r\n` (for a batch of a get
/// line that goes on); any other answer, such as an error, is left whole.
pub fn without_end(reply: Bytes) -> Bytes {
    match reply.len().checked_sub(compose::END.len()) {
        Some(cut) if reply.ends_with(compose::END) => reply.slice(..cut),
        _ => reply,
    }
}

/// How the proxy answers `stats <group>` and the administration commands
/// (`cache_memlimit`, `slabs ...`, `lru_crawler ...`), which describe or
/// change one memcached each. A proxy in front of several servers answers for
/// all of them, so the reply is memcached's own shape built from every
/// server in service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminPlan {
    /// memring answers itself (`stats`, `stats reset`: its own counters).
    Local,
    /// Send the line to every server in service; the answer is their lines
    /// concatenated in server order under one `END` (see [`merge_listings`]).
    /// `stats items|slabs|sizes|extstore|detail dump`,
    /// `stats cachedump <class> <n>` (memdump lists every server's keys),
    /// `lru_crawler metadump ...`.
    Listing(Expect),
    /// Send the line to the first server in service and pass its answer on:
    /// `stats settings` and `stats conns` describe one process, and adding
    /// up ports or connection numbers would mean nothing.
    FirstServer,
    /// Send the line to every server in service; `OK` when every one said
    /// `OK`, else the first other answer (see [`merge_status`]).
    /// `cache_memlimit`, `slabs automove|reassign`, `lru_crawler <other>`,
    /// `stats detail on|off`.
    EveryServer,
    /// memcached's answer for a group or command it does not know.
    Answer(&'static [u8]),
}

/// The plan for `stats <args>` (verb `Stats`) or an administration line
/// (verb `Admin`, `args` the whole line).
pub fn admin_plan(verb: Verb, args: &[u8]) -> AdminPlan {
    let mut words = crate::protocol::lex::words(args);
    let first = words.next().unwrap_or_default();
    let second = words.next().unwrap_or_default();
    match verb {
        Verb::Stats => match first {
            // memring's own groups: `stats proxy`, `stats proxy settings`,
            // `stats route <key>` and `stats hotkeys`.
            b"" | b"reset" | b"proxy" | b"route" | b"hotkeys" => AdminPlan::Local,
            b"items" | b"slabs" | b"sizes" | b"extstore" => AdminPlan::Listing(Expect::Stats),
            b"settings" | b"conns" => AdminPlan::FirstServer,
            b"cachedump" => AdminPlan::Listing(Expect::Lines),
            b"detail" if second == b"dump" => AdminPlan::Listing(Expect::Lines),
            b"detail" => AdminPlan::EveryServer,
            _ => AdminPlan::Answer(compose::ERROR),
        },
        Verb::Admin => match (first, second) {
            (b"lru_crawler", b"metadump" | b"mgdump") => AdminPlan::Listing(Expect::Lines),
            _ => AdminPlan::EveryServer,
        },
        _ => AdminPlan::Answer(compose::ERROR),
    }
}

/// Merge every server's reply to a [`AdminPlan::Listing`] command: each
/// reply's lines without its `END`, in server order, a line that an earlier
/// server already sent left out (a backup's copy of a key lists the same
/// `ITEM` line; equal settings are said once), then one `END`. `STAT` lines
/// of the same name are added up (see [`merge_stat`]). When no server
/// answered with a listing (`CLIENT_ERROR Illegal slab id` everywhere), the
/// first reply is the answer, as from one memcached.
pub fn merge_listings(replies: &[Bytes]) -> Vec<Bytes> {
    let bodies: Vec<&[u8]> = replies
        .iter()
        .filter_map(|r| {
            let cut = r.len().checked_sub(compose::END.len())?;
            r.ends_with(compose::END).then(|| &r[..cut])
        })
        .collect();
    if bodies.is_empty() {
        return replies.first().cloned().into_iter().collect();
    }
    // (line, value of a STAT line) in first-seen order.
    let mut lines: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut seen: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for body in bodies {
        for line in body.split_inclusive(|&b| b == b'\n') {
            match stat_name_value(line) {
                Some((name, value)) => match seen.get(name) {
                    Some(&i) => {
                        if let Some((_, Some(v))) = lines.get_mut(i) {
                            *v = merge_stat(name, v, value);
                        }
                    }
                    None => {
                        seen.insert(name.to_vec(), lines.len());
                        lines.push((name.to_vec(), Some(value.to_vec())));
                    }
                },
                None => {
                    if !seen.contains_key(line) {
                        seen.insert(line.to_vec(), lines.len());
                        lines.push((line.to_vec(), None));
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(lines.iter().map(|(l, _)| l.len() + 32).sum());
    for (line, value) in lines {
        match value {
            Some(v) => {
                out.extend_from_slice(b"STAT ");
                out.extend_from_slice(&line);
                out.push(b' ');
                out.extend_from_slice(&v);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(&line),
        }
    }
    out.extend_from_slice(compose::END);
    vec![Bytes::from(out)]
}

/// `STAT <name> <value>\r\n` -> (name, value).
fn stat_name_value(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = line.strip_prefix(b"STAT ")?;
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let sp = body.iter().position(|&b| b == b' ')?;
    Some((body.get(..sp)?, body.get(sp + 1..)?))
}

/// One `STAT` value from several servers: equal values stay as they are;
/// differing whole numbers are added up (items, pages, bytes, hits), except
/// ages and times, where the largest is kept; anything else keeps the first
/// server's value.
pub fn merge_stat(name: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    if a == b {
        return a.to_vec();
    }
    let (Some(x), Some(y)) = (parse_i64(a), parse_i64(b)) else {
        return a.to_vec();
    };
    let maxed = name.ends_with(b"age")
        || name.ends_with(b"age_hot")
        || name.ends_with(b"age_warm")
        || name.ends_with(b"time");
    let v = if maxed { x.max(y) } else { x.saturating_add(y) };
    v.to_string().into_bytes()
}

/// Merge every server's reply to an [`AdminPlan::EveryServer`] command:
/// `OK` if all said `OK`, else the first reply that is not `OK`.
pub fn merge_status(replies: &[Bytes]) -> Option<Bytes> {
    replies
        .iter()
        .find(|r| r.as_ref() != compose::OK)
        .or_else(|| replies.first())
        .cloned()
}

/// One server's framed reply to its part of a multi-get.
#[derive(Clone, Debug, Default)]
pub struct PartReply {
    /// The whole reply frame.
    pub frame: Bytes,
    /// Its VALUE blocks, ranges into `frame`.
    pub items: Vec<ValueItem>,
    /// Next unconsumed item while merging.
    pub cursor: usize,
}

impl PartReply {
    /// Take the next VALUE block if it is for `key` (servers answer in
    /// request order and skip misses, so a cursor suffices).
    pub fn take(&mut self, key: &[u8]) -> Option<Bytes> {
        let item = self.items.get(self.cursor)?;
        if self.frame.get(item.key.clone())? == key {
            self.cursor += 1;
            Some(self.frame.slice(item.item.clone()))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_per_verb() {
        use WriteRule::{Mirror, PrimaryThenCopy as First};
        let table: &[(Verb, &[u8], WriteRule)] = &[
            (Verb::Set, b"", Mirror),
            (Verb::Delete, b"", Mirror),
            (Verb::Touch, b"", Mirror),
            (Verb::Add, b"", First),
            (Verb::Replace, b"", First),
            (Verb::Cas, b"", First),
            (Verb::Append, b"", First),
            (Verb::Prepend, b"", First),
            (Verb::Incr, b"", First),
            (Verb::Decr, b"", First),
            (Verb::MetaSet, b"T0 F5", Mirror),
            (Verb::MetaSet, b"MS", Mirror),
            (Verb::MetaSet, b"Ms", Mirror),
            (Verb::MetaSet, b"MA", First),
            (Verb::MetaSet, b"C123", First),
            (Verb::MetaSet, b"I", First),
            (Verb::MetaDelete, b"q", Mirror),
            (Verb::MetaDelete, b"C9", First),
            (Verb::MetaDelete, b"I T30", First),
        ];
        for &(verb, flags, want) in table {
            let f = String::from_utf8_lossy(flags);
            assert_eq!(
                write_rule(verb, MetaFlags::parse(flags)),
                want,
                "{verb:?} {f}"
            );
        }
    }

    #[test]
    fn outcomes_converge_the_backup() {
        use Replicate::*;
        let table = [
            (Verb::Add, Status::Stored, SetRequestItem),
            (Verb::Add, Status::NotStored, Nothing),
            (Verb::Replace, Status::Stored, SetRequestItem),
            (Verb::Replace, Status::NotStored, Delete),
            (Verb::Cas, Status::Stored, SetRequestItem),
            (Verb::Cas, Status::Exists, Nothing),
            (Verb::Cas, Status::NotFound, Delete),
            (Verb::Append, Status::Stored, CopyItem),
            (Verb::Prepend, Status::NotStored, Delete),
            (Verb::Incr, Status::Number(7), CopyItem),
            (Verb::Decr, Status::NotFound, Delete),
            (Verb::Incr, Status::ClientError, Nothing),
            (Verb::Add, Status::ServerError, Nothing),
            (Verb::MetaArithmetic, Status::MetaHd, CopyItem),
            (Verb::MetaArithmetic, Status::MetaNf, Delete),
        ];
        for (verb, status, want) in table {
            assert_eq!(after_primary(verb, status), want, "{verb:?} {status:?}");
        }
    }

    #[test]
    fn absence_on_the_primary_is_checked_against_the_backup() {
        assert!(primary_may_lack(Verb::Incr, Status::NotFound));
        assert!(primary_may_lack(Verb::Append, Status::NotStored));
        assert!(primary_may_lack(Verb::Replace, Status::NotStored));
        assert!(primary_may_lack(Verb::Cas, Status::NotFound));
        assert!(primary_may_lack(Verb::Add, Status::Stored));
        assert!(!primary_may_lack(Verb::Add, Status::NotStored));
        assert!(!primary_may_lack(Verb::Cas, Status::Exists));
        assert!(!primary_may_lack(Verb::Incr, Status::Number(3)));
        // `md k C<cas>` answered HD: the primary held (and deleted) the item;
        // the backup is told to delete it, nothing is recovered or replayed.
        assert!(!primary_may_lack(Verb::MetaDelete, Status::MetaHd));
        assert_eq!(
            after_primary(Verb::MetaDelete, Status::MetaHd),
            Replicate::Delete
        );
        assert!(primary_may_lack(Verb::MetaDelete, Status::MetaNf));
        assert!(backup_answer_wins(Status::NotFound, Status::Deleted));
        assert!(backup_answer_wins(Status::NotFound, Status::Touched));
        assert!(!backup_answer_wins(Status::Deleted, Status::NotFound));
        assert!(!backup_answer_wins(Status::Stored, Status::Stored));
    }

    #[test]
    fn batches_leave_out_end() {
        let b = |s: &'static [u8]| Bytes::from_static(s);
        assert_eq!(
            without_end(b(b"VALUE a 0 1\r\nx\r\nEND\r\n")),
            b(b"VALUE a 0 1\r\nx\r\n")
        );
        assert_eq!(without_end(b(b"END\r\n")), b(b""));
        assert_eq!(
            without_end(b(b"SERVER_ERROR no server available\r\n")),
            b(b"SERVER_ERROR no server available\r\n")
        );
    }

    #[test]
    fn admin_commands() {
        use AdminPlan::*;
        let table: &[(Verb, &[u8], AdminPlan)] = &[
            (Verb::Stats, b"", Local),
            (Verb::Stats, b"reset", Local),
            (Verb::Stats, b"items", Listing(Expect::Stats)),
            (Verb::Stats, b"slabs", Listing(Expect::Stats)),
            (Verb::Stats, b"settings", FirstServer),
            (Verb::Stats, b"conns", FirstServer),
            (Verb::Stats, b"sizes", Listing(Expect::Stats)),
            (Verb::Stats, b"cachedump 1 0", Listing(Expect::Lines)),
            (Verb::Stats, b"detail dump", Listing(Expect::Lines)),
            (Verb::Stats, b"detail on", EveryServer),
            (Verb::Stats, b"bogus", Answer(compose::ERROR)),
            (Verb::Stats, b"noreply", Answer(compose::ERROR)),
            (
                Verb::Admin,
                b"lru_crawler metadump all",
                Listing(Expect::Lines),
            ),
            (
                Verb::Admin,
                b"lru_crawler metadump 1",
                Listing(Expect::Lines),
            ),
            (Verb::Admin, b"lru_crawler enable", EveryServer),
            (Verb::Admin, b"cache_memlimit 100", EveryServer),
            (Verb::Admin, b"slabs automove 1", EveryServer),
        ];
        for &(verb, args, want) in table {
            assert_eq!(
                admin_plan(verb, args),
                want,
                "{:?}",
                String::from_utf8_lossy(args)
            );
        }
        let b = |s: &'static [u8]| Bytes::from_static(s);
        let merged: Vec<u8> = merge_listings(&[
            b(b"ITEM a [1 b; 0 s]\r\nEND\r\n"),
            b(b"END\r\n"),
            b(b"ITEM b [1 b; 0 s]\r\nITEM a [1 b; 0 s]\r\nITEM c [2 b; 0 s]\r\nEND\r\n"),
        ])
        .concat();
        assert_eq!(
            merged,
            b"ITEM a [1 b; 0 s]\r\nITEM b [1 b; 0 s]\r\nITEM c [2 b; 0 s]\r\nEND\r\n"
        );
        let merged: Vec<u8> = merge_listings(&[
            b(b"STAT items:1:number 3\r\nSTAT items:1:age 10\r\nSTAT sizes_status disabled\r\nEND\r\n"),
            b(b"STAT items:1:number 4\r\nSTAT items:1:age 7\r\nSTAT sizes_status disabled\r\nEND\r\n"),
        ])
        .concat();
        assert_eq!(
            merged,
            b"STAT items:1:number 7\r\nSTAT items:1:age 10\r\nSTAT sizes_status disabled\r\nEND\r\n"
        );
        let errs = [
            b(b"CLIENT_ERROR Illegal slab id\r\n"),
            b(b"CLIENT_ERROR Illegal slab id\r\n"),
        ];
        assert_eq!(
            merge_listings(&errs).concat(),
            b"CLIENT_ERROR Illegal slab id\r\n"
        );
        assert_eq!(
            merge_status(&[b(b"OK\r\n"), b(b"OK\r\n")]),
            Some(b(b"OK\r\n"))
        );
        assert_eq!(
            merge_status(&[b(b"OK\r\n"), b(b"ERROR\r\n")]),
            Some(b(b"ERROR\r\n"))
        );
        assert_eq!(merge_status(&[]), None);
    }

    #[test]
    fn meta_set_modes_converge_like_their_classic_verbs() {
        use Replicate::*;
        let table: &[(&[u8], Status, Replicate, bool)] = &[
            (b"c F0 T0 MS", Status::MetaHd, CopyItem, false),
            (b"c F0 T0", Status::MetaHd, CopyItem, false),
            (b"c ME", Status::MetaHd, CopyItem, true),
            (b"c ME", Status::MetaNs, Nothing, false),
            (b"c MR", Status::MetaNs, Delete, true),
            (b"c MR", Status::MetaHd, CopyItem, false),
            (b"c MA", Status::MetaNs, Delete, true),
            (b"c Mp", Status::MetaNs, Delete, true),
            (b"c C5", Status::MetaNf, Delete, true),
            (b"c C5", Status::MetaEx, Nothing, false),
        ];
        for &(flags, status, rep, lack) in table {
            let f = std::str::from_utf8(flags).unwrap_or_default();
            assert_eq!(
                after_primary_for(Verb::MetaSet, MetaFlags::parse(flags), status),
                rep,
                "{f} {status:?}"
            );
            assert_eq!(
                primary_may_lack_for(Verb::MetaSet, MetaFlags::parse(flags), status),
                lack,
                "{f} {status:?}"
            );
        }
        assert!(recovery_overwrites(
            Verb::MetaSet,
            MetaFlags::parse(b"c ME")
        ));
        assert!(recovery_overwrites(Verb::Add, MetaFlags::parse(b"")));
        assert!(!recovery_overwrites(
            Verb::MetaSet,
            MetaFlags::parse(b"c MA")
        ));
        // Classic verbs are unchanged.
        assert_eq!(
            after_primary_for(Verb::Add, MetaFlags::parse(b""), Status::Stored),
            SetRequestItem
        );
        assert!(primary_may_lack_for(
            Verb::Incr,
            MetaFlags::parse(b""),
            Status::NotFound
        ));
    }

    #[test]
    fn ttl_becomes_exptime() {
        assert_eq!(ttl_to_exptime(-1, 1_700_000_000), 0);
        assert_eq!(ttl_to_exptime(0, 1_700_000_000), 1);
        assert_eq!(ttl_to_exptime(100, 1_700_000_000), 100);
        assert_eq!(
            ttl_to_exptime(RELATIVE_EXPTIME_MAX, 5),
            RELATIVE_EXPTIME_MAX
        );
        assert_eq!(
            ttl_to_exptime(RELATIVE_EXPTIME_MAX + 1, 5),
            RELATIVE_EXPTIME_MAX + 6
        );
    }

    #[test]
    fn quiet_mode() {
        assert!(quiet_hides(Verb::MetaGet, Status::MetaEn));
        assert!(!quiet_hides(Verb::MetaGet, Status::MetaValue));
        assert!(quiet_hides(Verb::MetaSet, Status::MetaHd));
        assert!(!quiet_hides(Verb::MetaSet, Status::MetaNs));
        assert!(!quiet_hides(Verb::MetaSet, Status::ServerError));
        // memcached: `md k q` on a miss answers NF, on a hit nothing.
        assert!(quiet_hides(Verb::MetaDelete, Status::MetaHd));
        assert!(!quiet_hides(Verb::MetaDelete, Status::MetaNf));
        // `ma k q` and `ma k q v` on a hit: nothing; on a miss NF.
        assert!(quiet_hides(Verb::MetaArithmetic, Status::MetaHd));
        assert!(quiet_hides(Verb::MetaArithmetic, Status::MetaValue));
        assert!(!quiet_hides(Verb::MetaArithmetic, Status::MetaNf));
        assert!(!quiet_hides(Verb::MetaArithmetic, Status::MetaEx));
    }

    #[test]
    fn part_reply_hands_out_blocks_in_request_order() {
        let frame: &[u8] = b"VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n";
        let items = vec![
            ValueItem {
                key: 6..7,
                item: 0..16,
                data: 13..14,
                flags: 0,
                cas: None,
            },
            ValueItem {
                key: 22..23,
                item: 16..32,
                data: 29..30,
                flags: 0,
                cas: None,
            },
        ];
        let mut part = PartReply {
            frame: Bytes::from_static(frame),
            items,
            cursor: 0,
        };
        assert_eq!(
            part.take(b"a").as_deref(),
            Some(&b"VALUE a 0 1\r\n1\r\n"[..])
        );
        assert_eq!(part.take(b"b"), None, "a miss leaves the cursor");
        assert_eq!(
            part.take(b"c").as_deref(),
            Some(&b"VALUE c 0 1\r\n3\r\n"[..])
        );
        assert_eq!(part.take(b"c"), None);
    }
}
