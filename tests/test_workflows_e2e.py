"""The site workflows end to end on real parts: jerpctl, Redis, a worker process, the stand-in
bench through the local executor, MariaDB. Data is checked in the database itself."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.e2e_support import (
    ADMIN_PASSWORD,
    add_notes,
    drop_site,
    fingerprint,
    jerpctl,
    rows_digest,
    run_job,
    site_config,
    site_db,
)
from tests.standin.layout import read_calls, read_violations, write_faults
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


def test_provision_makes_a_complete_site_and_records_the_proxy_host(
    env: dict[str, str], worker: WorkerProcess, bench_dir: Path, mariadb_root_password: str
) -> None:
    site = "prov-e2e.example.com"
    try:
        rc, job = run_job(env, "provision", site)
        assert rc == 0, (job.get("error"), worker.logs()[-3000:])
        steps = _steps(job)
        assert steps["new-site"] == steps["install-app:erpnext"] == steps["first-backup"] == "success"
        assert steps["install-app:nfse-pr"] == "skipped"  # not in this bench: reported, not an error
        assert steps["drop-site"] == "skipped"
        config = site_config(bench_dir, site)
        assert config["db_name"] == job["result"]["db_name"]
        apps = [row for row in fingerprint(mariadb_root_password, config["db_name"]) if row]
        assert "tabNote" in apps
        assert job["result"]["proxy_host"]["forward_port"] == 8080 and job["result"]["proxy_host"]["created"] is False
        new_site_call = next(c for c in read_calls(bench_dir) if c["command"] == "new-site")
        assert "--mariadb-user-host-login-scope=%" in new_site_call["argv"]
        # a second provision of the same site is refused, and does not drop the first
        rc, again = run_job(env, "provision", site)
        assert rc == 1 and "already exists" in again["error"] and _steps(again)["drop-site"] == "skipped"
        assert (bench_dir / "sites" / site / "site_config.json").exists()
    finally:
        drop_site(bench_dir, site, mariadb_root_password)


def test_failed_provision_leaves_no_half_made_site(
    env: dict[str, str], worker: WorkerProcess, bench_dir: Path, mariadb_root_password: str
) -> None:
    site = "halfmade-e2e.example.com"
    write_faults(bench_dir, {"fail": {"install-app": [site]}})
    rc, job = run_job(env, "provision", site)
    assert rc == 1
    steps = _steps(job)
    assert steps["install-app:erpnext"] == "failed" and steps["drop-site"] == "success"
    assert not (bench_dir / "sites" / site).exists()
    dbs = [row[0] for row in _databases(mariadb_root_password)]
    assert job["result"]["db_name"] not in dbs


def _databases(root_password: str) -> list[list[str]]:
    from tests.e2e_support import sql

    return sql(root_password, "SHOW DATABASES")


def test_migrate_runs_the_safe_chain(env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path) -> None:
    rc, job = run_job(env, "migrate", site)
    assert rc == 0, job.get("error")
    ran = [s["name"] for s in job["steps"] if s["state"] == "success"]
    assert ran == ["maintenance-on", "scheduler-pause", "wait-ready", "backup", "migrate", "clear-cache",
                   "build-assets", "scheduler-resume", "maintenance-off"]
    commands = [c["command"] for c in read_calls(bench_dir) if c.get("site") in (site, None)]
    assert commands.index("set-maintenance-mode") < commands.index("migrate") < commands.index("build")
    config = site_config(bench_dir, site)
    assert not config.get("maintenance_mode") and not config.get("pause_scheduler")


def test_failed_migrate_is_restored_to_the_exact_pre_migrate_data_and_online(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, mariadb_root_password: str
) -> None:
    db = site_db(bench_dir, site)
    add_notes(mariadb_root_password, db, 50)
    before = fingerprint(mariadb_root_password, db)
    write_faults(bench_dir, {"fail": {"migrate": [site]}, "fail_after_phase": {"migrate": 1}})
    rc, job = run_job(env, "migrate", site)
    assert rc == 1 and job["state"] == "recovered"
    steps = _steps(job)
    assert steps["migrate"] == "failed"
    assert steps["restore-pre-migrate"] == steps["recovered-maintenance-off"] == "success"
    assert "Traceback" in job["steps"][[s["name"] for s in job["steps"]].index("migrate")]["output"]
    assert fingerprint(mariadb_root_password, db) == before  # the half-migrated phase is gone
    config = site_config(bench_dir, site)
    assert not config.get("maintenance_mode") and not config.get("pause_scheduler")


def test_failed_recovery_marks_the_site_and_keeps_it_in_maintenance(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path
) -> None:
    write_faults(bench_dir, {"fail": {"migrate": [site], "restore": [site]}})
    rc, job = run_job(env, "migrate", site)
    assert rc == 1 and job["state"] == "failed"
    assert _steps(job)["mark-attention"] == "success"
    assert site_config(bench_dir, site).get("maintenance_mode") == 1
    write_faults(bench_dir, {})
    rc, refused = run_job(env, "backup", site)  # no automated workflow touches it
    assert rc == 1 and "needs attention" in refused["error"]
    assert all(s["state"] == "skipped" for s in refused["steps"])


def test_restore_from_backup_files_brings_the_data_back(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, mariadb_root_password: str
) -> None:
    db = site_db(bench_dir, site)
    add_notes(mariadb_root_password, db, 20)
    rc, backup = run_job(env, "backup", site)
    assert rc == 0
    backed_up = rows_digest(mariadb_root_password, db, "tabNote", "name, title, content")
    add_notes(mariadb_root_password, db, 5, prefix="after")
    files = {a["kind"]: a["path"] for a in backup["result"]["backup"]["artifacts"]}
    rc, job = run_job(env, "restore", site, "--db", Path(files["database"]).name,
                      "--files", files["public_files"], "--private-files", files["private_files"])
    assert rc == 0, job.get("error")
    assert _steps(job)["safety-backup"] == "success" and job["result"]["checked"]["db"]["manifest"] == f"manifest of job {backup['id']}"
    # the customer rows are those of the backup (the migrate after the restore may add columns)
    assert rows_digest(mariadb_root_password, db, "tabNote", "name, title, content") == backed_up
    assert not site_config(bench_dir, site).get("maintenance_mode")


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_dump_is_refused_before_the_database_is_touched(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, mariadb_root_password: str, damage: str
) -> None:
    db = site_db(bench_dir, site)
    add_notes(mariadb_root_password, db, 10)
    rc, backup = run_job(env, "backup", site, "--no-files")
    assert rc == 0
    dump = next(a["path"] for a in backup["result"]["backup"]["artifacts"] if a["kind"] == "database")
    path = bench_dir / "sites" / dump
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # a complete, valid gzip stream with other content
        path.write_bytes(gzip.compress(gzip.decompress(data).replace(b"customer data", b"tampered data")))
    before = fingerprint(mariadb_root_password, db)
    calls_before = len(read_calls(bench_dir))
    rc, job = run_job(env, "restore", site, "--db", dump)
    assert rc == 1 and _steps(job)["check-backup"] == "failed"
    assert ("does not match its manifest" in job["error"]) if damage == "tamper" else ("damaged" in job["error"] or "manifest" in job["error"])
    assert all(state in ("skipped",) for name, state in _steps(job).items() if name != "check-backup")
    assert fingerprint(mariadb_root_password, db) == before
    assert len(read_calls(bench_dir)) == calls_before  # bench was not even called


@pytest.mark.parametrize("path", ["../../etc/passwd.sql.gz", "/etc/x.sql.gz", "other.example.com/private/backups/x.sql.gz",
                                  "x.sql"])
def test_restore_paths_outside_the_backup_folder_are_refused_at_once(
    env: dict[str, str], real_redis: redis.Redis, path: str
) -> None:
    done = jerpctl(env, "enqueue", "restore", "acme.example.com", "--db", path)
    assert done.returncode == 2 and "Error" in done.stderr
    assert not any(k.startswith(b"jerp:job:") for k in real_redis.scan_iter())


def test_migrate_all_with_one_failing_site_restores_it_and_names_it(
    env: dict[str, str], worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path,
    mariadb_root_password: str,
) -> None:
    sites = sorted(make_site("ma") for _ in range(4))
    bad = sites[2]
    db = site_db(bench_dir, bad)
    add_notes(mariadb_root_password, db, 30)
    before = fingerprint(mariadb_root_password, db)
    write_faults(bench_dir, {"fail": {"migrate": [bad]}})
    rc, job = run_job(env, "migrate-all", "--concurrency", "2", timeout=600)
    assert rc == 1 and job["state"] == "failed"
    states = {s: e["state"] for s, e in job["result"]["sites"].items()}
    assert job["result"]["canary"] == sites[0] and states[sites[0]] == "succeeded"
    assert states[bad] == "recovered" and bad in job["error"]
    assert [states[s] for s in sites if s != bad] == ["succeeded"] * 3  # one failure is within the budget
    assert _steps(job)["clear-canary-cache"] == "success"
    assert fingerprint(mariadb_root_password, db) == before and not site_config(bench_dir, bad).get("maintenance_mode")
    calls = read_calls(bench_dir)
    builds = [c for c in calls if c["command"] == "build"]
    assert len(builds) == 1  # once for the bench, not once per site
    for site in sites:  # every migrated site's caches were cleared after the build
        if site != bad:
            assert max(c["start"] for c in calls if c["command"] == "clear-cache" and c["site"] == site) > builds[0]["end"]
    assert read_violations(bench_dir) == []


def test_migrate_all_stops_starting_sites_past_the_failure_budget(
    env: dict[str, str], worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path
) -> None:
    sites = sorted(make_site("mb") for _ in range(5))
    write_faults(bench_dir, {"fail": {"migrate": sites[1:3]}})
    rc, job = run_job(env, "migrate-all", "--concurrency", "1", "--budget", "1", timeout=600)
    assert rc == 1
    states = {s: e["state"] for s, e in job["result"]["sites"].items()}
    assert states[sites[1]] == states[sites[2]] == "recovered"
    assert states[sites[3]] == states[sites[4]] == "not-started"
    assert "not started" in job["error"]


def test_migrate_all_stops_when_the_canary_fails(
    env: dict[str, str], worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path
) -> None:
    sites = sorted(make_site("mc") for _ in range(3))
    write_faults(bench_dir, {"fail": {"migrate": [sites[0]]}})
    rc, job = run_job(env, "migrate-all", timeout=600)
    assert rc == 1 and _steps(job)["canary"] == "failed" and _steps(job)["sites"] == "skipped"
    assert {s: e["state"] for s, e in job["result"]["sites"].items()} == {
        sites[0]: "recovered", sites[1]: "not-started", sites[2]: "not-started"}


def test_backup_all_backs_up_every_site(
    env: dict[str, str], worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path,
    real_redis: redis.Redis, mariadb_root_password: str,
) -> None:
    sites = [make_site("bk") for _ in range(3)]
    rc, job = run_job(env, "backup-all", "--no-files", timeout=600)
    assert rc == 0, job.get("error")
    assert {s: e["state"] for s, e in job["result"]["sites"].items()} == {s: "succeeded" for s in sites}
    for s in sites:
        assert real_redis.zcard(f"jerp:backups:{s}") == 1
    # nothing secret anywhere in Redis after provision-free workflows either
    for key in real_redis.scan_iter(count=1000):
        value = real_redis.dump(key) or b""
        assert mariadb_root_password.encode() not in value and ADMIN_PASSWORD.encode() not in value


def test_cancel_during_a_migrate_stops_before_migrate_and_leaves_the_site_online(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, real_redis: redis.Redis
) -> None:
    from jerp_jobs.jobs import JobStore
    from tests.workers import wait_for

    write_faults(bench_dir, {"delay": {"backup": 3.0}})
    done = jerpctl(env, "--json", "enqueue", "migrate", site)
    job_id = json.loads(done.stdout)["job_id"]
    store = JobStore(real_redis)
    wait_for(lambda: store.get(job_id).step("backup").state == "running", timeout=60, what="the backup step")
    cancelled = jerpctl(env, "cancel", job_id)
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout
    watched = jerpctl(env, "--json", "watch", job_id)
    job = json.loads(watched.stdout)
    assert watched.returncode == 1 and job["state"] == "cancelled"
    steps = _steps(job)
    assert steps["backup"] == "success"  # the running step finished
    assert steps["migrate"] == "skipped" and steps["abort-maintenance-off"] == "success"
    config = site_config(bench_dir, site)
    assert not config.get("maintenance_mode") and not config.get("pause_scheduler")
