"""The end of a release: the slot freed, its migrate-all and drills stopped, a failed tag marked
bad, and people told how it ended (``release.done``, ``release.rolled-back``,
``release.failed``). A release that passed the staging bench is promoted to production here
when ``JERP_PROMOTE`` is ``auto``; a staging release that failed stops the tag there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.log import get_logger
from jerp_jobs.operations.release.admission import leave
from jerp_jobs.operations.release.requests import promote
from jerp_jobs.operations.release.steps import CHILD_FIELDS, DRILL_FIELD, child, on_staging
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
    staging = on_staging(job)
    title = {
        JobState.SUCCEEDED: f"Release {tag} passed staging on {job.bench}" if staging else f"Release {tag} is live",
        JobState.ROLLED_BACK: f"Release {tag} rolled back to {job.result.get('rollback_to')}",
        JobState.FAILED: f"Release {tag} FAILED" + (" and its rollback failed" if _rollback_started(job) else ""),
        JobState.CANCELLED: f"Release {tag} cancelled",
    }[job.state]
    if staging and job.state != JobState.SUCCEEDED:
        title += "; production was not touched"
    body = f"job {job.id}: {job.error or 'every site migrated and passed its smoke checks'}"
    rt.notify(event, title, body)
    if staging and job.state == JobState.SUCCEEDED:
        _promote(rt, job, str(tag))


def _promote(rt: Runtime, job: Job, tag: str) -> None:
    """The tag passed staging: with ``JERP_PROMOTE=auto`` its production releases start."""
    if rt.settings.promote != "auto":
        log.info("release.awaiting_promotion", job_id=job.id, tag=tag)
        rt.notify("release.staged", f"Release {tag} awaits promotion",
                  f"job {job.id}: passed staging on {job.bench}; `jerpctl promote {tag}` releases it to production")
        return
    try:
        promoted = promote(rt, tag, source="auto", actor=f"job {job.id}")
    except Exception as exc:  # noqa: BLE001 - the staging release ended well; an operator promotes it
        log.error("release.promote_failed", job_id=job.id, tag=tag, error=str(exc))
        rt.notify("release.failed", f"Release {tag} passed staging but was not promoted",
                  f"job {job.id}: {exc}; `jerpctl promote {tag}` tries again")
        return
    rt.store.set_result(job.id, promoted=[j.id for j in promoted.jobs])


def _stop_children(rt: Runtime, job: Job) -> None:
    """A release that ended (reaped, failed) while its migrate-all still runs: start no more sites."""
    for _, field_name in CHILD_FIELDS:
        found = child(rt, job.result.get(field_name))
        if found is not None and not found.finished and not found.cancel_requested:
            rt.store.request_cancel(found.id)
            log.warning("release.child_cancelled", job_id=job.id, child=found.id)
    for child_id in (job.result.get(DRILL_FIELD) or {}).values():
        found = child(rt, child_id)
        if found is not None and not found.finished and not found.cancel_requested:
            rt.store.request_cancel(found.id)
            log.warning("release.child_cancelled", job_id=job.id, child=found.id)


def _rollback_started(job: Job) -> bool:
    return any(s.name.startswith("rollback-") and s.state in (StepState.SUCCESS, StepState.FAILED)
               for s in job.steps)
