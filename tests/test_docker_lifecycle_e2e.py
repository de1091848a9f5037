"""The site lifecycle through the Docker executor: install-app-all, offboard and disaster recovery
(rescan, restore-all) driving the stand-in bench inside a container labelled as the compose
``backend`` service, over the real Docker Engine, with S3 over HTTP (moto's server), age
encryption and a fake Nginx Proxy Manager; data checked in MariaDB."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.e2e_support import ADMIN_PASSWORD, add_notes, jerpctl, rows_digest, run_job, sql, site_config, site_db
from tests.fake_npm import FakeNpm, fake_npm  # noqa: F401 - fixture
from tests.naming import unique_name
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.test_offsite_e2e import age_identity  # noqa: F401 - fixture
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.services, pytest.mark.docker]

BENCH = "/home/frappe/frappe-bench"


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


def _installed(root_password: str, bench_dir: Path, site: str) -> list[str]:
    rows = sql(root_password, "SELECT `defvalue` FROM `tabDefaultValue` WHERE `parent`='__global' "
               "AND `defkey`='installed_apps'", site_db(bench_dir, site))
    return json.loads(rows[0][0])


def _notes(root_password: str, bench_dir: Path, site: str) -> tuple[int, str]:
    return rows_digest(root_password, site_db(bench_dir, site), "tabNote", "name, title, content")


def test_apps_offboarding_and_disaster_recovery_in_the_backend_container(
    backend_container: Callable[..., object], bench_dir: Path, redis_url: str, real_redis: redis.Redis,
    mariadb_root_password: str, tmp_path: Path, s3_server: S3Server, s3_bucket: str,
    age_identity: tuple[str, Path], fake_npm: FakeNpm,
) -> None:
    project = unique_name("lifecycle")
    container = backend_container(bench_dir, project=project)
    recipient, identity_file = age_identity
    env = {
        "JERP_BROKER_URL": redis_url, "JERP_EXECUTOR": "docker", "JERP_COMPOSE_PROJECT": project,
        "JERP_BACKEND_SERVICE": "backend", "MARIADB_ROOT_PASSWORD": mariadb_root_password,
        "FRAPPE_ADMIN_PASSWORD": ADMIN_PASSWORD, "JERP_INSTALL_APPS": "nfse-pr", "JERP_LOCK_TTL": "10",
        "JERP_SITES_DIR": str(bench_dir / "sites"),
        "JERP_S3_BUCKET": s3_bucket, "JERP_S3_PREFIX": "backups", "JERP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "JERP_S3_REGION": s3_server.region, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "JERP_BACKUP_AGE_RECIPIENTS": recipient, "JERP_BACKUP_AGE_IDENTITY_FILE": str(identity_file),
        "NPM_URL": fake_npm.url, "NPM_IDENTITY": fake_npm.identity, "NPM_SECRET": fake_npm.secret,
    }
    worker = WorkerProcess(env, name="docker-lifecycle", log_path=tmp_path / "worker.log").wait_ready()
    keep, leave = (f"dl{tag}{uuid.uuid4().hex[:6]}.example.com" for tag in ("k", "l"))
    try:
        for site in (keep, leave):
            rc, job = run_job(env, "provision", site)
            assert rc == 0, (job.get("error"), worker.logs()[-2000:])
            assert _installed(mariadb_root_password, bench_dir, site) == ["frappe"]
        assert len(fake_npm.hosts) == 2

        # an app added to every site: canary first, each site backed up before its change
        rc, job = run_job(env, "install-app-all", "erpnext", "--canary", keep)
        assert rc == 0 and job["state"] == "succeeded", job.get("error")
        for site in (keep, leave):
            assert _installed(mariadb_root_password, bench_dir, site) == ["frappe", "erpnext"]

        rc, job = run_job(env, "uninstall-app", leave, "erpnext")
        assert rc == 0 and _steps(job)["uninstall-app"] == "success", job.get("error")
        assert _installed(mariadb_root_password, bench_dir, leave) == ["frappe"]

        add_notes(mariadb_root_password, site_db(bench_dir, keep), 30)
        add_notes(mariadb_root_password, site_db(bench_dir, leave), 10)
        for site in (keep, leave):
            rc, job = run_job(env, "backup", site)
            assert rc == 0 and job["result"]["offsite"]["verified"], job.get("error")
        kept = _notes(mariadb_root_password, bench_dir, keep)

        # one customer leaves: the site, its database, its archived folder and its proxy host go
        database = site_db(bench_dir, leave)
        rc, job = run_job(env, "offboard", leave, "--confirm")
        assert rc == 0 and job["state"] == "succeeded", (job.get("error"), worker.logs()[-3000:])
        assert not (bench_dir / "sites" / leave).exists()
        assert database not in {row[0] for row in sql(mariadb_root_password, "SHOW DATABASES")}
        archived = container.exec_run(["test", "-e", f"{BENCH}/{job['result']['archived_as']}"])  # type: ignore[attr-defined]
        assert archived.exit_code == 1, "the archived site folder is still in the container"
        assert [h["domain_names"] for h in fake_npm.hosts] == [[keep]]

        # the disaster: the remaining site and every record lost; rebuilt from the bucket alone
        gone = container.exec_run(  # type: ignore[attr-defined]
            ["bench", "drop-site", keep, "--db-root-password", mariadb_root_password, "--no-backup", "--force"],
            user="frappe", workdir=BENCH)
        assert gone.exit_code == 0, gone.output
        real_redis.flushdb()
        rescan = jerpctl(env, "backups", "--rescan")
        assert rescan.returncode == 0, rescan.stdout + rescan.stderr
        rc, job = run_job(env, "restore-all", "--from-offsite", timeout=900)
        assert rc == 0 and job["state"] == "succeeded", (job.get("error"), worker.logs()[-3000:])
        assert list(job["result"]["sites"]) == [keep]  # the offboarded customer stays gone
        assert _notes(mariadb_root_password, bench_dir, keep) == kept
        assert _installed(mariadb_root_password, bench_dir, keep) == ["frappe", "erpnext"]
        assert not site_config(bench_dir, keep).get("maintenance_mode")

        # local-only mode (no JERP_S3_BUCKET): backups succeed and local retention prunes
        worker.stop()
        local_env = {k: v for k, v in env.items() if not k.startswith(("JERP_S3_", "AWS_", "JERP_BACKUP_AGE"))}
        local_env["JERP_KEEP_LOCAL"] = "1"
        worker = WorkerProcess(local_env, name="docker-local", log_path=tmp_path / "local.log").wait_ready()
        taken = []
        for _ in range(2):
            rc, job = run_job(local_env, "backup", keep)
            assert rc == 0 and _steps(job)["upload-offsite"] == "skipped", job.get("error")
            taken.append(job["result"]["backup"]["timestamp"])
            time.sleep(1.1)  # bench names backups by the second
        assert job["result"]["local_only"] is True and taken[0] in job["result"]["local_removed"], job["result"]
        stamps = {p.name[:15] for p in (bench_dir / "sites" / keep / "private" / "backups").glob("*-database.sql.gz")}
        assert taken[1] in stamps and taken[0] not in stamps, stamps
    finally:
        worker.stop()
        for site in (keep, leave):
            container.exec_run(  # type: ignore[attr-defined]
                ["bench", "drop-site", site, "--db-root-password", mariadb_root_password, "--no-backup", "--force"],
                user="frappe", workdir=BENCH)
