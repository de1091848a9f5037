"""End to end on real parts: jerpctl -> Redis -> a Celery worker process -> the stand-in bench
(local executor) -> MariaDB; the job record read back through jerpctl."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import redis

from tests.e2e_support import jerpctl
from tests.standin.layout import write_faults
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


def test_backup_through_jerpctl_and_a_real_worker(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, real_redis: redis.Redis,
    mariadb_root_password: str,
) -> None:
    done = jerpctl(env, "--json", "enqueue", "backup", site, "--wait")
    assert done.returncode == 0, done.stderr + worker.logs()[-3000:]
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["steps"][0]["state"] == "success"
    manifest = job["result"]["backup"]
    kinds = {a["kind"]: a for a in manifest["artifacts"]}
    assert set(kinds) == {"config", "database", "public_files", "private_files"}
    for artifact in manifest["artifacts"]:  # sizes and checksums are those of the real files
        data = (bench_dir / "sites" / artifact["path"]).read_bytes()
        assert artifact["size"] == len(data)
        assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    dump = gzip.decompress((bench_dir / "sites" / kinds["database"]["path"]).read_bytes()).decode()
    assert "CREATE TABLE" in dump

    status = jerpctl(env, "status", job["id"])
    assert status.returncode == 0 and "backup" in status.stdout and "success" in status.stdout
    listed = jerpctl(env, "--json", "jobs", "--site", site)
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]

    # Nothing secret anywhere in Redis (every key, every value) nor in the worker's logs.
    secrets = [mariadb_root_password.encode(), b"Adm1n-e2e-Secret"]
    for key in real_redis.scan_iter(count=1000):
        dumped = real_redis.dump(key) or b""
        assert not any(s in key or s in dumped for s in secrets), key
    assert not any(s.decode() in worker.logs() for s in secrets)


def test_failed_backup_exits_1_with_the_output_tail(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path
) -> None:
    write_faults(bench_dir, {"fail": {"backup": [site]}})
    done = jerpctl(env, "enqueue", "backup", site, "--no-files", "--wait")
    assert done.returncode == 1
    job_id = done.stdout.strip()
    status = jerpctl(env, "status", job_id)
    assert status.returncode == 1 and "failed" in status.stdout
    assert f"Backup failed for Site {site}" in status.stdout


def test_bad_site_name_enqueues_nothing(env: dict[str, str], real_redis: redis.Redis) -> None:
    done = jerpctl(env, "enqueue", "backup", "acme.com;reboot")
    assert done.returncode == 2 and "only letters a-z" in done.stderr
    assert real_redis.dbsize() == 0


def test_broker_down_exits_3_and_masks_the_password(env: dict[str, str]) -> None:
    down = {**env, "JERP_BROKER_URL": "redis://:Br0ker-Pw@127.0.0.1:1/0"}
    done = jerpctl(down, "enqueue", "backup", "acme.example.com")
    assert done.returncode == 3
    assert "127.0.0.1:1" in done.stderr and "Br0ker-Pw" not in done.stderr and "***" in done.stderr
