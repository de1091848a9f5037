#!/usr/bin/env python3
"""Benchmark: ``migrate-all`` over many sites, against the runbook's serial loop.

Every bench command of the stand-in takes a fixed extra time (its fault file's ``delay``), so
what is left over is what jerp-jobs adds: per-step orchestration overhead, and how close the
fan-out comes to the ideal wall time for its concurrency. The same per-site chain is then run
as plain subprocess calls, one site after another, in the same run. See benchmarks/README.md
for the definitions of every figure.

    .venv/bin/python benchmarks/migrate_all.py [--sites 200 --concurrency 8 --step-seconds 0.5]

Needs the services of tests/services/up.sh (Redis, MariaDB). Uses one Redis database (flushed
before and after; default db 9) and MariaDB databases and users named ``jb<run>_*`` (dropped at
the end, also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.standin.layout import BENCH_SCRIPT, create_bench, read_calls, write_faults  # noqa: E402

RUN_DIR = ROOT / "tests" / ".run"
ADMIN_PASSWORD = "Adm1n-bench-Secret"

#: Every stand-in command a migrate or migrate-all can run; each gets the fixed delay.
DELAYED_COMMANDS = (
    "set-maintenance-mode", "scheduler", "ready-for-migration", "backup", "migrate", "clear-cache",
    "clear-website-cache", "build", "restore", "install-app", "list-apps", "execute",
)

#: The runbook's chain for one site (what a ``migrate_all.sh`` loop runs), then one build.
RUNBOOK_CHAIN = (
    ("set-maintenance-mode", "on"),
    ("scheduler", "pause"),
    ("backup",),
    ("migrate",),
    ("clear-cache",),
    ("scheduler", "resume"),
    ("set-maintenance-mode", "off"),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Statistics


def pct(values: list[float], p: float) -> float | None:
    """Percentile with linear interpolation (p in 0..100)."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary_ms(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "median": round(statistics.median(ms), 2),
        "mean": round(statistics.fmean(ms), 2),
        "p90": round(pct(ms, 90), 2),
        "p99": round(pct(ms, 99), 2),
        "max": round(max(ms), 2),
        "min": round(min(ms), 2),
    }


# ---------------------------------------------------------------------------------------------
# Services and clean-up


