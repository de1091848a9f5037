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
  as they are met, and those older than the TTL when a job is created (each index at most once
  a minute per process).
- ``jerp:stats:steps`` / ``jerp:stats:jobs`` — counters for ``/metrics`` (jerp_jobs.metrics),
  kept in the scripts that write a step's or a job's end, so every end counts once whichever
  worker process writes it: per kind, step and final state, the steps ended and a histogram
  of their durations (:data:`STEP_BUCKETS`), one HINCRBY per step end (:func:`step_stats`
  reads them); per kind and final state, the jobs ended. They never expire (counters:
  Prometheus takes their rate).
- ``jerp:output:<id>`` — a stream: the job's commands and their output lines while they run
  (:class:`LiveOutput` writes it in batches, :meth:`JobStore.output_since` reads it), the last
  ``JERP_LIVE_OUTPUT_LINES`` kept, expiring with the record. The step records keep their own tail.

Job records carry no secret: parameters are checked for secret-looking keys on creation, and
output passes through the log redactor.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from jerp_jobs.errors import InvalidInput, JobNotFound, PartialRecord, StoreError
from jerp_jobs.keys import JOB, JOBS, JOBS_BY_SITE, JOBS_BY_STATE, OUTPUT, STATS_JOBS, STATS_STEPS
from jerp_jobs.keys import PREFIX as KEY_PREFIX
from jerp_jobs.log import get_logger, redactor
from jerp_jobs.resp import errors as redis_errors

if TYPE_CHECKING:
    import redis

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

# Moves a job between state indexes atomically, with the fields that go with the move. KEYS: job
# hash, jobs stats hash. ARGV: 1 job id, 2 new state, 3 now, 4 state index prefix, 5 TTL, 6 final
# states, 7... field, value pairs to write with it (a field "started_at" only when it is unset).
_SET_STATE = """
local f = redis.call('hmget', KEYS[1], 'state', 'created_at', 'started_at', 'kind')
local old, created = f[1], f[2]
if not old then return nil end
redis.call('zrem', ARGV[4] .. old, ARGV[1])
redis.call('zadd', ARGV[4] .. ARGV[2], created, ARGV[1])
local writes = {'state', ARGV[2], 'updated_at', ARGV[3]}
for i = 7, #ARGV, 2 do
  if ARGV[i] ~= 'started_at' or not f[3] then
    writes[#writes + 1] = ARGV[i]
    writes[#writes + 1] = ARGV[i + 1]
  end
end
redis.call('hset', KEYS[1], unpack(writes))
redis.call('expire', KEYS[1], ARGV[5])
local finals = ' ' .. ARGV[6] .. ' '
if string.find(finals, ' ' .. ARGV[2] .. ' ', 1, true) and not string.find(finals, ' ' .. old .. ' ', 1, true) then
  redis.call('hincrby', KEYS[2], (f[4] or '?') .. '\t' .. ARGV[2], 1)
end
return old
"""


#: Upper bounds (s) of the step-duration histogram's buckets: a second to eight hours.
STEP_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)

# Counts a step that reaches a final state (success, failed, skipped) from another one, in the
# stats hash (jerp:stats:steps), with one HINCRBY per end. A step that ran (a duration) counts in
# the field "<kind>\t<step>\t<state>\tp:<bucket>", which packs two counters in one integer: the
# steps ended (the low STEP_COUNT_BITS bits) and the sum of their durations in milliseconds (the
# bits above) — see step_stats(). Before either part could outgrow its bits (or the 2^53 a Lua
# number holds exactly), the field is folded into the plain fields "...\tended", "...\tle:<bucket>"
# and "...\tsum" (seconds), as it is for a duration too long to pack; a step that ended without
# running (skipped) counts in "...\tended". Once per step end, whichever worker process writes
# it: the record's previous state is read in the same script.
# Arguments: stats key, the job's key, the step's previous JSON (or false), the new state,
# the duration ("" for none), its bucket label, the step's name, the job's kind ("": read it).
_COUNT_STEP_END = """
local function count_step_end(stats, job, old, state, duration, bucket, step, kind)
  if state ~= 'success' and state ~= 'failed' and state ~= 'skipped' then return end
  if old then
    local ok, was = pcall(cjson.decode, old)
    if ok and type(was) == 'table' and (was.state == 'success' or was.state == 'failed' or was.state == 'skipped') then
      return
    end
  end
  if not kind or kind == '' then kind = redis.call('hget', job, 'kind') or '?' end
  local base = kind .. '\t' .. step .. '\t' .. state .. '\t'
  if duration == '' then
    redis.call('hincrby', stats, base .. 'ended', 1)
    return
  end
  local unit = @UNIT@
  local ms = math.floor(tonumber(duration) * 1000 + 0.5)
  if ms < @MS_LIMIT@ then
    -- integers passed as text ('%.0f': exact below 2^53), never in a number's exponent form
    local packed = redis.call('hincrby', stats, base .. 'p:' .. bucket, string.format('%.0f', ms * unit + 1))
    local count = packed % unit
    if packed < @FOLD_AT@ and count < @COUNT_LIMIT@ then return end
    ms = (packed - count) / unit
    redis.call('hincrby', stats, base .. 'p:' .. bucket, string.format('%.0f', -packed))
    redis.call('hincrby', stats, base .. 'ended', string.format('%.0f', count))
    redis.call('hincrby', stats, base .. 'le:' .. bucket, string.format('%.0f', count))
    redis.call('hincrbyfloat', stats, base .. 'sum', string.format('%.3f', ms / 1000))
    return
  end
  redis.call('hincrby', stats, base .. 'ended', 1)
  redis.call('hincrby', stats, base .. 'le:' .. bucket, 1)
  redis.call('hincrbyfloat', stats, base .. 'sum', duration)
end
"""

