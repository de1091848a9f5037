"""Facts of a real Frappe bench the project must respect: file archives bench extracts, site
names bench refuses, bench refusing root, progress printed as carriage-return redraws. Real
subprocesses (the stand-in bench, on the real MariaDB where a site is needed) and a real Redis."""

from __future__ import annotations

import gzip
import io
import json
import os
import pwd
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from jerp_jobs import runner
from jerp_jobs.bench import RUN_AS_ROOT
from jerp_jobs.errors import ExecutorUnavailable, InvalidInput, InvalidSiteName
from jerp_jobs.executors.base import OutputTail
from jerp_jobs.executors.local import LocalExecutor
from jerp_jobs.operations import restore as restore_ops
from tests.e2e_support import jerpctl, run_bench
from tests.standin.layout import BENCH_SCRIPT, create_bench, read_calls
from tests.conftest import MARIADB_PORT

ROOT = os.geteuid() == 0


# -- file archives: only .tar and .tgz ------------------------------------------------------------


def _tar_gz(path: Path) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        info = tarfile.TarInfo("./x/public/files/hello.txt")
        body = b"hello"
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    path.write_bytes(gzip.compress(data.getvalue()))


def test_standin_restore_does_not_extract_a_tar_gz(site: str, bench_dir: Path, mariadb_root_password: str) -> None:
    """What Frappe does with a .tar.gz: copied into the site folder, deleted, never extracted."""
    folder = bench_dir / "sites" / site / "private" / "backups"
    run_bench(bench_dir, "--site", site, "backup")
    dump = next(p for p in folder.iterdir() if p.name.endswith("-database.sql.gz"))
    _tar_gz(folder / "x-files.tar.gz")
    (folder / "x-files.tgz").write_bytes((folder / "x-files.tar.gz").read_bytes())
    public = bench_dir / "sites" / site / "public" / "files"
    run_bench(bench_dir, "--site", site, "--force", "restore", str(dump.relative_to(bench_dir / "sites")),
              "--db-root-password", mariadb_root_password,
              "--with-public-files", str((folder / "x-files.tar.gz").relative_to(bench_dir / "sites")))
    assert not (public / "hello.txt").exists() and not (bench_dir / "sites" / site / "x-files.tar.gz").exists()
    run_bench(bench_dir, "--site", site, "--force", "restore", str(dump.relative_to(bench_dir / "sites")),
              "--db-root-password", mariadb_root_password,
              "--with-public-files", str((folder / "x-files.tgz").relative_to(bench_dir / "sites")))
    assert (public / "hello.txt").read_text() == "hello"


def test_tar_gz_file_archive_is_refused_at_enqueue_naming_the_rule(
    env: dict[str, str], site: str, bench_dir: Path
) -> None:
    folder = bench_dir / "sites" / site / "private" / "backups"
    run_bench(bench_dir, "--site", site, "backup")
    dump = next(p.name for p in folder.iterdir() if p.name.endswith("-database.sql.gz"))
    _tar_gz(folder / "x-files.tar.gz")
    done = jerpctl(env, "enqueue", "restore", site, "--db", dump, "--files", "x-files.tar.gz", "--unverified")
    assert done.returncode == 2, done.stderr
    assert "extracts only file archives named *.tar or *.tgz" in done.stderr and "rename it to .tgz" in done.stderr
    assert json.loads(jerpctl(env, "--json", "jobs").stdout) == []


def test_worker_refuses_a_tar_gz_before_staging_anything(tmp_path: Path) -> None:
    """A job recorded before the rule (or written by hand) meets it again in the worker."""
    site = "acme.example.com"
    (tmp_path / site / "private" / "backups").mkdir(parents=True)
    ctx = SimpleNamespace(site=site, settings=SimpleNamespace(sites_dir=tmp_path, executor="local", bench_dir=None),
                          job=SimpleNamespace(id="j1", result={}), output=[])
    files = {"db": f"{site}/private/backups/a-database.sql.gz", "public_files": f"{site}/private/backups/a-files.tar.gz"}
    with pytest.raises(InvalidInput, match=r"only file archives named \*\.tar or \*\.tgz"):
        restore_ops.restore_verified(ctx, files, unverified=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="rename it to .tgz"):
        restore_ops.verify_backup_files(ctx, files, unverified=True)  # type: ignore[arg-type]
    assert list((tmp_path / site).iterdir()) == [tmp_path / site / "private"]


