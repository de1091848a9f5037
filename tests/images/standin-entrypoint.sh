#!/bin/bash
# Entrypoint of the stand-in backend image, doing at start what the entrypoint of frappe_docker's
# images does (v3.2.1 and later; docs/frappe_docker.md): the built assets live in the image at
# <bench>/assets, outside the sites volume, and every container start replaces sites/assets with
# a symbolic link to them before running its command.
#
# As with those images, a volume mounted at sites/assets cannot be replaced: `rm -rf` empties it,
# then fails on the mount point ("Device or resource busy"), and the container exits with rm's
# status before its command runs. Compose files must not mount anything there.
set -euo pipefail

bench=/home/frappe/frappe-bench
link=$bench/sites/assets

rm -rf -- "$link" || {
    status=$?
    echo "standin-entrypoint: cannot replace $link with a link to $bench/assets" \
        "(is a volume mounted there?)" >&2
    exit "$status"
}
ln -s -- "$bench/assets" "$link"

exec "$@"
