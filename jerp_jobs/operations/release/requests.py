"""Release requests: a hook's (idempotent and replay-proof) or an operator's.

Requests (:func:`request_release`) carry the time they were made (``params.requested_at``:
the hook's own time when it says, else the arrival time; an operator's request is made now).
A hook starts a tag once, ever: ``jerp:release:requested`` remembers every tag requested, by a
hook or an operator, without expiry, so a redelivery, a second event for the tag or a replayed
announcement answers with the existing job, or starts nothing once that job has expired,
was superseded or deleted. A hook's request must also be newer than the newest request so far
(``jerp:release:latest``): an announcement made before it, arriving late, would undo it. Only
an operator (``jerpctl enqueue release TAG``) starts a tag again. What each delivery was
answered is kept under ``jerp:release:delivery:<id>``.

In a fleet with a staging bench every request — a hook's, ``jerpctl enqueue release TAG``, a
rollback — starts the release on the staging bench (``params.stage`` ``staging``); production
moves only by :func:`promote` (``JERP_PROMOTE=auto`` when the staging release succeeds, or
``jerpctl promote TAG``): one release per production bench (``params.stage`` ``production``),
each with its bench's slot. Without a staging bench a request is today's release.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jerp_jobs import keys
from jerp_jobs.enqueue import create_job, publish
from jerp_jobs.errors import BrokerUnavailable, InvalidInput, JobNotFound
from jerp_jobs.hooks import format_time, validate_tag
from jerp_jobs.jobs import Job, as_text
from jerp_jobs.log import get_logger
from jerp_jobs.operations.release.admission import ADMISSION, supersede, waiting
from jerp_jobs.operations.release.tags import bad_tags, note_promoted, staged
from jerp_jobs.releases import INDEX, KIND, WAITING_SET

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

log = get_logger(__name__)

REQUESTED = keys.RELEASE_REQUESTED  # tag -> its last request (JSON); never expires
LATEST = keys.RELEASE_LATEST  # the newest request: requested_at, job, tag; never expires
BY_DELIVERY = keys.RELEASE_BY_DELIVERY
#: how long "this delivery was ignored" is remembered: a redelivery after a fixed setting counts
IGNORED_TTL_S = 3600


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
        staging = rt.fleet.staging
        if staging is not None:  # staging first: production moves once it passed there (promote)
            params.update(stage="staging", bench=staging.name)
        hook = f"webhook {source}" + (f" delivery {delivery}" if delivery else "")
        job = create_job(rt, KIND, params=params, actor=actor or hook)
        for waiting_id in waiting(rt, job.bench):
            supersede(rt, waiting_id, by=job, newer_than=at if dedupe else None)
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


@dataclass(frozen=True)
class Promoted:
    jobs: list[Job]
    created: bool  # False: the answer is the production releases already promoting the tag


def promote(rt: Runtime, tag: str | None, *, source: str, actor: str | None = None) -> Promoted:
    """Start the production releases of ``tag``, which passed staging: one per production bench
    of the fleet, each waiting for its bench's release slot, each superseding its bench's
    releases still waiting. InvalidInput when the fleet has no staging bench, or ``tag`` is bad
    or never passed staging. While the releases of an earlier promotion of ``tag`` have not
    ended, the answer is those (``created`` False)."""
    tag = validate_tag(tag)
    fleet = rt.fleet
    staging = fleet.staging
    if staging is None:
        raise InvalidInput("promote takes a tag that passed the staging bench to production, and this fleet has no "
                           f"staging bench: a release goes straight to production (jerpctl enqueue release {tag})")
    if tag in rt.settings.mutable_tags:
        raise InvalidInput(f"{tag} is a moving tag (JERP_MUTABLE_TAGS): promote the immutable tag that passed staging")
    now = time.time()
    created: list[Job] = []
    with rt.locks.hold(ADMISSION, wait=5, poll=0.01, step="promote"):
        if tag in bad_tags(rt):
            raise InvalidInput(f"tag {tag} is bad (a release of it failed or was rolled back from): it is never "
                               "promoted; release a fixed tag")
        record = staged(rt, tag)
        if record is None:
            raise InvalidInput(f"tag {tag} has not passed staging: `jerpctl enqueue release {tag}` releases it on "
                               f"the staging bench {staging.name} first, and it is promoted once it passed there")
        live = [job for job in (_job(rt, job_id) for job_id in record.get("promoted") or [])
                if job is not None and not job.finished]
        if live:
            return Promoted(live, created=False)
        for bench in fleet.with_role("production"):
            params: dict[str, Any] = {"source": source, "requested_at": now, "tag": tag, "stage": "production",
                                      "promoted_from": record.get("job"), "bench": bench.name}
            job = create_job(rt, KIND, params=params, actor=actor or f"promote {source}")
            for waiting_id in waiting(rt, bench.name):
                supersede(rt, waiting_id, by=job, newer_than=now)
            pipe = rt.redis.pipeline()
            pipe.sadd(WAITING_SET, job.id)
            pipe.zadd(INDEX, {job.id: job.created_at})
            pipe.execute()
            created.append(job)
        note_promoted(rt, tag, [job.id for job in created])
    unsent: list[BrokerUnavailable] = []
    for job in created:  # each bench's release on its own: one that cannot be sent fails alone
        try:
            publish(rt, job)
        except BrokerUnavailable as exc:
            unsent.append(exc)
            continue
        log.info("release.promoted", job_id=job.id, tag=tag, bench=job.bench, source=source,
                 staged_by=record.get("job"))
    if unsent:
        raise unsent[0]
    return Promoted([rt.store.get(job.id) for job in created], created=True)


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


def _record_request(
    rt: Runtime, job: Job, *, tag: str | None, at: float, source: str, now: float
) -> Callable[[], None]:
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