# -- site names like apps ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["frappe", "erpnext", "hrms"])
def test_site_named_like_an_app_is_refused_at_enqueue(env: dict[str, str], bench_dir: Path, name: str) -> None:
    (bench_dir / "sites" / "apps.txt").write_text("frappe\nerpnext\nhrms\n")
    done = jerpctl(env, "enqueue", "provision", name)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "a site cannot be named like an app" in done.stderr
    assert json.loads(jerpctl(env, "--json", "jobs").stdout) == []


def test_worker_refuses_a_site_named_like_an_app_before_new_site(fake_redis: object) -> None:
    from tests.fake_executor import FakeExecutor
    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.settings import load_settings
    from tests.test_runner import cmd

    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local",
                             bench_dir=Path("/nonexistent-bench"), mariadb_root_password="root-pw",
                             frappe_admin_password="admin-pw")
    rt = build_runtime(settings, client=fake_redis, executor=FakeExecutor())  # type: ignore[arg-type]
    rt.dispatch = lambda job_id, step: None  # type: ignore[method-assign]
    rt.executor.on(cmd("cat", "sites/apps.txt"), output=["frappe", "erpnext", "hrms"])
    job = rt.store.create("provision", ["check-new", "new-site", "drop-site", "mark-attention"], site="hrms",
                          params={"apps": []})
    result = runner.run_step(rt, job.id, "check-new", worker="w1")
    done = rt.store.get(job.id)
    assert done.step("check-new").state == "failed", result
    assert "named like an app" in (done.step("check-new").error or "") or "named like an app" in (done.error or "")
    assert not any("new-site" in " ".join(a) for a in rt.executor.argvs)


def test_app_names_rule() -> None:
    from jerp_jobs.sites import bench_app_names, refuse_app_name

    assert {"frappe", "erpnext"} <= bench_app_names(None)
    with pytest.raises(InvalidSiteName, match="named like an app"):
        refuse_app_name("frappe", bench_app_names(None))
    assert refuse_app_name("acme.example.com", bench_app_names(None)) == "acme.example.com"


# -- bench refuses root ----------------------------------------------------------------------------


def test_standin_bench_refuses_root_without_frappe_user(tmp_path: Path) -> None:
    bench = create_bench(tmp_path / "b", db_host="127.0.0.1", db_port=MARIADB_PORT)
    config_path = bench / "sites" / "common_site_config.json"
    config = json.loads(config_path.read_text())
    config.pop("frappe_user", None)
    config_path.write_text(json.dumps(config))
    done = run_bench(bench, "build", check=False)
    if ROOT:
        assert done.returncode == 1 and "WARN: You should not run this command as root" in done.stdout
    else:
        assert "should not run this command as root" not in done.stdout


@pytest.mark.skipif(not ROOT, reason="the refusal concerns a worker running as root")
def test_local_executor_refuses_to_run_bench_as_root_naming_the_fix(tmp_path: Path) -> None:
    bench = create_bench(tmp_path / "b", db_host="127.0.0.1", db_port=MARIADB_PORT)
    config_path = bench / "sites" / "common_site_config.json"
    config = json.loads(config_path.read_text())
    config.pop("frappe_user")
    config_path.write_text(json.dumps(config))
    executor = LocalExecutor(bench, bench_program=str(BENCH_SCRIPT))
    with pytest.raises(ExecutorUnavailable, match="JERP_BENCH_USER") as caught:
        executor.run([str(BENCH_SCRIPT), "--site", "a.example.com", "list-apps"], timeout=30)
    assert "run the worker as the bench's user" in str(caught.value)
    # the workflows run bench inside a fence, and the commands around it would leave root-owned
    # files in the bench: refused alike, each naming the fix
    for argv in (["flock", "-w", "9", "-E", "75", "sites/.jerp-fence.a.example.com", str(BENCH_SCRIPT), "build"],
                 ["timeout", "-s", "TERM", "30", "nice", "-n", "5", str(BENCH_SCRIPT), "doctor"],
                 ["flock", "-n", "-E", "75", "sites/a.example.com/locks/bench_migrate.lock", "true"], ["true"]):
        with pytest.raises(ExecutorUnavailable, match="JERP_BENCH_USER"):
            executor.run(argv, timeout=30)
    assert not (bench / "sites" / ".jerp-fence.a.example.com").exists()
    assert read_calls(bench) == []  # bench never started
    config["frappe_user"] = "root"
    config_path.write_text(json.dumps(config))
    assert "should not run" not in executor.run([str(BENCH_SCRIPT), "build"], timeout=60).output


