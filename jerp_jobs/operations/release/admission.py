"""The release slot: one release runs at a time, the others wait, and a newer request
supersedes the waiting releases requested before it.

A release holds the slot (``jerp:release:active``) from its first step to its end; until then it
is in the waiting set (``jerp:release:waiting``). Taking the slot and superseding happen under
the admission lock, so that a request and an admission never cross.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jerp_jobs import keys
from jerp_jobs.errors import JobNotFound, LockBusy
from jerp_jobs.jobs import Job, JobState
from jerp_jobs.log import get_logger
from jerp_jobs.releases import ACTIVE, WAITING_SET, active_release, requested_at, waiting_releases
from jerp_jobs.runner import finish_job

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

log = get_logger(__name__)

ADMISSION = "release-admission"
#: compare-and-delete of the release slot
_FREE_SLOT = keys.COMPARE_AND_DELETE


def waiting(rt: Runtime) -> list[str]:
    return waiting_releases(rt.redis)


def active(rt: Runtime) -> str | None:
    return active_release(rt.redis)


def supersede(rt: Runtime, job_id: str, *, by: Job, newer_than: float | None) -> None:
    """End a release that is still waiting for the slot (call under the admission lock) when it
    was requested before ``newer_than`` (None: an operator's request supersedes every one)."""
    if active(rt) == job_id:
        return  # it started: it runs to its end
    try:
        job = rt.store.get(job_id)
    except JobNotFound:
        rt.redis.srem(WAITING_SET, job_id)
        return
    if job.finished:
        rt.redis.srem(WAITING_SET, job_id)
        return
    if newer_than is not None and requested_at(job) >= newer_than:
        return  # requested after the new one: it stays
    what = f"release {by.id}" + (f" of tag {by.params['tag']}" if by.params.get("tag") else " (rollback)")
    rt.store.set_result(job_id, superseded_by=by.id)
    finish_job(rt, job_id, JobState.SUPERSEDED, error=f"superseded by {what} before it started")
    log.info("release.superseded", job_id=job_id, by=by.id)


def admit(rt: Runtime, job: Job) -> None:
    """Take the release slot before any step of ``job`` runs; LockBusy keeps it waiting."""
    holder = active(rt)
    if holder == job.id:
        return
    with rt.locks.hold(ADMISSION, wait=5, poll=0.01, job_id=job.id, step="admit"):
        holder = active(rt)
        if holder is not None and holder != job.id:
            try:
                holder_done = rt.store.get(holder).finished
            except JobNotFound:
                holder_done = True
            if not holder_done:
                raise LockBusy("the release slot", {"job_id": holder})
        rt.redis.set(ACTIVE, job.id)
        rt.redis.srem(WAITING_SET, job.id)


def leave(rt: Runtime, job: Job) -> None:
    """``job`` ended: it waits no more, and frees the slot if it holds it (never a successor's)."""
    rt.redis.srem(WAITING_SET, job.id)
    rt.redis.eval(_FREE_SLOT, 1, ACTIVE, job.id)
