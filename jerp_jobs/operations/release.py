"""Releases: a new image tag deployed, every site migrated and smoke-tested, or rolled back.

A release is a job of kind ``release`` (``params.tag``; a manual rollback has
``params.rollback`` and finds its tag when it starts). Its steps:

    record -> deploy -> rollout -> migrate -> smoke -> finish
              (on failure) rollback-deploy -> rollback-rollout -> rollback-migrate
                           -> rollback-smoke -> rollback-finish

- ``record`` notes the tag the backend runs now and the tag to go back to: that one when it
  is immutable, else the newest known-good immutable tag (``mutable_tags`` such as ``15-prod``
  move, so they are no rollback target).
- ``deploy`` asks Portainer (or the Docker API) for the tag; ``rollout`` then waits, with
  ``JERP_ROLLOUT_TIMEOUT``, until the backend's containers run it — read from the containers,
  never from the deploy's answer — and a site answers ``ping``.
- ``migrate`` is a child ``migrate-all`` job (canary first, failure budget); ``smoke`` runs
  the smoke checks on every site it migrated.
- Any failure after ``record`` sends the job down the rollback path, which deploys the
  previous tag, migrates and smoke-tests again; the release then ends ``rolled-back`` with the
  reason. If the rollback fails too, the release ends ``failed`` and says so loudly.

One release at a time: a release holds the release slot (``jerp:release:active``) from its
first step to its end; others wait, queued. A newer request supersedes the releases still
waiting that were requested before it (they end ``superseded``, naming the newer one).

Requests (:func:`request_release`) carry the time they were made (``params.requested_at``:
the hook's own time when it says, else the arrival time; an operator's request is made now).
A hook starts a tag once, ever: ``jerp:release:requested`` remembers every tag requested, by a
hook or an operator, without expiry, so a redelivery, a second event for the tag or a replayed
announcement answers with the existing job, or starts nothing once that job has expired,
was superseded or deleted. A hook's request must also be newer than the newest request so far
(``jerp:release:latest``): an announcement made before it, arriving late, would undo it. Only
an operator (``jerpctl enqueue release TAG``) starts a tag again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jerp_jobs import keys
from jerp_jobs.enqueue import create_job, publish, start_job
from jerp_jobs.errors import (
    DeployBusy,
    DeployError,
    InvalidInput,
    JerpError,
    JobNotFound,
    LockBusy,
    SmokeFailed,
)
from jerp_jobs.hooks import format_time, validate_tag
from jerp_jobs.jobs import Job, as_text
from jerp_jobs.log import get_logger
from jerp_jobs.operations.common import discover_sites
from jerp_jobs.platform import Platform
from jerp_jobs.runner import complete_waiting_step, finish_job
from jerp_jobs.workflow import (
    WAITING,
    StepContext,
    StepSpec,
    Workflow,
    table_resolver,
)

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

log = get_logger(__name__)

KIND = "release"
ACTIVE = keys.RELEASE_ACTIVE  # the job id of the release that holds the slot
WAITING_SET = keys.RELEASE_WAITING  # releases requested and not yet holding the slot
INDEX = keys.RELEASES  # every release, scored by creation time
GOOD = keys.RELEASE_GOOD  # tags that passed a release, newest first
BAD = keys.RELEASE_BAD  # tags rolled back from, or whose release failed: never a rollback target
REQUESTED = keys.RELEASE_REQUESTED  # tag -> its last request (JSON); never expires
LATEST = keys.RELEASE_LATEST  # the newest request: requested_at, job, tag; never expires
BY_DELIVERY = keys.RELEASE_BY_DELIVERY
ADMISSION = "release-admission"
GOOD_KEPT = 50
#: how long "this delivery was ignored" is remembered: a redelivery after a fixed setting counts
IGNORED_TTL_S = 3600
#: compare-and-delete of the release slot
_FREE_SLOT = keys.COMPARE_AND_DELETE



def _platform(rt: Runtime) -> Platform:
    return rt.platform


# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requested:
    job: Job
    created: bool  # False: the answer is an existing job (a redelivery, or the same tag again)


@dataclass(frozen=True)
class Declined:
    """A hook's request that starts nothing; ``reason`` says why."""

    tag: str
    reason: str


