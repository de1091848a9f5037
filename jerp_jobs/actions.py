"""Operator actions on what exists (not starting a job: :mod:`jerp_jobs.enqueue` does that), shared
by jerpctl and the dashboard, each recorded in the audit trail with who took it.

- :func:`cancel_job` — no new step of the job starts; the running one finishes.
- :func:`clear_attention` — a site repaired by hand may be touched by automation again.

Both raise :class:`~jerp_jobs.errors.JerpError` with the reason when there is nothing to do
(the job already ended, the site has no mark) and JobNotFound for an unknown job.
"""

from __future__ import annotations

from typing import Any

from jerp_jobs import audit
from jerp_jobs.errors import JerpError
from jerp_jobs.jobs import Job
from jerp_jobs.runtime import Runtime


def cancel_job(rt: Runtime, job_id: str, *, actor: str) -> Job:
    """Ask ``job_id`` to stop: returns the job with its cancel flag set."""
    job = rt.store.get(job_id)
    if job.finished:
        raise JerpError(f"job {job_id} already ended {job.state}", job_id=job_id, state=job.state)
    job = rt.store.request_cancel(job_id)
    audit.record(rt.redis, actor=actor, action="job.cancel-requested", job_id=job.id, kind=job.kind, site=job.site,
                 days=rt.settings.audit_days)
    return job


def clear_attention(rt: Runtime, site: str, *, actor: str) -> dict[str, Any]:
    """Clear ``site``'s needs-attention mark; returns the mark as it was."""
    mark = rt.sites.attention(site)
    if mark is None:
        raise JerpError(f"{site} is not marked as needing attention", site=site)
    rt.sites.clear_attention(site)
    audit.record(rt.redis, actor=actor, action="site.attention-cleared", job_id=mark.get("job_id"), site=site,
                 detail=str(mark.get("reason"))[:500], days=rt.settings.audit_days)
    return mark
