"""``jerp-run``: a worker and Beat that are started again when they exit and stopped together;
the supervisor's restart backoff and stop grace on plain child processes; the compose stack's
restart policies; the worker's broker reconnection settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from jerp_jobs.supervise import Supervisor
from tests.private_redis import PrivateRedis
from tests.workers import VENV_BIN, log_events, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _stop_when(supervisor: Supervisor, condition: Callable[[], bool], timeout: float) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        supervisor.request_stop(signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_child_that_keeps_exiting_is_started_again_with_a_doubling_capped_wait() -> None:
    quick = [sys.executable, "-c", "import sys; sys.exit(3)"]
    supervisor = Supervisor([("quick", quick)], first_backoff=0.05, max_backoff=0.2, poll=0.01)
    child = supervisor.children[0]
    starts_at: list[float] = []
    original = supervisor._start

    def recording_start(c):  # type: ignore[no-untyped-def]
        starts_at.append(time.monotonic())
        original(c)

    supervisor._start = recording_start  # type: ignore[method-assign]
    _stop_when(supervisor, lambda: child.starts >= 6, timeout=30)
    assert supervisor.run() == 0
    assert child.starts >= 6
    gaps = [b - a for a, b in zip(starts_at, starts_at[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and all(g >= 0.2 for g in gaps[2:5]), gaps
    assert child.backoff == 0.2  # capped


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = [sys.executable, "-c",
                "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"pathlib.Path({str(ready)!r}).touch(); time.sleep(120)"]
    supervisor = Supervisor([("stubborn", stubborn)], grace=1.0, poll=0.02)
    _stop_when(supervisor, ready.exists, timeout=30)
    started = time.monotonic()
    assert supervisor.run() == 0
    assert ready.exists() and time.monotonic() - started < 60
    assert supervisor.children[0].proc is None and supervisor.children[0].starts == 1


def test_a_configuration_error_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    done = subprocess.run([str(VENV_BIN / "jerp-run")], env={**os.environ, "JERP_RESUME_INTERVAL": "1"},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "JERP_RESUME_INTERVAL" in done.stderr and "supervise.started" not in done.stderr


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis", password="Sup3rvised-Secret").start()
    yield server
    server.kill()


@pytest.mark.services
def test_jerp_run_restarts_a_child_that_exits_and_sigterm_stops_both(broker: PrivateRedis, tmp_path: Path) -> None:
    log_path = tmp_path / "jerp-run.log"
    env = {**os.environ, "JERP_BROKER_URL": broker.url, "JERP_RESUME_INTERVAL": "5"}
    with open(log_path, "wb") as log:
        run = subprocess.Popen([str(VENV_BIN / "jerp-run"), "--grace", "30"], env=env, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log, start_new_session=True, cwd=tmp_path)
    pids: set[int] = set()
    try:
        def started() -> dict[str, list[int]]:
            found: dict[str, list[int]] = {}
            for event in log_events(log_path, "supervise.started"):
                found.setdefault(event["child"], []).append(event["pid"])
            pids.update(p for group in found.values() for p in group)
            return found

        first = wait_for(lambda: (s := started()).keys() == {"worker", "beat"} and s, timeout=60,
                         what="both children to start")
        wait_for(lambda: "Sending due task resume-stalled-steps" in log_path.read_text(errors="replace"),
                 timeout=60, what="Beat to schedule")
        wait_for(lambda: " ready." in log_path.read_text(errors="replace"), timeout=60, what="the worker to be ready")
        beat_pid, worker_pid = first["beat"][0], first["worker"][0]

        os.kill(beat_pid, signal.SIGKILL)
        exits = wait_for(lambda: log_events(log_path, "supervise.child_exited"), timeout=30, what="the exit to be noticed")
        assert exits[0]["child"] == "beat" and exits[0]["signal"] == "SIGKILL" and exits[0]["restart_in_s"] == 1.0
        again = wait_for(lambda: len(started().get("beat", [])) == 2 and started(), timeout=30,
                         what="Beat to be started again")
        new_beat = again["beat"][1]
        assert new_beat != beat_pid and _group_alive(new_beat)
        assert again["worker"] == [worker_pid] and _group_alive(worker_pid)  # the worker was left alone

        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=90) == 0, log_path.read_text()[-3000:]
        stopped = {e["child"] for e in log_events(log_path, "supervise.child_stopped")}
        assert stopped == {"worker", "beat"}
        for pid in pids:  # each child with its whole process group (the worker's pool) is gone
            assert not _group_alive(pid), pid
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
        for pid in pids:
            if _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_the_compose_stack_restarts_the_worker_and_beat() -> None:
    stack = yaml.safe_load((ROOT / "compose.jobs.yml").read_text())
    for service in ("jobs-worker", "jobs-control", "jobs-beat", "jobs-redis"):
        assert stack["services"][service].get("restart") in ("unless-stopped", "always"), service


def test_the_worker_reconnects_to_the_broker_for_as_long_as_it_takes() -> None:
    from jerp_jobs.celery import celery_config
    from jerp_jobs.settings import load_settings

    config = celery_config(load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0"))
    assert config["broker_connection_retry"] is True and config["broker_connection_retry_on_startup"] is True
    assert config["broker_connection_max_retries"] is None  # Celery's default gives up after 100 tries
    assert config["redbeat_redis_options"]["socket_timeout"] > 0  # a silent Redis fails a tick, never hangs it
