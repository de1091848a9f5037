"""A private MariaDB server with binary logs on, as the platform's runs for point-in-time
recovery (ROW format, a server id), started for a test module on a free loopback port and
stopped after it; and a writer that changes two sites' databases continuously while it
records the exact state of one of them at whole-second instants."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jerp_jobs.executors.local import LocalExecutor
from jerp_jobs.pitr import DatabaseServer, MariaDB
from tests.private_redis import free_port


@dataclass
class BinlogServer:
    datadir: Path
    port: int
    password: str
    proc: subprocess.Popen[bytes]

    @property
    def server(self) -> DatabaseServer:
        return DatabaseServer("127.0.0.1", self.port, "root", self.password)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def client(self, bench_dir: Path) -> MariaDB:
        """The tools run by the local executor in ``bench_dir``, the work folder its
        ``sites/.jerp-pitr`` (as the worker and the backend container share the sites volume)."""
        (bench_dir / "sites").mkdir(parents=True, exist_ok=True)
        return MariaDB(self.server, LocalExecutor(bench_dir), here=bench_dir / "sites" / ".jerp-pitr",
                       there="sites/.jerp-pitr", timeout=300)


def start_binlog_server(root: Path) -> BinlogServer:
    """mariadbd with binary logs as the platform's (ROW, a server id), its data under ``root``,
    on a free loopback port, root's password set; RuntimeError naming the cause if it cannot."""
    for tool in ("mariadbd", "mariadb-install-db", "mariadb", "mariadb-binlog", "mariadb-dump"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: the Debian packages mariadb-server and mariadb-client "
                               "are needed")
    datadir = root / "data"
    subprocess.run(["mariadb-install-db", "--user=root", f"--datadir={datadir}",
                    "--auth-root-authentication-method=normal"], check=True, capture_output=True, timeout=120)
    port = free_port()
    sock = root / "mariadb.sock"
    proc = subprocess.Popen(
        ["mariadbd", "--user=root", f"--datadir={datadir}", f"--port={port}", "--bind-address=127.0.0.1",
         f"--socket={sock}", f"--pid-file={root / 'mariadb.pid'}", f"--log-error={root / 'error.log'}",
         f"--log-bin={datadir / 'binlog'}", "--binlog-format=ROW", "--server-id=1",
         "--binlog-expire-logs-seconds=86400", "--character-set-server=utf8mb4",
         "--collation-server=utf8mb4_unicode_ci", "--innodb-buffer-pool-size=64M"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    password = secrets.token_urlsafe(12)
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(["mariadb", f"--socket={sock}", "-uroot", "-e",
                               f"ALTER USER root@'127.0.0.1' IDENTIFIED BY '{password}'; "
                               f"ALTER USER root@localhost IDENTIFIED BY '{password}'; "
                               # no anonymous users: they would shadow a site's user@'%' from loopback
                               "DELETE FROM mysql.global_priv WHERE User=''; FLUSH PRIVILEGES"],
                              capture_output=True, timeout=30)
        if done.returncode == 0:
            return BinlogServer(datadir, port, password, proc)
        if proc.poll() is not None or time.monotonic() > deadline:
            log = (root / "error.log").read_text(errors="replace")[-2000:] if (root / "error.log").exists() else ""
            proc.kill()
            raise RuntimeError(f"the binlog MariaDB did not start: {done.stderr.decode()[-500:]}\n{log}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def binlog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BinlogServer]:
    try:
        server = start_binlog_server(tmp_path_factory.mktemp("binlog-mariadb"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


def table_digest(db: MariaDB, database: str) -> str:
    """A digest of every row of the site's table, in key order."""
    rows = db.query("SELECT id, qty, note FROM `tabInvoice` ORDER BY id", database=database)
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def make_site_database(db: MariaDB, name: str) -> None:
    db.query(f"CREATE DATABASE `{name}`")
    db.query("CREATE TABLE `tabInvoice` (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(64)) ENGINE=InnoDB",
             database=name)


@dataclass
class Writer:
    """Inserts and updates rows in ``databases`` (one transaction of a few statements at a time)
    until stopped. Around every whole second it holds still (from 0.25 s before to 0.25 s
    after) and records the first database's digest for that instant: ``states[instant]``."""

    db: MariaDB
    databases: list[str]
    states: dict[int, str] = field(default_factory=dict)
    writes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        next_id = {name: 1 for name in self.databases}
        try:
            while not self._stop.is_set():
                now = time.time()
                boundary = int(now) + 1
                if boundary - now < 0.25:
                    time.sleep(boundary - now + 0.01)  # the instant passes with nothing written
                    self.states[boundary] = table_digest(self.db, self.databases[0])
                    time.sleep(max(0.0, boundary + 0.25 - time.time()))
                    continue
                for name in self.databases:
                    first = next_id[name]
                    next_id[name] += 2
                    self.db.query(
                        f"START TRANSACTION; INSERT INTO `tabInvoice` VALUES ({first}, 1, 'new'), "
                        f"({first + 1}, 2, 'new'); UPDATE `tabInvoice` SET qty = qty + 1, note = 'changed' "
                        f"WHERE id = {max(1, first - 7)}; COMMIT", database=name)
                    self.writes += 1
        except BaseException as exc:  # reported by stop()
            self.error = exc