#: bits of a packed step counter (jerp:stats:steps, "p:" fields) that count the steps ended;
#: the bits above sum their durations in milliseconds
STEP_COUNT_BITS = 20
#: a packed counter is folded into the plain fields once its count reaches this...
_STEP_COUNT_LIMIT = 2 ** (STEP_COUNT_BITS - 1)
#: ...or its value this (below 2^53: Lua reads it exactly)...
_STEP_FOLD_AT = 2 ** 50
#: ...and a step of this many milliseconds or more (over 3 days) is never packed
_STEP_MS_LIMIT = 2 ** 28
_COUNT_STEP_END = (_COUNT_STEP_END.replace("@UNIT@", str(2 ** STEP_COUNT_BITS))
                   .replace("@MS_LIMIT@", str(_STEP_MS_LIMIT)).replace("@FOLD_AT@", str(_STEP_FOLD_AT))
                   .replace("@COUNT_LIMIT@", str(_STEP_COUNT_LIMIT)))


def step_stats(fields: Mapping[str | bytes, str | bytes]) -> dict[tuple[str, str, str], dict[str, float]]:
    """The step counters of the stats hash (jerp:stats:steps, as HGETALL gives it), per
    (kind, step, state): "ended", "le:<bucket>" (steps per bucket, not cumulative) and "sum"
    (seconds), packed fields unpacked and added to the plain ones."""
    series: dict[tuple[str, str, str], dict[str, float]] = {}
    mask = 2 ** STEP_COUNT_BITS - 1
    for raw, raw_value in fields.items():
        parts = as_text(raw).split("\t")
        if len(parts) != 4:
            continue
        value = as_text(raw_value)
        counters = series.setdefault((parts[0], parts[1], parts[2]), {})
        if parts[3].startswith("p:"):
            packed = int(value)
            count, ms = packed & mask, packed >> STEP_COUNT_BITS
            if not count:
                continue
            for name, add in (("ended", count), ("le:" + parts[3][2:], count), ("sum", ms / 1000)):
                counters[name] = counters.get(name, 0.0) + add
        else:
            counters[parts[3]] = counters.get(parts[3], 0.0) + float(value)
    return {labels: counters for labels, counters in series.items() if counters}


# Writes one step of an existing job. KEYS: job hash, stats hash. ARGV: field, JSON, now, ttl,
# then the step end's state, duration, bucket and name (see _COUNT_STEP_END).
# Returns 0 when the job is gone, -1 when it has no such step, 1 when written.
_UPDATE_STEP = _COUNT_STEP_END + """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local old = redis.call('hget', KEYS[1], ARGV[1])
if not old then return -1 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2], 'updated_at', ARGV[3])
redis.call('expire', KEYS[1], ARGV[4])
count_step_end(KEYS[2], KEYS[1], old, ARGV[5], ARGV[6], ARGV[7], ARGV[8], '')
return 1
"""


