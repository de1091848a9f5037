"""Fleet at scale: the nightly backup-all over N sites on B benches, its Redis memory, and the
listings (``jerpctl sites``, ``jerpctl jobs``, ``jerpctl benches``, the dashboard's sites page),
side by side with the same work on ONE bench of N sites without a fleet file.

Everything runs on a redis-server of the script's own (a free loopback port, no persistence,
stopped at the end) and the fake executor (tests/fake_executor.py: each bench counts its own
sites; the sites themselves are real folders with a ``site_config.json``, as the listing reads
them). The engine runs in this process: every published step is recorded and run by the
runtime of the job's bench (the worker that consumes that bench's queue: the bench's settings
from the fleet file, its own fake executor); a fan-out's steps run through the real runner.
Each site's backup child is played by its outcome: it succeeds as soon as its first step is
published (its own workflow is measured elsewhere, benchmarks/fanout.py), so what is measured is
the planning and enqueueing of the fan-out — discovery, the site-to-bench map, one child record
and one published step per site, each child's end starting the next — not the backups.

    .venv/bin/python benchmarks/fleet_scale.py                      # 5,000 sites over 10 benches
    .venv/bin/python benchmarks/fleet_scale.py --sites 50 --benches 3 --runs 2    # a quick run
    .venv/bin/python benchmarks/fleet_scale.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fanout import log, quarters, record_bytes, used_memory  # noqa: E402

BIN = Path(sys.executable).parent
#: the nightly backup-all's request (jerp_jobs.tasks.nightly_backup, without an off-site store)
NIGHTLY = {"offsite": False, "with_files": True, "retries": 1, "site_limit": 0}
DASH_USER, DASH_PASSWORD = "bench", "bench-password"
DASH_SECRET = "benchmark-secret-0123456789abcdef"


# -- the private Redis ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of this run's own: a free loopback port, no persistence, its own folder."""

    def __init__(self, folder: Path) -> None:
        server = shutil.which("redis-server")
        if not server:
            sys.exit("redis-server is not installed (tests/services/packages.sh test)")
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._log = open(folder / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
             "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, start_new_session=True)
        import redis

        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"redis-server ended at start: {(folder / 'redis.log').read_text()[-1000:]}")
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=1).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()


# -- the benches ------------------------------------------------------------------------------------


def site_names(count: int) -> list[str]:
    return [f"site{i:05d}.fleet.test" for i in range(count)]


def make_sites(sites_dir: Path, names: list[str]) -> None:
    """A sites folder as the bench's volume shows it: one folder with a site_config.json per site."""
    sites_dir.mkdir(parents=True)
    (sites_dir / "apps.txt").write_text("frappe\nerpnext\n")
    for name in names:
        (sites_dir / name).mkdir()
        (sites_dir / name / "site_config.json").write_text(json.dumps({"db_name": "_" + name.replace(".", "_")}))


def split(names: list[str], benches: int) -> list[list[str]]:
    """The sites dealt over the benches in contiguous runs (the first benches one more when uneven)."""
    size, extra = divmod(len(names), benches)
    out, start = [], 0
    for k in range(benches):
        end = start + size + (1 if k < extra else 0)
        out.append(names[start:end])
        start = end
    return out


def bench_concurrency(k: int, base: int) -> int:
    """Each bench its own concurrency (base, base+2, base+4, ...) to show that each bench's bounds its own."""
    return base + 2 * (k % 3)


def write_fleet(path: Path, benches: list[tuple[str, Path, int]], *, with_sites_dir: bool) -> Path:
    """The fleet file: one local bench per entry (its own compose project), production, with its
    sites folder (when ``with_sites_dir``: as its worker sees it) and its concurrency."""
    lines = []
    for name, sites_dir, concurrency in benches:
        lines += ["[[bench]]", f'name = "{name}"', 'role = "production"', 'group = "bench"',
                  f'compose_project = "jerp-{name}"', f"concurrency = {concurrency}"]
        if with_sites_dir:
            lines.append(f'sites_dir = "{sites_dir}"')
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# -- the engine in this process ---------------------------------------------------------------------


