"""Offboarding end to end: a worker, the stand-in bench on the real MariaDB, S3 over HTTP (moto's
server) with age encryption, and a fake Nginx Proxy Manager. The dry run changes nothing; the
confirmed run leaves only the final backup under its legal hold — restorable — and the prune job
deletes that once the hold has passed, with audit entries for all of it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from jerp_jobs.integrations.npm import NpmClient
from tests.e2e_support import ADMIN_PASSWORD, add_notes, jerpctl, rows_digest, run_bench, run_job, site_db, sql
from tests.fake_npm import FakeNpm, fake_npm  # noqa: F401 - fixture
from tests.s3_server import S3Server
from tests.test_offsite_e2e import age_identity, s3_env  # noqa: F401 - fixtures
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


@pytest.fixture
def npm_env(s3_env: dict[str, str], fake_npm: FakeNpm) -> dict[str, str]:
    return {**s3_env, "NPM_URL": fake_npm.url, "NPM_IDENTITY": fake_npm.identity, "NPM_SECRET": fake_npm.secret}


@pytest.fixture
def offboard_worker(npm_env: dict[str, str], tmp_path: Path) -> WorkerProcess:
    proc = WorkerProcess(npm_env, name="offboard", log_path=tmp_path / "offboard-worker.log").wait_ready()
    yield proc
    proc.stop()


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


def _keys(s3: S3Server, bucket: str, site: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"backups/{site}/")
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _databases(root_password: str) -> set[str]:
    return {row[0] for row in sql(root_password, "SHOW DATABASES")}


def _db_users(root_password: str, user: str) -> list[list[str]]:
    return sql(root_password, f"SELECT User, Host FROM mysql.user WHERE User = '{user}'")


def test_offboard_dry_run_then_confirmed_then_the_hold_expires(
    npm_env: dict[str, str], offboard_worker: WorkerProcess, site: str, bench_dir: Path, s3_server: S3Server,
    s3_bucket: str, mariadb_root_password: str, real_redis: redis.Redis, fake_npm: FakeNpm,
) -> None:
    database = site_db(bench_dir, site)
    add_notes(mariadb_root_password, database, 25)
    NpmClient(fake_npm.url, fake_npm.identity, fake_npm.secret).create_proxy_host(site)
    for _ in range(2):
        rc, job = run_job(npm_env, "backup", site)
        assert rc == 0, job.get("error")
        time.sleep(1.1)  # bench names backups by the second
    older = sorted(k for k in _keys(s3_server, s3_bucket, site) if k.endswith("manifest.json"))
    assert len(older) == 2
    add_notes(mariadb_root_password, database, 5, prefix="late")  # only the final backup has these
    digest = rows_digest(mariadb_root_password, database, "tabNote", "name, title, content")

    # no flag: refused, nothing started
    refused = jerpctl(npm_env, "enqueue", "offboard", site)
    assert refused.returncode == 2 and "--dry-run" in refused.stderr and "--confirm" in refused.stderr, refused.stderr

    # dry run: the inventory, nothing changed
    rc, job = run_job(npm_env, "offboard", site, "--dry-run")
    assert rc == 0 and job["state"] == "succeeded", job.get("error")
    assert list(_steps(job)) == ["inventory"]
    inventory = job["result"]["inventory"]
    assert inventory["database"] == database and len(inventory["offsite_backups"]) == 2
    assert inventory["proxy_host"].startswith("NPM proxy host ") and inventory["local_backup_files"] >= 2
    assert "db_password" not in json.dumps(job)
    assert (bench_dir / "sites" / site).is_dir() and database in _databases(mariadb_root_password)
    assert _db_users(mariadb_root_password, database), "the site's database user exists before"
    assert len(fake_npm.hosts) == 1

    # confirmed
    rc, job = run_job(npm_env, "offboard", site, "--confirm")
    assert rc == 0 and job["state"] == "succeeded", (job.get("error"), offboard_worker.logs()[-3000:])
    steps = _steps(job)
    assert all(state == "success" for name, state in steps.items() if not name.startswith(("abort-", "mark-"))), steps
    hold = job["result"]["legal_hold"]
    assert 1825 * 86400 < hold["until"] - time.time() <= 1826 * 86400
    # the site, its archived folder, its database and its user, its proxy host: gone
    assert not (bench_dir / "sites" / site).exists()
    assert not list((bench_dir / "archived" / "sites").glob(f"{site}*"))
    assert database not in _databases(mariadb_root_password)
    assert _db_users(mariadb_root_password, database) == []
    assert fake_npm.hosts == []
    # off-site: only the final backup and its hold
    keys = _keys(s3_server, s3_bucket, site)
    assert f"backups/{site}/legal-hold.json" in keys
    manifests = [k for k in keys if k.endswith("manifest.json")]
    assert manifests == [f"backups/{site}/{'/'.join(hold['timestamp'][i:j] for i, j in ((0, 4), (4, 6), (6, 8)))}"
                         f"/{hold['timestamp']}/manifest.json"] and manifests[0] not in older
    # jerp-jobs' own records of the site: gone; the audit trail: kept
    assert not real_redis.exists(f"jerp:backups:{site}", f"jerp:offsite:{site}", f"jerp:attention:{site}")
    trail = [json.loads(line) for line in jerpctl(npm_env, "--json", "audit", "--site", site).stdout.splitlines()]
    actions = [(e["action"], e["actor"].split(" ")[0]) for e in trail]
    assert ("job.created", "jerpctl") in actions and ("site.offboarded", "job") in actions
    assert jerpctl(npm_env, "enqueue", "offboard", site, "--confirm").returncode == 2  # no such site now

    # the held backup restores: a new site of that name gets the customer's data back, late rows included
    run_bench(bench_dir, "new-site", site, "--db-root-password", mariadb_root_password,
              "--admin-password", ADMIN_PASSWORD, "--mariadb-user-host-login-scope=%")
    rc, job = run_job(npm_env, "restore", site, "--from-offsite")
    assert rc == 0, job.get("error")
    assert rows_digest(mariadb_root_password, site_db(bench_dir, site), "tabNote", "name, title, content") == digest
    run_bench(bench_dir, "drop-site", site, "--db-root-password", mariadb_root_password, "--no-backup", "--force")

    # prune inside the hold keeps it; past it, deletes the backup and the hold, with an audit entry
    rc, job = run_job(npm_env, "prune", site)
    assert rc == 0 and not job["result"]["legal_hold"]["expired"], job
    assert manifests[0] in _keys(s3_server, s3_bucket, site)
    client = s3_server.client()
    key = f"backups/{site}/legal-hold.json"
    stored = json.loads(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps({**stored, "until": time.time() - 1}).encode())
    rc, job = run_job(npm_env, "prune", site)
    assert rc == 0 and job["result"]["legal_hold"]["expired"], job.get("error")
    assert _keys(s3_server, s3_bucket, site) == []
    trail = [json.loads(line) for line in jerpctl(npm_env, "--json", "audit", "--site", site).stdout.splitlines()]
    assert trail[-1]["action"] == "site.legal-hold-expired" and hold["timestamp"] in trail[-1]["detail"]


def test_offboard_refuses_without_an_offsite_store_and_a_failed_final_backup_deletes_nothing(
    npm_env: dict[str, str], env: dict[str, str], offboard_worker: WorkerProcess, site: str, bench_dir: Path,
    s3_server: S3Server, s3_bucket: str, mariadb_root_password: str, real_redis: redis.Redis,
) -> None:
    done = jerpctl(env, "enqueue", "offboard", site, "--confirm")  # env: no JERP_S3_BUCKET
    assert done.returncode == 2 and "JERP_S3_BUCKET" in done.stderr, done.stderr
    from tests.standin.layout import write_faults

    write_faults(bench_dir, {"fail": {"backup": [site]}})
    rc, job = run_job(npm_env, "offboard", site, "--confirm")
    write_faults(bench_dir, {})
    assert rc == 1 and job["state"] == "failed", job
    steps = _steps(job)
    assert steps["final-backup"] == "failed" and steps["drop-site"] in ("pending", "skipped"), steps
    assert steps["abort-maintenance-off"] == "success", steps
    assert (bench_dir / "sites" / site / "site_config.json").is_file()
    assert site_db(bench_dir, site) in _databases(mariadb_root_password)
    assert not json.loads((bench_dir / "sites" / site / "site_config.json").read_text()).get("maintenance_mode")
    assert _keys(s3_server, s3_bucket, site) == []
    assert real_redis.get(f"jerp:attention:{site}") is None
