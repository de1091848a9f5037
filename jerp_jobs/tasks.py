"""Celery tasks: thin carriers of job steps.

``jerp.step`` binds the log context, calls :func:`jerp_jobs.runner.run_step`, and publishes
the next step the runner names. ``jerp.child_done`` tells a fan-out that one of its children
ended. Messages carry job ids and step names — never a secret, never a parameter that is not
already in the job record.
"""

from __future__ import annotations

import random
from typing import Any

from jerp_jobs.celery import CONTROL_QUEUE, SITE_QUEUE, app
from jerp_jobs.errors import JobNotFound, LockBusy
from jerp_jobs.log import get_logger

log = get_logger(__name__)

#: How long a job may wait for its site (another job owns it) before it gives up.
WAIT_LIMIT_S = 6 * 3600


@app.task(bind=True, name="jerp.step", queue=SITE_QUEUE, acks_late=True, max_retries=None)
def step(self: Any, *, job_id: str, step: str) -> str:
    from jerp_jobs import runner
    from jerp_jobs.runtime import get_runtime

    rt = get_runtime()
    try:
        result = runner.run_step(rt, job_id, step, worker=self.request.hostname or "?")
    except JobNotFound:
        log.warning("step.orphan", detail="job record is gone (expired or deleted); nothing to do")
        return "ignored"
    except LockBusy as exc:
        job = rt.store.get(job_id)
        if runner.waited_too_long(job, limit_s=WAIT_LIMIT_S):
            runner.finish_job(rt, job_id, "failed", error=f"gave up waiting: {exc}")
            return "finished"
        rt.store.note(job_id, waiting_for=str(exc))
        log.info("step.waiting", reason=str(exc))
        raise self.retry(countdown=1 + random.random() * 2, exc=exc)
    log.info("step.done", outcome=result.outcome, next_step=result.next_step, detail=result.detail)
    return result.outcome


@app.task(name="jerp.child_done", queue=CONTROL_QUEUE, acks_late=True)
def child_done(*, parent_id: str, child_id: str) -> str:
    from jerp_jobs.operations.fanout import on_child_done
    from jerp_jobs.runtime import get_runtime

    result = on_child_done(get_runtime(), parent_id, child_id)
    return result.outcome if result is not None else "recorded"


def notify_parent(parent_id: str, child_id: str) -> None:
    child_done.apply_async(kwargs={"parent_id": parent_id, "child_id": child_id}, queue=CONTROL_QUEUE)


def enqueue_step(job_id: str, name: str) -> None:
    step.apply_async(kwargs={"job_id": job_id, "step": name}, queue=SITE_QUEUE)


@app.task(name="jerp.resume", queue=CONTROL_QUEUE)
def resume() -> int:
    """Publish again the steps whose worker died (see jerp_jobs.resume)."""
    from jerp_jobs.resume import resume_stalled
    from jerp_jobs.runtime import get_runtime

    return len(resume_stalled(get_runtime()))


@app.task(name="jerp.ping", queue=CONTROL_QUEUE)
def ping() -> str:
    return "pong"
