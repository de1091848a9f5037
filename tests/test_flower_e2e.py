"""Flower tells the truth: through its real HTTP API, against a real worker on the real Redis,
a step that failed is a FAILURE task and the steps carry readable names (KIND:SITE:STEP).

The worker runs with task events off (the default, JERP_TASK_EVENTS unset): Flower switches
them on at run time, as it does in production.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jerp_jobs.bootstrap import step_task_name
from tests.e2e_support import jerpctl, run_job
from tests.private_redis import free_port
from tests.standin.layout import write_faults
from tests.workers import VENV_BIN, WorkerProcess, wait_for

pytestmark = pytest.mark.services

AUTH = ("ops", "flower-e2e-pw")


@pytest.fixture
def flower(env: dict[str, str], worker: WorkerProcess, tmp_path: Path) -> Iterator[httpx.Client]:
    """``celery -A jerp_jobs flower`` on a free loopback port, behind basic auth; an HTTP client."""
    assert "JERP_TASK_EVENTS" not in env and "JERP_TASK_EVENTS" not in os.environ
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "jerp_jobs", "flower", "--address=127.0.0.1", f"--port={port}",
         f"--basic-auth={AUTH[0]}:{AUTH[1]}"],
        env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=AUTH, timeout=10)

    def answers() -> bool:
        try:
            return client.get("/api/workers").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, timeout=60, what=f"Flower to answer:\n{(tmp_path / 'flower.log').read_text()[-2000:]}")
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _tasks(flower: httpx.Client) -> dict[str, dict]:
    answer = flower.get("/api/tasks")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _events_flowing(env: dict[str, str], flower: httpx.Client, site: str) -> None:
    """Flower enables the worker's events a few seconds after it starts: clear the site's caches
    until one such job shows in Flower (events sent before that are never seen)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rc, job = run_job(env, "clear-cache", site, timeout=60)
        assert rc == 0, job.get("error")
        name = step_task_name("clear-cache", site, "clear-cache")
        try:
            wait_for(lambda: any(t["name"] == name and t["state"] == "SUCCESS" for t in _tasks(flower).values()),
                     timeout=6, what="a task in Flower")
            return
        except AssertionError:
            continue
    raise AssertionError("no task event reached Flower in 90 s")


def test_flower_shows_a_failed_step_as_failure_under_readable_names(
    env: dict[str, str], worker: WorkerProcess, flower: httpx.Client, site: str, bench_dir: Path,
    mariadb_root_password: str,
) -> None:
    _events_flowing(env, flower, site)
    write_faults(bench_dir, {"fail": {"migrate": [site]}})
    rc, job = run_job(env, "migrate", site)
    assert rc == 1 and job["state"] == "recovered", job.get("error")  # the recovery path still runs

    prefix = f"migrate:{site}:"
    failed_name = step_task_name("migrate", site, "migrate")

    def migrate_tasks() -> dict[str, dict] | None:
        found = {t["name"]: t for t in _tasks(flower).values() if str(t.get("name")).startswith(prefix)}
        done = [t for t in found.values() if t["state"] in ("SUCCESS", "FAILURE")]
        return found if len(done) == len(found) and any(t["state"] == "FAILURE" for t in done) \
            and f"{prefix}restore-pre-migrate" in found else None

    tasks = wait_for(migrate_tasks, timeout=30, what="the migrate's tasks in Flower")
    failures = [t for t in tasks.values() if t["state"] == "FAILURE"]
    assert len(failures) == 1, tasks
    [failure] = failures
    # the task that ran the migrate step (inline after the steps before it, or on its own) failed
    # and says which step failed, with the job
    assert failed_name in failure["exception"] and job["id"] in failure["exception"], failure
    assert "StepFailed" in failure["exception"]
    for secret in (mariadb_root_password, "Adm1n-e2e-Secret"):
        assert secret not in json.dumps(tasks)
    # the recovery step is a task of its own, and it succeeded
    assert tasks[f"{prefix}restore-pre-migrate"]["state"] == "SUCCESS"
    assert all(name.startswith(prefix) and name != "jerp.step" for name in tasks)
    # the task was not retried nor redelivered: the migrate ran once
    assert job["steps"][[s["name"] for s in job["steps"]].index("migrate")]["attempts"] == 1
    status = jerpctl(env, "--json", "status", job["id"])
    assert json.loads(status.stdout)["state"] == "recovered"
    time.sleep(3)  # a redelivery would show as another task, or another attempt
    assert len([t for t in _tasks(flower).values() if t["state"] == "FAILURE"]) == 1
    assert json.loads(jerpctl(env, "--json", "status", job["id"]).stdout)["steps"][4]["attempts"] == 1
