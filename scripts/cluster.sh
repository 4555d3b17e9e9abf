#!/usr/bin/env bash
# Bring up the seed's cluster on this machine: 3 primary and 2 backup memcached
# servers on 127.0.0.1:10001-10005 and memring in front of them on
# 127.0.0.1:12000, with magent's own command line. Installs memcached (Debian)
# and builds memring if they are missing. Ctrl-C stops everything it started.
#
#   scripts/cluster.sh            # then, in another terminal:
#                                 #   memcping --servers=127.0.0.1:12000 && echo up
#                                 #   memccp --servers=127.0.0.1:12000 /etc/hostname && memccat --servers=127.0.0.1:12000 hostname
#   PORT=12001 scripts/cluster.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
port="${PORT:-12000}"

if ! command -v memcached >/dev/null 2>&1; then
  echo "memcached not found: installing Debian's memcached" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq memcached >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq memcached >/dev/null; fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
cargo build --release --bin memring >&2

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

user_flag=()
[ "$(id -u)" -eq 0 ] && user_flag=(-u nobody)
for p in 10001 10002 10003 10004 10005; do
  memcached "${user_flag[@]}" -U 0 -l 127.0.0.1 -p "$p" -m 64 &
  pids+=($!)
done

# magent's command line, unchanged (the seed's line uses -p 12000).
./target/release/memring -D -l 127.0.0.1 -p "$port" -n 51200 \
  -s 127.0.0.1:10001 -s 127.0.0.1:10002 -s 127.0.0.1:10003 \
  -b 127.0.0.1:10004 -b 127.0.0.1:10005 -v &
pids+=($!)
echo "memring on 127.0.0.1:$port in front of primaries 10001-10003 and backups 10004-10005; Ctrl-C stops it" >&2
wait "${pids[-1]}"
