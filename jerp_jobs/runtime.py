"""The parts the engine works with, every one passed in.

``Runtime`` gathers the Redis client, the job store, the fan-outs' progress, the lock manager,
the site state, the workflow catalog, the executor, the platform and the transport
(``dispatch`` publishes a step, ``notify_parent`` tells a parent a child ended). The engine knows none of the concrete
choices: :mod:`jerp_jobs.bootstrap` (the app layer) wires them for processes, from the
settings; tests build one with their own parts (a fakeredis client, a FakeExecutor, a
recording transport).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from jerp_jobs.executors import make_executor
from jerp_jobs.executors.base import Executor
from jerp_jobs.fanouts import FanoutStore
from jerp_jobs.fleet import Fleet, load_fleet
from jerp_jobs.jobs import JobStore
from jerp_jobs.locks import LockManager
from jerp_jobs.notify import site_attention
from jerp_jobs.platform import DockerPlatform, Platform
from jerp_jobs.sitestate import SiteState
from jerp_jobs.workflow import Catalog, Workflow

if TYPE_CHECKING:
    from jerp_jobs.settings import Settings  # the typed settings (jerpctl's read commands pass a lighter reading)


def _no_transport(*args: object) -> None:
    raise RuntimeError("this runtime has no transport: build it with jerp_jobs.bootstrap.build_runtime, "
                       "or give it dispatch and notify_parent")


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    locks: LockManager
    sites: SiteState
    #: the job kinds this process runs (jerp_jobs.catalog.CATALOG in processes)
    workflows: Catalog = field(default_factory=Catalog, repr=False)
    _executor: Executor | None = field(default=None, repr=False)
    #: publishes one step of a job (Celery in processes; tests may record instead)
    dispatch: Callable[[str, str], None] = field(default=_no_transport, repr=False)
    #: tells a fan-out parent that one of its children ended
    notify_parent: Callable[[str, str], None] = field(default=_no_transport, repr=False)

    #: tells people (Apprise URLs of JERP_NOTIFY_URLS): event, title, body; never raises
    notify: Callable[[str, str, str], None] = field(default=lambda event, title, body: None, repr=False)

    _platform: Platform | None = field(default=None, repr=False)
    _fanouts: FanoutStore | None = field(default=None, repr=False)
    _fleet: Fleet | None = field(default=None, repr=False)

    def workflow(self, kind: str) -> Workflow:
        """The workflow of ``kind``; InvalidInput naming the known kinds if the catalog has none."""
        return self.workflows.workflow(kind)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = make_executor(self.settings)
        return self._executor

    def mark_attention(self, site: str, *, job_id: str, reason: str) -> None:
        """Mark ``site`` as needing attention (automation leaves it alone) and tell people."""
        self.sites.mark_attention(site, job_id=job_id, reason=reason)
        self.notify(*site_attention(site, job_id=job_id, reason=reason))

    @property
    def fleet(self) -> Fleet:
        """The benches (JERP_FLEET_FILE; without it the one bench of this host), read once."""
        if self._fleet is None:
            self._fleet = load_fleet(self.settings)
        return self._fleet

    @property
    def fanouts(self) -> FanoutStore:
        """The fan-outs' progress (their own keys, expiring with the job records)."""
        if self._fanouts is None:
            self._fanouts = FanoutStore(self.redis, ttl=self.store.ttl)
        return self._fanouts

    @property
    def platform(self) -> Platform:
        """The platform stack a release deploys to (the Docker one unless one was given)."""
        if self._platform is None:
            self._platform = DockerPlatform(self.settings)
        return self._platform


def runtime_once(runtime: Runtime | Callable[[], Runtime]) -> Callable[[], Runtime]:
    """A getter of ``runtime`` itself, or of the one ``runtime()`` builds on the first call and
    keeps: how a web app takes a test's runtime, or builds the process's own when it starts."""
    built: list[Runtime] = []

    def get() -> Runtime:
        if not built:
            built.append(runtime if isinstance(runtime, Runtime) else runtime())
        return built[0]

    return get