class Engine:
    """Published steps and parent notifications of every runtime go into one queue each; each
    step is run by the runtime of its job's bench (the control plane's for a job of no bench)."""

    def __init__(self, control: Any, benches: dict[str, Any]) -> None:
        self.control, self.benches = control, benches
        self.steps: deque[tuple[str, str]] = deque()
        self.notes: deque[tuple[str, str]] = deque()
        for rt in (control, *benches.values()):
            rt.dispatch = lambda job_id, step: self.steps.append((job_id, step))
            rt.notify_parent = lambda parent, child: self.notes.append((parent, child))
            rt.notify = lambda event, title, body: None
        self.running: dict[str, int] = {}
        self.max_running: dict[str, int] = {}
        self.max_fleet_running = 0
        self.discovered_at: dict[str, float] = {}
        self.children: list[str] = []
        self.child_published_at: list[float] = []
        self.fanout_key_bytes: dict[str, int] = {}
        self._bench_of: dict[str, str | None] = {}

    def _route(self, job_id: str) -> tuple[str, str | None, str | None]:
        route = self.control.store.route(job_id)
        assert route is not None, job_id
        return route

    def runtime_of(self, bench: str | None) -> Any:
        return self.benches.get(bench or "", self.control) if bench else self.control

    def run(self, timeout: float) -> None:
        from jerp_jobs import fanouts, runner

        deadline = time.monotonic() + timeout
        while self.steps or self.notes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fan-out did not settle in {timeout:.0f}s")
            if self.steps:
                job_id, step = self.steps.popleft()
                kind, site, bench = self._route(job_id)
                rt = self.runtime_of(bench)
                if site is not None:  # a site's backup: played by its outcome
                    key = bench or "-"
                    self.children.append(job_id)
                    self.child_published_at.append(time.time())
                    self.running[key] = self.running.get(key, 0) + 1
                    self.max_running[key] = max(self.max_running.get(key, 0), self.running[key])
                    self.max_fleet_running = max(self.max_fleet_running, sum(self.running.values()))
                    self._bench_of[job_id] = key
                    runner.finish_job(rt, job_id, "succeeded")
                else:
                    runner.run_step(rt, job_id, step, worker=f"{bench or 'control'}@bench")
                    if step == "discover" and (bench or not self.benches):
                        self.discovered_at[bench or "-"] = time.time()
                        self.fanout_key_bytes[job_id] = sum(
                            rt.redis.memory_usage(k, samples=0) or 0 for k in fanouts.fanout_keys(job_id))
            else:
                parent, child = self.notes.popleft()
                if child in self._bench_of:
                    self.running[self._bench_of[child]] -= 1
                runner.child_done(self.runtime_of(self._route(parent)[2]), parent, child)


def build_runtimes(url: str, *, control_file: Path | None = None, worker_file: Path | None = None,
                   single: tuple[Path, int] | None = None) -> tuple[Any, dict[str, Any]]:
    """The control plane's runtime (``control_file``: the fleet as the control plane reads it;
    also the dashboard's) and each bench's worker runtime (``worker_file``: the fleet with each
    bench's sites folder; the bench's settings as jerp_jobs.settings.for_bench gives them, and a
    fake executor that counts the bench's sites); for ``single`` (sites folder, site count): the
    one runtime of a single host."""
    import redis

    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.dashboard.auth import hash_password
    from jerp_jobs.fleet import bench_overrides, load_fleet
    from jerp_jobs.settings import load_settings
    from jerp_jobs.sites import BENCH_SITE_COUNT, list_site_folders
    from tests.fake_executor import FakeExecutor

    client = redis.Redis.from_url(url)
    base = dict(_env_file=None, broker_url=url, executor="local", s3_bucket=None, notify_urls=None,
                dashboard_secret=DASH_SECRET, dashboard_users=f"{DASH_USER}:read-only:{hash_password(DASH_PASSWORD)}")
    if single is not None:
        folder, count = single
        settings = load_settings(**base, bench_dir=folder.parent, sites_dir=folder, fanout_concurrency=8)
        rt = build_runtime(settings, client=client, executor=FakeExecutor().on(BENCH_SITE_COUNT, output=["." * count]))
        return rt, {}
    control = build_runtime(load_settings(**base, fleet_file=control_file), client=client, executor=FakeExecutor())
    worker_settings = load_settings(**base, fleet_file=worker_file)
    workers = {}
    for bench in load_fleet(worker_settings):
        assert bench.sites_dir is not None
        count = len(list_site_folders(bench.sites_dir).sites)
        settings = worker_settings.model_copy(update=bench_overrides(bench))
        workers[bench.name] = build_runtime(settings, client=client,
                                            executor=FakeExecutor().on(BENCH_SITE_COUNT, output=["." * count]))
    return control, workers


