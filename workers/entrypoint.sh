#!/bin/sh
# Entrypoint of the jobs image. The first argument names the role of the container:
#   worker          Celery worker for site work (queue jerp.site; with JERP_BENCH set, the
#                   worker of that bench of the fleet: queue jerp.site.$JERP_BENCH only)
#   worker-control  Celery worker for quick control tasks (queue jerp.control)
#   beat            Celery Beat (celery-redbeat; run exactly one)
#   flower          Flower, the Celery monitor, on port 5555
#   webhook         the release webhook (uvicorn), on port JERP_WEBHOOK_PORT (8000)
#   dashboard       the operators' dashboard (uvicorn), on port JERP_DASHBOARD_PORT (8000)
#   socket-proxy    the Docker API proxy the workers reach Docker through, on port 2375
# Anything else is run as a command (jerpctl ..., celery ..., sh).
# Settings and secrets come from the environment; nothing here prints them.
set -eu

role=${1:-worker}
if [ $# -gt 0 ]; then shift; fi
loglevel=${JERP_LOG_LEVEL:-INFO}

case "$role" in
    worker)
        queue=jerp.site
        name=site
        if [ -n "${JERP_BENCH:-}" ]; then
            queue=jerp.site.$JERP_BENCH
            name=$JERP_BENCH
        fi
        exec celery -A jerp_jobs worker -Q "$queue" -n "$name@%h" \
            --concurrency "${JERP_WORKER_CONCURRENCY:-4}" \
            --without-mingle --without-gossip --loglevel "$loglevel" "$@"
        ;;
    worker-control)
        exec celery -A jerp_jobs worker -Q jerp.control -n "control@%h" \
            --concurrency "${JERP_CONTROL_CONCURRENCY:-2}" \
            --without-mingle --without-gossip --loglevel "$loglevel" "$@"
        ;;
    beat)
        exec celery -A jerp_jobs beat --loglevel "$loglevel" "$@"
        ;;
    flower)
        exec celery -A jerp_jobs flower --address=0.0.0.0 --port=5555 "$@"
        ;;
    webhook)
        if ! python -c 'import jerp_jobs.webhook, uvicorn' 2>/dev/null; then
            echo "error: this image has no release webhook (jerp_jobs.webhook and uvicorn)" >&2
            exit 1
        fi
        exec uvicorn jerp_jobs.webhook:app --host 0.0.0.0 --port "${JERP_WEBHOOK_PORT:-8000}" \
            --proxy-headers --forwarded-allow-ips '*' "$@"
        ;;
    dashboard)
        # no --proxy-headers: the dashboard trusts a proxy's user header only from
        # JERP_DASHBOARD_TRUSTED_PROXIES, by the peer address uvicorn sees
        exec uvicorn jerp_jobs.dashboard:app --host 0.0.0.0 --port "${JERP_DASHBOARD_PORT:-8000}" \
            --timeout-keep-alive 5 "$@"
        ;;
    socket-proxy)
        exec python -m jerp_jobs.socket_proxy "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
