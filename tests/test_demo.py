"""`make demo` (tests/demo.py) runs the main job end to end on a machine with no Docker and no
Frappe, and `make demo-down` stops everything it started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.services


def _demo(folder: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JERP_", "MARIADB_", "FRAPPE_"))}
    return subprocess.run([sys.executable, "-m", "tests.demo", command], cwd=ROOT,
                          env={**env, "JERP_DEMO_DIR": str(folder)}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_demo_migrates_every_site_recovers_the_failing_one_and_stops_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    try:
        done = _demo(folder, "up")
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert "clinica-sorriso.exemplo.com.br           recovered" in done.stdout
        assert "Demo done in" in done.stdout
        ports = [int((folder / "run" / f"{name}.port").read_text()) for name in ("redis", "mariadb")]
        pids = [int((folder / "run" / "jerp-run.pid").read_text())]
        pids += [int(pid) for pid in subprocess.run(["pgrep", "-P", str(pids[0])], capture_output=True,
                                                     text=True).stdout.split()]
        assert len(pids) == 3, f"jerp-run and its two children (worker and Beat), got {pids}"
        assert all(_answers(port) for port in ports)
        env_file = (folder / "env").read_text()
        assert "JERP_BROKER_URL=redis://127.0.0.1:" in env_file
        assert (folder / "env").stat().st_mode & 0o077 == 0, "the demo's settings hold passwords: owner only"
    finally:
        down = _demo(folder, "down")
    assert down.returncode == 0, down.stderr
    assert not folder.exists()
    assert not any(_answers(port) for port in ports)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
