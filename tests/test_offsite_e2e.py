"""Off-site backups end to end: a worker process, the stand-in bench on MariaDB, and S3 over
HTTP (moto's server on loopback), with age encryption; data checked in the database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.e2e_support import add_notes, fingerprint, jerpctl, rows_digest, run_job, sql, site_db
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


@pytest.fixture
def age_identity(tmp_path: Path) -> tuple[str, Path]:
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "age-identity.txt"
    path.write_text(str(identity) + "\n")
    path.chmod(0o600)
    return str(identity.to_public()), path


@pytest.fixture
def s3_env(env: dict[str, str], s3_server: S3Server, s3_bucket: str, age_identity: tuple[str, Path]) -> dict[str, str]:
    recipient, identity_file = age_identity
    return {
        **env,
        "JERP_S3_BUCKET": s3_bucket,
        "JERP_S3_PREFIX": "backups",
        "JERP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "JERP_S3_REGION": s3_server.region,
        "JERP_S3_SSE": "AES256",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "JERP_BACKUP_AGE_RECIPIENTS": recipient,
        "JERP_BACKUP_AGE_IDENTITY_FILE": str(identity_file),
        "JERP_KEEP_LOCAL": "1",
    }


@pytest.fixture
def s3_worker(s3_env: dict[str, str], tmp_path: Path) -> WorkerProcess:
    proc = WorkerProcess(s3_env, name="offsite", log_path=tmp_path / "offsite-worker.log").wait_ready()
    yield proc
    proc.stop()


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


def test_backup_is_copied_encrypted_and_verified_and_old_local_copies_go(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path, s3_server: S3Server,
    s3_bucket: str, mariadb_root_password: str,
) -> None:
    add_notes(mariadb_root_password, site_db(bench_dir, site), 40)
    jobs = []
    for _ in range(3):
        rc, job = run_job(s3_env, "backup", site)
        assert rc == 0, (job.get("error"), s3_worker.logs()[-2000:])
        jobs.append(job)
        import time

        time.sleep(1.1)  # bench names backups by the second
    offsite = jobs[-1]["result"]["offsite"]
    assert offsite["verified"] and offsite["encrypted"]
    stamp = offsite["timestamp"]  # bench's file names: the site's local time
    utc = offsite["utc_timestamp"]  # S3 keys: UTC
    prefix = f"backups/{site}/{utc[:4]}/{utc[4:6]}/{utc[6:8]}/{utc}/"
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]}
    assert prefix + "manifest.json" in keys and all(k.endswith((".age", "manifest.json")) for k in keys)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=next(k for k in keys if k.endswith(".age")))
    assert head["ServerSideEncryption"] == "AES256"
    assert offsite["stats"]["tabNote"] == 40
    # local copies: only the newest backup set remains (the others are safe off-site)
    local = sorted({p.name[:15] for p in (bench_dir / "sites" / site / "private" / "backups").iterdir()})
    assert local == [stamp]
    listing = jerpctl(s3_env, "--json", "backups")
    rows = {r["site"]: r for r in json.loads(listing.stdout)}
    assert listing.returncode == 0 and rows[site]["last_timestamp"] == stamp and not rows[site]["stale"]


def test_restore_from_offsite_brings_back_the_data_even_with_no_local_copy(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path, mariadb_root_password: str,
) -> None:
    db = site_db(bench_dir, site)
    add_notes(mariadb_root_password, db, 30)
    rc, backup = run_job(s3_env, "backup", site)
    assert rc == 0, backup.get("error")
    before = rows_digest(mariadb_root_password, db, "tabNote", "name, title, content")
    for path in (bench_dir / "sites" / site / "private" / "backups").iterdir():
        path.unlink()  # Frappe's own clean-up, or a lost volume
    sql(mariadb_root_password, "DELETE FROM `tabNote` WHERE name LIKE 'note-1%'", db)
    rc, job = run_job(s3_env, "restore", site, "--from-offsite")
    assert rc == 0, (job.get("error"), s3_worker.logs()[-2000:])
    assert _steps(job)["fetch-offsite"] == "success" and job["result"]["fetched"]["timestamp"] == backup["result"]["offsite"]["timestamp"]
    assert rows_digest(mariadb_root_password, db, "tabNote", "name, title, content") == before


def test_tampered_offsite_copy_is_refused_before_the_database_is_touched(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path, mariadb_root_password: str,
    s3_server: S3Server, s3_bucket: str,
) -> None:
    db = site_db(bench_dir, site)
    add_notes(mariadb_root_password, db, 10)
    rc, backup = run_job(s3_env, "backup", site, "--no-files")
    assert rc == 0
    dump_key = next(a["key"] for a in backup["result"]["offsite"]["artifacts"] if a["kind"] == "database")
    client = s3_server.client()
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=dump_key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=s3_bucket, Key=dump_key, Body=bytes(body))
    before = fingerprint(mariadb_root_password, db)
    rc, job = run_job(s3_env, "restore", site, "--from-offsite")
    assert rc == 1 and _steps(job)["fetch-offsite"] == "failed"
    assert "sha" in job["error"].lower() or "checksum" in job["error"].lower()
    assert all(state == "skipped" for name, state in _steps(job).items() if name != "fetch-offsite")
    assert fingerprint(mariadb_root_password, db) == before


def test_restore_drill_passes_and_leaves_nothing_behind(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path, mariadb_root_password: str,
    real_redis: redis.Redis,
) -> None:
    add_notes(mariadb_root_password, site_db(bench_dir, site), 15)
    rc, _ = run_job(s3_env, "backup", site)
    assert rc == 0
    databases_before = {r[0] for r in sql(mariadb_root_password, "SHOW DATABASES")}
    rc, job = run_job(s3_env, "drill", site)
    assert rc == 0, (job.get("error"), s3_worker.logs()[-2000:])
    drill = job["result"]["drill"]
    assert drill["passed"] and drill["timings_s"]["restore"] >= 0
    assert job["result"]["verified"]["problems"] == [] and job["result"]["verified"]["rows"] > 15
    scratch = job["result"]["scratch"]
    assert not (bench_dir / "sites" / scratch).exists() and not (bench_dir / "archived" / "sites" / scratch).exists()
    assert {r[0] for r in sql(mariadb_root_password, "SHOW DATABASES")} == databases_before
    assert json.loads(real_redis.hget("jerp:drills", site))["passed"] is True


def test_prune_applies_the_retention_policy(
    s3_env: dict[str, str], site: str, bench_dir: Path, tmp_path: Path,
) -> None:
    env = {**s3_env, "JERP_RETENTION": "last:1"}
    worker = WorkerProcess(env, name="prune", log_path=tmp_path / "prune.log").wait_ready()
    try:
        stamps = []
        for _ in range(3):
            rc, job = run_job(env, "backup", site, "--no-files")
            assert rc == 0
            stamps.append(job["result"]["offsite"]["timestamp"])
            import time

            time.sleep(1.1)
        rc, job = run_job(env, "prune", site)
        assert rc == 0, job.get("error")
        # all three are younger than the 1-day safety window: nothing may go yet
        assert job["result"]["deleted"] == []
    finally:
        worker.stop()


def test_bad_offsite_options_are_refused_before_anything_is_enqueued(
    s3_env: dict[str, str], real_redis: redis.Redis
) -> None:
    done = jerpctl(s3_env, "enqueue", "restore", "acme.example.com", "--from-offsite", "--db", "x.sql.gz")
    assert done.returncode == 2 and "takes no backup file" in done.stderr
    done = jerpctl(s3_env, "enqueue", "restore", "acme.example.com", "--from-offsite", "--at", "yesterday")
    assert done.returncode == 2 and "--at" in done.stderr
    assert not any(k.startswith(b"jerp:job:") for k in real_redis.scan_iter())
