"""Job records: what an operator reads, and the source of truth of what is done.

A job is created with its steps planned up front, all ``pending``. Each step then goes
``pending -> running -> success | failed | skipped`` and records its start, end, duration,
exit code and output tail (redacted before it is stored). The job's own state follows:
``queued -> running -> succeeded | failed | recovered | cancelled``; a release can also end
``rolled-back`` (it failed and the previous tag runs again) or ``superseded`` (a newer release
replaced it before it started).

Storage (Redis, every key under ``jerp:``):

- ``jerp:job:<id>`` — a hash: the job's fields, and one field ``step:<name>`` per step holding
  that step's JSON. Writing a step touches one field, so steps never overwrite each other.
  The hash expires ``JERP_JOB_TTL_DAYS`` after its last update.
- ``jerp:jobs`` / ``jerp:jobs:site:<site>`` / ``jerp:jobs:state:<state>`` — sorted sets of job
  ids scored by creation time, for listing newest first. Entries of expired jobs are dropped
  as they are met.

Job records carry no secret: parameters are checked for secret-looking keys on creation, and
output passes through the log redactor.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import redis

from jerp_jobs.errors import InvalidInput, JobNotFound, PartialRecord, StoreError
from jerp_jobs.keys import JOB, JOBS, JOBS_BY_SITE, JOBS_BY_STATE
from jerp_jobs.keys import PREFIX as KEY_PREFIX
from jerp_jobs.log import get_logger, redactor

log = get_logger(__name__)

PREFIX = KEY_PREFIX



class JobState(StrEnum):
    """A job's state; stored as its value (readable in Redis and in ``--json``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RECOVERED = "recovered"  # a step failed and the recovery path brought the site back as it was
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled-back"  # a release that failed; the previous tag runs again
    SUPERSEDED = "superseded"  # a release replaced by a newer one before it started


class StepState(StrEnum):
    """A step's state; stored as its value."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


JOB_STATES = tuple(JobState)
FINAL_JOB_STATES = frozenset(JobState) - {JobState.QUEUED, JobState.RUNNING}
STEP_STATES = tuple(StepState)
FINAL_STEP_STATES = frozenset({StepState.SUCCESS, StepState.FAILED, StepState.SKIPPED})

#: fields every job record has from its creation on; a hash without one is not a job record
REQUIRED_FIELDS = ("id", "kind", "state", "created_at")

_SECRET_WORDS = ("password", "secret", "token", "passwd", "key")

# Moves a job between state indexes atomically. KEYS: job hash, all-index prefix.
_SET_STATE = """
local old = redis.call('hget', KEYS[1], 'state')
if not old then return nil end
local created = redis.call('hget', KEYS[1], 'created_at')
redis.call('zrem', ARGV[4] .. old, ARGV[1])
redis.call('zadd', ARGV[4] .. ARGV[2], created, ARGV[1])
redis.call('hset', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3])
redis.call('expire', KEYS[1], ARGV[5])
return old
"""


# Writes one step of an existing job. KEYS: job hash. ARGV: field, JSON, now, ttl.
# Returns 0 when the job is gone, -1 when it has no such step, 1 when written.
_UPDATE_STEP = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2], 'updated_at', ARGV[3])
redis.call('expire', KEYS[1], ARGV[4])
return 1
"""


