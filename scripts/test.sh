#!/usr/bin/env bash
# The whole test suite: unit, property, golden-vector and integration tests on
# the io_uring backend, the integration tests again on the epoll backend, and
# the container test when a Docker engine answers (it fails, saying why, when
# none does; SKIP_DOCKER=1 skips it on purpose).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Install what the tests need when it is missing (Debian packages and
# pymemcache), as root or through sudo.
need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
[ -x /usr/sbin/nutcracker ] || command -v nutcracker >/dev/null 2>&1 || need+=(nutcracker)
command -v memccat >/dev/null 2>&1 || need+=(libmemcached-tools)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# tests/metrics.rs scrapes memring with a real Prometheus; tests/package.rs
# installs the .deb (it depends on adduser; the test runs systemd-analyze
# verify on the unit where systemd is installed, else checks its content).
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c 'import pymemcache' 2>/dev/null || python3 -m pip install -q pymemcache
# cargo-deb builds the Debian package that tests/package.rs installs. Building
# it from source takes about 2 minutes on 2 busy cores (once per machine).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb" >&2
  cargo install cargo-deb --locked --quiet
fi

echo "== cargo test (io_uring backend)"
MEMRING_IO_BACKEND=uring cargo test

echo "== heap allocations per proxied request (counting allocator build)"
cargo test --features alloc-stats --test alloc_proxy -- --nocapture

echo "== benches compile"
cargo build --benches --quiet

echo "== integration tests again on the epoll backend"
# Every test that starts the proxy; the pure ones (harness self-test, golden
# vectors, allocation count) and the package test do not depend on the backend.
integration=()
for f in tests/*.rs; do
  name="$(basename "$f" .rs)"
  case "$name" in harness_selftest|ring_golden|alloc_free|alloc_proxy|package) continue ;; esac
  integration+=(--test "$name")
done
MEMRING_IO_BACKEND=epoll cargo test "${integration[@]}"

if [ "${SKIP_DOCKER:-0}" = 1 ]; then
  echo "== container test skipped (SKIP_DOCKER=1)"
else
  echo "== container test"
  bash docker/test.sh
fi
