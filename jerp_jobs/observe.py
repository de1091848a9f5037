"""What runs, what waits and what is due: the read model behind ``jerpctl workers``, the
dashboard's pages and ``/metrics``.

Every function reads; none changes anything. Sources:

- Workers: Celery's remote control (a broadcast on the broker; each alive worker answers
  within ``timeout`` seconds). :func:`workers` asks ``inspect active`` (and, if asked,
  ``active_queues``): a worker that answers is alive, and its answer says which tasks it runs
  (for a step: the job id and step name from the task's keyword arguments). A worker whose
  main process is blocked does not answer and counts as not alive. The Celery app is passed
  in, never imported here at module level: tests give their own.
- Queues: the broker's own lists. Kombu's Redis transport keeps a queue as a list named after
  it (``jerp.site``), plus one list per priority step above 0 (``jerp.site\\x06\\x163``, ...);
  messages are pushed left and taken right, so the right end is the oldest. Every message
  published by this project carries its publish time in the header ``jerp_sent_at``
  (:data:`SENT_AT_HEADER`, stamped by ``jerp_jobs.celery``), which gives the age of the
  oldest waiting message. A message held by a worker (prefetched, running, or waiting for its
  ETA) is no longer in the list and is not counted.
- Beat: RedBeat's schedule in Redis (``jerp:redbeat::schedule``, a sorted set of entry keys
  scored by their next run; each entry a hash with ``definition`` and ``meta`` JSON) and its
  lock (``jerp:redbeat::lock``, held by the one Beat that schedules).
- Sites: the backup indexes (:func:`jerp_jobs.freshness.sites_freshness`, local and
  off-site), the last drills (:func:`jerp_jobs.operations.drill.last_drills`), the attention
  marks (:meth:`jerp_jobs.sitestate.SiteState.attention_marks`).
- Releases: :func:`jerp_jobs.releases.list_releases` and the release slot.
- Jobs: the job index and each record's ``kind`` and ``state`` (one HMGET per job, pipelined).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jerp_jobs import keys
from jerp_jobs.celery import CONTROL_QUEUE, SENT_AT_HEADER, SITE_QUEUE
from jerp_jobs.freshness import sites_freshness
from jerp_jobs.jobs import JOB, JOBS, JobState, as_text
from jerp_jobs.operations.drill import last_drills
from jerp_jobs.releases import active_release, list_releases, waiting_releases

#: the queues of the project, in the order they are shown
QUEUES: tuple[str, ...] = (SITE_QUEUE, CONTROL_QUEUE)
#: kombu's Redis transport: separator between a queue's name and its priority step, and the steps
_PRIORITY_SEP = keys.BROKER_PRIORITY_SEP
_PRIORITY_STEPS = keys.BROKER_PRIORITY_STEPS
#: how long a worker has to answer a broadcast unless the caller says
DEFAULT_TIMEOUT_S = 1.0


# -- workers ---------------------------------------------------------------------------------


@dataclass
class WorkerTask:
    """A task a worker runs now; ``job_id``/``step``/``site`` when it is one of a job's steps."""

    task_id: str
    name: str
    started_at: float | None
    job_id: str | None = None
    step: str | None = None
    site: str | None = None


@dataclass
class Worker:
    name: str
    tasks: list[WorkerTask] = field(default_factory=list)
    #: the queues it consumes (only when asked for: another broadcast)
    queues: list[str] | None = None


def workers(app: Any, *, timeout: float = DEFAULT_TIMEOUT_S, with_queues: bool = False) -> list[Worker]:
    """The workers that answer within ``timeout`` s, by name, each with the tasks it runs.

    One broadcast (``inspect active``), two with ``with_queues``; the call takes ``timeout``
    seconds (Celery waits that long for answers, not knowing how many workers there are)."""
    inspect = app.control.inspect(timeout=timeout)
    active = inspect.active() or {}
    consumed = (inspect.active_queues() or {}) if with_queues else {}
    found = []
    for name in sorted(set(active) | set(consumed)):
        tasks = [_task(entry) for entry in active.get(name) or []]
        queues = sorted(q.get("name", "?") for q in consumed.get(name) or []) if with_queues else None
        found.append(Worker(name=name, tasks=sorted(tasks, key=lambda t: t.started_at or 0.0), queues=queues))
    return found


