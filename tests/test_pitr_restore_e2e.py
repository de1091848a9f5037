"""``jerpctl enqueue restore SITE --to INSTANT [--as NEW]`` end to end: a worker process, the
stand-in bench on a MariaDB writing binary logs (as the platform's), S3 over HTTP (moto's
server) with age encryption and a signed index.

A writer changes two sites' databases continuously while the nightly backup (with its
point-in-time base) runs and afterwards; the test records the first site's rows at whole-second
instants. Restoring to an instant into a new site (``--as``) and in place gives exactly the rows
of that instant, the second site is untouched, and a binary log altered in the store makes the
restore refuse before the site is touched."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jerp_jobs.pitr import MariaDB, utc_text
from tests.e2e_support import ADMIN_PASSWORD, jerpctl, run_bench, run_job
from tests.pitr_support import BinlogServer, Writer, binlog_server, table_digest  # noqa: F401
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.standin.layout import BENCH_SCRIPT, create_bench
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services

TABLE = "CREATE TABLE `tabInvoice` (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(64)) ENGINE=InnoDB"


@pytest.fixture(scope="module")
def pitr_bench(binlog_server: BinlogServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_bench(tmp_path_factory.mktemp("pitr-job") / "frappe-bench", db_host="127.0.0.1",
                        db_port=binlog_server.port)


@pytest.fixture
def pitr_env(redis_url: str, real_redis: redis.Redis, pitr_bench: Path, binlog_server: BinlogServer,
             s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> dict[str, str]:
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "age-identity.txt"
    identity_file.write_text(str(identity) + "\n")
    identity_file.chmod(0o600)
    return {
        "JERP_BROKER_URL": redis_url,
        "JERP_EXECUTOR": "local",
        "JERP_BENCH_DIR": str(pitr_bench),
        "JERP_BENCH_BIN": str(BENCH_SCRIPT),
        "MARIADB_ROOT_PASSWORD": binlog_server.password,
        "FRAPPE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "JERP_LOCK_TTL": "10",
        "JERP_DB_HOST": "127.0.0.1",
        "JERP_DB_PORT": str(binlog_server.port),
        "JERP_S3_BUCKET": s3_bucket,
        "JERP_S3_PREFIX": "backups",
        "JERP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "JERP_S3_REGION": s3_server.region,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "JERP_BACKUP_AGE_RECIPIENTS": str(identity.to_public()),
        "JERP_BACKUP_AGE_IDENTITY_FILE": str(identity_file),
        "JERP_MANIFEST_KEY": "pitr-e2e-manifest-key-0123456789abcdef",
    }


@pytest.fixture
def pitr_worker(pitr_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(pitr_env, name="pitr", log_path=tmp_path / "pitr-worker.log").wait_ready()
    yield proc
    proc.stop()


def _new_site(bench: Path, password: str, prefix: str) -> str:
    name = f"{prefix}{time.time_ns() % 10**9:09d}.example.com"
    run_bench(bench, "new-site", name, "--db-root-password", password, "--admin-password", ADMIN_PASSWORD,
              "--mariadb-user-host-login-scope=%")
    return name


def _db_name(bench: Path, site: str) -> str:
    return json.loads((bench / "sites" / site / "site_config.json").read_text())["db_name"]


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


def test_restore_to_an_instant_into_a_new_site_and_in_place_gives_exactly_that_instant(
    pitr_env: dict[str, str], pitr_worker: WorkerProcess, pitr_bench: Path, binlog_server: BinlogServer,
    s3_server: S3Server, s3_bucket: str,
) -> None:
    password = binlog_server.password
    db: MariaDB = binlog_server.client(pitr_bench)
    site, other = _new_site(pitr_bench, password, "pitr"), _new_site(pitr_bench, password, "other")
    site_db, other_db = _db_name(pitr_bench, site), _db_name(pitr_bench, other)
    for name in (site_db, other_db):
        db.query(TABLE, database=name)
    writer = Writer(db, [site_db, other_db]).start()
    try:
        time.sleep(1.5)
        rc, backup = run_job(pitr_env, "backup", site)
        assert rc == 0, (backup.get("error"), pitr_worker.logs()[-3000:])
        assert _steps(backup)["pitr-base"] == "success"
        base = backup["result"]["pitr_base"]
        offsite = backup["result"]["offsite"]
        assert offsite["pitr"]["coordinates"] == base["coordinates"] and offsite["pitr"]["database"] == site_db
        assert "pitr_base" in {a["kind"] for a in offsite["artifacts"]}
        assert not (pitr_bench / "sites" / base["path"]).exists()  # off-site only
        time.sleep(3.5)
        rc, later = run_job(pitr_env, "backup", site)  # a second base, while the writes go on
        assert rc == 0 and _steps(later)["pitr-base"] == "success", later.get("error")
        time.sleep(3.5)
    finally:
        writer.stop()
    states = dict(writer.states)
    newer_base = later["result"]["pitr_base"]["dumped_at"]
    instants = sorted(t for t in states if t >= base["dumped_at"])
    assert len(instants) >= 6, (instants, base["dumped_at"])
    first = next(t for t in instants[1:] if t < newer_base)  # from the first base
    second = [t for t in instants if t > newer_base][-2]  # from the second
    assert states[first] != states[second]
    other_before = table_digest(db, other_db)
    live_before = table_digest(db, site_db)

    # into a new site: nothing shipped reaches the instant yet, so the job ships first
    copy = f"copy{time.time_ns() % 10**9:09d}.example.com"
    rc, job = run_job(pitr_env, "restore", site, "--to", utc_text(first), "--as", copy)
    assert rc == 0, (job.get("error"), pitr_worker.logs()[-3000:])
    assert job["site"] == copy and job["params"]["from_site"] == site
    steps = _steps(job)
    assert steps["pitr-prepare"] == steps["create-site"] == steps["pitr-replay"] == steps["restore"] == "success"
    assert steps["safety-backup"] == "skipped"  # a new site: nothing to keep
    assert "shipping the binary logs now" in json.dumps(job)
    replayed = job["result"]["fetched"]["point_in_time"]
    assert replayed["events"] > 0 and replayed["binlogs"]
    assert table_digest(db, _db_name(pitr_bench, copy)) == states[first]
    assert table_digest(db, site_db) == live_before  # the source is only read
    assert table_digest(db, other_db) == other_before

    # a drill restores a random second of the window from both bases and compares every table
    rc, drill = run_job(pitr_env, "drill", site)
    assert rc == 0, (drill.get("error"), pitr_worker.logs()[-3000:])
    outcome = drill["result"]["pitr_drill"]
    assert _steps(drill)["pitr"] == "success" and outcome["compared"] and outcome["differ"] == []
    assert outcome["tables"] >= 1 and len(outcome["bases"]) == 2 and sum(outcome["events"]) > 0
    assert drill["result"]["drill"]["pitr"]["to"] == outcome["to"]

    # in place, to a later instant, with a zone given explicitly
    rc, job = run_job(pitr_env, "restore", site, "--to", utc_text(second) + " UTC")
    assert rc == 0, (job.get("error"), pitr_worker.logs()[-3000:])
    steps = _steps(job)
    assert steps["safety-backup"] == steps["restore"] == steps["maintenance-off"] == "success"
    assert "create-site" not in steps and "fetch-offsite" not in steps
    assert table_digest(db, site_db) == states[second]
    assert table_digest(db, other_db) == other_before
    made = job["result"]["fetched"]["files"]["db"]
    assert not (pitr_bench / "sites" / made).exists()  # the dump made for the restore is removed
    # the logs now hold the restore's DROP DATABASE, which no replay crosses: a backup follows,
    # with a new base
    listed = json.loads(jerpctl(pitr_env, "--json", "jobs", "--site", site, "--limit", "50").stdout)
    follow = [j for j in listed if j["kind"] == "backup" and j["created_at"] >= job["created_at"]]
    assert len(follow) == 1, [(j["kind"], j["created_at"]) for j in listed]
    listing = jerpctl(pitr_env, "backups", site)
    assert listing.returncode == 0, listing.stderr
    assert "+ point-in-time base" in listing.stdout
    assert f"point-in-time: any second from {utc_text(base['dumped_at'])}Z to " in listing.stdout
    assert "current RPO" in listing.stdout
    leftovers = db.query("SHOW DATABASES LIKE '\\_jerp\\_pitr\\_%'")
    assert leftovers == []  # the scratch databases are gone

    # an archived binary log altered in the store: refused before the site is touched
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="backups/_binlogs/")["Contents"]
    logs = sorted(o["Key"] for o in listed if not o["Key"].endswith("index.json"))
    assert logs
    client.put_object(Bucket=s3_bucket, Key=logs[-1], Body=b"not the shipped log")
    restored = table_digest(db, site_db)
    rc, job = run_job(pitr_env, "restore", site, "--to", utc_text(second))
    assert rc != 0
    assert _steps(job)["pitr-replay"] == "failed" and _steps(job)["maintenance-on"] != "success"
    assert "binary log" in (job.get("error") or "") and "not the file shipped" in job["error"]
    assert table_digest(db, site_db) == restored
    config = json.loads((pitr_bench / "sites" / site / "site_config.json").read_text())
    assert not config.get("maintenance_mode")  # left online


def test_restore_to_is_refused_with_a_clear_error_before_any_job(pitr_env: dict[str, str]) -> None:
    future = utc_text(time.time() + 3600)
    done = jerpctl(pitr_env, "enqueue", "restore", "a.example.com", "--to", future)
    assert done.returncode == 2 and "in the future" in done.stderr
    done = jerpctl(pitr_env, "enqueue", "restore", "a.example.com", "--to", "2026-12-04 16:59:30", "--from-offsite")
    assert done.returncode == 2 and "--from-offsite" in done.stderr
    done = jerpctl(pitr_env, "enqueue", "restore", "a.example.com", "--to", "yesterday")
    assert done.returncode == 2 and "YYYY-MM-DD HH:MM:SS" in done.stderr
    done = jerpctl(pitr_env, "enqueue", "restore", "a.example.com", "--as", "b.example.com")
    assert done.returncode == 2 and "--as goes with --to" in done.stderr
    done = jerpctl(pitr_env, "enqueue", "restore", "a.example.com", "--to", "2026-12-04 16:59:30 Mars/Olympus")
    assert done.returncode == 2 and "unknown time zone" in done.stderr
