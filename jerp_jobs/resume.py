"""Resuming work whose worker died.

A step is *running* in its record only while a worker holds its execution lock: the runner
takes the lock before it marks the step running and records the outcome before it lets go.
So a running step whose lock is not held by its own job lost its worker (SIGKILL, OOM, a lost
machine). :func:`resume_stalled` publishes such steps again; the new attempt takes the lock,
waits at the fence until any bench process the dead worker left behind has ended, and runs
the step again (steps are written to be safe to repeat). Fan-outs waiting for children are
reconciled with their children's records, in case a notification was lost.

A step whose message still waits in its queue is not published again: nothing was lost, no
worker has taken it yet — in a fleet, the bench's worker is down or busy while the control
plane's Beat goes on, and a message per pass would pile up in that bench's queue.

Beat runs it every ``JERP_RESUME_INTERVAL`` seconds; Redis redelivery after the visibility
timeout remains the slower backstop.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from jerp_jobs import keys
from jerp_jobs.errors import InvalidInput
from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.locks import site_lock_name
from jerp_jobs.log import get_logger
from jerp_jobs.runner import bench_lock_of, fail_lost_step, finish_job, first_step, readvance, reconcile_children
from jerp_jobs.runtime import Runtime

log = get_logger(__name__)


#: a step whose worker was lost this many times is recorded as failed (it may be what kills it)
MAX_LOST_ATTEMPTS = 3

#: a running job with no step running and no update for this long is published again
STRANDED_AFTER_S = 300.0

#: a queued job with no update for this long lost its message (one waiting behind busy workers
#: is only published twice, which its step's lock and record make harmless)
QUEUED_STRANDED_AFTER_S = 900.0


def resume_stalled(rt: Runtime, *, now: float | None = None) -> list[tuple[str, str]]:
    """Publish again every running step that lost its worker; returns (job id, step) pairs.

    Also moves on jobs that no step moves (the next step was never published) and reconciles
    fan-outs. One bad record never stops the pass: it is logged and the next job is looked at.
    """
    now = time.time() if now is None else now
    resumed: list[tuple[str, str]] = []
    waiting = WaitingSteps(rt)
    for job in rt.store.list(state=JobState.RUNNING, limit=100_000):
        try:
            resumed.extend(_resume_job(rt, job, now, waiting))
        except Exception:  # noqa: BLE001 - a broken record must not stop the others
            log.exception("resume.job_failed", job_id=job.id)
    for job in rt.store.list(state=JobState.QUEUED, limit=100_000):
        try:
            resumed.extend(_resume_queued(rt, job, now, waiting))
        except Exception:  # noqa: BLE001
            log.exception("resume.job_failed", job_id=job.id)
    return resumed


#: at most this many messages of one broker list are read to find the steps waiting there
WAITING_SCAN_LIMIT = 10_000


class WaitingSteps:
    """The (job id, step) of the step messages waiting in a job's queue (its bench's), each
    queue read once per pass; a message that is not a step's, or not readable, is skipped."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._read: dict[str, set[tuple[str, str]]] = {}

    def queue_of(self, job: Job) -> str | None:
        try:
            return self._rt.fleet.queue_of(job.bench)
        except InvalidInput:  # a bench the fleet file no longer declares: the step task says so
            return None

    def has(self, job: Job, step: str | None = None) -> bool:
        """Whether a message of ``job``'s ``step`` (any of its steps: None) waits in its queue."""
        queue = self.queue_of(job)
        if queue is None:
            return False
        if queue not in self._read:
            self._read[queue] = waiting_steps(self._rt.redis, queue)
        return any(found == job.id and (step is None or name == step) for found, name in self._read[queue])


def waiting_steps(client: Any, queue: str) -> set[tuple[str, str]]:
    """(job id, step) of every step message waiting in ``queue`` (the broker's lists)."""
    pipe = client.pipeline(transaction=False)
    for key in keys.broker_queue_keys(queue):
        pipe.lrange(key, 0, WAITING_SCAN_LIMIT - 1)
    found: set[tuple[str, str]] = set()
    for raw in (m for messages in pipe.execute() for m in messages):
        step = _step_of(raw)
        if step is not None:
            found.add(step)
    return found


