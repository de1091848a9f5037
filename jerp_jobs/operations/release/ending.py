"""The end of a release: the slot freed, its migrate-all stopped, a failed tag marked bad, and
people told how it ended (``release.done``, ``release.rolled-back``, ``release.failed``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.log import get_logger
from jerp_jobs.operations.release.admission import leave
from jerp_jobs.operations.release.steps import CHILD_FIELDS, child
from jerp_jobs.operations.release.tags import remember_bad

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

log = get_logger(__name__)

#: the notice sent for each final state; a superseded release ran nothing and is not told
EVENTS: dict[str, str] = {
    JobState.SUCCEEDED: "release.done",
    JobState.ROLLED_BACK: "release.rolled-back",
    JobState.FAILED: "release.failed",
    JobState.CANCELLED: "release.failed",
}


def on_end(rt: Runtime, job: Job) -> None:
    """Free the slot and tell people how the release ended."""
    leave(rt, job)
    _stop_children(rt, job)
    tag = job.params.get("tag") or job.result.get("tag") or "?"
    if job.state in (JobState.ROLLED_BACK, JobState.FAILED) and job.result.get("deployed_at") and tag != "?":
        remember_bad(rt, tag)
    event = EVENTS.get(job.state)
    if event is None:
        return  # superseded: nothing ran
    title = {
        JobState.SUCCEEDED: f"Release {tag} is live",
        JobState.ROLLED_BACK: f"Release {tag} rolled back to {job.result.get('rollback_to')}",
        JobState.FAILED: f"Release {tag} FAILED" + (" and its rollback failed" if _rollback_started(job) else ""),
        JobState.CANCELLED: f"Release {tag} cancelled",
    }[job.state]
    body = f"job {job.id}: {job.error or 'every site migrated and passed its smoke checks'}"
    rt.notify(event, title, body)


def _stop_children(rt: Runtime, job: Job) -> None:
    """A release that ended (reaped, failed) while its migrate-all still runs: start no more sites."""
    for _, field_name in CHILD_FIELDS:
        found = child(rt, job.result.get(field_name))
        if found is not None and not found.finished and not found.cancel_requested:
            rt.store.request_cancel(found.id)
            log.warning("release.child_cancelled", job_id=job.id, child=found.id)


def _rollback_started(job: Job) -> bool:
    return any(s.name.startswith("rollback-") and s.state in (StepState.SUCCESS, StepState.FAILED)
               for s in job.steps)
