"""The releases as kept in Redis, read: every release newest first, and the release slot.

The read model behind ``jerpctl releases``, the dashboard and ``/metrics``; the release
workflow (:mod:`jerp_jobs.operations.release`) writes these records, and reading them needs
none of it:

- ``jerp:releases`` — every release job, scored by its creation time;
- ``jerp:release:active`` — the job id of the release that holds the release slot;
- ``jerp:release:waiting`` — the releases requested and not yet holding the slot.
"""

from __future__ import annotations

from typing import Any, Protocol

from jerp_jobs import keys
from jerp_jobs.errors import JobNotFound
from jerp_jobs.jobs import Job, JobStore, as_text

KIND = "release"
INDEX = keys.RELEASES  # every release, scored by creation time
ACTIVE = keys.RELEASE_ACTIVE  # the job id of the release that holds the slot
WAITING_SET = keys.RELEASE_WAITING  # releases requested and not yet holding the slot


class Records(Protocol):
    """Where releases are read from: the Redis client and the job records (a runtime has both)."""

    @property
    def redis(self) -> Any: ...

    @property
    def store(self) -> JobStore: ...


def list_releases(rt: Records, *, limit: int = 20) -> list[Job]:
    """The newest ``limit`` releases, newest first; an index entry whose record expired is dropped."""
    jobs = []
    for job_id in rt.redis.zrevrange(INDEX, 0, limit * 2):
        try:
            jobs.append(rt.store.get(as_text(job_id)))
        except JobNotFound:
            rt.redis.zrem(INDEX, job_id)
        if len(jobs) >= limit:
            break
    return jobs


def active_release(client: Any) -> str | None:
    """The job id of the release that holds the slot, if any."""
    value = client.get(ACTIVE)
    return as_text(value) if value is not None else None


def waiting_releases(client: Any) -> list[str]:
    """The job ids of the releases waiting for the slot, sorted."""
    return sorted(as_text(m) for m in client.smembers(WAITING_SET))


def requested_at(job: Job) -> float:
    """When ``job``'s request was made (its creation for releases from before request times)."""
    value = job.params.get("requested_at")
    return float(value) if isinstance(value, (int, float)) else float(job.created_at)