def any_worker_alive(app: Any, *, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether at least one worker answers a ping within ``timeout`` s (returns at the first)."""
    return bool(app.control.ping(timeout=timeout, limit=1))


def _task(entry: dict[str, Any]) -> WorkerTask:
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        kwargs = {}
    started = entry.get("time_start")
    return WorkerTask(
        task_id=str(entry.get("id") or ""),
        name=str(entry.get("name") or entry.get("type") or "?"),
        started_at=float(started) if isinstance(started, (int, float)) else None,
        job_id=kwargs.get("job_id") or kwargs.get("parent_id"),
        step=kwargs.get("step"),
        site=kwargs.get("site"),
    )


# -- queues ----------------------------------------------------------------------------------


@dataclass
class QueueState:
    name: str
    #: messages waiting in the broker for a worker to take them
    depth: int
    #: publish time of the oldest waiting message that carries one (see SENT_AT_HEADER)
    oldest_sent_at: float | None = None
    oldest_age_s: float | None = None


def queue_names(rt: Any) -> list[str]:
    """The queues to watch: a single host's two, or in a declared fleet the control queue and
    each bench's queue (a bench whose worker is down shows as its queue's depth and age)."""
    from jerp_jobs.fleet import load_fleet

    fleet = load_fleet(rt.settings)
    if not fleet.declared:
        return list(QUEUES)
    return [CONTROL_QUEUE, *(bench.queue for bench in fleet)]


def queue_keys(queue: str) -> list[str]:
    """The broker lists of ``queue`` (kombu's Redis transport: one per priority step)."""
    return keys.broker_queue_keys(queue)


def queues(client: Any, names: Sequence[str] = QUEUES, *, now: float | None = None) -> list[QueueState]:
    """Depth of each queue and the age of its oldest waiting message, in one pipeline."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for name in names:
        for key in queue_keys(name):
            pipe.llen(key)
            pipe.lindex(key, -1)
    replies = pipe.execute()
    found = []
    per_queue = 2 * len(_PRIORITY_STEPS)
    for i, name in enumerate(names):
        chunk = replies[i * per_queue:(i + 1) * per_queue]
        depth = sum(int(n or 0) for n in chunk[0::2])
        sent = [t for t in (_sent_at(raw) for raw in chunk[1::2]) if t is not None]
        oldest = min(sent) if sent else None
        found.append(QueueState(name=name, depth=depth, oldest_sent_at=oldest,
                                oldest_age_s=round(max(0.0, now - oldest), 3) if oldest is not None else None))
    return found


def _sent_at(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(SENT_AT_HEADER)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


# -- Beat ------------------------------------------------------------------------------------


@dataclass
class BeatEntry:
    name: str
    task: str | None
    #: when RedBeat will send it next (None: never again)
    next_run_at: float | None
    last_run_at: float | None
    total_run_count: int | None


@dataclass
class BeatState:
    entries: list[BeatEntry]
    #: whether a Beat holds the scheduling lock (it expires unless the Beat keeps extending it)
    lock_held: bool
    lock_ttl_s: float | None


def beat(client: Any) -> BeatState:
    """Beat's schedule as RedBeat keeps it in Redis, next run first, and its lock."""
    from redbeat.decoder import RedBeatJSONDecoder

    scheduled = client.zrange(keys.REDBEAT_SCHEDULE, 0, -1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for key, _ in scheduled:
        pipe.hget(key, "definition")
        pipe.hget(key, "meta")
    pipe.pttl(keys.REDBEAT_LOCK)
    replies = pipe.execute()
    ttl_ms = replies[-1]
    entries = []
    for i, (key, score) in enumerate(scheduled):
        definition, meta = replies[2 * i], replies[2 * i + 1]
        name = as_text(key)[len(keys.REDBEAT):]
        task = None
        if definition:
            try:
                task = json.loads(definition).get("task")
            except ValueError:
                pass
            name = _json_field(definition, "name") or name
        last, count = None, None
        if meta:
            try:
                decoded = json.loads(meta, cls=RedBeatJSONDecoder)
            except (ValueError, TypeError, KeyError):
                decoded = {}
            at = decoded.get("last_run_at")
            last = at.timestamp() if hasattr(at, "timestamp") else None
            count = decoded.get("total_run_count")
        entries.append(BeatEntry(name=name, task=task, next_run_at=float(score) if score >= 0 else None,
                                 last_run_at=last, total_run_count=count))
    entries.sort(key=lambda e: (e.next_run_at is None, e.next_run_at or 0.0, e.name))
    held = ttl_ms is not None and int(ttl_ms) != -2
    return BeatState(entries=entries, lock_held=held,
                     lock_ttl_s=int(ttl_ms) / 1000 if held and int(ttl_ms) >= 0 else None)


def _json_field(raw: Any, name: str) -> Any:
    try:
        return json.loads(raw).get(name)
    except (ValueError, AttributeError):
        return None


# -- sites -----------------------------------------------------------------------------------


@dataclass
class SiteView:
    site: str
    #: newest local backup and newest verified off-site copy (epoch seconds)
    local_at: float | None = None
    offsite_at: float | None = None
    #: the age that counts against the RPO (JERP_BACKUP_MAX_AGE_HOURS): the off-site copy's,
    #: or the local backup's in local-only mode (no JERP_S3_BUCKET), as ``jerpctl backups`` measures;
    #: None when there is none (``stale`` then says whether the site has backups of the other kind)
    age_hours: float | None = None
    stale: bool = False
    drill_at: float | None = None
    drill_passed: bool | None = None
    drill_job: str | None = None
    drill_problems: list[str] = field(default_factory=list)
    attention: dict[str, Any] | None = None


def sites(rt: Any, *, now: float | None = None) -> list[SiteView]:
    """Every site with a backup record, a drill or an attention mark, by name.

    A site of the bench that has none of these (never backed up) is not known here: the
    bench's sites folder is read by ``jerpctl sites``, not by this read model."""
    now = time.time() if now is None else now
    max_age = rt.settings.backup_max_age_hours
    offsite_mode = bool(rt.settings.s3_bucket)
    local = {r["site"]: r for r in sites_freshness(rt.redis, max_age_hours=max_age, now=now, offsite=False)}
    offsite = {r["site"]: r for r in sites_freshness(rt.redis, max_age_hours=max_age, now=now, offsite=True)}
    drills = last_drills(rt.redis)
    marks = rt.sites.attention_marks()
    views = []
    for name in sorted(set(local) | set(offsite) | set(drills) | set(marks)):
        counted = (offsite if offsite_mode else local).get(name)
        drill = drills.get(name) or {}
        views.append(SiteView(
            site=name,
            local_at=(local.get(name) or {}).get("last_at"),
            offsite_at=(offsite.get(name) or {}).get("last_at"),
            age_hours=counted["age_hours"] if counted else None,
            stale=bool(counted and counted["stale"]),
            drill_at=drill.get("at"),
            drill_passed=drill.get("passed") if drill else None,
            drill_job=drill.get("job_id"),
            drill_problems=list(drill.get("problems") or []),
            attention=marks.get(name),
        ))
    return views


# -- releases --------------------------------------------------------------------------------


@dataclass
class ReleaseView:
    #: the release holding the slot (running), and those waiting for it
    active_job: str | None
    waiting_jobs: list[str]
    #: the newest release: job id, tag, previous tag, state, created/ended, why it rolled back
    latest: dict[str, Any] | None


def release(rt: Any) -> ReleaseView:
    newest = list_releases(rt, limit=1)
    fleet = getattr(rt, "fleet", None)
    active = active_release(rt.redis, fleet.names if fleet is not None and fleet.declared else ())
    latest = None
    if newest:
        job = newest[0]
        latest = {
            "job_id": job.id,
            "tag": job.result.get("tag") or job.params.get("tag"),
            "previous_tag": job.result.get("previous_tag"),
            "state": job.state,
            "rollback": bool(job.params.get("rollback")),
            "created_at": job.created_at,
            "ended_at": job.ended_at if job.finished else None,
            "detail": job.error or job.result.get("rollback_reason"),
        }
    return ReleaseView(active_job=active, waiting_jobs=waiting_releases(rt.redis),
                       latest=latest)


# -- jobs ------------------------------------------------------------------------------------


def job_counts(client: Any, *, batch: int = 2000) -> Counter[tuple[str, str]]:
    """How many job records there are, by (kind, state): every record still kept
    (``JERP_JOB_TTL_DAYS``). One HMGET per job, pipelined ``batch`` at a time; index entries of
    expired records are skipped (the listings drop them)."""
    counts: Counter[tuple[str, str]] = Counter()
    ids = client.zrange(JOBS, 0, -1)
    for start in range(0, len(ids), batch):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[start:start + batch]:
            pipe.hmget(JOB + as_text(job_id), ("kind", "state"))
        for kind, state in pipe.execute():
            if kind is not None and state is not None:
                counts[(as_text(kind), as_text(state))] += 1
    return counts


def active_jobs(rt: Any, *, limit: int = 1000) -> list[Any]:
    """Jobs queued or running (their whole records: steps included), newest first."""
    found = rt.store.list(state=JobState.RUNNING, limit=limit)
    return found + rt.store.list(state=JobState.QUEUED, limit=max(1, limit - len(found)))


# -- everything at once ----------------------------------------------------------------------


@dataclass
class Overview:
    at: float
    workers: list[Worker] | None
    queues: list[QueueState]
    beat: BeatState

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overview(rt: Any, app: Any | None, *, timeout: float = DEFAULT_TIMEOUT_S, with_queues: bool = True,
             names: Iterable[str] | None = None) -> Overview:
    """Workers (None when no app is given), queues (default :func:`queue_names`) and Beat, as
    ``jerpctl workers`` shows them."""
    now = time.time()
    found = workers(app, timeout=timeout, with_queues=with_queues) if app is not None else None
    listed = queue_names(rt) if names is None else list(names)
    return Overview(at=now, workers=found, queues=queues(rt.redis, listed, now=now), beat=beat(rt.redis))
