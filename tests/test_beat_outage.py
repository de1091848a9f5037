"""Beat and the worker outlive a broker outage, on a redis-server of the test's own that is
SIGKILLed and started again: Beat keeps running, says so with the URL's password masked, and
schedules again when Redis is back (a step whose worker was lost is published again); after an
outage that lost Beat's lock, and after a pause that let another Beat take it, exactly one
Beat schedules."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jerp_jobs.jobs import JobStore
from tests.private_redis import PrivateRedis
from tests.test_beat_e2e import Beat
from tests.workers import VENV_BIN, log_events, wait_for

pytestmark = pytest.mark.services

PASSWORD = "Br0ker-outage-Secret"
SITE = "outage.example.com"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis", password=PASSWORD).start()
    yield server
    server.kill()


@pytest.fixture
def env(broker: PrivateRedis) -> dict[str, str]:
    return {"JERP_BROKER_URL": broker.url, "JERP_RESUME_INTERVAL": "5"}


@pytest.fixture
def start_beat(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], Beat]]:
    started: list[Beat] = []

    def start(name: str) -> Beat:
        beat = Beat(env, tmp_path / f"{name}.log")
        started.append(beat)
        return beat

    yield start
    for beat in started:
        if beat.proc.poll() is None:
            os.killpg(beat.proc.pid, signal.SIGCONT)
        beat.stop()


@pytest.fixture
def control_worker(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker of the control queue only: it runs the resumer; published steps stay queued."""
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "jerp_jobs", "worker", "-Q", "jerp.control", "-c", "1",
             "-n", "outage@%h", "--without-mingle", "--without-gossip", "--loglevel", "INFO"],
            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    wait_for(lambda: " ready." in log_path.read_text(errors="replace"), timeout=60, what="the worker to be ready")
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _stranded_job(broker: PrivateRedis) -> str:
    """A backup job whose step is running in its record but held by no worker (lost 2 min ago)."""
    from jerp_jobs.enqueue import create_job
    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.settings import load_settings

    settings = load_settings(_env_file=None, broker_url=broker.url, executor="local",
                             bench_dir=Path("/nonexistent-bench"))
    rt = build_runtime(settings, client=broker.client())
    job = create_job(rt, "backup", site=SITE)
    rt.store.set_state(job.id, "running")
    record = rt.store.start_step(job.id, "backup", worker="lost@host")
    record.started_at = time.time() - 120
    rt.store.update_step(job.id, record)
    return job.id


def test_beat_and_the_worker_outlive_a_redis_outage_and_lost_steps_are_resumed_after_it(
    broker: PrivateRedis, start_beat: Callable[[str], Beat], control_worker: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    beat = start_beat("beat")
    wait_for(lambda: beat.sent("resume-stalled-steps") >= 1, timeout=60, what="a first resume run")

    broker.kill()
    time.sleep(8)  # several failed ticks: 1 + 2 + 4 s of backoff
    assert beat.proc.poll() is None, beat.log_path.read_text()[-3000:]
    assert control_worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    warnings = log_events(beat.log_path, "beat.broker_unreachable")
    assert len(warnings) >= 2, beat.log_path.read_text()[-3000:]
    assert re.fullmatch(rf"redis://:\*+@127\.0\.0\.1:{broker.port}/0", warnings[0]["broker"]), warnings[0]
    delays = [w["retry_in_s"] for w in warnings]
    assert delays[:3] == [1.0, 2.0, 4.0][: len(delays[:3])]  # exponential backoff

    broker.start()  # same port, same AOF folder
    sent_before = beat.sent("resume-stalled-steps")
    job_id = _stranded_job(broker)
    client = broker.client()
    store = JobStore(client)

    def resumed() -> bool:
        return "worker was lost" in store.get(job_id).notes.get("resumed", "")

    wait_for(resumed, timeout=60, what="the lost step to be published again after the outage")
    queued = [json.loads(m) for m in client.lrange("jerp.site", 0, -1)]
    assert any(m["headers"]["task"] == "jerp.step" and m["headers"]["kwargsrepr"].find(job_id) >= 0
               for m in queued), queued
    assert beat.sent("resume-stalled-steps") > sent_before
    assert beat.proc.poll() is None and control_worker.poll() is None
    assert log_events(beat.log_path, "beat.broker_reachable")
    for log in (beat.log_path, tmp_path / "worker.log"):
        assert PASSWORD not in log.read_text(errors="replace")


def _since(beat: Beat, offset: int) -> int:
    return beat.log_path.read_text(errors="replace")[offset:].count("Sending due task resume-stalled-steps ")


def _offset(beat: Beat) -> int:
    return len(beat.log_path.read_text(errors="replace"))


def _one_scheduler(first: Beat, second: Beat, seconds: float) -> tuple[Beat, Beat]:
    """Over the next ``seconds``, exactly one of the two Beats sends; returns (active, standby)."""
    marks = (_offset(first), _offset(second))
    time.sleep(seconds)
    counts = (_since(first, marks[0]), _since(second, marks[1]))
    assert sorted(counts)[0] == 0 and sorted(counts)[1] >= 2, counts
    return (first, second) if counts[0] else (second, first)


def test_after_an_outage_that_lost_the_lock_exactly_one_beat_schedules(
    broker: PrivateRedis, start_beat: Callable[[str], Beat]
) -> None:
    first, second = start_beat("first"), start_beat("second")
    wait_for(lambda: first.sent("resume-stalled-steps") + second.sent("resume-stalled-steps") >= 1, timeout=60,
             what="a first resume run")
    broker.kill()
    time.sleep(5)
    broker.wipe()  # Redis comes back empty: no lock, no schedule
    broker.start()
    assert first.proc.poll() is None and second.proc.poll() is None
    marks = (_offset(first), _offset(second))
    wait_for(lambda: _since(first, marks[0]) + _since(second, marks[1]) >= 1, timeout=60,
             what="a resume run after the outage")
    _one_scheduler(first, second, 16)
    assert broker.client().exists("jerp:redbeat::lock")
    assert first.proc.poll() is None and second.proc.poll() is None  # the other one stands by


def test_a_beat_that_lost_its_lock_while_away_stands_by(
    broker: PrivateRedis, start_beat: Callable[[str], Beat]
) -> None:
    first, second = start_beat("first"), start_beat("second")
    wait_for(lambda: first.sent("resume-stalled-steps") + second.sent("resume-stalled-steps") >= 1, timeout=60,
             what="a first resume run")
    active, standby = _one_scheduler(first, second, 11)
    os.killpg(active.proc.pid, signal.SIGSTOP)  # away (paused, cut off) long enough to lose its lock
    client = broker.client()
    client.delete("jerp:redbeat::lock")  # ... which expires meanwhile
    mark = _offset(standby)
    wait_for(lambda: _since(standby, mark) >= 1, timeout=60, what="the standby to take over")
    os.killpg(active.proc.pid, signal.SIGCONT)
    new_active, new_standby = _one_scheduler(first, second, 16)
    assert new_active is standby and new_standby is active  # the returning Beat did not schedule
    assert active.proc.poll() is None, active.log_path.read_text()[-3000:]
    assert log_events(active.log_path, "beat.lock_lost") and log_events(active.log_path, "beat.standing_by")
