#!/usr/bin/env bash
# Container test for memring (issue 5). Needs a Docker engine, docker-compose
# or `docker compose`, python3, a C compiler and cargo; no registry access.
#
#   1. builds memring-test/{memring,memcached,uring-probe} (all FROM scratch)
#      and fails if the memring image is 10 MB or more;
#   2. seccomp: the uring-probe gets EPERM from io_uring_setup under Docker's
#      default policy and succeeds under docker/seccomp-io_uring.json;
#   3. failover: compose cluster (docker/compose.yml), 200 keys written through
#      memring, the 3 primaries killed, every key read back from the backups;
#   4. partition: fresh cluster, m1 disconnected from the network, every
#      request answered within the request timeout, m1's keys by a backup;
#   5. memring under Docker's default seccomp policy: `--io-backend auto`
#      warns and serves, `--io-backend uring` exits non-zero naming seccomp.
#
# Talks to containers only through ports published on 127.0.0.1. Removes its
# containers and networks on exit; leaves the memring-test/* images.
#
# Environment:
#   MEMRING_BIN=path    use this static binary instead of scripts/build-static.sh
#   SKIP_PROXY=1        run only the parts that need no working proxy (1, 2 and
#                       the memcached cluster coming up)
#   KEEP=1              leave the containers running on failure, for debugging
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
client=(python3 "$here/test-client.py")

project="memring-test-$$"          # compose project: containers, network
net="${project}_memring"           # compose names the network <project>_<name>
memring_image="memring-test/memring"
memcached_image="memring-test/memcached"
probe_image="memring-test/uring-probe"
max_image_bytes=10000000           # "< 10 MB"
nkeys=200
request_timeout_s=1                # memring's default --request-timeout
connect_timeout_s=1                # memring's default --connect-timeout
# A request must be answered within its timeout plus scheduling slack (the
# partition), or plus a connect timeout when a primary has just died.
latency_bound_s="$(awk "BEGIN { print $request_timeout_s + 1.5 }")"
failover_bound_s="$(awk "BEGIN { print $request_timeout_s + $connect_timeout_s + 1.5 }")"
failure_limit=2                    # memring's default --failure-limit
tmp="$(mktemp -d "${TMPDIR:-/tmp}/memring-test.XXXXXX")"
standalone=()                      # containers started with docker run

