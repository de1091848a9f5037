"""A fan-out's progress in Redis: its sites' entries, counts, and pending and running sets.

A fan-out (``migrate-all``, ``backup-all``...: jerp_jobs.operations.fanout) keeps its progress in
its own keys, never in its parent's record, so one child's end costs the same at the 10th site
as at the 10,000th:

- ``jerp:fanout:<id>`` — hash: site -> its entry (JSON: state, child job id, attempts, error),
  and ``#order`` -> the sites in the order they run (JSON list);
- ``jerp:fanout:<id>:counts`` — hash: state -> how many sites are in it;
- ``jerp:fanout:<id>:pending`` / ``:running`` — sorted sets of the sites waiting to start and of
  those whose child runs, scored by their place in the order.

Each child event is one script, so the counts always match the entries: a child started
(:meth:`FanoutStore.child_started`), a child ended, with what the parent's waiting step does next
(:meth:`FanoutStore.child_ended`: start more sites, wait, or end the step). Every key expires
with the job records' TTL (set when the fan-out starts, and on the sets a site enters again).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from jerp_jobs.keys import FANOUT
from jerp_jobs.jobs import FINAL_JOB_STATES, JOB, JobState, as_text


class SiteRun(StrEnum):
    """Where one site of a fan-out is before its job ends (then its entry holds the job's
    final :class:`~jerp_jobs.jobs.JobState`); stored as its value."""

    PENDING = "pending"  # waiting to start
    RUNNING = "running"  # its job runs
    NOT_STARTED = "not-started"  # the fan-out stopped before it started
    SKIPPED = "skipped"  # never started: needs attention, or over the per-run limit


#: the final states of a child that count as a failed site
FAILED = frozenset({JobState.FAILED, JobState.RECOVERED, JobState.CANCELLED})

#: field of the fan-out's hash that holds the order of its sites (no site name has a '#')
ORDER = "#order"

#: what a script needs to know of the sites' states (see SiteRun): ARGV-free constants
_STATES = {"@PENDING@": SiteRun.PENDING.value, "@RUNNING@": SiteRun.RUNNING.value,
           "@NOT_STARTED@": SiteRun.NOT_STARTED.value, "@SUCCEEDED@": JobState.SUCCEEDED.value}


def _lua(source: str) -> str:
    for token, value in _STATES.items():
        source = source.replace(token, value)
    return source


# Helpers of both scripts. KEYS: 1 entries, 2 counts, 3 pending, 4 running.
_COMMON = """
local function place_of(site)
  local s = redis.call('zscore', KEYS[3], site) or redis.call('zscore', KEYS[4], site)
  if s then return s end
  local order = cjson.decode(redis.call('hget', KEYS[1], '#order') or '[]')
  for i, v in ipairs(order) do if v == site then return i - 1 end end
  return #order
