"""Creating a job and sending its first step: the one way entry points start work.

The job record is written first, with every step planned; then the first step's message is
published. If publishing fails the job is marked failed at once, so no record waits forever
for a message that was never sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jerp_jobs import audit
from jerp_jobs.errors import BrokerUnavailable, InvalidInput
from jerp_jobs.jobs import Job
from jerp_jobs.runtime import Runtime
from jerp_jobs.sites import bench_app_names, refuse_app_name, validate_site_name


def create_job(
    rt: Runtime,
    kind: str,
    *,
    site: str | None = None,
    params: Mapping[str, Any] | None = None,
    parent: str | None = None,
    actor: str | None = None,
) -> Job:
    """Validate the request and write the job with its planned steps; nothing is sent yet.

    The audit trail gets who started it: ``actor`` (``jerpctl user@host``, ``beat ENTRY``,
    ``webhook ...``), or the parent job for a child."""
    workflow = rt.workflow(kind)
    if workflow.needs_site:
        site = validate_site_name(site)
        refuse_app_name(site, _app_names(rt))
    elif site is not None:
        raise InvalidInput(f"{kind} works on the whole bench; it takes no site")
    params = workflow.validate(site, dict(params or {}), rt.settings)
    job = rt.store.create(kind, workflow.plan(params), site=site, params=params, parent=parent)
    audit.record(rt.redis, actor=actor or (f"job {parent}" if parent else "unknown"), action="job.created",
                 job_id=job.id, kind=kind, site=site, days=rt.settings.audit_days)
    return job


def _app_names(rt: Runtime) -> set[str]:
    """frappe, erpnext, and the bench's apps.txt when its sites folder is visible here."""
    from jerp_jobs.backupfiles import sites_root

    return bench_app_names(sites_root(rt.settings))


def submit(rt: Runtime, kind: str, *, site: str | None = None, params: Mapping[str, Any] | None = None,
           actor: str | None = None) -> Job:
    from jerp_jobs import runner

    job = create_job(rt, kind, site=site, params=params, actor=actor)
    try:
        rt.dispatch(job.id, runner.first_step(rt, job.id))
    except Exception as exc:
        runner.finish_job(rt, job.id, "failed", error=f"could not enqueue the job: {exc}")
        raise BrokerUnavailable(f"could not publish job {job.id} to the broker: {exc}", job_id=job.id) from exc
    return rt.store.get(job.id)
