"""Attacks on restore, and the clean-up of failed backups, end to end on real parts: jerpctl,
Redis, worker processes, the stand-in bench through the local executor, MariaDB.

Two sites, A and B, each with its own rows. Every attack tries to make A's restore load B's
dump (or a tampered one); each must be refused with a clear message, and A must still hold
exactly its own rows."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e_support import add_notes, fingerprint, jerpctl, run_job, site_db
from tests.standin.layout import write_faults
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services

MANIFEST_KEY = "manifest-key-for-tests-0123456789abcdef"


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


def _dump(job: dict) -> str:
    return next(a["path"] for a in job["result"]["backup"]["artifacts"] if a["kind"] == "database")


@pytest.fixture
def two_sites(
    env: dict[str, str], worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path, mariadb_root_password: str
) -> dict[str, dict]:
    """Sites A and B, each with its own rows and one backup taken by jerp-jobs."""
    out = {}
    for label in ("a", "b"):
        site = make_site(f"tenant{label}")
        db = site_db(bench_dir, site)
        add_notes(mariadb_root_password, db, 12 if label == "a" else 30, prefix=f"{label}-secret")
        rc, job = run_job(env, "backup", site, "--no-files")
        assert rc == 0, job.get("error")
        out[label] = {"site": site, "db": db, "dump": _dump(job), "job": job}
    return out


def _own_rows(root_password: str, tenant: dict) -> dict:
    return fingerprint(root_password, tenant["db"])


def _refused_at_enqueue(env: dict[str, str], real_redis: redis.Redis, site: str, db: str, needle: str) -> None:
    done = jerpctl(env, "enqueue", "restore", site, "--db", db)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert needle in done.stderr, done.stderr
    assert not any(k.startswith(b"jerp:job:") for k in real_redis.scan_iter())  # nothing enqueued


def test_symlink_to_another_sites_dump_is_refused(
    env: dict[str, str], real_redis: redis.Redis, two_sites: dict, bench_dir: Path, mariadb_root_password: str
) -> None:
    a, b = two_sites["a"], two_sites["b"]
    sites = bench_dir / "sites"
    before = _own_rows(mariadb_root_password, a)
    link = sites / a["site"] / "private" / "backups" / "20260101_000000-evil-database.sql.gz"
    link.symlink_to(sites / b["dump"])
    for jobs in real_redis.scan_iter(match="jerp:job:*"):
        real_redis.delete(jobs)
    _refused_at_enqueue(env, real_redis, a["site"], link.name, "is a symbolic link")
    assert _own_rows(mariadb_root_password, a) == before


def test_symlinked_backup_folder_is_refused(
    env: dict[str, str], real_redis: redis.Redis, two_sites: dict, bench_dir: Path, mariadb_root_password: str
) -> None:
    a, b = two_sites["a"], two_sites["b"]
    sites = bench_dir / "sites"
    before = _own_rows(mariadb_root_password, a)
    folder = sites / a["site"] / "private" / "backups"
    folder.rename(folder.with_name("backups.real"))
    folder.symlink_to(sites / b["site"] / "private" / "backups")  # an intermediate folder as a link
    try:
        for jobs in real_redis.scan_iter(match="jerp:job:*"):
            real_redis.delete(jobs)
        _refused_at_enqueue(env, real_redis, a["site"], Path(b["dump"]).name, "backups is a symbolic link")
    finally:
        folder.unlink()
        folder.with_name("backups.real").rename(folder)
    assert _own_rows(mariadb_root_password, a) == before


def test_hardlink_to_another_sites_dump_is_refused(
    env: dict[str, str], real_redis: redis.Redis, two_sites: dict, bench_dir: Path, mariadb_root_password: str
) -> None:
    a, b = two_sites["a"], two_sites["b"]
    sites = bench_dir / "sites"
    before = _own_rows(mariadb_root_password, a)
    link = sites / a["site"] / "private" / "backups" / "20260101_000000-copy-database.sql.gz"
    os.link(sites / b["dump"], link)
    for jobs in real_redis.scan_iter(match="jerp:job:*"):
        real_redis.delete(jobs)
    _refused_at_enqueue(env, real_redis, a["site"], link.name, "hard links")
    assert _own_rows(mariadb_root_password, a) == before


def test_dump_swapped_for_a_symlink_after_enqueue_is_refused_by_the_worker(
    env: dict[str, str], worker: WorkerProcess, two_sites: dict, bench_dir: Path, mariadb_root_password: str,
) -> None:
    """The file passed the enqueue check, then became a link to B's dump before the worker ran."""
    a, b = two_sites["a"], two_sites["b"]
    sites = bench_dir / "sites"
    before = _own_rows(mariadb_root_password, a)
    worker.stop()  # the job waits in the queue while the file is swapped
    done = jerpctl(env, "--json", "enqueue", "restore", a["site"], "--db", a["dump"])
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_id"]
    target = sites / a["dump"]
    target.unlink()
    target.symlink_to(sites / b["dump"])
    second = WorkerProcess(env, name="after-swap", log_path=bench_dir.parent / "after-swap.log").wait_ready()
    try:
        watched = jerpctl(env, "--json", "watch", job_id, timeout=300)
        job = json.loads(watched.stdout)
    finally:
        second.stop()
    assert job["state"] == "failed" and _steps(job)["check-backup"] == "failed"
    assert "is a symbolic link" in job["error"]
    assert _steps(job)["restore"] == "skipped"
    assert _own_rows(mariadb_root_password, a) == before


