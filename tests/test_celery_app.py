"""The Celery app configures itself on first use, whatever that first use is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from tests.workers import VENV_BIN

pytestmark = pytest.mark.services


def _env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JERP_")}
    return {**env, "JERP_BROKER_URL": redis_url}


def test_celery_call_as_the_first_use_of_the_app_sends_the_task(redis_url: str, real_redis: redis.Redis) -> None:
    done = subprocess.run([str(VENV_BIN / "celery"), "-A", "jerp_jobs", "call", "jerp.ping"], env=_env(redis_url),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RecursionError" not in done.stderr
    assert len(done.stdout.strip()) == 36  # the task id
    assert real_redis.llen("jerp.control") == 1


def test_send_task_as_the_first_use_routes_by_the_configured_routes(redis_url: str, real_redis: redis.Redis) -> None:
    code = (
        "from jerp_jobs.celery import app\n"
        "app.send_task('jerp.step', kwargs={'job_id': 'x', 'step': 'y'})\n"
        "print(app.conf.timezone, app.conf.worker_prefetch_multiplier, sorted(app.conf.beat_schedule))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_env(redis_url), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert real_redis.llen("jerp.site") == 1 and real_redis.llen("jerp.control") == 0
    timezone, prefetch, *schedule = done.stdout.split(maxsplit=2)
    assert (timezone, prefetch) == ("UTC", "1")
    assert "nightly-backup" in schedule[0] or "backup" in schedule[0]
