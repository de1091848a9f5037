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

import json
import random
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Literal

from jerp_jobs import placement
from jerp_jobs.errors import InvalidInput, JerpError, JobNotFound, LockBusy, LockLost, TransientError
from jerp_jobs.executors.base import TAIL_LINES
from jerp_jobs.jobs import FINAL_JOB_STATES, Job, JobState, Step, StepEnd, StepKeys, StepState
from jerp_jobs.locks import HeldLock, bench_lock_name, holder_of, site_lock_name
from jerp_jobs.log import get_logger, redactor
from jerp_jobs.runtime import Runtime
from jerp_jobs.sitestate import ATTENTION, OWNER
from jerp_jobs.workflow import WAITING, StepContext, Workflow

log = get_logger(__name__)

#: the longest wait between two attempts of a step that declares retries
RETRY_CAP_S = 300.0


@dataclass(frozen=True)
class StepRun:
    #: "inline": the advance guard is set and ``next_step`` is for the caller to run itself
    outcome: Literal["advanced", "finished", "ignored", "waiting", "retry", "inline"]
    next_step: str | None = None
    detail: str = ""
    #: for "retry": seconds to wait before the step is delivered again
    countdown: float = 0.0
    #: the step whose delivery failed: it ran and was recorded failed (the job went on to its
    #: failure path), or the job was failed instead of starting it (its site needs attention)
    failed_step: str | None = None
    #: for "inline": the job and its record's fields to start ``next_step`` with (pass them to
    #: :func:`run_step` as ``known``): the record as read before the step, with what its end changed
    known: tuple[Job, dict[str, str]] | None = field(default=None, repr=False, compare=False)


#: how many times a step re-reads a record that changed between its read and its start
_READS = 3


def run_step(rt: Runtime, job_id: str, step: str, *, worker: str, inline_until: float = 0.0,
             known: tuple[Job, dict[str, str]] | None = None) -> StepRun:
    """Run one delivery of ``step``: read the job once, start the step in one script (the
    attention check, the site's claim, the lock, the running record), run it, end it in one
    script (the record, the lock's release, what advancing needs), and advance.

    Before ``inline_until`` (``time.monotonic()``), a step that succeeded hands its successor
    to the caller (``inline``) instead of publishing it: the advance guard is set first, so a
    caller that dies before the next step starts leaves a job the resumer moves on, and ``known``
    in the answer: the job as the step before left it, so that the next step starts without
    reading the record again (its start script compares the job's state, its cancel flag and the
    step's own record with the record, and a record that changed is read again)."""
    accept_attention = ""
    for _ in range(_READS):
        job, fields = known if known is not None and known[0].id == job_id else rt.store.read(job_id)
        known = None
        result = _run_once(rt, job, fields, step, worker=worker, accept_attention=accept_attention,
                           inline_until=inline_until)
        if isinstance(result, StepRun):
            return result
        accept_attention = result  # the job's own attention mark, or "" when the record changed
    raise LockBusy(f"job {job_id}", {"job_id": job_id, "step": step, "detail": "its record kept changing"})


