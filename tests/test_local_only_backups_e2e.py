"""Backups without an off-site store (``JERP_S3_BUCKET`` unset), on the real Redis and MariaDB with a
worker and the stand-in bench: Beat's nightly job succeeds for every site, local retention prunes
the sets jerp-jobs took (never one it does not know), and freshness is measured on local backups."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.e2e_support import ADMIN_PASSWORD, bench_dir, jerpctl, make_site, worker  # noqa: F401 - fixtures
from tests.standin.layout import BENCH_SCRIPT
from tests.workers import VENV_BIN, WorkerProcess

pytestmark = pytest.mark.services


@pytest.fixture
def env(redis_url: str, real_redis: redis.Redis, bench_dir: Path, mariadb_root_password: str) -> dict[str, str]:
    """The worker's settings: the local executor on the stand-in bench, no off-site store, and
    two local backup sets kept per site."""
    return {
        "JERP_BROKER_URL": redis_url,
        "JERP_EXECUTOR": "local",
        "JERP_BENCH_DIR": str(bench_dir),
        "JERP_BENCH_BIN": str(BENCH_SCRIPT),
        "MARIADB_ROOT_PASSWORD": mariadb_root_password,
        "FRAPPE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "JERP_LOCK_TTL": "10",
        "JERP_KEEP_LOCAL": "2",
    }


def _beat_task(env: dict[str, str], call: str) -> str:
    """Runs the body of a Beat task in a process with the worker's settings, as Beat's task would."""
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", f"import json, jerp_jobs.tasks as t; print(json.dumps(t.{call}()))"],
        env={**os.environ, **env}, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _watch(env: dict[str, str], job_id: str) -> dict:
    done = jerpctl(env, "--json", "watch", job_id, timeout=600)
    return json.loads(done.stdout)


def _sets(bench_dir: Path, site: str) -> list[str]:
    folder = bench_dir / "sites" / site / "private" / "backups"
    return sorted({p.name[:15] for p in folder.iterdir() if p.is_file()})


def test_nightly_backups_without_s3_succeed_and_local_retention_prunes(
    env: dict[str, str], worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path,
    real_redis: redis.Redis,
) -> None:
    assert "JERP_S3_BUCKET" not in env and "JERP_S3_BUCKET" not in os.environ
    local_env = env
    sites = [make_site("lo") for _ in range(2)]
    # a set jerp-jobs did not take (by hand, or Frappe's scheduler): local retention never touches it
    foreign = bench_dir / "sites" / sites[0] / "private" / "backups" / f"20200101_000000-{sites[0].replace('.', '_')}-database.sql.gz"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_bytes(b"not ours")

    for run in range(3):
        job = _watch(local_env, _beat_task(local_env, "nightly_backup"))
        assert job["state"] == "succeeded", (run, job.get("error"))
        assert job["params"]["offsite"] is False
        for site in sites:
            child = _watch(local_env, job["result"]["sites"][site]["job_id"])
            steps = {s["name"]: s["state"] for s in child["steps"]}
            assert steps == {"backup": "success", "upload-offsite": "skipped", "prune-local": "success"}, steps
        time.sleep(1.1)  # the next run's backups get a later second in their file names

    for site in sites:
        ours = [json.loads(raw)["timestamp"] for raw in real_redis.zrange(f"jerp:backups:{site}", 0, -1)]
        assert len(ours) == 2, ours  # the third run removed the oldest of its three sets from the index
        expected = sorted(ours + (["20200101_000000"] if site == sites[0] else []))
        assert _sets(bench_dir, site) == expected  # and from the disk; the foreign set stays
    assert foreign.read_bytes() == b"not ours"

    # freshness is measured on the local backups: nothing stale, and the rows say so
    listed = jerpctl(local_env, "backups")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for site in sites:
        line = next(line for line in listed.stdout.splitlines() if line.startswith(site))
        assert "last local" in line and "STALE" not in line, line

    # the off-site Beat entries have nothing to do and say so instead of failing
    assert _beat_task(local_env, "prune_all") == []
    assert _beat_task(local_env, "drill_rotation") == []


WRAPPER = """#!{python}
# bench, with one twist: the first `backup` leaves a copy of its set in the site's backup folder,
# as a set of another job started in the same second would be (bench names sets by the second)
import os, shutil, subprocess, sys
from pathlib import Path
done = subprocess.run([{bench!r}, *sys.argv[1:]], capture_output=True, text=True)
sys.stdout.write(done.stdout); sys.stderr.write(done.stderr)
marker = Path({marker!r})
if "backup" in sys.argv and done.returncode == 0 and not marker.exists():
    marker.write_text("planted")
    site = sys.argv[sys.argv.index("--site") + 1]
    for line in done.stdout.splitlines():
        if line.split(":")[0].strip() in ("Config", "Database", "Public", "Private"):
            written = Path("sites") / line.split(":", 1)[1].split()[0].removeprefix("./")
            shutil.copyfile(written, Path("sites", site, "private", "backups", written.name))
sys.exit(done.returncode)
"""


def test_a_backup_named_like_an_existing_set_is_taken_again_in_the_next_second(
    env: dict[str, str], make_site: Callable[..., str], bench_dir: Path, tmp_path: Path,
) -> None:
    wrapper = tmp_path / "bench-same-second"
    wrapper.write_text(WRAPPER.format(python=os.path.realpath(VENV_BIN / "python"), bench=str(BENCH_SCRIPT),
                                      marker=str(tmp_path / "planted")))
    wrapper.chmod(0o755)
    site = make_site("ss")
    wenv = {**env, "JERP_BENCH_BIN": str(wrapper)}
    proc = WorkerProcess(wenv, name="same-second", log_path=tmp_path / "worker.log").wait_ready()
    try:
        done = jerpctl(wenv, "--json", "enqueue", "backup", site, "--no-files", "--wait", timeout=300)
        job = json.loads(done.stdout)
    finally:
        proc.stop()
    assert job["state"] == "succeeded", job.get("error")
    backup = next(s for s in job["steps"] if s["name"] == "backup")
    assert "bench names sets by the second" in backup["output"]
    planted = sorted(p.name[:15] for p in (bench_dir / "sites" / site / "private" / "backups").iterdir()
                     if p.is_file() and not p.name.startswith("."))
    ours = job["result"]["backup"]["timestamp"]
    assert len(set(planted)) == 2 and ours in planted and min(planted) < ours  # the planted set, then ours