def _step_of(raw: Any) -> tuple[str, str] | None:
    """The job id and step of a step message (Celery's protocol 2 as kombu's Redis transport
    keeps it: a JSON envelope, the body base64 JSON [args, kwargs, embed]); None otherwise."""
    try:
        envelope = json.loads(raw)
        if envelope.get("headers", {}).get("task") != "jerp.step":
            return None
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        kwargs = json.loads(body)[1]
        job_id, step = kwargs["job_id"], kwargs["step"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return (job_id, step) if isinstance(job_id, str) and isinstance(step, str) else None


def _resume_queued(rt: Runtime, job: Job, now: float, waiting: WaitingSteps) -> list[tuple[str, str]]:
    """A queued job that nothing touched for a while lost its message (a job waiting for its
    site or the release slot notes it every few seconds): publish its first step again —
    unless its message still waits in its queue."""

    if now - job.updated_at <= QUEUED_STRANDED_AFTER_S or any(s.attempts for s in job.steps):
        return []
    if waiting.has(job):
        return []
    step = first_step(rt, job.id)
    rt.store.note(job.id, resumed=f"step {step} published again: the job sat queued with no message")
    rt.dispatch(job.id, step)
    log.warning("job.republished", job_id=job.id, step=step)
    return [(job.id, step)]


def _resume_job(rt: Runtime, job: Job, now: float, waiting: WaitingSteps) -> list[tuple[str, str]]:

    workflow = rt.workflow(job.kind)
    running = [s for s in job.steps if s.state == StepState.RUNNING]
    if not running:
        if now - job.updated_at > STRANDED_AFTER_S:
            moved = readvance(rt, job.id)
            if moved is not None and moved.next_step:
                log.warning("job.readvanced", job_id=job.id, next_step=moved.next_step)
                return [(job.id, moved.next_step)]
        return []
    step = running[0]
    if step.waiting:
        _reconcile_fanout(rt, job.id)
        return []
    scope = workflow.resolve(step.name).scope
    lock = site_lock_name(job.site) if scope == "site" and job.site else bench_lock_of(rt, job)
    holder = rt.locks.holder(lock) or {}
    if holder.get("job_id") == job.id and holder.get("step") == step.name:
        return []  # a live worker runs it
    if step.started_at is not None and now - step.started_at < rt.locks.ttl:
        return []  # too young to judge
    if step.attempts >= MAX_LOST_ATTEMPTS:
        reason = f"its worker was lost {step.attempts} times; not trying again"
        fail_lost_step(rt, job.id, step.name, reason=reason)
        log.error("step.given_up", job_id=job.id, step=step.name, attempts=step.attempts)
        return []
    if waiting.has(job, step.name):
        return []  # published again already; no worker of its queue has taken it yet
    when = time.strftime("%H:%M:%SZ", time.gmtime(now))
    rt.store.note(job.id, resumed=f"step {step.name} published again at {when}: its worker was lost")
    rt.dispatch(job.id, step.name)
    log.warning("step.resumed", job_id=job.id, step=step.name, site=job.site, attempts=step.attempts)
    return [(job.id, step.name)]


def _reconcile_fanout(rt: Runtime, parent_id: str) -> None:
    reconcile_children(rt, parent_id)


def reap_stuck(rt: Runtime, *, now: float | None = None) -> list[str]:
    """Deal with jobs still queued or running past their deadline; returns their ids.

    The deadline counts from the job's creation: ``JERP_JOB_DEADLINE_HOURS`` for one site's
    job, ``JERP_FANOUT_DEADLINE_HOURS`` for migrate-all and backup-all. A job past it is
    cancelled — so it takes its safe path (back online, restore, drop a half-made site) — and a
    step it runs whose worker is gone is failed, which starts the failure path. A job still not
    ended at twice its deadline is failed outright, and its site marked as needing attention:
    nobody knows what state it is in.
    """
    now = time.time() if now is None else now
    reaped = []
    for state in (JobState.RUNNING, JobState.QUEUED):
        for job in rt.store.list(state=state, limit=100_000):
            try:
                if _reap(rt, job, now, fail_lost_step, finish_job):
                    reaped.append(job.id)
            except Exception:  # noqa: BLE001 - a broken record must not stop the others
                log.exception("reap.job_failed", job_id=job.id)
    return reaped


def _reap(rt: Runtime, job: Job, now: float, fail_lost_step: Any, finish_job: Any) -> bool:
    long_running = job.kind.endswith("-all") or job.kind == "release"  # these wait for a migrate-all
    hours = rt.settings.fanout_deadline_hours if long_running else rt.settings.job_deadline_hours
    age = now - job.created_at
    if age <= hours * 3600:
        return False
    if age > 2 * hours * 3600 or job.state == JobState.QUEUED:
        reason = f"reaped: still {job.state} {age / 3600:.1f} h after it was requested"
        finish_job(rt, job.id, JobState.FAILED, error=reason)
        if job.site is not None and job.state == JobState.RUNNING:
            rt.mark_attention(job.site, job_id=job.id, reason=reason)
        log.error("job.reaped", job_id=job.id, kind=job.kind, site=job.site)
        return True
    if not job.cancel_requested:
        rt.store.request_cancel(job.id)
        rt.store.note(job.id, deadline=f"past its {hours:g} h deadline: cancelled, taking its safe path")
    workflow = rt.workflow(job.kind)
    for step in job.steps:
        if step.state == StepState.RUNNING and not step.waiting:
            scope = workflow.resolve(step.name).scope
            lock = site_lock_name(job.site) if scope == "site" and job.site else bench_lock_of(rt, job)
            if (rt.locks.holder(lock) or {}).get("job_id") != job.id:
                fail_lost_step(rt, job.id, step.name, reason="its worker was lost and the job passed its deadline")
    log.error("job.past_deadline", job_id=job.id, kind=job.kind, site=job.site)
    return True
