"""The workflows through the Docker executor: a worker process on the host drives the stand-in
bench inside a container labelled as the compose ``backend`` service, over the real Docker
Engine; the data is checked in MariaDB."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e_support import ADMIN_PASSWORD, add_notes, fingerprint, run_job, site_config, site_db
from tests.naming import unique_name
from tests.standin.layout import read_violations, write_faults
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.services, pytest.mark.docker]


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


def test_provision_backup_migrate_restore_in_the_backend_container(
    backend_container: Callable[..., object], bench_dir: Path, redis_url: str, real_redis: object,
    mariadb_root_password: str, tmp_path: Path,
) -> None:
    project = unique_name("workflows")
    container = backend_container(bench_dir, project=project)
    env = {
        "JERP_BROKER_URL": redis_url,
        "JERP_EXECUTOR": "docker",
        "JERP_COMPOSE_PROJECT": project,
        "JERP_BACKEND_SERVICE": "backend",
        "MARIADB_ROOT_PASSWORD": mariadb_root_password,
        "FRAPPE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "JERP_INSTALL_APPS": "erpnext",
        "JERP_LOCK_TTL": "10",
        "JERP_SITES_DIR": str(bench_dir / "sites"),  # the worker reads backup files through it
    }
    worker = WorkerProcess(env, name="docker-e2e", log_path=tmp_path / "worker.log").wait_ready()
    site = f"dock{uuid.uuid4().hex[:6]}.example.com"
    try:
        rc, job = run_job(env, "provision", site)
        assert rc == 0, (job.get("error"), worker.logs()[-2000:])
        assert _steps(job)["install-app:erpnext"] == "success"
        db = site_db(bench_dir, site)
        add_notes(mariadb_root_password, db, 25)

        rc, backup = run_job(env, "backup", site)
        assert rc == 0, backup.get("error")
        dump = next(a for a in backup["result"]["backup"]["artifacts"] if a["kind"] == "database")
        assert (bench_dir / "sites" / dump["path"]).stat().st_size == dump["size"]
        before = fingerprint(mariadb_root_password, db)

        write_faults(bench_dir, {"fail": {"migrate": [site]}})
        rc, failed = run_job(env, "migrate", site)
        assert rc == 1 and failed["state"] == "recovered"
        assert fingerprint(mariadb_root_password, db) == before
        assert not site_config(bench_dir, site).get("maintenance_mode")

        write_faults(bench_dir, {})
        rc, migrated = run_job(env, "migrate", site)
        assert rc == 0, migrated.get("error")
        add_notes(mariadb_root_password, db, 3, prefix="later")
        rc, restored = run_job(env, "restore", site, "--db", dump["path"])
        assert rc == 0, restored.get("error")
        notes = fingerprint(mariadb_root_password, db)["tabNote"]
        assert notes[0] == "25"  # the 3 later rows are gone: the backup's data is back
        assert read_violations(bench_dir) == []
    finally:
        worker.stop()
        container.exec_run(  # type: ignore[attr-defined]
            ["bench", "drop-site", site, "--db-root-password", mariadb_root_password, "--no-backup", "--force"],
            user="frappe", workdir="/home/frappe/frappe-bench",
        )
