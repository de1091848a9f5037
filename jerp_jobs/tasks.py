"""Celery tasks: thin carriers of job steps.

``jerp.step`` binds the log context, calls :func:`jerp_jobs.runner.run_step`, and publishes
the next step the runner names. ``jerp.child_done`` tells a fan-out that one of its children
ended. Messages carry job ids and step names — never a secret, never a parameter that is not
already in the job record.
"""

from __future__ import annotations

import random
import time
from typing import Any, NoReturn

import structlog

from jerp_jobs import runner
from jerp_jobs.bootstrap import CHILD_DONE_TASK, STEP_TASK, StepTaskNames, celery_dispatch, get_runtime, step_task_name
from jerp_jobs.celery import CONTROL_QUEUE, SITE_QUEUE, app
from jerp_jobs.enqueue import submit
from jerp_jobs.errors import JerpError, JobNotFound, LockBusy
from jerp_jobs.log import get_logger, redactor
from jerp_jobs.offsite.s3 import OffsiteStore
from jerp_jobs.operations.drill import pick_for_rotation
from jerp_jobs.operations.offsite import list_offsite_sites
from jerp_jobs.resume import reap_stuck, resume_stalled

log = get_logger(__name__)

#: How long a job that has not started may wait for its site (another job owns it) before it
#: gives up. A job that has started never gives up between steps: it waits for the bench lock.
WAIT_LIMIT_S = 6 * 3600


class StepFailed(Exception):
    """A step this task ran failed, or the job ended failed: the task ends FAILURE, so Flower
    counts it as failed. Expected (``throws``): logged without a traceback, never retried, and
    the message is acknowledged as any ended task is — the job's own path (its recovery steps,
    already published by the runner) goes on. The text names the job and step and the step's
    recorded error, redacted: it reaches monitors through task events."""


# The job record is the source of truth: no result is stored for these tasks. Sent under a
# readable name (KIND:SITE:STEP, jerp_jobs.bootstrap.StepTaskNames).
@app.task(bind=True, name=STEP_TASK, queue=SITE_QUEUE, acks_late=True, max_retries=None, ignore_result=True,
          throws=(StepFailed,))
def step(self: Any, *, job_id: str, step: str) -> str:
    """Run ``step``, then the job's following steps in this same task while it has run less
    than ``JERP_INLINE_STEPS_S`` (each still claims, locks and records as a delivered step
    does). A step run so that must wait (a busy lock) or try again later gets its own message.

    Returns the last outcome (``advanced``, ``finished``...); raises :class:`StepFailed` when a
    step it ran failed or the job ended failed here (after the runner published what follows)."""
    rt = get_runtime()
    elsewhere = _other_bench_queue(rt, job_id)
    if elsewhere == "":
        route = rt.store.route(job_id)
        error = f"bench {route[2] if route else '?'} is not in the fleet (JERP_FLEET_FILE): no worker may run this job"
        log.error("step.no_bench", error=error)
        runner.finish_job(rt, job_id, "failed", error=error)
        raise StepFailed(f"job {job_id} failed: {error}")
    if elsewhere is not None:
        # a step of another bench's job (a worker started with the wrong -Q, a fleet file
        # changed): never run here, with this bench's Docker endpoint and credentials
        log.warning("step.rerouted", queue=elsewhere, worker_bench=rt.settings.bench)
        celery_dispatch(job_id, step, name=StepTaskNames(rt.store)(job_id, step), queue=elsewhere)
        return "rerouted"
    inline_until = time.monotonic() + rt.settings.inline_steps_s
    worker = self.request.hostname or "?"
    current = step
    failed: str | None = None
    known = None  # the job as the step run inline before left it
    while True:
        try:
            result = runner.run_step(rt, job_id, current, worker=worker, inline_until=inline_until, known=known)
        except JobNotFound:
            log.warning("step.orphan", detail="job record is gone (expired or deleted); nothing to do")
            return _outcome(rt, job_id, "ignored", failed)
        except LockBusy as exc:
            if current != step:
                rt.store.note(job_id, waiting_for=str(exc))
                log.info("step.waiting", reason=str(exc))
                _publish_later(rt, job_id, current, countdown=1 + random.random() * 2)
                return _outcome(rt, job_id, "advanced", failed)
            _wait_for_lock(self, rt, job_id, exc)
        failed = result.failed_step or failed
        if result.outcome == "retry":
            log.info("step.retry_later", countdown_s=round(result.countdown, 1))
            if current != step:
                _publish_later(rt, job_id, current, countdown=result.countdown)
                return _outcome(rt, job_id, "retry", failed)
            raise self.retry(countdown=result.countdown)
        log.info("step.done", outcome=result.outcome, next_step=result.next_step, detail=result.detail)
        if result.outcome != "inline" or result.next_step is None:
            return _outcome(rt, job_id, result.outcome, failed)
        current, known = result.next_step, result.known
        structlog.contextvars.bind_contextvars(step=current)


def _other_bench_queue(rt: Any, job_id: str) -> str | None:
    """The queue of the job's bench when this worker must not run it: a bench's worker runs
    its own bench's jobs only, and in a declared fleet a worker of no bench (the control plane)
    runs no bench's job. None: run it here (or the record is gone: the runner says so)."""
    mine, fleet = rt.settings.bench, rt.fleet
    if not mine and not fleet.declared:
        return None
    route = rt.store.route(job_id)
    if route is None:
        return None
    bench = route[2]
    if not bench:
        return None if not mine or fleet.single is not None else fleet.queue_of(None)
    if bench == mine:
        return None
    if bench not in fleet.names:
        return ""  # no bench of the fleet takes it
    return fleet.queue_of(bench)


