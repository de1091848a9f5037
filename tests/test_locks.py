"""Locks on the real Redis: exclusive across processes, alive while held, free after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis

from jerp_jobs.errors import LockBusy
from jerp_jobs.locks import LockManager, site_lock_name

RACER = textwrap.dedent(
    """
    import sys, time, redis
    from jerp_jobs.locks import LockManager
    url, name, rounds, who = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = redis.Redis.from_url(url)
    locks = LockManager(client, ttl=10)
    got = 0
    deadline = time.monotonic() + 60
    while got < rounds and time.monotonic() < deadline:
        held = locks.try_acquire(name, job_id=who, step="race")
        if held is None:
            time.sleep(0.001)
            continue
        if client.incr("inside") != 1:
            client.incr("violations")
        time.sleep(0.002)
        client.decr("inside")
        held.release()
        got += 1
    print(got)
    """
)

HOLDER = textwrap.dedent(
    """
    import sys, time, redis
    from jerp_jobs.locks import LockManager
    url, name, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    held = LockManager(redis.Redis.from_url(url), ttl=ttl).try_acquire(name, job_id="holder", step="slow")
    print("held" if held else "busy", flush=True)
    time.sleep(600)
    """
)


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)


def test_two_processes_racing_never_both_hold_the_site(real_redis: redis.Redis, redis_url: str) -> None:
    name = site_lock_name("race.example.com")
    racers = [_spawn(RACER, redis_url, name, "150", who) for who in ("w1", "w2")]
    counts = [int(p.communicate(timeout=90)[0].strip()) for p in racers]
    assert counts == [150, 150]  # both got their turns...
    assert int(real_redis.get("violations") or 0) == 0  # ...never at the same time


def test_heartbeat_keeps_a_held_lock_alive_past_its_ttl(real_redis: redis.Redis) -> None:
    locks = LockManager(real_redis, ttl=1.5)
    held = locks.try_acquire("bench:jerp", job_id="j1", step="build")
    assert held is not None
    time.sleep(4.5)  # three TTLs
    assert locks.holder("bench:jerp")["job_id"] == "j1"
    assert not held.lost
    held.release()
    assert locks.holder("bench:jerp") is None


def test_busy_lock_names_the_holding_job(real_redis: redis.Redis) -> None:
    locks = LockManager(real_redis, ttl=10)
    with locks.hold(site_lock_name("a.example.com"), job_id="job-one", step="migrate"):
        with pytest.raises(LockBusy, match="job job-one \\(step migrate\\)"):
            locks.acquire(site_lock_name("a.example.com"), wait=0.3, job_id="job-two", step="backup")
    assert locks.try_acquire(site_lock_name("a.example.com"), job_id="job-two") is not None


def test_only_the_holder_releases_and_a_taken_over_lock_is_reported_lost(real_redis: redis.Redis) -> None:
    locks = LockManager(real_redis, ttl=10)
    held = locks.try_acquire("site:x.example.com", job_id="j1")
    assert held is not None
    real_redis.set("jerp:lock:site:x.example.com", "someone else")  # as if it expired and was retaken
    assert held.extend() is False and held.lost
    held.release()
    assert real_redis.get("jerp:lock:site:x.example.com") == b"someone else"


def test_lock_of_a_sigkilled_holder_is_free_within_two_minutes(real_redis: redis.Redis, redis_url: str) -> None:
    """With the default TTL: the heartbeat dies with its process, the lock expires after it."""
    name = site_lock_name("crash.example.com")
    holder = _spawn(HOLDER, redis_url, name, "60")
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    locks = LockManager(real_redis, ttl=60)
    time.sleep(25)  # past a heartbeat (every 20 s): still held while the holder lives
    assert locks.holder(name)["job_id"] == "holder"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed_at = time.monotonic()
    assert locks.try_acquire(name, job_id="next") is None  # not free at once: no one released it
    while locks.holder(name) is not None:
        assert time.monotonic() - killed_at < 120, "the lock of a dead holder outlived two minutes"
        time.sleep(1)
    freed_after = time.monotonic() - killed_at
    assert locks.try_acquire(name, job_id="next") is not None
    print(f"lock free {freed_after:.1f}s after SIGKILL")
