//! `md <key> C<cas>` with a matching cas, through memring with a backup:
//! the same answer as memcached alone (HD) and the key gone from both
//! replicas. The cas rule sends md to the primary first; an HD used to be
//! taken for "the primary lacks the key", which put the backup's copy back
//! on the primary, ran the md again against the new cas and answered EX.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;

#[test]
fn meta_delete_with_a_matching_cas_deletes_on_both_replicas() {
    let primary = Memcached::start();
    let backup = Memcached::start();
    let proxy = start_with_backups(&[&primary], &[&backup], &[]);
    let mut c = proxy.client();
    let (mut p, mut b) = (primary.client(), backup.client());
    for mode in ["", " I"] {
        assert_bytes(&c.request(b"set k 0 0 1\r\nx\r\n"), b"STORED\r\n", "set");
        let line = p.request(b"mg k c\r\n");
        let text = String::from_utf8_lossy(&line).into_owned();
        let cas = text
            .trim_end()
            .strip_prefix("HD c")
            .unwrap_or_else(|| panic!("mg k c on the primary: {text:?}"));
        let md = format!("md k C{cas}{mode}\r\n");
        assert_bytes(&c.request(md.as_bytes()), b"HD\r\n", &md);
        if mode.is_empty() {
            assert_bytes(&p.request(b"mg k v\r\n"), b"EN\r\n", "primary after md");
        }
        assert_bytes(&b.request(b"mg k v\r\n"), b"EN\r\n", "backup after md");
        assert_bytes(&c.request(b"delete k\r\n"), &cleanup_reply(mode), "cleanup");
    }
}

/// After a plain md the key is gone; after `md I` the primary keeps a stale item.
fn cleanup_reply(mode: &str) -> Vec<u8> {
    if mode.is_empty() {
        b"NOT_FOUND\r\n".to_vec()
    } else {
        b"DELETED\r\n".to_vec()
    }
}
