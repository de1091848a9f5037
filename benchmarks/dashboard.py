"""Dashboard page load times over 10,000 job records (or ``--records N``), served by uvicorn on
loopback and fetched with httpx as a browser would (logged in, cookie sent), on the real Redis.

The records: N jobs over 200 sites, mostly backups (70 %), migrates (20 %), one in 100 a drill,
the rest clear-cache; 90 % succeeded, 5 % failed with an output tail, the newest few running;
one migrate-all over the 200 sites. Pages timed (median and 95th percentile of ``--runs``):
the jobs list (first page, an older page, filtered by a rare kind, by site, by state), a job's
page, the fan-out's page, the sites page.

    .venv/bin/python benchmarks/dashboard.py --redis-url redis://127.0.0.1:PORT/9 [--records 10000] [--runs 30]

The database given is flushed before and after.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SITE_COUNT = 200
OUTPUT = "".join(f"Running patch frappe.patches.v15_0.patch_{i}\n" for i in range(60))


def _kind(i: int) -> str:
    if i % 100 == 7:
        return "drill"
    return ("backup", "backup", "backup", "backup", "backup", "backup", "backup", "migrate", "migrate",
            "clear-cache")[i % 10]


def seed(rt: Any, n: int, *, sites: int = SITE_COUNT) -> list[str]:
    """``n`` job records through the job store (oldest first; their ids returned in that order)."""
    ids = []
    names = [f"site{i:03d}.example.com" for i in range(sites)]
    for i in range(n):
        kind = _kind(i)
        steps = {"backup": ["backup", "upload-offsite", "prune-local"], "migrate": ["maintenance-on", "backup",
                 "migrate", "clear-cache", "maintenance-off"], "drill": ["fetch", "restore", "verify", "drop"],
                 "clear-cache": ["clear-cache"]}[kind]
        job = rt.store.create(kind, steps, site=names[i % sites])
        ids.append(job.id)
        if i >= n - 3:
            continue  # the newest stay queued
        if i % 20 == 3:
            step = rt.store.start_step(job.id, steps[0], worker="bench")
            rt.store.finish_step(job.id, step, "failed", exit_code=1, output=OUTPUT, error="command failed")
            rt.store.set_state(job.id, "failed", error=f"{steps[0]} failed")
        else:
            rt.store.set_state(job.id, "succeeded")
    return ids


def _full_job(rt: Any) -> str:
    steps = ["maintenance-on", "backup", "migrate", "clear-cache", "maintenance-off"]
    job = rt.store.create("migrate", steps, site="site000.example.com")
    for name in steps:
        step = rt.store.start_step(job.id, name, worker="bench")
        rt.store.finish_step(job.id, step, "success", output=OUTPUT)
    rt.store.set_state(job.id, "succeeded")
    return job.id


def _fanout(rt: Any) -> str:
    job = rt.store.create("migrate-all", ["discover", "canary", "sites", "clear-canary-cache"])
    sites = {f"site{i:03d}.example.com": {"state": "succeeded", "job_id": f"{i:012x}"} for i in range(SITE_COUNT)}
    rt.store.set_result(job.id, sites=sites, canary="site000.example.com")
    rt.store.set_state(job.id, "succeeded")
    return job.id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import httpx
    import redis
    import uvicorn

    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.dashboard.server import create_app
    from jerp_jobs.dashboard.auth import hash_password
    from jerp_jobs.settings import load_settings
    from jerp_jobs.sites import BENCH_SITE_COUNT
    from tests.fake_executor import FakeExecutor

    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    folder = Path(tempfile.mkdtemp(prefix="jerp-dash-bench-")) / "sites"
    for i in range(SITE_COUNT):
        (folder / f"site{i:03d}.example.com").mkdir(parents=True)
        (folder / f"site{i:03d}.example.com" / "site_config.json").write_text("{}")
    settings = load_settings(_env_file=None, broker_url=args.redis_url, executor="local", bench_dir=folder.parent,
                             sites_dir=folder, dashboard_secret="benchmark-secret-0123456789abcdef",
                             dashboard_users=f"bench:read-only:{hash_password('bench-password')}")
    rt = build_runtime(settings, client=client,
                       executor=FakeExecutor().on(BENCH_SITE_COUNT, output=["." * SITE_COUNT]))
    started = time.perf_counter()
    ids = seed(rt, args.records)
    job_id, fan_id = _full_job(rt), _fanout(rt)
    seeding = time.perf_counter() - started
    for i in range(SITE_COUNT):
        client.zadd(f"jerp:backups:site{i:03d}.example.com", {json.dumps({"timestamp": "x", "artifacts": []}): time.time()})

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, dict[str, float]] = {}
    try:
        with httpx.Client(base_url=base, headers={"Origin": base}) as http:
            answer = http.post("/login", data={"username": "bench", "password": "bench-password"})
            assert answer.status_code == 303, answer.text
            cursor = httpx.Client(base_url=base, cookies=http.cookies).get("/jobs").text
            older = cursor.split('href="/jobs?before=')[1].split('"')[0].replace("&amp;", "&")
            pages = {
                "jobs list, first page": "/jobs",
                "jobs list, second page": f"/jobs?before={older}",
                "jobs list, kind=drill (1 in 100)": "/jobs?kind=drill",
                "jobs list, site filter": "/jobs?site=site042.example.com",
                "jobs list, state=failed": "/jobs?state=failed",
                "job page (5 steps with output)": f"/jobs/{job_id}",
                "job page (failed, from the list)": f"/jobs/{ids[3]}",
                "fan-out page (200 sites)": f"/jobs/{fan_id}",
                "sites page (200 sites)": "/sites",
            }
            for name, path in pages.items():
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    page = http.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert page.status_code == 200, (path, page.status_code)
                times.sort()
                results[name] = {"median_ms": round(statistics.median(times), 1),
                                 "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1), "bytes": len(page.content)}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        client.flushdb()
    if args.json:
        print(json.dumps({"records": args.records, "seeding_s": round(seeding, 1), "pages": results}, indent=2))
        return 0
    print(f"{args.records} job records (seeded in {seeding:.1f} s), {args.runs} runs per page, uvicorn on loopback")
    print(f"{'page':<36} {'median':>9} {'p95':>9} {'size':>9}")
    for name, r in results.items():
        print(f"{name:<36} {r['median_ms']:>7.1f}ms {r['p95_ms']:>7.1f}ms {r['bytes'] / 1024:>7.1f}kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
