"""The Beat scheduler's outage handling, tick by tick, on fakeredis: a publish the broker refused
after the run was recorded does not lose the run; a tick that cannot reach Redis backs off
with a doubling, capped wait; a Beat whose lock was taken stands by."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from jerp_jobs.beat import Scheduler


class Broken:
    """A Redis client whose every command fails as an unreachable server does."""

    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any, **__: Any) -> Any:
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

        return fail


@pytest.fixture
def app() -> Celery:
    app = Celery("beat-test", set_as_current=False)
    app.conf.update(
        broker_url="redis://:pw-not-logged@127.0.0.1:6390/0",
        redbeat_redis_url="redis://:pw-not-logged@127.0.0.1:6390/0",
        redbeat_redis_options={},
        redbeat_key_prefix="t:redbeat:",
        redbeat_lock_timeout=30,
        beat_max_loop_interval=5,
        result_backend=None,
        result_expires=None,
        beat_schedule={"hourly": {"task": "t.hourly", "schedule": 3600.0}},
    )
    app.redbeat_redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return app


def _make_due(app: Celery) -> None:
    """The hourly entry last ran two hours ago."""
    from redbeat.decoder import RedBeatJSONEncoder

    client = app.redbeat_redis
    meta = {"last_run_at": datetime.now(timezone.utc) - timedelta(hours=2), "total_run_count": 1}
    client.hset("t:redbeat:hourly", "meta", json.dumps(meta, cls=RedBeatJSONEncoder))
    client.zadd("t:redbeat::schedule", {"t:redbeat:hourly": 0})


def _scheduler(app: Celery, sent: list[str], *, refuse: list[bool]) -> Scheduler:
    from redbeat.schedulers import acquire_distributed_beat_lock

    scheduler = Scheduler(app=app)
    if not isinstance(app.redbeat_redis, Broken):
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))  # as at Beat's start
        _make_due(app)

    def send_task(name: str, *args: Any, **kwargs: Any) -> None:
        if refuse and refuse.pop(0):
            raise OperationalError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
        sent.append(name)

    scheduler.send_task = send_task  # type: ignore[method-assign]
    scheduler.producer = object()  # never used: send_task is replaced
    return scheduler


def test_a_run_recorded_but_not_published_is_sent_when_the_broker_is_back(app: Celery) -> None:
    sent: list[str] = []
    scheduler = _scheduler(app, sent, refuse=[True])
    assert scheduler.tick() == 1.0  # the publish failed: an outage, first backoff
    assert sent == [] and "hourly" in scheduler._rewind
    scheduler.tick()
    assert sent == ["t.hourly"]  # put back to its previous run, so due again at once
    scheduler.tick()
    assert sent == ["t.hourly"]  # and then not again before its hour


def test_ticks_without_redis_back_off_doubling_up_to_the_cap_then_carry_on(app: Celery) -> None:
    sent: list[str] = []
    scheduler = _scheduler(app, sent, refuse=[])
    working = app.redbeat_redis
    app.redbeat_redis = Broken()
    assert [scheduler.tick() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    app.redbeat_redis = working
    scheduler.tick()
    assert sent == ["t.hourly"] and scheduler._failures == 0
    scheduler.close()
    assert not working.exists("t:redbeat::lock")  # released on a clean stop


def test_a_beat_started_while_redis_is_down_waits_for_it(app: Celery) -> None:
    sent: list[str] = []
    working = app.redbeat_redis
    app.redbeat_redis = Broken()
    scheduler = _scheduler(app, sent, refuse=[])  # storing the schedule failed
    assert scheduler.tick() > 0 and sent == []
    app.redbeat_redis = working
    scheduler.tick()  # stores the schedule; a first run of an interval entry waits its interval
    assert working.exists("t:redbeat:hourly") and scheduler._failures == 0
    _make_due(app)
    scheduler.tick()
    assert sent == ["t.hourly"]


def test_a_beat_whose_lock_was_taken_stands_by_and_takes_it_when_free(app: Celery) -> None:
    sent: list[str] = []
    scheduler = _scheduler(app, sent, refuse=[])
    scheduler.tick()
    assert sent == ["t.hourly"]
    client = app.redbeat_redis
    client.set("t:redbeat::lock", "another-beat", ex=30)  # the lock expired and another Beat took it
    _make_due(app)
    assert scheduler.tick() == 5.0 and sent == ["t.hourly"]  # stands by: schedules nothing
    assert scheduler.tick() == 5.0 and sent == ["t.hourly"]
    assert client.get("t:redbeat::lock") == "another-beat"
    client.delete("t:redbeat::lock")  # the other Beat is gone
    scheduler.tick()
    assert sent == ["t.hourly", "t.hourly"] and client.get("t:redbeat::lock") != "another-beat"
