"""jerpctl start-up time, cold processes, side by side with ``python -c pass`` in the same run.

Without data: ``--help`` and a refused ``enqueue`` (bad site name); target median at most
300 ms, and none of celery, kombu, boto3, botocore, docker, redis imported.

With ``--redis-url`` (a Redis database of your own: it is filled, then flushed at the end) and
``--records N`` (default 10,000): ``jerpctl jobs`` over N job records (target median at most
150 ms), ``jerpctl backups`` over N sites' backup records and ``jerpctl sites`` over a sites
folder of N sites (local executor; targets at most 500 ms).

    .venv/bin/python benchmarks/cli_startup.py [--runs 30] [--json]
    .venv/bin/python benchmarks/cli_startup.py --redis-url redis://127.0.0.1:PORT/9 [--records 10000]
    .venv/bin/python benchmarks/cli_startup.py --redis-url ... --against ../main/.venv/bin   # side by side
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def time_case(argv: list[str], runs: int, extra_env: dict[str, str] | None = None) -> list[float]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0", **(extra_env or {})}
    samples = []
    subprocess.run(argv, env=env, capture_output=True)  # bytecode compiled once, like an installed package
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def time_interleaved(argvs: list[list[str]], runs: int, extra_env: dict[str, str]) -> list[list[float]]:
    """Samples of each argv, taken in turn within every run (the order rotating), so that a
    change of the machine's load during the measurement falls on each of them alike."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0", **extra_env}
    for argv in argvs:
        subprocess.run(argv, env=env, capture_output=True)
    samples: list[list[float]] = [[] for _ in argvs]
    for run in range(runs):
        for offset in range(len(argvs)):
            index = (run + offset) % len(argvs)
            start = time.perf_counter()
            subprocess.run(argvs[index], env=env, capture_output=True)
            samples[index].append((time.perf_counter() - start) * 1000)
    return samples


def heavy_imports(args: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    return json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples), 1),
        "p90_ms": round(sorted(samples)[int(0.9 * (len(samples) - 1))], 1),
        "min_ms": round(min(samples), 1),
    }


def fill(redis_url: str, records: int, folder: Path) -> dict[str, str]:
    """``records`` job records, backup records of ``records`` sites, and a bench folder with
    that many sites; returns the environment jerpctl needs to read them."""
    import redis

    from jerp_jobs.jobs import JobStore

    client = redis.Redis.from_url(redis_url)
    store = JobStore(client, ttl_days=1)
    for i in range(records):
        store.create("backup", ["backup", "upload-offsite", "prune-local"], site=f"s{i:05d}.example.com")
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(records):
        site = f"s{i:05d}.example.com"
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now - i))
        manifest = {"site": site, "timestamp": stamp, "utc_timestamp": stamp, "verified": True,
                    "artifacts": [{"path": f"{site}/private/backups/{stamp}-database.sql.gz", "size": 1000}]}
        pipe.zadd(f"jerp:backups:{site}", {json.dumps(manifest): now - i})
        pipe.zadd(f"jerp:offsite:{site}", {json.dumps(manifest): now - i})
        if i % 1000 == 999:
            pipe.execute()
        sites = folder / "sites" / site
        sites.mkdir(parents=True)
        (sites / "site_config.json").write_text("{}")
    pipe.execute()
    (folder / "sites" / "apps.txt").write_text("frappe\n")
    env = {"JERP_BROKER_URL": redis_url, "JERP_BACKEND_URL": redis_url, "JERP_EXECUTOR": "local",
           "JERP_BENCH_DIR": str(folder), "JERP_S3_BUCKET": "benchmark", "JERP_ENV_FILE": os.devnull}
    if os.geteuid() == 0:
        env["JERP_BENCH_USER"] = "nobody"
        folder.chmod(0o755)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--redis-url", help="a Redis database of your own, filled then flushed: adds the data cases")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--against", type=Path, metavar="BIN",
                        help="the bin folder of another install (e.g. main's venv): each jerpctl case is also run "
                             "with its jerpctl, and python -c pass, in turn within every run (for a shared, busy "
                             "machine)")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    targets = {"python -c pass": None}
    for name, argv in CASES.items():
        if args.against and name != "python -c pass":
            this, other, floor = time_interleaved([argv, [str(args.against / argv[0].rsplit("/", 1)[-1]), *argv[1:]],
                                                   [sys.executable, "-c", "pass"]], args.runs, {})
            results[name] = {**summary(this), "against_median_ms": summary(other)["median_ms"],
                             "floor_median_ms": summary(floor)["median_ms"]}
        else:
            results[name] = summary(time_case(argv, args.runs))
        targets.setdefault(name, 300)
    results["jerpctl --help"]["heavy_imports"] = heavy_imports(["--help"])
    results["jerpctl enqueue backup Bad_Site"]["heavy_imports"] = heavy_imports(["enqueue", "backup", "Bad_Site"])
    if args.redis_url:
        import redis

        client = redis.Redis.from_url(args.redis_url)
        if client.dbsize():
            sys.exit(f"{args.redis_url} is not empty: give a Redis database of your own")
        with tempfile.TemporaryDirectory(prefix="jerp-cli-bench-") as tmp:
            try:
                env = fill(args.redis_url, args.records, Path(tmp))
                n = f"{args.records:,}"
                for name, argv, target in (
                    (f"jerpctl jobs ({n} records)", ["jobs"], 150),
                    (f"jerpctl backups ({n} sites)", ["backups"], 500),
                    (f"jerpctl sites ({n} sites)", ["sites"], 500),
                ):
                    done = subprocess.run([str(BIN / "jerpctl"), *argv], env={**os.environ, **env},
                                          capture_output=True, text=True)
                    if done.returncode not in (0, 1) or not done.stdout.strip():
                        sys.exit(f"jerpctl {' '.join(argv)} failed (exit {done.returncode}): {done.stderr[-500:]}")
                    if args.against:
                        this, other, floor = time_interleaved(
                            [[str(BIN / "jerpctl"), *argv], [str(args.against / "jerpctl"), *argv],
                             [sys.executable, "-c", "pass"]], args.runs, env)
                        results[name] = {**summary(this), "against_median_ms": summary(other)["median_ms"],
                                         "floor_median_ms": summary(floor)["median_ms"]}
                    else:
                        results[name] = summary(time_case([str(BIN / "jerpctl"), *argv], args.runs, env))
                    targets[name] = target
            finally:
                client.flushdb()
    base = results["python -c pass"]["median_ms"]
    for name, r in results.items():
        r["target_ms"] = targets.get(name)
    ok = all(r["median_ms"] <= r["target_ms"] and not r.get("heavy_imports")
             for r in results.values() if r["target_ms"] is not None)
    report = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()}, "runs": args.runs,
              "results": results, "met": ok}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'case':<36} {'median':>8} {'p90':>8} {'min':>8} {'over python':>12} {'target':>7}  heavy imports")
        for name, r in results.items():
            over = r["median_ms"] - base
            target = f"{r['target_ms']}ms" if r["target_ms"] else "-"
            print(f"{name:<36} {r['median_ms']:>6.1f}ms {r['p90_ms']:>6.1f}ms {r['min_ms']:>6.1f}ms "
                  f"{over:>10.1f}ms {target:>7}  {', '.join(r.get('heavy_imports', [])) or '-'}")
            if "against_median_ms" in r:
                print(f"{'':<4}in turn with it: --against {r['against_median_ms']:.1f}ms, "
                      f"python -c pass {r['floor_median_ms']:.1f}ms (medians)")
        print(f"targets (median, no heavy import where listed): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
