#!/usr/bin/env bash
# `make compose-test`: build the image, bring the suite up with docker-compose, wait until every
# service is healthy, check the hardening of every running container (read-only root, writable /tmp,
# no capabilities, no-new-privileges, non-root, CPU shares, log rotation), check that Prometheus
# scrapes the three services, run captioning (streamed), saliency and a short style transfer from the
# host through the CLI, and bring it down. Not part of `make test` (tests/test_compose.py checks the
# rendered configuration there).
#
# It talks to loopback only: docker-compose.host.yml puts the services on the host network bound to
# 127.0.0.1. It works without any image registry: the base image is debootstrapped locally
# (docker/build-base.sh) and dependencies come from a wheel folder (docker/prepare-wheels.sh) served on
# 127.0.0.1 during the build. If no Docker daemon answers, it starts dockerd itself (no bridge, no
# iptables) and stops it again at the end.
#
# Settings (environment):
#   DOCKER_STORAGE_DRIVER  driver for a dockerd started here: auto (overlay2 when this kernel mounts
#                          overlayfs on the data root, else vfs), overlay2 or vfs       [auto]
#   DOCKER_DATA_ROOT       data root for a dockerd started here                          [/var/lib/docker]
#   KEEP_UP=1              leave the suite running (and dockerd, if started here)
#   KEEP_DOCKERD=1         leave a dockerd started here running
#   CLEAN=1                also remove the registry volume at the end (next run bootstraps again)
#   HEALTH_TIMEOUT         seconds to wait for healthy services                          [900]
#   WHEELS_PORT            loopback port the wheels are served on during the build (a fixed
#                          port keeps the image's build cache valid; any free one if taken) [8765]
#   PIXELRPC_BOOTSTRAP_FLAGS  flags of registry-init's bootstrap; set it empty for the full models
#                          (the volume keeps whatever was bootstrapped first: see CLEAN)  [--quick]
#   PIXELRPC_IMAGE, PIXELRPC_BASE_IMAGE, COMPOSE_PROJECT, COMPOSE_TEST_OUT
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROJECT=${COMPOSE_PROJECT:-pixelrpc-test}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)
IMAGE=${PIXELRPC_IMAGE:-pixelrpc:$VERSION}
PROM_IMAGE=${PIXELRPC_PROMETHEUS_IMAGE:-pixelrpc-prometheus:$VERSION}
BASE_IMAGE=${PIXELRPC_BASE_IMAGE:-pixelrpc-base:bookworm}
OUT=${COMPOSE_TEST_OUT:-$ROOT/docker/build/compose-test}
DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-900}
WHEELS_PORT=${WHEELS_PORT:-8765}
export PIXELRPC_BOOTSTRAP_FLAGS=${PIXELRPC_BOOTSTRAP_FLAGS---quick}
PY=$ROOT/.venv/bin/python
CLI=$ROOT/.venv/bin/pixelrpc
SERVICES=(captioning visualization style)
declare -A PORT=([captioning]=50051 [visualization]=50052 [style]=50053)
declare -A METRICS=([captioning]=9101 [visualization]=9102 [style]=9103)

STARTED_DOCKERD=""
WHEEL_SERVER=""
SUITE_UP=""
mkdir -p "$OUT"

log() { printf '== [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'compose-test FAILED: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    command -v dockerd > /dev/null || missing+=(docker.io)
    command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap > /dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]})"
        log "installing ${missing[*]} from Debian"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > "$OUT/apt.log"
    fi
    # Debian's client matches Debian's daemon; another docker earlier in PATH may be newer.
    DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
    export DOCKER
    if command -v docker-compose > /dev/null; then COMPOSE=(docker-compose); else COMPOSE=("$DOCKER" compose); fi
    COMPOSE+=(-p "$PROJECT")
    [[ -x $CLI ]] || die "$CLI is missing: run 'make install' first (the test drives the suite with the host CLI)"
}

overlay_works() {
    local d
    d=$(mktemp -d -p "$(dirname "$DATA_ROOT")")
    mkdir "$d/l" "$d/u" "$d/w" "$d/m"
    if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2> /dev/null; then
        umount "$d/m"
        rm -rf "$d"
        return 0
    fi
    rm -rf "$d"
    return 1
}