end
"""

# A child was created and is about to be published: its site is running with it.
# KEYS: 1 entries, 2 counts, 3 pending, 4 running. ARGV: 1 site, 2 child job id, 3 TTL (s).
# The entry becomes {state running, job_id, attempts (the last entry's + 1)}; its count and its
# place in the sets move with it. Returns the entry (JSON).
_CHILD_STARTED = _lua(_COMMON + """
local raw = redis.call('hget', KEYS[1], ARGV[1])
local old = raw and cjson.decode(raw) or {}
local place = place_of(ARGV[1])
local entry = cjson.encode({state = '@RUNNING@', job_id = ARGV[2], attempts = (tonumber(old.attempts) or 0) + 1})
redis.call('hset', KEYS[1], ARGV[1], entry)
if type(old.state) == 'string' then redis.call('hincrby', KEYS[2], old.state, -1) end
redis.call('hincrby', KEYS[2], '@RUNNING@', 1)
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('zadd', KEYS[4], place, ARGV[1])
redis.call('expire', KEYS[4], ARGV[3])
return entry
""")

# A child ended (or, without a child, the parent's step asks where the fan-out is): record the
# end once, then say what the parent's waiting step does.
# KEYS: 1 entries, 2 counts, 3 pending, 4 running, 5 the child's record (any key when none).
# ARGV: 1 child job id ("": none), 2 how many attempts a failed site gets before it counts
#   (0: one), 3 "1" when the fan-out stops starting sites (a cancel), 4 the parent's waiting
#   step ("canary", "sites" or ""), 5 the canary site, 6 the failure budget (-1: none),
#   7 the concurrency, 8 the failed states, 9 the final job states (space-separated), 10 TTL.
# The child's end is recorded when its site's entry names it and is running and its record is
# final: a failed child whose site has attempts left makes the site pending again (the failure
# kept in the entry's ``failures``), else the entry takes the child's state (and its error when
# it failed). Then, for the waiting step:
#   canary: {"settle", recorded, "success"} when the canary succeeded, {"settle", recorded,
#           "failed"} when it failed (every pending site then not-started), else {"wait", ...};
#   sites:  once more sites failed than the budget, or on a cancel, every pending site is
#           not-started; else up to the concurrency's room of pending sites are named:
#           {"start", recorded, site...}; with none running: {"over", recorded, "success" |
#           "failed"}; else {"wait", recorded}.
# {"index"} when the counts are missing (a fan-out an earlier version started: index it, call
# again), {"gone"} when the fan-out has no keys.
_CHILD_ENDED = _lua(_COMMON + """
local failed = ' ' .. ARGV[8] .. ' '
local finals = ' ' .. ARGV[9] .. ' '
local function is_in(set, s) return type(s) == 'string' and string.find(set, ' ' .. s .. ' ', 1, true) ~= nil end
local raw_counts = redis.call('hgetall', KEYS[2])
if #raw_counts == 0 then
  if redis.call('exists', KEYS[1]) == 1 then return {'index'} end
  return {'gone'}
end
local counts = {}
for i = 1, #raw_counts, 2 do counts[raw_counts[i]] = tonumber(raw_counts[i + 1]) end
local function count(state, by)
  redis.call('hincrby', KEYS[2], state, by)
  counts[state] = (counts[state] or 0) + by