@dataclass
class MariaDB:
    host: str
    port: int
    password: str

    def sql(self, query: str) -> list[list[str]]:
        argv = ["mariadb", "--protocol=tcp", "-h", self.host, "-P", str(self.port), "-uroot", "-N", "-B", "-e", query]
        done = subprocess.run(argv, env={**os.environ, "MYSQL_PWD": self.password}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb: {done.stderr.strip()}")
        return [line.split("\t") for line in done.stdout.splitlines()]

    def version(self) -> str:
        try:
            return self.sql("SELECT VERSION()")[0][0]
        except Exception as exc:  # noqa: BLE001
            return f"? ({exc})"

    def drop_prefix(self, prefix: str) -> tuple[int, int]:
        """Drop every database and user whose name starts with ``prefix``; returns the counts."""
        like = prefix.replace("_", "\\_") + "%"
        dbs = [r[0] for r in self.sql(f"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '{like}'")]
        users = [(r[0], r[1]) for r in self.sql(f"SELECT User, Host FROM mysql.user WHERE User LIKE '{like}'")]
        statements = [f"DROP DATABASE IF EXISTS `{db}`;" for db in dbs]
        statements += [f"DROP USER IF EXISTS '{u}'@'{h}';" for u, h in users]
        for i in range(0, len(statements), 200):
            self.sql(" ".join(statements[i:i + 200]))
        return len(dbs), len(users)


class Cleanup:
    """Runs registered clean-up actions once, last registered first; SIGINT/SIGTERM included."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Any]] = []
        self._done = False

    def add(self, what: str, fn: Any) -> None:
        self._actions.append((what, fn))

    def run(self) -> None:
        if self._done:
            return
        self._done = True
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for what, fn in reversed(self._actions):
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001
                    log(f"clean-up: {what} failed: {exc}")
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def processes_in(folder: Path) -> list[int]:
    """Pids of processes whose working directory is inside ``folder`` (bench commands left running)."""
    found = []
    prefix = str(folder.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + os.sep):
            found.append(int(entry.name))
    return found


def wait_for_strays(folder: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while processes_in(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in processes_in(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# Worker processes


class Worker:
    """``celery -A jerp_jobs worker -c N`` in its own session; stderr (the JSON log) to a file."""

    def __init__(self, env: dict[str, str], *, name: str, concurrency: int, log_path: Path,
                 app: str = "jerp_jobs") -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._ready = threading.Event()
        celery = Path(sys.executable).parent / "celery"
        self.proc = subprocess.Popen(
            [str(celery), "-A", app, "worker", "-n", f"{name}@%h", "-c", str(concurrency),
             "--without-mingle", "--without-gossip"],
            env={**os.environ, **env}, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            if b" ready." in line:
                self._log.flush()
                self._ready.set()
        self._log.flush()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"worker {self.name} not ready after {timeout}s; see {self.log_path}")

    def stop(self, grace: float = 20) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        self._log.flush()


class CpuSampler:
    """Samples /proc/stat once a second: machine-wide CPU use while a phase runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    def _run(self) -> None:
        total0, idle0 = self._read()
        while not self._stop.wait(1.0):
            total, idle = self._read()
            if total > total0:
                self.samples.append(1 - (idle - idle0) / (total - total0))
            total0, idle0 = total, idle

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def report(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        return {
            "mean_busy_pct": round(100 * statistics.fmean(self.samples), 1),
            "seconds_above_95pct": sum(1 for s in self.samples if s > 0.95),
            "seconds_sampled": len(self.samples),
        }


def _proc_table() -> dict[int, tuple[int, str, list[int]]]:
    """pid -> (ppid, name, [utime, stime, cutime, cstime] in clock ticks)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(rest[1]), name, [int(x) for x in rest[11:15]])
    return table


def tree_cpu(root_pids: list[int]) -> dict[str, float]:
    """CPU seconds of worker processes: their own (orchestration) and their reaped children's (commands).

    ``own_main``: the workers' main processes; ``own_pool``: their pool processes;
    ``commands``: children the pool processes ran and reaped (bench and the other commands).
    """
    tick = os.sysconf("SC_CLK_TCK")
    table = _proc_table()
    out = {"own_main": 0.0, "own_pool": 0.0, "commands": 0.0, "pool_processes": 0}
    for pid, (ppid, _name, t) in table.items():
        if pid in root_pids:
            out["own_main"] += (t[0] + t[1]) / tick
        elif ppid in root_pids:
            out["own_pool"] += (t[0] + t[1]) / tick
            out["commands"] += (t[2] + t[3]) / tick
            out["pool_processes"] += 1
    return out


def background_busy_pct(seconds: float = 3.0) -> float:
    """Machine-wide CPU use over a short idle moment of the benchmark: what other processes take."""
    before, t0 = machine_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return round(100 * (machine_cpu_seconds() - before) / ((time.monotonic() - t0) * (os.cpu_count() or 1)), 1)


def pid_cpu(pid: int) -> float | None:
    tick = os.sysconf("SC_CLK_TCK")
    entry = _proc_table().get(pid)
    return None if entry is None else (entry[2][0] + entry[2][1]) / tick


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class RedisMonitor:
    """Counts the commands one Redis database receives (MONITOR), by command and by client port."""

    _LINE = re.compile(rb'^[0-9.]+ \[(\d+) ([^\]]*)\] "([^"]*)"(?: "([^"]{0,40}))?')

    def __init__(self, url: str) -> None:
        import redis as redis_lib

        self._url = url
        self._client = redis_lib.Redis.from_url(url)
        self.db = int(self._client.connection_pool.connection_kwargs.get("db", 0))
        self.by_command: Counter = Counter()
        self.by_port: Counter = Counter()
        self.lua: Counter = Counter()
        #: commands by owner of the key they touch: jerp-jobs records and locks, or Celery/kombu
        self.by_owner: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._conn = self._client.connection_pool.get_connection()

    def _run(self) -> None:
        conn = self._conn
        conn.send_command("MONITOR")
        conn.read_response()
        tag = str(self.db).encode()
        while not self._stop.is_set():
            try:
                raw = conn.read_response(disable_decoding=True)
            except Exception:  # noqa: BLE001
                return
            m = self._LINE.match(raw) if isinstance(raw, bytes) else None
            if not m or m.group(1) != tag:
                continue
            command = m.group(3).decode(errors="replace").lower()
            client = m.group(2).decode(errors="replace")
            if client == "lua":
                self.lua[command] += 1
            else:
                self.by_command[command] += 1
                self.by_port[client.rsplit(":", 1)[-1]] += 1
                self.by_owner[_key_owner(command, m.group(4) or b"")] += 1

    def __enter__(self) -> RedisMonitor:
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        try:
            self._client.ping()
        except Exception:  # noqa: BLE001
            pass
        self._thread.join(timeout=5)
        try:
            self._conn.disconnect()
        except Exception:  # noqa: BLE001
            pass


def _key_owner(command: str, key: bytes) -> str:
    if command in ("multi", "exec", "ping", "select", "client", "info", "script"):
        return "transaction/connection"
    if command in ("evalsha", "eval"):
        return "jerp-jobs (Lua: locks, state)"
    if key.startswith(b"jerp:"):
        return "jerp-jobs (" + key.split(b":")[1].decode(errors="replace") + ")"
    if command == "publish":
        return "celery (events, result notices)"
    if key.startswith(b"celery-task-meta"):
        return "celery (result backend)"
    if key.startswith((b"unacked", b"_kombu", b"jerp.", b"celery")):
        return "kombu (queues, acks)"
    return "other (" + command + ")"


def redis_client_pids(port: int) -> dict[str, int]:
    """Local port -> pid of every TCP connection to the Redis port (from ``ss``)."""
    try:
        out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[4].endswith(f":{port}"):
            continue
        m = re.search(r"pid=(\d+)", line)
        if m:
            found[parts[3].rsplit(":", 1)[-1]] = int(m.group(1))
    return found


# ---------------------------------------------------------------------------------------------
# Setup: bench folders and sites


def make_sites(bench: Path, names: list[tuple[str, str]], db: MariaDB, threads: int) -> None:
    """``bench new-site`` for each (site, db_name), in a thread pool."""

    def one(site: str, db_name: str) -> None:
        done = subprocess.run(
            [str(BENCH_SCRIPT), "new-site", site, "--db-root-password", db.password, "--admin-password",
             ADMIN_PASSWORD, "--db-name", db_name, "--mariadb-user-host-login-scope=%"],
            cwd=bench, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"new-site {site} exited {done.returncode}: {done.stdout[-500:]}{done.stderr[-1500:]}")

    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        futures = [pool.submit(one, site, db_name) for site, db_name in names]
        for n, fut in enumerate(as_completed(futures), 1):
            fut.result()
            if n % 50 == 0:
                log(f"  {n}/{len(names)} sites created in {bench.name}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Reading the worker log


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class LogFacts:
    #: (job_id, step) -> list of (start, end) command intervals, from command.start/command.end
    commands: dict[tuple[str, str], list[tuple[float, float, list[str]]]] = field(default_factory=lambda: defaultdict(list))
    #: task id -> time the worker's main process logged "Task ... received"
    received: dict[str, float] = field(default_factory=dict)
    #: (job_id, step) -> task id of the delivery that ran it (from step.start)
    task_of: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (job_id, step) -> time of step.done (after the next message was published)
    done: dict[tuple[str, str], float] = field(default_factory=dict)
    #: lock or claim refusals that made a step retry later (reason -> count)
    retries: Counter = field(default_factory=Counter)
    retry_events: list[tuple[str, str, float]] = field(default_factory=list)
    lines: int = 0
    json_events: int = 0
    #: lines holding two JSON events (two processes wrote to the shared stderr at once)
    glued: int = 0
    #: fragments that were not a complete JSON event
    broken: int = 0


_DECODER = json.JSONDecoder()


def _json_events(text: str, facts: LogFacts) -> Any:
    """JSON objects of a log, also when two processes' lines were glued into one."""
    for raw in text.splitlines():
        facts.lines += 1
        pos = raw.find("{")
        while pos != -1:
            try:
                ev, end = _DECODER.raw_decode(raw, pos)
            except ValueError:
                facts.broken += 1
                pos = raw.find("{", pos + 1)
                continue
            if isinstance(ev, dict):
                facts.json_events += 1
                yield ev
            if end < len(raw) and raw[end] == "{":
                facts.glued += 1
            pos = raw.find("{", end)


def parse_worker_logs(paths: list[Path]) -> LogFacts:
    facts = LogFacts()
    open_cmd: dict[str, tuple[float, list[str]]] = {}
    for path in paths:
        for ev in _json_events(path.read_text(errors="replace"), facts):
            event = ev.get("event", "")
            if "timestamp" not in ev:
                continue
            t = _ts(ev["timestamp"])
            job, step, task = ev.get("job_id"), ev.get("step"), ev.get("task_id")
            if event == "command.start" and task:
                open_cmd[task] = (t, ev.get("argv") or [])
            elif event == "command.end" and task and task in open_cmd:
                start, argv = open_cmd.pop(task)
                facts.commands[(job, step)].append((start, t, argv))
            elif event == "step.start" and job and step and task:
                facts.task_of[(job, step)] = task
            elif event == "step.done" and job and step:
                facts.done.setdefault((job, step), t)
            elif event == "step.waiting" and ev.get("reason"):
                reason = str(ev["reason"]).split(" (")[0].split(":")[0]
                facts.retries[reason] += 1
                facts.retry_events.append((job or "?", step or "?", t))
            elif isinstance(event, str) and event.startswith("Task jerp.") and event.endswith(" received"):
                task_id = event[event.index("[") + 1:event.index("]")]
                facts.received[task_id] = t
    return facts


# ---------------------------------------------------------------------------------------------
# The jerp-jobs run


def job_records(rt: Any, ids: list[str]) -> dict[str, Any]:
    return {job_id: rt.store.get(job_id) for job_id in ids}


def run_jerp(args: argparse.Namespace, bench: Path, sites: list[str], env: dict[str, str], work: Path,
             cleanup: Cleanup) -> dict[str, Any]:
    os.environ.update(env)
    from jerp_jobs.enqueue import submit
    from jerp_jobs.bootstrap import get_runtime

    rt = get_runtime()
    rt.redis.flushdb()

    workers: list[Worker] = []

    def stop_workers() -> None:
        for w in workers:
            w.stop()
        wait_for_strays(bench, timeout=args.step_seconds + 10)

    cleanup.add("stop the workers", stop_workers)
    per_worker = args.worker_concurrency or args.concurrency
    for k in range(args.workers):
        workers.append(Worker(env, name=f"bench{k}", concurrency=per_worker, log_path=work / f"worker{k}.log",
                              app=args.celery_app))
    for w in workers:
        w.wait_ready()
    log(f"{args.workers} worker(s) ready, -c {per_worker}")

    if args.warmup:
        # One short job per pool process, so that first-use imports and connections are not measured.
        n = min(len(sites), args.workers * per_worker)
        warm = [submit(rt, "clear-cache", site=site).id for site in sites[:n]]
        deadline = time.monotonic() + 120
        while not all(rt.store.get(j).finished for j in warm):
            if time.monotonic() > deadline:
                raise RuntimeError("warm-up jobs did not finish in 120 s")
            time.sleep(0.2)
        time.sleep(0.5)
        log(f"warm-up: {n} clear-cache jobs done")

    idle_pct = background_busy_pct(2.0)
    waited = 0.0
    while args.wait_quiet and idle_pct > args.quiet_pct and waited < args.wait_quiet:
        log(f"machine CPU {idle_pct}% busy with the workers idle; waiting for it to fall below {args.quiet_pct}%")
        time.sleep(8)
        waited += 10
        idle_pct = background_busy_pct(2.0)
    log(f"machine CPU busy before the run (workers idle): {idle_pct}%")
    worker_pids = [w.proc.pid for w in workers]
    redis_pid = _read_pid(RUN_DIR / "redis.pid")
    maria_pid = _read_pid(RUN_DIR / "mariadb.pid")
    monitor = RedisMonitor(args.redis_url) if args.redis_monitor else contextlib.nullcontext()
    cpu_before = tree_cpu(worker_pids)
    machine_before = machine_cpu_seconds()
    services_before = {name: pid_cpu(pid) if pid else None for name, pid in (("redis", redis_pid), ("mariadb", maria_pid))}
    self_before = time.process_time()
    t_submit = time.time()
    with CpuSampler() as cpu, monitor as mon:
        parent = submit(rt, "migrate-all", params={"concurrency": args.concurrency, "budget": 0, "canary": None})
        log(f"migrate-all job {parent.id} submitted ({len(sites)} sites, concurrency {args.concurrency})")
        deadline = time.monotonic() + args.timeout
        last_report = 0.0
        while True:
            job = rt.store.get(parent.id)
            if job.finished:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"migrate-all {parent.id} did not finish in {args.timeout}s (state {job.state})")
            if time.monotonic() - last_report > 15:
                counts = job.result.get("counts", {})
                running = next((s.name for s in job.steps if s.state == "running"), "-")
                log(f"  step {running}: {counts}")
                last_report = time.monotonic()
            time.sleep(0.25)
        ports = redis_client_pids(urlparse(args.redis_url).port or 6379) if args.redis_monitor else {}
        pool_pids = {pid for pid, (ppid, _n, _t) in _proc_table().items() if ppid in worker_pids}
    t_seen = time.time()
    cpu_after = tree_cpu(worker_pids)
    machine_after = machine_cpu_seconds()
    services_after = {name: pid_cpu(pid) if pid else None for name, pid in (("redis", redis_pid), ("mariadb", maria_pid))}
    self_cpu = time.process_time() - self_before
    log(f"migrate-all {job.state} after {job.ended_at - t_submit:.1f}s")
    for w in workers:
        w.stop()
    wait_for_strays(bench, timeout=args.step_seconds + 10)

    entries = job.result.get("sites", {})
    child_ids = [e["job_id"] for e in entries.values() if e.get("job_id")]
    children = job_records(rt, child_ids)
    calls = [c for c in read_calls(bench) if c.get("start", 0) >= t_submit - 0.001]
    facts = parse_worker_logs([w.log_path for w in workers])
    if args.keep_logs:
        dest = Path(args.keep_logs)
        dest.mkdir(parents=True, exist_ok=True)
        for w in workers:
            shutil.copy(w.log_path, dest / w.log_path.name)
        shutil.copy(bench / "sites" / ".standin-calls.jsonl", dest / "jerp-calls.jsonl")
        (dest / "jobs.json").write_text(json.dumps(
            {"parent": job.to_dict(), "children": {k: v.to_dict() for k, v in children.items()}}, indent=1))
    result = analyse_jerp(args, job, children, calls, facts, t_submit, t_seen, cpu.report())
    steps = result["steps_measured"] + sum(1 for s in job.steps if s.started_at)
    elapsed = t_seen - t_submit
    own = {k: cpu_after[k] - cpu_before[k] for k in ("own_main", "own_pool", "commands")}
    services = {k: (services_after[k] - services_before[k]) if services_after[k] is not None
                and services_before[k] is not None else None for k in services_after}
    machine = machine_after - machine_before
    accounted = own["own_main"] + own["own_pool"] + own["commands"] + self_cpu + sum(v or 0 for v in services.values())
    profile: dict[str, Any] = {
        "elapsed_s": round(elapsed, 3),
        "steps": steps,
        "cpu_s": {
            "machine_busy": round(machine, 2),
            "machine_capacity": round(elapsed * (os.cpu_count() or 1), 2),
            "worker_main_processes": round(own["own_main"], 2),
            "worker_pool_processes": round(own["own_pool"], 2),
            "commands_run_by_the_pool": round(own["commands"], 2),
            "benchmark_process": round(self_cpu, 2),
            "redis_server": round(services["redis"], 2) if services["redis"] is not None else None,
            "mariadb_server": round(services["mariadb"], 2) if services["mariadb"] is not None else None,
            "everything_else": round(machine - accounted, 2),
        },
        "cpu_busy_pct_before_run": idle_pct,
        "orchestration_cpu_ms_per_step": round(1000 * (own["own_main"] + own["own_pool"]) / max(1, steps), 2),
    }
    if args.redis_monitor:
        roles: Counter = Counter()
        for port, count in mon.by_port.items():
            pid = ports.get(port)
            role = ("worker main process" if pid in worker_pids else "worker pool processes" if pid in pool_pids
                    else "benchmark (submit, poll)" if pid == os.getpid() else "closed or other connections")
            roles[role] += count
        workers_total = roles["worker main process"] + roles["worker pool processes"]
        profile["redis"] = {
            "commands_total": sum(mon.by_command.values()),
            "by_role": dict(roles),
            "worker_commands_per_step": round(workers_total / max(1, steps), 1),
            "top_commands": dict(mon.by_command.most_common(20)),
            "by_owner": dict(mon.by_owner.most_common()),
            "inside_lua_scripts": sum(mon.lua.values()),
        }
    result["profile"] = profile
    return result


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _site_of(argv: list[str]) -> str | None:
    for i, item in enumerate(argv):
        if item == "--site" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def analyse_jerp(args: argparse.Namespace, parent: Any, children: dict[str, Any], calls: list[dict],
                 facts: LogFacts, t_submit: float, t_seen: float, cpu: dict[str, Any]) -> dict[str, Any]:
    C = args.concurrency
    out: dict[str, Any] = {"job_id": parent.id, "state": parent.state, "error": parent.error}
    states = Counter(c.state for c in children.values())
    out["children"] = dict(states)
    if parent.state != "succeeded" or states.get("succeeded", 0) != len(children):
        log(f"warning: migrate-all ended {parent.state}: {parent.error}")

    use_log = bool(facts.commands)
    calls_by_site: dict[str | None, list[dict]] = defaultdict(list)
    for c in calls:
        calls_by_site[c.get("site")].append(c)

    def commands_of(job: Any, step: Any) -> list[tuple[float, float, list[str]]]:
        """Command intervals inside one step record: from the worker log, else the calls log."""
        if use_log:
            return facts.commands.get((job.id, step.name), [])
        site = job.site
        return [(c["start"], c["end"], c["argv"]) for c in calls_by_site.get(site, [])
                if step.started_at <= c["start"] and c["end"] <= step.ended_at]

    # -- per-step overhead of the children -------------------------------------------------
    order = parent.result.get("order", [])
    canary_site = parent.result.get("canary")
    by_site = {c.site: c for c in children.values()}
    overhead, gaps, inside = [], [], []
    per_name: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    gap_parts: dict[str, list[float]] = defaultdict(list)
    site_cmd: dict[str, float] = defaultdict(float)
    steps_total = 0
    worst: list[tuple[float, str, str, float, float]] = []
    for site in order:
        child = by_site.get(site)
        if child is None:
            continue
        prev_end = child.created_at
        prev_step = None
        for step in child.steps:
            if step.started_at is None or step.ended_at is None:
                continue
            steps_total += 1
            cmds = commands_of(child, step)
            cmd_s = sum(e - s for s, e, _ in cmds)
            site_cmd[site] += cmd_s
            in_step = (step.ended_at - step.started_at) - cmd_s
            gap = step.started_at - prev_end
            total = gap + in_step
            overhead.append(total)
            gaps.append(gap)
            inside.append(in_step)
            per_name[step.name]["gap"].append(gap)
            per_name[step.name]["in_step"].append(in_step)
            per_name[step.name]["command"].append(cmd_s)
            worst.append((total, child.id, step.name, gap, in_step))
            if prev_step is not None:
                done = facts.done.get((child.id, prev_step.name))
                task = facts.task_of.get((child.id, step.name))
                received = facts.received.get(task) if task else None
                if done is not None and received is not None:
                    gap_parts["finish_to_publish"].append(done - prev_end)
                    gap_parts["publish_to_received"].append(received - done)
                    gap_parts["received_to_started"].append(step.started_at - received)
            prev_end = step.ended_at
            prev_step = step
    worst.sort(reverse=True)

    # -- fan-out hand-off: a child ends -> the next child is created -> its first step starts --
    non_canary = [by_site[s] for s in order if s in by_site and s != canary_site]
    sites_step = parent.step("sites")
    first_batch = sorted(non_canary, key=lambda c: c.created_at)[:C]
    later = sorted((c for c in non_canary if c not in first_batch), key=lambda c: c.created_at)
    ends = sorted(c.ended_at for c in non_canary if c.ended_at)
    handoff, handoff_first_step = [], []
    for i, child in enumerate(later):
        if i < len(ends):
            handoff.append(child.created_at - ends[i])
            first = next((s for s in child.steps if s.started_at), None)
            if first is not None:
                handoff_first_step.append(first.started_at - ends[i])

    # -- the parent's own timeline ---------------------------------------------------------------
    timeline = []
    prev = t_submit
    parent_cmd: dict[str, float] = defaultdict(float)
    post_clear: dict[str, float] = {}
    for step in parent.steps:
        if step.started_at is None:
            timeline.append({"step": step.name, "state": step.state})
            continue
        cmds = commands_of(parent, step) if use_log else []
        for s, e, argv in cmds:
            parent_cmd[step.name] += e - s
            if step.name == "clear-caches":
                site = _site_of(argv)
                if site:
                    post_clear[site] = post_clear.get(site, 0.0) + (e - s)
        timeline.append({
            "step": step.name, "state": step.state,
            "gap_before_s": round(step.started_at - prev, 3),
            "start_s": round(step.started_at - t_submit, 3),
            "duration_s": round(step.ended_at - step.started_at, 3),
            "command_s": round(parent_cmd.get(step.name, 0.0), 3),
            "commands": len(cmds),
        })
        prev = step.ended_at

    canary_child = by_site.get(canary_site)
    canary_step = parent.step("canary")
    canary_info = {}
    if canary_child is not None and canary_step.started_at:
        canary_info = {
            "site": canary_site,
            "child_created_after_step_start_s": round(canary_child.created_at - canary_step.started_at, 4),
            "child_end_to_canary_step_end_s": round(canary_step.ended_at - canary_child.ended_at, 4),
            "canary_step_end_to_sites_step_start_s": round(sites_step.started_at - canary_step.ended_at, 4),
        }

    # -- efficiency --------------------------------------------------------------------------------
    wall = parent.ended_at - t_submit
    bench_cmd = parent_cmd.get("discover", 0.0) + parent_cmd.get("build-assets", 0.0)
    site_total = {s: site_cmd.get(s, 0.0) + post_clear.get(s, 0.0) for s in by_site}
    sum_site = sum(site_total.values())
    ideal = sum_site / C + bench_cmd
    canary_cmd = site_cmd.get(canary_site, 0.0)
    rest_cmd = sum(v for s, v in site_cmd.items() if s != canary_site)
    design_ideal = (parent_cmd.get("discover", 0.0) + canary_cmd + rest_cmd / C + parent_cmd.get("build-assets", 0.0)
                    + sum(post_clear.values()))
    sites_phase_wall = (sites_step.ended_at - sites_step.started_at) if sites_step.ended_at else None
    sites_phase_ideal = rest_cmd / C
    calls_internal = sum(c["end"] - c["start"] for c in calls)
    bench_calls = len(calls)
    measured_ids = set(children) | {parent.id}
    measured_cmds = [e - s for (job_id, _step), v in facts.commands.items() if job_id in measured_ids for s, e, _ in v]
    all_cmds = len(measured_cmds)
    chain_walls = [c.ended_at - c.created_at for c in children.values() if c.ended_at]
    chain_cmds = [site_cmd[c.site] for c in children.values() if c.ended_at]

    out.update({
        "wall_s": round(wall, 3),
        "wall_seen_by_poller_s": round(t_seen - t_submit, 3),
        "sites": len(by_site),
        "steps_measured": steps_total,
        "overhead_per_step_ms": summary_ms(overhead),
        "gap_ms": summary_ms(gaps),
        "in_step_ms": summary_ms(inside),
        "gap_breakdown_ms": {k: summary_ms(v) for k, v in gap_parts.items()},
        "per_step_name_ms": {
            name: {"gap_median": round(statistics.median(v["gap"]) * 1000, 2),
                   "gap_p99": round(pct(v["gap"], 99) * 1000, 2),
                   "in_step_median": round(statistics.median(v["in_step"]) * 1000, 2),
                   "in_step_p99": round(pct(v["in_step"], 99) * 1000, 2),
                   "command_median": round(statistics.median(v["command"]) * 1000, 1)}
            for name, v in per_name.items()
        },
        "worst_steps": [
            {"job": j, "step": s, "overhead_ms": round(t * 1000, 1), "gap_ms": round(g * 1000, 1),
             "in_step_ms": round(i * 1000, 1)} for t, j, s, g, i in worst[:8]
        ],
        "handoff_child_end_to_next_created_ms": summary_ms(handoff),
        "handoff_child_end_to_next_first_step_ms": summary_ms(handoff_first_step),
        "canary": canary_info,
        "parent_timeline": timeline,
        "retries": dict(facts.retries),
        "efficiency": {
            "concurrency": C,
            "site_command_s_total": round(sum_site, 3),
            "site_command_s_mean": round(sum_site / max(1, len(by_site)), 3),
            "post_build_clear_cache_s_total": round(sum(post_clear.values()), 3),
            "bench_command_s": round(bench_cmd, 3),
            "ideal_s": round(ideal, 3),
            "actual_s": round(wall, 3),
            "efficiency_pct": round(100 * ideal / wall, 1),
            "design_ideal_s": round(design_ideal, 3),
            "efficiency_vs_design_pct": round(100 * design_ideal / wall, 1),
            "sites_phase_actual_s": round(sites_phase_wall, 3) if sites_phase_wall else None,
            "sites_phase_ideal_s": round(sites_phase_ideal, 3),
            "sites_phase_efficiency_pct": round(100 * sites_phase_ideal / sites_phase_wall, 1) if sites_phase_wall else None,
        },
        "commands": {
            "source": "worker log (command.start/command.end)" if use_log else "stand-in calls log",
            "executor_commands": all_cmds,
            "bench_calls": bench_calls,
            "bench_calls_by_command": dict(Counter(c.get("command") for c in calls)),
            "bench_internal_s_total": round(calls_internal, 3),
            "bench_internal_s_median": round(statistics.median([c["end"] - c["start"] for c in calls]), 4) if calls else None,
            "executor_command_s_median": round(statistics.median(measured_cmds), 4) if all_cmds else None,
        },
        "site_chain": {
            "wall_s_median": round(statistics.median(chain_walls), 3) if chain_walls else None,
            "command_s_median": round(statistics.median(chain_cmds), 3) if chain_cmds else None,
            "overhead_s_median": round(statistics.median([w - c for w, c in zip(chain_walls, chain_cmds)]), 4)
            if chain_walls else None,
        },
        "cpu": cpu,
        "log_lines": facts.lines,
    })
    return out


# ---------------------------------------------------------------------------------------------
# The runbook's serial loop


def run_serial(args: argparse.Namespace, bench: Path, sites: list[str]) -> dict[str, Any]:
    per_site, cmd_times = [], []
    by_cmd: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    for n, site in enumerate(sites, 1):
        s0 = time.perf_counter()
        for command in RUNBOOK_CHAIN:
            c0 = time.perf_counter()
            done = subprocess.run([str(BENCH_SCRIPT), "--site", site, *command], cwd=bench, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
            dt = time.perf_counter() - c0
            if done.returncode != 0:
                raise RuntimeError(f"serial loop: bench --site {site} {' '.join(command)} exited {done.returncode}: "
                                   f"{done.stderr.decode(errors='replace')[-1500:]}")
            cmd_times.append(dt)
            by_cmd[" ".join(command)].append(dt)
        per_site.append(time.perf_counter() - s0)
        if n % 20 == 0:
            log(f"  serial loop: {n}/{len(sites)} sites, {time.perf_counter() - t0:.0f}s")
    b0 = time.perf_counter()
    done = subprocess.run([str(BENCH_SCRIPT), "build"], cwd=bench, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=600)
    build_s = time.perf_counter() - b0
    if done.returncode != 0:
        raise RuntimeError(f"serial loop: bench build exited {done.returncode}")
    wall = time.perf_counter() - t0
    mean_site = statistics.fmean(per_site)
    extrapolated = mean_site * args.sites + build_s
    return {
        "sites_run": len(sites),
        "wall_s": round(wall, 3),
        "per_site_s_mean": round(mean_site, 4),
        "per_site_s_median": round(statistics.median(per_site), 4),
        "build_s": round(build_s, 4),
        "command_s_median": round(statistics.median(cmd_times), 4),
        "command_s_by_command_median": {k: round(statistics.median(v), 4) for k, v in by_cmd.items()},
        "loop_overhead_s": round(wall - sum(cmd_times) - build_s, 4),
        "wall_for_all_sites_s": round(wall if len(sites) == args.sites else extrapolated, 3),
        "extrapolated": len(sites) != args.sites,
    }


# ---------------------------------------------------------------------------------------------
# Report


def machine_facts(db: MariaDB, redis_url: str) -> dict[str, Any]:
    import celery
    import kombu
    import redis as redis_lib

    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        redis_version = redis_lib.Redis.from_url(redis_url).info("server")["redis_version"]
    except Exception:  # noqa: BLE001
        redis_version = "?"
    try:
        standin_python = subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        standin_python = "?"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "standin_python": standin_python,
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis_lib.__version__,
        "redis_server": redis_version,
        "mariadb": db.version(),
    }


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}{unit}"
    return f"{v}{unit}"


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    m = result["machine"]
    j = result.get("jerp") or {}
    s = result.get("serial") or {}
    p = print
    p()
    p(f"migrate-all benchmark — {m['date']}")
    p(f"machine: {m['cores']} cores ({m['cpu_model']}), kernel {m['kernel']}, Python {m['python']} "
      f"(stand-in: {m['standin_python']}), Celery {m['celery']}, kombu {m['kombu']}, redis-py {m['redis_py']}, "
      f"Redis {m['redis_server']}, MariaDB {m['mariadb']}")
    cfg = result["config"]
    p(f"config: {cfg['sites']} sites, concurrency {cfg['concurrency']}, {cfg['workers']} worker(s) x -c "
      f"{cfg['worker_concurrency']}, fixed delay {cfg['step_seconds']}s per bench command, warm-up "
      f"{'on' if cfg['warmup'] else 'off'}")
    if j:
        e = j["efficiency"]
        o = j["overhead_per_step_ms"]
        p()
        p(f"jerp-jobs migrate-all: job {j['job_id']} {j['state']}, children {j['children']}")
        p(f"  {'steps measured':<44}{j['steps_measured']}")
        p(f"  {'':<44}{'median':>10}{'p90':>10}{'p99':>10}{'max':>10}")
        for label, key in (("overhead per step (ms)  [target median <= 5]", "overhead_per_step_ms"),
                           ("  of which gap before the step (ms)", "gap_ms"),
                           ("  of which inside the step (ms)", "in_step_ms")):
            d = j[key]
            p(f"  {label:<44}{_fmt(d.get('median')):>10}{_fmt(d.get('p90')):>10}{_fmt(d.get('p99')):>10}"
              f"{_fmt(d.get('max')):>10}")
        for key, label in (("finish_to_publish", "    record end -> next step published"),
                           ("publish_to_received", "    published -> worker received"),
                           ("received_to_started", "    received -> step record started")):
            d = j["gap_breakdown_ms"].get(key)
            if d and d.get("n"):
                p(f"  {label:<44}{_fmt(d['median']):>10}{_fmt(d['p90']):>10}{_fmt(d['p99']):>10}{_fmt(d['max']):>10}")
        for key, label in (("handoff_child_end_to_next_created_ms", "fan-out: child end -> next child created"),
                           ("handoff_child_end_to_next_first_step_ms", "fan-out: child end -> next first step")):
            d = j[key]
            if d.get("n"):
                p(f"  {label + ' (ms)':<44}{_fmt(d['median']):>10}{_fmt(d['p90']):>10}{_fmt(d['p99']):>10}"
                  f"{_fmt(d['max']):>10}")
        p()
        p(f"  per step (ms)            {'gap med':>9}{'gap p99':>9}{'in med':>9}{'in p99':>9}{'cmd med':>9}")
        for name, d in j["per_step_name_ms"].items():
            p(f"    {name:<22}{d['gap_median']:>9.1f}{d['gap_p99']:>9.1f}{d['in_step_median']:>9.1f}"
              f"{d['in_step_p99']:>9.1f}{d['command_median']:>9.1f}")
        p()
        p("  parent timeline (s)      gap before   start  duration  commands")
        for t in j["parent_timeline"]:
            if "start_s" in t:
                p(f"    {t['step']:<22}{t['gap_before_s']:>10.3f}{t['start_s']:>8.1f}{t['duration_s']:>10.2f}"
                  f"{t['command_s']:>10.2f}")
        p()
        p(f"  {'actual wall (submit -> job end)':<44}{e['actual_s']:>10.1f} s")
        p(f"  {'ideal = site command time / C + bench':<44}{e['ideal_s']:>10.1f} s   "
          f"({e['site_command_s_total']:.1f} s / {e['concurrency']} + {e['bench_command_s']:.2f} s)")
        p(f"  {'parallel efficiency  [target >= 90%]':<44}{e['efficiency_pct']:>10.1f} %")
        p(f"  {'ideal under the workflow design':<44}{e['design_ideal_s']:>10.1f} s   "
          f"(canary alone, build once, serial post-build clear-cache {e['post_build_clear_cache_s_total']:.1f} s)")
        p(f"  {'efficiency against the design ideal':<44}{e['efficiency_vs_design_pct']:>10.1f} %")
        if e["sites_phase_actual_s"]:
            p(f"  {'sites phase: actual / ideal / efficiency':<44}{e['sites_phase_actual_s']:>10.1f} s / "
              f"{e['sites_phase_ideal_s']:.1f} s / {e['sites_phase_efficiency_pct']:.1f} %")
        sc = j["site_chain"]
        p(f"  {'one site (child job), median':<44}{_fmt(sc['wall_s_median']):>10} s wall, {_fmt(sc['command_s_median'])} s "
          f"in commands, {_fmt(sc['overhead_s_median'])} s overhead")
        c = j["commands"]
        p(f"  commands: {c['executor_commands']} run by the executor (median {_fmt(c['executor_command_s_median'])} s), "
          f"{c['bench_calls']} bench runs (median {_fmt(c['bench_internal_s_median'])} s inside the stand-in)")
        if j["retries"]:
            p(f"  steps retried later (LockBusy): {j['retries']}")
        if j["cpu"]:
            p(f"  CPU: {j['cpu']['mean_busy_pct']}% busy on average, {j['cpu']['seconds_above_95pct']} of "
              f"{j['cpu']['seconds_sampled']} s above 95%")
        prof = j.get("profile") or {}
        if prof:
            c = prof["cpu_s"]
            p(f"  machine CPU busy just before the run (workers idle, other processes): {prof['cpu_busy_pct_before_run']}%")
            p(f"  CPU seconds during the run ({prof['elapsed_s']:.0f} s x {m['cores']} cores = "
              f"{c['machine_capacity']:.0f} available, {c['machine_busy']:.0f} used):")
            p(f"    worker main process {c['worker_main_processes']}, pool processes {c['worker_pool_processes']} "
              f"-> {prof['orchestration_cpu_ms_per_step']} ms of orchestration CPU per step")
            p(f"    commands {c['commands_run_by_the_pool']}, Redis {c['redis_server']}, MariaDB {c['mariadb_server']}, "
              f"this script {c['benchmark_process']}, everything else {c['everything_else']}")
            r = prof.get("redis")
            if r:
                p(f"  Redis (MONITOR): {r['commands_total']} commands, {r['worker_commands_per_step']} per step from the "
                  f"workers; by role {r['by_role']}")
                p("    top: " + ", ".join(f"{k} {v}" for k, v in list(r["top_commands"].items())[:12]))
                p("    by key: " + ", ".join(f"{k} {v}" for k, v in r["by_owner"].items()))
    if s:
        p()
        label = "serial loop (runbook, one site after another)"
        p(f"{label}: {s['sites_run']} sites run")
        p(f"  {'wall (measured)':<44}{s['wall_s']:>10.1f} s")
        p(f"  {'per site (mean)':<44}{s['per_site_s_mean']:>10.3f} s   (7 commands; median command "
          f"{s['command_s_median']:.3f} s)")
        tag = f"extrapolated to {cfg['sites']} sites" if s["extrapolated"] else f"measured, {cfg['sites']} sites"
        p(f"  {'wall for all sites (' + tag + ')':<44}{s['wall_for_all_sites_s']:>10.1f} s")
        if j:
            speed = s["wall_for_all_sites_s"] / j["wall_s"]
            p(f"  {'speed-up of jerp-jobs over the loop':<44}{speed:>10.2f} x"
              + ("   (against the extrapolation)" if s["extrapolated"] else ""))
    p()
    if j:
        ok_o = j["overhead_per_step_ms"].get("median", 1e9) <= 5
        ok_e = j["efficiency"]["efficiency_pct"] >= 90
        p(f"target: median overhead per step <= 5 ms: {'MET' if ok_o else 'MISSED'} "
          f"({j['overhead_per_step_ms'].get('median')} ms); efficiency >= 90% at concurrency "
          f"{cfg['concurrency']}: {'MET' if ok_e else 'MISSED'} ({j['efficiency']['efficiency_pct']}%)")


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=200, help="sites migrated by migrate-all (default 200)")
    ap.add_argument("--concurrency", type=int, default=8, help="migrate-all --concurrency and JERP_FANOUT_CONCURRENCY (default 8)")
    ap.add_argument("--step-seconds", type=float, default=0.5, help="fixed delay added to every bench command (default 0.5)")
    ap.add_argument("--serial-sites", type=int, default=None,
                    help="sites run by the serial reference loop (default: --sites; 0 skips it)")
    ap.add_argument("--workers", type=int, default=1, help="Celery worker processes (default 1)")
    ap.add_argument("--worker-concurrency", type=int, default=None, help="-c of each worker (default: --concurrency)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the one short job per pool process before the measured run")
    ap.add_argument("--redis-url", default=f"redis://127.0.0.1:{os.environ.get('JERP_TEST_REDIS_PORT', '16379')}/9",
                    help="Redis for broker, records and locks; its database is flushed (default %(default)s)")
    ap.add_argument("--mariadb-host", default="127.0.0.1")
    ap.add_argument("--mariadb-port", type=int, default=int(os.environ.get("JERP_TEST_MARIADB_PORT", "13306")))
    ap.add_argument("--mariadb-password-file", type=Path, default=RUN_DIR / "mariadb-root-password")
    ap.add_argument("--setup-threads", type=int, default=4, help="parallel new-site runs during setup (default 4)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds the migrate-all may take (default: generous)")
    ap.add_argument("--keep-logs", default=None, metavar="DIR",
                    help="copy worker logs, the stand-in calls log and the job records to DIR")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before the measured run, wait up to this long for other processes to leave the CPU idle")
    ap.add_argument("--quiet-pct", type=float, default=15, help="machine CPU use counted as quiet, in %% (default 15)")
    ap.add_argument("--celery-app", default="jerp_jobs",
                    help="-A of the workers (a module wrapping jerp_jobs' app, e.g. to profile the pool processes)")
    ap.add_argument("--redis-monitor", action="store_true",
                    help="count the Redis commands of the run with MONITOR (slows Redis a little; for profiling)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout instead of the table")
    ap.add_argument("--json-out", default=None, metavar="FILE", help="also write the figures as JSON to FILE")
    args = ap.parse_args(argv)
    if args.serial_sites is None:
        args.serial_sites = args.sites
    args.serial_sites = max(0, min(args.serial_sites, args.sites))
    if args.sites < 1 or args.concurrency < 1:
        ap.error("--sites and --concurrency must be at least 1")
    if args.timeout is None:
        args.timeout = 600 + args.sites * 12 * (args.step_seconds + 0.5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    try:
        password = args.mariadb_password_file.read_text().strip()
    except OSError:
        print(f"error: no MariaDB root password at {args.mariadb_password_file}; run tests/services/up.sh",
              file=sys.stderr)
        return 2
    db = MariaDB(args.mariadb_host, args.mariadb_port, password)
    import redis as redis_lib

    try:
        redis_lib.Redis.from_url(args.redis_url, socket_connect_timeout=2).ping()
        db.sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        print(f"error: services not reachable ({exc}); run tests/services/up.sh", file=sys.stderr)
        return 2

    run_id = secrets.token_hex(3)
    prefix = f"jb{run_id}_"
    work = Path(tempfile.mkdtemp(prefix=f"jerp-bench-{run_id}-"))
    cleanup = Cleanup()
    cleanup.add("remove the work folder", lambda: shutil.rmtree(work, ignore_errors=True))

    def drop_databases() -> None:
        dbs, users = db.drop_prefix(prefix)
        log(f"clean-up: dropped {dbs} databases and {users} users ({prefix}*)")

    cleanup.add("drop the databases", drop_databases)
    cleanup.add("flush the Redis database", lambda: redis_lib.Redis.from_url(args.redis_url).flushdb())

    result: dict[str, Any] = {}
    try:
        result["machine"] = machine_facts(db, args.redis_url)
        result["config"] = {
            "sites": args.sites, "concurrency": args.concurrency, "step_seconds": args.step_seconds,
            "serial_sites": args.serial_sites, "workers": args.workers,
            "worker_concurrency": args.worker_concurrency or args.concurrency, "warmup": args.warmup,
            "redis_url": args.redis_url, "delayed_commands": list(DELAYED_COMMANDS),
        }
        jerp_bench = create_bench(work / "jerp" / "frappe-bench", db_host=args.mariadb_host, db_port=args.mariadb_port)
        serial_bench = create_bench(work / "serial" / "frappe-bench", db_host=args.mariadb_host,
                                    db_port=args.mariadb_port)
        jerp_sites = [(f"site{i:04d}.jerp.example.com", f"{prefix}j{i:04d}") for i in range(args.sites)]
        serial_sites = [(f"site{i:04d}.loop.example.com", f"{prefix}s{i:04d}") for i in range(args.serial_sites)]
        log(f"setup: {len(jerp_sites)} + {len(serial_sites)} sites in {work} (databases {prefix}*)")
        t0 = time.monotonic()
        make_sites(jerp_bench, jerp_sites, db, args.setup_threads)
        if serial_sites:
            make_sites(serial_bench, serial_sites, db, args.setup_threads)
        log(f"setup done in {time.monotonic() - t0:.0f}s")
        faults = {"delay": {cmd: args.step_seconds for cmd in DELAYED_COMMANDS}}
        write_faults(jerp_bench, faults)
        write_faults(serial_bench, faults)

        env = {
            "JERP_BROKER_URL": args.redis_url,
            "JERP_EXECUTOR": "local",
            "JERP_BENCH_DIR": str(jerp_bench),
            "JERP_BENCH_BIN": str(BENCH_SCRIPT),
            "MARIADB_ROOT_PASSWORD": password,
            "FRAPPE_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "JERP_FANOUT_CONCURRENCY": str(args.concurrency),
        }
        result["jerp"] = run_jerp(args, jerp_bench, [s for s, _ in jerp_sites], env, work, cleanup)
        if serial_sites:
            log(f"serial loop over {len(serial_sites)} sites")
            result["serial"] = run_serial(args, serial_bench, [s for s, _ in serial_sites])
            if result.get("jerp"):
                result["speedup"] = round(result["serial"]["wall_for_all_sites_s"] / result["jerp"]["wall_s"], 3)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        cleanup.run()
        return 130
    finally:
        cleanup.run()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        print_report(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