# -- one scenario: the backup-all, its memory, the listings -----------------------------------------


def run_backup_all(control: Any, workers: dict[str, Any], sites: int, timeout: float) -> dict[str, Any]:
    from jerp_jobs import keys
    from jerp_jobs.enqueue import submit
    from jerp_jobs.operations.fanout import _keys

    engine = Engine(control, workers)
    client = control.redis
    before = used_memory(client)
    calls_before = redis_calls(client)
    cpu0 = time.process_time()
    t0 = time.time()
    parent = submit(control, "backup-all", params=NIGHTLY, actor="beat nightly-backup")
    requested = time.time() - t0
    engine.run(timeout)
    elapsed = time.time() - t0
    cpu = time.process_time() - cpu0
    calls_after = redis_calls(client)
    calls, redis_cpu = calls_after[0] - calls_before[0], calls_after[1] - calls_before[1]
    done = control.store.get(parent.id)
    after = used_memory(client)
    # the jobs: the request's, one per bench in a fleet, one per site
    bench_parents = [e["job_id"] for e in done.result.get("sites", {}).values()] if workers else []
    parents = [parent.id, *bench_parents]
    states: dict[str, int] = {}
    for bench_parent in bench_parents:
        job = control.store.get(bench_parent)
        states[job.state] = states.get(job.state, 0) + 1
    parent_bytes = sum(client.memory_usage(f"jerp:job:{p}", samples=0) or 0 for p in parents)
    leftover_fanout = sum(client.memory_usage(k, samples=0) or 0 for p in parents for k in _keys(p))
    map_keys = [keys.SITE_BENCH, keys.SITE_CONFLICT, keys.BENCH_LISTED,
                *(keys.BENCH_SITES + name for name in control.fleet.names)]
    map_bytes = sum(client.memory_usage(k, samples=0) or 0 for k in map_keys)  # one bench records its listing too
    child_bytes = record_bytes(control, engine.children)
    jobs = len(engine.children) + len(parents)
    discovered = max(engine.discovered_at.values()) - t0 if engine.discovered_at else None
    concurrency = {name: w.fleet.get(name).concurrency for name, w in workers.items()} if workers else \
        {name: control.settings.fanout_concurrency for name in control.fleet.names}
    return {
        "job_id": parent.id, "state": done.state, "error": done.error, "bench_fanouts": states,
        "children": len(engine.children), "distinct_sites": len({control.store.route(c)[1] for c in engine.children}),
        "request_s": requested,
        "all_discovered_s": discovered,
        "first_discovered_s": min(engine.discovered_at.values()) - t0 if engine.discovered_at else None,
        "all_children_published_s": max(engine.child_published_at) - t0 if engine.children else None,
        "elapsed_s": elapsed,
        "per_site_ms": elapsed / sites * 1000,
        "cpu_per_site_ms": cpu / sites * 1000,
        "redis_calls_per_site": calls / sites,
        "redis_cpu_per_site_ms": redis_cpu * 1000 / sites,
        **quarters(engine.child_published_at),
        "per_child_ms_by_tenth": tenths(engine.child_published_at),
        "concurrency": concurrency, "max_running": engine.max_running,
        "max_running_fleet": engine.max_fleet_running,
        "memory": {
            "used_memory_delta": after - before,
            "used_memory_per_job": (after - before) / jobs,
            "jobs": jobs,
            "child_record_bytes": child_bytes,
            "parent_record_bytes": parent_bytes / len(parents),
            "fanout_keys_peak_bytes_per_site": sum(engine.fanout_key_bytes.values()) / sites,
            "fanout_keys_left": leftover_fanout,
            "map_bytes": map_bytes, "map_bytes_per_site": map_bytes / sites,
        },
    }


def tenths(times: list[float]) -> list[float]:
    """ms per child over each tenth of the children (by their publication, in order)."""
    times = sorted(times)
    n = len(times) // 10
    if n < 2:
        return []
    return [round((times[(k + 1) * n - 1] - times[k * n]) / (n - 1) * 1000, 2) for k in range(10)]


