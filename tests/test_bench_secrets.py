"""The DB root and Administrator passwords reach bench on its password prompts (stdin), never
in a process's argv: new-site, backup, restore and drop-site of the stand-in bench, through
StepContext and the LocalExecutor, on the real MariaDB, while every /proc/*/cmdline is sampled."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from jerp_jobs import bench
from jerp_jobs.executors import LocalExecutor
from jerp_jobs.workflow import StepContext
from tests.conftest import MARIADB_PORT
from tests.standin.layout import BENCH_SCRIPT, create_bench, read_calls, write_faults
from tests.test_standin_bench import hash_matches

pytestmark = pytest.mark.services

ADMIN_PASSWORD = "Adm1n-" + uuid.uuid4().hex[:12]


class CmdlineSampler(threading.Thread):
    """Reads every process's command line, again and again, looking for the secrets."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(daemon=True)
        self.secrets = [s.encode() for s in secrets]
        self.samples = 0
        self.bench_seen = 0
        self.leaks: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if BENCH_SCRIPT.name.encode() in cmdline:
                    self.bench_seen += 1
                if any(secret in cmdline for secret in self.secrets):
                    self.leaks.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1
            time.sleep(0.01)


def sql(root_password: str, database: str, query: str) -> str:
    out = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{MARIADB_PORT}", "-uroot", "-N", "-e", query, database],
                         env={**os.environ, "MYSQL_PWD": root_password}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def database_exists(root_password: str, name: str) -> bool:
    return sql(root_password, "mysql", f"SHOW DATABASES LIKE '{name}'") == name


def test_new_site_restore_drop_site_with_no_password_on_any_command_line(
    tmp_path: Path, mariadb_root_password: str
) -> None:
    bench_dir = create_bench(tmp_path / "frappe-bench", db_host="127.0.0.1", db_port=MARIADB_PORT)
    # slow commands, so the sampler sees them while they hold their passwords
    write_faults(bench_dir, {"delay": {"new-site": 1.5, "restore": 1.5, "drop-site": 1.5}})
    site = f"sec{uuid.uuid4().hex[:8]}.example.com"
    runtime = SimpleNamespace(settings=SimpleNamespace(command_timeout=120), executor=LocalExecutor(bench_dir))
    ctx = StepContext(runtime=runtime, job=SimpleNamespace(site=site), step="secrets")  # type: ignore[arg-type]
    sampler = CmdlineSampler([mariadb_root_password, ADMIN_PASSWORD])
    sampler.start()
    made = False
    try:
        call = bench.new_site(site, db_root_password=mariadb_root_password, admin_password=ADMIN_PASSWORD,
                              db_name=f"_sec{uuid.uuid4().hex[:10]}", bench=str(BENCH_SCRIPT))
        ctx.run(call.argv, stdin=call.stdin)
        made = True
        config = json.loads((bench_dir / "sites" / site / "site_config.json").read_text())
        assert database_exists(mariadb_root_password, config["db_name"])
        admin_hash = sql(mariadb_root_password, config["db_name"],
                         "SELECT password FROM __Auth WHERE name = 'Administrator'")
        assert hash_matches(admin_hash, ADMIN_PASSWORD)  # each answer went to its own prompt

        summary = bench.parse_backup_summary(
            ctx.run(bench.backup(site, with_files=False, bench=str(BENCH_SCRIPT))).output, site)
        database = summary.artifact("database")
        assert database is not None
        call = bench.restore(site, database.path.removeprefix("./"), db_root_password=mariadb_root_password,
                             bench=str(BENCH_SCRIPT))
        restored = ctx.run(call.argv, stdin=call.stdin)
        assert f"Site {site} has been restored" in restored.output

        call = bench.drop_site(site, db_root_password=mariadb_root_password, bench=str(BENCH_SCRIPT))
        ctx.run(call.argv, stdin=call.stdin)
        made = False
        assert not database_exists(mariadb_root_password, config["db_name"])
    finally:
        sampler.stop.set()
        sampler.join(timeout=5)
        if made:
            subprocess.run([str(BENCH_SCRIPT), "drop-site", site, "--db-root-password", mariadb_root_password,
                            "--no-backup", "--force"], cwd=bench_dir, stdin=subprocess.DEVNULL, check=False)
    assert sampler.leaks == [], sampler.leaks[:3]
    assert sampler.samples > 100 and sampler.bench_seen > 50, (sampler.samples, sampler.bench_seen)
    calls = {c["command"]: c for c in read_calls(bench_dir)}
    assert {"new-site", "backup", "restore", "drop-site"} <= set(calls)
    assert all(c["exit_code"] == 0 for c in calls.values())
    assert not any("***" in arg for c in calls.values() for arg in c["argv"])  # no password option at all