def request_release(
    rt: Runtime,
    tag: str | None,
    *,
    source: str,
    image: str | None = None,
    sha: str | None = None,
    digest: str | None = None,
    delivery: str | None = None,
    dedupe: bool = True,
    rollback: bool = False,
    requested_at: float | None = None,
    actor: str | None = None,
) -> Requested | Declined:
    """Create (or find) the release of ``tag`` and publish its first step.

    ``dedupe`` (a hook's request) makes the request idempotent and replay-proof: a delivery
    answered before, or a tag ever requested before, answers with that job (``created``
    False) while its record lasts and with :class:`Declined` after; a request made
    (``requested_at``, default now) no later than the newest request so far is declined. An
    operator's request (``dedupe=False``) is made now and always starts a release. A new
    release supersedes the releases still waiting that were requested before it.
    """
    if not rollback:
        tag = validate_tag(tag)
        if tag in rt.settings.mutable_tags:
            raise InvalidInput(f"{tag} is a moving tag (JERP_MUTABLE_TAGS): release an immutable tag, such as "
                               "the commit's short sha, so that the release can be confirmed and rolled back")
    now = time.time()
    at = now if requested_at is None or not dedupe else float(requested_at)
    with rt.locks.hold(ADMISSION, wait=5, poll=0.01, step="request"):
        if dedupe and tag is not None:
            answer = _answer_for_hook(rt, tag=tag, delivery=delivery, at=at, source=source, now=now)
            if answer is not None:
                return answer
        params: dict[str, Any] = {"source": source, "requested_at": at}
        params.update({k: v for k, v in {"tag": tag, "image": image, "sha": sha, "digest": digest,
                                          "delivery": delivery}.items() if v})
        if rollback:
            params["rollback"] = True
        hook = f"webhook {source}" + (f" delivery {delivery}" if delivery else "")
        job = create_job(rt, KIND, params=params, actor=actor or hook)
        for waiting in _waiting(rt):
            _supersede(rt, waiting, by=job, newer_than=at if dedupe else None)
        undo = _record_request(rt, job, tag=tag, at=at, source=source, now=now)
        pipe = rt.redis.pipeline()
        pipe.sadd(WAITING_SET, job.id)
        pipe.zadd(INDEX, {job.id: job.created_at})
        if delivery:
            pipe.set(BY_DELIVERY + delivery, job.id, ex=rt.store.ttl)
        pipe.execute()

    def take_back() -> None:
        with rt.locks.hold(ADMISSION, wait=5, poll=0.01, step="request-undo"):
            undo()
            if delivery:
                rt.redis.delete(BY_DELIVERY + delivery)

    publish(rt, job, undo=take_back)
    log.info("release.requested", job_id=job.id, tag=tag, source=source, rollback=rollback, requested_at=at)
    return Requested(rt.store.get(job.id), created=True)


def _answer_for_hook(
    rt: Runtime, *, tag: str, delivery: str | None, at: float, source: str, now: float
) -> Requested | Declined | None:
    """What a hook's request is answered without a new release, or None: start one (call under
    the admission lock)."""
    if delivery:
        job = _job(rt, rt.redis.get(BY_DELIVERY + delivery))
        if job is not None:
            return Requested(job, created=False)
    first = _requested(rt, tag)
    if first is not None:
        job = _job(rt, first.get("job"))
        if job is not None:
            return Requested(job, created=False)
        return Declined(tag, f"tag {tag} was requested before ({first.get('source')}, "
                             f"{_what_became(first)}): a hook starts a tag once only; an operator can start it "
                             f"again with jerpctl enqueue release {tag}")
    latest = _latest(rt)
    if latest is not None and at <= float(latest["requested_at"]):
        rt.redis.hset(REQUESTED, tag, json.dumps({"job": None, "source": source, "requested_at": at, "at": now,
                                                  "declined": "older"}))
        newest = f"tag {latest['tag']}" if latest.get("tag") else "a rollback"
        return Declined(tag, f"the request of tag {tag} was made at {format_time(at)}, before the newest release "
                             f"request ({newest}, job {latest.get('job') or '?'}, made at "
                             f"{format_time(float(latest['requested_at']))}): starting it would undo that one; "
                             f"an operator can start it with jerpctl enqueue release {tag}")
    return None


