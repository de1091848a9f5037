"""``jerpctl workers`` and the no-worker warning of ``--wait``/``watch``, on a fakeredis runtime
with a stand-in for Celery's remote control (tests/test_metrics.py's FakeControl)."""

from __future__ import annotations

import json
import threading
import time

from click.testing import CliRunner

from jerp_jobs import keys
from jerp_jobs.cli import EXIT_JOB_FAILED, EXIT_OK, Ctx, cli
from jerp_jobs.runtime import Runtime
from tests.test_metrics import _app

SITE = "acme.example.com"


def _invoke(rt: Runtime, app, *args: str):
    ctx = Ctx(rt=rt)
    ctx.celery_app = app  # type: ignore[attr-defined]
    return CliRunner().invoke(cli, list(args), obj=ctx, catch_exceptions=False)


def test_workers_shows_each_worker_its_steps_the_queues_and_beat(fake_runtime: Runtime) -> None:
    now = time.time()
    r = fake_runtime.redis
    r.lpush("jerp.site", json.dumps({"headers": {"jerp_sent_at": now - 120}}))
    r.zadd(keys.REDBEAT_SCHEDULE, {keys.REDBEAT + "nightly-backup": now + 3700})
    r.hset(keys.REDBEAT + "nightly-backup", "definition", json.dumps({"name": "nightly-backup", "task": "t"}))
    app = _app({"site@host": [{"id": "t1", "name": "jerp.step", "time_start": now - 30,
                               "kwargs": {"job_id": "abc123", "step": "migrate"}}]})
    result = _invoke(fake_runtime, app, "workers")
    assert result.exit_code == EXIT_OK, result.output
    out = result.output
    assert "WORKERS (1 alive)" in out and "site@host  queues jerp.control,jerp.site  running 1" in out
    assert "job abc123 step migrate" in out
    assert any(line.split()[:3] == ["jerp.site", "1", "2m"] for line in out.splitlines())
    assert "nightly-backup" in out and "in 1h" in out and "lock not held" in out

    data = json.loads(_invoke(fake_runtime, app, "--json", "workers").output)
    assert data["workers"][0]["tasks"][0]["job_id"] == "abc123"
    assert {q["name"]: q["depth"] for q in data["queues"]} == {"jerp.site": 1, "jerp.control": 0}
    assert data["beat"]["entries"][0]["name"] == "nightly-backup"


def test_workers_exits_1_when_none_answers(fake_runtime: Runtime) -> None:
    result = _invoke(fake_runtime, _app({}), "workers")
    assert result.exit_code == EXIT_JOB_FAILED and "none answered" in result.output


def _finish_later(rt: Runtime, job_id: str) -> None:
    def finish() -> None:
        record = rt.store.start_step(job_id, "backup", worker="w")
        rt.store.finish_step(job_id, record, "success")
        rt.store.set_state(job_id, "succeeded")

    threading.Timer(0.3, finish).start()


def test_wait_warns_when_no_worker_is_alive_and_still_follows_the_job(fake_runtime: Runtime) -> None:
    def finish_the_new_job() -> None:
        deadline = time.monotonic() + 10
        while not fake_runtime.store.list(limit=1) and time.monotonic() < deadline:
            time.sleep(0.02)
        _finish_later(fake_runtime, fake_runtime.store.list(limit=1)[0].id)

    threading.Thread(target=finish_the_new_job, daemon=True).start()
    result = _invoke(fake_runtime, _app({}), "enqueue", "backup", SITE, "--wait")
    assert result.exit_code == EXIT_OK
    assert "no worker is alive" in result.output  # CliRunner mixes stderr in
    job_id = fake_runtime.store.create("backup", ["backup"], site=SITE).id
    _finish_later(fake_runtime, job_id)
    watched = _invoke(fake_runtime, _app({}), "watch", job_id, "--poll", "0.05")
    assert watched.exit_code == EXIT_OK and "no worker is alive" in watched.output


def test_wait_says_nothing_when_a_worker_is_alive(fake_runtime: Runtime) -> None:
    job = fake_runtime.store.create("backup", ["backup"], site=SITE)
    _finish_later(fake_runtime, job.id)
    watched = _invoke(fake_runtime, _app({"w@h": []}), "watch", job.id, "--poll", "0.05")
    assert watched.exit_code == EXIT_OK and "no worker" not in watched.output
