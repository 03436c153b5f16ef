# PixelRPC: one image for the whole suite; each service is this image with another command
# (see docker-compose.yml).
#
#   docker build -t pixelrpc:0.1.0 .                                  # online: deps from PyPI
#   docker build -t pixelrpc:0.1.0 --network host \
#       --build-arg BASE_IMAGE=pixelrpc-base:bookworm \
#       --build-arg WHEELS_URL=http://127.0.0.1:8765/ .                # offline: see docker/README.md
#
# BASE_IMAGE needs python3 (3.11) with the venv module; python:3.11-slim and the Debian bookworm base
# that docker/build-base.sh builds locally both qualify. WHEELS_URL, when set, installs every
# dependency from that wheel folder (docker/prepare-wheels.sh fills it, scripts/compose_test.sh serves
# it on loopback) instead of from an index, so nothing large is copied into a layer.
#
# Few layers on purpose: with the vfs storage driver every layer is a full copy of the file system.
# Works with the classic builder and with BuildKit (no syntax directive, no registry needed).

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG WHEELS_URL=""
ARG PIXELRPC_UID=10001

# Metadata first: under the classic builder every instruction after the big RUN would copy the
# whole file system once more (vfs), so only USER follows it.
ENV PATH=/opt/pixelrpc/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIXELRPC_HOST=0.0.0.0 \
    PIXELRPC_REGISTRY=/registry \
    PIXELRPC_LOG_FORMAT=json \
    PIXELRPC_PORT=50051
LABEL org.opencontainers.image.title="pixelrpc" \
      org.opencontainers.image.description="gRPC services for CS231n captioning, network visualization and style transfer"
EXPOSE 50051 50052 50053 9101 9102 9103 8081 8082 8083
# The standard gRPC health service, asked through the CLI on the port this container serves.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=4 \
    CMD pixelrpc health --addr "127.0.0.1:${PIXELRPC_PORT}" --timeout 5 || exit 1
CMD ["pixelrpc", "--help"]
WORKDIR /home/pixelrpc

# The build context is filtered by .dockerignore down to the package sources.
COPY . /opt/pixelrpc/src

# Code and venv stay owned by root; the service user owns only its home and the registry mount point.
RUN set -eux; \
    python3 -m venv /opt/pixelrpc/venv; \
    if [ -n "$WHEELS_URL" ]; then set -- --no-index --find-links "$WHEELS_URL"; else set --; fi; \
    pip install --no-cache-dir "$@" "/opt/pixelrpc/src[serve]"; \
    rm -rf /opt/pixelrpc/src/build /opt/pixelrpc/src/*.egg-info; \
    groupadd --system --gid "$PIXELRPC_UID" pixelrpc; \
    useradd --system --uid "$PIXELRPC_UID" --gid pixelrpc --home-dir /home/pixelrpc --no-create-home \
        --shell /usr/sbin/nologin pixelrpc; \
    mkdir -p /registry; \
    chown pixelrpc:pixelrpc /home/pixelrpc /registry; \
    pixelrpc --help > /dev/null; \
    python3 -c "import pixelrpc.models, pixelrpc.services, pixelrpc.v1, torch, torchvision"

USER pixelrpc
