"""S3 misbehaving: part uploads failing then recovering, and S3 down for a while."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jerp_jobs.offsite.s3 import OffsiteStore
from tests.flaky_proxy import FlakyProxy
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.services


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FlakyProxy]:
    flaky = FlakyProxy(s3_server.endpoint_url)
    yield flaky
    flaky.down()


def _local_backup(tmp_path: Path, size: int) -> tuple[Path, dict]:
    sites = tmp_path / "sites"
    folder = sites / "acme.example.com" / "private" / "backups"
    folder.mkdir(parents=True)
    data = os.urandom(size)
    name = "20261129_030001-acme_example_com-database.sql.gz"
    (folder / name).write_bytes(data)
    manifest = {
        "site": "acme.example.com", "timestamp": "20261129_030001", "taken_at": None, "job_id": "j1",
        "with_files": False,
        "artifacts": [{"kind": "database", "path": f"acme.example.com/private/backups/{name}", "size": size,
                       "sha256": hashlib.sha256(data).hexdigest()}],
    }
    return sites, manifest


def _store(url: str, bucket: str) -> OffsiteStore:
    import boto3
    from boto3.s3.transfer import TransferConfig

    client = boto3.session.Session().client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    )
    config = TransferConfig(multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2,
                            preferred_transfer_client="classic")
    return OffsiteStore(client, bucket=bucket, prefix="b", transfer_config=config)


def test_failing_part_uploads_are_retried_and_the_upload_completes_verified(
    proxy: FlakyProxy, s3_bucket: str, tmp_path: Path
) -> None:
    sites, manifest = _local_backup(tmp_path, 12 * 1024**2)  # three parts
    proxy.fail_parts = 2
    offsite = _store(proxy.url, s3_bucket).upload_backup(manifest, sites)
    assert proxy.failed == 2
    assert offsite["verified"] and offsite["artifacts"][0]["stored_parts"] == 3


def test_s3_down_is_a_transient_error_and_a_later_attempt_succeeds(
    proxy: FlakyProxy, s3_bucket: str, tmp_path: Path
) -> None:
    from jerp_jobs.errors import TransientError

    sites, manifest = _local_backup(tmp_path, 1024**2)
    store = _store(proxy.url, s3_bucket)
    proxy.down()
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        store.upload_backup(manifest, sites)
    assert "acme.example.com" in str(caught.value) and ACCESS_KEY not in str(caught.value)
    assert time.monotonic() - started < 120
    proxy.up()
    assert store.upload_backup(manifest, sites)["verified"]


def test_backup_job_waits_out_an_s3_outage_and_never_drops_the_local_copy_first(
    env: dict[str, str], proxy: FlakyProxy, s3_bucket: str, site: str, bench_dir: Path, tmp_path: Path
) -> None:
    from tests.e2e_support import run_job
    from tests.workers import WorkerProcess

    s3_env = {**env, "JERP_S3_BUCKET": s3_bucket, "JERP_S3_ENDPOINT_URL": proxy.url, "JERP_S3_REGION": "us-east-1",
              "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "JERP_RETRY_BACKOFF": "2",
              "JERP_KEEP_LOCAL": "0"}
    worker = WorkerProcess(s3_env, name="outage", log_path=tmp_path / "outage.log").wait_ready()
    try:
        proxy.down()
        backups = bench_dir / "sites" / site / "private" / "backups"
        threading.Timer(8.0, proxy.up).start()  # S3 comes back after a while
        rc, job = run_job(s3_env, "backup", site, "--no-files")
        assert rc == 0, (job.get("error"), worker.logs()[-2000:])
        upload = next(s for s in job["steps"] if s["name"] == "upload-offsite")
        assert upload["state"] == "success" and upload["attempts"] >= 2
        assert "trying again" in job["notes"]["retrying"]
        assert job["result"]["offsite"]["verified"]
        # with JERP_KEEP_LOCAL=0 the local copy goes, but only once the off-site copy was verified
        assert job["result"]["local_removed"] == [job["result"]["offsite"]["timestamp"]]
        assert not any(backups.iterdir())
    finally:
        worker.stop()
