"""Operator actions on what exists (not starting a job: :mod:`jerp_jobs.enqueue` does that), shared
by jerpctl and the dashboard, each recorded in the audit trail with who took it.

- :func:`cancel_job` — no new step of the job starts; the running one finishes.
- :func:`clear_attention` — a site repaired by hand may be touched by automation again.
- :func:`start_listings` — every bench lists its sites again into the site-to-bench map.

Both raise :class:`~jerp_jobs.errors.JerpError` with the reason when there is nothing to do
(the job already ended, the site has no mark) and JobNotFound for an unknown job.
"""

from __future__ import annotations

from typing import Any

from jerp_jobs import audit, keys
from jerp_jobs.enqueue import start_job
from jerp_jobs.errors import JerpError, JobNotFound
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


def start_listings(rt: Runtime, *, actor: str, benches: list[str] | None = None) -> dict[str, str]:
    """A ``list-sites`` job on each bench (every bench of the fleet unless ``benches`` names
    them), unless the bench's previous listing has not ended yet (its worker is busy or down:
    it is not asked twice); returns bench -> the listing job (new or still pending)."""
    jobs: dict[str, str] = {}
    failed: list[str] = []
    for bench in benches or rt.fleet.names:
        previous = rt.redis.get(keys.BENCH_LISTING + bench)
        previous = previous.decode() if isinstance(previous, bytes) else previous
        if previous:
            try:
                if not rt.store.get(previous).finished:
                    jobs[bench] = previous
                    continue
            except JobNotFound:
                pass
        try:
            job = start_job(rt, "list-sites", params={"bench": bench}, actor=actor)
        except JerpError as exc:
            failed.append(f"{bench}: {exc}")
            continue
        rt.redis.set(keys.BENCH_LISTING + bench, job.id, ex=rt.store.ttl)
        jobs[bench] = job.id
    if failed:
        raise JerpError("could not start the listing of bench " + "; ".join(failed), started=jobs)
    return jobs
