"""Fixtures for end-to-end tests on real parts: a bench folder for the stand-in bench on the
real MariaDB, a worker process on the real Redis, jerpctl as a subprocess, and a fingerprint
of a site's data to prove nothing was lost."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import MARIADB_PORT
from tests.standin.layout import BENCH_SCRIPT, create_bench
from tests.workers import VENV_BIN, WorkerProcess

ADMIN_PASSWORD = "Adm1n-e2e-Secret"


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    return create_bench(tmp_path / "frappe-bench", db_host="127.0.0.1", db_port=MARIADB_PORT)


def run_bench(bench_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BENCH_SCRIPT), *args], cwd=bench_dir, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture
def make_site(bench_dir: Path, mariadb_root_password: str) -> Iterator[Callable[..., str]]:
    """Creates sites with the stand-in bench itself (outside jerp-jobs); drops them at the end."""
    made: list[str] = []

    def make(prefix: str = "e2e") -> str:
        name = f"{prefix}{uuid.uuid4().hex[:8]}.example.com"
        run_bench(bench_dir, "new-site", name, "--db-root-password", mariadb_root_password,
                  "--admin-password", ADMIN_PASSWORD, "--mariadb-user-host-login-scope=%")
        made.append(name)
        return name

    yield make
    for name in made:
        drop_site(bench_dir, name, mariadb_root_password)


def drop_site(bench_dir: Path, site: str, root_password: str) -> None:
    if (bench_dir / "sites" / site / "site_config.json").exists():
        run_bench(bench_dir, "drop-site", site, "--db-root-password", root_password, "--no-backup", "--force",
                  check=False)


@pytest.fixture
def site(make_site: Callable[..., str]) -> str:
    return make_site()


@pytest.fixture
def env(redis_url: str, real_redis: redis.Redis, bench_dir: Path, mariadb_root_password: str) -> dict[str, str]:
    return {
        "JERP_BROKER_URL": redis_url,
        "JERP_EXECUTOR": "local",
        "JERP_BENCH_DIR": str(bench_dir),
        "JERP_BENCH_BIN": str(BENCH_SCRIPT),
        "MARIADB_ROOT_PASSWORD": mariadb_root_password,
        "FRAPPE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "JERP_INSTALL_APPS": "erpnext,nfse-pr",
        "JERP_LOCK_TTL": "10",
    }


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(env, name="e2e", log_path=tmp_path / "worker.log").wait_ready()
    yield proc
    proc.stop()


def jerpctl(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "jerpctl"), *args], env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def run_job(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, dict]:
    """``jerpctl --json enqueue ... --wait``: the exit code and the final job record."""
    done = jerpctl(env, "--json", "enqueue", *args, "--wait", timeout=timeout)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"jerpctl printed no job: rc={done.returncode}\n{done.stdout}\n{done.stderr}") from None


def sql(root_password: str, query: str, database: str | None = None) -> list[list[str]]:
    argv = ["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(MARIADB_PORT), "-uroot", "-N", "-B",
            "-e", query]
    if database:
        argv.append(database)
    out = subprocess.run(argv, env={**os.environ, "MYSQL_PWD": root_password}, capture_output=True, text=True,
                         check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def site_db(bench_dir: Path, site: str) -> str:
    return json.loads((bench_dir / "sites" / site / "site_config.json").read_text())["db_name"]


def fingerprint(root_password: str, database: str) -> dict[str, tuple[str, str]]:
    """Every table with its row count and CHECKSUM TABLE: equal fingerprints, equal data."""
    return fingerprint_with(lambda query, db: sql(root_password, query, db), database)


def fingerprint_with(query: Callable[[str, str], list[list[str]]], database: str) -> dict[str, tuple[str, str]]:
    """:func:`fingerprint` of ``database`` on the server ``query(sql, database)`` answers for."""
    result = {}
    for (table,) in query("SHOW TABLES", database):
        count = query(f"SELECT COUNT(*) FROM `{table}`", database)[0][0]
        result[table] = (count, query(f"CHECKSUM TABLE `{table}`", database)[0][1])
    return result


def rows_digest(root_password: str, database: str, table: str, columns: str) -> tuple[int, str]:
    """Row count and SHA-256 of the given columns of every row, in key order."""
    import hashlib

    rows = sql(root_password, f"SELECT {columns} FROM `{table}` ORDER BY 1", database)
    return len(rows), hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def add_notes(root_password: str, database: str, n: int, prefix: str = "note") -> None:
    sql(root_password, notes_insert(n, prefix), database)


def notes_insert(n: int, prefix: str = "note") -> str:
    """The INSERT of ``n`` Note rows (customer data) that :func:`add_notes` runs."""
    values = ",".join(f"('{prefix}-{i}', 'customer data {i}', 'content {i}')" for i in range(n))
    return f"INSERT INTO `tabNote` (name, title, content) VALUES {values}"


def site_config(bench_dir: Path, site: str) -> dict:
    return json.loads((bench_dir / "sites" / site / "site_config.json").read_text())
