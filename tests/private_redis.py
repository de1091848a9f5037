"""A redis-server of the test's own, on a free loopback port, that the test may kill and start
again on the same port with the same data folder (AOF on), as an outage of the broker."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    def __init__(self, folder: Path, *, password: str) -> None:
        self.folder = folder
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def start(self, timeout: float = 30) -> PrivateRedis:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is not installed (tests/services/packages.sh test)"
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child keeps its own descriptor
        argv = [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--requirepass", self.password,
                "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "redis.log").read_text()[-2000:]
            try:
                with self.client() as client:
                    if client.ping():
                        return self
            except redis.RedisError:
                time.sleep(0.1)
        raise AssertionError(f"the private redis-server on port {self.port} did not answer in {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would; the port stays free for :meth:`start`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def wipe(self) -> None:
        """Forget the data (only while killed): the next start is an empty Redis."""
        assert self.proc is None
        shutil.rmtree(self.folder / "appendonlydir", ignore_errors=True)
