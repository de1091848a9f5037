"""The Celery application: ``celery -A jerp_jobs worker`` and ``celery -A jerp_jobs beat``.

Settings follow docs/celery.md (Celery on Redis for long operations work):

- Two queues. ``jerp.site`` carries long site and bench work (backup, migrate, restore...);
  ``jerp.control`` carries quick control tasks (fan-out bookkeeping, the resumer, the reaper).
  A worker started with no ``-Q`` consumes both. In production, run one worker per queue so
  quick tasks never wait behind hours of migrate.
- Late acks with prefetch 1: a step whose worker dies is delivered again; steps are safe to
  deliver twice because they take a heartbeat lock and consult the job record first.
- One visibility timeout (``JERP_VISIBILITY_TIMEOUT``) set in all three places; the hard time
  limit (``JERP_TASK_TIME_LIMIT``) below it and the soft limit below that.
- UTC everywhere, STARTED state tracked, results kept one day.
- Task events off unless ``JERP_TASK_EVENTS`` is set: nothing reads them unless a monitor runs,
  and each step would otherwise publish four. Flower switches the workers' events on at run time
  (``celery -A jerp_jobs control enable_events``, which Flower sends itself by default).
- Broker outages are outlived: a worker reconnects for as long as it takes
  (``broker_connection_max_retries=None``), and Beat's scheduler (``jerp_jobs.beat``) backs
  off and carries on when Redis is back.

Settings are read when the app's configuration is first used (a lazy default), i.e. when a
worker, Beat or a client first uses the app — never at import.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from jerp_jobs import keys

SITE_QUEUE = "jerp.site"
CONTROL_QUEUE = "jerp.control"
#: the header every message carries: its publish time (epoch seconds), stamped by _stamp_sent_at
SENT_AT_HEADER = "jerp_sent_at"


def _configuration() -> dict[str, Any]:
    """The app's configuration, built on first use of ``app.conf`` (a lazy default).

    A promise given to ``add_defaults`` is read while Celery finalizes its configuration, so
    nothing in it re-enters that step (updating ``conf`` from ``on_configure`` does: the first
    ``send_task`` of a process ran the router, which read ``conf``, which configured again).
    """
    from beat_schedule import beat_schedule

    from jerp_jobs.settings import get_settings

    settings = get_settings()
    return {**celery_config(settings), "beat_schedule": beat_schedule(settings)}


def worker_queues(settings: Any) -> tuple[Queue, ...]:
    """The queues a worker started without ``-Q`` consumes: its bench's only (``JERP_BENCH``);
    in a declared fleet, the control queue for the control plane (the benches' workers take the
    rest); on a single host, both of today's queues. Steps are published to any bench's queue
    by name (a queue named, not declared here, is created on first use)."""
    from jerp_jobs.fleet import load_fleet

    def queue(name: str) -> Queue:
        return Queue(name, Exchange(name), routing_key=name)

    fleet = load_fleet(settings)
    if settings.bench:
        return (queue(fleet.get(settings.bench).queue),)
    if fleet.declared:
        return (queue(CONTROL_QUEUE),)
    return (queue(SITE_QUEUE), queue(CONTROL_QUEUE))


def celery_config(settings: Any) -> dict[str, Any]:
    visibility = settings.visibility_timeout
    hard = min(settings.task_time_limit, visibility - 60)
    transport = {"visibility_timeout": visibility}
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.backend_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": visibility,
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,  # a worker outlives a broker outage of any length
        "task_queues": worker_queues(settings),
        "task_default_queue": CONTROL_QUEUE,
        "task_routes": {"jerp.step": {"queue": SITE_QUEUE}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_deduplicate_successful_tasks": True,
        "task_time_limit": hard,
        "task_soft_time_limit": max(hard - 300, hard // 2),
        "task_track_started": True,
        "task_send_sent_event": settings.task_events,
        "worker_send_task_events": settings.task_events,
        "result_expires": 86400,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "beat_cron_starting_deadline": None,  # a run missed during downtime runs once on start
        "beat_scheduler": "jerp_jobs.beat:Scheduler",
        "beat_max_loop_interval": 5,
        "redbeat_redis_url": settings.broker_url,
        # Beat's own Redis client: a Redis that stops answering fails a tick instead of hanging it
        "redbeat_redis_options": {"socket_connect_timeout": 5, "socket_timeout": 10, "health_check_interval": 30},
        "redbeat_key_prefix": keys.REDBEAT,
        "redbeat_lock_timeout": 30,
    }


app = Celery("jerp_jobs", include=["jerp_jobs.tasks"])
app.add_defaults(_configuration)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    from jerp_jobs import log
    from jerp_jobs.settings import get_settings

    log.configure(secrets=get_settings().secret_values())


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Any = None, args: Any = (), kwargs: Any = None, **_: Any) -> None:
    import structlog

    from jerp_jobs.log import redactor

    structlog.contextvars.clear_contextvars()
    context = {"task_id": task_id, "task": getattr(task, "name", None)}
    kwargs = kwargs or {}
    for name in ("job_id", "step", "site"):
        if name in kwargs:
            context[name] = kwargs[name]
    # redacted once here, not again on every line the task logs
    structlog.contextvars.bind_contextvars(**redactor.value(context))


@signals.task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    import structlog

    structlog.contextvars.clear_contextvars()


@signals.before_task_publish.connect
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every message carries its publish time (``jerp_sent_at``, epoch seconds): what the age
    of the oldest waiting message of a queue is read from (jerp_jobs.observe, /metrics)."""
    import time

    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


@signals.celeryd_init.connect
@signals.beat_init.connect
def _start_sentry(**_: Any) -> None:
    """Error reports to Sentry when JERP_SENTRY_DSN is set (jerp_jobs.sentry); nothing otherwise."""
    from jerp_jobs import sentry
    from jerp_jobs.settings import get_settings

    sentry.init(get_settings())
