#!/usr/bin/env bash
# Fill docker/wheels/ with a wheel for every runtime dependency of the package (pyproject.toml's
# [project] dependencies and its `serve` extra, plus the build backend), using this machine's pip, its configuration,
# indexes and caches. The image then installs with `pip install --no-index --find-links` and never
# needs the network. Idempotent: skipped when the requirements did not change (FORCE=1 redoes it).
#
# The wheels must suit the image's Python: run this with a Python 3.11 on Linux x86_64 (the default,
# .venv/bin/python, is one; Debian bookworm's python3 is 3.11 too).
#
# Settings (environment): PYTHON (interpreter with pip), WHEELS_DIR (default docker/wheels), FORCE=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WHEELS_DIR=${WHEELS_DIR:-$ROOT/docker/wheels}

log() { printf '[prepare-wheels] %s\n' "$*" >&2; }

version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ $version != 3.11 ]]; then
    log "$PYTHON is Python $version; the image runs 3.11: set PYTHON to a Python 3.11"
    exit 1
fi

mkdir -p "$WHEELS_DIR"
requirements="$WHEELS_DIR/requirements.txt"
"$PYTHON" - "$ROOT/pyproject.toml" > "$requirements.new" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
for req in (project["project"]["dependencies"] + project["project"]["optional-dependencies"]["serve"]
            + project["build-system"]["requires"]):
    print(req)
EOF

if [[ ${FORCE:-0} != 1 && -f $WHEELS_DIR/.complete ]] && cmp -s "$requirements.new" "$requirements"; then
    rm -f "$requirements.new"
    log "$WHEELS_DIR is up to date ($(find "$WHEELS_DIR" -maxdepth 1 -name "*.whl" | wc -l) wheels, $(du -sh "$WHEELS_DIR" | cut -f1))"
    exit 0
fi
mv "$requirements.new" "$requirements"
rm -f "$WHEELS_DIR/.complete"

start=$(date +%s)
log "building/collecting wheels for: $(tr '\n' ' ' < "$requirements")"
# pip wheel copies existing wheels and builds any sdist into a wheel, so the image needs no compiler.
# (Locations of this machine's pip configuration that lack a package only warn: filtered out.)
"$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS_DIR" -r "$requirements" \
    2> >(grep -v 'is neither a file nor a directory' >&2)
touch "$WHEELS_DIR/.complete"
log "$(find "$WHEELS_DIR" -maxdepth 1 -name "*.whl" | wc -l) wheels, $(du -sh "$WHEELS_DIR" | cut -f1), in $(( $(date +%s) - start )) s"
