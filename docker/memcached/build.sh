#!/usr/bin/env bash
# Build memring-test/memcached FROM scratch around this machine's memcached:
# the binary, exactly the shared libraries `ldd` lists, and the ELF loader,
# each copied to the path the loader will look for it.
#
# Usage: docker/memcached/build.sh [TAG]     (MEMCACHED=/path/to/memcached)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tag="${1:-memring-test/memcached}"
memcached="${MEMCACHED:-/usr/bin/memcached}"

if [[ ! -x "$memcached" ]]; then
    echo "memcached not found at $memcached (apt-get install memcached)" >&2
    exit 1
fi

ctx="$(mktemp -d "${TMPDIR:-/tmp}/memring-memcached-ctx.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"

copy() { # copy FILE (following symlinks) to the same path under rootfs
    mkdir -p "$root$(dirname "$2")"
    cp -L "$1" "$root$2"
}

copy "$memcached" /usr/bin/memcached
# ldd lines: "libx.so.N => /path/libx.so.N (0x...)", "/lib64/ld-linux... (0x...)"
# and "linux-vdso.so.1 (0x...)" (in the kernel, nothing to copy).
while read -r first arrow path _; do
    if [[ "$arrow" == "=>" ]]; then
        [[ "$path" == /* ]] || { echo "ldd: unresolved $first" >&2; exit 1; }
        copy "$path" "$path"
    elif [[ "$first" == /* ]]; then
        copy "$first" "$first"      # the loader, at the path in PT_INTERP
    fi
done < <(ldd "$memcached")

cp "$here/Dockerfile" "$ctx/Dockerfile"
(cd "$root" && find . -type f | sort) >&2
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
