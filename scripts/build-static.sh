#!/usr/bin/env bash
# Build a statically linked memring (glibc, +crt-static) for the FROM-scratch
# container image. Uses its own target dir (target/static by default) so the
# different RUSTFLAGS do not invalidate everyone else's target/ cache.
#
# Usage: scripts/build-static.sh            # prints the binary's path and size
#        MEMRING_STATIC_TARGET_DIR=/tmp/x scripts/build-static.sh
#
# Note on `-u user`: a static glibc binary cannot load NSS modules that were not
# linked in, so getpwnam/getgrnam only work through /etc/passwd|/etc/group
# ("files") and only if those files exist. The scratch image has neither, so it
# sets a numeric USER instead of using `-u`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="x86_64-unknown-linux-gnu"
target_dir="${MEMRING_STATIC_TARGET_DIR:-$repo/target/static}"

cd "$repo"
# --target is required: without it RUSTFLAGS also apply to build scripts and
# proc macros, which cannot be linked statically.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
CARGO_TARGET_DIR="$target_dir" \
    nice -n 10 cargo build --release --locked --target "$target" --bin memring >&2

bin="$target_dir/$target/release/memring"
if ! file_out="$(file -b "$bin" 2>/dev/null)"; then
    file_out="(file(1) not installed)"
fi
case "$file_out" in
    *dynamically\ linked*)
        echo "build-static: $bin is dynamically linked: $file_out" >&2
        exit 1
        ;;
esac
size="$(stat -c %s "$bin")"
echo "$bin"
echo "size: $size bytes ($(( (size + 1048575) / 1048576 )) MiB) - $file_out" >&2
