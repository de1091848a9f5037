"""Running one step of a job, safely under redelivery, and deciding what comes next.

``run_step`` is what every step task does (``jerp_jobs.tasks`` only carries it):

1. Read the job. A finished job, or a step already recorded as done, runs nothing again.
2. A cancelled job starts no new step of its normal path: it ends ``cancelled`` here, or —
   when stopping now would leave the site down or half-made — goes to the step its workflow's
   ``on_cancel`` names (bring the site back online, drop a half-made site).
3. Claim the job's site (one job per site at a time; a second job waits its turn) and take
   the execution lock of the step's scope (the site, or the bench for bench-wide steps).
   A second delivery of a step whose first delivery is still alive finds the lock held by
   its own job and steps aside.
4. Mark the step running, call its function, record success / skipped / failed with the
   exit code and the output tail, release the lock.
5. Advance exactly once (a guard in the job record): the next pending step, the recovery
   step the workflow names on failure, or the job's final state.

The job record, not Celery's result backend, says what is done.
"""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass
from typing import Literal

from jerp_jobs.errors import InvalidInput, JerpError, JobNotFound, LockBusy, LockLost, TransientError
from jerp_jobs.executors.base import TAIL_LINES
from jerp_jobs.jobs import Job, Step
from jerp_jobs.locks import HeldLock, bench_lock_name, site_lock_name
from jerp_jobs.log import get_logger
from jerp_jobs.runtime import Runtime
from jerp_jobs.workflow import WAITING, StepContext, Workflow

log = get_logger(__name__)

#: the longest wait between two attempts of a step that declares retries
RETRY_CAP_S = 300.0


@dataclass(frozen=True)
class StepRun:
    outcome: Literal["advanced", "finished", "ignored", "waiting", "retry"]
    next_step: str | None = None
    detail: str = ""
    #: for "retry": seconds to wait before the step is delivered again
    countdown: float = 0.0


def run_step(rt: Runtime, job_id: str, step: str, *, worker: str) -> StepRun:
    job = rt.store.get(job_id)
    if job.finished:
        return StepRun("ignored", detail=f"job already {job.state}")
    workflow = rt.workflow(job.kind)
    spec = workflow.resolve(step)
    record = job.step(step)

    if job.cancel_requested and record.state == "pending" and not workflow.is_recovery(step):
        target = workflow.on_cancel(job, _last_done(job))
        if target is None:
            return _finished(rt, job.id, "cancelled", error="cancelled by an operator before step " + step)
        if target != step:
            rt.dispatch(job.id, target)
            return StepRun("advanced", next_step=target, detail="cancelled: " + target)

    if job.site is not None:
        attention = rt.sites.attention(job.site)
        if attention and attention.get("job_id") != job.id:
            return _finished(
                rt,
                job.id,
                "failed",
                error=f"site {job.site} needs attention (job {attention.get('job_id')}: {attention.get('reason')}); "
                "no automated workflow touches it until an operator clears the mark",
            )
        owner = rt.sites.claim(job.site, job.id)
        if owner != job.id and _owner_gone(rt, owner):
            rt.sites.release(job.site, owner)  # left behind by a job that ended or expired
            owner = rt.sites.claim(job.site, job.id)
        if owner != job.id:
            raise LockBusy(f"site {job.site}", {"job_id": owner})
    else:
        workflow.admit(rt, job)

    lock_name = site_lock_name(job.site) if spec.scope == "site" and job.site else bench_lock_name(
        rt.settings.compose_project
    )
    held = rt.locks.try_acquire(lock_name, job_id=job.id, step=step)
    if held is None:
        holder = rt.locks.holder(lock_name) or {}
        if holder.get("job_id") == job.id and holder.get("step") == step:
            return StepRun("ignored", detail="another delivery of this step is running")
        raise LockBusy(lock_name, {k: str(v) for k, v in holder.items()})

    try:
        job = rt.store.get(job_id)  # re-read under the lock: the truth now
        record = job.step(step)
        countdown = 0.0
        if record.state == "failed":
            outcome = "failed"
        elif record.done:
            outcome = "done"
        else:
            outcome, countdown = _execute(rt, job, step, workflow, worker=worker, held=held)
    finally:
        held.release()
    if outcome == "lost":
        return StepRun("ignored", detail=f"lost the lock of {step} while it ran; its other delivery decides")
    if outcome == WAITING:
        return StepRun("waiting", detail=f"{step} goes on outside the worker")
    if outcome == "retry":
        return StepRun("retry", detail=f"{step} will be tried again", countdown=countdown)
    return _advance(rt, workflow, job_id, step, failed=outcome == "failed")


