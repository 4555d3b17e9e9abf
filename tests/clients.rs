//! Real memcached clients against memring started with the seed's magent
//! command line: libmemcached's tools (memccapable, memccp, memccat from
//! Debian's libmemcached-tools) and Python's pymemcache.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;

use common::*;

#[test]
fn memccapable_ascii_conformance_passes() {
    let (_servers, proxy) = magent_seed_cluster();
    memccapable(proxy.addr().port(), "-a");
}

#[test]
fn memccp_and_memccat_round_trip_a_file() {
    let (servers, proxy) = magent_seed_cluster();
    let dir = TempDir::new("memccp");
    let file = dir.path().join("payload.bin");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write payload");
    let target = format!("--servers=127.0.0.1:{}", proxy.addr().port());
    run(Command::new(tool("memccp")).arg(&target).arg(&file));
    let out = run(Command::new(tool("memccat"))
        .arg(&target)
        .arg("payload.bin"));
    // memccat ends what it prints with a newline.
    let got = out.stdout.strip_suffix(b"\n").unwrap_or(&out.stdout);
    assert!(
        got == data.as_slice(),
        "memccat returned {} bytes, memccp stored {}",
        got.len(),
        data.len()
    );
    // It went to exactly one primary and to one backup.
    let holders = |range: std::ops::Range<usize>| {
        servers[range]
            .iter()
            .filter(|s| s.client().request(b"get payload.bin\r\n") != b"END\r\n")
            .count()
    };
    assert_eq!(holders(0..3), 1, "one primary holds the key");
    assert_eq!(holders(3..5), 1, "one backup holds the key");
}

const PYMEMCACHE_SCRIPT: &str = r#"
import sys
from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])), connect_timeout=5, timeout=5)
assert c.version().startswith(b"1.6.0 memring-"), c.version()
c.set("py:a", b"alpha", expire=0)
assert c.get("py:a") == b"alpha"
assert c.add("py:a", b"x", noreply=False) is False
assert c.add("py:b", b"beta", noreply=False) is True
assert c.replace("py:b", b"BETA", noreply=False) is True
c.append("py:b", b"!")
c.prepend("py:b", b"<")
assert c.get("py:b") == b"<BETA!"
c.set("py:n", b"10")
assert c.incr("py:n", 5) == 15
assert c.decr("py:n", 20) == 0
v, cas = c.gets("py:a")
assert v == b"alpha"
assert c.cas("py:a", b"alpha2", cas) is True
assert c.cas("py:a", b"alpha3", cas) is False
keys = ["py:m%d" % i for i in range(100)]
c.set_many({k: k.encode() for k in keys})
got = c.get_many(keys)
assert got == {k: k.encode() for k in keys}, len(got)
assert c.touch("py:a", 100, noreply=False) is True
assert c.delete("py:a", noreply=False) is True
assert c.get("py:a") is None
assert c.delete("py:a", noreply=False) is False
c.set("py:noreply", b"1", noreply=True)
assert c.get("py:noreply") == b"1"
stats = c.stats()
assert stats[b"curr_connections"] >= 1, stats
assert c.flush_all(noreply=False) is True
assert c.get("py:b") is None
print("pymemcache ok")
"#;

#[test]
fn pymemcache_speaks_to_the_magent_seed_cluster() {
    let (_servers, proxy) = magent_seed_cluster();
    let probe = Command::new("python3")
        .args(["-c", "import pymemcache"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "pymemcache missing: pip install pymemcache ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    let out = run(Command::new("python3").args([
        "-c",
        PYMEMCACHE_SCRIPT,
        &proxy.addr().port().to_string(),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pymemcache ok\n");
}
