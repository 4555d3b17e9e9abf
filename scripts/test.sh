#!/usr/bin/env bash
# The whole test suite: unit, property, golden-vector and integration tests on
# the io_uring backend, the integration tests again on the epoll backend, and
# the container test when a Docker engine answers (it fails, saying why, when
# none does; SKIP_DOCKER=1 skips it on purpose).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in memcached nutcracker; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
    echo "missing $tool: apt-get install -y memcached nutcracker" >&2
    exit 1
  fi
done

echo "== cargo test (io_uring backend)"
MEMRING_IO_BACKEND=uring cargo test

echo "== heap allocations per proxied request (counting allocator build)"
cargo test --features alloc-stats --test alloc_proxy -- --nocapture

echo "== benches compile"
cargo build --benches --quiet

echo "== integration tests again on the epoll backend"
# Every test that starts the proxy; the pure ones (harness self-test, golden
# vectors, allocation count) do not depend on the backend.
integration=()
for f in tests/*.rs; do
  name="$(basename "$f" .rs)"
  case "$name" in harness_selftest|ring_golden|alloc_free|alloc_proxy) continue ;; esac
  integration+=(--test "$name")
done
MEMRING_IO_BACKEND=epoll cargo test "${integration[@]}"

if [ "${SKIP_DOCKER:-0}" = 1 ]; then
  echo "== container test skipped (SKIP_DOCKER=1)"
else
  echo "== container test"
  bash docker/test.sh
fi
