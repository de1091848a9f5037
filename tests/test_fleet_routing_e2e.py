"""A fleet of two benches on real parts: one Celery worker per bench (``JERP_BENCH``), a control
worker, the real Redis and MariaDB, the stand-in bench in two bench folders. Jobs go to their
site's bench and are run by that bench's worker only; a backup-all of the fleet is one fan-out per
bench; a bench whose worker is down keeps its jobs waiting, visibly, while the other goes on.
(The same over Docker with TLS socket proxies: tests/test_fleet_stacks_e2e.py.)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import MARIADB_PORT
from tests.e2e_support import ADMIN_PASSWORD, drop_site, jerpctl, run_bench, run_job
from tests.standin.layout import BENCH_SCRIPT, create_bench
from tests.workers import WorkerProcess

BENCHES = ("alpha", "beta")


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, real_redis: redis.Redis, mariadb_root_password: str) -> Iterator[dict]:
    dirs = {name: create_bench(tmp_path / name / "frappe-bench", db_host="127.0.0.1", db_port=MARIADB_PORT)
            for name in BENCHES}
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text("".join(
        f'[[bench]]\nname = "{name}"\nrole = "{"production" if name == "alpha" else "staging"}"\n'
        f'compose_project = "{name}"\nsites_dir = "{dirs[name] / "sites"}"\n\n' for name in BENCHES))
    control = {
        "JERP_BROKER_URL": redis_url, "JERP_EXECUTOR": "local", "JERP_BENCH_BIN": str(BENCH_SCRIPT),
        "JERP_FLEET_FILE": str(fleet_file), "MARIADB_ROOT_PASSWORD": mariadb_root_password,
        "FRAPPE_ADMIN_PASSWORD": ADMIN_PASSWORD, "JERP_LOCK_TTL": "10", "JERP_WORKER_PING_TIMEOUT": "2",
    }
    sites = {}
    for name in BENCHES:
        site = f"{name}{uuid.uuid4().hex[:6]}.example.com"
        run_bench(dirs[name], "new-site", site, "--db-root-password", mariadb_root_password,
                  "--admin-password", ADMIN_PASSWORD, "--mariadb-user-host-login-scope=%")
        sites[name] = site
    workers: dict[str, WorkerProcess] = {}

    def start(name: str) -> WorkerProcess:
        env = {**control, "JERP_BENCH": name, "JERP_BENCH_DIR": str(dirs[name])}
        workers[name] = WorkerProcess(env, name=name, log_path=tmp_path / f"worker-{name}.log").wait_ready()
        return workers[name]

    workers["control"] = WorkerProcess(control, name="control", log_path=tmp_path / "worker-control.log").wait_ready()
    for name in BENCHES:
        start(name)
    try:
        yield {"env": control, "dirs": dirs, "sites": sites, "workers": workers, "start": start}
    finally:
        for proc in workers.values():
            proc.stop()
        for name in BENCHES:
            drop_site(dirs[name], sites[name], mariadb_root_password)


def _workers_of(env: dict, job_id: str) -> set[str]:
    status = json.loads(jerpctl(env, "--json", "status", job_id).stdout)
    return {step["worker"].split("@")[0] for step in status["steps"] if step.get("worker")}


def _backups(bench_dir: Path, site: str) -> list[str]:
    folder = bench_dir / "sites" / site / "private" / "backups"
    return sorted(p.name for p in folder.glob("*.sql.gz")) if folder.is_dir() else []


def test_jobs_run_on_their_sites_bench_and_a_fleet_backup_all_on_every_bench(fleet: dict) -> None:
    env, dirs, sites = fleet["env"], fleet["dirs"], fleet["sites"]

    listed = jerpctl(env, "--json", "sites", "--refresh", "--timeout", "60")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    where = {row["site"]: row["bench"] for row in json.loads(listed.stdout)}
    assert where == {sites["alpha"]: "alpha", sites["beta"]: "beta"}
    table = jerpctl(env, "sites").stdout
    assert any(line.split()[:2] == [sites["beta"], "beta"] for line in table.splitlines()), table

    code, job = run_job(env, "backup", sites["beta"], "--no-files")
    assert code == 0 and job["state"] == "succeeded", job.get("error")
    assert job["bench"] == "beta" and _workers_of(env, job["id"]) == {"beta"}
    assert _backups(dirs["beta"], sites["beta"]) and not _backups(dirs["alpha"], sites["beta"])

    refused = jerpctl(env, "enqueue", "backup", sites["beta"], "--bench", "alpha")  # not an option of backup
    assert refused.returncode == 2
    wrong = jerpctl(env, "enqueue", "provision", sites["beta"], "--bench", "alpha")
    assert wrong.returncode == 2 and "lives on bench beta, not alpha" in wrong.stderr

    code, fan = run_job(env, "backup-all", "--no-files", timeout=600)
    assert code == 0 and fan["state"] == "succeeded", fan.get("error")
    assert fan["bench"] is None and set(fan["result"]["sites"]) == set(BENCHES)
    for name in BENCHES:
        child = json.loads(jerpctl(env, "--json", "status", fan["result"]["sites"][name]["job_id"]).stdout)
        assert child["bench"] == name and set(child["result"]["sites"]) == {sites[name]}
        site_job = child["result"]["sites"][sites[name]]["job_id"]
        assert _workers_of(env, site_job) == {name}


def test_a_bench_whose_worker_is_down_keeps_its_jobs_waiting_while_the_other_goes_on(fleet: dict) -> None:
    env, sites, workers = fleet["env"], fleet["sites"], fleet["workers"]
    assert jerpctl(env, "sites", "--refresh").returncode == 0

    workers["beta"].kill()
    queued = jerpctl(env, "--json", "enqueue", "backup", sites["beta"], "--no-files")
    assert queued.returncode == 0, queued.stderr
    waiting_id = json.loads(queued.stdout)["job_id"]

    code, job = run_job(env, "backup", sites["alpha"], "--no-files")
    assert code == 0 and job["state"] == "succeeded" and _workers_of(env, job["id"]) == {"alpha"}

    assert json.loads(jerpctl(env, "--json", "status", waiting_id).stdout)["state"] == "queued"
    benches = jerpctl(env, "--json", "benches")
    assert benches.returncode == 1  # a bench without a live worker
    rows = {row["name"]: row for row in json.loads(benches.stdout)["benches"]}
    assert rows["beta"]["worker_alive"] is False and rows["beta"]["waiting"] >= 1
    assert rows["alpha"]["worker_alive"] is True and rows["alpha"]["waiting"] == 0
    assert "no worker consumes the queue of: beta" in jerpctl(env, "benches").stdout

    fleet["start"]("beta")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = json.loads(jerpctl(env, "--json", "status", waiting_id).stdout)["state"]
        if state not in ("queued", "running"):
            break
        time.sleep(1)
    assert state == "succeeded"
    assert _workers_of(env, waiting_id) == {"beta"}
