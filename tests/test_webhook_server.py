"""The webhook service as it is deployed: uvicorn in a subprocess, started with the options of
compose.jobs.yml's jobs-webhook command (and the image entrypoint's), on the real Redis, over
real sockets. Slow clients, a byte now and then in their headers or their body, are answered
408 and cut off within JERP_WEBHOOK_READ_TIMEOUT, while normal requests are served."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import selectors
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.workers import VENV_BIN

SECRET = "server-hook-secret"
IMAGE = "registry.example.com/erpnext-custom"
SHA = "9f2c1e0b7d3a4c5b6e7f8091a2b3c4d5e6f70812"
READ_TIMEOUT = 2.0  # JERP_WEBHOOK_READ_TIMEOUT for the server under test
#: what "cut off within the bound" allows on a loaded machine: the timeout, a drip interval and slack
BOUND = READ_TIMEOUT + 6.0
DRIP_EVERY = 0.5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def compose_webhook_options(variables: dict[str, str]) -> list[str]:
    """The uvicorn options compose.jobs.yml gives the webhook role, its ${VAR:-default} filled
    from ``variables`` or the default."""
    command = yaml.safe_load((ROOT / "compose.jobs.yml").read_text())["services"]["jobs-webhook"]["command"]
    assert command[0] == "webhook"

    def fill(arg: str) -> str:
        return re.sub(r"\$\{([A-Z0-9_]+):-([^}]*)\}", lambda m: variables.get(m.group(1), m.group(2)), str(arg))

    return [fill(arg) for arg in command[1:]]


@pytest.fixture
def server(redis_url: str, real_redis, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    options = compose_webhook_options({"JERP_WEBHOOK_MAX_CONNECTIONS": "1000"})
    argv = [str(VENV_BIN / "uvicorn"), "jerp_jobs.webhook:app", "--host", "127.0.0.1", "--port", str(port),
            "--proxy-headers", "--forwarded-allow-ips", "*", *options]  # as workers/entrypoint.sh runs it
    env = {
        **os.environ,
        "JERP_BROKER_URL": redis_url, "JERP_EXECUTOR": "local", "JERP_BENCH_DIR": str(tmp_path),
        "JERP_WEBHOOK_SECRET": SECRET, "JERP_RELEASE_IMAGE": IMAGE, "JERP_WEBHOOK_READ_TIMEOUT": str(READ_TIMEOUT),
    }
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, f"uvicorn exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the webhook did not start: {log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def signed_release(url: str, tag: str) -> httpx.Response:
    body = json.dumps({"image": IMAGE, "tag": tag, "sha": SHA,
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(f"{url}/hooks/release", content=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": signature, "X-GitHub-Delivery": str(uuid.uuid4())})


SLOW_HEAD = b"POST /hooks/release HTTP/1.1\r\nHost: jerp\r\nX-Drip: "
SLOW_BODY = (b"POST /hooks/release HTTP/1.1\r\nHost: jerp\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n{")


class Drippers:
    """Connections that each send one of ``openings`` and then one byte every DRIP_EVERY
    seconds, on one thread (a selector), recording when each is answered and closed by the server."""

    def __init__(self, url: str, openings: list[bytes]) -> None:
        self.selector = selectors.DefaultSelector()
        self.opened = time.monotonic()
        self.answers: dict[int, bytes] = {}
        self.closed_after: dict[int, float] = {}
        self.sockets: dict[int, socket.socket] = {}
        for index, opening in enumerate(openings):
            sock = socket.create_connection(_address(url), timeout=5)
            sock.sendall(opening)
            sock.setblocking(False)
            self.sockets[index] = sock
            self.answers[index] = b""
            self.selector.register(sock, selectors.EVENT_READ, index)

    def run(self, *, until: float) -> None:
        """Drip until every connection is closed by the server or ``until`` seconds have passed."""
        next_drip = time.monotonic()
        while self.sockets and time.monotonic() - self.opened < until:
            for key, _ in self.selector.select(timeout=0.05):
                self._read(key.data)
            if time.monotonic() >= next_drip:
                for index, sock in list(self.sockets.items()):
                    try:
                        sock.send(b"a")
                    except OSError:
                        self._closed(index)
                next_drip += DRIP_EVERY

    def _read(self, index: int) -> None:
        sock = self.sockets.get(index)
        if sock is None:
            return
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.answers[index] += data
        else:
            self._closed(index)

    def _closed(self, index: int) -> None:
        sock = self.sockets.pop(index)
        self.closed_after[index] = time.monotonic() - self.opened
        self.selector.unregister(sock)
        sock.close()

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.selector.close()


@pytest.mark.parametrize("opening", [pytest.param(SLOW_HEAD, id="headers"), pytest.param(SLOW_BODY, id="body")])
def test_a_slow_drip_client_is_answered_408_and_cut_off_within_the_bound(server, opening):
    drip = Drippers(server, [opening])
    try:
        drip.run(until=BOUND + 10)
    finally:
        drip.close()
    assert drip.closed_after, "the server still held the slow connection"
    assert drip.closed_after[0] <= BOUND, drip.closed_after
    assert drip.closed_after[0] >= READ_TIMEOUT - 0.5  # cut by the deadline, not refused at once
    assert drip.answers[0].startswith(b"HTTP/1.1 408 "), drip.answers[0][:200]


def test_hundreds_of_slow_clients_are_cut_off_while_normal_requests_are_served(server, real_redis):
    drip = Drippers(server, [SLOW_HEAD, SLOW_BODY] * 150)
    try:
        # while they drip, a normal hook call and a health check are answered
        assert httpx.get(f"{server}/healthz", timeout=5).status_code == 200
        answer = signed_release(server, "0c0ffee")
        assert answer.status_code == 202, answer.text
        drip.run(until=BOUND + 20)
    finally:
        drip.close()
    assert len(drip.closed_after) == 300, f"{300 - len(drip.closed_after)} slow connections still held"
    assert max(drip.closed_after.values()) <= BOUND + 10, max(drip.closed_after.values())
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in drip.answers.values())
    print(f"300 slow connections: all cut off {max(drip.closed_after.values()):.1f} s after they opened "
          f"(JERP_WEBHOOK_READ_TIMEOUT={READ_TIMEOUT:g})")
    # the release that was asked for in the middle of it is recorded
    assert real_redis.exists("jerp:release:requested") and real_redis.hget("jerp:release:requested", "0c0ffee")


def test_a_normal_request_on_a_keep_alive_connection_is_served_and_the_next_one_too(server):
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.get(f"{server}/healthz").status_code == 200
            time.sleep(READ_TIMEOUT / 2)  # idle between requests, under the keep-alive timeout