# Marks the given steps skipped, those still pending, in one script. KEYS: job hash, stats hash.
# ARGV: 1 now, 2 ttl, 3 the job's kind, then per step: field, its skipped JSON, duration, bucket,
# name (_COUNT_STEP_END). Returns -1 when the job is gone, else the names of the steps written.
_SKIP_PENDING = _COUNT_STEP_END + """
local fields = {'id'}
for i = 4, #ARGV, 5 do fields[#fields + 1] = ARGV[i] end
local old = redis.call('hmget', KEYS[1], unpack(fields))
if not old[1] then return -1 end
local writes, written = {}, {}
for n = 2, #old do
  local ok, was = pcall(cjson.decode, old[n] or '')
  if ok and type(was) == 'table' and was.state == 'pending' then
    local i = 4 + (n - 2) * 5
    writes[#writes + 1] = ARGV[i]
    writes[#writes + 1] = ARGV[i + 1]
    written[#written + 1] = {i, old[n]}
  end
end
if #written == 0 then return {} end
writes[#writes + 1] = 'updated_at'
writes[#writes + 1] = ARGV[1]
redis.call('hset', KEYS[1], unpack(writes))
redis.call('expire', KEYS[1], ARGV[2])
local names = {}
for _, w in ipairs(written) do
  local i = w[1]
  count_step_end(KEYS[2], KEYS[1], w[2], 'skipped', ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[3])
  names[#names + 1] = ARGV[i + 4]
end
return names
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
#       the caller accepts (its own), 14 job key prefix, 15 final job states, space-separated,
#       16 the job's parent ("" for none).
# Returns {outcome, detail}: gone | finished STATE | changed (the record moved since it was
# read: read again) | attention MARK | site-busy OWNER | lock-busy HOLDER | ended | started.
# A site owned by a job that ended or expired is taken over. A child works under its parent's
# claim of the site (a move's restore on the target bench): the claim stays the parent's.
_BEGIN_STEP = """
local finals = ' ' .. ARGV[15] .. ' '
local f = redis.call('hmget', KEYS[1], 'state', ARGV[2], 'cancel_requested', 'note:waiting_for', 'note:waiting_since')
local state = f[1]
if not state then return {'gone', ''} end
if string.find(finals, ' ' .. state .. ' ', 1, true) then return {'finished', state} end
if state ~= ARGV[5] or f[2] ~= ARGV[3] or (f[3] or '0') ~= ARGV[6] then return {'changed', ''} end
if ARGV[12] ~= '0' then
  local site = redis.call('mget', KEYS[2], KEYS[3])
  local mark = site[1]
  if mark and mark ~= ARGV[13] then return {'attention', mark} end
  local owner = site[2]
  if owner and owner ~= ARGV[1] and ARGV[16] ~= '' and owner == ARGV[16] then
    owner = ARGV[16]
  elseif owner and owner ~= ARGV[1] then
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
# advance-guard field ("0" for the TTL: the record's expiry is left as it is), then the step end's state, duration, bucket and name (_COUNT_STEP_END; KEYS[3]:
# the stats hash), 11 the job's kind, 12 "1" to set the advance guard with the record (the caller
# runs the next step itself) when the job is not final, no cancel is requested and the guard is
# unset, 13 final job states, space-separated, 14 the lock's TTL in ms (a lock that turns out to
# be another holder's is put back with it). Returns {lost} | {gone} | {ended, state, cancel flag, "1" if advanced, "1" if the guard
# was set here, the job's result (JSON) when the guard was set here, else ""}.
_END_STEP = _COUNT_STEP_END + """
local holder = redis.call('getdel', KEYS[2])
if holder ~= ARGV[5] then
  if holder then redis.call('set', KEYS[2], holder, 'PX', ARGV[14]) end  -- another holder's: put back
  return {'lost'}
end
local f = redis.call('hmget', KEYS[1], 'state', 'cancel_requested', ARGV[6], ARGV[1], 'result')
if not f[1] then return {'gone'} end
local finals = ' ' .. ARGV[13] .. ' '
local claim = ARGV[12] == '1' and not f[3] and (f[2] or '0') ~= '1'
  and not string.find(finals, ' ' .. f[1] .. ' ', 1, true)
if claim then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2], 'updated_at', ARGV[3], ARGV[6], ARGV[3])
else
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2], 'updated_at', ARGV[3])
end
if ARGV[4] ~= '0' then redis.call('expire', KEYS[1], ARGV[4]) end
count_step_end(KEYS[3], KEYS[1], f[4], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
return {'ended', f[1], f[2] or '0', f[3] and '1' or '0', claim and '1' or '0', claim and f[5] or ''}
"""