ensure_daemon() {
    if "$DOCKER" info > /dev/null 2>&1; then
        log "using the running Docker daemon ($("$DOCKER" info -f '{{.Driver}}') storage)"
        return
    fi
    [[ $(id -u) == 0 ]] || die "no Docker daemon answers and starting one needs root"
    local driver=${DOCKER_STORAGE_DRIVER:-auto}
    if [[ $driver == auto ]]; then
        mkdir -p "$DATA_ROOT"
        if overlay_works; then driver=overlay2; else driver=vfs; fi
    fi
    log "starting dockerd (--storage-driver=$driver --bridge=none --iptables=false, data root $DATA_ROOT)"
    # Only stdin/stdout/stderr go to dockerd: one left running (KEEP_UP, KEEP_DOCKERD) would otherwise
    # keep the caller's descriptors open, e.g. the lock of `flock /tmp/bench.lock make compose-test`.
    /usr/bin/python3 -c 'import os, sys; os.closerange(3, os.sysconf("SC_OPEN_MAX")); os.execvp(sys.argv[1], sys.argv[1:])' \
        dockerd --storage-driver="$driver" --bridge=none --iptables=false --ip-masq=false \
        --data-root "$DATA_ROOT" > "$OUT/dockerd.log" 2>&1 < /dev/null &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do
        "$DOCKER" info > /dev/null 2>&1 && return
        kill -0 "$STARTED_DOCKERD" 2> /dev/null || { tail -n 20 "$OUT/dockerd.log" >&2; die "dockerd exited"; }
        sleep 1
    done
    die "dockerd did not answer within 60 s (see $OUT/dockerd.log)"
}

# --- image -------------------------------------------------------------------------------------------
serve_wheels() {
    # A fixed port when it is free: WHEELS_URL is a build argument of the RUN layer, so a new port
    # would be a cache miss and rebuild the whole ~6 GB layer even when nothing changed.
    "$PY" - "$ROOT/docker/wheels" "$WHEELS_PORT" > "$OUT/wheel-server.port" 2> "$OUT/wheel-server.log" <<'EOF' &
import functools
import http.server
import sys

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

handler = functools.partial(Quiet, directory=sys.argv[1])
try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler)
except OSError:  # taken: any free port (the image layer is then rebuilt)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
EOF
    WHEEL_SERVER=$!
    for _ in $(seq 50); do
        [[ -s $OUT/wheel-server.port ]] && break
        sleep 0.1
    done
    [[ -s $OUT/wheel-server.port ]] || die "the wheel server did not start (see $OUT/wheel-server.log)"
    WHEELS_URL="http://127.0.0.1:$(cat "$OUT/wheel-server.port")/"
}

build_image() {
    BASE_IMAGE=$BASE_IMAGE "$ROOT/docker/build-base.sh"
    "$ROOT/docker/prepare-wheels.sh"
    serve_wheels
    log "building $IMAGE from $BASE_IMAGE with the wheels at $WHEELS_URL"
    DOCKER_BUILDKIT=0 "$DOCKER" build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "WHEELS_URL=$WHEELS_URL" -t "$IMAGE" "$ROOT" > "$OUT/build.log" 2>&1 ||
        { tail -n 30 "$OUT/build.log" >&2; die "image build failed (see $OUT/build.log)"; }
    kill "$WHEEL_SERVER" 2> /dev/null || true
    wait "$WHEEL_SERVER" 2> /dev/null || true
    WHEEL_SERVER=""
    # The image this replaced is ~6 GB: drop the untagged pixelrpc images (only those) right away.
    "$DOCKER" image prune -f --filter label=org.opencontainers.image.title=pixelrpc > /dev/null
    log "building $PROM_IMAGE (Debian's prometheus package on $BASE_IMAGE)"
    DOCKER_BUILDKIT=0 "$DOCKER" build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$PROM_IMAGE" \
        "$ROOT/docker/prometheus" > "$OUT/build-prometheus.log" 2>&1 ||
        { tail -n 30 "$OUT/build-prometheus.log" >&2; die "prometheus image build failed"; }
}

