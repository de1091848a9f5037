"""Locks in Redis that live exactly as long as the worker holding them.

A lock is a Redis key set with ``NX`` and a short expiry (``JERP_LOCK_TTL``, default 60 s). Its
value names the holder (job id, step, host, pid) so a refusal can say who is in the way, and
carries a random token so only the holder can extend or release it. While the holder works, a
heartbeat thread extends the expiry every third of the TTL; when the holder's process dies
(SIGKILL, OOM, a lost machine) the heartbeat stops with it and the lock is free again at most
one TTL later. A holder whose lock was lost (expired while the process stalled) learns it from
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

from jerp_jobs.errors import LockBusy, LockLost

PREFIX = "jerp:lock:"

_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def site_lock_name(site: str) -> str:
    return f"site:{site}"


def bench_lock_name(project: str) -> str:
    return f"bench:{project}"


class HeldLock:
    """A lock this process holds, kept alive by a heartbeat thread until released."""

    def __init__(self, client: redis.Redis, name: str, value: str, ttl: float) -> None:
        self._client = client
        self.name = name
        self._key = PREFIX + name
        self._value = value
        self._ttl_ms = int(ttl * 1000)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._extend = client.register_script(_EXTEND)
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat:{name}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def ensure_held(self) -> None:
        if self.lost or not self.extend():
            raise LockLost(f"lock {self.name} was lost (expired while held); stopping")

    def extend(self) -> bool:
        try:
            ok = bool(self._extend(keys=[self._key], args=[self._value, self._ttl_ms]))
        except redis.RedisError:
            return not self._lost.is_set()  # a blip: the key outlives it by design
        if not ok:
            self._lost.set()
        return ok

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._client.register_script(_RELEASE)(keys=[self._key], args=[self._value])

    def _beat(self) -> None:
        interval = self._ttl_ms / 3000
        while not self._stop.wait(interval):
            if not self.extend():
                return


class LockManager:
    def __init__(self, client: redis.Redis, *, ttl: float = 60.0) -> None:
        self._client = client
        self.ttl = ttl

    def holder(self, name: str) -> dict[str, Any] | None:
        raw = self._client.get(PREFIX + name)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return {"raw": raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)}
        data.pop("token", None)
        return data

    def try_acquire(self, name: str, **holder: str) -> HeldLock | None:
        value = json.dumps(
            {
                **holder,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.time(),
                "token": secrets.token_hex(16),
            },
            sort_keys=True,
        )
        if self._client.set(PREFIX + name, value, nx=True, px=int(self.ttl * 1000)):
            return HeldLock(self._client, name, value, self.ttl)
        return None

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


def _str_fields(holder: Mapping[str, Any] | None) -> dict[str, str] | None:
    if holder is None:
        return None
    return {k: str(v) for k, v in holder.items()}
