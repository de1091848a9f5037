"""benchmarks/fleet_scale.py runs end to end at a tiny size: its own redis-server, the fleet's
backup-all and the one-bench baseline, the listings; it prints its figures and exits 0, and the
figures say what they should (every site backed up once, no bench over its concurrency)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fleet_scale.py"
ARGS = ["--sites", "50", "--benches", "3", "--runs", "1", "--ping-timeout", "0.2"]


def _run(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *ARGS, *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_the_fleet_scale_benchmark_prints_its_figures_and_exits_0() -> None:
    done = _run()
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for figure in ("every bench's sites discovered", "every site's child created and published", "per site",
                   "most running per bench", "site-to-bench map and listings, per site",
                   "a child's record (MEMORY USAGE, mean)", "jerpctl sites (map", "jerpctl jobs", "jerpctl benches",
                   "dashboard /sites", "in-process"):
        assert figure in out, (figure, out)
    assert "succeeded 50 (50)" in out, out
    assert out.count(" ms ") >= 10, out


def test_its_json_figures_hold_together() -> None:
    done = _run("--json", "--no-baseline")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert "one_bench" not in result
    backup = result["fleet"]["backup_all"]
    assert backup["state"] == "succeeded" and backup["bench_fanouts"] == {"succeeded": 3}
    assert backup["children"] == backup["distinct_sites"] == 50
    assert backup["concurrency"] == {"b00": 4, "b01": 6, "b02": 8}
    assert backup["max_running"] == backup["concurrency"]  # each bench's own bound, reached and never passed
    assert backup["max_running_fleet"] <= 4 + 6 + 8
    assert 0 < backup["all_discovered_s"] <= backup["all_children_published_s"] <= backup["elapsed_s"]
    memory = backup["memory"]
    assert memory["jobs"] == 50 + 3 + 1
    assert memory["map_bytes_per_site"] > 0 and memory["child_record_bytes"] > 0
    assert memory["fanout_keys_left"] == 0  # the fan-outs' own keys are gone once they ended
    cli = result["fleet"]["cli"]
    assert cli["jerpctl --json sites (map)"]["rows"] == 50
    assert cli["jerpctl sites (map; control plane sees no sites folder)"]["exit"] == 0
    assert result["fleet"]["dashboard_sites"]["rows"] >= 50
