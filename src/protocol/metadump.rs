//! `lru_crawler metadump all` output: one line per item, used to resync a
//! server that rejoined empty.
//!
//! # Format
//! ```text
//! key=<url-encoded key> exp=<unix time or -1> la=<unix time> cas=<n> fetch=<yes|no> cls=<n> size=<n>\n
//! ...
//! END\r\n
//! ```

use super::MAX_KEY_LEN;

/// One line of a metadump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpLine {
    /// An item; its decoded key was written to the caller's buffer.
    Key,
    /// An item whose key (written to the caller's buffer) holds bytes a
    /// text command cannot carry: only meta commands with `b` name it.
    BinaryKey,
    /// The final `END`.
    End,
    /// Anything else: an item whose key cannot be sent in the text protocol,
    /// or a line that is not an item (e.g. `ERROR ...`, `BUSY ...`).
    Skip,
}

/// Whether `buf` holds a whole answer to `lru_crawler metadump`: item lines
/// ending in `END\r\n`, or a single other line (`BUSY ...`, `ERROR ...`,
/// `CLIENT_ERROR ...`). `scanned` is how far a previous call looked, so a
/// long dump is scanned once; the call updates it.
pub fn dump_complete(buf: &[u8], scanned: &mut usize) -> bool {
    let mut pos = *scanned;
    // Bounded by the buffer: each step consumes one line.
    while let Some(nl) = buf
        .get(pos..)
        .and_then(|r| r.iter().position(|&b| b == b'\n'))
    {
        let line = buf.get(pos..pos + nl).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"END" || (pos == 0 && !line.starts_with(b"key=")) {
            return true;
        }
        pos += nl + 1;
    }
    *scanned = pos;
    false
}

/// Parse one line (without its terminator), decoding the key into `key`.
pub fn parse_dump_line(line: &[u8], key: &mut Vec<u8>) -> DumpLine {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line == b"END" {
        return DumpLine::End;
    }
    let Some(rest) = line.strip_prefix(b"key=") else {
        return DumpLine::Skip;
    };
    let encoded = rest.split(|&b| b == b' ').next().unwrap_or_default();
    key.clear();
    let mut i = 0;
    while i < encoded.len() {
        let b = encoded[i];
        if b == b'%' {
            let hex = encoded
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => key.push(v),
                None => return DumpLine::Skip,
            }
            i += 3;
        } else {
            key.push(b);
            i += 1;
        }
    }
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        DumpLine::Skip
    } else if key.iter().all(|&b| b > b' ' && b != 0x7f) {
        DumpLine::Key
    } else {
        DumpLine::BinaryKey
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let mut k = Vec::new();
        let table: &[(&[u8], DumpLine, &[u8])] = &[
            (
                b"key=k2 exp=1795538583 la=1795538483 cas=281 fetch=no cls=1 size=67",
                DumpLine::Key,
                b"k2",
            ),
            (
                b"key=a%2520b exp=-1 la=1 cas=280 fetch=no cls=1 size=65",
                DumpLine::Key,
                b"a%20b",
            ),
            (b"key=caf%C3%A9 exp=-1", DumpLine::Key, "café".as_bytes()),
            (b"key=a%20b exp=-1", DumpLine::BinaryKey, b"a b"),
            (b"key=a%0Ab exp=-1", DumpLine::BinaryKey, b"a\nb"),
            (b"key=%00%01 exp=-1", DumpLine::BinaryKey, b"\x00\x01"),
            (b"key=bad%2 exp=-1", DumpLine::Skip, b""),
            (b"key=bad%zz exp=-1", DumpLine::Skip, b""),
            (b"key= exp=-1", DumpLine::Skip, b""),
            (b"END\r", DumpLine::End, b""),
            (b"END", DumpLine::End, b""),
            (
                b"BUSY currently processing crawler request",
                DumpLine::Skip,
                b"",
            ),
        ];
        for (line, want, key) in table {
            let got = parse_dump_line(line, &mut k);
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(line));
            if matches!(got, DumpLine::Key | DumpLine::BinaryKey) {
                assert_eq!(k, *key);
            }
        }
        let long = format!("key={} exp=-1", "k".repeat(MAX_KEY_LEN + 1));
        assert_eq!(parse_dump_line(long.as_bytes(), &mut k), DumpLine::Skip);
    }

    #[test]
    fn dump_completion() {
        let mut at = 0;
        assert!(!dump_complete(b"key=a exp=-1", &mut at));
        assert!(!dump_complete(b"key=a exp=-1\nkey=b", &mut at));
        assert_eq!(at, 13);
        assert!(dump_complete(b"key=a exp=-1\nkey=b\nEND\r\n", &mut at));
        assert!(dump_complete(b"END\r\n", &mut 0));
        assert!(dump_complete(
            b"BUSY currently processing crawler request\r\n",
            &mut 0
        ));
        assert!(!dump_complete(b"", &mut 0));
    }
}
