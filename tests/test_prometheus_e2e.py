"""A real Prometheus (Debian's binary) scrapes /metrics, served by uvicorn, after a real worker
ran a backup with the stand-in bench on the real Redis; its HTTP API then answers with the
values of that job."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_support import run_job
from tests.workers import VENV_BIN, WorkerProcess, wait_for

pytestmark = pytest.mark.services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def metrics_url(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The /metrics app under uvicorn on a free loopback port, with the e2e settings."""
    port = _free_port()
    proc = _start([str(VENV_BIN / "uvicorn"), "--factory", "jerp_jobs.metrics:make_app", "--host", "127.0.0.1",
                   "--port", str(port)], {**env, "JERP_WORKER_PING_TIMEOUT": "0.5"}, tmp_path / "uvicorn.log")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(url + "/healthz", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=30, what="uvicorn serving /metrics")
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def prometheus(metrics_url: str, tmp_path: Path) -> Iterator[str]:
    """Debian's prometheus on a free port, scraping the app every two seconds."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (tests/services/packages.sh installs it)"
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    target = urllib.parse.urlsplit(metrics_url).netloc
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        # a scrape waits JERP_WORKER_PING_TIMEOUT for the workers' answer: the timeout must exceed it
        "scrape_configs": [{"job_name": "jerp", "scrape_timeout": "2s", "static_configs": [{"targets": [target]}]}],
    }))
    proc = _start([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{port}"], {}, tmp_path / "prometheus.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        answer = json.load(urllib.request.urlopen(url, timeout=5))
    except OSError:
        return []
    return answer["data"]["result"] if answer.get("status") == "success" else []


def _value(prometheus: str, expr: str) -> float | None:
    found = _query(prometheus, expr)
    return float(found[0]["value"][1]) if len(found) == 1 else None


def test_prometheus_scrapes_the_figures_of_a_real_job(
    env: dict[str, str], worker: WorkerProcess, site: str, prometheus: str, tmp_path: Path,
) -> None:
    code, job = run_job(env, "backup", site, "--no-files")
    assert code == 0, job

    def scraped() -> bool:
        return _value(prometheus, 'jerp_steps_ended_total{kind="backup",step="backup",state="success"}') == 1

    wait_for(scraped, timeout=60, interval=0.5, what="a scrape with the backup's step")
    assert _value(prometheus, 'up{job="jerp"}') == 1
    assert _value(prometheus, "jerp_up") == 1
    assert _value(prometheus, 'jerp_jobs{kind="backup",state="succeeded"}') == 1
    assert _value(prometheus, 'jerp_jobs_ended_total{kind="backup",state="succeeded"}') == 1
    assert _value(prometheus, 'jerp_step_duration_seconds_count{kind="backup",step="backup",state="success"}') == 1
    assert _value(prometheus, "jerp_workers_alive") == 1
    assert _value(prometheus, 'jerp_queue_depth{queue="jerp.site"}') == 0
    taken = _value(prometheus, f'jerp_backup_last_timestamp_seconds{{site="{site}",where="local"}}')
    assert taken is not None and job["started_at"] - 5 <= taken <= job["ended_at"] + 5
    age = _value(prometheus, f'jerp_backup_age_seconds{{site="{site}"}}')  # local-only mode: the local backup counts
    assert age is not None and 0 <= age < 300
    assert _value(prometheus, f'jerp_backup_stale{{site="{site}"}}') == 0