def _what_became(first: Mapping[str, Any]) -> str:
    if first.get("declined") == "older":
        return f"made at {format_time(float(first['requested_at']))} and declined as older than a newer request"
    return f"job {first.get('job')}, whose record is gone"


def _record_request(rt: Runtime, job: Job, *, tag: str | None, at: float, source: str, now: float) -> Any:
    """Remember ``job`` as the request of ``tag`` and, when newer, as the newest request;
    returns the undo (put the previous records back) for a request that could not be published."""
    previous_tag = rt.redis.hget(REQUESTED, tag) if tag else None
    previous_latest = rt.redis.hgetall(LATEST)
    if tag:
        rt.redis.hset(REQUESTED, tag, json.dumps({"job": job.id, "source": source, "requested_at": at, "at": now}))
    latest = _latest(rt)
    if latest is None or at > float(latest["requested_at"]):
        pipe = rt.redis.pipeline()
        pipe.delete(LATEST)
        pipe.hset(LATEST, mapping={"requested_at": repr(at), "job": job.id, "tag": tag or ""})
        pipe.execute()

    def undo() -> None:
        if tag and _loads(rt.redis.hget(REQUESTED, tag)).get("job") == job.id:
            if previous_tag is None:
                rt.redis.hdel(REQUESTED, tag)
            else:
                rt.redis.hset(REQUESTED, tag, previous_tag)
        if as_text(rt.redis.hget(LATEST, "job") or b"") == job.id:
            pipe = rt.redis.pipeline()
            pipe.delete(LATEST)
            if previous_latest:
                pipe.hset(LATEST, mapping=previous_latest)
            pipe.execute()

    return undo


def _requested(rt: Runtime, tag: str) -> dict[str, Any] | None:
    raw = rt.redis.hget(REQUESTED, tag)
    return _loads(raw) if raw is not None else None


