"""Sites far from UTC, end to end: a worker process, the stand-in bench on MariaDB (backup file
names and summary in the site's System Settings time zone, as Frappe's ``now_datetime()``), S3
over HTTP (moto). Also the manifest's app list on a site never migrated, and a restore that
keeps the site's scheduler state."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.e2e_support import jerpctl, run_bench, run_job, site_config
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.standin.layout import set_time_zone
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


@pytest.fixture
def s3_env(env: dict[str, str], s3_server: S3Server, s3_bucket: str) -> dict[str, str]:
    return {
        **env,
        "JERP_S3_BUCKET": s3_bucket,
        "JERP_S3_PREFIX": "backups",
        "JERP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "JERP_S3_REGION": s3_server.region,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "JERP_KEEP_LOCAL": "3",
    }


@pytest.fixture
def s3_worker(s3_env: dict[str, str], tmp_path: Path) -> WorkerProcess:
    proc = WorkerProcess(s3_env, name="tz", log_path=tmp_path / "tz-worker.log").wait_ready()
    yield proc
    proc.stop()


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%d_%H%M%S").replace(tzinfo=timezone.utc)


def test_backup_of_a_site_at_utc_plus_14_is_found_by_at_now_utc(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path, s3_server: S3Server,
    s3_bucket: str,
) -> None:
    set_time_zone(bench_dir, site, "Pacific/Kiritimati")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    rc, job = run_job(s3_env, "backup", site)
    assert rc == 0, (job.get("error"), s3_worker.logs()[-2000:])
    manifest = job["result"]["backup"]
    assert manifest["time_zone"] == "Pacific/Kiritimati" and job["result"]["time_zones"] == {site: "Pacific/Kiritimati"}
    # bench named the files 14 h ahead of UTC; the manifest keeps that and the UTC instant beside it
    taken = _utc(manifest["utc_timestamp"])
    assert before - timedelta(seconds=2) <= taken <= datetime.now(timezone.utc) + timedelta(seconds=2)
    assert _utc(manifest["timestamp"]) - taken == timedelta(hours=14)
    assert manifest["taken_at_local"].endswith("+14:00") and manifest["taken_at_utc"].endswith("Z")
    # the S3 key's date folders and stamp are UTC
    stamp = manifest["utc_timestamp"]
    prefix = f"backups/{site}/{stamp[:4]}/{stamp[4:6]}/{stamp[6:8]}/{stamp}/"
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix=prefix).get("Contents", [])}
    assert prefix + "manifest.json" in keys
    rows = json.loads(jerpctl(s3_env, "--json", "backups", site).stdout)
    assert {(r["utc_timestamp"], r["timestamp"], r["time_zone"]) for r in rows} == {
        (stamp, manifest["timestamp"], "Pacific/Kiritimati")}

    time.sleep(2)
    now_utc = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    rc, restored = run_job(s3_env, "restore", site, "--from-offsite", "--at", now_utc)
    assert rc == 0, (restored.get("error"), s3_worker.logs()[-2000:])
    assert restored["result"]["fetched"]["utc_timestamp"] == stamp


def test_at_picks_by_utc_for_a_site_at_utc_minus_10(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path,
) -> None:
    set_time_zone(bench_dir, site, "America/Adak")
    rc, first = run_job(s3_env, "backup", site, "--no-files")
    assert rc == 0, first.get("error")
    time.sleep(2.2)
    rc, second = run_job(s3_env, "backup", site, "--no-files")
    assert rc == 0, second.get("error")
    stamp = first["result"]["backup"]["utc_timestamp"]
    assert _utc(second["result"]["backup"]["utc_timestamp"]) > _utc(stamp)
    at = (_utc(stamp) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rc, restored = run_job(s3_env, "restore", site, "--from-offsite", "--at", at)
    assert rc == 0, restored.get("error")
    assert restored["result"]["fetched"]["utc_timestamp"] == stamp
    # the same instant written with the site's own offset
    local = (_utc(stamp) + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-10)))
    rc, again = run_job(s3_env, "restore", site, "--from-offsite", "--at", local.isoformat())
    assert rc == 0 and again["result"]["fetched"]["utc_timestamp"] == stamp


def test_manifest_of_a_site_never_migrated_lists_its_apps(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path, s3_server: S3Server,
    s3_bucket: str,
) -> None:
    run_bench(bench_dir, "--site", site, "install-app", "erpnext")
    listed = run_bench(bench_dir, "--site", site, "list-apps", "-f", "json")
    assert json.loads(listed.stdout) == {site: []}  # what real Frappe prints before the first migrate
    rc, job = run_job(s3_env, "backup", site, "--no-files")
    assert rc == 0, (job.get("error"), s3_worker.logs()[-2000:])
    assert job["result"]["offsite"]["apps"] == ["frappe", "erpnext"]
    assert job["result"]["offsite"]["apps_source"] == "installed_apps"
    stamp = job["result"]["offsite"]["utc_timestamp"]
    key = f"backups/{site}/{stamp[:4]}/{stamp[4:6]}/{stamp[6:8]}/{stamp}/manifest.json"
    stored = json.loads(s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert stored["apps"] == ["frappe", "erpnext"]


def test_manifest_after_install_app_on_a_migrated_site_lists_the_new_app(
    s3_env: dict[str, str], s3_worker: WorkerProcess, site: str, bench_dir: Path,
) -> None:
    """install-app leaves the Installed Application table (list-apps) as the last migrate left
    it, as real Frappe does: the manifest reads the installed_apps global instead."""
    run_bench(bench_dir, "--site", site, "migrate")
    run_bench(bench_dir, "--site", site, "install-app", "erpnext")
    listed = run_bench(bench_dir, "--site", site, "list-apps", "-f", "json")
    assert json.loads(listed.stdout) == {site: ["frappe"]}
    rc, job = run_job(s3_env, "backup", site, "--no-files")
    assert rc == 0, (job.get("error"), s3_worker.logs()[-2000:])
    assert job["result"]["offsite"]["apps"] == ["frappe", "erpnext"]
    assert job["result"]["offsite"]["apps_source"] == "installed_apps"


def _scheduler_enabled(bench_dir: Path, site: str) -> bool:
    out = run_bench(bench_dir, "--site", site, "execute", "frappe.db.get_single_value", "--args",
                    json.dumps(["System Settings", "enable_scheduler"])).stdout.strip()
    return out == "1"


def test_restore_keeps_the_scheduler_state_the_site_had(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path,
) -> None:
    run_bench(bench_dir, "--site", site, "scheduler", "enable")
    rc, backup = run_job(env, "backup", site, "--no-files")  # a backup taken with the scheduler on
    assert rc == 0, backup.get("error")
    db = next(a["path"] for a in backup["result"]["backup"]["artifacts"] if a["kind"] == "database")
    run_bench(bench_dir, "--site", site, "scheduler", "disable")  # switched off on purpose since
    run_bench(bench_dir, "--site", site, "scheduler", "pause")
    assert not _scheduler_enabled(bench_dir, site)
    rc, job = run_job(env, "restore", site, "--db", db)
    assert rc == 0, (job.get("error"), worker.logs()[-2000:])
    steps = {s["name"]: s["state"] for s in job["steps"]}
    assert steps["scheduler-state"] == "success" and "scheduler-enable" not in steps
    assert job["result"]["scheduler_before"] == {"enable_scheduler": False}
    assert not _scheduler_enabled(bench_dir, site)  # still off, as before the restore
    assert site_config(bench_dir, site).get("pause_scheduler") in (True, 1)  # site_config untouched


def test_restore_puts_an_enabled_scheduler_back_on(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path,
) -> None:
    assert not _scheduler_enabled(bench_dir, site)  # new sites start with it off
    rc, backup = run_job(env, "backup", site, "--no-files")
    assert rc == 0, backup.get("error")
    db = next(a["path"] for a in backup["result"]["backup"]["artifacts"] if a["kind"] == "database")
    run_bench(bench_dir, "--site", site, "scheduler", "enable")
    rc, job = run_job(env, "restore", site, "--db", db)
    assert rc == 0, job.get("error")
    assert job["result"]["scheduler_before"] == {"enable_scheduler": True}
    assert _scheduler_enabled(bench_dir, site)
