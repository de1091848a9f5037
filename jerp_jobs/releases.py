"""The releases as kept in Redis, read: every release newest first, and the release slot.

The read model behind ``jerpctl releases``, the dashboard and ``/metrics``; the release
workflow (:mod:`jerp_jobs.operations.release`) writes these records, and reading them needs
none of it:

- ``jerp:releases`` — every release job, scored by its creation time;
- ``jerp:release:active`` — the job id of the release that holds the release slot; in a
  declared fleet each bench has its own slot, ``jerp:release:active:<bench>`` (two releases
  never run on one bench at once; a staging release runs while production releases run);
- ``jerp:release:waiting`` — the releases requested and not yet holding the slot;
- ``jerp:release:staged`` — tag -> the staging release it passed (and the production releases
  it was promoted by).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from jerp_jobs import keys
from jerp_jobs.errors import JobNotFound
from jerp_jobs.jobs import Job, JobStore, as_text

KIND = "release"
INDEX = keys.RELEASES  # every release, scored by creation time
ACTIVE = keys.RELEASE_ACTIVE  # the job id of the release that holds the slot
WAITING_SET = keys.RELEASE_WAITING  # releases requested and not yet holding the slot
ACTIVE_ON = keys.RELEASE_ACTIVE_ON  # + bench: the slot of one bench of a declared fleet
STAGED = keys.RELEASE_STAGED  # tag -> the staging release it passed (JSON)


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


def slot_key(bench: str | None, *, per_bench: bool) -> str:
    """The release slot of ``bench``: the one slot of a single-host install, or the bench's own
    in a declared fleet (``per_bench``)."""
    return ACTIVE_ON + bench if per_bench and bench else ACTIVE


def active_release(client: Any, benches: Sequence[str] = ()) -> str | None:
    """The job id of the release that holds the slot, if any (of a single host; with
    ``benches``, the first of those benches' slots that is held)."""
    for key in (ACTIVE, *(ACTIVE_ON + b for b in benches)):
        value = client.get(key)
        if value is not None:
            return as_text(value)
    return None


def active_releases(client: Any, benches: Sequence[str]) -> dict[str, str]:
    """bench -> the job id of the release holding that bench's slot, for the benches whose slot is held."""
    if not benches:
        return {}
    values = client.mget([ACTIVE_ON + b for b in benches])
    return {b: as_text(v) for b, v in zip(benches, values, strict=True) if v is not None}


def waiting_releases(client: Any) -> list[str]:
    """The job ids of the releases waiting for the slot, sorted."""
    return sorted(as_text(m) for m in client.smembers(WAITING_SET))


def requested_at(job: Job) -> float:
    """When ``job``'s request was made (its creation for releases from before request times)."""
    value = job.params.get("requested_at")
    return float(value) if isinstance(value, (int, float)) else float(job.created_at)