def _run_once(
    rt: Runtime, job: Job, fields: dict[str, str], step: str, *, worker: str, accept_attention: str,
    inline_until: float,
) -> StepRun | str:
    """One attempt at ``run_step``; a string asks for another read (see ``run_step``)."""
    if job.finished:
        return StepRun("ignored", detail=f"job already {job.state}")
    workflow = rt.workflow(job.kind)
    spec = workflow.resolve(step)
    record = job.step(step)

    if job.cancel_requested and record.state == StepState.PENDING and not workflow.is_recovery(step):
        target = workflow.on_cancel(job, _last_done(job))
        if target is None:
            return _finished(rt, job.id, "cancelled", error="cancelled by an operator before step " + step)
        if target != step:
            rt.dispatch(job.id, target)
            return StepRun("advanced", next_step=target, detail="cancelled: " + target)
    if job.site is None:
        workflow.admit(rt, job)

    lock_name = site_lock_name(job.site) if spec.scope == "site" and job.site else bench_lock_of(rt, job)
    keys = _step_keys(rt, job, lock_name, step)
    outcome, detail = rt.store.begin_step(job, fields, record, worker=worker, keys=keys,
                                          accept_attention=accept_attention)
    refused = _refusal(rt, job, step, lock_name, outcome, detail, accept_attention)
    if refused is not None:
        return refused
    if outcome == "ended":  # a delivery of a step already recorded as ended: only advance
        return _advance(rt, workflow, job.id, step, failed=record.state == StepState.FAILED)

    held = rt.locks.adopt(lock_name, keys.lock_value)
    end: StepEnd | None = None
    try:
        result, countdown, end = _execute(rt, job, record, workflow, held=held, inline_until=inline_until)
    finally:
        if end is None:
            held.release()
        else:
            held.forget()  # the end script released it
    if result == "lost":
        return StepRun("ignored", detail=f"lost the lock of {step} while it ran; its other delivery decides")
    if result == WAITING:
        return StepRun("waiting", detail=f"{step} goes on outside the worker")
    if result == "retry":
        return StepRun("retry", detail=f"{step} will be tried again", countdown=countdown)
    if end is not None:
        return _advance_ended(rt, workflow, job, fields, step, end, inline_until=inline_until)
    if result == "failed":
        return replace(_advance(rt, workflow, job.id, step, failed=True), failed_step=step)
    return _advance(rt, workflow, job.id, step, failed=False)


def _step_keys(rt: Runtime, job: Job, lock_name: str, step: str) -> StepKeys:
    site_keys = {}
    if job.site is not None:
        site_keys = {"attention": ATTENTION + job.site, "owner": OWNER + job.site, "owner_ttl_s": rt.sites.owner_ttl_s}
    return StepKeys(lock=rt.locks.key(lock_name), lock_value=rt.locks.value(job_id=job.id, step=step),
                    lock_ttl_ms=int(rt.locks.ttl * 1000), **site_keys)


def _refusal(
    rt: Runtime, job: Job, step: str, lock_name: str, outcome: str, detail: str, accepted: str
) -> StepRun | str | None:
    """What a start that did not happen means: a StepRun, a request to read again (a string:
    the attention mark to accept), LockBusy raised — or None when the step started or had ended."""
    if outcome in ("started", "ended"):
        return None
    if outcome == "gone":
        raise JobNotFound(job.id)
    if outcome == "finished":
        return StepRun("ignored", detail=f"job already {detail}")
    if outcome == "changed":
        return ""
    if outcome == "attention":
        mark = json.loads(detail)
        if mark.get("job_id") == job.id and detail != accepted:
            return detail  # the job's own mark: the job goes on (read again, accepting it)
        return replace(_finished(
            rt,
            job.id,
            "failed",
            error=f"site {job.site} needs attention (job {mark.get('job_id')}: {mark.get('reason')}); "
            "no automated workflow touches it until an operator clears the mark",
        ), failed_step=step)
    if outcome == "site-busy":
        raise LockBusy(f"site {job.site}", {"job_id": detail})
    holder = holder_of(detail) or {}
    if holder.get("job_id") == job.id and holder.get("step") == step:
        return StepRun("ignored", detail="another delivery of this step is running")
    raise LockBusy(lock_name, {k: str(v) for k, v in holder.items()})


def complete_waiting_step(rt: Runtime, job_id: str, step: str, state: str, *, error: str | None = None) -> StepRun:
    """End a step that returned WAITING (e.g. a fan-out whose children all ended), then advance."""
    record = rt.store.get(job_id).step(step)
    if record.done:
        return StepRun("ignored", detail=f"{step} already ended")
    rt.store.finish_step(job_id, record, state, error=error)
    return _advance(rt, rt.workflow(rt.store.get(job_id).kind), job_id, step, failed=state == "failed")