def complete_waiting_step(rt: Runtime, job_id: str, step: str, state: str, *, error: str | None = None) -> StepRun:
    """End a step that returned WAITING (e.g. a fan-out whose children all ended), then advance."""
    record = rt.store.get(job_id).step(step)
    if record.done:
        return StepRun("ignored", detail=f"{step} already ended")
    rt.store.finish_step(job_id, record, state, error=error)
    return _advance(rt, rt.workflow(rt.store.get(job_id).kind), job_id, step, failed=state == "failed")


def _execute(
    rt: Runtime, job: Job, step: str, workflow: Workflow, *, worker: str, held: HeldLock
) -> tuple[str, float]:
    """Run the step's function and record the outcome: "done", "failed", "retry" (with the
    delay before the next attempt) or WAITING; "lost" when the lock expired while it ran (the
    step was published again meanwhile: that delivery records, not this one)."""
    if job.state == "queued":
        rt.store.set_state(job.id, "running")
    record = rt.store.start_step(job.id, step, worker=worker, current=job.step(step))
    spec = workflow.resolve(step)
    ctx = StepContext(runtime=rt, job=job, step=step, fence=job.site if spec.scope == "site" else "bench")
    log.info("step.start", job_id=job.id, step=step, site=job.site, attempt=record.attempts)
    try:
        state = spec.fn(ctx) or "success"
        held.ensure_held()
    except LockLost:
        log.error("step.lock_lost", job_id=job.id, step=step)
        return "lost", 0.0
    except TransientError as exc:
        if record.attempts > spec.retries:
            return _failed(rt, job.id, record, exc, ctx), 0.0
        delay = min(RETRY_CAP_S, rt.settings.retry_backoff * 2 ** (record.attempts - 1)) * (1 + random.random() / 5)
        record.state = "pending"
        record.ended_at = time.time()
        record.error = f"attempt {record.attempts} of {spec.retries + 1} failed: {exc}; trying again in {delay:.0f}s"
        record.output = _tail(ctx.output)
        rt.store.update_step(job.id, record)
        rt.store.note(job.id, retrying=f"{step}: {record.error}")
        log.warning("step.retry", job_id=job.id, step=step, attempt=record.attempts, delay_s=round(delay, 1), error=str(exc))
        return "retry", delay
    except JerpError as exc:
        if held.lost:
            return "lost", 0.0
        return _failed(rt, job.id, record, exc, ctx), 0.0
    except Exception as exc:  # a bug, not an operations failure: record it all the same
        rt.store.finish_step(
            job.id,
            record,
            "failed",
            exit_code=ctx.exit_code,
            output=_tail(ctx.output) + "\n" + traceback.format_exc(limit=8),
            error=f"unexpected error: {type(exc).__name__}: {exc}",
        )
        log.exception("step.crashed", job_id=job.id, step=step)
        return "failed", 0.0
    if state == WAITING:
        current = rt.store.get(job.id).step(step)
        if current.state != "running":  # its children already ended it
            return WAITING, 0.0
        current.waiting = True
        rt.store.update_step(job.id, current)
        log.info("step.waiting", job_id=job.id, step=step)
        return WAITING, 0.0
    rt.store.finish_step(job.id, record, state, exit_code=ctx.exit_code, output=_tail(ctx.output))
    log.info("step.end", job_id=job.id, step=step, state=state, duration_s=record.duration_s)
    return "done", 0.0