# --- suite -------------------------------------------------------------------------------------------
# docker-compose 1.29 refuses a service on the host network that still publishes ports, and an
# override file cannot remove the base file's `ports`. So compose itself merges the two files
# (`config`) and the published ports of host-network services are dropped from the result.
render_host_config() {
    local merged=$OUT/docker-compose.merged.yml
    PIXELRPC_IMAGE=$IMAGE PIXELRPC_PROMETHEUS_IMAGE=$PROM_IMAGE "${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.host.yml config > "$merged"
    /usr/bin/python3 - "$merged" "$OUT/docker-compose.effective.yml" <<'EOF'
import sys

try:
    import yaml
except ImportError:
    sys.exit("Debian python3-yaml is needed to edit the merged compose file (apt-get install python3-yaml)")
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
for service in config["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
EOF
    COMPOSE+=(-f "$OUT/docker-compose.effective.yml")
}

suite_logs() { "${COMPOSE[@]}" logs --no-color --tail 60 >&2 || true; }

up() {
    log "docker-compose up (registry-init first: bootstraps the models that are missing)"
    SUITE_UP=1
    "${COMPOSE[@]}" up -d --no-build > "$OUT/up.log" 2>&1 ||
        { cat "$OUT/up.log" >&2; suite_logs; die "docker-compose up failed"; }
    local init
    init=$("${COMPOSE[@]}" ps -q registry-init)
    log "registry-init exited with $("$DOCKER" inspect -f '{{.State.ExitCode}}' "$init")" \
        "(ran $("$DOCKER" inspect -f '{{.State.StartedAt}} .. {{.State.FinishedAt}}' "$init")); its last lines:"
    "$DOCKER" logs --tail 12 "$init" >&2 2>&1 || true
}

wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) svc cid status pending
    while :; do
        pending=()
        for svc in "${SERVICES[@]}"; do
            cid=$("${COMPOSE[@]}" ps -q "$svc")
            status=$("$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$cid")
            [[ $status == healthy ]] || pending+=("$svc:$status")
            [[ $status != unhealthy ]] || { suite_logs; die "$svc is unhealthy"; }
        done
        ((${#pending[@]})) || break
        ((SECONDS < deadline)) || { suite_logs; die "not healthy after ${HEALTH_TIMEOUT}s: ${pending[*]}"; }
        sleep 5
    done
    log "every service is healthy"
}

down() {
    [[ -n $SUITE_UP ]] || return 0
    log "docker-compose down${CLEAN:+ -v}"
    "${COMPOSE[@]}" down ${CLEAN:+-v} > "$OUT/down.log" 2>&1 || cat "$OUT/down.log" >&2
    SUITE_UP=""
}

cleanup() {
    local rc=$?
    [[ -z $WHEEL_SERVER ]] || kill "$WHEEL_SERVER" 2> /dev/null || true
    if [[ -z ${KEEP_UP:-} ]]; then
        down
        if [[ -n $STARTED_DOCKERD && -z ${KEEP_DOCKERD:-} ]]; then
            log "stopping the dockerd started here (pid $STARTED_DOCKERD)"
            kill "$STARTED_DOCKERD" 2> /dev/null || true
            wait "$STARTED_DOCKERD" 2> /dev/null || true
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- hardening and monitoring ---------------------------------------------------------------------------
check_hardening() {
    local svc cid f status nproc total=0
    for svc in "${SERVICES[@]}" prometheus; do
        cid=$("${COMPOSE[@]}" ps -q "$svc")
        [[ -n $cid ]] || die "$svc is not running"
        f=$("$DOCKER" inspect -f '{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.NanoCpus}} {{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config "max-size"}}' "$cid")
        read -r ro caps secopt nano logtype maxsize <<< "$f"
        [[ $ro == true ]] || die "$svc: root file system is not read-only"
        [[ $caps == '["ALL"]' ]] || die "$svc: capabilities not all dropped ($caps)"
        [[ $secopt == *no-new-privileges:true* ]] || die "$svc: no-new-privileges missing ($secopt)"
        [[ $nano -gt 0 ]] || die "$svc: no CPU limit"
        [[ $logtype == json-file && -n $maxsize ]] || die "$svc: logs not rotated ($logtype $maxsize)"
        total=$((total + nano))
        status=$("$DOCKER" exec "$cid" cat /proc/1/status)
        grep -qE '^CapEff:[[:space:]]+0+$' <<< "$status" || die "$svc: effective capabilities are not empty"
        grep -qE '^NoNewPrivs:[[:space:]]+1$' <<< "$status" || die "$svc: NoNewPrivs is not set"
        [[ $("$DOCKER" exec "$cid" id -u) != 0 ]] || die "$svc runs as root"
        ! "$DOCKER" exec "$cid" sh -c ': > /probe-write' 2> /dev/null || die "$svc: / is writable"
        "$DOCKER" exec "$cid" sh -c ': > /tmp/probe-write && rm /tmp/probe-write' || die "$svc: /tmp is not writable"
        log "$svc: read-only root, writable /tmp, CapEff 0, NoNewPrivs, uid $("$DOCKER" exec "$cid" id -u)," \
            "cpus $(awk "BEGIN {print $nano / 1e9}"), logs $logtype max-size $maxsize"
    done
    nproc=$(nproc)
    ((total <= nproc * 1000000000)) || die "CPU shares sum to $((total / 1000000)) mCPU, more than the host's $nproc cores"
}

check_prometheus() {
    local deadline=$((SECONDS + 90)) body=""
    while ((SECONDS < deadline)); do
        body=$("$PY" -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
            "http://127.0.0.1:9090/api/v1/targets?state=active" 2> /dev/null || true)
        if [[ -n $body ]] && "$PY" -c 'import json, sys
targets = json.loads(sys.argv[1])["data"]["activeTargets"]
up = sorted(t["labels"]["instance"].rsplit(":", 1)[1] for t in targets if t["health"] == "up")
print("prometheus targets up (metrics ports):", up, file=sys.stderr)
sys.exit(0 if up == ["9101", "9102", "9103"] else 1)' "$body"; then
            "$PY" -c 'import json, sys, urllib.request
r = json.loads(urllib.request.urlopen(sys.argv[1], timeout=5).read())
assert r["data"]["result"], "no pixelrpc_service_ready samples"
print("prometheus: pixelrpc_service_ready", {x["metric"]["service"]: x["value"][1] for x in r["data"]["result"]}, file=sys.stderr)' \
                "http://127.0.0.1:9090/api/v1/query?query=pixelrpc_service_ready" || die "no pixelrpc metrics in Prometheus"
            return
        fi
        sleep 5
    done
    die "Prometheus does not scrape all three services: $body"
}

# --- the calls a user makes ----------------------------------------------------------------------------
exercise() {
    local addr
    "$CLI" health --addr "127.0.0.1:${PORT[captioning]}" --addr "127.0.0.1:${PORT[visualization]}" \
        --addr "127.0.0.1:${PORT[style]}"
    for svc in "${SERVICES[@]}"; do
        "$PY" -c 'import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
assert "pixelrpc_" in body, "no pixelrpc metrics"' "http://127.0.0.1:${METRICS[$svc]}/metrics" ||
            die "metrics of $svc on 127.0.0.1:${METRICS[$svc]} missing"
    done
    "$PY" - "$OUT" <<'EOF'
import sys

import numpy as np
from PIL import Image

from pixelrpc.models.data.shapes import generate_batch

batch = generate_batch(2024, 2, 64)
for name, image in zip(("scene", "style"), batch.images, strict=True):
    Image.fromarray(image).save(f"{sys.argv[1]}/{name}.png")
print("inputs: a shapes scene with captions", list(batch.captions[0]))
EOF
    addr=127.0.0.1:${PORT[captioning]}
    log "caption (streamed) via $addr"
    "$CLI" caption "$OUT/scene.png" --stream --addr "$addr"
    addr=127.0.0.1:${PORT[visualization]}
    log "saliency via $addr"
    "$CLI" saliency "$OUT/scene.png" --label auto -o "$OUT/saliency.png" --addr "$addr"
    addr=127.0.0.1:${PORT[style]}
    log "style transfer (short) via $addr"
    "$CLI" style "$OUT/scene.png" "$OUT/style.png" --size 64 --style-size 64 --iterations 10 \
        -o "$OUT/styled.png" --addr "$addr"
    for f in saliency.png styled.png; do
        [[ -s $OUT/$f ]] || die "$OUT/$f was not written"
    done
}

disk_report() {
    log "disk: docker data root $(du -shx "$("$DOCKER" info -f '{{.DockerRootDir}}')" 2> /dev/null | cut -f1)," \
        "wheels $(du -sh docker/wheels | cut -f1); image $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" |
        awk '{printf "%.2f GB", $1 / 1e9}')"
    "$DOCKER" system df >&2 || true
}

ensure_tools
ensure_daemon
render_host_config
t=$SECONDS; build_image; log "image ready in $((SECONDS - t)) s"
t=$SECONDS; up; wait_healthy; log "suite up and healthy in $((SECONDS - t)) s"
t=$SECONDS; check_hardening; check_prometheus; log "hardening and Prometheus checked in $((SECONDS - t)) s"
t=$SECONDS; exercise; log "CLI calls done in $((SECONDS - t)) s"
disk_report
if [[ -n ${KEEP_UP:-} ]]; then
    log "KEEP_UP=1: the suite stays up; stop it with: ${COMPOSE[*]} down"
else
    t=$SECONDS; down; log "down in $((SECONDS - t)) s"
fi
log "compose-test passed in ${SECONDS} s; outputs in $OUT"
