#!/usr/bin/env bash
# The whole test suite: unit, property, golden-vector and integration tests on
# the io_uring backend, the integration tests again on the epoll backend, and
# the container test when a Docker engine answers (it fails, saying why, when
# none does; SKIP_DOCKER=1 skips it on purpose).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Install what the tests need when it is missing (Debian packages, pylibmc
# among them, and pymemcache), as root or through sudo.
need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
[ -x /usr/sbin/nutcracker ] || command -v nutcracker >/dev/null 2>&1 || need+=(nutcracker)
command -v memccat >/dev/null 2>&1 || need+=(libmemcached-tools)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# The fuzz crate's libfuzzer-sys builds libFuzzer (C++).
command -v c++ >/dev/null 2>&1 || need+=(g++)
# pylibmc (binary protocol client tests) is the Debian package, for /usr/bin/python3.
/usr/bin/python3 -c 'import pylibmc' >/dev/null 2>&1 || need+=(python3-pylibmc)
# tests/metrics.rs scrapes memring with a real Prometheus; tests/package.rs
# installs the .deb (it depends on adduser; the test runs systemd-analyze
# verify on the unit where systemd is installed, else checks its content).
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
command -v readelf >/dev/null 2>&1 || need+=(binutils)
# tests/consistency.rs cuts a server off with nft rules on loopback (root).
[ -x /usr/sbin/nft ] || command -v nft >/dev/null 2>&1 || need+=(nftables)
# tests/tls.rs makes its certificates with openssl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
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

# Every step runs even when an earlier one fails, and every test binary runs
# even when another one fails (--no-fail-fast): one failure must not hide the
# others. The script fails at the end if anything failed.
failed=()
step() {
  local name="$1"
  shift
  echo "== $name"
  if ! "$@"; then
    failed+=("$name")
  fi
}

step "cargo test (io_uring backend)" env MEMRING_IO_BACKEND=uring cargo test --no-fail-fast

step "heap allocations per proxied request (counting allocator build)" \
  cargo test --no-fail-fast --features alloc-stats --test alloc_proxy -- --nocapture

step "benches compile" cargo build --benches --quiet

# The fuzz crate is its own workspace, so nothing else builds it: check it
# here, or it rots unseen (see fuzz/README.md for running the targets).
step "fuzz targets compile" cargo check --manifest-path fuzz/Cargo.toml --bins --quiet

# Every test that starts the proxy; the pure ones (harness self-test, golden
# vectors, allocation count) and the package test do not depend on the backend.
integration=()
for f in tests/*.rs; do
  name="$(basename "$f" .rs)"
  case "$name" in harness_selftest|ring_golden|alloc_free|alloc_proxy|package|layering|generated) continue ;; esac
  integration+=(--test "$name")
done
step "integration tests again on the epoll backend" \
  env MEMRING_IO_BACKEND=epoll cargo test --no-fail-fast "${integration[@]}"

if [ "${SKIP_DOCKER:-0}" = 1 ]; then
  echo "== container test skipped (SKIP_DOCKER=1)"
else
  step "container test" bash docker/test.sh
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all steps passed"
