#!/usr/bin/env bash
# Regenerate tests/data/ketama_nutcracker_<case>.tsv (ketama, md5) and
# tests/data/nutcracker_<dist>_<hash>[_<variant>].tsv (every hash nutcracker
# offers, with ketama and modula, named and unnamed servers, a hash tag)
# from the REAL nutcracker.
#
# For each case: start N memcached on free 127.0.0.1 ports, put a nutcracker
# (the case's distribution and hash, auto_eject_hosts: false) in front of them,
# `set` a few thousand keys through nutcracker, then ask every memcached
# directly which keys it holds. The owner of each key is written as
# "key<TAB>server index". See tests/data/README.md.
#
# Usage: scripts/golden-ketama.sh [OUT_DIR] [CASE_PREFIX]   (default: tests/data, all)
# Env:   NUTCRACKER=/usr/sbin/nutcracker MEMCACHED=/usr/bin/memcached
#
# Only 127.0.0.1 is used, every wait is bounded, and every process the script
# starts is stopped by its PID. Needs python3 (stdlib only).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "${1:-tests/data}" "${2:-}" <<'PY'
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time

NUTCRACKER = os.environ.get("NUTCRACKER", "/usr/sbin/nutcracker")
MEMCACHED = os.environ.get("MEMCACHED", "/usr/bin/memcached")
OUT_DIR = sys.argv[1]
ONLY = sys.argv[2] if len(sys.argv) > 2 else ""
NKEYS = 3000
# Keys per case of the every-hash cases (a third of the ketama/md5 set).
HASH_CASE_KEYS = 1000
HASHES = ["one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64",
          "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins"]
NAMED4 = [(1, "cache-a"), (1, "cache-b"), (1, "cache-c"), (1, "cache-d")]
WEIGHTED4 = [(1, "cache-a"), (2, "cache-b"), (1, "cache-c"), (3, "cache-d")]
# (file stem, servers, hash, distribution, hash_tag)
HASH_CASES = (
    [("nutcracker_ketama_%s" % h, NAMED4, h, "ketama", None) for h in HASHES]
    + [("nutcracker_modula_%s" % h, WEIGHTED4, h, "modula", None) for h in HASHES]
    + [("nutcracker_ketama_fnv1a_64_noname", [(1, None), (2, None), (1, None)], "fnv1a_64",
        "ketama", None),
       ("nutcracker_ketama_fnv1a_64_tag", NAMED4, "fnv1a_64", "ketama", "{}"),
       ("nutcracker_modula_murmur_tag", WEIGHTED4, "murmur", "modula", "{}")]
)
IO_TIMEOUT = 10.0  # seconds, per socket operation

# Named cases: nutcracker hashes the explicit name, so the vectors do not
# depend on the random ports. The names are what memring hashes for
# `-s 127.0.0.1:1000N`.
#   (case, [(weight, name or None)])
CASES = [
    ("eq3", [(1, "127.0.0.1:10001"), (1, "127.0.0.1:10002"), (1, "127.0.0.1:10003")]),
    ("eq5", [(1, "127.0.0.1:1000%d" % i) for i in range(1, 6)]),
    ("w123", [(1, "127.0.0.1:10001"), (2, "127.0.0.1:10002"), (3, "127.0.0.1:10003")]),
    # A share that is not a whole number of digests: 40*4/7 = 22.86 -> 22
    # digests (88 points), 4*40*4/7 = 91.43 -> 91 digests (364 points).
    ("w1114", [(1, "127.0.0.1:10001"), (1, "127.0.0.1:10002"), (1, "127.0.0.1:10003"),
               (4, "127.0.0.1:10004")]),
    # 25 equal servers: nutcracker's float arithmetic gives 39 digests
    # (156 points) each, not 40.
    ("eq25", [(1, "127.0.0.1:%d" % (10001 + i)) for i in range(25)]),
    # Unnamed servers: an experiment on nutcracker's naming rule. The ports
    # (hence the file) change on every run; the test derives the names from
    # the recorded addresses with route::ketama::nutcracker_name.
    ("noname3", [(1, None), (1, None), (1, None)]),
]
# Also unnamed, with one server on 11211 (only when that port is free):
# checks that nutcracker hashes "127.0.0.1", not "127.0.0.1:11211".
CASE_11211 = ("noname11211", [(1, None), (1, None)])