end
local function stop_pending()
  local waiting = redis.call('zrange', KEYS[3], 0, -1)
  if #waiting == 0 then return end
  local entry = cjson.encode({state = '@NOT_STARTED@'})
  for first = 1, #waiting, 1000 do
    local writes = {}
    for i = first, math.min(first + 999, #waiting) do
      writes[#writes + 1] = waiting[i]
      writes[#writes + 1] = entry
    end
    redis.call('hset', KEYS[1], unpack(writes))
  end
  redis.call('del', KEYS[3])
  count('@PENDING@', -#waiting)
  count('@NOT_STARTED@', #waiting)
end
local recorded = '0'
if ARGV[1] ~= '' then
  local child = redis.call('hmget', KEYS[5], 'site', 'state', 'error', 'bench')
  local site = child[1]
  if not site or site == '' then site = child[4] end  -- a fan-out over benches: its children are benches
  local raw = site and site ~= '' and is_in(finals, child[2]) and redis.call('hget', KEYS[1], site)
  local entry = raw and cjson.decode(raw)
  if entry and entry.job_id == ARGV[1] and entry.state == '@RUNNING@' then
    local state, err = child[2], child[3] or cjson.null
    local place = redis.call('zscore', KEYS[4], site)
    redis.call('zrem', KEYS[4], site)
    if is_in(failed, state) and (tonumber(entry.attempts) or 1) <= tonumber(ARGV[2]) and ARGV[3] ~= '1' then
      local failures = type(entry.failures) == 'table' and entry.failures or {}
      failures[#failures + 1] = {job_id = ARGV[1], error = err}
      entry.failures = failures
      entry.state = '@PENDING@'
      redis.call('zadd', KEYS[3], place or place_of(site), site)
      redis.call('expire', KEYS[3], ARGV[10])
    else
      entry.state = state
      if is_in(failed, state) then entry.error = err end
    end
    redis.call('hset', KEYS[1], site, cjson.encode(entry))
    count('@RUNNING@', -1)
    count(entry.state, 1)
    recorded = '1'
  end
end
if ARGV[4] == 'canary' then
  local raw = ARGV[5] ~= '' and redis.call('hget', KEYS[1], ARGV[5])
  local state = raw and cjson.decode(raw).state
  if state == '@SUCCEEDED@' then return {'settle', recorded, 'success'} end
  if is_in(failed, state) then
    stop_pending()
    return {'settle', recorded, 'failed'}
  end
elseif ARGV[4] == 'sites' then
  local failures = 0
  for state, n in pairs(counts) do
    if is_in(failed, state) then failures = failures + n end
  end
  local running = counts['@RUNNING@'] or 0
  local budget = tonumber(ARGV[6])
  local stop = ARGV[3] == '1' or (budget >= 0 and failures > budget)
  if stop then
    stop_pending()
  else
    local room = tonumber(ARGV[7]) - running
    if room > 0 then
      local start = redis.call('zrange', KEYS[3], 0, room - 1)
      if #start > 0 then return {'start', recorded, unpack(start)} end
    end
  end
  if running == 0 then return {'over', recorded, (failures > 0 or stop) and 'failed' or 'success'} end
end
return {'wait', recorded}
""")


@dataclass(frozen=True)
class Next:
    """What a fan-out's waiting step does after a child's end (:meth:`FanoutStore.child_ended`)."""

    #: "start" (the sites named), "wait", "settle" (the canary's step ends ``state``), "over"
    #: (the sites' step ends ``state``), "gone" (the fan-out has no keys)
    action: str
    #: the child's end was recorded by this call (False: told before, or not running)
    recorded: bool = False
    state: str | None = None
    sites: list[str] = field(default_factory=list)


def fanout_keys(parent_id: str) -> tuple[str, str, str, str]:
    """The fan-out's entries, counts, pending and running keys."""
    base = FANOUT + parent_id
    return base, base + ":counts", base + ":pending", base + ":running"


class FanoutStore:
    """A fan-out's keys, changed one child event at a time (each one script)."""

    def __init__(self, client: redis.Redis, *, ttl: int) -> None:
        self._r = client
        self.ttl = ttl
        self._child_started = client.register_script(_CHILD_STARTED)
        self._child_ended = client.register_script(_CHILD_ENDED)

    keys = staticmethod(fanout_keys)

    # -- reading ---------------------------------------------------------------------------------

    def progress(self, parent_id: str) -> dict[str, Any] | None:
        """The live ``sites``, ``counts`` and ``order`` of a fan-out, as its result shows them when
        it ends; None when the job is no fan-out (or its state expired)."""
        return progress(self._r, parent_id)

    def entry(self, parent_id: str, site: str) -> dict[str, Any]:
        raw = self._r.hget(FANOUT + parent_id, site)
        return json.loads(raw) if raw else {}

    def counts(self, parent_id: str) -> dict[str, int]:
        raw = self._r.hgetall(fanout_keys(parent_id)[1])
        return {as_text(k): int(v) for k, v in raw.items() if int(v)}

    def running_sites(self, parent_id: str) -> list[str]:
        return [as_text(s) for s in self._r.zrange(fanout_keys(parent_id)[3], 0, -1)]

    # -- writing ---------------------------------------------------------------------------------

    def set_many(self, parent_id: str, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Every site's first entry, their order and counts, in one transaction (any earlier state
        of this fan-out is replaced)."""
        keys = fanout_keys(parent_id)
        entries_key, counts_key, pending_key, _ = keys
        counts: dict[str, int] = {}
        for entry in entries.values():
            counts[entry["state"]] = counts.get(entry["state"], 0) + 1
        pending = {site: i for i, (site, e) in enumerate(entries.items()) if e["state"] == SiteRun.PENDING}
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(*keys)
        mapping = {site: json.dumps(e, sort_keys=True) for site, e in entries.items()}
        pipe.hset(entries_key, mapping={**mapping, ORDER: json.dumps(list(entries))})
        pipe.hset(counts_key, mapping=counts)
        if pending:
            pipe.zadd(pending_key, pending)
        self._expire(pipe, parent_id)
        pipe.execute()

    def stop_pending(self, parent_id: str) -> None:
        """Every site still waiting to start is marked not-started (one transaction)."""
        entries_key, counts_key, pending_key, _ = fanout_keys(parent_id)
        waiting = [as_text(s) for s in self._r.zrange(pending_key, 0, -1)]
        if not waiting:
            return
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(entries_key, mapping={s: json.dumps({"state": SiteRun.NOT_STARTED}) for s in waiting})
        pipe.zrem(pending_key, *waiting)
        pipe.hincrby(counts_key, SiteRun.PENDING, -len(waiting))
        pipe.hincrby(counts_key, SiteRun.NOT_STARTED, len(waiting))
        self._expire(pipe, parent_id)
        pipe.execute()

    def index(self, parent_id: str) -> None:
        """Build the counts and the pending and running sets from the entries when they are
        missing (a fan-out that an earlier version started, which kept only the entries)."""
        entries_key, counts_key, pending_key, running_key = fanout_keys(parent_id)
        if self._r.exists(counts_key) or not self._r.exists(entries_key):
            return
        live = self.progress(parent_id)
        if live is None:
            return
        places = {site: i for i, site in enumerate(live["order"])}
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(counts_key, mapping=live["counts"])
        for key, state in ((pending_key, SiteRun.PENDING), (running_key, SiteRun.RUNNING)):
            members = {s: places[s] for s, e in live["sites"].items() if e["state"] == state}
            if members:
                pipe.zadd(key, members)
        self._expire(pipe, parent_id)
        pipe.execute()

    def delete(self, parent_id: str) -> None:
        self._r.delete(*fanout_keys(parent_id))

    def child_started(self, parent_id: str, site: str, child_id: str) -> dict[str, Any]:
        """``site`` runs child ``child_id`` (one script, ``_CHILD_STARTED``); returns its entry."""
        entry = self._child_started(keys=list(fanout_keys(parent_id)), args=[site, child_id, self.ttl])
        return json.loads(entry)

    def child_ended(self, parent_id: str, child_id: str | None, *, waiting: str | None, canary: str | None = None,
                    attempts: int = 0, stop: bool = False, budget: int | None = None, concurrency: int = 1,
                    failed: Collection[str] = FAILED) -> Next:
        """Record the end of child ``child_id`` (None: no child, only where the fan-out is) and
        say what the parent's ``waiting`` step does next, in one script (``_CHILD_ENDED``).

        ``attempts``: how many times a failed site starts again; ``stop``: start no more sites (a
        cancel); ``budget``: the failed sites allowed before the rest are not started (None: no
        budget); ``concurrency``: the children that may run at once. A fan-out kept by an earlier
        version (no counts) is indexed first."""
        keys = [*fanout_keys(parent_id), JOB + child_id if child_id else FANOUT + parent_id]
        args = [child_id or "", attempts, "1" if stop else "0", waiting or "", canary or "",
                -1 if budget is None else budget, concurrency, " ".join(sorted(failed)),
                " ".join(sorted(FINAL_JOB_STATES)), self.ttl]
        reply = [as_text(v) for v in self._child_ended(keys=keys, args=args)]
        if reply[0] == "index":
            self.index(parent_id)
            reply = [as_text(v) for v in self._child_ended(keys=keys, args=args)]
        if reply[0] == "gone" or reply[0] == "index":
            return Next("gone")
        recorded = reply[1] == "1"
        if reply[0] == "start":
            return Next("start", recorded, sites=reply[2:])
        if reply[0] in ("settle", "over"):
            return Next(reply[0], recorded, state=reply[2])
        return Next("wait", recorded)

    def _expire(self, pipe: Any, parent_id: str) -> None:
        for key in fanout_keys(parent_id):
            pipe.expire(key, self.ttl)


def progress(client: redis.Redis, parent_id: str) -> dict[str, Any] | None:
    """The live ``sites``, ``counts`` and ``order`` of a fan-out (see :meth:`FanoutStore.progress`)."""
    raw = {as_text(k): v for k, v in client.hgetall(FANOUT + parent_id).items()}
    order_raw = raw.pop(ORDER, None)
    if order_raw is None:
        return None
    entries = {site: json.loads(v) for site, v in raw.items()}
    order = json.loads(order_raw)
    sites = {site: entries[site] for site in order if site in entries}
    counts: dict[str, int] = {}
    for entry in sites.values():
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    return {"sites": sites, "counts": counts, "order": order}
