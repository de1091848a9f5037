"""A site moved between two benches end to end: two stand-in benches on the real MariaDB, one
worker per bench (JERP_BENCH) and one for the control plane on the real Redis, the off-site
store as moto's S3 server on loopback; the site's data checked in the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jerp_jobs import placement
from tests.conftest import MARIADB_PORT
from tests.e2e_support import add_notes, drop_site, fingerprint, jerpctl, run_bench, run_job, site_db, sql
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.standin.layout import create_bench
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


@pytest.fixture
def bench_b(tmp_path: Path, mariadb_root_password: str) -> Iterator[Path]:
    folder = create_bench(tmp_path / "bench-b", db_host="127.0.0.1", db_port=MARIADB_PORT)
    yield folder
    for config in (folder / "sites").glob("*/site_config.json"):
        drop_site(folder, config.parent.name, mariadb_root_password)


@pytest.fixture
def fleet_env(env: dict[str, str], tmp_path: Path, bench_dir: Path, bench_b: Path, s3_server: S3Server,
              s3_bucket: str) -> dict[str, str]:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f"""
[[bench]]
name = "a"
role = "production"
compose_project = "jerp-a"
sites_dir = "{bench_dir / 'sites'}"
npm_forward_host = "frontend-a"

[[bench]]
name = "b"
role = "production"
compose_project = "jerp-b"
sites_dir = "{bench_b / 'sites'}"
npm_forward_host = "frontend-b"
""")
    return {
        **env,
        "JERP_FLEET_FILE": str(fleet),
        "JERP_S3_BUCKET": s3_bucket,
        "JERP_S3_PREFIX": "backups",
        "JERP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "JERP_S3_REGION": s3_server.region,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }


@pytest.fixture
def fleet_workers(fleet_env: dict[str, str], bench_dir: Path, bench_b: Path, tmp_path: Path) -> Iterator[dict]:
    started: dict[str, WorkerProcess] = {}
    try:
        for name, extra in (("control", {}), ("a", {"JERP_BENCH": "a", "JERP_BENCH_DIR": str(bench_dir)}),
                            ("b", {"JERP_BENCH": "b", "JERP_BENCH_DIR": str(bench_b)})):
            started[name] = WorkerProcess({**fleet_env, **extra}, name=f"move-{name}",
                                          log_path=tmp_path / f"worker-{name}.log")
        for proc in started.values():
            proc.wait_ready()
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def _logs(workers: dict[str, WorkerProcess]) -> str:
    return "\n".join(f"--- {name}\n{proc.logs()[-3000:]}" for name, proc in workers.items())


def test_a_site_moved_from_bench_a_to_bench_b_keeps_its_data_and_is_gone_from_a(
    fleet_env: dict[str, str], fleet_workers: dict[str, WorkerProcess], site: str, bench_dir: Path, bench_b: Path,
    mariadb_root_password: str, real_redis: redis.Redis,
) -> None:
    db_a = site_db(bench_dir, site)
    run_bench(bench_dir, "--site", site, "migrate")  # as a site in use is: the move's migrate on b changes nothing
    add_notes(mariadb_root_password, db_a, 25)
    before = fingerprint(mariadb_root_password, db_a)
    key = "kQ3v-move-e2e-encryption-key-" + db_a  # what Frappe encrypts the site's password fields with
    config_a = bench_dir / "sites" / site / "site_config.json"
    config_a.write_text(json.dumps({**json.loads(config_a.read_text()), "encryption_key": key}))
    placement.assign(real_redis, site, "a")

    rc, job = run_job(fleet_env, "move", site, "--to", "b", timeout=600)

    assert rc == 0, (job.get("error"), _logs(fleet_workers))
    assert job["bench"] == "a" and job["state"] == "succeeded"
    steps = {s["name"]: s["state"] for s in job["steps"]}
    assert [n for n, state in steps.items() if state == "success"] == [
        "check", "maintenance-on", "scheduler-pause", "backup", "upload-offsite", "restore-target", "verify-target",
        "switch-map", "drop-source"]
    restore = json.loads(jerpctl(fleet_env, "--json", "status", job["result"]["restore_job"]).stdout)
    assert restore["bench"] == "b" and restore["state"] == "succeeded"
    assert restore["result"]["verified"]["problems"] == []
    # the restore ran on bench b's worker, the move's steps on bench a's
    assert {s["worker"].split("@")[0] for s in restore["steps"] if s.get("worker")} == {"move-b"}
    assert {s["worker"].split("@")[0] for s in job["steps"] if s.get("worker")} == {"move-a"}

    # on b, with every table and row as it was on a; gone from a (its folder kept in the archive)
    assert (bench_b / "sites" / site / "site_config.json").is_file()
    db_b = site_db(bench_b, site)
    assert db_b != db_a
    after = fingerprint(mariadb_root_password, db_b)
    # the restore's migrate on b rewrites the installed apps' record (when it ran): the same rows
    rewritten = "tabInstalled Application"
    assert after.pop(rewritten)[0] == before.pop(rewritten)[0]
    assert after == before and after["tabNote"][0] == "25"
    assert not (bench_dir / "sites" / site).exists()
    assert any(p.name.startswith(site) for p in (bench_dir / "archived" / "sites").iterdir())
    databases = {row[0] for row in sql(mariadb_root_password, "SHOW DATABASES")}
    assert db_a not in databases and db_b in databases
    config_b = json.loads((bench_b / "sites" / site / "site_config.json").read_text())
    assert not config_b.get("maintenance_mode")  # online on b
    # the source's encryption_key came along (through the backup's copy of its config), never shown
    assert config_b["encryption_key"] == key and config_b["db_name"] == db_b
    assert {s["name"]: s["state"] for s in restore["steps"]}["carry-config"] == "success"
    assert restore["result"]["carried_config"] == ["encryption_key"]
    assert key not in json.dumps(restore) and key not in json.dumps(job) and key not in _logs(fleet_workers)
    assert not list((bench_b / "sites" / site / "private").glob(".jerp-config-*"))
    assert placement.bench_of(real_redis, site) == "b"
    assert site not in placement.sites_on(real_redis, "a")


def test_a_move_onto_a_bench_that_has_the_site_already_goes_back_and_touches_neither_copy(
    fleet_env: dict[str, str], fleet_workers: dict[str, WorkerProcess], site: str, bench_dir: Path, bench_b: Path,
    mariadb_root_password: str, real_redis: redis.Redis,
) -> None:
    db_a = site_db(bench_dir, site)
    add_notes(mariadb_root_password, db_a, 7)
    before = fingerprint(mariadb_root_password, db_a)
    run_bench(bench_b, "new-site", site, "--db-root-password", mariadb_root_password, "--admin-password",
              "Other-copy-1", "--mariadb-user-host-login-scope=%")  # a stray copy the map does not know of
    db_b = site_db(bench_b, site)
    stray = fingerprint(mariadb_root_password, db_b)
    placement.assign(real_redis, site, "a")

    rc, job = run_job(fleet_env, "move", site, "--to", "b", timeout=600)

    assert rc == 1 and job["state"] == "failed", _logs(fleet_workers)
    steps = {s["name"]: s["state"] for s in job["steps"]}
    assert steps["restore-target"] == "failed" and "never restores over a site" in job["error"]
    assert steps["abort-scheduler-resume"] == steps["abort-maintenance-off"] == "success"
    assert all(steps[name] == "skipped" for name in ("verify-target", "switch-proxy", "switch-map", "drop-source"))
    config_a = json.loads((bench_dir / "sites" / site / "site_config.json").read_text())
    assert not config_a.get("maintenance_mode") and not config_a.get("pause_scheduler")  # a serves again
    assert fingerprint(mariadb_root_password, db_a) == before
    assert fingerprint(mariadb_root_password, db_b) == stray
    assert placement.bench_of(real_redis, site) == "a"
