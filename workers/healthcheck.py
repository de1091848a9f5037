#!/opt/jerp/bin/python
"""Health of a jobs-image container, judged by the role of the process it runs.

- worker, worker-control: the worker answers a Celery ping addressed to its own node name;
- beat: Beat runs and the RedBeat lock is held in Redis (one Beat schedules; run one);
- flower: its /healthcheck page answers OK;
- webhook: its /healthz answers (the service reaches its Redis);
- socket-proxy: /_ping through the proxy reaches the Docker Engine; with TLS (client
  certificates required, which this check has none of) the proxy accepts connections.

Exit 0 when healthy, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from pathlib import Path


def main_process() -> list[str]:
    """The argv of the role's process (the lowest pid that runs one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if any(a.endswith("celery") for a in argv[:2]) or "jerp_jobs.socket_proxy" in argv or (
            argv[1:2] and argv[1].endswith("uvicorn")
        ):
            found.append((int(entry.name), argv))
    return min(found)[1] if found else []


def option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def check_worker(argv: list[str]) -> str:
    from jerp_jobs.celery import app

    node = (option(argv, "-n", "--hostname") or "celery@%h").replace("%h", socket.gethostname())
    replies = app.control.ping(destination=[node], timeout=5.0)
    if not any(node in reply for reply in replies):
        raise RuntimeError(f"worker {node} did not answer a ping")
    return f"worker {node} answers"


def check_beat(argv: list[str]) -> str:
    from redbeat.schedulers import RedBeatConfig, get_redis

    from jerp_jobs.celery import app

    app.loader.import_default_modules()
    key = RedBeatConfig(app).lock_key
    if not get_redis(app).exists(key):
        raise RuntimeError(f"Beat runs but does not hold the lock {key} (another Beat does, or it is starting)")
    return f"Beat holds {key}"


def http_ok(url: str, expect: bytes) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback only
        body = answer.read(100)
    if answer.status != 200 or expect not in body:
        raise RuntimeError(f"{url} answered {answer.status} {body!r}")
    return f"{url} answers"


def tls_listening(port: int) -> str:
    """The proxy on ``port`` accepts connections. (With TLS it refuses, and logs, every client
    without a certificate of its CA, which this check has none of; a connection closed before
    its first byte is neither.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return f"the socket proxy (TLS) accepts connections on port {port}"


def check() -> str:
    argv = main_process()
    if "jerp_jobs.socket_proxy" in argv:
        listen = option(argv, "--listen") or os.environ.get("JERP_PROXY_LISTEN", "0.0.0.0:2375")
        port = int(listen.rsplit(":", 1)[1])
        if option(argv, "--tls-cert") or os.environ.get("JERP_PROXY_TLS_CERT", "").strip():
            return tls_listening(port)
        return http_ok(f"http://127.0.0.1:{port}/_ping", b"OK")
    if argv[1:2] and argv[1].endswith("uvicorn"):
        port = int(option(argv, "--port") or 8000)
        return http_ok(f"http://127.0.0.1:{port}/healthz", b'"ok"')
    for command, checker in (("worker", check_worker), ("beat", check_beat)):
        if command in argv:
            return checker(argv)
    if "flower" in argv:
        port = option(argv, "--port") or "5555"
        return http_ok(f"http://127.0.0.1:{port}/healthcheck", b"OK")
    raise RuntimeError("no worker, Beat, Flower, webhook or socket proxy runs in this container")


if __name__ == "__main__":
    try:
        print(check())
    except Exception as exc:  # any failure is "unhealthy", said in one line
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