def keys():
    """Deterministic keys: ASCII shapes, UTF-8 (bytes >= 0x80), long keys."""
    out = []
    for i in range(NKEYS):
        m = i % 6
        if m == 0:
            k = "key:%d" % i
        elif m == 1:
            k = "user/%d/profile" % (i * 7919)
        elif m == 2:
            k = "%d" % i
        elif m == 3:
            k = "s%d:%s" % (i, hashlib.sha1(str(i).encode()).hexdigest()[: i % 40 + 1])
        elif m == 4:
            k = "ключ-%d-é" % i
        else:
            k = ("long%d" % i) * (1 + i % 40)
        k = k.encode()[:250]
        out.append(k)
    assert len(set(out)) == len(out)
    for k in out:
        assert all(b > 32 and b != 127 for b in k)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_listening(port, proc, what):
    for _ in range(100):  # 10 s at most
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    raise SystemExit("%s on 127.0.0.1:%d did not come up" % (what, port))


def stop(proc):
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this PID only
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_memcached(procs, port=None):
    user = ["-u", "root"] if os.geteuid() == 0 else []
    for _ in range(5):  # a free port can be taken between probe and bind
        p = port or free_port()
        proc = subprocess.Popen(
            [MEMCACHED, "-l", "127.0.0.1", "-p", str(p), "-U", "0", "-t", "1", "-m", "64"] + user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        if wait_listening(p, proc, "memcached"):
            return p
        stop(proc)
        if port:
            break
    raise SystemExit("could not start memcached")


def tagged_keys(allkeys):
    """Keys with hash tags: runs of keys that share a tag, and edge cases."""
    out = []
    for i, k in enumerate(allkeys):
        m = i % 4
        if m == 0:
            out.append(b"user:{%d}:%s" % (i % 37, k[:40]))
        elif m == 1:
            out.append(b"{}%s" % k[:40])        # an empty tag: the whole key
        elif m == 2:
            out.append(b"%s{open" % k[:40])     # no closing byte
        else:
            out.append(k)
    assert len(set(out)) == len(out)
    return out


def start_nutcracker(procs, tmp, servers, hash_name="md5", dist="ketama", tag=None):
    for attempt in range(5):
        listen, stats = free_port(), free_port()
        conf = os.path.join(tmp, "nutcracker-%d.yml" % attempt)
        with open(conf, "w") as f:
            f.write("golden:\n")
            f.write("  listen: 127.0.0.1:%d\n" % listen)
            f.write("  hash: %s\n" % hash_name)
            f.write("  distribution: %s\n" % dist)
            if tag:
                f.write('  hash_tag: "%s"\n' % tag)
            f.write("  auto_eject_hosts: false\n")
            f.write("  timeout: 5000\n")
            f.write("  servers:\n")
            for line in servers:
                f.write("   - %s\n" % line)
        proc = subprocess.Popen(
            [NUTCRACKER, "-c", conf, "-s", str(stats), "-a", "127.0.0.1",
             "-o", os.path.join(tmp, "nutcracker.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        if wait_listening(listen, proc, "nutcracker"):
            return listen
        stop(proc)
    raise SystemExit("could not start nutcracker")


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def close(self):
        self.s.close()


def batches(items, max_bytes=1000, max_items=50):
    batch, size = [], 0
    for it in items:
        if batch and (size + len(it) + 1 > max_bytes or len(batch) >= max_items):
            yield batch
            batch, size = [], 0
        batch.append(it)
        size += len(it) + 1
    if batch:
        yield batch


def run_case(name, spec, allkeys, tmp, fixed_ports=None, hash_name="md5", dist="ketama",
             tag=None):
    procs = []
    try:
        ports = [start_memcached(procs, fixed_ports[i] if fixed_ports else None)
                 for i in range(len(spec))]
        lines, shown, sources = [], [], []
        for (weight, sname), port in zip(spec, ports):
            addr = "127.0.0.1:%d" % port
            if sname:
                lines.append("%s:%d %s" % (addr, weight, sname))
                # The port is random and not hashed: keep it out of the file.
                shown.append("127.0.0.1:<port>:%d %s" % (weight, sname))
                sources.append("name=%s" % sname)
            else:
                lines.append("%s:%d" % (addr, weight))
                shown.append(lines[-1])
                sources.append("addr=%s" % addr)
        listen = start_nutcracker(procs, tmp, lines, hash_name, dist, tag)

        # Store every key through nutcracker (pipelined, value = its index).
        nc = Conn(listen)
        idx = {k: i for i, k in enumerate(allkeys)}
        for batch in batches(allkeys):
            req = b"".join(b"set %s 0 0 %d\r\n%d\r\n" % (k, len(str(idx[k])), idx[k]) for k in batch)
            nc.send(req)
            for k in batch:
                reply = nc.line()
                if reply != b"STORED":
                    raise SystemExit("%s: set %r through nutcracker: %r" % (name, k, reply))
        nc.close()

        # Ask each memcached directly which keys it holds.
        owner = {}
        for sidx, port in enumerate(ports):
            mc = Conn(port)
            for batch in batches(allkeys):
                mc.send(b"get " + b" ".join(batch) + b"\r\n")
                while True:
                    line = mc.line()
                    if line == b"END":
                        break
                    parts = line.split(b" ")
                    if parts[0] != b"VALUE" or len(parts) != 4:
                        raise SystemExit("%s: unexpected reply %r" % (name, line))
                    data = mc.exact(int(parts[3]) + 2)[:-2]
                    k = parts[1]
                    if int(data) != idx[k]:
                        raise SystemExit("%s: wrong value for %r" % (name, k))
                    if k in owner:
                        raise SystemExit("%s: %r on two servers" % (name, k))
                    owner[k] = sidx
            mc.close()
        missing = [k for k in allkeys if k not in owner]
        if missing:
            raise SystemExit("%s: %d keys on no server, e.g. %r" % (name, len(missing), missing[0]))
        return shown, sources, owner
    finally:
        for p in reversed(procs):
            stop(p)


def version(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).strip().splitlines()[0]


def main():
    nc_version = version([NUTCRACKER, "--version"])
    mc_version = version([MEMCACHED, "--version"])
    allkeys = keys()
    cases = list(CASES)
    if port_is_free(11211):
        cases.append(CASE_11211)
    else:
        print("127.0.0.1:11211 is busy: skipping %s" % CASE_11211[0])
    os.makedirs(OUT_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for stem, spec, hash_name, dist, tag in HASH_CASES:
            if not stem.startswith(ONLY):
                continue
            ks = allkeys[::3][:HASH_CASE_KEYS]
            if tag:
                ks = tagged_keys(ks)
            lines, sources, owner = run_case(stem, spec, ks, tmp, None, hash_name, dist, tag)
            path = os.path.join(OUT_DIR, "%s.tsv" % stem)
            with open(path, "wb") as f:
                f.write(b"# Generated by scripts/golden-ketama.sh; do not edit.\n")
                f.write(("# %s (distribution: %s, hash: %s%s, auto_eject_hosts: false); %s\n"
                         % (nc_version, dist, hash_name,
                            ", hash_tag: %s" % tag if tag else "", mc_version)).encode())
                f.write(b"# nutcracker servers:\n")
                for l in lines:
                    f.write(("#   - %s\n" % l).encode())
                f.write(("#placement\t%s\t%s\t%s\n" % (dist, hash_name, tag or "-")).encode())
                f.write(b"# '#server' rows: index, weight, and what nutcracker hashes: name=<explicit name>\n")
                f.write(b"# or addr=<host:port> of an unnamed server. Then: key<TAB>server index.\n")
                for i, ((weight, _), src) in enumerate(zip(spec, sources)):
                    f.write(("#server\t%d\t%d\t%s\n" % (i, weight, src)).encode())
                for k in ks:
                    f.write(k + b"\t%d\n" % owner[k])
            counts = [sum(1 for v in owner.values() if v == s) for s in range(len(spec))]
            print("%s: %d keys, per server %s -> %s" % (stem, len(owner), counts, path))
        if ONLY:
            return
        for name, spec in cases:
            fixed = [11211, free_port()] if name == CASE_11211[0] else None
            lines, sources, owner = run_case(name, spec, allkeys, tmp, fixed)
            path = os.path.join(OUT_DIR, "ketama_nutcracker_%s.tsv" % name)
            with open(path, "wb") as f:
                f.write(b"# Generated by scripts/golden-ketama.sh; do not edit.\n")
                f.write(("# %s (distribution: ketama, hash: md5, auto_eject_hosts: false); %s\n"
                         % (nc_version, mc_version)).encode())
                f.write(b"# nutcracker servers:\n")
                for l in lines:
                    f.write(("#   - %s\n" % l).encode())
                f.write(b"# '#server' rows: index, weight, and what nutcracker hashes: name=<explicit name>\n")
                f.write(b"# or addr=<host:port> of an unnamed server. Then: key<TAB>server index.\n")
                for i, ((weight, _), src) in enumerate(zip(spec, sources)):
                    f.write(("#server\t%d\t%d\t%s\n" % (i, weight, src)).encode())
                for k in allkeys:
                    f.write(k + b"\t%d\n" % owner[k])
            counts = [sum(1 for v in owner.values() if v == s) for s in range(len(spec))]
            print("%s: %d keys, per server %s -> %s" % (name, len(owner), counts, path))


main()
PY