# Starts a step, atomically: the attention check, the site's claim, the execution lock, and the
# step's record (running, attempt counted) with the job's own state (queued -> running).
# A refusal takes nothing, but for the site's claim when only the lock was busy (a claim is the
# job's until its end: it is not given back between steps).
# KEYS: job hash, attention mark, site owner, lock (for a job without a site, the two site keys
#       are unused). ARGV: 1 job id, 2 step field, 3 the step's JSON as read, 4 the started
#       step's JSON ("" when the step already ended: only the claim and the lock are checked),
#       5 job state as read, 6 cancel flag as read, 7 now, 8 job TTL, 9 state index prefix,
#       10 lock value, 11 lock TTL ms, 12 site owner TTL s ("0": no site), 13 an attention mark
#       the caller accepts (its own), 14 job key prefix, 15 final job states, space-separated.
# Returns {outcome, detail}: gone | finished STATE | changed (the record moved since it was
# read: read again) | attention MARK | site-busy OWNER | lock-busy HOLDER | ended | started.
# A site owned by a job that ended or expired is taken over.
_BEGIN_STEP = """
local finals = ' ' .. ARGV[15] .. ' '
local f = redis.call('hmget', KEYS[1], 'state', ARGV[2], 'cancel_requested', 'note:waiting_for', 'note:waiting_since')
local state = f[1]
if not state then return {'gone', ''} end
if string.find(finals, ' ' .. state .. ' ', 1, true) then return {'finished', state} end
if state ~= ARGV[5] or f[2] ~= ARGV[3] or (f[3] or '0') ~= ARGV[6] then return {'changed', ''} end
if ARGV[12] ~= '0' then
  local mark = redis.call('get', KEYS[2])
  if mark and mark ~= ARGV[13] then return {'attention', mark} end
  local owner = redis.call('get', KEYS[3])
  if owner and owner ~= ARGV[1] then
    local other = redis.call('hget', ARGV[14] .. owner, 'state')
    if other and not string.find(finals, ' ' .. other .. ' ', 1, true) then return {'site-busy', owner} end
    owner = false
  end
  if not owner then redis.call('set', KEYS[3], ARGV[1], 'EX', ARGV[12]) end
end
if not redis.call('set', KEYS[4], ARGV[10], 'NX', 'PX', ARGV[11]) then
  return {'lock-busy', redis.call('get', KEYS[4]) or ''}
end
if ARGV[4] == '' then
  redis.call('del', KEYS[4])
  return {'ended', ''}
end
if state == 'queued' then
  redis.call('zrem', ARGV[9] .. 'queued', ARGV[1])
  redis.call('zadd', ARGV[9] .. 'running', redis.call('hget', KEYS[1], 'created_at'), ARGV[1])
  redis.call('hsetnx', KEYS[1], 'started_at', ARGV[7])
  redis.call('expire', KEYS[1], ARGV[8])
end
redis.call('hset', KEYS[1], ARGV[2], ARGV[4], 'updated_at', ARGV[7], 'state', 'running')
if f[4] or f[5] then redis.call('hdel', KEYS[1], 'note:waiting_for', 'note:waiting_since') end
return {'started', ''}
"""

# Ends a step, atomically: records it and releases its execution lock, if the lock is still
# this holder's (else nothing is written: the step's other delivery decides), and reads what
# advancing needs. KEYS: job hash, lock. ARGV: step field, step JSON, now, job TTL, lock value,
# advance-guard field. Returns {lost} | {gone} | {ended, state, cancel flag, "1" if advanced}.
_END_STEP = """
if redis.call('get', KEYS[2]) ~= ARGV[5] then return {'lost'} end
redis.call('del', KEYS[2])
local f = redis.call('hmget', KEYS[1], 'state', 'cancel_requested', ARGV[6])
if not f[1] then return {'gone'} end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2], 'updated_at', ARGV[3])
redis.call('expire', KEYS[1], ARGV[4])
return {'ended', f[1], f[2] or '0', f[3] and '1' or '0'}
"""


@dataclass(frozen=True)
class StepKeys:
    """The keys a step's start and end touch besides the job's record."""

    lock: str
    lock_value: str
    lock_ttl_ms: int
    #: the site's attention mark and owner keys, and the owner's TTL; None for a job without a site
    attention: str | None = None
    owner: str | None = None
    owner_ttl_s: int = 0


@dataclass(frozen=True)
class StepEnd:
    """What :meth:`JobStore.end_step` found: the job's state, its cancel flag, the advance guard."""

    state: str
    cancel_requested: bool
    advanced: bool


@dataclass
class Step:
    name: str
    state: str = "pending"
    started_at: float | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    output: str = ""
    error: str | None = None
    attempts: int = 0
    worker: str | None = None
    #: the step goes on outside any worker (a fan-out waiting for its children)
    waiting: bool = False

    @property
    def done(self) -> bool:
        return self.state in FINAL_STEP_STATES


