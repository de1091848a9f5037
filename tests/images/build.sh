#!/usr/bin/env bash
# Build the container images the test suite uses. The Docker Engine on the test machines has no
# images and cannot pull, so the base image is a Debian root file system made by debootstrap and
# imported; project images are built FROM it (BASE_IMAGE build argument).
#
# Every image is this checkout's own (tests/naming.py: <id> from the checkout's real path, or
# JERP_TEST_ID), labelled jerp-test=<id>; another checkout's images are never retagged, pruned
# or removed:
#
#   jerp-test-<id>/debian-base:bookworm     built once; kept while it exists (FORCE_BASE=1 rebuilds it)
#   jerp-test-<id>/standin-backend:latest   the rest are rebuilt on every run (the layer cache
#   jerp-test-<id>/python-base:bookworm       keeps that cheap); the Debian packages they add
#   jerp-test-<id>/redis:bookworm             come from the mirror, through apt-get inside the
#   jerp-test-<id>/mariadb:bookworm           build
#   jerp-test-<id>/jobs:latest              workers/Containerfile FROM python-base (workers/build.sh)
#
#   tests/images/build.sh          build (or rebuild) them; prune this checkout's untagged ones
#   tests/images/build.sh names    print JERP_TEST_ID=<id> and the image variables, as
#                                  `python -m tests.naming` does
#   tests/images/build.sh clean    remove what this checkout's tests left on the engine: the
#                                  containers, networks and volumes named jt<id>-... or labelled
#                                  jerp-test=<id>, then the images labelled jerp-test=<id> or
#                                  named jerp-test-<id>/...
#
# The jobs image's wheels are resolved with the host's Debian python3 (the python of
# python-base; it needs python3-venv) from the package index, and kept under /var/tmp/jerp-wheels.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), JERP_IMAGES_WORKDIR (scratch
# folder for the root file system, default /var/tmp), JERP_STANDIN_BENCH (the stand-in bench
# script to put in the image, default tests/standin/bench), JERP_TEST_ID (see tests/naming.py).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# shellcheck source=tests/images/naming.sh
. "$here/naming.sh"
jerp_test_names "$repo"
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
scratch_parent=${JERP_IMAGES_WORKDIR:-/var/tmp}
packages=python3,mariadb-client,gzip,tar,procps,coreutils,ca-certificates

scratch=""

log() { printf '[images] %s\n' "$*"; }

elapsed() { echo "$((SECONDS - $1))s"; }

cleanup() {
    if [ -n "$scratch" ] && [ -d "$scratch" ]; then
        # debootstrap mounts proc/sys inside the target; never delete through a mount.
        local m
        if command -v findmnt >/dev/null 2>&1; then
            for m in $(findmnt -rn -o TARGET | { grep -F "$scratch/" || true; } | sort -r); do
                umount -l "$m" 2>/dev/null || true
            done
        fi
        rm -rf --one-file-system "$scratch"
    fi
}
trap cleanup EXIT

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "error: $1 not found ($2)" >&2; exit 1; }
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

