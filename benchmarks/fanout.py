"""backup-all over N sites against N independent backup jobs, with a bench that answers at once.

Both runs use the same real Celery workers on the same Redis database and the same bench folder
(``benchmarks/instant_bench/bench``: every command answers instantly with bench's output, so
what is measured is jerp-jobs). Reported: the time each run takes to finish, their ratio, the
Redis memory per job, and the growth per added site (time per child over the first and the
last quarter of the fan-out: flat when a child's end costs the same at any size).

    tests/services/up.sh
    .venv/bin/python benchmarks/fanout.py                   # 2,000 sites, concurrency 8
    .venv/bin/python benchmarks/fanout.py --sites 10000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_BIN = ROOT / "benchmarks" / "instant_bench" / "bench"
RUN_DIR = Path(os.environ.get("JERP_SERVICES_DIR") or ROOT / "tests" / ".run")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def default_redis_url() -> str:
    port = os.environ.get("JERP_TEST_REDIS_PORT")
    if not port:
        try:
            port = (RUN_DIR / "redis.port").read_text().strip()
        except OSError:
            port = "16379"
    return f"redis://127.0.0.1:{port}/9"


def make_bench(folder: Path, count: int) -> list[str]:
    """A bench folder with ``count`` sites (a site_config.json and a backup folder each)."""
    sites_dir = folder / "sites"
    sites_dir.mkdir(parents=True)
    import pwd

    (sites_dir / "common_site_config.json").write_text(json.dumps({"frappe_user": pwd.getpwuid(os.geteuid()).pw_name}))
    names = [f"site{i:05d}.bench.test" for i in range(count)]
    for name in names:
        (sites_dir / name / "private" / "backups").mkdir(parents=True)
        (sites_dir / name / "site_config.json").write_text(json.dumps({"db_name": "_" + name.replace(".", "_")}))
    return names


class Worker:
    """``celery -A jerp_jobs worker -c N`` in its own session; its log into a file."""

    def __init__(self, env: dict[str, str], *, name: str, concurrency: int, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._ready = threading.Event()
        celery = Path(sys.executable).parent / "celery"
        self.proc = subprocess.Popen(
            [str(celery), "-A", "jerp_jobs", "worker", "-n", f"{name}@%h", "-c", str(concurrency),
             "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
            env={**os.environ, **env}, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            if b" ready." in line:
                self._ready.set()
        self._log.flush()

    def wait_ready(self, timeout: float = 90) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"worker not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        self._log.close()


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def wait_until(what: str, done: Any, timeout: float, report: Any = None) -> None:
    deadline = time.monotonic() + timeout
    last = 0.0
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not finish in {timeout:.0f}s")
        if report is not None and time.monotonic() - last > 15:
            report()
            last = time.monotonic()
        time.sleep(0.25)


def quarters(ends: list[float]) -> dict[str, float | None]:
    """Seconds per child over the first and the last quarter of the children's ends (sorted),
    each measured between two ends (so the run's start-up is left out)."""
    ends = sorted(ends)
    q = len(ends) // 4
    if q < 2:
        return {"first_quarter_s_per_child": None, "last_quarter_s_per_child": None, "growth": None}
    first = (ends[q] - ends[0]) / q
    last = (ends[-1] - ends[-q - 1]) / q
    return {"first_quarter_s_per_child": first, "last_quarter_s_per_child": last,
            "growth": last / first if first > 0 else None}


def records(rt: Any, ids: list[str]) -> list[Any]:
    from jerp_jobs.jobs import _decode_job, as_text

    out = []
    for start in range(0, len(ids), 500):
        pipe = rt.redis.pipeline(transaction=False)
        for job_id in ids[start:start + 500]:
            pipe.hgetall(f"jerp:job:{job_id}")
        out += [_decode_job(raw, as_text(job_id)) for job_id, raw in zip(ids[start:start + 500], pipe.execute())]
    return out


def record_bytes(rt: Any, ids: list[str], sample: int = 200) -> float:
    """Mean MEMORY USAGE of the job records of ``ids`` (an even sample of them)."""
    step = max(1, len(ids) // sample)
    picked = ids[::step]
    pipe = rt.redis.pipeline(transaction=False)
    for job_id in picked:
        pipe.memory_usage(f"jerp:job:{job_id}", samples=0)
    sizes = [s or 0 for s in pipe.execute()]
    return sum(sizes) / len(sizes) if sizes else 0.0


def run_fanout(rt: Any, args: argparse.Namespace) -> dict[str, Any]:
    from jerp_jobs.enqueue import submit
    from jerp_jobs.operations.fanout import _keys, progress

    before = used_memory(rt.redis)
    t0 = time.time()
    parent = submit(rt, "backup-all", params={"concurrency": args.concurrency, "with_files": False})
    log(f"backup-all {parent.id} submitted over {args.sites} sites, concurrency {args.concurrency}")

    def report() -> None:
        live = progress(rt.redis, parent.id)
        log(f"  backup-all: {live['counts'] if live else 'discovering'} after {time.time() - t0:.0f}s")

    wait_until("backup-all", lambda: rt.store.get(parent.id).finished, args.timeout, report)
    job = rt.store.get(parent.id)
    elapsed = (job.ended_at or time.time()) - t0
    child_ids = [e["job_id"] for e in job.result.get("sites", {}).values() if e.get("job_id")]
    children = records(rt, child_ids)
    sites_started = min((c.created_at for c in children), default=t0)
    parent_bytes = sum(rt.redis.memory_usage(k, samples=0) or 0 for k in (f"jerp:job:{parent.id}", *_keys(parent.id)))
    jobs = len(children) + 1
    return {
        "job_id": parent.id, "state": job.state, "error": job.error, "children": len(children),
        "counts": job.result.get("counts"), "elapsed_s": elapsed,
        "redis_bytes_per_job": (used_memory(rt.redis) - before) / jobs,
        "record_bytes_per_job": (record_bytes(rt, child_ids) * len(child_ids) + parent_bytes) / jobs,
        "parent_and_fanout_keys_bytes": parent_bytes,
        "children_s": (max(c.ended_at or 0 for c in children) - sites_started) if children else None,
        **quarters([c.ended_at or 0 for c in children]),
    }


def run_independent(rt: Any, sites: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from jerp_jobs.enqueue import submit

    before = used_memory(rt.redis)
    t0 = time.time()
    ids = [submit(rt, "backup", site=site, params={"with_files": False}).id for site in sites]
    log(f"{len(ids)} independent backup jobs submitted in {time.time() - t0:.1f}s")
    pending = set(ids)

    def finished() -> bool:
        batch = list(pending)[:2000]
        pipe = rt.redis.pipeline(transaction=False)
        for job_id in batch:
            pipe.hget(f"jerp:job:{job_id}", "ended_at")
        for job_id, ended in zip(batch, pipe.execute()):
            if ended:
                pending.discard(job_id)
        return not pending

    wait_until("independent backups", finished, args.timeout,
               lambda: log(f"  independent: {len(ids) - len(pending)} of {len(ids)} ended after {time.time() - t0:.0f}s"))
    jobs = records(rt, ids)
    states: dict[str, int] = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
    ends = [j.ended_at or 0 for j in jobs]
    return {
        "jobs": len(jobs), "states": states, "elapsed_s": max(ends) - t0,
        "redis_bytes_per_job": (used_memory(rt.redis) - before) / len(jobs),
        "record_bytes_per_job": record_bytes(rt, ids),
        **quarters(ends),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=2000, help="sites of the bench (default 2,000)")
    ap.add_argument("--concurrency", type=int, default=8,
                    help="backup-all --concurrency, and the workers' pool size (default 8)")
    ap.add_argument("--workers", type=int, default=1, help="Celery workers (default 1)")
    ap.add_argument("--redis-url", default=default_redis_url(),
                    help="a Redis database of its own: flushed before and after (default db 9 of tests/services)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds each run may take")
    ap.add_argument("--order", choices=("fanout-first", "independent-first"), default="fanout-first")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import redis

    client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=2)
    client.ping()
    work = Path(tempfile.mkdtemp(prefix="jerp-fanout-bench-"))
    workers: list[Worker] = []
    try:
        bench = work / "frappe-bench"
        sites = make_bench(bench, args.sites)
        log(f"bench with {len(sites)} sites in {bench}")
        env = {"JERP_BROKER_URL": args.redis_url, "JERP_EXECUTOR": "local", "JERP_BENCH_DIR": str(bench),
               "JERP_BENCH_BIN": str(BENCH_BIN), "JERP_FANOUT_CONCURRENCY": str(args.concurrency),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        for name in ("JERP_S3_BUCKET", "JERP_NOTIFY_URLS"):
            os.environ.pop(name, None)
        os.environ.update(env)
        from jerp_jobs.enqueue import submit
        from jerp_jobs.bootstrap import get_runtime

        rt = get_runtime()
        rt.redis.flushdb()
        for k in range(args.workers):
            workers.append(Worker(env, name=f"fanout{k}", concurrency=args.concurrency,
                                  log_path=work / f"worker{k}.log"))
        for w in workers:
            w.wait_ready()
        log(f"{args.workers} worker(s) ready, -c {args.concurrency}")
        warm = [submit(rt, "backup", site=site, params={"with_files": False}).id
                for site in sites[: args.workers * args.concurrency]]  # first-use imports and connections
        wait_until("the warm-up", lambda: all(rt.store.get(j).finished for j in warm), 120)
        time.sleep(1.1)  # the measured backups of these sites get a later second in their names
        result: dict[str, Any] = {"sites": args.sites, "concurrency": args.concurrency, "workers": args.workers,
                                  "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                              "redis": client.info("server")["redis_version"]}}
        runs = ["fanout", "independent"] if args.order == "fanout-first" else ["independent", "fanout"]
        for run in runs:
            result[run] = run_fanout(rt, args) if run == "fanout" else run_independent(rt, sites, args)
            log(f"{run}: {result[run]['elapsed_s']:.1f}s")
        result["ratio"] = result["fanout"]["elapsed_s"] / result["independent"]["elapsed_s"]
    finally:
        for w in workers:
            w.stop()
        client.flushdb()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print_report(result)
    return 0 if result["fanout"]["state"] == "succeeded" else 1


def print_report(r: dict[str, Any]) -> None:
    f, i = r["fanout"], r["independent"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f} ms"

    print(f"{r['sites']} sites, concurrency {r['concurrency']}, {r['workers']} worker(s), "
          f"{r['machine']['cores']} cores, Redis {r['machine']['redis']}")
    print(f"backup-all          {f['elapsed_s']:8.1f} s  ({f['state']}, {f['counts']})")
    print(f"independent backups {i['elapsed_s']:8.1f} s  ({i['states']})")
    print(f"ratio               {r['ratio']:8.2f}   (target within 2x)")
    print(f"Redis per job       records: backup-all {f['record_bytes_per_job'] / 1024:.2f} KiB, independent "
          f"{i['record_bytes_per_job'] / 1024:.2f} KiB; used_memory growth: backup-all "
          f"{f['redis_bytes_per_job'] / 1024:.2f} KiB, independent {i['redis_bytes_per_job'] / 1024:.2f} KiB; "
          f"the parent's record and fan-out keys {f['parent_and_fanout_keys_bytes'] / 1024:.0f} KiB")
    print(f"time per child      backup-all first quarter {ms(f['first_quarter_s_per_child'])}, last quarter "
          f"{ms(f['last_quarter_s_per_child'])} (x{f['growth'] or 0:.2f}); independent first "
          f"{ms(i['first_quarter_s_per_child'])}, last {ms(i['last_quarter_s_per_child'])} (x{i['growth'] or 0:.2f})")


if __name__ == "__main__":
    sys.exit(main())
