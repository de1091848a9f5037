#!/usr/bin/env bash
# Install the Debian packages the tests (or the demo) need, when a command is missing.
#
#   tests/services/packages.sh test   everything `make test` needs (services, images, tools)
#   tests/services/packages.sh demo   what `make demo` needs (Redis, MariaDB, python3-venv)
#
# Runs apt-get only when something is missing and only as root; otherwise it names what to
# install. Debian's own redis/mariadb services are kept from starting during the install (the
# project starts private ones on free ports).
set -euo pipefail

group=${1:-test}
# command:package pairs
demo=(redis-server:redis-server redis-cli:redis-server mariadbd:mariadb-server mariadb:mariadb-client
      mariadb-dump:mariadb-client)
test=("${demo[@]}" debootstrap:debootstrap age:age flock:util-linux docker-compose:docker-compose
      openssl:openssl curl:curl gzip:gzip tar:tar chromium:chromium chromedriver:chromium-driver
      promtool:prometheus prometheus:prometheus)
case "$group" in
    demo) wanted=("${demo[@]}") ;;
    test) wanted=("${test[@]}") ;;
    *) echo "usage: $0 test|demo" >&2; exit 2 ;;
esac

missing=()
for pair in "${wanted[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
[ "${#missing[@]}" -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" != 0 ]; then
    echo "error: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    made_policy=1
fi
trap 'if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
