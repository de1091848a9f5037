"""The read model (jerp_jobs.observe) against what the real parts write: RedBeat's schedule as
jerp_jobs.beat writes it, messages Celery publishes on the real Redis, a real worker's answer."""

from __future__ import annotations

import time

import fakeredis
import pytest
import redis
from celery import Celery

from jerp_jobs import keys, observe
from jerp_jobs.celery import CONTROL_QUEUE, SITE_QUEUE, celery_config
from jerp_jobs.settings import load_settings


def _app(broker_url: str) -> Celery:
    from beat_schedule import beat_schedule

    settings = load_settings(_env_file=None, broker_url=broker_url)
    app = Celery("observe-test", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.beat_schedule = beat_schedule(settings)
    return app


def test_beat_reads_the_schedule_as_the_scheduler_writes_it() -> None:
    from jerp_jobs.beat import Scheduler

    app = _app("redis://127.0.0.1:1/0")
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    app.redbeat_redis = client
    before = time.time()
    Scheduler(app=app)
    state = observe.beat(client)
    names = [e.name for e in state.entries]
    assert set(names) == {"nightly-backup", "retention-prune", "restore-drill", "resume-stalled-steps",
                          "reap-stuck-jobs"}
    first = state.entries[0]
    assert first.name == "resume-stalled-steps" and first.task == "jerp.resume"  # every 30 s: next first
    assert before + 25 <= first.next_run_at <= time.time() + 31
    assert all(e.last_run_at is not None and e.last_run_at >= before - 1 for e in state.entries)
    assert state.lock_held is False
    client.set(keys.REDBEAT_LOCK, "token", px=30_000)
    assert observe.beat(client).lock_held is True


@pytest.mark.services
def test_queues_count_every_priority_and_age_the_oldest_message(redis_url: str, real_redis: redis.Redis) -> None:
    app = _app(redis_url)
    app.send_task("jerp.step", kwargs={"job_id": "a", "step": "backup"}, queue=SITE_QUEUE)
    time.sleep(0.3)
    app.send_task("jerp.step", kwargs={"job_id": "b", "step": "backup"}, queue=SITE_QUEUE, priority=9)
    app.send_task("jerp.resume", queue=CONTROL_QUEUE)
    found = {q.name: q for q in observe.queues(real_redis)}
    assert (found[SITE_QUEUE].depth, found[CONTROL_QUEUE].depth) == (2, 1)
    assert 0.25 <= found[SITE_QUEUE].oldest_age_s < 10  # the first message's publish time (jerp_sent_at)
    assert found[CONTROL_QUEUE].oldest_age_s < found[SITE_QUEUE].oldest_age_s
    assert real_redis.llen(observe.queue_keys(SITE_QUEUE)[3]) == 1  # kombu's list of priority 9


@pytest.mark.services
def test_a_real_worker_answers_and_none_is_alive_once_it_stopped(env: dict[str, str], tmp_path, real_redis) -> None:
    from tests.workers import WorkerProcess

    app = _app(env["JERP_BROKER_URL"])
    assert observe.any_worker_alive(app, timeout=0.5) is False
    worker = WorkerProcess(env, name="observed", log_path=tmp_path / "worker.log").wait_ready()
    try:
        found = observe.workers(app, timeout=1.0, with_queues=True)
        assert [w.name.split("@")[0] for w in found] == ["observed"]
        assert found[0].queues == sorted([SITE_QUEUE, CONTROL_QUEUE]) and found[0].tasks == []
        assert observe.any_worker_alive(app, timeout=1.0) is True
    finally:
        worker.stop()
    assert observe.workers(app, timeout=0.5) == []