def redis_calls(client: Any) -> tuple[int, float]:
    """Commands the server has run so far (scripts' own commands included, INFO's excluded) and
    the CPU time it has used (user and system, seconds)."""
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    return (sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"),
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


def seed_backups(client: Any, sites: list[str]) -> int:
    """One backup record per site, as the nightly run leaves them (the listings show their age);
    returns the used_memory it took."""
    before = used_memory(client)
    now = time.time()
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now))
    pipe = client.pipeline(transaction=False)
    for i, site in enumerate(sites):
        manifest = {"site": site, "timestamp": stamp, "utc_timestamp": stamp, "verified": True,
                    "artifacts": [{"path": f"{site}/private/backups/{stamp}-database.sql.gz", "size": 1000}]}
        pipe.zadd(f"jerp:backups:{site}", {json.dumps(manifest): now})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return used_memory(client) - before


def check_cli(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One run of ``jerpctl argv`` (unmeasured: bytecode compiled, caches warm): its rows and exit."""
    first = subprocess.run([str(BIN / "jerpctl"), *argv], env=env, capture_output=True, text=True)
    if first.returncode not in (0, 1) or not first.stdout.strip():
        raise RuntimeError(f"jerpctl {' '.join(argv)} failed (exit {first.returncode}): {first.stderr[-800:]}")
    rows = len(json.loads(first.stdout)) if argv[0] == "--json" and argv[1] in ("sites", "jobs") else \
        len(first.stdout.strip().splitlines())
    return {"rows": rows, "exit": first.returncode}


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def time_cli_in_turn(cases: dict[tuple[str, str], tuple[list[str], dict[str, str]]], runs: int
                     ) -> dict[tuple[str, str], dict[str, Any]]:
    """Each case (``jerpctl argv`` as a cold process) ``runs`` times, the cases taken in turn
    within every run (the order rotating), so that a change of the machine's load falls on each
    of them alike; median and spread in ms, with the rows and exit of a first unmeasured run."""
    full = {key: (argv, {**os.environ, "PYTHONDONTWRITEBYTECODE": "0", **env}) for key, (argv, env) in cases.items()}
    out = {key: check_cli(argv, env) for key, (argv, env) in full.items()}
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in full}
    order = list(full)
    for run in range(runs):
        for offset in range(len(order)):
            key = order[(run + offset) % len(order)]
            argv, env = full[key]
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "jerpctl"), *argv], env=env, capture_output=True)
            samples[key].append((time.perf_counter() - t0) * 1000)
    return {key: {**summary(samples[key]), **out[key]} for key in full}


class Dashboard:
    """The dashboard of ``rt``, served by uvicorn on loopback, and an httpx client logged in to it."""

    def __init__(self, rt: Any) -> None:
        import httpx
        import uvicorn

        from jerp_jobs.dashboard.server import create_app

        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(rt, celery_app=None), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=base, headers={"Origin": base}, timeout=120)
        answer = self.http.post("/login", data={"username": DASH_USER, "password": DASH_PASSWORD})
        if answer.status_code != 303:
            raise RuntimeError(f"dashboard login refused: {answer.status_code} {answer.text[:300]}")
        self.page = self.get("/sites")
        self.samples: list[float] = []

    def get(self, path: str) -> Any:
        page = self.http.get(path)
        if page.status_code != 200:
            raise RuntimeError(f"{path} answered {page.status_code}")
        return page

    def time_sites(self) -> None:
        t0 = time.perf_counter()
        self.page = self.get("/sites")
        self.samples.append((time.perf_counter() - t0) * 1000)

    def close(self) -> dict[str, Any]:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        text = self.page.text
        return {**summary(self.samples), "bytes": len(self.page.content), "rows": text.count("<tr") - 1,
                "problem": "could not be asked" in text}


def time_dashboards(runtimes: dict[str, Any], runs: int) -> dict[str, dict[str, Any]]:
    """The sites page of each runtime's dashboard, ``runs`` times, the dashboards in turn."""
    boards: dict[str, Dashboard] = {}
    try:
        for name, rt in runtimes.items():
            boards[name] = Dashboard(rt)
        for _ in range(runs):
            for board in boards.values():
                board.time_sites()
    finally:
        results = {name: board.close() for name, board in boards.items()}
    return results


def quiet() -> None:
    """Warnings and errors only, on stderr, as JSON (the report is on stdout)."""
    import logging

    from jerp_jobs.log import configure

    configure(json=True, level=logging.WARNING)


def scenario(name: str, url: str, work: Path, names: list[str], args: argparse.Namespace, *,
             benches: int) -> tuple[dict[str, Any], dict[str, tuple[list[str], dict[str, str]]], Any]:
    """One scenario on its own empty Redis database: the bench folders, the backup-all, the
    memory. Returns its figures, its listing commands (label: argv, environment) and the
    control plane's runtime (the dashboard's)."""
    import redis

    quiet()
    client = redis.Redis.from_url(url)
    client.flushdb()
    root = work / name
    fleet = benches > 0
    if fleet:
        spec = []
        for k, part in enumerate(split(names, benches)):
            folder = root / f"b{k:02d}" / "sites"
            make_sites(folder, part)
            spec.append((f"b{k:02d}", folder, bench_concurrency(k, args.concurrency)))
        worker_file = write_fleet(root / "fleet.toml", spec, with_sites_dir=True)
        control_file = write_fleet(root / "fleet-control.toml", spec, with_sites_dir=False)
        control, workers = build_runtimes(url, control_file=control_file, worker_file=worker_file)
    else:
        folder = root / "frappe-bench" / "sites"
        make_sites(folder, names)
        control, workers = build_runtimes(url, single=(folder, len(names)))
    log(f"{name}: {len(names)} sites in {benches or 1} bench folder(s); backup-all ...")
    empty = used_memory(client)
    result: dict[str, Any] = {"benches": benches or 1, "backup_all": run_backup_all(control, workers, len(names),
                                                                                   args.timeout)}
    b = result["backup_all"]
    log(f"{name}: backup-all {b['state']} in {b['elapsed_s']:.1f}s, {b['children']} children")
    result["backup_memory"] = seed_backups(client, names)
    result["used_memory_total"] = used_memory(client) - empty
    env = {"JERP_BROKER_URL": url, "JERP_BACKEND_URL": url, "JERP_ENV_FILE": os.devnull, "JERP_EXECUTOR": "local",
           "JERP_WORKER_PING_TIMEOUT": str(args.ping_timeout)}
    if fleet:
        control_env = {**env, "JERP_FLEET_FILE": str(control_file)}
        cases = {"jerpctl sites (map; control plane sees no sites folder)": (["sites"], control_env),
                 "jerpctl sites (map; every sites folder visible)": (["sites"], {**env, "JERP_FLEET_FILE": str(worker_file)}),
                 "jerpctl --json sites (map)": (["--json", "sites"], control_env),
                 "jerpctl jobs": (["jobs"], control_env),
                 "jerpctl benches": (["benches"], control_env)}
    else:
        bench_env = {**env, "JERP_BENCH_DIR": str(folder.parent), "JERP_SITES_DIR": str(folder)}
        if os.geteuid() == 0:  # bench refuses root: the local executor runs it as another user
            bench_env["JERP_BENCH_USER"] = "nobody"
            for p in (work, root, folder.parent):
                p.chmod(0o755)
        cases = {"jerpctl sites (sites folder)": (["sites"], bench_env),
                 "jerpctl --json sites (sites folder)": (["--json", "sites"], bench_env),
                 "jerpctl jobs": (["jobs"], bench_env),
                 "jerpctl benches": (["benches"], bench_env)}
    return result, cases, control


def listings(scenarios: dict[str, tuple[dict[str, Any], dict[str, Any], Any]], runs: int) -> None:
    """The listings of every scenario, timed in turn; into each scenario's figures."""
    cases = {(name, label): case for name, (_, mine, _) in scenarios.items() for label, case in mine.items()}
    log(f"{len(cases)} listing commands, {runs} runs each, in turn ...")
    for (name, label), figures in time_cli_in_turn(cases, runs).items():
        scenarios[name][0].setdefault("cli", {})[label] = figures
        log(f"{name}: {label}: {figures['median_ms']:.0f} ms")
    log("the dashboards' sites pages, in turn ...")
    for name, figures in time_dashboards({name: rt for name, (_, _, rt) in scenarios.items()}, runs).items():
        scenarios[name][0]["dashboard_sites"] = figures
        log(f"{name}: dashboard /sites: {figures['median_ms']:.0f} ms")
    quiet()  # the dashboard configured its own logging


# -- the report ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=5000, help="sites of the fleet (default 5,000)")
    ap.add_argument("--benches", type=int, default=10, help="benches they are dealt over (default 10)")
    ap.add_argument("--concurrency", type=int, default=4,
                    help="the benches' concurrency in the fleet file: bench k gets this + 2*(k%%3) "
                         "(default 4: 4, 6, 8); the one-bench baseline runs 8")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each listing (median; default 5)")
    ap.add_argument("--ping-timeout", type=float, default=0.5,
                    help="JERP_WORKER_PING_TIMEOUT for jerpctl benches (no worker answers here; default 0.5)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds the backup-all may take")
    ap.add_argument("--no-baseline", action="store_true", help="skip the one-bench run")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.sites < 1 or args.benches < 2:
        ap.error("--sites must be at least 1 and --benches at least 2 (a fleet)")
    if args.sites < args.benches:
        ap.error("--sites must be at least --benches (every bench has a site)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("JERP_FLEET_FILE", None)
    os.environ.pop("JERP_BENCH", None)
    work = Path(tempfile.mkdtemp(prefix="jerp-fleet-scale-"))
    server = RedisServer(work / "redis")
    names = site_names(args.sites)
    result: dict[str, Any] = {
        "sites": args.sites, "runs": args.runs, "ping_timeout": args.ping_timeout,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load": os.getloadavg()},
        "transport": "in-process: every published step recorded and run by the runtime of its job's bench "
                     "(no Celery broker, no workers); site backups played by their outcome",
    }
    try:
        import redis

        result["machine"]["redis"] = redis.Redis.from_url(server.url()).info("server")["redis_version"]
        # the server's first use (its script cache, Lua, the keyspace's tables) left out of the figures
        warm = site_names(6)
        for benches, db in ((3, 2), (0, 3)):
            scenario(f"warm-up-{benches}", server.url(db), work, warm, args, benches=benches)
            redis.Redis.from_url(server.url(db)).flushdb()
        scenarios = {"fleet": scenario("fleet", server.url(0), work, names, args, benches=args.benches)}
        if not args.no_baseline:
            scenarios["one_bench"] = scenario("one-bench", server.url(1), work, names, args, benches=0)
        listings(scenarios, args.runs)
        for name, (figures, _, _) in scenarios.items():
            result[name] = figures
        result["machine"]["load_end"] = os.getloadavg()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
    ok = result["fleet"]["backup_all"]["state"] == "succeeded" and (
        args.no_baseline or result["one_bench"]["backup_all"]["state"] == "succeeded")
    return 0 if ok else 1


def print_report(r: dict[str, Any]) -> None:
    f = r["fleet"]
    o = r.get("one_bench")
    cols = [("fleet", f)] + ([("one bench", o)] if o else [])

    def row(label: str, fmt: Any) -> None:
        print(f"{label:<58}" + "".join(f"{fmt(s):>24}" for _, s in cols))

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    def kib(v: float) -> str:
        return f"{v / 1024:.2f} KiB"

    m = r["machine"]
    print(f"{r['sites']} sites; fleet of {f['benches']} benches; {m['cores']} cores, Python {m['python']}, "
          f"Redis {m['redis']} (own server); load average "
          f"(1 min) {m['load'][0]:.2f} at the start, {m.get('load_end', m['load'])[0]:.2f} at the end")
    print(f"transport: {r['transport']}")
    print(f"{'':<58}" + "".join(f"{name:>24}" for name, _ in cols))
    print("nightly backup-all: plan and enqueue")
    row("  request (record + first step published)", lambda x: ms(x["backup_all"]["request_s"] * 1000))
    row("  first bench's sites discovered", lambda x: s(x["backup_all"]["first_discovered_s"]))
    row("  every bench's sites discovered", lambda x: s(x["backup_all"]["all_discovered_s"]))
    row("  every site's child created and published", lambda x: s(x["backup_all"]["all_children_published_s"]))
    row("  backup-all ended", lambda x: s(x["backup_all"]["elapsed_s"]))
    row("  per site", lambda x: ms(x["backup_all"]["per_site_ms"]))
    row("  this process's CPU per site (engine and client)", lambda x: ms(x["backup_all"]["cpu_per_site_ms"]))
    row("  Redis commands per site (scripts' own included)", lambda x: f"{x['backup_all']['redis_calls_per_site']:.1f}")
    row("  the Redis server's CPU per site", lambda x: ms(x["backup_all"]["redis_cpu_per_site_ms"]))
    row("  per child, first quarter", lambda x: ms((x["backup_all"]["first_quarter_s_per_child"] or 0) * 1000))
    row("  per child, last quarter", lambda x: ms((x["backup_all"]["last_quarter_s_per_child"] or 0) * 1000))
    row("  per child, tenths 1/4/7/10 of the run (ms)",
        lambda x: "/".join(f"{v:.1f}" for v in x["backup_all"]["per_child_ms_by_tenth"][::3]) or "-")
    row("  state / children (distinct sites)",
        lambda x: f"{x['backup_all']['state']} {x['backup_all']['children']} ({x['backup_all']['distinct_sites']})")
    row("  most children running at once, whole fleet", lambda x: str(x["backup_all"]["max_running_fleet"]))
    print("  most running per bench (its concurrency):")
    for name in sorted(f["backup_all"]["max_running"]):
        print(f"    {name}: {f['backup_all']['max_running'][name]} ({f['backup_all']['concurrency'].get(name)})",
              end="")
    print()
    if o:
        ob = o["backup_all"]
        print("    one bench: " + ", ".join(f"{n}: {v} ({ob['concurrency'].get(n)})" for n, v in ob["max_running"].items()))
    print("Redis memory")
    row("  used_memory growth of the backup-all, per job", lambda x: kib(x["backup_all"]["memory"]["used_memory_per_job"]))
    row("  jobs (parents + children)", lambda x: str(x["backup_all"]["memory"]["jobs"]))
    row("  a child's record (MEMORY USAGE, mean)", lambda x: kib(x["backup_all"]["memory"]["child_record_bytes"]))
    row("  a parent's record (MEMORY USAGE, mean)", lambda x: kib(x["backup_all"]["memory"]["parent_record_bytes"]))
    row("  fan-out keys after discovery, per site", lambda x: f"{x['backup_all']['memory']['fanout_keys_peak_bytes_per_site']:.0f} B")
    row("  fan-out keys left at the end", lambda x: f"{x['backup_all']['memory']['fanout_keys_left']} B")
    row("  site-to-bench map and listings, per site", lambda x: f"{x['backup_all']['memory']['map_bytes_per_site']:.0f} B")
    row("  used_memory growth of the backup-all, total", lambda x: f"{x['backup_all']['memory']['used_memory_delta'] / 2**20:.2f} MiB")
    row("  one backup record per site (seeded), per site", lambda x: f"{x['backup_memory'] / r['sites']:.0f} B")
    row("  used_memory growth of everything, total", lambda x: f"{x['used_memory_total'] / 2**20:.2f} MiB")
    print(f"listings (median of {r['runs']} cold runs, all commands in turn; JERP_WORKER_PING_TIMEOUT "
          f"{r['ping_timeout']} s for benches, which waits for two broadcasts)")
    for label, c in f["cli"].items():
        print(f"  fleet     {label:<56} {c['median_ms']:8.0f} ms  (min {c['min_ms']:.0f}, max {c['max_ms']:.0f}; "
              f"{c['rows']} lines, exit {c['exit']})")
    for label, c in (o or {}).get("cli", {}).items():
        print(f"  one bench {label:<56} {c['median_ms']:8.0f} ms  (min {c['min_ms']:.0f}, max {c['max_ms']:.0f}; "
              f"{c['rows']} lines, exit {c['exit']})")
    for name, x in cols:
        d = x["dashboard_sites"]
        print(f"  {name:<9} dashboard /sites (uvicorn, httpx; in turn){'':<14} {d['median_ms']:8.0f} ms  (min {d['min_ms']:.0f}, "
              f"max {d['max_ms']:.0f}; {d['rows']} rows, {d['bytes'] / 1024:.0f} kB"
              + (", 'the bench could not be asked'" if d["problem"] else "") + ")")


if __name__ == "__main__":
    sys.exit(main())
