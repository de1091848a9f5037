"""Beat on the real Redis: exactly one scheduler among several, a standby taking over, new cron
entries waiting for their time, and a run missed during downtime sent once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from tests.workers import VENV_BIN, wait_for

pytestmark = pytest.mark.services


class Beat:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "jerp_jobs", "beat", "--loglevel", "INFO"],
            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            start_new_session=True,
        )

    def sent(self, entry: str) -> int:
        return self.log_path.read_text(errors="replace").count(f"Sending due task {entry} ")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def beat_env(redis_url: str, real_redis: redis.Redis) -> dict[str, str]:
    return {"JERP_BROKER_URL": redis_url, "JERP_RESUME_INTERVAL": "5"}


@pytest.fixture
def start_beat(beat_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], Beat]]:
    started: list[Beat] = []

    def start(name: str) -> Beat:
        beat = Beat(beat_env, tmp_path / f"{name}.log")
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


def test_two_beats_schedule_once_and_the_standby_takes_over(start_beat: Callable[[str], Beat]) -> None:
    first, second = start_beat("first"), start_beat("second")
    # bounds are generous: two Celery starts on a loaded 2-core machine take tens of seconds, and a
    # standby takes over only when the killed Beat's lock (redbeat_lock_timeout, 30 s) expires
    wait_for(lambda: first.sent("resume-stalled-steps") + second.sent("resume-stalled-steps") >= 1, timeout=180,
             what="a first resume run")
    time.sleep(16)
    counts = sorted([first.sent("resume-stalled-steps"), second.sent("resume-stalled-steps")])
    assert counts[0] == 0, counts  # one Beat schedules; the other waits for the lock
    assert 2 <= counts[1] <= 6, counts  # every 5 s over ~16-20 s (ticks slip under load): not twice as many
    for beat in (first, second):  # new cron entries wait for their next time
        assert beat.sent("nightly-backup") == beat.sent("retention-prune") == beat.sent("restore-drill") == 0
    active, standby = (first, second) if first.sent("resume-stalled-steps") else (second, first)
    active.kill()
    wait_for(lambda: standby.sent("resume-stalled-steps") >= 1, timeout=180, what="the standby to take over")


def test_a_nightly_run_missed_during_downtime_runs_once(
    start_beat: Callable[[str], Beat], real_redis: redis.Redis
) -> None:
    from redbeat.decoder import RedBeatJSONEncoder

    earlier = start_beat("earlier")  # a Beat that ran before, and stored its schedule
    wait_for(lambda: earlier.sent("resume-stalled-steps") >= 1, timeout=180, what="the earlier Beat to run")
    earlier.stop()
    assert earlier.sent("nightly-backup") == 0
    # ... then Beat was down for three days: its last nightly run is three days old
    three_days_ago = datetime.now(timezone.utc) - timedelta(days=3)
    real_redis.hset("jerp:redbeat:nightly-backup", "meta",
                    json.dumps({"last_run_at": three_days_ago, "total_run_count": 7}, cls=RedBeatJSONEncoder))
    beat = start_beat("returning")
    wait_for(lambda: beat.sent("nightly-backup") >= 1, timeout=180, what="the missed nightly run")
    time.sleep(12)  # several ticks later: still once, not once per missed night
    assert beat.sent("nightly-backup") == 1
