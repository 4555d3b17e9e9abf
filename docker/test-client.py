#!/usr/bin/env python3
"""Tiny memcached text-protocol client for docker/test.sh (python3 stdlib only).

Keys are PREFIX:0 .. PREFIX:N-1; the value of key i under tag T is
"T-i-" followed by padding, so a reply shows which write it came from.
Every socket operation has a timeout and every loop is bounded.

Commands (PORT is on 127.0.0.1; exit status 0 = all good):
  wait    PORT SECONDS                      until `version` answers VERSION
  set     PORT PREFIX N TAG [--only FILE]   set keys (FILE: indexes, one a line)
  has     PORT PREFIX N                     print the indexes present (any value)
  get     PORT PREFIX N TAG [--tag-for FILE TAG2] [--max-latency S]
          [--attempts K] [--max-failures F]
                                            get each key, check value and latency
  mget    PORT PREFIX N TAG                 one multi-get of all keys
"""

import socket
import sys
import time

HOST = "127.0.0.1"


class Reply(Exception):
    """An unexpected reply or a broken connection."""


def value_for(tag, i):
    return (f"{tag}-{i}-".encode() + b"x" * 100)


class Conn:
    def __init__(self, port, timeout):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def line(self):
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Reply("connection closed")
            self.buf += chunk
        raise Reply("line too long")

    def exact(self, n):
        for _ in range(100000):
            if len(self.buf) >= n:
                data, self.buf = self.buf[:n], self.buf[n:]
                return data
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Reply("connection closed")
            self.buf += chunk
        raise Reply("value too long")

    def cmd(self, data):
        self.sock.sendall(data)

    def set(self, key, value):
        self.cmd(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        line = self.line()
        if line != b"STORED":
            raise Reply(f"set {key.decode()}: {line!r}")

    def get_many(self, keys):
        """{key: value} for the keys found; raises on anything but VALUE/END."""
        self.cmd(b"get " + b" ".join(keys) + b"\r\n")
        found = {}
        for _ in range(len(keys) + 1):
            line = self.line()
            if line == b"END":
                return found
            parts = line.split()
            if len(parts) < 4 or parts[0] != b"VALUE":
                raise Reply(f"get: {line!r}")
            found[parts[1]] = self.exact(int(parts[3]) + 2)[:-2]
        raise Reply("get: more VALUEs than keys")


def key(prefix, i):
    return f"{prefix}:{i}".encode()


def read_indexes(path):
    with open(path, encoding="ascii") as f:
        return {int(x) for x in f.read().split()}


def opt(args, name, n=1):
    if name not in args:
        return None
    i = args.index(name)
    vals = args[i + 1:i + 1 + n]
    del args[i:i + 1 + n]
    return vals if n > 1 else vals[0]


def cmd_wait(port, seconds):
    deadline = time.monotonic() + float(seconds)
    last = "no attempt"
    for _ in range(10000):
        if time.monotonic() >= deadline:
            break
        try:
            c = Conn(int(port), 1.0)
            try:
                c.cmd(b"version\r\n")
                line = c.line()
                if line.startswith(b"VERSION "):
                    print(line.decode())
                    return 0
                last = repr(line)
            finally:
                c.close()
        except (OSError, Reply) as e:
            last = str(e)
        time.sleep(0.1)
    print(f"wait: 127.0.0.1:{port} did not answer version in {seconds}s ({last})",
          file=sys.stderr)
    return 1


def cmd_set(port, prefix, n, tag, only=None):
    idx = sorted(read_indexes(only)) if only else range(int(n))
    c = Conn(int(port), 5.0)
    try:
        for i in idx:
            c.set(key(prefix, i), value_for(tag, i))
    finally:
        c.close()
    print(f"set {len(idx)} keys {prefix}:* tag {tag}")
    return 0


def cmd_has(port, prefix, n):
    c = Conn(int(port), 5.0)
    try:
        for i in range(int(n)):
            if c.get_many([key(prefix, i)]):
                print(i)
    finally:
        c.close()
    return 0


def cmd_get(port, prefix, n, tag, args):
    tag_for = opt(args, "--tag-for", 2)
    max_latency = float(opt(args, "--max-latency") or 5.0)
    attempts = int(opt(args, "--attempts") or 1)
    max_failures = int(opt(args, "--max-failures") or 0)
    if args:
        raise SystemExit(f"get: unknown arguments {args}")
    other = (read_indexes(tag_for[0]), tag_for[1]) if tag_for else (set(), "")
    failures = []
    worst = 0.0
    conn = None
    for i in range(int(n)):
        want = value_for(other[1] if i in other[0] else tag, i)
        for attempt in range(attempts):
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = Conn(int(port), max_latency + 1.0)
                got = conn.get_many([key(prefix, i)]).get(key(prefix, i))
                err = None if got == want else f"got {got[:20] if got else got!r}"
            except (OSError, Reply) as e:
                err = str(e)
                if conn is not None:
                    conn.close()
                conn = None
            dt = time.monotonic() - t0
            worst = max(worst, dt)
            if dt > max_latency:
                err = f"answered after {dt:.2f}s > {max_latency}s ({err or 'ok'})"
                print(f"get {prefix}:{i}: {err}", file=sys.stderr)
                return 1
            if err is None:
                break
            failures.append(f"{prefix}:{i} attempt {attempt + 1}: {err}")
        else:
            print(f"get {prefix}:{i}: no correct answer in {attempts} attempts: "
                  f"{failures[-1]}", file=sys.stderr)
            return 1
    if conn is not None:
        conn.close()
    print(f"get {n} keys {prefix}:* ok, slowest {worst * 1000:.0f} ms, "
          f"{len(failures)} failed attempts")
    for f in failures[:10]:
        print(f"  {f}")
    if len(failures) > max_failures:
        print(f"get: {len(failures)} failed attempts > {max_failures}",
              file=sys.stderr)
        return 1
    return 0


def cmd_mget(port, prefix, n, tag):
    keys = [key(prefix, i) for i in range(int(n))]
    c = Conn(int(port), 5.0)
    try:
        found = c.get_many(keys)
    finally:
        c.close()
    bad = [k for i, k in enumerate(keys) if found.get(k) != value_for(tag, i)]
    if bad:
        print(f"mget: {len(bad)} of {n} keys missing or wrong, e.g. "
              f"{bad[0].decode()}", file=sys.stderr)
        return 1
    print(f"mget {n} keys {prefix}:* ok")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "wait":
            return cmd_wait(*args)
        if cmd == "set":
            only = opt(args, "--only")
            return cmd_set(*args, only=only)
        if cmd == "has":
            return cmd_has(*args)
        if cmd == "get":
            return cmd_get(args[0], args[1], args[2], args[3], args[4:])
        if cmd == "mget":
            return cmd_mget(*args)
    except (OSError, Reply) as e:
        print(f"{cmd}: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