def _execute(
    rt: Runtime, job: Job, record: Step, workflow: Workflow, *, held: HeldLock, inline_until: float = 0.0
) -> tuple[str, float, StepEnd | None]:
    """Run the started step's function and record the outcome: "done" (with what the end
    script read when the step succeeded), "failed", "retry" (with the delay before the next
    attempt) or WAITING; "lost" when the lock expired while it ran (the step was published
    again meanwhile: that delivery records, not this one). A step that succeeded before
    ``inline_until`` and has a next step sets the advance guard in its end script (the caller
    runs that step itself)."""
    step = record.name
    spec = workflow.resolve(step)
    ctx = StepContext(runtime=rt, job=job, step=step, fence=job.site if spec.scope == "site" else "bench")
    log.info("step.start", job_id=job.id, step=step, site=job.site, attempt=record.attempts)
    try:
        state = spec.fn(ctx) or "success"
        if state == WAITING:
            held.ensure_held()
        elif held.lost:  # else the end script checks that the lock is still held
            raise LockLost(f"lock {held.name} was lost (expired while held); stopping")
    except LockLost:
        log.error("step.lock_lost", job_id=job.id, step=step)
        return "lost", 0.0, None
    except TransientError as exc:
        if record.attempts > spec.retries:
            return _failed(rt, job.id, record, exc, ctx), 0.0, None
        delay = min(RETRY_CAP_S, rt.settings.retry_backoff * 2 ** (record.attempts - 1)) * (1 + random.random() / 5)
        record.state = "pending"
        record.ended_at = time.time()
        record.error = f"attempt {record.attempts} of {spec.retries + 1} failed: {exc}; trying again in {delay:.0f}s"
        record.output = _tail(ctx.output)
        rt.store.update_step(job.id, record)
        rt.store.note(job.id, retrying=f"{step}: {record.error}")
        log.warning("step.retry", job_id=job.id, step=step, attempt=record.attempts, delay_s=round(delay, 1), error=str(exc))
        return "retry", delay, None
    except JerpError as exc:
        if held.lost:
            return "lost", 0.0, None
        return _failed(rt, job.id, record, exc, ctx), 0.0, None
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
        return "failed", 0.0, None
    if state == WAITING:
        current = rt.store.get(job.id).step(step)
        if current.state != "running":  # its children already ended it
            return WAITING, 0.0, None
        current.waiting = True
        rt.store.update_step(job.id, current)
        log.info("step.waiting", job_id=job.id, step=step)
        return WAITING, 0.0, None
    rt.store.ended(record, state, exit_code=ctx.exit_code, output=_tail(ctx.output))
    inline = time.monotonic() < inline_until and next_pending(workflow, job, after=step) is not None
    end = rt.store.end_step(job.id, record, lock=rt.locks.key(held.name), lock_value=held.value, kind=job.kind,
                            claim_advance=inline, lock_ttl_ms=int(rt.locks.ttl * 1000))
    if end is None:
        held.lost_now()
        log.error("step.lock_lost", job_id=job.id, step=step)
        return "lost", 0.0, None
    log.info("step.end", job_id=job.id, step=step, state=state, duration_s=record.duration_s)
    return "done", 0.0, end


def _advance_ended(
    rt: Runtime, workflow: Workflow, job: Job, fields: dict[str, str], step: str, end: StepEnd, *, inline_until: float
) -> StepRun:
    """Advance after a step ended ``success`` or ``skipped`` (``job`` as read before it, with
    the step's record updated): the common case, publishing the next step, needs no read;
    a guard already set, a job ended meanwhile, a cancel or the job's end take ``_advance``."""
    if end.claimed:  # the end script set the guard: the caller runs the next step
        job.state, job.cancel_requested = end.state, False  # as the end script found them
        job.result = end.result if end.result is not None else job.result
        for note in ("waiting_for", "waiting_since"):  # the step's start dropped them
            job.notes.pop(note, None)
        return StepRun("inline", next_step=next_pending(workflow, job, after=step), known=(job, fields))
    if end.advanced:
        return StepRun("ignored", detail=f"the job already moved past {step}")
    if end.state in FINAL_JOB_STATES:
        return StepRun("ignored", detail=f"job already {end.state}")
    following = None if end.cancel_requested else next_pending(workflow, job, after=step)
    if following is None:
        return _advance(rt, workflow, job.id, step, failed=False)
    if time.monotonic() < inline_until:
        if not rt.store.claim_advance(job.id, step):
            return StepRun("ignored", detail=f"the job already moved past {step}")
        return StepRun("inline", next_step=following)
    rt.dispatch(job.id, following)
    rt.store.claim_advance(job.id, step)
    return StepRun("advanced", next_step=following)