# One page of a listing, filtered inside Redis. KEYS: the index (a sorted set of job ids by
# creation time). ARGV: 1 highest score (or "(score", exclusive), 2 lowest, 3 rows wanted, 4 most
# index entries read, 5 entries read at a time, 6 job key prefix, 7 the state a job must be in
# ("" any), 8... the kinds it must be of (none: any). Returns {id, score, id, score, ...} of the
# matching jobs, newest first, and where the next page starts ("" when the index is exhausted).
_PAGE = """
local high, low = ARGV[1], ARGV[2]
local limit, scan_limit, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local kinds, any_kind = {}, #ARGV < 8
for i = 8, #ARGV do kinds[ARGV[i]] = true end
local found, scanned = {}, 0
while scanned < scan_limit do
  local entries = redis.call('zrevrangebyscore', KEYS[1], high, low, 'WITHSCORES', 'LIMIT', 0,
                             math.min(batch, scan_limit - scanned))
  if #entries == 0 then return {found, ''} end
  for i = 1, #entries, 2 do
    local id, score = entries[i], entries[i + 1]
    scanned = scanned + 1
    high = '(' .. score
    local f = redis.call('hmget', ARGV[6] .. id, 'kind', 'state')
    if f[1] and (any_kind or kinds[f[1]]) and (ARGV[7] == '' or f[2] == ARGV[7]) then
      found[#found + 1] = id
      found[#found + 1] = score
      if #found >= 2 * limit then return {found, high} end
    end
  end
end
return {found, high}
"""

