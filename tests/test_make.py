"""The runbook's make targets are thin wrappers over jerpctl, safe with any site argument."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _make(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run make with a recording jerpctl: it writes the argv it received, one item per line."""
    recorder = tmp_path / "jerpctl"
    recorder.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$RECORD"\n')
    recorder.chmod(0o755)
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), f"JERPCTL={recorder}", *args],
        env={**os.environ, "RECORD": str(tmp_path / "argv"), **env}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("target", "extra", "argv"),
    [
        ("site-cliente.exemplo.com", [], ["enqueue", "provision", "cliente.exemplo.com", "--wait"]),
        ("backup-cliente.exemplo.com", [], ["enqueue", "backup", "cliente.exemplo.com", "--wait"]),
        ("migrate", [], ["enqueue", "migrate-all", "--wait"]),
        ("release", ["TAG=a1b2c3d"], ["enqueue", "release", "a1b2c3d", "--wait"]),
        ("rollback", [], ["enqueue", "rollback", "--wait"]),
        ("restore-cliente.exemplo.com", ["DB_BACKUP=a.sql.gz", "FILES_BACKUP=f.tar"],
         ["enqueue", "restore", "cliente.exemplo.com", "--db", "a.sql.gz", "--files", "f.tar", "--wait"]),
        ("restore-cliente.exemplo.com", ["DB_BACKUP=a.sql.gz"],
         ["enqueue", "restore", "cliente.exemplo.com", "--db", "a.sql.gz", "--wait"]),
        ("restore-cliente.exemplo.com", ["DB_BACKUP=a.sql.gz", "UNVERIFIED=1"],
         ["enqueue", "restore", "cliente.exemplo.com", "--db", "a.sql.gz", "--unverified", "--wait"]),
    ],
)
def test_targets_call_jerpctl(tmp_path: Path, target: str, extra: list[str], argv: list[str]) -> None:
    done = _make(tmp_path, target, *extra)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "argv").read_text().splitlines() == argv


def test_a_hostile_site_argument_reaches_jerpctl_as_one_argument(tmp_path: Path) -> None:
    hostile = "x$(touch PWNED);`touch PWNED2`"
    done = _make(tmp_path, f"site-{hostile}")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "argv").read_text().splitlines() == ["enqueue", "provision", hostile, "--wait"]
    assert not (ROOT / "PWNED").exists() and not (ROOT / "PWNED2").exists()


def test_restore_without_a_dump_is_refused(tmp_path: Path) -> None:
    done = _make(tmp_path, "restore-cliente.exemplo.com")
    assert done.returncode != 0 and "DB_BACKUP" in done.stderr
    assert not (tmp_path / "argv").exists()


def test_release_without_a_tag_is_refused(tmp_path: Path) -> None:
    done = _make(tmp_path, "release")
    assert done.returncode != 0 and "TAG" in done.stderr
    assert not (tmp_path / "argv").exists()


@pytest.mark.parametrize(
    ("target", "variable", "flag"),
    [
        ("release", "TAG", None),
        ("restore-cliente.exemplo.com", "DB_BACKUP", "--db"),
        ("restore-cliente.exemplo.com", "FILES_BACKUP", "--files"),
    ],
)
@pytest.mark.parametrize("how", ["command line", "environment"])
def test_make_functions_in_a_variable_stay_text(
    tmp_path: Path, target: str, variable: str, flag: str | None, how: str
) -> None:
    marker = tmp_path / "PWNED"
    hostile = f"$(shell touch {marker})"
    values = {variable: hostile}
    if variable == "FILES_BACKUP":
        values["DB_BACKUP"] = "a.sql.gz"
    if how == "command line":
        done = _make(tmp_path, target, *(f"{k}={v}" for k, v in values.items()))
    else:
        done = _make(tmp_path, target, **values)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "make ran a $(shell ...) found in a variable's value"
    argv = (tmp_path / "argv").read_text().splitlines()
    if flag is None:
        assert argv == ["enqueue", "release", hostile, "--wait"]
    else:
        assert argv[argv.index(flag) + 1] == hostile


def _closed_port_broker() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_on_a_deployed_stack_the_targets_run_jerpctl_in_the_jobs_worker(tmp_path: Path) -> None:
    """No broker reachable from the host (the jobs Redis publishes no port): `make migrate` runs
    jerpctl through `compose exec -T` in the jobs worker, and says so."""
    recorder = tmp_path / "compose"
    recorder.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$RECORD"\n')
    recorder.chmod(0o755)
    env = {**os.environ, "RECORD": str(tmp_path / "argv"), "COMPOSE": str(recorder),
           "JERP_BROKER_URL": _closed_port_broker()}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "migrate"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "argv").read_text().splitlines() == [
        "-p", "jerp-jobs", "-f", str(ROOT / "compose.jobs.yml"), "exec", "-T", "jobs-worker",
        "jerpctl", "enqueue", "migrate-all", "--wait"]
    assert "no broker reachable from this host; running it in the jobs-worker container" in done.stderr


@pytest.mark.services
def test_with_a_reachable_broker_the_targets_run_jerpctl_on_the_host(tmp_path: Path, redis_url: str) -> None:
    recorder = tmp_path / "compose"
    recorder.write_text('#!/bin/sh\ntouch "$RECORD"\n')
    recorder.chmod(0o755)
    env = {**os.environ, "RECORD": str(tmp_path / "called"), "COMPOSE": str(recorder), "JERP_BROKER_URL": redis_url}
    done = subprocess.run([str(ROOT / "workers" / "jerpctl.sh"), "--json", "jobs", "--limit", "1"], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)
    assert "jerpctl: running on this host" in done.stderr
    assert not (tmp_path / "called").exists()