@pytest.mark.skipif(not ROOT, reason="the refusal concerns a worker running as root")
@pytest.mark.parametrize("kind", ["backup", "migrate"])
def test_a_job_on_a_root_worker_without_a_bench_user_fails_at_once_naming_the_fix(
    tmp_path: Path, redis_url: str, real_redis, kind: str
) -> None:
    """Through the workflow (bench inside its fence), not only a bare ``bench`` argv: the job
    fails at its first command with the fix named, before bench or a lock probe ran."""
    from jerp_jobs.enqueue import submit
    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.settings import load_settings
    from tests.conftest import recording
    from tests.site_folders import make_site_folders

    bench = create_bench(tmp_path / "b", db_host="127.0.0.1", db_port=MARIADB_PORT)
    config_path = bench / "sites" / "common_site_config.json"
    config = json.loads(config_path.read_text())
    config.pop("frappe_user")
    config_path.write_text(json.dumps(config))
    make_site_folders(bench / "sites", ["a.example.com"])
    before = sorted(str(p.relative_to(bench)) for p in bench.rglob("*"))
    settings = load_settings(_env_file=None, broker_url=redis_url, executor="local", bench_dir=bench,
                             bench_bin=str(BENCH_SCRIPT), sites_dir=bench / "sites", lock_ttl=10)
    rt = recording(build_runtime(settings, client=real_redis))
    job = submit(rt, kind, site="a.example.com", params={"no_build": True} if kind == "migrate" else {})
    for _ in range(50):
        if not rt.dispatched:  # type: ignore[attr-defined]
            break
        job_id, step = rt.dispatched.pop(0)  # type: ignore[attr-defined]
        runner.run_step(rt, job_id, step, worker="w1")
    done = rt.store.get(job.id)
    assert done.state == "failed", done.state
    failed = [s for s in done.steps if s.state == "failed"]
    assert failed and "this worker runs as root" in (failed[0].error or "")
    assert "JERP_BENCH_USER" in (done.error or failed[0].error or "")
    assert read_calls(bench) == []
    after = sorted(str(p.relative_to(bench)) for p in bench.rglob("*"))
    assert after == before  # no fence, no lock file, nothing root-owned left behind
    # nothing ran, so nothing to bring back: no recovery step (it would be refused too), and the
    # site is not marked as needing attention, so the same job runs once the worker is set right
    assert [s.name for s in failed] == [done.steps[0].name]
    assert done.result.get("failure", {}).get("class") == RUN_AS_ROOT
    assert rt.sites.attention("a.example.com") is None and not done.result.get("needs_attention")
    assert not [n for n in rt.notifications if n[0] == "site.attention"]  # type: ignore[attr-defined]