# Each site's newest job of a kind. ARGV: 1 site index prefix, 2 job key prefix, 3 kind, 4 how
# many of the site's newest jobs to look at, 5... the sites. Returns one job id per site ("" none).
_LATEST_OF_KIND = """
local out = {}
for i = 5, #ARGV do
  local hit = ''
  for _, id in ipairs(redis.call('zrevrange', ARGV[1] .. ARGV[i], 0, tonumber(ARGV[4]) - 1)) do
    if redis.call('hget', ARGV[2] .. id, 'kind') == ARGV[3] then hit = id break end
  end
  out[#out + 1] = hit
end
return out
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
    #: the advance guard was set by the end itself (``claim_advance`` asked for, and allowed)
    claimed: bool = False
    #: when ``claimed``: the job's result as the end found it (the caller goes on without reading
    #: the record again)
    result: dict[str, Any] | None = None


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
    #: the bench of the fleet the job runs on (its steps go to that bench's queue); None: a
    #: fan-out over several benches, which only starts and follows their own fan-outs
    bench: str | None = None

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


@dataclass(frozen=True)
class OutputLine:
    """One entry of a job's live output: a command started (``kind`` "command", its argv
    redacted) or a line it printed (``kind`` "output"), with the step and the time it was stored."""

    step: str
    text: str
    kind: str
    at: float
    #: the entry's place in the stream: pass the last one read back to read what follows
    cursor: str


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_days: int = 30, output_lines: int = 1000) -> None:
        self._r = client
        self.ttl = ttl_days * 86400
        #: lines of live output kept per job (0: none written)
        self.output_lines = output_lines
        #: chores on keys this process did lately, and when (time.monotonic()): an output
        #: stream's expiry set, an index pruned
        self._chores: dict[tuple[str, str], float] = {}
        self._chores_lock = threading.Lock()
        self._set_state = client.register_script(_SET_STATE)
        self._update_step = client.register_script(_UPDATE_STEP)
        self._begin_step = client.register_script(_BEGIN_STEP)
        self._skip_pending = client.register_script(_SKIP_PENDING)
        self._end_step = client.register_script(_END_STEP)
        self._page = client.register_script(_PAGE)
        self._latest_of_kind = client.register_script(_LATEST_OF_KIND)

    # -- creation and reading ----------------------------------------------------------------

    def create(
        self,
        kind: str,
        steps: Sequence[str],
        *,
        site: str | None = None,
        params: Mapping[str, Any] | None = None,
        parent: str | None = None,
        bench: str | None = None,
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
            bench=bench,
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
            "bench": bench or "",
            "cancel_requested": "0",
        }
        mapping.update({f"step:{s.name}": json.dumps(asdict(s)) for s in job.steps})
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl)
        pruned = []
        for index in self._indexes(job.site, job.state):
            pipe.zadd(index, {job.id: now})
            if self._due(("prune", index), INDEX_PRUNE_S):  # entries older than the TTL: expired jobs
                pipe.zremrangebyscore(index, "-inf", now - self.ttl)
                pruned.append(("prune", index))
        try:
            pipe.execute()
        except redis_errors() as exc:
            raise StoreError(f"could not record the job: {exc}") from exc
        self._done(*pruned)
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

    def kind_and_site(self, job_id: str) -> tuple[str, str | None] | None:
        """The job's kind and site (one HMGET; they never change); None when the job is gone."""
        kind, site = self._r.hmget(self._key(job_id), "kind", "site")
        if not kind:
            return None
        return as_text(kind), (as_text(site) if site else None) or None

    def route(self, job_id: str) -> tuple[str, str | None, str | None] | None:
        """The job's kind, site and bench (one HMGET; they never change); None when it is gone."""
        kind, site, bench = self._r.hmget(self._key(job_id), "kind", "site", "bench")
        if not kind:
            return None
        return as_text(kind), (as_text(site) or None) if site else None, (as_text(bench) or None) if bench else None

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

    #: the fields a listing reads of each job: never its steps, whose output can be long
    SUMMARY_FIELDS = ("id", "kind", "site", "state", "created_at", "updated_at", "started_at", "ended_at",
                      "parent", "error", "cancel_requested")

    def page(self, *, site: str | None = None, state: str | None = None,
             kind: str | Collection[str] | None = None, since: float | None = None, until: float | None = None,
             before: float | None = None, limit: int = 50,
             scan_limit: int = 20_000) -> tuple[list[dict[str, Any]], float | None]:
        """One page of job summaries (:data:`SUMMARY_FIELDS`, times as floats), newest first.

        Reads the narrowest index there is (the site's, else the state's, else every job) by
        creation time, from ``until`` (or ``before``, exclusive: the cursor of the previous page)
        down to ``since``; the other filters (state with a site, kind) are checked inside Redis
        (``_PAGE``: at most ``scan_limit`` index entries per call), then the summaries of the
        matching jobs are read with one HMGET each, pipelined. Returns the rows and the cursor of
        the next page (the creation time to pass as ``before``), None when the index is exhausted.
        """
        if state is not None and state not in JOB_STATES:
            raise InvalidInput(f"unknown job state {state!r}; one of {', '.join(JOB_STATES)}")
        index = self._index_site(site) if site else self._index_state(state) if state else JOBS
        kinds = [kind] if isinstance(kind, str) else sorted(kind) if kind is not None else []
        high = f"({before!r}" if before is not None else repr(until) if until is not None else "+inf"
        low = repr(since) if since is not None else "-inf"
        check_state = state if (site and state) else ""
        found, cursor = self._page(keys=[index], args=[high, low, limit, scan_limit, 500, JOB, check_state, *kinds])
        ids = [as_text(v) for v in found[0::2]]
        pipe = self._r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._key(job_id), self.SUMMARY_FIELDS)
        rows = []
        for values in pipe.execute():
            row = dict(zip(self.SUMMARY_FIELDS, (as_text(v) if v is not None else None for v in values)))
            if not row["id"] or not row["created_at"]:
                continue  # expired or partial since the script read it
            for name in ("created_at", "updated_at", "started_at", "ended_at"):
                row[name] = float(row[name]) if row[name] else None
            row["site"] = row["site"] or None
            row["parent"] = row["parent"] or None
            row["cancel_requested"] = row["cancel_requested"] == "1"
            rows.append(row)
        cursor = as_text(cursor)
        return rows, float(cursor.lstrip("(")) if cursor else None

    def latest_of_kind(self, sites: Sequence[str], kind: str, *, depth: int = 200) -> dict[str, dict[str, Any]]:
        """Each site's newest job of ``kind`` among its ``depth`` newest jobs, as a summary
        (one script, ``_LATEST_OF_KIND``, then one pipeline); sites without one are left out."""
        if not sites:
            return {}
        hits = [as_text(v) for v in self._latest_of_kind(args=[JOBS_BY_SITE, JOB, kind, depth, *sites])]
        found = [(site, job_id) for site, job_id in zip(sites, hits) if job_id]
        pipe = self._r.pipeline(transaction=False)
        for _, job_id in found:
            pipe.hmget(self._key(job_id), self.SUMMARY_FIELDS)
        latest: dict[str, dict[str, Any]] = {}
        for (site, _), values in zip(found, pipe.execute()):
            row = dict(zip(self.SUMMARY_FIELDS, (as_text(v) if v is not None else None for v in values)))
            if row["id"]:
                for name in ("created_at", "updated_at", "started_at", "ended_at"):
                    row[name] = float(row[name]) if row[name] else None
                latest[site] = row
        return latest

    def count(self, *, state: str | None = None) -> int:
        """How many jobs the index holds (of one state if given); expired ones not yet dropped count."""
        return int(self._r.zcard(self._index_state(state) if state else JOBS))

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
        if state == JobState.RUNNING:
            extra["started_at"] = repr(now)  # only when unset (the script checks)
        if state in FINAL_JOB_STATES:
            extra["ended_at"] = repr(now)
        for name, value in fields.items():
            extra[name] = json.dumps(redactor.value(value), sort_keys=True)
        pairs = [item for name, value in extra.items() for item in (name, value)]
        old = self._set_state(keys=[key, STATS_JOBS], args=[job_id, state, repr(now), JOBS_BY_STATE, self.ttl,
                                                           " ".join(sorted(FINAL_JOB_STATES)), *pairs])
        if old is None:
            raise JobNotFound(job_id)
        return as_text(old)

    def set_result(self, job_id: str, **values: Any) -> None:
        """Merge values into the job's result (e.g. a backup manifest). Redacted on the way in.

        Atomic: the merge is retried when another writer changed the record meanwhile, so
        concurrent writers of different values all land. JobNotFound when the job is gone."""
        import redis

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
        written = self._update_step(keys=[key, STATS_STEPS], args=[f"step:{step.name}", json.dumps(asdict(step)),
                                                                   repr(time.time()), self.ttl, *_end_args(step)])
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
                JOB, " ".join(sorted(FINAL_JOB_STATES)), job.parent or ""]
        try:
            outcome, detail = self._begin_step(
                keys=[job_key, keys.attention or job_key, keys.owner or job_key, keys.lock], args=args)
        except redis_errors() as exc:
            raise StoreError(f"could not start step {step.name} of job {job.id}: {exc}") from exc
        outcome, detail = as_text(outcome), as_text(detail)
        if outcome == "started":
            for name, value in asdict(running).items():
                setattr(step, name, value)
            if job.state == JobState.QUEUED:
                job.state, job.started_at = "running", job.started_at or now
        return outcome, detail

    def end_step(self, job_id: str, step: Step, *, lock: str, lock_value: str, kind: str = "",
                 claim_advance: bool = False, lock_ttl_ms: int = 60_000) -> StepEnd | None:
        """Record a step's end and release its lock in one atomic script (``_END_STEP``).

        None when the lock is no longer this holder's (nothing written). Output and error are
        redacted on the way in, as :meth:`update_step` does. ``kind``: the job's (read from the
        record when not given). ``claim_advance``: the caller runs the job's next step itself, so
        the advance guard is set with the record when the job is neither final nor cancelled and
        the guard was unset (:attr:`StepEnd.claimed`, with the job's result). The record's expiry is set again when this
        process last set it more than :data:`RECORD_EXPIRY_REFRESH_S` ago (a job's final state
        always sets it).
        """
        step.output = redactor.text(step.output)
        if step.error:
            step.error = redactor.text(step.error)
        key = self._key(job_id)
        refresh = self._due(("expire", key), RECORD_EXPIRY_REFRESH_S)
        args = [f"step:{step.name}", json.dumps(asdict(step)), repr(time.time()), self.ttl if refresh else 0, lock_value,
                f"advanced:{step.name}", *_end_args(step), kind, "1" if claim_advance else "0",
                " ".join(sorted(FINAL_JOB_STATES)), lock_ttl_ms]
        reply = [as_text(v) for v in self._end_step(keys=[key, lock, STATS_STEPS], args=args)]
        if reply[0] == "lost":
            return None
        if reply[0] == "gone":
            raise JobNotFound(job_id)
        if refresh:
            self._done(("expire", key))
        claimed = reply[4] == "1"
        return StepEnd(state=reply[1], cancel_requested=reply[2] == "1", advanced=reply[3] == "1",
                       claimed=claimed, result=json.loads(reply[5] or "{}") if claimed else None)

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

    def skip_pending(self, job_id: str, *, reason: str, job: Job | None = None) -> list[str]:
        """Mark every step still pending as skipped, in one script (``_SKIP_PENDING``: a step
        that is no longer pending in the record is left as it is); returns their names.
        ``job``: the job as just read (read here when not given); its skipped steps are updated."""
        job = job if job is not None else self.get(job_id)
        pending = [step for step in job.steps if step.state == StepState.PENDING]
        if not pending:
            return []
        args: list[Any] = [repr(time.time()), self.ttl, job.kind]
        after: dict[str, Step] = {}
        for step in pending:
            skipped = Step(**{**asdict(step), "state": "skipped", "error": redactor.text(reason),
                              "output": redactor.text(step.output)})
            after[step.name] = skipped
            state, duration, bucket, name = _end_args(skipped)
            args += [f"step:{name}", json.dumps(asdict(skipped)), duration, bucket, name]
        written = self._skip_pending(keys=[self._key(job_id), STATS_STEPS], args=args)
        if written == -1:
            raise JobNotFound(job_id)
        names = [as_text(name) for name in written]
        for step in pending:
            if step.name in names:
                step.state, step.error, step.output = "skipped", after[step.name].error, after[step.name].output
        return names

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

    # -- live output -----------------------------------------------------------------------------

    def live_output(self, job_id: str, step: str) -> LiveOutput:
        """A writer of ``step``'s output to the job's stream while its command runs; close it when
        the command ends."""
        return LiveOutput(self, job_id, step)

    def append_output(self, job_id: str, step: str, entries: Sequence[tuple[str, str]]) -> None:
        """Append ``(kind, text)`` entries of ``step`` to the job's output stream, redacted, as one
        stream entry (one ``XADD``; :meth:`output_since` gives its lines back one by one). The
        stream keeps about the last ``output_lines`` lines and expires with the record: its expiry
        (the record's TTL) is set by this process's first write to it, and again by a write more
        than :data:`OUTPUT_EXPIRY_REFRESH_S` after the last one set (an ``XADD`` keeps a key's TTL)."""
        if not entries or self.output_lines <= 0:
            return
        entries = list(entries)[-self.output_lines:]  # older lines would be trimmed at once
        key = OUTPUT + job_id
        if len(entries) == 1:
            fields = {"step": step, "kind": entries[0][0], "text": redactor.text(entries[0][1])}
        else:
            fields = {"step": step, "lines": json.dumps([[kind, redactor.text(text)] for kind, text in entries])}
        # trimmed exactly to the entries that hold about output_lines lines of this entry's size
        keep = -(-self.output_lines // len(entries))
        if not self._due(("expire", key), OUTPUT_EXPIRY_REFRESH_S):
            self._r.xadd(key, fields, maxlen=keep, approximate=False)
            return
        pipe = self._r.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=keep, approximate=False)
        pipe.expire(key, self.ttl)
        pipe.execute()
        self._done(("expire", key))

    def _due(self, chore: tuple[str, str], every: float) -> bool:
        """True when this process has not done ``chore`` (what, key) in the last ``every`` seconds."""
        now = time.monotonic()
        with self._chores_lock:
            last = self._chores.get(chore)
            if last is not None and now - last < every:
                return False
            if len(self._chores) > 1000:
                self._chores = {k: t for k, t in self._chores.items() if now - t < CHORES_KEPT_S}
            return True

    def _done(self, *chores: tuple[str, str]) -> None:
        with self._chores_lock:
            for chore in chores:
                self._chores[chore] = time.monotonic()

    def output_since(self, job_id: str, cursor: str | None = None, *, limit: int = 1000) -> list[OutputLine]:
        """The job's live output after ``cursor`` (the ``cursor`` of the last line read; None: from
        the oldest kept), oldest first, at most ``limit`` lines. Never blocks: a follower calls it
        again with the last cursor (jerpctl ``--wait``; the dashboard's server-sent events)."""
        entry_id, _, skip_text = (cursor or "").partition("/")
        skip = int(skip_text) if skip_text.isdigit() else -1  # lines of ``entry_id`` already read
        start = (entry_id if skip >= 0 else f"({entry_id}") if entry_id else "-"
        rows = self._r.xrange(OUTPUT + job_id, min=start, max="+", count=limit)
        lines: list[OutputLine] = []
        for raw_id, fields in rows:
            data = {as_text(k): as_text(v) for k, v in fields.items()}
            entry = as_text(raw_id)
            at = int(entry.split("-")[0]) / 1000
            batch = json.loads(data["lines"]) if "lines" in data else [[data.get("kind", "output"), data.get("text", "")]]
            for index, (kind, text) in enumerate(batch):
                if entry == entry_id and index <= skip:
                    continue
                if len(lines) == limit:
                    return lines
                last = index == len(batch) - 1
                lines.append(OutputLine(step=data.get("step", ""), text=text, kind=kind, at=at,
                                        cursor=entry if last else f"{entry}/{index}"))
        return lines

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


