"""Local backup sets removed once safe off-site leave the site's backup index too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e_support import jerpctl, run_job
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.services


def test_pruned_local_sets_are_no_longer_listed_as_local(
    env: dict[str, str], s3_server: S3Server, s3_bucket: str, site: str, bench_dir: Path, tmp_path: Path
) -> None:
    from tests.workers import WorkerProcess

    s3_env = {**env, "JERP_S3_BUCKET": s3_bucket, "JERP_S3_ENDPOINT_URL": s3_server.endpoint_url,
              "JERP_S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
              "JERP_KEEP_LOCAL": "1"}
    worker = WorkerProcess(s3_env, name="prune-index", log_path=tmp_path / "worker.log").wait_ready()
    try:
        rc, first = run_job(s3_env, "backup", site, "--no-files")
        assert rc == 0, first.get("error")
        rc, second = run_job(s3_env, "backup", site, "--no-files")
        assert rc == 0, second.get("error")
    finally:
        worker.stop()
    gone = first["result"]["backup"]["timestamp"]
    assert second["result"]["local_removed"] == [gone]
    folder = bench_dir / "sites" / site / "private" / "backups"
    assert not any(p.name.startswith(gone) for p in folder.iterdir())
    listed = json.loads(jerpctl(s3_env, "--json", "backups", site).stdout)
    local = {row["timestamp"] for row in listed if row["where"] == "local"}
    offsite = {row["timestamp"] for row in listed if row["where"] == "off-site"}
    assert gone not in local, listed
    assert second["result"]["backup"]["timestamp"] in local
    assert {gone, second["result"]["backup"]["timestamp"]} <= offsite
