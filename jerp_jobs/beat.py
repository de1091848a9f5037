"""The Beat scheduler: celery-redbeat, with first runs of cron entries at their next time, that
outlives broker outages.

RedBeat keeps the schedule in Redis and one lock (``jerp:redbeat::lock``) so exactly one Beat
schedules however many run; a standby takes over when the active one dies and its lock
expires. RedBeat treats an entry it has never run as due at once: for the nightly backup,
the prune and the drill that would mean a full run the first time Beat starts. This scheduler
gives a new cron entry the start time as its last run, so its first run is its next cron time.
An entry that ran before keeps its last run: a run missed while Beat was down is due once
when it comes back (and only once: the next time is computed from the run that happens).

Broker outages. Every tick talks to Redis (the lock, the schedule, the publish). Plain
RedBeat lets a connection error escape its tick, Celery's beat loop does not catch it, and the
process exits. Here a tick that cannot reach Redis logs a warning (the URL with its password
masked) and returns a wait that doubles with each failed tick, up to :attr:`Scheduler.max_backoff`;
the next tick tries again, and the first one that reaches Redis stores the static schedule
again (a no-op when Redis kept its data; a Redis that came back empty gets its entries back)
and carries on with the schedule. Beat's startup with Redis down waits the same way.

Leadership across an outage. A tick schedules only after extending the lock, and extending
succeeds only while the lock still holds this Beat's token: a Beat that comes back from an
outage during which its lock expired (and maybe another Beat took it) finds the extension
refused, drops the lock and tries to take it afresh without waiting. If another Beat holds
it, this one stands by, trying again every tick, and schedules nothing. A Beat whose startup
lock could not be taken (Redis down) starts as a standby too. So exactly one Beat schedules,
whatever happened while Redis was away.

Nothing is lost at the edge of an outage: an entry whose run was recorded in Redis but whose
message could not be published is put back to its previous run (once Redis answers again, if
it does not at once), so it is due again and sent then.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.exceptions
from celery.beat import SchedulingError
from celery.schedules import crontab
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from redbeat import RedBeatScheduler
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis
from redbeat.schedulers import logger as redbeat_logger

from jerp_jobs.log import get_logger

log = get_logger("jerp_jobs.beat")

#: What an unreachable or restarting Redis raises (BusyLoadingError, while it loads its AOF,
#: is a ConnectionError); kombu's OperationalError is a publish whose retries ran out.
BROKER_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
)


def _broker_down(exc: BaseException) -> BaseException | None:
    """The connection error behind ``exc`` (itself, or what it wraps), if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BROKER_DOWN):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class Scheduler(RedBeatScheduler):
    #: first wait after a tick that could not reach Redis; doubles with each failed tick
    first_backoff = 1.0
    #: the longest wait between two attempts to reach Redis
    max_backoff = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._failures = 0
        self._down_since: float | None = None
        self._setup_pending = False
        self._standing_by = False
        self._lost = False
        self._rewind: dict[str, Any] = {}  # entries to put back to their previous run
        super().__init__(*args, **kwargs)

    # -- schedule ----------------------------------------------------------------------------

    def setup_schedule(self) -> None:
        try:
            super().setup_schedule()
        except BROKER_DOWN as exc:
            self._setup_pending = True  # the first tick that reaches Redis stores the schedule
            self._outage(exc)

    def update_from_dict(self, dict_: dict[str, Any]) -> None:
        fresh = {}
        for name, entry in dict_.items():
            key = self.Entry.generate_key(self.app, name)
            if isinstance(entry.get("schedule"), crontab) and not self._known(key):
                entry = {**entry, "last_run_at": self.app.now()}
            fresh[name] = entry
        super().update_from_dict(fresh)

    def _known(self, key: str) -> bool:
        return bool(get_redis(self.app).hexists(key, "meta"))

    # -- the tick ----------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass: returns the seconds to sleep before the next one.

        A connection error anywhere in the pass ends it with a backoff; a lost lock makes this
        Beat try to take it again, or stand by.
        """
        try:
            if self._setup_pending:
                super().setup_schedule()
                self._setup_pending = False
            self._put_back()
            if self.lock_key and self.lock is None and not self._take_lock():
                return self._stand_by()
            try:
                interval = super().tick(*args, **kwargs)
            except redis.exceptions.LockError as exc:
                self._lock_lost(exc)
                if not self._take_lock():
                    return self._stand_by()
                interval = super().tick(*args, **kwargs)
        except BROKER_DOWN as exc:
            return self._outage(exc)
        self._reachable()
        return interval

    def maybe_due(self, entry: Any, **kwargs: Any) -> Any:
        """RedBeat's, except that a publish the broker refused ends the tick as an outage.

        RedBeat records the run in Redis before publishing; when the publish then fails, the
        entry is put back to its previous run so the run is not lost. Other errors are logged
        and the tick goes on, as in RedBeat.
        """
        is_due, next_time_to_run = entry.is_due()
        if not is_due:
            return next_time_to_run
        redbeat_logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, **kwargs)
        except Exception as exc:  # noqa: BLE001 - RedBeat's own rule: one bad entry never stops Beat
            cause = _broker_down(exc)
            if cause is None:
                redbeat_logger.exception("Scheduler: Message Error: %s", exc)
                return next_time_to_run
            if cause is exc:  # Redis went away before the run was recorded: nothing to undo
                raise
            if isinstance(exc, SchedulingError):  # recorded as run, but not published
                self._rewind[entry.name] = entry
            raise cause from exc
        return next_time_to_run

    def close(self) -> None:
        try:
            super().close()
        except BROKER_DOWN as exc:
            self.lock = None
            log.warning("beat.lock_not_released", broker=self._url(), error=str(exc),
                        expires_in_s=self.lock_timeout)

    # -- leadership --------------------------------------------------------------------------

    def _take_lock(self) -> bool:
        """Take the Beat lock if it is free (never waits); True when this Beat holds it."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)  # as RedBeat's own lock
        if not lock.acquire(blocking=False):
            return False
        self.lock = lock
        if self._standing_by or self._lost:
            log.warning("beat.lock_taken", lock=self.lock_key)
        self._standing_by = self._lost = False
        return True

    def _stand_by(self) -> float:
        if not self._standing_by:
            log.info("beat.standing_by", lock=self.lock_key,
                     detail="another Beat holds the lock; this one schedules nothing until it is free")
            self._standing_by = True
        self._reachable()
        return float(self.max_interval)

    def _lock_lost(self, exc: Exception) -> None:
        self.lock = None
        self._lost = True
        log.warning("beat.lock_lost", lock=self.lock_key, error=str(exc),
                    detail="the lock expired while this Beat was away; taking it again if it is free")

    # -- outages -----------------------------------------------------------------------------

    def _outage(self, exc: BaseException) -> float:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        delay = min(self.max_backoff, self.first_backoff * 2 ** self._failures)
        self._failures += 1
        self._setup_pending = True  # stored again once Redis answers, in case it came back empty
        log.warning("beat.broker_unreachable", broker=self._url(), error=str(exc),
                    down_for_s=round(now - self._down_since, 1), retry_in_s=delay, attempt=self._failures)
        return delay

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.warning("beat.broker_reachable", broker=self._url(),
                        was_down_for_s=round(time.monotonic() - self._down_since, 1))
        self._failures = 0
        self._down_since = None

    def _put_back(self) -> None:
        """Give entries whose run was recorded but never published their previous run back."""
        while self._rewind:
            name, entry = next(iter(self._rewind.items()))
            meta = {"last_run_at": entry.last_run_at, "total_run_count": entry.total_run_count}
            with get_redis(self.app).pipeline() as pipe:
                pipe.hset(entry.key, "meta", json.dumps(meta, cls=RedBeatJSONEncoder))
                pipe.zadd(self.app.redbeat_conf.schedule_key, {entry.key: entry.score})
                pipe.execute()
            del self._rewind[name]
            log.warning("beat.run_put_back", entry=name,
                        detail="its message could not be published; it is due again")

    def _url(self) -> str:
        return maybe_sanitize_url(self.app.redbeat_conf.redis_url)