def _owner_gone(rt: Runtime, owner: str) -> bool:
    try:
        return rt.store.get(owner).finished
    except JobNotFound:
        return True


def readvance(rt: Runtime, job_id: str) -> StepRun | None:
    """Move on a running job that no step is moving: its last step ended but the next was never
    published (the worker died, or the broker failed, in between). Publishing twice is harmless."""
    job = rt.store.get(job_id)
    if job.finished or any(s.state == "running" for s in job.steps):
        return None
    ended = [s for s in job.steps if s.done and s.ended_at]
    if not ended:
        return None
    last = max(ended, key=lambda s: s.ended_at or 0.0)
    workflow = rt.workflow(job.kind)
    if not rt.store.advanced(job_id, last.name):
        return _advance(rt, workflow, job_id, last.name, failed=last.state == "failed")
    following = _next_after(workflow, job, last.name, failed=last.state == "failed")
    if following is not None and job.step(following).state == "pending":
        rt.dispatch(job_id, following)
        return StepRun("advanced", next_step=following, detail="published again")
    return None


def fail_lost_step(rt: Runtime, job_id: str, step: str, *, reason: str) -> StepRun:
    """Record a running step whose worker is gone as failed, and send the job down its failure
    path (restore, back online, drop a half-made site...)."""
    record = rt.store.get(job_id).step(step)
    rt.store.finish_step(job_id, record, "failed", error=reason, output=record.output)
    return _advance(rt, rt.workflow(rt.store.get(job_id).kind), job_id, step, failed=True)


def _last_done(job: Job) -> str | None:
    ended = [s for s in job.steps if s.state in ("success", "skipped") and s.ended_at]
    return max(ended, key=lambda s: s.ended_at or 0.0).name if ended else None


def _failed(rt: Runtime, job_id: str, record: Step, exc: JerpError, ctx: StepContext) -> str:
    output = getattr(exc, "output_tail", "") or _tail(ctx.output)
    rt.store.finish_step(
        job_id, record, "failed", exit_code=getattr(exc, "exit_code", ctx.exit_code), output=output, error=str(exc)
    )
    failure = getattr(exc, "failure", None)  # a bench command's class (jerp_jobs.bench.BenchFailure)
    if failure is not None:
        rt.store.set_result(job_id, failure={"step": record.name, **failure.as_dict()})
    log.warning("step.failed", job_id=job_id, step=record.name, error=str(exc),
                failure=failure.kind if failure is not None else None)
    return "failed"


def _advance(rt: Runtime, workflow: Workflow, job_id: str, step: str, *, failed: bool) -> StepRun:
    """Move the job on after ``step``: publish the next step, or give the job its final state.

    The guard field is set *after* the next step is published: a delivery that dies in
    between leaves the guard unset, and the redelivered step publishes again (a duplicate
    that the next step's lock and record make harmless) instead of stranding the job.
    """
    if rt.store.advanced(job_id, step):
        return StepRun("ignored", detail=f"the job already moved past {step}")
    job = rt.store.get(job_id)
    if job.finished:  # reaped (or ended otherwise) while this step ran
        return StepRun("ignored", detail=f"job already {job.state}")
    following = _next_after(workflow, job, step, failed=failed)
    if following is not None and job.cancel_requested and not failed and not workflow.is_recovery(step):
        following = workflow.on_cancel(job, step)
    ended_path = workflow.resolve(step).last  # a path that ran to its end is not cancelled afterwards
    if following is None and job.cancel_requested and not failed and not workflow.is_recovery(step) and not ended_path:
        result = _finished(rt, job_id, "cancelled", error=f"cancelled by an operator after step {step}")
    elif following is not None:
        rt.dispatch(job_id, following)
        result = StepRun("advanced", next_step=following)
    else:
        final = workflow.final_state(job)
        result = _finished(rt, job_id, final, error=_failure_summary(job) if final != "succeeded" else None)
    rt.store.claim_advance(job_id, step)
    return result


