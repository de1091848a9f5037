#!/usr/bin/env bash
# Build the jobs image from workers/Containerfile.
#
#   workers/build.sh [TAG]        (default tag: jerp-jobs:latest)
#
# The image installs wheels only: this script builds them on the host (pip wheel) and hands
# them to the build in a minimal context, so the build itself needs no package index.
# Environment:
#   BASE_IMAGE        default python:3.11-slim-bookworm (any Debian-like image with python3 -m venv)
#   EXTRA_PACKAGES    extra pip packages for the image, default "flower"
#   PYTHON            the python that resolves and builds the wheels, default python3; it must
#                     be the base image's version (environment markers can depend on the patch
#                     level: redis needs async-timeout below 3.11.3)
#   JERP_WHEEL_CACHE  dependency wheels kept per pyproject.toml, default /var/tmp/jerp-wheels
#   DOCKER_BUILD_ARGS extra arguments for docker build (e.g. --label x=y, --pull)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
tag=${1:-jerp-jobs:latest}
base=${BASE_IMAGE:-python:3.11-slim-bookworm}
extra=${EXTRA_PACKAGES-flower}
python=${PYTHON:-python3}
cache_root=${JERP_WHEEL_CACHE:-/var/tmp/jerp-wheels}
# Same sources, same wheel bytes: the image's layer cache then survives a rebuild.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}

log() { printf '[jobs-image] %s\n' "$*"; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/jerp-jobs-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

src=$ctx/src
mkdir -p "$src" "$ctx/wheels/deps" "$ctx/wheels/project" "$ctx/workers"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/beat_schedule.py" "$repo/jerp_jobs" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +

version() { "$@" -c 'import platform; print(platform.python_version())'; }
pyver=$(version "$python")
if image_pyver=$(docker run --rm --entrypoint python3 "$base" -c \
        'import platform; print(platform.python_version())' 2>/dev/null) && [ "$image_pyver" != "$pyver" ]; then
    log "warning: the wheels are resolved for Python $pyver, $base has $image_pyver (set PYTHON)"
fi

# A virtualenv of that python builds the wheels (a system python may have no usable pip).
mkdir -p "$cache_root"
# Builds running at once (other checkouts) share the cache: one at a time fills and reads it.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache_root/.lock"
    flock 9
fi
venv=$cache_root/venv-$pyver
if [ ! -x "$venv/bin/pip" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

key=$( (cat "$repo/pyproject.toml"; echo "$extra $pyver") | sha256sum | cut -c1-16)
deps=$cache_root/$key
if [ ! -d "$deps" ]; then
    log "building dependency wheels ($extra) for Python $pyver into $deps"
    tmp=$(mktemp -d "$cache_root/.tmp.XXXXXX")
    # shellcheck disable=SC2086 # EXTRA_PACKAGES is a list of names
    "${pip[@]}" wheel --quiet --wheel-dir "$tmp" "$src" $extra
    rm -f "$tmp"/jerp_jobs-*.whl
    mv "$tmp" "$deps"
fi
cp "$deps"/*.whl "$ctx/wheels/deps/"
if command -v flock >/dev/null 2>&1; then
    flock -u 9
fi
"${pip[@]}" wheel --quiet --no-deps --wheel-dir "$ctx/wheels/project" "$src"
cp "$here/Containerfile" "$here/entrypoint.sh" "$here/healthcheck.py" "$ctx/workers/"

if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
log "building $tag from $base"
# shellcheck disable=SC2086 # DOCKER_BUILD_ARGS is a list of arguments
if ! docker build -q --force-rm ${DOCKER_BUILD_ARGS:-} --build-arg BASE_IMAGE="$base" \
        -f "$ctx/workers/Containerfile" -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2
    echo "error: docker build of $tag failed" >&2
    exit 1
fi
log "$tag built"