def _outcome(rt: Any, job_id: str, outcome: str, failed: str | None) -> str:
    """``outcome``, or StepFailed naming ``failed``, the step that failed (with its recorded error)."""
    if failed is None:
        return outcome
    try:
        job = rt.store.get(job_id)
    except JerpError:
        raise StepFailed(f"job {job_id}: step {failed} failed") from None
    record = next((s for s in job.steps if s.name == failed), None)
    error = (record.error if record is not None and record.state == "failed" else None) or job.error or "failed"
    then = f"the job ended {job.state}" if job.finished else "the job goes on with its failure path"
    name = step_task_name(job.kind, job.site, failed)
    raise StepFailed(redactor.text(f"{name} (job {job.id}) failed: {error[:500]}; {then} "
                                   f"(jerpctl status {job.id})"))


def _wait_for_lock(task: Any, rt: Any, job_id: str, exc: LockBusy) -> NoReturn:
    """The delivered step found its site or lock busy: deliver it again in a few seconds, or
    give up (StepFailed) when a job that never started waited past WAIT_LIMIT_S."""
    job = rt.store.get(job_id)
    if job.state == "queued" and runner.waited_too_long(job, limit_s=WAIT_LIMIT_S):
        runner.finish_job(rt, job_id, "failed", error=f"gave up after waiting {WAIT_LIMIT_S // 3600} h: {exc}")
        raise StepFailed(redactor.text(f"job {job_id} failed: gave up after waiting {WAIT_LIMIT_S // 3600} h: {exc}"))
    rt.store.note(job_id, waiting_for=str(exc))
    log.info("step.waiting", reason=str(exc))
    raise task.retry(countdown=1 + random.random() * 2, exc=exc)


@app.task(name=CHILD_DONE_TASK, queue=CONTROL_QUEUE, acks_late=True, ignore_result=True)
def child_done(*, parent_id: str, child_id: str) -> str:
    result = runner.child_done(get_runtime(), parent_id, child_id)
    return result.outcome if result is not None else "recorded"


def _publish_later(rt: Any, job_id: str, name: str, *, countdown: float) -> None:
    """Publish a step that was run inline and must wait or try again, as its own message."""
    names = StepTaskNames(rt.store, fleet=rt.fleet)
    celery_dispatch(job_id, name, name=names(job_id, name), countdown=countdown, queue=names.queue(job_id))


@app.task(name="jerp.resume", queue=CONTROL_QUEUE)
def resume() -> int:
    """Publish again the steps whose worker died (see jerp_jobs.resume)."""
    return len(resume_stalled(get_runtime()))


@app.task(name="jerp.reap", queue=CONTROL_QUEUE)
def reap() -> int:
    """Fail the jobs stuck past their deadline (see jerp_jobs.resume.reap_stuck)."""
    return len(reap_stuck(get_runtime()))


@app.task(name="jerp.nightly_backup", queue=CONTROL_QUEUE)
def nightly_backup() -> str:
    """Beat: back up every site, with its off-site copy when an off-site store is configured
    (``JERP_S3_BUCKET``; without one, local-only: local retention prunes); a failed site is
    tried once more."""

    rt = get_runtime()
    params = {"offsite": bool(rt.settings.s3_bucket), "with_files": True, "retries": 1, "site_limit": rt.settings.nightly_site_limit}
    return submit(rt, "backup-all", params=params, actor="beat nightly-backup").id


@app.task(name="jerp.prune_all", queue=CONTROL_QUEUE)
def prune_all() -> list[str]:
    """Beat: apply the retention policy to the off-site backups of every site in the bucket."""

    rt = get_runtime()
    if not rt.settings.s3_bucket:
        log.info("prune.local_only", reason="no off-site store (JERP_S3_BUCKET unset): each backup prunes its site's local sets")
        return []
    jobs = []
    for site in list_offsite_sites(OffsiteStore.from_settings(rt.settings)):
        try:
            jobs.append(submit(rt, "prune", site=site, actor="beat retention-prune").id)
        except JerpError as exc:
            log.error("prune.not_started", site=site, error=str(exc))
    return jobs


@app.task(name="jerp.drill_rotation", queue=CONTROL_QUEUE)
def drill_rotation() -> list[str]:
    """Beat: drill the sites drilled longest ago, enough for each to be drilled every quarter."""

    rt = get_runtime()
    if not rt.settings.s3_bucket:
        log.info("drill.local_only", reason="no off-site store (JERP_S3_BUCKET unset): drills restore off-site copies")
        return []
    return [submit(rt, "drill", site=site, actor="beat restore-drill").id for site in pick_for_rotation(rt)]


@app.task(name="jerp.ship_binlogs", queue=SITE_QUEUE)
def ship_binlogs() -> dict[str, Any]:
    """Beat: ship the platform MariaDB's closed binary logs off-site (jerp_jobs.pitr)."""
    from jerp_jobs.pitr import ship_configured

    rt = get_runtime()
    done = ship_configured(rt.settings, rt.executor, rt.redis)
    log.info("pitr.shipped", **{k: v for k, v in done.items() if k != "newest"})
    return done


@app.task(name="jerp.list_sites", queue=CONTROL_QUEUE)
def list_sites() -> dict[str, str]:
    """Beat, in a declared fleet: each bench lists its sites into the site-to-bench map (a
    ``list-sites`` job on the bench's queue); a bench whose last listing has not ended (its
    worker is down) is not asked again."""
    from jerp_jobs.actions import start_listings

    return start_listings(get_runtime(), actor="beat list-sites")


@app.task(name="jerp.ping", queue=CONTROL_QUEUE)
def ping() -> str:
    return "pong"