def _next_after(workflow: Workflow, job: Job, step: str, *, failed: bool) -> str | None:
    if failed:
        return workflow.on_failure(job, step)
    return next_pending(workflow, job, after=step)


def _finished(rt: Runtime, job_id: str, state: str, *, error: str | None) -> StepRun:
    job = rt.store.get(job_id)
    if state == "succeeded" and job.cancel_requested:
        workflow = rt.workflow(job.kind)
        if any(s.state == "pending" and not workflow.is_recovery(s.name) for s in job.steps):
            state, error = "cancelled", f"cancelled by an operator; {workflow.cancel_outcome(job)}"
    finish_job(rt, job_id, state, error=error)
    return StepRun("finished", detail=state)


def next_pending(workflow: Workflow, job: Job, *, after: str | None) -> str | None:
    """The step after ``after``: its explicit successor, or the next pending step on the same
    path (normal or recovery)."""
    if after is not None:
        spec = workflow.resolve(after)
        if spec.last:
            return None
        if spec.then is not None:
            return spec.then
    names = [s.name for s in job.steps]
    start = names.index(after) + 1 if after is not None else 0
    on_recovery = after is not None and workflow.is_recovery(after)
    for record in job.steps[start:]:
        if record.state == "pending" and workflow.is_recovery(record.name) == on_recovery:
            return record.name
    return None


def finish_job(rt: Runtime, job_id: str, state: str, *, error: str | None = None) -> None:
    """Give the job its final state, free its site, and tell its parent (a fan-out), if any."""
    rt.store.skip_pending(job_id, reason=f"job ended {state}")
    rt.store.set_state(job_id, state, error=error)
    job = rt.store.get(job_id)
    if job.site is not None:
        rt.sites.release(job.site, job_id)
    log.info("job.end", job_id=job_id, state=state, site=job.site, error=error)
    try:
        rt.workflow(job.kind).on_end(rt, job)
    except Exception:  # noqa: BLE001 - the job has ended; what follows must not undo that
        log.exception("job.on_end_failed", job_id=job_id, kind=job.kind)
    if job.parent:
        rt.notify_parent(job.parent, job_id)


def child_done(rt: Runtime, parent_id: str, child_id: str) -> StepRun | None:
    """Tell the parent that ``child_id`` ended, through its workflow's ``on_child_done``;
    returns the StepRun when the parent's waiting step ended."""
    result: StepRun | None = rt.workflow(rt.store.get(parent_id).kind).on_child_done(rt, parent_id, child_id)
    return result


def reconcile_children(rt: Runtime, parent_id: str) -> None:
    """Deliver the end of every child whose notification was lost, then settle the parent."""
    rt.workflow(rt.store.get(parent_id).kind).reconcile(rt, parent_id)


def first_step(rt: Runtime, job_id: str) -> str:
    job = rt.store.get(job_id)
    workflow = rt.workflow(job.kind)
    name = next_pending(workflow, job, after=None)
    if name is None:
        raise InvalidInput(f"job {job_id} has no step to run")
    return name


def _failure_summary(job: Job) -> str:
    failed = [s for s in job.steps if s.state == "failed"]
    if not failed:
        return "failed"
    return "; ".join(f"step {s.name} failed: {s.error or 'exit ' + str(s.exit_code)}" for s in failed)


def _tail(chunks: list[str]) -> str:
    lines = "\n".join(c for c in chunks if c).splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def waited_too_long(job: Job, *, limit_s: float) -> bool:
    """A queued job's wait for its site, counted from when it first had to wait."""
    since = float(job.notes.get("waiting_since", job.created_at))
    return time.time() - since > limit_s