@pytest.mark.skipif(not ROOT, reason="running as another user needs root")
def test_bench_user_runs_every_command_as_that_user(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    folder.mkdir()
    tmp_path.chmod(0o755)
    folder.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    result = LocalExecutor(folder, user="nobody").run(["sh", "-c", 'id -u; echo "$HOME"'], timeout=30)
    assert result.output.splitlines() == [str(nobody.pw_uid), nobody.pw_dir]
    with pytest.raises(ExecutorUnavailable, match="no such user"):
        LocalExecutor(folder, user="no-such-user-here").run(["true"], timeout=30)


@pytest.mark.skipif(not ROOT, reason="running as another user needs root")
def test_root_worker_with_frappe_user_probes_frappe_locks_as_that_user(tmp_path: Path) -> None:
    """A root worker that relies on frappe_user runs every command as that user: the probe of
    Frappe's bench_migrate lock creates the lock file when it is missing, and one created by root
    (0644) cannot be opened by Frappe's filelock as the bench's user (PermissionError, a failed
    migrate, on a real bench)."""
    bench = tmp_path / "bench"
    (bench / "sites" / "a.example.com" / "locks").mkdir(parents=True)
    nobody = pwd.getpwnam("nobody")
    for folder in (tmp_path, bench, bench / "sites", bench / "sites" / "a.example.com"):
        folder.chmod(0o755)
    os.chown(bench / "sites" / "a.example.com" / "locks", nobody.pw_uid, nobody.pw_gid)
    (bench / "sites" / "common_site_config.json").write_text(json.dumps({"frappe_user": "nobody"}))
    executor = LocalExecutor(bench)
    from jerp_jobs import bench as bench_cli
    result = executor.run(bench_cli.lock_probe("bench_migrate", "a.example.com"), timeout=30)
    assert result.exit_code == 0, result.output
    lock = bench / "sites" / "a.example.com" / "locks" / "bench_migrate.lock"
    assert lock.stat().st_uid == nobody.pw_uid
    assert executor.run(["id", "-u"], timeout=30).output.strip() == str(nobody.pw_uid)
    (bench / "sites" / "common_site_config.json").write_text(json.dumps({"frappe_user": "no-such-user-here"}))
    with pytest.raises(ExecutorUnavailable, match="frappe_user 'no-such-user-here'"):
        executor.run(["true"], timeout=30)


# -- carriage-return redraws -----------------------------------------------------------------------


def _redraws(total: int = 360) -> str:
    return "".join(f"\rUpdating DocTypes for frappe : [{'=' * (i * 40 // total):<40}] {i * 100 // total}%"
                   for i in range(1, total + 1))


def test_output_tail_keeps_what_a_person_sees_of_a_28kb_redraw_line() -> None:
    line = _redraws()
    assert len(line) > 28_000
    seen: list[str] = []
    tail = OutputTail(seen.append)
    tail.feed("Installing frappe...\n")
    for start in range(0, len(line), 4096):  # arrives in pieces, as from a pipe
        tail.feed(line[start:start + 4096].encode())
    tail.feed("\nUpdating Dashboard for frappe\n")
    tail.close()
    assert tail.text().splitlines() == [
        "Installing frappe...", f"Updating DocTypes for frappe : [{'=' * 40}] 100%", "Updating Dashboard for frappe"]
    assert "\r" not in tail.text() and seen == tail.text().splitlines()


def test_local_executor_records_new_site_progress_as_one_readable_line(
    bench_dir: Path, mariadb_root_password: str
) -> None:
    site = f"redraw{os.getpid()}.example.com"
    executor = LocalExecutor(bench_dir, bench_program=str(BENCH_SCRIPT))
    argv = [str(BENCH_SCRIPT), "new-site", site, "--db-root-username", "root", "--mariadb-user-host-login-scope=%"]
    try:
        result = executor.run(argv, timeout=120, stdin=f"{mariadb_root_password}\nAdm1n-pass\nAdm1n-pass\n".encode())
        assert result.ok, result.output
        assert "\r" not in result.output and len(result.output) < 4000
        assert f"Updating DocTypes for frappe              : [{'=' * 40}] 100%" in result.output.splitlines()
    finally:
        run_bench(bench_dir, "drop-site", site, "--db-root-password", mariadb_root_password, "--no-backup",
                  "--force", check=False)


def test_standin_new_site_prints_progress_as_redraws(bench_dir: Path, mariadb_root_password: str) -> None:
    site = f"redrawraw{os.getpid()}.example.com"
    try:
        done = subprocess.run([str(BENCH_SCRIPT), "new-site", site, "--db-root-password", mariadb_root_password,
                               "--admin-password", "Adm1n-pass", "--mariadb-user-host-login-scope=%"],
                              cwd=bench_dir, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=True)
        longest = max(done.stdout.split(b"\n"), key=len)  # bytes: no newline translation of \r
        assert longest.count(b"\r") >= 300 and len(longest) > 25_000
    finally:
        run_bench(bench_dir, "drop-site", site, "--db-root-password", mariadb_root_password, "--no-backup",
                  "--force", check=False)
