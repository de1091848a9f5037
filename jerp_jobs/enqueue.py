"""Starting a job — creating it and sending its first step: the one way work starts.

The job record is written first, with every step planned; then the first step's message is
published. If publishing fails, a requested job is marked failed at once, so no record waits
forever for a message that was never sent; a child job stays queued for the resumer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jerp_jobs import audit, runner
from jerp_jobs.backupfiles import sites_root
from jerp_jobs.errors import BrokerUnavailable, InvalidInput, JerpError
from jerp_jobs.jobs import Job
from jerp_jobs.runtime import Runtime
from jerp_jobs.sites import SITE_CONFIG, bench_app_names, refuse_app_name, site_in_bench, validate_site_name


def create_job(
    rt: Runtime,
    kind: str,
    *,
    site: str | None = None,
    params: Mapping[str, Any] | None = None,
    parent: str | None = None,
    actor: str | None = None,
    check_site: bool = False,
) -> Job:
    """Validate the request and write the job with its planned steps; nothing is sent yet.

    ``check_site`` (a request from a person or a schedule): a job whose workflow needs an
    existing site is refused when the bench shows it has no such site
    (:func:`refuse_missing_site`), after its parameters were checked.

    The audit trail gets who started it: ``actor`` (``jerpctl user@host``, ``beat ENTRY``,
    ``webhook ...``), or the parent job for a child."""
    workflow = rt.workflow(kind)
    if workflow.needs_site:
        site = validate_site_name(site)
        refuse_app_name(site, _app_names(rt))
    elif site is not None:
        raise InvalidInput(f"{kind} works on the whole bench; it takes no site")
    params = workflow.validate(site, dict(params or {}), rt.settings)
    if check_site and site is not None and workflow.site_must_exist(params):
        refuse_missing_site(rt, kind, site)
    job = rt.store.create(kind, workflow.plan(params), site=site, params=params, parent=parent)
    audit.record(rt.redis, actor=actor or (f"job {parent}" if parent else "unknown"), action="job.created",
                 job_id=job.id, kind=kind, site=site, days=rt.settings.audit_days)
    return job


#: how long asking the bench whether a site exists may take when a request is made
SITE_CHECK_TIMEOUT_S = 20.0


def refuse_missing_site(rt: Runtime, kind: str, site: str) -> None:
    """InvalidInput when the bench shows it has no ``site`` (:func:`site_in_bench`: the sites
    folder when visible here, else ``test -f`` where bench runs). When neither can tell, the
    request goes on and the job's first step finds out."""
    try:
        executor = rt.executor
    except JerpError:
        executor = None
    if site_in_bench(rt.settings, executor, site, timeout=SITE_CHECK_TIMEOUT_S) is False:
        raise InvalidInput(f"site {site} does not exist in the bench (no sites/{site}/{SITE_CONFIG}); "
                           f"{kind} not enqueued")


def _app_names(rt: Runtime) -> set[str]:
    """frappe, erpnext, and the bench's apps.txt when its sites folder is visible here."""
    return bench_app_names(sites_root(rt.settings))


def start_job(
    rt: Runtime,
    kind: str,
    *,
    site: str | None = None,
    params: Mapping[str, Any] | None = None,
    parent: str | None = None,
    actor: str | None = None,
    before_publish: Callable[[Job], None] | None = None,
    check_site: bool = False,
) -> Job:
    """The one way a job starts — for jerpctl, Beat, the webhook, fan-outs and releases: the
    request validated and the record written with every step planned (:func:`create_job`),
    ``before_publish`` run (what must be recorded before any step can run, such as the child's
    place in its parent), then the first step published (:func:`publish`). Returns the job as
    created."""
    job = create_job(rt, kind, site=site, params=params, parent=parent, actor=actor, check_site=check_site)
    if before_publish is not None:
        before_publish(job)
    publish(rt, job)
    return job


def publish(rt: Runtime, job: Job, *, undo: Callable[[], None] | None = None) -> None:
    """Publish the first step of ``job``; BrokerUnavailable naming the job when it cannot be.

    A job someone asked for (no parent) is then failed at once, after ``undo`` took back what
    was recorded for it, so that no record waits for a message that was never sent and the
    requester is told. A child job stays queued: the resumer publishes its first step again
    (``jerp_jobs.resume``), so one broker error does not count as a failed site."""
    try:
        rt.dispatch(job.id, runner.first_step(rt, job.id))
    except Exception as exc:
        if job.parent is None:
            if undo is not None:
                undo()
            runner.finish_job(rt, job.id, "failed", error=f"could not enqueue the {job.kind} job: {exc}")
        raise BrokerUnavailable(f"could not publish job {job.id} to the broker: {exc}", job_id=job.id) from exc


def submit(rt: Runtime, kind: str, *, site: str | None = None, params: Mapping[str, Any] | None = None,
           actor: str | None = None) -> Job:
    """:func:`start_job` for a request (jerpctl, Beat, the dashboard): a site the bench does not
    have is refused first (``check_site``); returns the job's record as it is now."""
    return rt.store.get(start_job(rt, kind, site=site, params=params, actor=actor, check_site=True).id)