def readvance(rt: Runtime, job_id: str) -> StepRun | None:
    """Move on a running job that no step is moving: its last step ended but the next was never
    published (the worker died, or the broker failed, in between). Publishing twice is harmless."""
    job = rt.store.get(job_id)
    if job.finished or any(s.state == StepState.RUNNING for s in job.steps):
        return None
    ended = [s for s in job.steps if s.done and s.ended_at]
    if not ended:
        return None
    last = max(ended, key=lambda s: s.ended_at or 0.0)
    workflow = rt.workflow(job.kind)
    if not rt.store.advanced(job_id, last.name):
        return _advance(rt, workflow, job_id, last.name, failed=last.state == StepState.FAILED)
    following = _next_after(workflow, job, last.name, failed=last.state == StepState.FAILED)
    if following is not None and job.step(following).state == StepState.PENDING:
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
    ended = [s for s in job.steps if s.state in (StepState.SUCCESS, StepState.SKIPPED) and s.ended_at]
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
        result = _finished(rt, job_id, "cancelled", error=f"cancelled by an operator after step {step}", job=job)
    elif following is not None:
        rt.dispatch(job_id, following)
        result = StepRun("advanced", next_step=following)
    else:
        final = workflow.final_state(job)
        result = _finished(rt, job_id, final, error=_failure_summary(job) if final != JobState.SUCCEEDED else None,
                           job=job)
    rt.store.claim_advance(job_id, step)
    return result


def _next_after(workflow: Workflow, job: Job, step: str, *, failed: bool) -> str | None:
    if failed:
        return workflow.on_failure(job, step)
    return next_pending(workflow, job, after=step)


def _finished(rt: Runtime, job_id: str, state: str, *, error: str | None, job: Job | None = None) -> StepRun:
    """End the job ``state`` (``job``: as just read, else read here)."""
    job = job if job is not None else rt.store.get(job_id)
    if state == JobState.SUCCEEDED and job.cancel_requested:
        workflow = rt.workflow(job.kind)
        if any(s.state == StepState.PENDING and not workflow.is_recovery(s.name) for s in job.steps):
            state, error = "cancelled", f"cancelled by an operator; {workflow.cancel_outcome(job)}"
    finish_job(rt, job_id, state, error=error, job=job)
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


def bench_lock_of(rt: Runtime, job: Job) -> str:
    """The lock of bench-wide steps of ``job``'s bench: one per bench of a declared fleet (so a
    control-plane process names the same lock as the bench's worker), else the compose project's."""
    fleet = rt.fleet
    if fleet.declared and job.bench in fleet.names:
        return bench_lock_name(f"fleet:{job.bench}")
    return bench_lock_name(rt.settings.compose_project)


def _place(rt: Runtime, job: Job, state: str) -> None:
    """Keep the site-to-bench map true to what a job did: a site it created lives on its bench;
    an offboarded site lives nowhere. The restore of a move (``moving_from``) leaves the map to
    its move, which switches it once the copy is verified and the proxy host points to it."""
    if state != "succeeded" or not job.site or not job.bench or not rt.fleet.declared:
        return
    if job.kind == "provision" or (job.kind == "restore" and job.params.get("create")
                                   and not job.params.get("moving_from")):
        placement.assign(rt.redis, job.site, job.bench)
    elif job.kind == "offboard" and job.params.get("confirm"):
        placement.forget(rt.redis, job.site, job.bench)


def finish_job(rt: Runtime, job_id: str, state: str, *, error: str | None = None, job: Job | None = None) -> None:
    """Give the job its final state, free its site, and tell its parent (a fan-out), if any.
    ``job``: the job as just read (read here when not given)."""
    job = job if job is not None else rt.store.get(job_id)
    rt.store.skip_pending(job_id, reason=f"job ended {state}", job=job)
    rt.store.set_state(job_id, state, error=error)
    job.state, job.ended_at = state, time.time()
    if error is not None:
        job.error = redactor.text(error)
    if job.site is not None:
        rt.sites.release(job.site, job_id)
    log.info("job.end", job_id=job_id, state=state, site=job.site, error=error)
    try:
        _place(rt, job, state)
    except Exception:  # noqa: BLE001 - the next listing of the bench records it
        log.exception("job.placement_failed", job_id=job_id, site=job.site, bench=job.bench)
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
