#!/usr/bin/env bash
# Build the base image locally from Debian packages, for machines that reach no image registry:
# debootstrap a minimal Debian (bookworm: Python 3.11) with python3 + python3-venv into a folder and
# `docker import` it as one layer. Idempotent: does nothing when the image exists (FORCE=1 rebuilds).
#
#   sudo docker/build-base.sh                    # -> pixelrpc-base:bookworm
#
# Settings (environment): BASE_IMAGE (image name), DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (default: the
# first Debian archive URI that apt uses here, else http://deb.debian.org/debian), DOCKER
# (client command), BASE_WORKDIR (scratch folder, removed afterwards), FORCE=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-pixelrpc-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DOCKER=${DOCKER:-docker}
BASE_WORKDIR=${BASE_WORKDIR:-$ROOT/docker/build/rootfs-$DEBIAN_SUITE}
PACKAGES=python3,python3-venv,ca-certificates

log() { printf '[build-base] %s\n' "$*" >&2; }

if [[ ${FORCE:-0} != 1 ]] && $DOCKER image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    log "$BASE_IMAGE exists; nothing to do (FORCE=1 rebuilds it)"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    log "debootstrap needs root; run as root (or sudo)"
    exit 1
fi
if ! command -v debootstrap > /dev/null; then
    log "debootstrap is missing: apt-get install debootstrap"
    exit 1
fi

if [[ -z ${DEBIAN_MIRROR:-} ]]; then
    DEBIAN_MIRROR=$(grep -hE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | tr -d ' ' | head -n1 || true)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi

start=$(date +%s)
partial="$BASE_WORKDIR.partial"
rm -rf "$partial"
mkdir -p "$(dirname "$partial")"
trap 'rm -rf "$partial"' EXIT
log "debootstrap $DEBIAN_SUITE from $DEBIAN_MIRROR (minbase + $PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" "$DEBIAN_SUITE" "$partial" "$DEBIAN_MIRROR" \
    > "$ROOT/docker/build/debootstrap.log" 2>&1 || {
    tail -n 20 "$ROOT/docker/build/debootstrap.log" >&2
    exit 1
}

# Trim what an image does not need; point apt at the same mirror for users who extend the image.
chroot "$partial" apt-get clean
rm -rf "$partial"/var/lib/apt/lists/* "$partial"/var/cache/apt/*.bin "$partial"/var/log/* \
    "$partial"/usr/share/doc/* "$partial"/usr/share/man/* "$partial"/usr/share/info/* "$partial"/tmp/*
echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" > "$partial/etc/apt/sources.list"
chroot "$partial" python3 -c 'import ensurepip, venv' # the Dockerfile needs python3 -m venv

log "importing $(du -sh "$partial" | cut -f1) as $BASE_IMAGE"
tar --numeric-owner -C "$partial" -c . | $DOCKER import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $DEBIAN_SUITE minbase + $PACKAGES" - "$BASE_IMAGE" > /dev/null
rm -rf "$partial"
log "built $BASE_IMAGE in $(( $(date +%s) - start )) s: $($DOCKER run --rm --network none "$BASE_IMAGE" python3 --version)"
