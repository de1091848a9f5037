"""jerpctl start-up time: ``--help`` and a refused ``enqueue`` (bad site name), cold processes,
side by side with ``python -c pass`` in the same run.

Target: median at most 300 ms for both jerpctl cases. Also reports which heavy modules each
case imported (none of celery, kombu, boto3, botocore, docker may be).

    .venv/bin/python benchmarks/cli_startup.py [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HEAVY = ("celery", "kombu", "boto3", "botocore", "docker", "redis")
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['jerpctl', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('jerp_jobs.cli', run_name='__main__')\n"
    "    from jerp_jobs.cli import main; main()\n"
    "except SystemExit:\n    pass\n"
    f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), file=sys.stderr)\n"
)

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "jerpctl --help": [str(BIN / "jerpctl"), "--help"],
    "jerpctl enqueue backup Bad_Site": [str(BIN / "jerpctl"), "enqueue", "backup", "Bad_Site"],
}


def time_case(argv: list[str], runs: int) -> list[float]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    samples = []
    subprocess.run(argv, env=env, capture_output=True)  # bytecode compiled once, like an installed package
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def heavy_imports(args: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    return json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    for name, argv in CASES.items():
        samples = time_case(argv, args.runs)
        results[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "p90_ms": round(sorted(samples)[int(0.9 * (len(samples) - 1))], 1),
            "min_ms": round(min(samples), 1),
        }
    results["jerpctl --help"]["heavy_imports"] = heavy_imports(["--help"])
    results["jerpctl enqueue backup Bad_Site"]["heavy_imports"] = heavy_imports(["enqueue", "backup", "Bad_Site"])
    base = results["python -c pass"]["median_ms"]
    ok = all(r["median_ms"] <= 300 and not r["heavy_imports"] for n, r in results.items() if n != "python -c pass")
    report = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()}, "runs": args.runs,
              "results": results, "target_median_ms": 300, "met": ok}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'case':<36} {'median':>8} {'p90':>8} {'min':>8} {'over python':>12}  heavy imports")
        for name, r in results.items():
            over = r["median_ms"] - base
            print(f"{name:<36} {r['median_ms']:>6.1f}ms {r['p90_ms']:>6.1f}ms {r['min_ms']:>6.1f}ms "
                  f"{over:>10.1f}ms  {', '.join(r.get('heavy_imports', [])) or '-'}")
        print(f"target: median <= 300 ms and no heavy import: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
