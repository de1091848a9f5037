"""Time a scrape of /metrics at 10,000 job records.

    tests/services/up.sh
    .venv/bin/python benchmarks/metrics_scrape.py                 # 10,000 jobs, 200 sites, 15 scrapes
    .venv/bin/python benchmarks/metrics_scrape.py --jobs 50000 --json

Fills database 9 of this checkout's Redis (flushed before and after) with ``--jobs`` job records
written through the job store as workers write them (each job 4 steps, ended success or failed
with a duration, the job then succeeded or failed; 2 % left running), a local and an off-site
backup and a drill per site, attention marks on 1 % of the sites, Beat's schedule (RedBeat, as
Beat writes it) and 50 waiting messages. Then GETs /metrics through the ASGI app (Starlette's test
client, in process) ``--scrapes`` times and prints the median and p90 of the scrape, with the time of each
section as the collector reports it (``jerp_scrape_duration_seconds``). The workers' broadcast
is left out (no Celery app: it costs JERP_WORKER_PING_TIMEOUT, 1 s by default, whatever the
store holds).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUN_DIR = ROOT / "tests" / ".run"


def default_redis_url() -> str:
    port = os.environ.get("JERP_TEST_REDIS_PORT") or (RUN_DIR / "redis.port").read_text().strip()
    return f"redis://127.0.0.1:{port}/9"


def fill(rt: Any, jobs: int, sites: int) -> None:
    from jerp_jobs import keys

    r = rt.redis
    now = time.time()
    names = [f"site{i:04d}.bench.test" for i in range(sites)]
    kinds = ["backup", "migrate", "clear-cache", "drill"]
    steps = ["prepare", "run", "verify", "finish"]
    rng = random.Random(7)
    for i in range(jobs):
        job = rt.store.create(rng.choice(kinds), steps, site=names[i % sites])
        if rng.random() < 0.02:
            rt.store.start_step(job.id, steps[0], worker="bench")
            rt.store.set_state(job.id, "running")
            continue
        failed = rng.random() < 0.05
        for n, name in enumerate(steps):
            record = rt.store.start_step(job.id, name, worker="bench")
            record.started_at = time.time() - rng.expovariate(1 / 120)
            state = "failed" if failed and n == 2 else "success"
            rt.store.finish_step(job.id, record, state, output="line\n" * 20)
            if state == "failed":
                rt.store.skip_pending(job.id, reason="a step failed")
                break
        rt.store.set_state(job.id, "failed" if failed else "succeeded")
    manifest = json.dumps({"timestamp": "20261204_030000", "artifacts": []})
    pipe = r.pipeline(transaction=False)
    for n, site in enumerate(names):
        pipe.zadd(keys.LOCAL_BACKUPS + site, {manifest: now - rng.uniform(0, 40) * 3600})
        pipe.zadd(keys.OFFSITE_BACKUPS + site, {manifest: now - rng.uniform(0, 40) * 3600})
        pipe.hset(keys.DRILLS, site, json.dumps({"site": site, "at": now - n * 3600, "passed": n % 17 != 0}))
    for n in range(50):
        pipe.lpush("jerp.site", json.dumps({"headers": {"jerp_sent_at": now - n}}))
    pipe.execute()
    for site in names[: max(1, sites // 100)]:
        rt.sites.mark_attention(site, job_id="bench", reason="benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import redis
    from celery import Celery
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from jerp_jobs import metrics
    from jerp_jobs.beat import Scheduler
    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.celery import celery_config
    from jerp_jobs.settings import load_settings

    url = args.redis_url or default_redis_url()
    settings = load_settings(_env_file=None, broker_url=url, s3_bucket="bench")
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        rt = build_runtime(settings, client=client)
        started = time.monotonic()
        fill(rt, args.jobs, args.sites)
        app = Celery("bench", set_as_current=False)
        app.conf.update(celery_config(settings))
        from beat_schedule import beat_schedule

        app.conf.beat_schedule = beat_schedule(settings)
        Scheduler(app=app)  # writes the schedule to Redis as Beat does
        filled = time.monotonic() - started
        asgi = FastAPI()
        asgi.include_router(metrics.make_router(lambda: rt, None))  # no workers section: see above
        times, sections = [], {}
        with TestClient(asgi) as http:
            for _ in range(args.scrapes):
                begun = time.perf_counter()
                response = http.get("/metrics")
                times.append(time.perf_counter() - begun)
                assert response.status_code == 200
            for line in response.text.splitlines():
                if line.startswith("jerp_scrape_duration_seconds{"):
                    name = line.split('"')[1]
                    sections[name] = float(line.rsplit(" ", 1)[1])
        times.sort()
        result = {
            "jobs": args.jobs, "sites": args.sites, "scrapes": args.scrapes, "fill_s": round(filled, 1),
            "scrape_median_s": round(statistics.median(times), 4),
            "scrape_p90_s": round(times[int(0.9 * (len(times) - 1))], 4),
            "scrape_max_s": round(times[-1], 4),
            "body_bytes": len(response.content),
            "last_scrape_sections_s": sections,
        }
    finally:
        client.flushdb()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<24} {value}")


if __name__ == "__main__":
    main()
