"""Resuming work whose worker died.

A step is *running* in its record only while a worker holds its execution lock: the runner
takes the lock before it marks the step running and records the outcome before it lets go.
So a running step whose lock is not held by its own job lost its worker (SIGKILL, OOM, a lost
machine). :func:`resume_stalled` publishes such steps again; the new attempt takes the lock,
waits at the fence until any bench process the dead worker left behind has ended, and runs
the step again (steps are written to be safe to repeat). Fan-outs waiting for children are
reconciled with their children's records, in case a notification was lost.

Beat runs it every ``JERP_RESUME_INTERVAL`` seconds; Redis redelivery after the visibility
timeout remains the slower backstop.
"""

from __future__ import annotations

import time

from jerp_jobs.locks import bench_lock_name, site_lock_name
from jerp_jobs.log import get_logger
from jerp_jobs.runtime import Runtime
from jerp_jobs.workflow import get_workflow

log = get_logger(__name__)


def resume_stalled(rt: Runtime, *, now: float | None = None) -> list[tuple[str, str]]:
    """Publish again every running step that lost its worker; returns (job id, step) pairs."""
    now = time.time() if now is None else now
    resumed = []
    for job in rt.store.list(state="running", limit=100_000):
        workflow = get_workflow(job.kind)
        for step in job.steps:
            if step.state != "running":
                continue
            if step.waiting:
                _reconcile_fanout(rt, job.id)
                continue
            scope = workflow.resolve(step.name).scope
            lock = site_lock_name(job.site) if scope == "site" and job.site else bench_lock_name(
                rt.settings.compose_project
            )
            holder = rt.locks.holder(lock) or {}
            if holder.get("job_id") == job.id and holder.get("step") == step.name:
                continue  # a live worker runs it
            if step.started_at is not None and now - step.started_at < rt.locks.ttl:
                continue  # too young to judge
            rt.store.note(job.id, resumed=f"step {step.name} published again at {time.strftime('%H:%M:%SZ', time.gmtime(now))}: its worker was lost")
            rt.dispatch(job.id, step.name)
            log.warning("step.resumed", job_id=job.id, step=step.name, site=job.site, attempts=step.attempts)
            resumed.append((job.id, step.name))
    return resumed


def _reconcile_fanout(rt: Runtime, parent_id: str) -> None:
    from jerp_jobs.operations.fanout import reconcile

    reconcile(rt, parent_id)


def reap_stuck(rt: Runtime, *, now: float | None = None) -> list[str]:
    """Fail the jobs still queued or running past their deadline; returns their ids.

    The deadline counts from the job's creation: ``JERP_JOB_DEADLINE_HOURS`` for one site's
    job, ``JERP_FANOUT_DEADLINE_HOURS`` for migrate-all and backup-all. A reaped job frees its
    site; a step still running on a live worker is not killed, but nothing after it runs.
    """
    from jerp_jobs.runner import finish_job

    now = time.time() if now is None else now
    reaped = []
    for state in ("running", "queued"):
        for job in rt.store.list(state=state, limit=100_000):
            hours = rt.settings.fanout_deadline_hours if job.kind.endswith("-all") else rt.settings.job_deadline_hours
            if now - job.created_at <= hours * 3600:
                continue
            finish_job(rt, job.id, "failed", error=f"reaped: still {state} {hours:g} h after it was requested")
            log.error("job.reaped", job_id=job.id, kind=job.kind, site=job.site, state=state)
            reaped.append(job.id)
    return reaped
