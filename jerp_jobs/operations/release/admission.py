"""The release slot: one release runs at a time, the others wait, and a newer request
supersedes the waiting releases requested before it.

A release holds the slot (``jerp:release:active``) from its first step to its end; until then it
is in the waiting set (``jerp:release:waiting``). In a declared fleet the slot is the release's
bench's (``jerp:release:active:<bench>``): one release at a time on each bench, so a staging
release runs while the production benches run theirs, and a newer request supersedes only the
waiting releases of its own bench. Taking the slot and superseding happen under the admission
lock, so that a request and an admission never cross.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jerp_jobs import keys
from jerp_jobs.errors import JobNotFound, LockBusy
from jerp_jobs.jobs import Job, JobState, as_text
from jerp_jobs.log import get_logger
from jerp_jobs.releases import WAITING_SET, requested_at, slot_key, waiting_releases
from jerp_jobs.runner import finish_job

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

log = get_logger(__name__)

ADMISSION = "release-admission"
#: compare-and-delete of the release slot
_FREE_SLOT = keys.COMPARE_AND_DELETE


def waiting(rt: Runtime, bench: str | None = None) -> list[str]:
    """The releases waiting for a slot; with ``bench`` (a declared fleet), those of that bench."""
    found = waiting_releases(rt.redis)
    if bench is None or not rt.fleet.declared:
        return found
    routes = {job_id: rt.store.route(job_id) for job_id in found}
    return [job_id for job_id, route in routes.items() if route is None or route[2] == bench]


def slot(rt: Runtime, bench: str | None) -> str:
    """The key of the release slot ``bench``'s releases take."""
    return slot_key(bench, per_bench=rt.fleet.declared)


def active(rt: Runtime, bench: str | None = None) -> str | None:
    value = rt.redis.get(slot(rt, bench))
    return as_text(value) if value is not None else None


def supersede(rt: Runtime, job_id: str, *, by: Job, newer_than: float | None) -> None:
    """End a release that is still waiting for the slot (call under the admission lock) when it
    was requested before ``newer_than`` (None: an operator's request supersedes every one)."""
    try:
        job = rt.store.get(job_id)
    except JobNotFound:
        rt.redis.srem(WAITING_SET, job_id)
        return
    if active(rt, job.bench) == job_id:
        return  # it started: it runs to its end
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
    holder = active(rt, job.bench)
    if holder == job.id:
        return
    with rt.locks.hold(ADMISSION, wait=5, poll=0.01, job_id=job.id, step="admit"):
        holder = active(rt, job.bench)
        if holder is not None and holder != job.id:
            try:
                holder_done = rt.store.get(holder).finished
            except JobNotFound:
                holder_done = True
            if not holder_done:
                raise LockBusy("the release slot", {"job_id": holder})
        rt.redis.set(slot(rt, job.bench), job.id)
        rt.redis.srem(WAITING_SET, job.id)


def leave(rt: Runtime, job: Job) -> None:
    """``job`` ended: it waits no more, and frees the slot if it holds it (never a successor's)."""
    rt.redis.srem(WAITING_SET, job.id)
    rt.redis.eval(_FREE_SLOT, 1, slot(rt, job.bench), job.id)