def test_dump_swapped_between_the_check_and_the_restore_is_refused_and_the_site_kept(
    env: dict[str, str], worker: WorkerProcess, two_sites: dict, bench_dir: Path, mariadb_root_password: str,
    real_redis: redis.Redis,
) -> None:
    """The swap lands after check-backup passed (while maintenance-on runs): the restore step
    opens the file again, right before use, and refuses it; A keeps its rows."""
    from jerp_jobs.jobs import JobStore
    from tests.workers import wait_for

    a, b = two_sites["a"], two_sites["b"]
    sites = bench_dir / "sites"
    before = _own_rows(mariadb_root_password, a)
    write_faults(bench_dir, {"delay": {"set-maintenance-mode": 4.0}})
    done = jerpctl(env, "--json", "enqueue", "restore", a["site"], "--db", a["dump"])
    job_id = json.loads(done.stdout)["job_id"]
    store = JobStore(real_redis)
    wait_for(lambda: store.get(job_id).step("maintenance-on").state == "running", timeout=120,
             what="maintenance-on to run")
    target = sites / a["dump"]
    target.unlink()
    target.symlink_to(sites / b["dump"])
    write_faults(bench_dir, {})
    job = json.loads(jerpctl(env, "--json", "watch", job_id, timeout=300).stdout)
    assert _steps(job)["check-backup"] == "success" and _steps(job)["restore"] == "failed"
    assert "is a symbolic link" in next(s["error"] for s in job["steps"] if s["name"] == "restore")
    assert job["state"] == "recovered"  # the safety backup put back: the site's own data
    assert _own_rows(mariadb_root_password, a) == before
    assert not [p for p in (sites / a["site"] / "private" / "backups").iterdir() if p.name.startswith(".jerp-restore-")]


def _tampered_dump(sites: Path, a: dict, b: dict) -> str:
    """A's dump replaced by B's rows (a complete, valid gzip stream); returns its SHA-256."""
    data = gzip.compress(gzip.decompress((sites / b["dump"]).read_bytes()))
    (sites / a["dump"]).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _edit_redis_manifest(client: redis.Redis, site: str, path: str, sha: str) -> None:
    key = f"jerp:backups:{site}"
    for raw, score in client.zrange(key, 0, -1, withscores=True):
        manifest = json.loads(raw)
        for entry in manifest["artifacts"]:
            if entry["path"] == path:
                entry["sha256"] = sha
                client.zrem(key, raw)
                client.zadd(key, {json.dumps(manifest, sort_keys=True): score})
                return
    raise AssertionError(f"no manifest of {site} lists {path}")


def test_manifest_edited_in_redis_to_match_a_tampered_dump_is_refused(
    env: dict[str, str], worker: WorkerProcess, two_sites: dict, bench_dir: Path, mariadb_root_password: str,
    real_redis: redis.Redis,
) -> None:
    a, b = two_sites["a"], two_sites["b"]
    sites = bench_dir / "sites"
    before = _own_rows(mariadb_root_password, a)
    sha = _tampered_dump(sites, a, b)
    _edit_redis_manifest(real_redis, a["site"], a["dump"], sha)
    rc, job = run_job(env, "restore", a["site"], "--db", a["dump"])
    assert rc == 1 and _steps(job)["check-backup"] == "failed"
    assert "differs from its copy beside the files" in job["error"]
    assert all(state == "skipped" for name, state in _steps(job).items() if name != "check-backup")
    assert _own_rows(mariadb_root_password, a) == before