@dataclass
class Job:
    id: str
    kind: str
    site: str | None
    state: str
    created_at: float
    updated_at: float
    params: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    parent: str | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"job {self.id} has no step {name!r}")

    @property
    def finished(self) -> bool:
        return self.state in FINAL_JOB_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_days: int = 30) -> None:
        self._r = client
        self.ttl = ttl_days * 86400
        self._set_state = client.register_script(_SET_STATE)
        self._update_step = client.register_script(_UPDATE_STEP)
        self._begin_step = client.register_script(_BEGIN_STEP)
        self._end_step = client.register_script(_END_STEP)

    # -- creation and reading ----------------------------------------------------------------

    def create(
        self,
        kind: str,
        steps: Sequence[str],
        *,
        site: str | None = None,
        params: Mapping[str, Any] | None = None,
        parent: str | None = None,
    ) -> Job:
        params = dict(params or {})
        _refuse_secrets(params)
        if len(set(steps)) != len(steps):
            raise InvalidInput(f"step names of a {kind} job must be unique: {list(steps)}")
        now = time.time()
        job = Job(
            id=new_job_id(),
            kind=kind,
            site=site,
            state="queued",
            created_at=now,
            updated_at=now,
            params=params,
            steps=[Step(name) for name in steps],
            parent=parent,
        )
        key = self._key(job.id)
        mapping = {
            "id": job.id,
            "kind": kind,
            "site": site or "",
            "state": job.state,
            "created_at": repr(now),
            "updated_at": repr(now),
            "params": json.dumps(params, sort_keys=True),
            "plan": json.dumps(list(steps)),
            "parent": parent or "",
            "cancel_requested": "0",
        }
        mapping.update({f"step:{s.name}": json.dumps(asdict(s)) for s in job.steps})
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl)
        for index in self._indexes(job.site, job.state):
            pipe.zadd(index, {job.id: now})
            pipe.zremrangebyscore(index, "-inf", now - self.ttl)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"could not record the job: {exc}") from exc
        return job

    def get(self, job_id: str) -> Job:
        """The job's record; JobNotFound when there is none, PartialRecord when it lacks a
        required field."""
        return self.read(job_id)[0]

    def read(self, job_id: str) -> tuple[Job, dict[str, str]]:
        """The job, and its record's fields as stored (what :meth:`begin_step` compares)."""
        raw = self._r.hgetall(self._key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        data = {as_text(k): as_text(v) for k, v in raw.items()}
        return _decode_fields(data, job_id), data

    def exists(self, job_id: str) -> bool:
        return bool(self._r.exists(self._key(job_id)))

    def list(self, *, site: str | None = None, state: str | None = None, limit: int = 20) -> list[Job]:
        """Jobs newest first, filtered by site and/or state."""
        if state is not None and state not in JOB_STATES:
            raise InvalidInput(f"unknown job state {state!r}; one of {', '.join(JOB_STATES)}")
        index = self._index_site(site) if site else self._index_state(state) if state else JOBS
        jobs: list[Job] = []
        start = 0
        batch = max(limit * 2, 20)
        while len(jobs) < limit:
            ids = self._r.zrevrange(index, start, start + batch - 1)
            if not ids:
                break
            start += batch
            pipe = self._r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._key(as_text(job_id)))
            for job_id, raw in zip(ids, pipe.execute()):
                if not raw:
                    self._r.zrem(index, job_id)
                    continue
                try:
                    job = _decode_job(raw, as_text(job_id))
                except PartialRecord as exc:
                    log.warning("job.partial_record", job_id=as_text(job_id), detail=str(exc))
                    continue  # listed without it: one broken record never hides the others
                if state is not None and job.state != state:
                    continue
                jobs.append(job)
                if len(jobs) == limit:
                    break
        return jobs

    # -- transitions ---------------------------------------------------------------------------

    def set_state(self, job_id: str, state: str, *, error: str | None = None, **fields: Any) -> str:
        """Move the job to ``state``; returns the previous state."""
        if state not in JOB_STATES:
            raise InvalidInput(f"unknown job state {state!r}")
        now = time.time()
        key = self._key(job_id)
        extra: dict[str, str] = {}
        if error is not None:
            extra["error"] = redactor.text(error)
        if state == JobState.RUNNING and not self._r.hexists(key, "started_at"):
            extra["started_at"] = repr(now)
        if state in FINAL_JOB_STATES:
            extra["ended_at"] = repr(now)
        for name, value in fields.items():
            extra[name] = json.dumps(redactor.value(value), sort_keys=True)
        if extra:
            self._r.hset(key, mapping=extra)
        old = self._set_state(keys=[key], args=[job_id, state, repr(now), JOBS_BY_STATE, self.ttl])
        if old is None:
            raise JobNotFound(job_id)
        return as_text(old)

    def set_result(self, job_id: str, **values: Any) -> None:
        """Merge values into the job's result (e.g. a backup manifest). Redacted on the way in.

        Atomic: the merge is retried when another writer changed the record meanwhile, so
        concurrent writers of different values all land. JobNotFound when the job is gone."""
        key = self._key(job_id)
        values = redactor.value(values)
        while True:
            with self._r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    if not pipe.exists(key):
                        raise JobNotFound(job_id)
                    raw = pipe.hget(key, "result")
                    result = json.loads(raw) if raw else {}
                    result.update(values)
                    pipe.multi()
                    pipe.hset(key, mapping={"result": json.dumps(result, sort_keys=True),
                                            "updated_at": repr(time.time())})
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def update_step(self, job_id: str, step: Step) -> None:
        step.output = redactor.text(step.output)
        if step.error:
            step.error = redactor.text(step.error)
        key = self._key(job_id)
        written = self._update_step(keys=[key], args=[f"step:{step.name}", json.dumps(asdict(step)),
                                                      repr(time.time()), self.ttl])
        if written == 0:
            raise JobNotFound(job_id)
        if written == -1:
            raise StoreError(f"job {job_id} has no planned step {step.name!r}")

    def begin_step(
        self, job: Job, fields: Mapping[str, str], step: Step, *, worker: str, keys: StepKeys,
        accept_attention: str = "",
    ) -> tuple[str, str]:
        """Claim the site, take the lock and start ``step`` in one atomic script (``_BEGIN_STEP``).

        ``job``, ``fields`` and ``step`` are as read by :meth:`read`; a record that changed
        since answers ``changed``. A step already ended is not started again: only the claim
        and the lock are checked (``ended``). On ``started``, ``step`` holds the running record
        and ``job`` the running state. Returns (outcome, detail) as the script documents.
        """
        field_name = f"step:{step.name}"
        now = time.time()
        started = ""
        if not step.done:
            running = Step(**{**asdict(step), "state": "running", "started_at": now, "ended_at": None,
                              "duration_s": None, "exit_code": None, "output": "", "error": None,
                              "attempts": step.attempts + 1, "worker": worker, "waiting": False})
            started = json.dumps(asdict(running))
        job_key = self._key(job.id)
        args = [job.id, field_name, fields.get(field_name, ""), started, job.state,
                "1" if job.cancel_requested else "0", repr(now), self.ttl, JOBS_BY_STATE,
                keys.lock_value, keys.lock_ttl_ms, keys.owner_ttl_s if keys.owner else 0, accept_attention,
                JOB, " ".join(sorted(FINAL_JOB_STATES))]
        try:
            outcome, detail = self._begin_step(
                keys=[job_key, keys.attention or job_key, keys.owner or job_key, keys.lock], args=args)
        except redis.RedisError as exc:
            raise StoreError(f"could not start step {step.name} of job {job.id}: {exc}") from exc
        outcome, detail = as_text(outcome), as_text(detail)
        if outcome == "started":
            for name, value in asdict(running).items():
                setattr(step, name, value)
            if job.state == JobState.QUEUED:
                job.state, job.started_at = "running", job.started_at or now
        return outcome, detail

    def end_step(self, job_id: str, step: Step, *, lock: str, lock_value: str) -> StepEnd | None:
        """Record a step's end and release its lock in one atomic script (``_END_STEP``).

        None when the lock is no longer this holder's (nothing written). Output and error are
        redacted on the way in, as :meth:`update_step` does.
        """
        step.output = redactor.text(step.output)
        if step.error:
            step.error = redactor.text(step.error)
        args = [f"step:{step.name}", json.dumps(asdict(step)), repr(time.time()), self.ttl, lock_value,
                f"advanced:{step.name}"]
        reply = [as_text(v) for v in self._end_step(keys=[self._key(job_id), lock], args=args)]
        if reply[0] == "lost":
            return None
        if reply[0] == "gone":
            raise JobNotFound(job_id)
        return StepEnd(state=reply[1], cancel_requested=reply[2] == "1", advanced=reply[3] == "1")

    @staticmethod
    def ended(step: Step, state: str, *, exit_code: int | None = None, output: str = "",
              error: str | None = None) -> Step:
        """``step`` given its final state and timings, in memory (for :meth:`end_step`)."""
        if state not in FINAL_STEP_STATES:
            raise InvalidInput(f"a step ends success, failed or skipped, not {state!r}")
        step.state = state
        step.ended_at = time.time()
        if step.started_at is not None:
            step.duration_s = round(step.ended_at - step.started_at, 3)
        step.exit_code = exit_code
        step.output = output
        step.error = error
        return step

    def start_step(self, job_id: str, name: str, *, worker: str, current: Step | None = None) -> Step:
        """Mark a step running (``current``: its record, when the caller has just read it)."""
        step = current if current is not None else self.get(job_id).step(name)
        step.state = "running"
        step.started_at = time.time()
        step.ended_at = step.duration_s = step.exit_code = step.error = None
        step.output = ""
        step.attempts += 1
        step.worker = worker
        step.waiting = False
        self.update_step(job_id, step)
        self._r.hdel(self._key(job_id), "note:waiting_for", "note:waiting_since")
        return step

    def finish_step(
        self,
        job_id: str,
        step: Step,
        state: str,
        *,
        exit_code: int | None = None,
        output: str = "",
        error: str | None = None,
    ) -> Step:
        self.ended(step, state, exit_code=exit_code, output=output, error=error)
        self.update_step(job_id, step)
        return step

    def skip_pending(self, job_id: str, *, reason: str) -> list[str]:
        """Mark every step still pending as skipped; returns their names."""
        skipped = []
        for step in self.get(job_id).steps:
            if step.state == StepState.PENDING:
                step.state = "skipped"
                step.error = reason
                self.update_step(job_id, step)
                skipped.append(step.name)
        return skipped

    def note(self, job_id: str, **values: str) -> None:
        """Short operator-facing notes on the job (e.g. what it is waiting for)."""
        key = self._key(job_id)
        if not self._r.exists(key):
            raise JobNotFound(job_id)
        now = repr(time.time())
        if "waiting_for" in values:
            self._r.hsetnx(key, "note:waiting_since", now)
        self._r.hset(key, mapping={f"note:{k}": redactor.text(v) for k, v in values.items()} | {"updated_at": now})

    def claim_advance(self, job_id: str, step: str) -> bool:
        """Mark that the job moved on after ``step`` (the guard against a second delivery of a
        finished step advancing the job twice); False when it was already marked."""
        return bool(self._r.hsetnx(self._key(job_id), f"advanced:{step}", repr(time.time())))

    def advanced(self, job_id: str, step: str) -> bool:
        return bool(self._r.hexists(self._key(job_id), f"advanced:{step}"))

    def request_cancel(self, job_id: str) -> Job:
        if not self.exists(job_id):
            raise JobNotFound(job_id)
        self._r.hset(self._key(job_id), "cancel_requested", "1")
        return self.get(job_id)

    # -- keys ----------------------------------------------------------------------------------

    @staticmethod
    def _key(job_id: str) -> str:
        return JOB + job_id

    @staticmethod
    def _index_site(site: str) -> str:
        return JOBS_BY_SITE + site

    @staticmethod
    def _index_state(state: str) -> str:
        return JOBS_BY_STATE + state

    def _indexes(self, site: str | None, state: str) -> Iterable[str]:
        yield JOBS
        yield self._index_state(state)
        if site:
            yield self._index_site(site)