def _loads(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(as_text(raw)) if raw is not None else {}
    except ValueError:
        return {"job": None, "source": "?", "requested_at": 0.0}
    return value if isinstance(value, dict) else {}


def _latest(rt: Runtime) -> dict[str, Any] | None:
    """The newest request so far; without a record (a store from before request times were
    kept), the newest release in the index stands for it."""
    latest = {as_text(k): as_text(v) for k, v in rt.redis.hgetall(LATEST).items()}
    if latest.get("requested_at"):
        return latest
    newest = rt.redis.zrevrange(INDEX, 0, 0, withscores=True)
    if not newest:
        return None
    job_id, score = newest[0]
    return {"requested_at": repr(float(score)), "job": as_text(job_id), "tag": ""}


def _job(rt: Runtime, job_id: Any) -> Job | None:
    if not job_id or as_text(job_id) == "ignored":
        return None
    try:
        return rt.store.get(as_text(job_id))
    except JobNotFound:
        return None


def requested_at(job: Job) -> float:
    """When ``job``'s request was made (its creation for releases from before request times)."""
    value = job.params.get("requested_at")
    return float(value) if isinstance(value, (int, float)) else float(job.created_at)


def remember_delivery(rt: Runtime, delivery: str, answer: str) -> str:
    """Record what a delivery was answered (a job id or "ignored"); returns the first answer."""
    key = BY_DELIVERY + delivery
    ttl = IGNORED_TTL_S if answer == "ignored" else rt.store.ttl
    if rt.redis.set(key, answer, nx=True, ex=ttl):
        return answer
    return as_text(rt.redis.get(key) or answer)


def delivery_answer(rt: Runtime, delivery: str) -> str | None:
    value = rt.redis.get(BY_DELIVERY + delivery)
    return as_text(value) if value is not None else None


def _waiting(rt: Runtime) -> list[str]:
    return sorted(as_text(m) for m in rt.redis.smembers(WAITING_SET))


def _supersede(rt: Runtime, job_id: str, *, by: Job, newer_than: float | None) -> None:
    """End a release that is still waiting for the slot (call under the admission lock) when it
    was requested before ``newer_than`` (None: an operator's request supersedes every one)."""
    if _active(rt) == job_id:
        return  # it started: it runs to its end
    try:
        job = rt.store.get(job_id)
    except JobNotFound:
        rt.redis.srem(WAITING_SET, job_id)
        return
    if job.finished:
        rt.redis.srem(WAITING_SET, job_id)
        return
    if newer_than is not None and requested_at(job) >= newer_than:
        return  # requested after the new one: it stays
    what = f"release {by.id}" + (f" of tag {by.params['tag']}" if by.params.get("tag") else " (rollback)")
    rt.store.set_result(job_id, superseded_by=by.id)
    finish_job(rt, job_id, "superseded", error=f"superseded by {what} before it started")
    log.info("release.superseded", job_id=job_id, by=by.id)


def _active(rt: Runtime) -> str | None:
    value = rt.redis.get(ACTIVE)
    return as_text(value) if value is not None else None


def admit(rt: Runtime, job: Job) -> None:
    """Take the release slot before any step of ``job`` runs; LockBusy keeps it waiting."""
    active = _active(rt)
    if active == job.id:
        return
    with rt.locks.hold(ADMISSION, wait=5, poll=0.01, job_id=job.id, step="admit"):
        active = _active(rt)
        if active is not None and active != job.id:
            try:
                holder_done = rt.store.get(active).finished
            except JobNotFound:
                holder_done = True
            if not holder_done:
                raise LockBusy("the release slot", {"job_id": active})
        rt.redis.set(ACTIVE, job.id)
        rt.redis.srem(WAITING_SET, job.id)


def on_end(rt: Runtime, job: Job) -> None:
    """Free the slot and tell people how the release ended."""
    rt.redis.srem(WAITING_SET, job.id)
    rt.redis.eval(_FREE_SLOT, 1, ACTIVE, job.id)  # only if this job holds it: never a successor's
    _stop_children(rt, job)
    tag = job.params.get("tag") or job.result.get("tag") or "?"
    if job.state in ("rolled-back", "failed") and job.result.get("deployed_at") and tag != "?":
        _remember_bad(rt, tag)
    title = {
        "succeeded": f"Release {tag} is live",
        "rolled-back": f"Release {tag} rolled back to {job.result.get('rollback_to')}",
        "failed": f"Release {tag} FAILED" + (" and its rollback failed" if _rollback_started(job) else ""),
        "cancelled": f"Release {tag} cancelled",
    }.get(job.state)
    if title is None:
        return  # superseded: nothing ran
    event = {"succeeded": "release.done", "rolled-back": "release.rolled-back"}.get(job.state, "release.failed")
    body = f"job {job.id}: {job.error or 'every site migrated and passed its smoke checks'}"
    rt.notify(event, title, body)


def _stop_children(rt: Runtime, job: Job) -> None:
    """A release that ended (reaped, failed) while its migrate-all still runs: start no more sites."""
    for field_name in ("migrate_job", "rollback_migrate_job"):
        child = _child(rt, job.result.get(field_name))
        if child is not None and not child.finished and not child.cancel_requested:
            rt.store.request_cancel(child.id)
            log.warning("release.child_cancelled", job_id=job.id, child=child.id)


def _rollback_started(job: Job) -> bool:
    return any(s.name.startswith("rollback-") and s.state in ("success", "failed") for s in job.steps)


# -- steps ------------------------------------------------------------------------------------


def record(ctx: StepContext) -> None:
    rt, job = ctx.runtime, ctx.job
    running = _platform(rt).running_tag()
    mutable = set(rt.settings.mutable_tags)
    bad = _bad_tags(rt)
    good = [t for t in _good_tags(rt) if t not in mutable and t not in bad]
    if job.params.get("rollback"):
        target = next((t for t in good if t != running), None)
        if target is None:
            raise InvalidInput(f"no previous immutable tag to roll back to (running: {running or 'unknown'}; "
                               f"known good: {', '.join(good) or 'none'})")
        ctx.record(tag=target, previous_tag=running, rollback_to=None)
        if running and running not in mutable:
            _remember_bad(rt, running)  # an operator rolled away from it
        ctx.output.append(f"rolling back from {running or 'an unknown tag'} to {target}")
        rt.notify("release.started", f"Rollback to {target} started", f"job {job.id}: {running} -> {target}")
        return
    tag = job.params["tag"]
    if running is not None and running not in mutable and running not in bad:
        rollback_to: str | None = running
    else:
        rollback_to = next((t for t in good if t != tag), None)
    if rollback_to == tag:
        rollback_to = next((t for t in good if t != tag), None)
    ctx.record(tag=tag, previous_tag=running, rollback_to=rollback_to)
    ctx.output.append(f"running {running or 'an unknown tag'}; releasing {tag}; "
                      f"rollback target {rollback_to or 'none known'}")
    rt.notify("release.started", f"Release {tag} started",
              f"job {job.id}: {running or '?'} -> {tag}; rollback target {rollback_to or 'none'}")


def _target(ctx: StepContext, *, rollback: bool) -> str:
    if not rollback:
        return str(ctx.job.result.get("tag") or ctx.job.params["tag"])
    target = ctx.job.result.get("rollback_to")
    if not target:
        raise DeployError("no previous immutable tag is known: nothing to roll back to; the platform runs "
                          f"{ctx.job.result.get('tag')} and needs an operator")
    return str(target)


def _deploy(ctx: StepContext, *, rollback: bool) -> None:
    tag = _target(ctx, rollback=rollback)
    if rollback:
        ctx.record(rollback_reason=_failure_reason(ctx.job))
    field_name = "rollback_deployed_at" if rollback else "deployed_at"
    earlier = ctx.job.result.get(field_name)
    since = time.time()
    ctx.record(**{field_name: earlier or since})
    try:
        detail = _platform(ctx.runtime).deploy(tag)
    except DeployBusy:
        if not earlier:
            raise
        # our own earlier call may be the deployment in progress: the rollout check decides
        detail = f"a deployment is in progress (possibly the one asked for {time.time() - earlier:.0f} s ago); " \
                 "the rollout check decides"
    ctx.output.append(detail)


def _rollout(ctx: StepContext, *, rollback: bool) -> None:
    rt = ctx.runtime
    tag = _target(ctx, rollback=rollback)
    since = float(ctx.job.result.get("rollback_deployed_at" if rollback else "deployed_at") or time.time())
    started = time.monotonic()
    deadline = float(rt.settings.rollout_timeout)
    ctx.output.append(_platform(rt).wait_rollout(tag, since=since, deadline_s=deadline))
    sites = [site for site in _sites(ctx) if not rt.sites.attention(site)]
    if not sites:
        ctx.output.append("no site to ping")
        return
    last: dict[str, str] = {}
    while True:
        for site in sites:
            try:
                _platform(rt).ping(site)
                ctx.output.append(f"{site} answers ping")
                return
            except JerpError as exc:
                last[site] = str(exc)
        if time.monotonic() - started > deadline:
            raise DeployError(f"{tag} runs but no site answers ping after {deadline:.0f} s: "
                              + "; ".join(last.values()))
        time.sleep(2.0)


def _sites(ctx: StepContext) -> list[str]:
    return discover_sites(ctx)


def _migrate(ctx: StepContext, *, rollback: bool) -> str | None:
    rt = ctx.runtime
    field = "rollback_migrate_job" if rollback else "migrate_job"
    if rollback and not ctx.job.result.get("migrate_job"):
        ctx.output.append("the release never migrated a site: nothing to migrate back")
        return "skipped"
    with rt.locks.hold(f"release-children:{ctx.job.id}", wait=60, poll=0.01, job_id=ctx.job.id, step=ctx.step):
        child_id = rt.store.get(ctx.job.id).result.get(field)
        child = _child(rt, child_id)
        if child is None:
            child = start_job(rt, "migrate-all", params={}, parent=ctx.job.id,
                              before_publish=lambda job: ctx.record(**{field: job.id}))
            log.info("release.migrate_started", job_id=ctx.job.id, child=child.id)
            return WAITING
    if child.state == "queued" and all(s.attempts == 0 for s in child.steps):
        publish(rt, child)  # its first message may never have gone out
    if not child.finished:
        return WAITING
    return _child_outcome(child)


def _child(rt: Runtime, child_id: str | None) -> Job | None:
    if not child_id:
        return None
    try:
        return rt.store.get(child_id)
    except JobNotFound:
        return None


def _child_outcome(child: Job) -> None:
    if child.state != "succeeded":
        raise JerpError(f"migrate-all {child.id} {child.state}: {child.error or 'see the job'}")


def _smoke(ctx: StepContext, *, rollback: bool) -> str | None:
    rt = ctx.runtime
    child = _child(rt, ctx.job.result.get("rollback_migrate_job" if rollback else "migrate_job"))
    if child is not None:
        entries: Mapping[str, Mapping[str, Any]] = child.result.get("sites") or {}
        sites = [site for site, entry in entries.items() if entry.get("state") == "succeeded"]
    else:  # nothing was migrated (a rollback before any migration): every site that is not marked
        sites = [site for site in _sites(ctx) if not rt.sites.attention(site)]
    if not sites:
        ctx.output.append("no migrated site to smoke-test")
        return "skipped"
    reports = {}
    failed = []
    for site in sites:
        report = _platform(rt).smoke(site)
        reports[site] = report.as_dict()
        ctx.output.append(report.summary())
        if not report.ok:
            failed.append(report.summary())
    ctx.record(**{("rollback_smoke" if rollback else "smoke"): reports})
    if failed:
        raise SmokeFailed(f"{len(failed)} of {len(sites)} sites failed their smoke checks: " + "; ".join(failed))
    return None


def finish(ctx: StepContext) -> None:
    rt = ctx.runtime
    tag = _target(ctx, rollback=False)
    _remember_good(rt, tag)
    ctx.output.append(f"{tag} is live")


def rollback_finish(ctx: StepContext) -> None:
    tag = _target(ctx, rollback=True)
    _remember_good(ctx.runtime, tag)
    ctx.output.append(f"{tag} runs again")


def _remember_good(rt: Runtime, tag: str) -> None:
    if tag in rt.settings.mutable_tags:
        return
    pipe = rt.redis.pipeline()
    pipe.srem(BAD, tag)
    pipe.lrem(GOOD, 0, tag)
    pipe.lpush(GOOD, tag)
    pipe.ltrim(GOOD, 0, GOOD_KEPT - 1)
    pipe.execute()


def _remember_bad(rt: Runtime, tag: str) -> None:
    pipe = rt.redis.pipeline()
    pipe.sadd(BAD, tag)
    pipe.lrem(GOOD, 0, tag)
    pipe.execute()


def _bad_tags(rt: Runtime) -> set[str]:
    return {as_text(t) for t in rt.redis.smembers(BAD)}


def _good_tags(rt: Runtime) -> list[str]:
    return [as_text(t) for t in rt.redis.lrange(GOOD, 0, -1)]


def _failure_reason(job: Job) -> str:
    failed = [s for s in job.steps if s.state == "failed" and not s.name.startswith("rollback-")]
    if not failed:
        return "cancelled by an operator" if job.cancel_requested else "unknown"
    return f"{failed[0].name} failed: {failed[0].error or 'see the step'}"


def on_child_done(rt: Runtime, parent_id: str, child_id: str) -> Any:
    """The release's migrate-all ended: end the waiting ``migrate`` (or rollback) step."""
    with rt.locks.hold(f"release-children:{parent_id}", wait=60, poll=0.01, job_id=parent_id, step="child-done"):
        parent = rt.store.get(parent_id)
        if parent.finished:
            return None
        for step, field in (("migrate", "migrate_job"), ("rollback-migrate", "rollback_migrate_job")):
            if parent.result.get(field) != child_id:
                continue
            record = parent.step(step)
            child = rt.store.get(child_id)
            if record.state != "running" or not child.finished:
                return None
            if child.state == "succeeded":
                return complete_waiting_step(rt, parent_id, step, "success")
            return complete_waiting_step(rt, parent_id, step, "failed",
                                         error=f"migrate-all {child.id} {child.state}: {child.error or 'see the job'}")
    return None


def reconcile(rt: Runtime, parent_id: str) -> None:
    """Deliver the end of a migrate-all child whose notification was lost."""
    parent = rt.store.get(parent_id)
    for field in ("migrate_job", "rollback_migrate_job"):
        child = _child(rt, parent.result.get(field))
        if child is not None and child.finished:
            on_child_done(rt, parent_id, child.id)


# -- the workflow -------------------------------------------------------------------------------

NORMAL = ("deploy", "rollout", "migrate", "smoke", "finish")


def _on_failure(job: Job, step: str) -> str | None:
    if step in NORMAL and not job.params.get("rollback"):
        return "rollback-deploy"
    return None


def _on_cancel(job: Job, step: str | None) -> str | None:
    """Cancelled once the new tag may have been asked for: go back to the previous one."""
    deploy = job.step("deploy")
    if not job.params.get("rollback") and (deploy.attempts > 0 or deploy.state != "pending"):
        return "rollback-deploy"
    return None


def _final_state(job: Job) -> str:
    if job.step("rollback-finish").state == "success":
        return "rolled-back"
    return "failed" if any(s.state == "failed" for s in job.steps) else "succeeded"


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    if params.get("rollback"):
        if params.get("tag"):
            raise InvalidInput("a rollback finds its tag itself; it takes none")
        return params
    validate_tag(params.get("tag"))
    return params


def _bind(fn: Any, *, rollback: bool) -> Any:
    def step(ctx: StepContext) -> Any:
        return fn(ctx, rollback=rollback)

    step.__name__ = f"{'rollback_' if rollback else ''}{fn.__name__.lstrip('_')}"
    return step


STEPS: dict[str, StepSpec] = {
    "record": StepSpec(record, scope="bench"),
    "deploy": StepSpec(_bind(_deploy, rollback=False), scope="bench", retries=5),
    "rollout": StepSpec(_bind(_rollout, rollback=False), scope="bench"),
    "migrate": StepSpec(_bind(_migrate, rollback=False), scope="bench"),
    "smoke": StepSpec(_bind(_smoke, rollback=False), scope="bench"),
    "finish": StepSpec(finish, scope="bench", last=True),
    "rollback-deploy": StepSpec(_bind(_deploy, rollback=True), scope="bench", recovery=True, retries=5),
    "rollback-rollout": StepSpec(_bind(_rollout, rollback=True), scope="bench", recovery=True),
    "rollback-migrate": StepSpec(_bind(_migrate, rollback=True), scope="bench", recovery=True),
    "rollback-smoke": StepSpec(_bind(_smoke, rollback=True), scope="bench", recovery=True),
    "rollback-finish": StepSpec(rollback_finish, scope="bench", recovery=True, last=True),
}

RELEASE = Workflow(
    kind=KIND,
    needs_site=False,
    plan=lambda params: list(STEPS),
    resolve=table_resolver(KIND, STEPS),
    on_failure=_on_failure,
    on_cancel=_on_cancel,
    final_state=_final_state,
    admit=admit,
    on_end=on_end,
    on_child_done=on_child_done,
    reconcile=reconcile,
    validate=_validate,
)


def list_releases(rt: Runtime, *, limit: int = 20) -> list[Job]:
    jobs = []
    for job_id in rt.redis.zrevrange(INDEX, 0, limit * 2):
        try:
            jobs.append(rt.store.get(as_text(job_id)))
        except JobNotFound:
            rt.redis.zrem(INDEX, job_id)
        if len(jobs) >= limit:
            break
    return jobs