@pytest.fixture
def keyed_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "JERP_MANIFEST_KEY": MANIFEST_KEY}


def test_with_a_manifest_key_editing_redis_and_the_copy_beside_the_files_is_refused(
    keyed_env: dict[str, str], make_site: Callable[..., str], bench_dir: Path, mariadb_root_password: str,
    real_redis: redis.Redis, tmp_path: Path,
) -> None:
    worker = WorkerProcess(keyed_env, name="keyed", log_path=tmp_path / "keyed.log").wait_ready()
    try:
        tenants = {}
        for label in ("a", "b"):
            site = make_site(f"key{label}")
            db = site_db(bench_dir, site)
            add_notes(mariadb_root_password, db, 7 if label == "a" else 19, prefix=f"{label}-secret")
            rc, job = run_job(keyed_env, "backup", site, "--no-files")
            assert rc == 0, job.get("error")
            assert job["result"]["backup"]["hmac"].startswith("hmac-sha256:")
            tenants[label] = {"site": site, "db": db, "dump": _dump(job), "job": job}
        a, b = tenants["a"], tenants["b"]
        sites = bench_dir / "sites"
        before = _own_rows(mariadb_root_password, a)
        sha = _tampered_dump(sites, a, b)
        _edit_redis_manifest(real_redis, a["site"], a["dump"], sha)
        side = sites / a["site"] / "private" / "backups" / f"{Path(a['dump']).name[:15]}-jerp-manifest.json"
        manifest = json.loads(side.read_text())
        next(e for e in manifest["artifacts"] if e["path"] == a["dump"])["sha256"] = sha
        side.write_text(json.dumps(manifest))
        rc, job = run_job(keyed_env, "restore", a["site"], "--db", a["dump"])
        assert rc == 1 and _steps(job)["check-backup"] == "failed"
        assert "signature that does not verify" in job["error"]
        assert _own_rows(mariadb_root_password, a) == before
    finally:
        worker.stop()


def test_a_dump_no_manifest_vouches_for_is_restored_only_when_asked_unverified(
    env: dict[str, str], worker: WorkerProcess, two_sites: dict, bench_dir: Path, mariadb_root_password: str,
) -> None:
    a = two_sites["a"]
    sites = bench_dir / "sites"
    before = _own_rows(mariadb_root_password, a)
    copy = sites / a["site"] / "private" / "backups" / "imported-database.sql.gz"
    shutil.copyfile(sites / a["dump"], copy)
    rc, job = run_job(env, "restore", a["site"], "--db", copy.name)
    assert rc == 1 and _steps(job)["check-backup"] == "failed"
    assert "no manifest lists" in job["error"] and "--unverified" in job["error"]
    assert _own_rows(mariadb_root_password, a) == before
    rc, job = run_job(env, "restore", a["site"], "--db", copy.name, "--unverified")
    assert rc == 0, job.get("error")
    assert job["result"]["checked"]["db"]["verified"] is False


# -- backups: partial files, disk full --------------------------------------------------------


def _backup_files(sites: Path, site: str) -> list[str]:
    return sorted(p.name for p in (sites / site / "private" / "backups").iterdir())


def _attempt_leftovers(sites: Path, site: str) -> list[str]:
    folder = sites / site / "private" / ".jerp-backup-attempts"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_a_backup_killed_by_its_timeout_leaves_no_partial_file(
    env: dict[str, str], site: str, bench_dir: Path, tmp_path: Path,
) -> None:
    """The stand-in, like bench, leaves the dump it had written when it is killed mid-backup."""
    sites = bench_dir / "sites"
    before = _backup_files(sites, site) if (sites / site / "private" / "backups").exists() else []
    write_faults(bench_dir, {"hang": ["backup"]})
    short = {**env, "JERP_COMMAND_TIMEOUT": "3"}
    worker = WorkerProcess(short, name="timeout", log_path=tmp_path / "timeout.log").wait_ready()
    try:
        rc, job = run_job(short, "backup", site, "--no-files")
    finally:
        worker.stop()
        write_faults(bench_dir, {})
    assert rc == 1 and _steps(job)["backup"] == "failed"
    assert _backup_files(sites, site) == before  # the killed attempt's dump is gone
    assert _attempt_leftovers(sites, site) == []


