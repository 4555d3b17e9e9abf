#!/usr/bin/env bash
# Build the memring image (docker/Dockerfile, FROM scratch) from a static
# binary. The build context holds only that binary, stripped of debug info.
#
# Usage: docker/build-image.sh [TAG]            default TAG: memring:latest
#        MEMRING_BIN=/path/to/static/memring docker/build-image.sh
#            (skip the cargo build; the binary must be statically linked)
# Prints the tag on stdout and the image size on stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tag="${1:-memring:latest}"

if [[ -n "${MEMRING_BIN:-}" ]]; then
    bin="$MEMRING_BIN"
else
    bin="$("$here/../scripts/build-static.sh" | tail -n 1)"
fi
if [[ ! -x "$bin" ]]; then
    echo "build-image: no executable at $bin" >&2
    exit 1
fi
# A dynamically linked binary would start nowhere in a scratch image.
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "build-image: $bin is dynamically linked; use scripts/build-static.sh" >&2
    exit 1
fi

ctx="$(mktemp -d "${TMPDIR:-/tmp}/memring-image-ctx.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
# Keep the symbol table (readable backtraces), drop DWARF (most of the size).
strip --strip-debug -o "$ctx/memring" "$bin"
cp "$here/Dockerfile" "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "image $tag: $(docker image inspect -f '{{.Size}}' "$tag") bytes" >&2
echo "$tag"
