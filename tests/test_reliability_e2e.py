"""Reliability on real Redis with real worker processes: a worker SIGKILLed mid-step, two
requests for one site, and no secret left behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jerp_jobs.jobs import JobStore
from tests.e2e_support import ADMIN_PASSWORD, jerpctl, run_job
from tests.standin.layout import read_calls, read_violations, write_faults
from tests.workers import VENV_BIN, WorkerProcess, wait_for

pytestmark = pytest.mark.services


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:
    """Short lock TTL and resume interval, so a lost worker is noticed in seconds."""
    return {**env, "JERP_LOCK_TTL": "6", "JERP_RESUME_INTERVAL": "5"}


@pytest.fixture
def beat(fast_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "jerp_jobs", "beat", "-s", str(tmp_path / "beat-schedule")],
        env={**os.environ, **fast_env}, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    yield proc
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _enqueue(env: dict[str, str], *args: str) -> str:
    done = jerpctl(env, "--json", "enqueue", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["job_id"]


def test_worker_sigkilled_mid_migrate_the_job_still_finishes_once(
    fast_env: dict[str, str], beat: subprocess.Popen[bytes], site: str, bench_dir: Path, real_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    write_faults(bench_dir, {"delay": {"migrate": 6.0}})
    first = WorkerProcess(fast_env, name="first", log_path=tmp_path / "first.log").wait_ready()
    job_id = _enqueue(fast_env, "migrate", site)
    store = JobStore(real_redis)
    marker = bench_dir / "sites" / site / ".standin-active"
    wait_for(lambda: store.get(job_id).step("migrate").state == "running" and marker.exists()
             and "migrate" in marker.read_text(), timeout=60, what="migrate to be running")
    first.kill()  # the whole worker, mid-step; the bench process it started lives on
    assert store.get(job_id).step("migrate").state == "running"
    second = WorkerProcess(fast_env, name="second", log_path=tmp_path / "second.log").wait_ready()
    try:
        job = wait_for(lambda: (j := store.get(job_id)).finished and j, timeout=120, what="the job to finish")
    finally:
        second.stop()
    assert job.state == "succeeded", (job.error, second.logs()[-2000:])
    normal = ["maintenance-on", "scheduler-pause", "wait-ready", "backup", "migrate", "clear-cache",
              "build-assets", "scheduler-resume", "maintenance-off"]
    assert [s.name for s in job.steps if s.state == "success"] == normal  # each recorded once, succeeded
    assert job.step("migrate").attempts == 2 and "worker was lost" in job.notes["resumed"]
    assert read_violations(bench_dir) == []  # never two bench processes on the site at once
    migrates = sorted((c["start"], c["end"]) for c in read_calls(bench_dir) if c["command"] == "migrate")
    assert len(migrates) == 2 and migrates[0][1] <= migrates[1][0]  # the retry waited for the orphan
    for command in ("set-maintenance-mode", "backup"):
        assert sum(c["command"] == command for c in read_calls(bench_dir)) in (1, 2)


def test_two_migrates_of_one_site_never_overlap(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, real_redis: redis.Redis
) -> None:
    write_faults(bench_dir, {"delay": {"migrate": 3.0}})
    first = _enqueue(env, "migrate", site)
    second = _enqueue(env, "migrate", site)
    store = JobStore(real_redis)
    note = wait_for(lambda: store.get(second).notes.get("waiting_for"), timeout=60, what="the second to wait")
    assert first in note  # the waiting job names the job in its way
    status = jerpctl(env, "status", second)
    assert f"waiting_for: site {site} is busy: held by job {first}" in status.stdout
    jobs = [wait_for(lambda j=j: (r := store.get(j)).finished and r, timeout=180, what="both jobs") for j in (first, second)]
    assert [j.state for j in jobs] == ["succeeded", "succeeded"]
    first_end = max(s.ended_at for s in jobs[0].steps if s.ended_at)
    second_start = min(s.started_at for s in jobs[1].steps if s.started_at)
    assert first_end <= second_start
    assert read_violations(bench_dir) == []


def test_no_secret_in_redis_or_logs_after_provision_backup_migrate_restore(
    env: dict[str, str], worker: WorkerProcess, bench_dir: Path, real_redis: redis.Redis, mariadb_root_password: str
) -> None:
    from tests.e2e_support import drop_site

    site = "secrets-e2e.example.com"
    try:
        for args in (("provision", site), ("backup", site), ("migrate", site)):
            rc, job = run_job(env, *args)
            assert rc == 0, job.get("error")
        dump = next(a["path"] for a in job["result"]["pre_migrate_backup"]["artifacts"] if a["kind"] == "database")
        rc, job = run_job(env, "restore", site, "--db", dump)
        assert rc == 0, job.get("error")
    finally:
        drop_site(bench_dir, site, mariadb_root_password)
    secrets = [mariadb_root_password.encode(), ADMIN_PASSWORD.encode()]
    keys = list(real_redis.scan_iter(count=1000))
    assert len(keys) > 10
    for key in keys:
        kind = real_redis.type(key)
        values: list[bytes] = [key, real_redis.dump(key) or b""]
        if kind == b"hash":
            values += [v for pair in real_redis.hgetall(key).items() for v in pair]
        elif kind == b"list":
            values += real_redis.lrange(key, 0, -1)
        elif kind == b"zset":
            values += real_redis.zrange(key, 0, -1)
        elif kind == b"string":
            values.append(real_redis.get(key) or b"")
        elif kind == b"stream":  # a job's live output
            values += [v for _, fields in real_redis.xrange(key) for v in fields.values()]
        for secret in secrets:
            assert not any(secret in v for v in values), f"secret found under {key!r}"
    assert any(k.startswith(b"jerp:output:") for k in keys)  # the live output was scanned too
    logs = worker.logs()
    assert "command.start" in logs and "new-site" in logs
    assert not any(s.decode() in logs for s in secrets)