def new_job_id() -> str:
    return secrets.token_hex(6)


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode their replies)."""
    return value.decode() if isinstance(value, bytes) else value


def _refuse_secrets(params: Mapping[str, Any]) -> None:
    for name in params:
        if any(word in name.lower() for word in _SECRET_WORDS):
            raise InvalidInput(f"job parameter {name!r} looks like a secret; secrets stay in the worker's environment")


def _decode_job(raw: Mapping[bytes | str, bytes | str], job_id: str) -> Job:
    return _decode_fields({as_text(k): as_text(v) for k, v in raw.items()}, job_id)


def _decode_fields(data: Mapping[str, str], job_id: str) -> Job:
    missing = [name for name in REQUIRED_FIELDS if not data.get(name)]
    if missing:
        raise PartialRecord(job_id, missing)
    plan = json.loads(data.get("plan", "[]"))
    steps = [Step(**json.loads(data[f"step:{name}"])) for name in plan if f"step:{name}" in data]
    return Job(
        id=data["id"],
        kind=data.get("kind", ""),
        site=data.get("site") or None,
        state=data.get("state", "queued"),
        created_at=float(data.get("created_at", 0)),
        updated_at=float(data.get("updated_at", 0)),
        params=json.loads(data.get("params", "{}")),
        steps=steps,
        started_at=float(data["started_at"]) if data.get("started_at") else None,
        ended_at=float(data["ended_at"]) if data.get("ended_at") else None,
        parent=data.get("parent") or None,
        error=data.get("error"),
        result=json.loads(data.get("result", "{}")),
        cancel_requested=data.get("cancel_requested") == "1",
        notes={k[5:]: v for k, v in data.items() if k.startswith("note:")},
    )
