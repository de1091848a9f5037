"""Wiring: the runtime a process works with, built from the settings.

The one place that knows the concrete parts: the built-in workflow catalog, Celery as the
transport (steps and child notifications published by task name, so nothing here imports the
tasks module), Apprise notifications, Redis. Workers, Beat, ``jerpctl`` and the webhook call
:func:`get_runtime`; tests call :func:`build_runtime` with their own client and executor.
"""

from __future__ import annotations

import functools

import redis

from jerp_jobs.catalog import CATALOG
from jerp_jobs.executors.base import Executor
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


def celery_dispatch(job_id: str, step: str) -> None:
    """Publish one step of a job on the site queue."""
    from jerp_jobs.celery import SITE_QUEUE, app  # Celery only once something is sent (jerpctl jobs never)

    app.send_task(STEP_TASK, kwargs={"job_id": job_id, "step": step}, queue=SITE_QUEUE)


def celery_notify_parent(parent_id: str, child_id: str) -> None:
    """Tell ``parent_id`` that ``child_id`` ended, on the control queue."""
    from jerp_jobs.celery import CONTROL_QUEUE, app

    app.send_task(CHILD_DONE_TASK, kwargs={"parent_id": parent_id, "child_id": child_id}, queue=CONTROL_QUEUE)


def build_runtime(settings: Settings, *, client: redis.Redis | None = None, executor: Executor | None = None) -> Runtime:
    client = client or redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, health_check_interval=30)
    return Runtime(
        settings=settings,
        redis=client,
        store=JobStore(client, ttl_days=settings.job_ttl_days),
        locks=LockManager(client, ttl=settings.lock_ttl),
        sites=SiteState(client, ttl_s=settings.job_ttl_days * 86400),
        workflows=CATALOG,
        _executor=executor,
        dispatch=celery_dispatch,
        notify_parent=celery_notify_parent,
        notify=Notifier.from_settings(settings).send,
    )


@functools.cache
def get_runtime() -> Runtime:
    return build_runtime(get_settings())
