#!/usr/bin/env bash
# jerpctl for the runbook's make targets, on a developer machine or on the Docker host of a
# deployed stack.
#
# On the host jerpctl runs when it is installed (.venv/bin/jerpctl or on the PATH) and its
# broker answers. On a deployed stack the jobs Redis publishes no port: then jerpctl runs inside
# the jobs worker container instead (`compose -p jerp-jobs -f compose.jobs.yml exec -T
# jobs-worker jerpctl ...`), which has the broker and every setting. Either way one line on
# stderr says where it ran. The broker is probed with a read-only command first, so a job is
# never enqueued twice.
#
# Environment: JERP_JOBS_PROJECT (default jerp-jobs), JERP_JOBS_SERVICE (default jobs-worker),
# COMPOSE (default: `docker compose` when present, else docker-compose).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
project=${JERP_JOBS_PROJECT:-jerp-jobs}
service=${JERP_JOBS_SERVICE:-jobs-worker}

host_bin=""
if [ -x "$repo/.venv/bin/jerpctl" ]; then
    host_bin=$repo/.venv/bin/jerpctl
elif command -v jerpctl >/dev/null 2>&1; then
    host_bin=$(command -v jerpctl)
fi

if [ -n "$host_bin" ]; then
    probe=0
    "$host_bin" jobs --limit 1 >/dev/null 2>&1 </dev/null || probe=$?
    if [ "$probe" != 3 ]; then  # 3: the broker cannot be reached
        echo "jerpctl: running on this host ($host_bin)" >&2
        exec "$host_bin" "$@"
    fi
fi

if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    echo "error: no broker reachable from this host and no docker compose to reach the jobs worker" >&2
    exit 3
fi
why="no broker reachable from this host"
[ -n "$host_bin" ] || why="jerpctl is not installed on this host"
echo "jerpctl: $why; running it in the $service container of the $project stack" >&2
exec "${compose[@]}" -p "$project" -f "$repo/compose.jobs.yml" exec -T "$service" jerpctl "$@"
