"""Real Celery worker processes for end-to-end tests (not eager mode, not in-process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def log_events(path: Path, event: str) -> list[dict]:
    """The JSON log records of ``event`` in a process's log file (other lines are skipped)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == event:
                found.append(record)
    return found


class WorkerProcess:
    """``celery -A jerp_jobs worker`` in a subprocess; its stderr is kept for inspection."""

    def __init__(self, env: Mapping[str, str], *, name: str, log_path: Path, concurrency: int = 2) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "jerp_jobs", "worker", "-n", f"{name}@%h", "-c", str(concurrency),
             "--without-mingle", "--without-gossip"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            self._log.flush()
            if b" ready." in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        if not self._ready.wait(timeout):
            raise AssertionError(f"worker {self.name} not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
