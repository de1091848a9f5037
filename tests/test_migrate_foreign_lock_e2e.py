"""A migrate that meets Frappe's ``bench_migrate`` lock held by another process, end to end:
jerpctl, Redis, a worker process, the stand-in bench through the local executor, MariaDB.

The other process is either a real ``bench migrate`` run outside the platform, or a process
that holds the lock file with ``flock(2)``, as Frappe's ``filelock`` does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jerp_jobs.jobs import JobStore
from tests.e2e_support import jerpctl, run_bench, run_job, site_db, sql
from tests.standin.layout import BENCH_SCRIPT, read_calls, read_violations, site_config, write_faults
from tests.workers import WorkerProcess, wait_for

pytestmark = pytest.mark.services

HOLD = """
import fcntl, os, sys, time
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", repr(time.time()), flush=True)
"""


class Holder:
    """Another process holding a site's bench_migrate lock for ``seconds``."""

    def __init__(self, bench_dir: Path, site: str, seconds: float) -> None:
        path = bench_dir / "sites" / site / "locks" / "bench_migrate.lock"
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def released_at(self, timeout: float) -> float:
        out, _ = self.proc.communicate(timeout=timeout)
        return float(out.split()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for holder in made:
        holder.stop()


def _worker(env: dict[str, str], tmp_path: Path, name: str, **extra: str) -> WorkerProcess:
    return WorkerProcess({**env, **extra}, name=name, log_path=tmp_path / f"{name}.log").wait_ready()


def _enqueue(env: dict[str, str], *args: str) -> str:
    done = jerpctl(env, "--json", "enqueue", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["job_id"]


def _steps(job) -> dict[str, str]:
    return {s.name: s.state for s in job.steps}


def _patch_log(root_password: str, database: str) -> list[list[str]]:
    return sql(root_password, "SELECT `patch`, COUNT(*) FROM `tabPatch Log` GROUP BY `patch` ORDER BY `patch`",
               database)


def _calls_since(bench_dir: Path, since: float, command: str) -> list[dict]:
    return [c for c in read_calls(bench_dir) if c["command"] == command and c["start"] >= since]


def test_a_foreign_migrate_running_first_is_waited_for_and_nothing_is_touched_meanwhile(
    env: dict[str, str], tmp_path: Path, site: str, bench_dir: Path, mariadb_root_password: str,
) -> None:
    worker = _worker(env, tmp_path, "wait", JERP_FOREIGN_LOCK_WAIT="60")
    try:
        write_faults(bench_dir, {"delay": {"migrate": 4.0}})
        foreign = subprocess.Popen([str(BENCH_SCRIPT), "--site", site, "migrate"], cwd=bench_dir,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lock = bench_dir / "sites" / site / "locks" / "bench_migrate.lock"
        wait_for(lambda: _held(lock), timeout=30, what="the foreign migrate to take bench_migrate")
        write_faults(bench_dir, {})  # our own migrate runs without the delay
        rc, job = run_job(env, "migrate", site, "--no-build")
        assert foreign.wait(timeout=60) == 0
    finally:
        worker.stop()
    assert rc == 0 and job["state"] == "succeeded", (job.get("error"), worker.logs()[-3000:])
    foreign_end = max(c["end"] for c in read_calls(bench_dir) if c["command"] == "migrate" and c["exit_code"] == 0
                      and c["start"] < job["created_at"])
    ours = [c for c in read_calls(bench_dir) if c["start"] >= job["created_at"]]
    # nothing of the site was touched before the foreign migrate ended
    assert ours and min(c["start"] for c in ours) >= foreign_end
    assert [c["exit_code"] for c in ours if c["command"] == "migrate"] == [0]
    assert not any(c["command"] == "restore" for c in ours)
    # each patch ran once, by the foreign migrate; ours found nothing left to do
    assert [count for _, count in _patch_log(mariadb_root_password, site_db(bench_dir, site))] == ["1", "1"]
    assert read_violations(bench_dir) == []


def _held(lock: Path) -> bool:
    import fcntl
    import os

    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_lock_taken_after_maintenance_on_is_waited_for_then_the_site_migrates_once(
    env: dict[str, str], tmp_path: Path, site: str, bench_dir: Path, mariadb_root_password: str,
    real_redis: redis.Redis, holders: list[Holder],
) -> None:
    worker = _worker(env, tmp_path, "late", JERP_FOREIGN_LOCK_WAIT="60")
    store = JobStore(real_redis)
    try:
        write_faults(bench_dir, {"delay": {"backup": 3.0}})  # time to take the lock before our migrate
        job_id = _enqueue(env, "migrate", site, "--no-build")
        wait_for(lambda: store.get(job_id).step("backup").state == "running", timeout=60,
                 what="the pre-migrate backup")
        holders.append(Holder(bench_dir, site, seconds=6))
        released = holders[-1].released_at(timeout=60)
        job = wait_for(lambda: (j := store.get(job_id)).finished and j, timeout=120, what="the job to end")
    finally:
        worker.stop()
    assert job.state == "succeeded", (job.error, worker.logs()[-3000:])
    migrates = [c for c in read_calls(bench_dir) if c["command"] == "migrate"]
    # the first attempt met the lock and changed nothing; the next ran once the holder let go
    assert [c["exit_code"] for c in migrates] == [1, 0] and migrates[1]["start"] >= released
    assert job.result["foreign_lock"]["lock"] == "bench_migrate"
    assert not any(c["command"] == "restore" for c in read_calls(bench_dir))
    assert [count for _, count in _patch_log(mariadb_root_password, site_db(bench_dir, site))] == ["1", "1"]
    config = site_config(bench_dir, site)
    assert not config.get("maintenance_mode") and not config.get("pause_scheduler")


def test_a_foreign_holder_that_never_lets_go_fails_the_job_leaving_the_site_as_found(
    env: dict[str, str], tmp_path: Path, site: str, bench_dir: Path, mariadb_root_password: str,
    real_redis: redis.Redis, holders: list[Holder],
) -> None:
    run_bench(bench_dir, "--site", site, "scheduler", "pause")  # as the operator left it
    before_db = _patch_log(mariadb_root_password, site_db(bench_dir, site))
    worker = _worker(env, tmp_path, "never", JERP_FOREIGN_LOCK_WAIT="3")
    store = JobStore(real_redis)
    try:
        write_faults(bench_dir, {"delay": {"backup": 3.0}})
        job_id = _enqueue(env, "migrate", site, "--no-build")
        wait_for(lambda: store.get(job_id).step("backup").state == "running", timeout=60,
                 what="the pre-migrate backup")
        holders.append(Holder(bench_dir, site, seconds=600))
        job = wait_for(lambda: (j := store.get(job_id)).finished and j, timeout=120, what="the job to end")
        config = site_config(bench_dir, site)
        write_faults(bench_dir, {})
        holders[-1].stop()
        rc, again = run_job(env, "backup", site)  # no attention mark: automation still works on the site
    finally:
        worker.stop()
    assert rc == 0, again.get("error")
    steps = _steps(job)
    assert job.state == "failed" and "another process holds bench_migrate" in (job.error or "")
    assert job.result["failure"]["class"] == "lock-held" and job.result["failure"]["lock"] == "bench_migrate"
    assert steps["migrate"] == "failed" and steps["restore-pre-migrate"] == "skipped"
    assert steps["as-found-scheduler"] == "skipped" and steps["as-found-maintenance"] == "success"
    assert steps["mark-attention"] == "skipped" and not job.result.get("needs_attention")
    assert not any(c["command"] == "restore" for c in read_calls(bench_dir))
    assert not config.get("maintenance_mode") and config.get("pause_scheduler")  # exactly as before the job
    assert job.result["site_as_found"] == {"maintenance_mode": False, "pause_scheduler": True}
    assert _patch_log(mariadb_root_password, site_db(bench_dir, site)) == before_db  # never migrated, never restored


def test_a_foreign_holder_at_the_start_fails_the_job_before_it_changes_anything(
    env: dict[str, str], tmp_path: Path, site: str, bench_dir: Path, holders: list[Holder],
) -> None:
    holders.append(Holder(bench_dir, site, seconds=600))
    before = site_config(bench_dir, site)
    worker = _worker(env, tmp_path, "start", JERP_FOREIGN_LOCK_WAIT="2")
    try:
        started = time.time()
        rc, job = run_job(env, "migrate", site)
    finally:
        worker.stop()
    steps = {s["name"]: s["state"] for s in job["steps"]}
    assert rc == 1 and job["state"] == "failed" and "another process holds bench_migrate" in job["error"]
    assert "nothing was changed" in job["error"]
    assert steps["maintenance-on"] == "failed" and steps["abort-maintenance-off"] == "skipped"
    assert steps["mark-attention"] == "skipped"
    assert [c for c in read_calls(bench_dir) if c["start"] >= started] == []  # bench never ran
    assert site_config(bench_dir, site) == before
    assert before["db_password"] not in json.dumps(job)  # site_config.json was never printed into the record
