"""Locks in Redis that live exactly as long as the worker holding them.

A lock is a Redis key set with ``NX`` and a short expiry (``JERP_LOCK_TTL``, default 60 s). Its
value names the holder (job id, step, host, pid) so a refusal can say who is in the way, and
carries a random token so only the holder can extend or release it. While the holder works, the
process's heartbeat thread (one per process, for every lock it holds) extends the expiry every
third of the TTL; when the holder's process dies (SIGKILL, OOM, a lost machine) the heartbeat
stops with it and the lock is free again at most one TTL later. A holder whose lock was lost (expired while the process stalled) learns it from
:attr:`HeldLock.lost` and must not start anything new.

Names: ``site:<site>`` for anything touching one site, ``bench:<project>`` for bench-wide work.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis

from jerp_jobs import keys
from jerp_jobs.errors import LockBusy, LockLost

PREFIX = keys.LOCK

_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = keys.COMPARE_AND_DELETE


def site_lock_name(site: str) -> str:
    return f"site:{site}"


def bench_lock_name(project: str) -> str:
    return f"bench:{project}"


class HeldLock:
    """A lock this process holds, kept alive by the process's heartbeat until released."""

    def __init__(self, client: redis.Redis, name: str, value: str, ttl: float, scripts: _Scripts | None = None) -> None:
        self._scripts = scripts or _Scripts(client)
        self.name = name
        self._key = PREFIX + name
        self._value = value
        self._ttl_ms = int(ttl * 1000)
        #: seconds between two extensions: a third of the TTL, so one missed beat loses nothing
        self.interval = ttl / 3
        self._lost = threading.Event()
        self._released = False
        _HEARTBEAT.add(self)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def value(self) -> str:
        """The lock's value (holder fields and token), for a script that checks ownership."""
        return self._value

    def lost_now(self) -> None:
        """Record that the lock was found taken by someone else (by a script), and stop extending it."""
        self._lost.set()
        self.forget()

    def ensure_held(self) -> None:
        if self.lost or not self.extend():
            raise LockLost(f"lock {self.name} was lost (expired while held); stopping")

    def extend(self) -> bool:
        try:
            ok = bool(self._scripts.extend(keys=[self._key], args=[self._value, self._ttl_ms]))
        except redis.RedisError:
            return not self._lost.is_set()  # a blip: the key outlives it by design
        if not ok:
            self._lost.set()
        return ok

    def release(self) -> None:
        """Stop extending the lock and delete it if this holder still owns it."""
        _HEARTBEAT.remove(self)
        if self._released:
            return
        self._released = True
        self._scripts.release(keys=[self._key], args=[self._value])

    def forget(self) -> None:
        """Stop extending the lock without deleting it (a script already released it)."""
        _HEARTBEAT.remove(self)
        self._released = True


class _Scripts:
    """The lock scripts, registered once per client (a registration hashes the script's text)."""

    def __init__(self, client: redis.Redis) -> None:
        self.extend = client.register_script(_EXTEND)
        self.release = client.register_script(_RELEASE)


class _Heartbeat:
    """The one thread per process that extends every lock the process holds.

    Each held lock is extended every third of its TTL for as long as it is held; a lock found
    taken by someone else is marked lost and no longer extended. The thread starts with the
    first lock a process takes (in a forked pool process: the first lock that process takes)
    and dies with the process, so a dead worker's locks expire one TTL after its last beat.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._due: dict[HeldLock, float] = {}
        self._thread: threading.Thread | None = None

    def add(self, held: HeldLock) -> None:
        with self._mutex:
            self._due[held] = time.monotonic() + held.interval
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lock-heartbeat", daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, held: HeldLock) -> None:
        with self._mutex:
            self._due.pop(held, None)

    def held(self) -> list[HeldLock]:
        with self._mutex:
            return list(self._due)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._mutex:
                due = [held for held, at in self._due.items() if at <= now]
                for held in due:
                    self._due[held] = now + held.interval
            for held in due:
                if not held.extend():
                    self.remove(held)
            with self._mutex:
                wait = min(self._due.values(), default=now + 60.0) - time.monotonic()
            self._wake.wait(max(0.0, wait))
            self._wake.clear()


_HEARTBEAT = _Heartbeat()
# A forked process (a prefork pool process) starts with no lock held and no heartbeat thread.
os.register_at_fork(after_in_child=_HEARTBEAT._reset)


class LockManager:
    def __init__(self, client: redis.Redis, *, ttl: float = 60.0) -> None:
        self._client = client
        self.ttl = ttl
        self._scripts = _Scripts(client)

    def holder(self, name: str) -> dict[str, Any] | None:
        return holder_of(self._client.get(PREFIX + name))

    def try_acquire(self, name: str, **holder: str) -> HeldLock | None:
        value = self.value(**holder)
        if self._client.set(PREFIX + name, value, nx=True, px=int(self.ttl * 1000)):
            return self.adopt(name, value)
        return None

    @staticmethod
    def value(**holder: str) -> str:
        """A lock's value: the holder's fields, where it runs, and a token only it knows."""
        return json.dumps(
            {**holder, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
             "token": secrets.token_hex(16)},
            sort_keys=True,
        )

    @staticmethod
    def key(name: str) -> str:
        return PREFIX + name

    def adopt(self, name: str, value: str) -> HeldLock:
        """The lock ``name`` that a script just set to ``value``, from now on kept alive here."""
        return HeldLock(self._client, name, value, self.ttl, self._scripts)

    def acquire(self, name: str, *, wait: float = 0.0, poll: float = 0.2, **holder: str) -> HeldLock:
        """Take the lock, waiting up to ``wait`` seconds; LockBusy names the holder otherwise."""
        deadline = time.monotonic() + wait
        while True:
            held = self.try_acquire(name, **holder)
            if held is not None:
                return held
            if time.monotonic() >= deadline:
                raise LockBusy(name, _str_fields(self.holder(name)))
            time.sleep(poll)

    @contextmanager
    def hold(self, name: str, *, wait: float = 0.0, poll: float = 0.2, **holder: str) -> Iterator[HeldLock]:
        held = self.acquire(name, wait=wait, poll=poll, **holder)
        try:
            yield held
        finally:
            held.release()


def holder_of(raw: bytes | str | None) -> dict[str, Any] | None:
    """A lock value's holder fields, without its token (None for no holder)."""
    if raw is None or raw in (b"", ""):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)}
    data.pop("token", None)
    return data


def _str_fields(holder: Mapping[str, Any] | None) -> dict[str, str] | None:
    if holder is None:
        return None
    return {k: str(v) for k, v in holder.items()}
