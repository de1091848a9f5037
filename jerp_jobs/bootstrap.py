"""Wiring: the runtime a process works with, built from the settings.

The one place that knows the concrete parts: the built-in workflow catalog, Celery as the
transport (steps and child notifications published by task name, so nothing here imports the
tasks module), Apprise notifications, Redis. Workers, Beat, ``jerpctl`` and the webhook call
:func:`get_runtime`; tests call :func:`build_runtime` with their own client and executor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import redis

from jerp_jobs.catalog import CATALOG
from jerp_jobs.executors.base import Executor
from jerp_jobs.fleet import Fleet, load_fleet
from jerp_jobs.jobs import JobStore
from jerp_jobs.locks import LockManager
from jerp_jobs.notify import Notifier
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import Settings, get_settings
from jerp_jobs.sitestate import SiteState

#: the Celery task that runs one step of a job (jerp_jobs.tasks.step)
STEP_TASK = "jerp.step"
#: the Celery task that tells a parent one of its children ended (jerp_jobs.tasks.child_done)
CHILD_DONE_TASK = "jerp.child_done"


def celery_dispatch(job_id: str, step: str, *, name: str | None = None, countdown: float | None = None,
                    queue: str | None = None) -> None:
    """Publish one step of a job on ``queue`` (default: the site queue of a single host): the
    queue of the job's bench (:class:`StepTaskNames`); ``name`` is the task's name in Flower and
    in the worker's log (Celery's ``shadow``), ``countdown`` delays it."""
    from jerp_jobs.celery import SITE_QUEUE, app  # Celery only once something is sent (jerpctl jobs never)

    app.send_task(STEP_TASK, kwargs={"job_id": job_id, "step": step}, queue=queue or SITE_QUEUE, shadow=name,
                  countdown=countdown)


def step_task_name(kind: str, site: str | None, step: str) -> str:
    """``KIND:SITE:STEP`` (``KIND:STEP`` for a job without a site), e.g.
    ``migrate:a.example.com:migrate`` — what Flower lists instead of ``jerp.step``."""
    return ":".join(part for part in (kind, site, step) if part)


class StepTaskNames:
    """Where a step goes and what it is called: the queue of the job's bench, and a readable
    name for monitors (Celery's ``shadow`` name, set when the step is sent; Flower and the
    worker's log show it): :func:`step_task_name` of the job's kind and site.

    A job's kind, site and bench never change: they are read once per job and process (one
    HMGET) and kept for the last jobs seen. A job whose record is gone keeps the task's own
    name and goes to the queue of no bench (the single bench's, else the control queue)."""

    def __init__(self, store: JobStore, *, size: int = 4096, fleet: Fleet | None = None) -> None:
        self._store = store
        self._fleet = fleet
        self._routes = functools.lru_cache(maxsize=size)(self._route)

    def __call__(self, job_id: str, step: str) -> str:
        label = self._found(job_id)[0]
        return f"{label}:{step}" if label else STEP_TASK

    def queue(self, job_id: str) -> str | None:
        """The queue of the job's bench (None without a fleet: the default site queue)."""
        if self._fleet is None:
            return None
        return self._fleet.queue_of(self._found(job_id)[1])

    def _found(self, job_id: str) -> tuple[str | None, str | None]:
        try:
            return self._routes(job_id)
        except redis.RedisError:  # never worth a step not sent: publishing reports the outage
            return None, None

    def _route(self, job_id: str) -> tuple[str | None, str | None]:
        found = self._store.route(job_id)
        if found is None:
            return None, None
        kind, site, bench = found
        return ":".join(part for part in (kind, site) if part), bench


def named_dispatch(names: StepTaskNames) -> Callable[[str, str], None]:
    """The runtime's ``dispatch``: each step sent under its readable name, on its bench's queue."""

    def dispatch(job_id: str, step: str) -> None:
        celery_dispatch(job_id, step, name=names(job_id, step), queue=names.queue(job_id))

    return dispatch


def celery_notify_parent(parent_id: str, child_id: str) -> None:
    """Tell ``parent_id`` that ``child_id`` ended, on the control queue."""
    from jerp_jobs.celery import CONTROL_QUEUE, app

    app.send_task(CHILD_DONE_TASK, kwargs={"parent_id": parent_id, "child_id": child_id}, queue=CONTROL_QUEUE)


def build_runtime(settings: Settings, *, client: redis.Redis | None = None, executor: Executor | None = None) -> Runtime:
    client = client or redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, health_check_interval=30)
    store = JobStore(client, ttl_days=settings.job_ttl_days, output_lines=settings.live_output_lines)
    fleet = load_fleet(settings)
    return Runtime(
        settings=settings,
        redis=client,
        store=store,
        locks=LockManager(client, ttl=settings.lock_ttl),
        sites=SiteState(client, ttl_s=settings.job_ttl_days * 86400),
        workflows=CATALOG,
        _executor=executor,
        dispatch=named_dispatch(StepTaskNames(store, fleet=fleet)),
        _fleet=fleet,
        notify_parent=celery_notify_parent,
        notify=Notifier.from_settings(settings).send,
    )


@functools.cache
def get_runtime() -> Runtime:
    return build_runtime(get_settings())
