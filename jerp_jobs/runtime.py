"""The parts a process works with, built once from the settings.

``Runtime`` gathers the Redis client, the job store, the lock manager and the executor. Tests
build one with their own parts (a fakeredis client, a FakeExecutor); processes call
:func:`get_runtime`, which builds it from :func:`jerp_jobs.settings.get_settings` on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from jerp_jobs.executors.base import Executor
from jerp_jobs.jobs import JobStore
from jerp_jobs.locks import LockManager
from jerp_jobs.settings import Settings, get_settings
from jerp_jobs.sitestate import SiteState


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    locks: LockManager
    sites: SiteState
    _executor: Executor | None = field(default=None, repr=False)
    #: publishes one step of a job (Celery in processes; tests may record instead)
    dispatch: Callable[[str, str], None] = field(default=lambda job_id, step: _celery_dispatch(job_id, step), repr=False)
    #: tells a fan-out parent that one of its children ended
    notify_parent: Callable[[str, str], None] = field(
        default=lambda parent_id, child_id: _celery_notify(parent_id, child_id), repr=False
    )

    #: tells people (Apprise URLs of JERP_NOTIFY_URLS): event, title, body; never raises
    notify: Callable[[str, str, str], None] = field(default=lambda event, title, body: None, repr=False)

    _platform: Any = field(default=None, repr=False)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = make_executor(self.settings)
        return self._executor

    def mark_attention(self, site: str, *, job_id: str, reason: str) -> None:
        """Mark ``site`` as needing attention (automation leaves it alone) and tell people."""
        from jerp_jobs.notify import site_attention

        self.sites.mark_attention(site, job_id=job_id, reason=reason)
        self.notify(*site_attention(site, job_id=job_id, reason=reason))

    @property
    def platform(self) -> Any:
        """The platform stack a release deploys to (jerp_jobs.operations.release.Platform)."""
        if self._platform is None:
            from jerp_jobs.operations.release import DockerPlatform

            self._platform = DockerPlatform(self.settings)
        return self._platform


def _celery_dispatch(job_id: str, step: str) -> None:
    from jerp_jobs.tasks import enqueue_step

    enqueue_step(job_id, step)


def _celery_notify(parent_id: str, child_id: str) -> None:
    from jerp_jobs.tasks import notify_parent

    notify_parent(parent_id, child_id)


def make_executor(settings: Settings) -> Executor:
    if settings.executor == "local":
        from jerp_jobs.executors.local import LocalExecutor

        return LocalExecutor(settings.require_bench_dir(), pass_env=settings.child_env_extra,
                             user=settings.bench_user, bench_program=settings.bench_bin)
    from jerp_jobs.executors.docker import DockerExecutor

    return DockerExecutor(project=settings.compose_project, service=settings.backend_service)


def build_runtime(settings: Settings, *, client: redis.Redis | None = None, executor: Executor | None = None) -> Runtime:
    client = client or redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, health_check_interval=30)
    from jerp_jobs.notify import Notifier

    notifier = Notifier.from_settings(settings)
    return Runtime(
        settings=settings,
        notify=notifier.send,
        redis=client,
        store=JobStore(client, ttl_days=settings.job_ttl_days),
        locks=LockManager(client, ttl=settings.lock_ttl),
        sites=SiteState(client, ttl_s=settings.job_ttl_days * 86400),
        _executor=executor,
    )


@functools.cache
def get_runtime() -> Runtime:
    return build_runtime(get_settings())
