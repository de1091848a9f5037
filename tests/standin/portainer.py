"""A stand-in Portainer: the stack webhook, answered and acted on the way Portainer does it.

``POST /api/stacks/webhooks/<uuid>[?VAR=value&...]``:

- an unknown uuid -> ``404`` ``{"message": ..., "details": ...}``;
- while a redeploy of the stack is still running -> ``409``;
- otherwise ``202`` ``{"stackId": N, "message": ...}`` (``204`` with ``legacy=True``), and the
  redeploy runs afterwards in a background thread — the real webhook answers before the stack
  is updated. Query parameters other than Portainer's own (``tag``, ``pullimage``,
  ``rollback-to``) are environment overrides (Business Edition): the ``redeploy`` callable
  gets them as a dict and redeploys the compose stack with them (the tests pass one that runs
  ``docker-compose ... up -d --no-build`` with the overridden variables).

``noop=True`` imitates Community Edition on a stack that is not git-based: ``204`` and nothing
happens. ``delay_s`` waits before redeploying. Every call is recorded in ``calls`` (uuid,
query, status) and every failure of ``redeploy`` in ``errors``.

Use it as a context manager; ``webhook_url`` is the URL to give the deployer.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

WEBHOOK_PATH = "/api/stacks/webhooks/"
#: Query parameters the webhook reads itself; the others are environment overrides.
_PORTAINER_PARAMETERS = frozenset({"tag", "pullimage", "rollback-to"})

Redeploy = Callable[[dict[str, str]], None]


@dataclass(frozen=True)
class WebhookCall:
    uuid: str
    query: dict[str, str]
    status: int


@dataclass
class Portainer:
    """The stand-in; ``start()``/``stop()`` or ``with Portainer(redeploy) as portainer:``."""

    redeploy: Redeploy
    webhook_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    stack_id: int = 1
    legacy: bool = False
    noop: bool = False
    delay_s: float = 0.0
    calls: list[WebhookCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    deployments: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._busy = threading.Event()
        self._workers: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Portainer:
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="standin-portainer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 300) -> None:
        self.wait_idle(timeout)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Portainer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}{WEBHOOK_PATH}{self.webhook_id}"

    def wait_idle(self, timeout: float = 300) -> None:
        """Wait for the redeploys started so far to end."""
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))

    # -- the webhook -----------------------------------------------------------------

    def answer(self, path: str, query: str) -> tuple[int, dict[str, object] | None]:
        """The status and JSON body for ``POST path?query``; starts the redeploy when due."""
        prefix, _, webhook = path.partition(WEBHOOK_PATH)
        params = dict(parse_qsl(query, keep_blank_values=True))
        if prefix or not webhook or "/" in webhook:
            return self._record(webhook, params, 404, {"message": "Not found", "details": "Not found"})
        if webhook != self.webhook_id:
            return self._record(webhook, params, 404, {
                "message": "Unable to find the stack by webhook ID", "details": "object not found inside the database"})
        with self._lock:
            if self.noop:
                return self._record(webhook, params, 204, None)
            if self._busy.is_set():
                return self._record(webhook, params, 409, {
                    "message": "Another deployment is in progress", "details": "stack is being deployed"})
            self._busy.set()
            self.deployments += 1
            overrides = {k: v for k, v in params.items() if k not in _PORTAINER_PARAMETERS}
            worker = threading.Thread(target=self._run, args=(overrides,), name="standin-portainer-redeploy",
                                      daemon=True)
            self._workers.append(worker)
            worker.start()
        if self.legacy:
            return self._record(webhook, params, 204, None)
        return self._record(webhook, params, 202, {"stackId": self.stack_id, "message": "Stack update started"})

    def _record(self, webhook: str, params: Mapping[str, str], status: int,
                body: dict[str, object] | None) -> tuple[int, dict[str, object] | None]:
        with self._lock:
            self.calls.append(WebhookCall(webhook, dict(params), status))
        return status, body

    def _run(self, overrides: dict[str, str]) -> None:
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            self.redeploy(overrides)
        except Exception:  # recorded for the test to see; a thread has no one else to tell
            self.errors.append(traceback.format_exc())
        finally:
            self._busy.clear()


def _handler_for(portainer: Portainer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            target = urlsplit(self.path)
            status, body = portainer.answer(target.path, target.query)
            self._send(status, body)

        def do_GET(self) -> None:
            self._send(405, {"message": "Method not allowed"})

        def _send(self, status: int, body: dict[str, object] | None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            if status != 204:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data and status != 204:
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the calls are recorded

    return Handler
