#!/usr/bin/env bash
# Build the uring-probe test image (memring-test/uring-probe) FROM scratch:
# a static C program that reports whether io_uring_setup is allowed.
# Usage: docker/seccomp-probe/build.sh [TAG]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tag="${1:-memring-test/uring-probe}"
ctx="$(mktemp -d "${TMPDIR:-/tmp}/memring-probe-ctx.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT

cc="${CC:-cc}"
"$cc" -static -O2 -Wall -Wextra -pthread -o "$ctx/uring-probe" "$here/uring-probe.c"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY uring-probe /uring-probe
USER 65534:65534
ENTRYPOINT ["/uring-probe"]
DOCKERFILE
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
