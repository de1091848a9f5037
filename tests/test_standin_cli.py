"""The stand-in bench's helpers are reachable from the command line (python -m tests.standin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.standin.layout import BENCH_SCRIPT

ROOT = Path(__file__).resolve().parent.parent


def _standin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.standin", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_create_bench_lays_out_the_folder_bench_expects(tmp_path: Path) -> None:
    done = _standin("create-bench", str(tmp_path / "b"), "--db-port", "3307", "--app", "frappe", "--app", "hrms",
                    "--redis-cache", "redis://127.0.0.1:6390/1")
    assert done.returncode == 0, done.stderr
    sites = tmp_path / "b" / "sites"
    assert (sites / "apps.txt").read_text().split() == ["frappe", "hrms"]
    config = json.loads((sites / "common_site_config.json").read_text())
    assert config.pop("frappe_user", None) == ("root" if os.geteuid() == 0 else None)  # bench refuses root without it
    assert config == {"db_host": "127.0.0.1", "db_port": 3307, "redis_cache": "redis://127.0.0.1:6390/1",
                      "standin_always_on_worker": True}
    assert _standin("bench-path").stdout.strip() == str(BENCH_SCRIPT)


def test_faults_are_written_cleared_and_bad_ones_refused(tmp_path: Path) -> None:
    assert _standin("create-bench", str(tmp_path), "--db-port", "3307").returncode == 0
    faults = tmp_path / "sites" / ".standin-faults.json"
    assert _standin("faults", str(tmp_path), '{"fail": {"migrate": "*"}}').returncode == 0
    assert json.loads(faults.read_text()) == {"fail": {"migrate": "*"}}
    bad = _standin("faults", str(tmp_path), '{"explode": 1}')
    assert bad.returncode == 2 and "unknown fault keys: ['explode']" in bad.stderr
    assert _standin("faults", str(tmp_path), "[]").returncode == 2
    assert _standin("faults", str(tmp_path), "{}").returncode == 0
    assert not faults.exists()