def step_bucket(duration_s: float) -> str:
    """The label of the histogram bucket a step of ``duration_s`` seconds falls in."""
    for bound in STEP_BUCKETS:
        if duration_s <= bound:
            return f"{bound:g}"
    return "+Inf"


def _end_args(step: Step) -> list[str]:
    """What _COUNT_STEP_END needs of a step being written: its state, duration, bucket, name."""
    duration = "" if step.duration_s is None else repr(max(0.0, float(step.duration_s)))
    bucket = step_bucket(float(duration)) if duration else ""
    return [step.state, duration, bucket, step.name]


class LiveOutput:
    """Takes a running command's lines as they come and appends them to the job's output stream
    (:meth:`JobStore.append_output`) in batches, one stream entry each: a batch is written
    :data:`OUTPUT_BATCH_S` after its first line (a timer thread), the rest when the command ends
    (:meth:`close`). A batch that holds only the command's start waits longer
    (:data:`OUTPUT_COMMAND_S`), unless a line joins it. So a chatty command costs a few writes a
    second, one that ends within :data:`OUTPUT_COMMAND_S` without printing earlier a single write
    (its ``XADD`` and the stream's expiry), and a line printed before a long silence still shows
    within the interval. Writes keep the order of the lines.
    A write that fails is logged and dropped: live output never fails a step."""

    def __init__(self, store: JobStore, job_id: str, step: str, *, interval: float | None = None,
                 command_interval: float | None = None) -> None:
        self._store = store
        self._job_id = job_id
        self._step = step
        self._interval = OUTPUT_BATCH_S if interval is None else interval
        self._command_interval = max(self._interval, OUTPUT_COMMAND_S if command_interval is None else command_interval)
        self._pending: list[tuple[str, str]] = []
        self._timer: threading.Timer | None = None
        self._due = 0.0  # when the pending batch is written (time.monotonic()), while a timer runs
        self._lock = threading.Lock()  # the pending lines and the timer
        self._writing = threading.Lock()  # one write at a time, in order
        self._enabled = store.output_lines > 0

    def command(self, argv: Sequence[str]) -> None:
        """A command starts (``argv`` already redacted for display)."""
        self._add("command", " ".join(argv))

    def line(self, text: str) -> None:
        """A line the command printed."""
        self._add("output", text)

    def _add(self, kind: str, text: str) -> None:
        if not self._enabled:
            return
        with self._lock:
            self._pending.append((kind, text))
            wait = self._command_interval if kind == "command" else self._interval
            due = time.monotonic() + wait
            if self._timer is not None and self._due <= due:
                return
            if self._timer is not None:
                self._timer.cancel()  # a line joins a batch that held only a command: written sooner
            self._timer = threading.Timer(wait, self.flush)
            self._timer.daemon = True
            self._due = due
            self._timer.start()

    def flush(self) -> None:
        """Write what is pending now."""
        with self._writing:
            with self._lock:
                entries, self._pending = self._pending, []
                timer, self._timer = self._timer, None
            if timer is not None and timer is not threading.current_thread():
                timer.cancel()
            if not entries:
                return
            try:
                self._store.append_output(self._job_id, self._step, entries)
            except redis_errors() as exc:
                log.warning("output.not_streamed", job_id=self._job_id, step=self._step, lines=len(entries),
                            error=str(exc))

    def close(self) -> None:
        """The command ended: write the rest."""
        self.flush()


#: seconds between two writes of a running command's output (see LiveOutput)
OUTPUT_BATCH_S = 0.25

#: seconds a command's start waits for its first lines or its end before it is written alone
#: (see LiveOutput): a command that is done sooner costs one write
OUTPUT_COMMAND_S = 2.0

#: a process sets a job's output stream's expiry again when it last set it longer ago than this
#: (so the stream outlives the record's last update by at most this much less than the TTL)
OUTPUT_EXPIRY_REFRESH_S = 60.0

#: a step's end sets its record's expiry again when this process last set it longer ago than this
RECORD_EXPIRY_REFRESH_S = 60.0

#: a process drops the expired entries of a job index when it creates a job, at most this often
INDEX_PRUNE_S = 60.0

#: how long a process remembers the chores above
CHORES_KEPT_S = max(OUTPUT_EXPIRY_REFRESH_S, INDEX_PRUNE_S, RECORD_EXPIRY_REFRESH_S)


def new_job_id() -> str:
    import secrets  # here: its import (hashlib, hmac, random) is not paid by the read commands

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
        bench=data.get("bench") or None,
    )