build_base() {
    if image_exists "$base_image" && [ "${FORCE_BASE:-0}" != 1 ]; then
        log "$base_image exists; skipping debootstrap"
        return 0
    fi
    need debootstrap "apt-get install debootstrap"
    [ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }
    local t0=$SECONDS
    mkdir -p "$scratch_parent"
    scratch=$(mktemp -d "$scratch_parent/jerp-rootfs.XXXXXX")
    local rootfs=$scratch/rootfs
    log "debootstrap $suite ($packages) into $rootfs"
    if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
        >"$scratch/debootstrap.log" 2>&1; then
        tail -n 40 "$scratch/debootstrap.log" >&2
        [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 40 "$rootfs/debootstrap/debootstrap.log" >&2
        echo "error: debootstrap failed" >&2
        exit 1
    fi
    log "debootstrap done in $(elapsed "$t0")"

    rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/* \
        "${rootfs:?}"/tmp/* "${rootfs:?}"/var/tmp/* "${rootfs:?}"/var/log/*.log
    rm -rf "${rootfs:?}"/usr/share/doc/* "${rootfs:?}"/usr/share/man/* "${rootfs:?}"/usr/share/info/* \
        "${rootfs:?}"/usr/share/locale/*
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' \
        'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        >"$rootfs/etc/dpkg/dpkg.cfg.d/01-jerp-nodoc"
    echo "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"

    local t1=$SECONDS
    log "importing $base_image"
    tar -C "$rootfs" --numeric-owner --one-file-system \
        --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . |
        docker import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'ENV LANG=C.UTF-8' \
            -c 'CMD ["/bin/bash"]' \
            -c "LABEL $test_label" \
            -m "debootstrap --variant=minbase $suite" \
            - "$base_image" >/dev/null
    log "import done in $(elapsed "$t1")"
    cleanup
    scratch=""
}

# build_image TAG CONTAINERFILE [FILE...]: docker build with a context of only the listed files
# of the repository, or of $source_root (the repository holds a venv and the test services'
# data, which the daemon must not be sent).
build_image() {
    local tag=$1 containerfile=$2
    shift 2
    local t0=$SECONDS ctx file root=${source_root:-$repo}
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/jerp-ctx.XXXXXX")
    for file in "$@"; do
        [ -f "$root/$file" ] || { echo "error: $root/$file is missing" >&2; exit 1; }
        mkdir -p "$ctx/$(dirname "$file")"
        cp -p "$root/$file" "$ctx/$file"
    done
    log "building $tag"
    if ! DOCKER_BUILDKIT=0 docker build -q --force-rm --label "$test_label" \
        --build-arg BASE_IMAGE="$base_image" \
        -f "$here/$containerfile" -t "$tag" "$ctx" >"$ctx.log" 2>&1; then
        cat "$ctx.log" >&2
        rm -rf "$ctx" "$ctx.log"
        echo "error: docker build of $tag failed" >&2
        exit 1
    fi
    rm -rf "$ctx" "$ctx.log"
    log "$tag built in $(elapsed "$t0")"
}

build_backend() {
    local bench_script=${JERP_STANDIN_BENCH:-$repo/tests/standin/bench}
    [ -f "$bench_script" ] || { echo "error: $bench_script is missing" >&2; exit 1; }
    # The context takes files from a copy of the repository's layout holding that script.
    local staged
    staged=$(mktemp -d "${TMPDIR:-/tmp}/jerp-bench.XXXXXX")
    mkdir -p "$staged/tests/standin"
    cp -p "$bench_script" "$staged/tests/standin/bench"
    chmod 0755 "$staged/tests/standin/bench"
    cp -p "$repo/tests/standin/web.py" "$staged/tests/standin/web.py"
    mkdir -p "$staged/tests/images"
    cp -p "$here/standin-entrypoint.sh" "$staged/tests/images/standin-entrypoint.sh"
    source_root=$staged build_image "$backend_image" standin-backend.Containerfile tests/standin/bench \
        tests/standin/web.py tests/images/standin-entrypoint.sh
    rm -rf "$staged"
}

build_jobs() {
    local t0=$SECONDS
    # Debian's python3 on the host is the python of python-base: the wheels are resolved for it.
    BASE_IMAGE=$python_image PYTHON=/usr/bin/python3 DOCKER_BUILD_ARGS="--label $test_label" \
        "$repo/workers/build.sh" "$jobs_image"
    log "$jobs_image built in $(elapsed "$t0")"
}

print_names() {
    printf '%s\n' "JERP_TEST_ID=$test_id" "JERP_TEST_BASE_IMAGE=$base_image" \
        "JERP_TEST_BACKEND_IMAGE=$backend_image" "JERP_TEST_PYTHON_IMAGE=$python_image" \
        "JERP_REDIS_IMAGE=$redis_image" "JERP_TEST_MARIADB_IMAGE=$mariadb_image" "JERP_JOBS_IMAGE=$jobs_image"
}

# ours KIND: the ids of this checkout's containers, networks or volumes (named jt<id>-... or
# labelled jerp-test=<id>).
ours() {
    local kind=$1 list format
    case $kind in
        container) list=(docker ps -a) format='{{.ID}} {{.Names}}' ;;
        network) list=(docker network ls) format='{{.ID}} {{.Name}}' ;;
        volume) list=(docker volume ls) format='{{.Name}} {{.Name}}' ;;
    esac
    {
        "${list[@]}" --format "$format"
        "${list[@]}" --filter "label=$test_label" --format "$format" | sed 's/ .*/ -/'
    } | awk -v prefix="jt$test_id-" '$2 == "-" || index($2, prefix) == 1 { print $1 }' | sort -u
}

clean() {
    local ids refs
    mapfile -t ids < <(ours container)
    if [ ${#ids[@]} -gt 0 ]; then
        log "removing ${#ids[@]} container(s)"
        docker rm -f -v "${ids[@]}" >/dev/null
    fi
    mapfile -t ids < <(ours network)
    if [ ${#ids[@]} -gt 0 ]; then
        log "removing ${#ids[@]} network(s)"
        docker network rm "${ids[@]}" >/dev/null
    fi
    mapfile -t ids < <(ours volume)
    if [ ${#ids[@]} -gt 0 ]; then
        log "removing ${#ids[@]} volume(s)"
        docker volume rm "${ids[@]}" >/dev/null
    fi
    # By reference, without -f: a tag another checkout put on one of these images keeps it.
    mapfile -t refs < <({
        docker image ls --filter "label=$test_label" --format '{{.Repository}}:{{.Tag}}'
        docker image ls --format '{{.Repository}}:{{.Tag}}' | { grep -F "$image_prefix/" || true; }
    } | { grep -v '<none>' || true; } | sort -u)
    if [ ${#refs[@]} -gt 0 ]; then
        log "removing ${#refs[@]} image tag(s) of $image_prefix"
        docker image rm "${refs[@]}" >/dev/null
    fi
    docker image prune -f --filter "label=$test_label" >/dev/null
    log "nothing of jerp-test=$test_id is left"
}

command=${1:-build}
case $command in
    names) print_names; exit 0 ;;
    build|clean) ;;
    *) echo "usage: tests/images/build.sh [build|names|clean]" >&2; exit 2 ;;
esac

need docker "the Docker Engine and CLI"
docker info >/dev/null 2>&1 || { echo "error: the Docker Engine is not reachable (docker info)" >&2; exit 1; }

if [ "$command" = clean ]; then
    clean
    exit 0
fi

start=$SECONDS
log "images of this checkout: $image_prefix/*, label $test_label"
build_base
build_backend
build_image "$python_image" python-base.Containerfile
build_image "$redis_image" redis.Containerfile
build_image "$mariadb_image" mariadb.Containerfile \
    tests/images/mariadb-entrypoint.sh tests/images/mariadb-healthcheck.sh
build_jobs
# Earlier builds of these tags, left untagged by the rebuilds: this checkout's only.
docker image prune -f --filter "label=$test_label" >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | { grep -F "$image_prefix/" || true; } |
    sed 's/^/[images] /'
log "all images ready in $(elapsed "$start")"