def test_a_worker_killed_mid_backup_leaves_only_the_retrys_files(
    env: dict[str, str], site: str, bench_dir: Path, real_redis: redis.Redis, tmp_path: Path,
) -> None:
    import subprocess as sp

    from jerp_jobs.jobs import JobStore
    from tests.workers import VENV_BIN, wait_for

    fast = {**env, "JERP_LOCK_TTL": "6", "JERP_RESUME_INTERVAL": "5"}
    sites = bench_dir / "sites"
    write_faults(bench_dir, {"delay": {"backup": 6.0}})
    beat_log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115
    beat = sp.Popen([str(VENV_BIN / "celery"), "-A", "jerp_jobs", "beat", "-s", str(tmp_path / "schedule")],
                    env={**os.environ, **fast}, stdin=sp.DEVNULL, stdout=beat_log, stderr=beat_log,
                    start_new_session=True)
    first = WorkerProcess(fast, name="first", log_path=tmp_path / "first.log").wait_ready()
    second = None
    try:
        done = jerpctl(fast, "--json", "enqueue", "backup", site, "--no-files")
        job_id = json.loads(done.stdout)["job_id"]
        store = JobStore(real_redis)
        marker = sites / site / ".standin-active"
        wait_for(lambda: store.get(job_id).step("backup").state == "running" and marker.exists()
                 and "backup" in marker.read_text(), timeout=60, what="the backup to run")
        first.kill()  # the bench process it started lives on and finishes its own files
        second = WorkerProcess(fast, name="second", log_path=tmp_path / "second.log").wait_ready()
        job = wait_for(lambda: (j := store.get(job_id)).finished and j, timeout=120, what="the job to finish")
    finally:
        if second is not None:
            second.stop()
        first.kill()
        beat.terminate()
        beat.wait(timeout=30)
        beat_log.close()
        write_faults(bench_dir, {})
    assert job.state == "succeeded", job.error
    assert job.step("backup").attempts == 2
    manifest = job.result["backup"]
    recorded = sorted([a["path"].rsplit("/", 1)[1] for a in manifest["artifacts"]]
                      + [f"{manifest['timestamp']}-jerp-manifest.json"])
    assert _backup_files(sites, site) == recorded  # nothing of the killed attempt
    assert _attempt_leftovers(sites, site) == []


@pytest.fixture
def tiny_private(site: str, bench_dir: Path) -> Iterator[Path]:
    """The site's private folder on a 1 MiB tmpfs (needs root, as in CI)."""
    private = bench_dir / "sites" / site / "private"
    aside = private.with_name("private.aside")
    private.rename(aside)
    private.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(private)], check=True)
    try:
        for entry in aside.iterdir():
            if entry.is_dir():
                shutil.copytree(entry, private / entry.name, symlinks=True)
        (private / "backups").mkdir(exist_ok=True)
        yield private
    finally:
        subprocess.run(["umount", str(private)], check=True)
        private.rmdir()
        aside.rename(private)


def test_a_backup_on_a_full_disk_says_disk_full_and_leaves_nothing(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, mariadb_root_password: str,
    tiny_private: Path,
) -> None:
    db = site_db(bench_dir, site)
    from tests.e2e_support import sql

    for i in range(8):  # about 3 MiB of hex digests: their dump cannot fit in 1 MiB
        sql(mariadb_root_password, "SET SESSION group_concat_max_len = 16777216; "
            f"INSERT INTO `tabNote` (name, title, content) SELECT 'big-{i}', 'big', "
            "GROUP_CONCAT(SHA2(RAND(), 256) SEPARATOR '') FROM seq_1_to_6000", db)
    rc, job = run_job(env, "backup", site, "--no-files")
    assert rc == 1 and _steps(job)["backup"] == "failed"
    assert "disk full" in job["error"] and str(tiny_private / "backups") in job["error"]
    assert "free of 1.0 MiB" in job["error"]
    assert "may be corrupted" not in job["error"]
    assert list((tiny_private / "backups").iterdir()) == []
    assert _attempt_leftovers(bench_dir / "sites", site) == []
