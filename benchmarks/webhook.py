"""Answer times of the release webhook, beside adnanh/webhook doing the same job.

Both servers get the same signed deliveries (``X-Hub-Signature-256`` over the raw body):

- **jerp-jobs** — ``uvicorn jerp_jobs.webhook:app`` on ``POST /hooks/release``: checks the
  signature, records the release in Redis, supersedes the waiting one and publishes its first
  step to the broker (a real Redis; no worker runs, so the releases stay queued);
- **webhook** — adnanh/webhook (Debian's ``webhook`` package) with a hook whose trigger rule is
  ``payload-hmac-sha256`` on the same header, answering 202 after running ``/bin/true``: the
  reference for "check the signature and hand the work over".

Two phases per server: ``--requests`` deliveries one after the other (a new connection each, as
GitHub and curl do), then a burst of ``--burst-clients`` clients sending ``--burst-requests``
each at once. Printed: median, p95, p99 and maximum answer time; the target is every answer
within a second. Run with the test services up (``tests/services/up.sh``)::

    .venv/bin/python benchmarks/webhook.py                  # 300 sequential, 8 x 50 burst
    .venv/bin/python benchmarks/webhook.py --json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _delivery(secret: str, n: int) -> tuple[bytes, dict[str, str]]:
    # made now, to the microsecond: in a burst, a request made before one that arrived first is
    # answered 200 (declined as older) instead of 202, as in production
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    body = json.dumps({"image": "registry.example.com/erpnext-custom", "tag": f"b{n:06d}",
                       "sha": secrets.token_hex(20), "timestamp": now}).encode()
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": _sign(secret, body),
                  "X-GitHub-Delivery": f"bench-{n}-{secrets.token_hex(4)}"}


def _timed_post(url: str, body: bytes, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    answer = httpx.post(url, content=body, headers=headers, timeout=30)
    elapsed = time.perf_counter() - start
    if answer.status_code not in (200, 202):
        raise SystemExit(f"{url} answered {answer.status_code}: {answer.text[:200]}")
    return elapsed


def _run(url: str, secret: str, *, sequential: int, clients: int, per_client: int, first: int) -> dict:
    seq = [_timed_post(url, *_delivery(secret, first + i)) for i in range(sequential)]
    base = first + sequential

    def client(c: int) -> list[float]:
        return [_timed_post(url, *_delivery(secret, base + c * per_client + i)) for i in range(per_client)]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        burst = [t for times in pool.map(client, range(clients)) for t in times]
    return {"sequential": _stats(seq), "burst": _stats(burst)}


def _stats(times: list[float]) -> dict:
    ordered = sorted(times)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000

    return {"n": len(times), "median_ms": statistics.median(times) * 1000, "p95_ms": pct(95), "p99_ms": pct(99),
            "max_ms": max(times) * 1000}


def _serve(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--burst-clients", type=int, default=8)
    parser.add_argument("--burst-requests", type=int, default=50)
    parser.add_argument("--redis-url", default=f"redis://127.0.0.1:{os.environ.get('JERP_TEST_REDIS_PORT', '16379')}/9")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("webhook") is None:
        raise SystemExit("adnanh/webhook is not installed (apt-get install webhook)")
    store = redis.Redis.from_url(args.redis_url)
    store.ping()
    store.flushdb()
    secret = secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="jerp-bench-webhook."))
    procs: list[subprocess.Popen] = []
    try:
        jerp_port, ref_port = _port(), _port()
        env = {**os.environ, "JERP_BROKER_URL": args.redis_url, "JERP_WEBHOOK_SECRET": secret,
               "JERP_RELEASE_IMAGE": "registry.example.com/erpnext-custom", "JERP_EXECUTOR": "local",
               "JERP_BENCH_DIR": str(work)}
        procs.append(_serve([str(VENV_BIN / "uvicorn"), "jerp_jobs.webhook:app", "--host", "127.0.0.1", "--port",
                             str(jerp_port), "--log-level", "warning", "--no-access-log"], env, work / "uvicorn.log"))
        hooks = [{"id": "release", "execute-command": "/bin/true", "http-methods": ["POST"],
                  "success-http-response-code": 202, "trigger-rule": {"match": {
                      "type": "payload-hmac-sha256", "secret": secret,
                      "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}}}]
        (work / "hooks.json").write_text(json.dumps(hooks))
        procs.append(_serve(["webhook", "-hooks", str(work / "hooks.json"), "-ip", "127.0.0.1", "-port",
                             str(ref_port)], env, work / "webhook.log"))
        _wait(f"http://127.0.0.1:{jerp_port}/healthz")
        _wait(f"http://127.0.0.1:{ref_port}/")
        urls = {"jerp-jobs /hooks/release": f"http://127.0.0.1:{jerp_port}/hooks/release",
                "adnanh/webhook 2.8 (reference)": f"http://127.0.0.1:{ref_port}/hooks/release"}
        for url in urls.values():  # warm-up: first imports and connections
            _timed_post(url, *_delivery(secret, 999_999))
        results = {name: _run(url, secret, sequential=args.requests, clients=args.burst_clients,
                              per_client=args.burst_requests, first=0) for name, url in urls.items()}
        releases = store.zcard("jerp:releases")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        store.flushdb()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results, "releases_recorded": releases}, indent=2))
        return 0
    print(f"{args.requests} sequential deliveries, then {args.burst_clients} clients x {args.burst_requests} at once")
    print(f"{'server':<34} {'phase':<11} {'median':>8} {'p95':>8} {'p99':>8} {'max':>8}  (ms)")
    for name, phases in results.items():
        for phase, s in phases.items():
            print(f"{name:<34} {phase:<11} {s['median_ms']:8.1f} {s['p95_ms']:8.1f} {s['p99_ms']:8.1f} "
                  f"{s['max_ms']:8.1f}")
    worst = max(s["max_ms"] for s in results["jerp-jobs /hooks/release"].values())
    print(f"releases recorded by jerp-jobs: {releases}; slowest answer {worst:.0f} ms "
          f"({'within' if worst < 1000 else 'OVER'} the 1 s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