log() { printf '\n=== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 && "${KEEP:-}" == 1 ]]; then
        echo "KEEP=1: leaving project $project and ${standalone[*]:-} running" >&2
        return
    fi
    if [[ ${#standalone[@]} -gt 0 ]]; then
        docker rm -f "${standalone[@]}" >/dev/null 2>&1 || true
    fi
    if [[ -n "${compose_bin:-}" ]]; then
        compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    fi
    docker network rm "$net" >/dev/null 2>&1 || true
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites -----------------------------------------------------------

if ! docker info >/dev/null 2>&1; then
    echo "Docker engine not reachable: install docker.io / start dockerd" >&2
    exit 1
fi
if docker compose version >/dev/null 2>&1; then
    compose_bin=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_bin=(docker-compose)
else
    echo "neither 'docker compose' nor docker-compose found: install docker-compose" >&2
    exit 1
fi
for tool in python3 cc; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

# The override publishes every memcached on an ephemeral 127.0.0.1 port, so the
# test can look at what memring stored where; memring gets an ephemeral port.
cat > "$tmp/test-override.yml" <<'EOF'
version: "3.8"
services:
  m1: {ports: ["127.0.0.1::11211"]}
  m2: {ports: ["127.0.0.1::11211"]}
  m3: {ports: ["127.0.0.1::11211"]}
  b1: {ports: ["127.0.0.1::11211"]}
  b2: {ports: ["127.0.0.1::11211"]}
EOF

# compose ARGS...: run in docker/ (the seccomp path in compose.yml is relative
# to the working directory for both compose implementations).
compose() {
    (cd "$here" && MEMRING_IMAGE="$memring_image" MEMCACHED_IMAGE="$memcached_image" \
        MEMRING_PORT="" "${compose_bin[@]}" -p "$project" \
        -f compose.yml -f "$tmp/test-override.yml" "$@")
}
cid() { compose ps -q "$1"; }
# published_port CONTAINER: its 127.0.0.1 port for 11211; dies with the
# container's log if it is not running.
published_port() {
    local p=""
    for _ in $(seq 50); do
        if [[ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" != true ]]; then
            docker logs "$1" >&2 2>&1 || true
            die "container $1 is not running"
        fi
        p="$(docker port "$1" 11211/tcp 2>/dev/null | grep '^127\.0\.0\.1:' | head -n 1 || true)"
        [[ -z "$p" ]] || break
        sleep 0.1
    done
    [[ -n "$p" ]] || die "container $1 has no port published on 127.0.0.1"
    echo "${p##*:}"
}
# port SERVICE: the 127.0.0.1 port published for the compose service's 11211
port() {
    local id
    id="$(cid "$1")"
    [[ -n "$id" ]] || die "no container for service $1"
    published_port "$id"
}

# --- 1. images ----------------------------------------------------------------

log "building images"
"$here/memcached/build.sh" "$memcached_image" 2>/dev/null
"$here/seccomp-probe/build.sh" "$probe_image" 2>/dev/null
"$here/build-image.sh" "$memring_image" 2>"$tmp/build.log" || {
    cat "$tmp/build.log" >&2
    die "memring image build failed"
}
size="$(docker image inspect -f '{{.Size}}' "$memring_image")"
echo "image $memring_image: $size bytes"
echo "image $memcached_image: $(docker image inspect -f '{{.Size}}' "$memcached_image") bytes"
[[ "$size" -lt "$max_image_bytes" ]] || die "memring image is $size bytes, >= 10 MB"

# --- 2. seccomp ---------------------------------------------------------------

log "seccomp: io_uring under Docker's default profile and under ours"
python3 "$here/gen-seccomp.py" --check "$here/seccomp-io_uring.json" \
    || die "docker/seccomp-io_uring.json is stale"
python3 "$here/gen-seccomp.py" --without-io-uring > "$tmp/seccomp-no-io_uring.json"

probe() { # probe NAME [docker run options...] -> prints output, returns exit code
    local name="$project-$1"; shift
    local rc=0
    docker run --rm --name "$name" "$@" "$probe_image" || rc=$?
    return "$rc"
}
rc=0; probe probe-ours --security-opt "seccomp=$here/seccomp-io_uring.json" || rc=$?
[[ $rc -eq 0 ]] || die "io_uring refused under docker/seccomp-io_uring.json (exit $rc)"
rc=0; probe probe-no-uring --security-opt "seccomp=$tmp/seccomp-no-io_uring.json" || rc=$?
[[ $rc -eq 1 ]] || die "gen-seccomp.py --without-io-uring did not give EPERM (exit $rc)"
rc=0; probe probe-default || rc=$?
case $rc in
    1)  echo "engine default profile blocks io_uring (Docker >= 25)"
        default_seccomp=() ;;
    0)  # Docker < 25 (like 20.10 in Debian 12) still allows io_uring.
        echo "NOTE: this engine's default profile allows io_uring (Docker < 25);" \
             "'default profile' below means gen-seccomp.py --without-io-uring," \
             "which is what Docker >= 25 ships"
        default_seccomp=(--security-opt "seccomp=$tmp/seccomp-no-io_uring.json") ;;
    *)  die "uring-probe under the default profile: unexpected exit $rc" ;;
esac

# --- 3. failover: kill the primaries -----------------------------------------

cluster_up() {
    compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    compose up -d m1 m2 m3 b1 b2
    local s p
    for s in m1 m2 m3 b1 b2; do
        p="$(port "$s")"
        "${client[@]}" wait "$p" 10 >/dev/null || die "memcached $s did not come up"
    done
    echo "memcached cluster up: m1 m2 m3 b1 b2"
}

memring_up() {
    local p
    compose up -d --no-deps memring
    p="$(port memring)"
    if ! "${client[@]}" wait "$p" 15; then
        compose logs memring >&2 || true
        die "memring did not answer version"
    fi
}

log "failover: cluster up"
cluster_up
if [[ "${SKIP_PROXY:-}" == 1 ]]; then
    echo "SKIP_PROXY=1: stopping before the parts that need a working proxy"
    exit 0
fi
memring_up
mr="$(port memring)"

log "failover: write $nkeys keys, kill m1 m2 m3, read them back"
"${client[@]}" set "$mr" k "$nkeys" v1
"${client[@]}" mget "$mr" k "$nkeys" v1
for s in b1 b2; do
    n="$("${client[@]}" has "$(port "$s")" k "$nkeys" | wc -l)"
    echo "backup $s holds $n of $nkeys keys"
done
docker kill "$(cid m1)" "$(cid m2)" "$(cid m3)" >/dev/null
# The first requests may meet connections to the dead primaries; each key gets
# three tries, each answered within request timeout + connect timeout + slack.
"${client[@]}" get "$mr" k "$nkeys" v1 --attempts 3 --max-latency "$failover_bound_s" \
    --max-failures $((3 * failure_limit)) || {
    compose logs memring >&2 || true
    die "keys not readable after the primaries were killed"
}
"${client[@]}" mget "$mr" k "$nkeys" v1 || die "multi-get failed after the primaries were killed"

# --- 4. partition -------------------------------------------------------------

log "partition: fresh cluster, disconnect m1, answers within ${latency_bound_s}s"
compose down --volumes --remove-orphans >/dev/null 2>&1 || true
cluster_up
memring_up
mr="$(port memring)"
"${client[@]}" set "$mr" p "$nkeys" v1
"${client[@]}" has "$(port m1)" p "$nkeys" > "$tmp/on-m1"
n_m1="$(wc -l < "$tmp/on-m1")"
echo "m1 holds $n_m1 of $nkeys keys"
[[ "$n_m1" -gt 0 ]] || die "no key landed on m1: is memring writing to the primaries?"
# Give m1's keys a value only the backups have: a reply with it came from a backup.
"${client[@]}" set "$(port b1)" p "$nkeys" backup --only "$tmp/on-m1" >/dev/null
"${client[@]}" set "$(port b2)" p "$nkeys" backup --only "$tmp/on-m1" >/dev/null
docker network disconnect "$net" "$(cid m1)"
# Every request is answered within the bound; up to --failure-limit of them may
# be an error or a miss (the ones that discover m1 is gone), none may be wrong.
"${client[@]}" get "$mr" p "$nkeys" v1 --tag-for "$tmp/on-m1" backup \
    --max-latency "$latency_bound_s" --max-failures "$failure_limit" \
    --attempts $((failure_limit + 1)) || {
    compose logs memring >&2 || true
    die "partition: requests not answered in time by the backup"
}

# --- 5. memring under Docker's default seccomp profile ------------------------

log "default seccomp profile: --io-backend auto falls back and serves"
name="$project-auto"
standalone+=("$name")
docker run -d --name "$name" --network "$net" -p 127.0.0.1::11211 \
    "${default_seccomp[@]}" "$memring_image" \
    --io-backend auto -s m2:11211 -b b2:11211 >/dev/null
auto_port="$(published_port "$name")"
"${client[@]}" wait "$auto_port" 15 || { docker logs "$name" >&2; die "auto: memring did not start"; }
"${client[@]}" set "$auto_port" a 20 v1 >/dev/null
"${client[@]}" mget "$auto_port" a 20 v1 || { docker logs "$name" >&2; die "auto: not serving"; }
docker logs "$name" > "$tmp/auto.log" 2>&1
if ! grep -i 'io_uring' "$tmp/auto.log" | grep -qiE 'falling back to epoll'; then
    cat "$tmp/auto.log" >&2
    die "auto: no warning line naming io_uring and 'falling back to epoll'"
fi
grep -i 'io_uring' "$tmp/auto.log" | grep -iE 'falling back to epoll' | head -n 1

log "default seccomp profile: --io-backend uring exits non-zero naming seccomp"
name="$project-uring"
standalone+=("$name")
docker run -d --name "$name" --network "$net" \
    "${default_seccomp[@]}" "$memring_image" \
    --io-backend uring -s m2:11211 >/dev/null
rc="$(timeout 20 docker wait "$name")" || die "uring: memring still running after 20s"
docker logs "$name" > "$tmp/uring.log" 2>&1
cat "$tmp/uring.log"
[[ "$rc" -ne 0 ]] || die "uring: memring exited 0"
grep -qi 'seccomp' "$tmp/uring.log" || die "uring: exit message does not mention seccomp"
echo "uring: exit status $rc"

# --- 6. TLS to clients from the FROM-scratch image ------------------------------

log "TLS: the image serves a TLS listener with mounted certificates"
tls="$tmp/tls"
mkdir -p "$tls"
( cd "$tls" &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj "/CN=container test CA" -keyout ca.key -out ca.pem 2>/dev/null &&
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null &&
  printf 'subjectAltName=IP:127.0.0.1\n' > san.cnf &&
  openssl x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -extfile san.cnf -out server.pem 2>/dev/null ) || die "tls: openssl failed (apt-get install openssl)"
# The image runs as uid 65534: a throwaway key is made readable for it.
chmod 0644 "$tls/server.key"
name="$project-tls"
standalone+=("$name")
docker run -d --name "$name" --network "$net" -p 127.0.0.1::11212 \
    --security-opt seccomp="$here/seccomp-io_uring.json" -v "$tls:/tls:ro" "$memring_image" \
    -p 0 --tls-listen 0.0.0.0:11212 --tls-cert /tls/server.pem --tls-key /tls/server.key \
    -s m2:11211 >/dev/null
tls_port="$(docker port "$name" 11212/tcp | head -n 1 | sed 's/.*://')"
python3 - "$tls_port" "$tls/ca.pem" <<'PY' || { docker logs "$name" >&2; die "tls: not serving over TLS"; }
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
deadline = time.time() + 15
while True:
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                            server_hostname="127.0.0.1")
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
s.sendall(b"set tls-k 0 0 3\r\nabc\r\nget tls-k\r\n")
got = b""
while not got.endswith(b"END\r\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
assert got == b"STORED\r\nVALUE tls-k 0 3\r\nabc\r\nEND\r\n", got
print("tls: served over", s.version())
PY

log "PASS (memring image $size bytes)"
