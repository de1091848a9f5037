"""Disaster recovery end to end: the bench loses every site and Redis loses everything; from the S3
bucket (moto's server) and the age identity alone, `jerpctl backups --rescan` rebuilds the backup
index and `restore-all --from-offsite` recreates every site — smallest first, each verified as a
drill verifies — with the data it had. An offboarded site (legal hold) is not brought back."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.e2e_support import add_notes, jerpctl, rows_digest, run_bench, run_job, site_config, site_db
from tests.s3_server import S3Server
from tests.test_offsite_e2e import age_identity, s3_env, s3_worker  # noqa: F401 - fixtures
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


def _digest(root_password: str, bench_dir: Path, site: str) -> tuple[int, str]:
    return rows_digest(root_password, site_db(bench_dir, site), "tabNote", "name, title, content")


def test_a_bench_rebuilt_from_the_bucket_alone(
    s3_env: dict[str, str], s3_worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path,
    s3_server: S3Server, s3_bucket: str, mariadb_root_password: str, real_redis: redis.Redis,
) -> None:
    sizes = {"big": 400, "small": 5, "mid": 80}
    sites = {label: make_site(f"dr{label}") for label in sizes}
    for label, site in sites.items():
        add_notes(mariadb_root_password, site_db(bench_dir, site), sizes[label])
        rc, job = run_job(s3_env, "backup", site)
        assert rc == 0 and job["result"]["offsite"]["verified"], job.get("error")
    digests = {site: _digest(mariadb_root_password, bench_dir, site) for site in sites.values()}
    offboarded = "gone.example.com"
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"backups/{offboarded}/legal-hold.json", Body=json.dumps(
        {"site": offboarded, "timestamp": "20260101_000000", "until": time.time() + 86400}).encode())

    # the disaster: every site gone from the bench (databases, users, folders, local backups), Redis empty
    for site in sites.values():
        run_bench(bench_dir, "drop-site", site, "--db-root-password", mariadb_root_password, "--no-backup", "--force")
    shutil.rmtree(bench_dir / "archived", ignore_errors=True)
    real_redis.flushdb()
    assert not [p for p in (bench_dir / "sites").iterdir() if (p / "site_config.json").exists()]

    started = time.monotonic()
    rescan = jerpctl(s3_env, "--json", "backups", "--rescan")
    assert rescan.returncode == 0, rescan.stdout + rescan.stderr
    fresh = {row["site"]: row for row in json.loads(rescan.stdout)}
    assert set(sites.values()) <= set(fresh) and offboarded not in fresh, fresh

    rc, job = run_job(s3_env, "restore-all", "--from-offsite", timeout=900)
    took = time.monotonic() - started
    assert rc == 0 and job["state"] == "succeeded", (job.get("error"), s3_worker.logs()[-3000:])
    assert job["result"]["order"] == [sites["small"], sites["mid"], sites["big"]]  # smallest first
    assert offboarded not in job["result"]["sites"]
    for site, entry in job["result"]["sites"].items():
        assert entry["state"] == "succeeded", (site, entry)
        child = json.loads(jerpctl(s3_env, "--json", "status", entry["job_id"]).stdout)
        steps = {s["name"]: s["state"] for s in child["steps"]}
        assert steps["create-site"] == "success" and steps["verify"] == "success", steps
        assert child["result"]["verified"]["problems"] == []
        assert _digest(mariadb_root_password, bench_dir, site) == digests[site]
        assert not site_config(bench_dir, site).get("maintenance_mode")
    print(f"\nDR: {len(sites)} sites rebuilt from the bucket in {took:.1f}s (rescan + restore-all)")

    # run again on the rebuilt bench: every site exists now, each restored in place (safety backup first)
    rc, again = run_job(s3_env, "restore", sites["small"], "--from-offsite", "--create", "--verify")
    assert rc == 0, again.get("error")
    steps = {s["name"]: s["state"] for s in again["steps"]}
    assert steps["create-site"] == "skipped" and steps["safety-backup"] == "success", steps


def test_a_created_site_that_cannot_be_restored_is_dropped_again(
    s3_env: dict[str, str], s3_worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path,
    mariadb_root_password: str, real_redis: redis.Redis,
) -> None:
    from tests.standin.layout import write_faults

    site = make_site("drfail")
    rc, job = run_job(s3_env, "backup", site)
    assert rc == 0, job.get("error")
    run_bench(bench_dir, "drop-site", site, "--db-root-password", mariadb_root_password, "--no-backup", "--force")
    write_faults(bench_dir, {"fail": {"restore": [site]}})
    rc, job = run_job(s3_env, "restore", site, "--from-offsite", "--create", "--verify")
    write_faults(bench_dir, {})
    assert rc == 1 and job["state"] == "failed", job
    steps = {s["name"]: s["state"] for s in job["steps"]}
    assert steps["create-site"] == "success" and steps["restore"] == "failed", steps
    assert steps["drop-created-site"] == "success" and steps["restore-safety-backup"] == "skipped", steps
    assert not (bench_dir / "sites" / site / "site_config.json").exists()
    assert real_redis.get(f"jerp:attention:{site}") is None
    refused = jerpctl(s3_env, "enqueue", "restore", site, "--create", "--db", "x.sql.gz")
    assert refused.returncode == 2 and "--create goes with --from-offsite" in refused.stderr, refused.stderr
