"""Readiness and assets of a migrate, end to end, on a bench like a real one without its
services: no Frappe worker unless a ``bench worker`` runs, and no node packages (``bench build``
fails offline). jerpctl, Redis, a worker process, the stand-in bench, MariaDB."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MARIADB_PORT
from tests.e2e_support import run_job
from tests.standin.layout import BENCH_SCRIPT, create_bench, read_calls, site_config
from tests.workers import WorkerProcess, wait_for

pytestmark = pytest.mark.services


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    return create_bench(tmp_path / "frappe-bench", db_host="127.0.0.1", db_port=MARIADB_PORT,
                        always_on_worker=False, node_packages=False)


@pytest.fixture
def frappe_worker(bench_dir: Path) -> Iterator[callable]:
    """Starts ``bench worker`` (the Frappe RQ worker) on demand; stopped at the end."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([str(BENCH_SCRIPT), "worker", "--queue", "short,default,long"], cwd=bench_dir,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for(lambda: list((bench_dir / "sites" / ".standin-workers").glob("*.json")), timeout=30,
                 what="the Frappe worker to register")
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _steps(job: dict) -> dict[str, dict]:
    return {s["name"]: s for s in job["steps"]}


def _pending(bench_dir: Path, site: str) -> int:
    path = bench_dir / "sites" / site / "pending_jobs"
    return int(path.read_text().strip() or 0) if path.is_file() else 0


def test_no_frappe_worker_fails_wait_ready_at_once_and_a_worker_lets_it_proceed(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, frappe_worker,
) -> None:
    rc, first = run_job(env, "migrate", site, "--no-build")
    assert rc == 0, first.get("error")
    assert _steps(first)["build-assets"]["state"] == "skipped" and first["result"]["assets"]["reason"] == "--no-build"
    assert not any(c["command"] == "build" for c in read_calls(bench_dir))
    assert _pending(bench_dir, site) == 1  # migrate queued the search index rebuild; nothing runs it

    rc, stuck = run_job(env, "migrate", site, "--no-build")
    steps = _steps(stuck)
    assert rc == 1 and stuck["state"] == "failed"
    assert "no Frappe worker is online" in steps["wait-ready"]["error"]
    assert stuck["result"]["failure"]["class"] == "no-workers"
    assert steps["migrate"]["state"] == "skipped" and steps["abort-maintenance-off"]["state"] == "success"
    ours = [c for c in read_calls(bench_dir) if c["start"] >= stuck["created_at"]]
    # told at once: one readiness question and one doctor, not ten minutes of polling
    assert [c["command"] for c in ours].count("ready-for-migration") == 1
    assert [c["command"] for c in ours].count("doctor") == 1
    config = site_config(bench_dir, site)
    assert not config.get("maintenance_mode") and not config.get("pause_scheduler")

    frappe_worker()
    rc, done = run_job(env, "migrate", site, "--no-build")
    assert rc == 0 and done["state"] == "succeeded", done.get("error")
    wait_for(lambda: _pending(bench_dir, site) == 0, timeout=30, what="the worker to run the queued job")


def test_proceed_setting_migrates_without_a_worker(
    env: dict[str, str], tmp_path: Path, site: str, bench_dir: Path
) -> None:
    (bench_dir / "sites" / site / "pending_jobs").write_text("1\n")  # queued, and no worker
    worker = WorkerProcess({**env, "JERP_READY_WITHOUT_WORKERS": "proceed"}, name="proceed",
                           log_path=tmp_path / "proceed.log").wait_ready()
    try:
        rc, job = run_job(env, "migrate", site, "--no-build")
    finally:
        worker.stop()
    assert rc == 0 and job["state"] == "succeeded", job.get("error")
    assert job["result"]["ready"]["proceeded"] is True
    assert "JERP_READY_WITHOUT_WORKERS=proceed" in _steps(job)["wait-ready"]["output"]


def test_auto_skips_the_build_where_sites_assets_is_a_link_into_the_image(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, tmp_path: Path, frappe_worker,
) -> None:
    frappe_worker()
    image_assets = tmp_path / "image-assets"
    image_assets.mkdir()
    assets = bench_dir / "sites" / "assets"
    assets.rmdir()
    os.symlink(image_assets, assets)  # as frappe_docker's entrypoint links it
    rc, job = run_job(env, "migrate", site)
    assert rc == 0 and job["state"] == "succeeded", job.get("error")
    assert _steps(job)["build-assets"]["state"] == "skipped"
    assert "assets come from the image" in job["result"]["assets"]["reason"]
    assert not any(c["command"] == "build" for c in read_calls(bench_dir))


def test_always_builds_and_a_failed_offline_build_fails_the_job(
    env: dict[str, str], tmp_path: Path, site: str, bench_dir: Path, frappe_worker,
) -> None:
    frappe_worker()
    worker = WorkerProcess({**env, "JERP_BUILD_ASSETS": "always"}, name="always",
                           log_path=tmp_path / "always.log").wait_ready()
    try:
        rc, job = run_job(env, "migrate", site)
    finally:
        worker.stop()
    steps = _steps(job)
    assert rc == 1 and job["state"] == "failed"
    assert steps["migrate"]["state"] == "success" and steps["build-assets"]["state"] == "failed"
    assert "esbuild" in steps["build-assets"]["output"]
    # migrated: the site still comes back online
    assert steps["scheduler-resume"]["state"] == steps["maintenance-off"]["state"] == "success"
    assert [c["exit_code"] for c in read_calls(bench_dir) if c["command"] == "build"] == [1]


def test_migrate_all_no_build_migrates_every_site_without_building(
    env: dict[str, str], worker: WorkerProcess, make_site, bench_dir: Path, frappe_worker,
) -> None:
    frappe_worker()
    sites = sorted([make_site("nb"), make_site("nb")])
    rc, job = run_job(env, "migrate-all", "--no-build", "--canary", sites[0])
    assert rc == 0 and job["state"] == "succeeded", job.get("error")
    assert {s: e["state"] for s, e in job["result"]["sites"].items()} == dict.fromkeys(sites, "succeeded")
    assert not any(c["command"] == "build" for c in read_calls(bench_dir))
