#!/usr/bin/env python3
"""Stand-in for Frappe's HTTP side (the ``backend`` web server and the ``websocket`` Socket.IO server).

Standard library only: it runs inside the stand-in backend image, which has Debian's python3 and
nothing else. It imitates what ``jerp_jobs.smoke`` uses, the way Frappe version-15 does it:

- Sites: ``X-Frappe-Site-Name`` or the ``Host`` header (port stripped) names a folder of
  ``<bench>/sites``; it is a site when ``site_config.json`` exists, else a werkzeug-like 404
  ``Not Found`` page. ``maintenance_mode`` in the site config answers 503 (``SessionStopped``).
- ``GET /api/method/ping`` -> ``{"message": "pong"}``; ``GET /api/method/version`` -> the
  ``STANDIN_VERSION`` environment variable (default ``15.0.0-standin``).
- ``POST /api/method/login`` (form or JSON ``usr``/``pwd``): users come from
  ``<site>/standin_web.json``; success answers ``{"message": "Logged In", ...}`` and sets the ``sid``
  cookie (HttpOnly, SameSite=Lax), bad credentials 401 ``AuthenticationError``. A guest request
  gets ``sid=Guest``, like Frappe. ``/api/method/logout`` ends the session.
- CSRF as in frappe/auth.py: a session has no token until the desk page ``GET /app`` makes one
  (written into the page as ``frappe.csrf_token = "..."``); from then on its POST/PUT/DELETE
  requests need ``X-Frappe-CSRF-Token`` (or a ``csrf_token`` form field), else 400 ``CSRFTokenError``.
- REST (frappe/api/v1.py): ``/api/resource/ToDo`` create/read/update/delete/list, kept in memory,
  answers under ``"data"``; DELETE answers 202. Guests get 403, other users' ToDos 403, unknown
  names 404 ``DoesNotExistError``, a ToDo without description 417 ``MandatoryError``.
- Background job: ``frappe.desk.query_report.background_enqueue_run`` (or
  ``...prepared_report.make_prepared_report``) inserts a Prepared Report (Queued); a thread plays
  the worker: Started, then Completed (or Error) after ``job_delay`` seconds each. A report the
  site does not have stays Started, as the real job dies before it can record an error.
- Realtime (frappe/realtime): engine.io protocol 4 long-polling on ``/socket.io/`` and socket.io
  namespace connect with the checks of realtime/middlewares/authenticate.js: ``Invalid namespace``,
  ``Invalid origin``, ``No cookie transmitted.``, ``No authentication method used...``, then the
  backend is asked who the sid is (an unknown sid connects as Guest, as in Frappe, where
  ``frappe.realtime.get_user_info`` allows guests). A refusal is a ``44/<site>,{"message": ...}``.

Site file ``<bench>/sites/<site>/standin_web.json`` (read at every request)::

    {"users": {"smoke@example.com": "password",
               "web@example.com": {"password": "pw", "user_type": "Website User", "full_name": "W"}},
     "reports": ["ToDo"],              # reports the site has (default ["ToDo"])
     "faults": ["job"],                # failure injection for this site
     "csrf_token_at_login": false}     # true: like an app whose login hook issues a CSRF token

Failure injection: ``STANDIN_WEB_FAULTS`` (comma list, read at every request) and the site's
``faults`` list. ``ping``/``login``/``document`` answer 500 on their endpoint (``document``: the
ToDo insert), ``realtime`` refuses the namespace connect (the websocket cannot reach the backend),
``job`` ends the Prepared Report in Error.

Run: ``python3 web.py --bench /home/frappe/frappe-bench --listen 0.0.0.0:8000``; it exits at once,
with status 0, on SIGTERM or SIGINT. In tests: ``start_server(bench)`` serves on an ephemeral
loopback port from a thread and returns the server (``server.url``, ``server.stop()``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

CONFIG_FILE = "standin_web.json"
FAULTS_ENV = "STANDIN_WEB_FAULTS"
VERSION_ENV = "STANDIN_VERSION"
DEFAULT_VERSION = "15.0.0-standin"
FAULT_NAMES = frozenset({"ping", "login", "document", "realtime", "job"})
DEFAULT_REPORTS = ("ToDo",)
SESSION_EXPIRY_S = 6 * 3600  # Frappe's default session_expiry, 06:00:00

EIO_PING_INTERVAL_MS = 25000
EIO_PING_TIMEOUT_MS = 20000
EIO_MAX_PAYLOAD = 1000000
EIO_SEPARATOR = "\x1e"
EIO_IDLE_S = 600  # engine.io sessions nobody polled for this long are dropped

TODO_FIELDS = ("status", "priority", "date", "allocated_to", "description", "reference_type", "reference_name",
               "role", "assigned_by", "color")
TODO_PRIORITIES = ("Low", "Medium", "High")
TODO_STATUSES = ("Open", "Closed", "Cancelled")
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})

NOT_FOUND_PAGE = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server. If you entered the URL manually please check your "
    "spelling and try again.</p>\n"
)


def now_text() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


def frappe_hash(length: int = 56) -> str:
    """Like ``frappe.generate_hash``: lowercase hex."""
    return secrets.token_hex((length + 1) // 2)[:length]


def hostname(value: str | None) -> str | None:
    """realtime/utils.js ``get_hostname``: the host of a URL or of a ``host:port``."""
    if not value:
        return None
    if "://" in value:
        value = value.split("/")[2]
    return value.split(":", 1)[0] if ":" in value else value


class HttpError(Exception):
    """An answer other than 200, shaped like Frappe's JSON error answers."""

    def __init__(self, status: int, exc_type: str, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.exc_type = exc_type
        self.message = message
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        server_message = {"message": self.message, "title": "Message", "indicator": "red", "raise_exception": 1}
        body: dict[str, Any] = {
            "exception": f"frappe.exceptions.{self.exc_type}: {self.message}",
            "exc_type": self.exc_type,
            "_server_messages": json.dumps([json.dumps(server_message)]),
        }
        body.update(self.extra)
        return body


@dataclass
class Session:
    sid: str
    site: str
    user: str
    user_type: str
    full_name: str
    csrf_token: str | None = None


@dataclass
class EngineIOSession:
    sid: str
    headers: dict[str, str]  # of the handshake request: socket.io middlewares see these
    queue: list[str] = field(default_factory=list)
    sockets: dict[str, str] = field(default_factory=dict)  # namespace -> socket id
    closed: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def push(self, packet: str) -> None:
        with self.cond:
            self.queue.append(packet)
            self.cond.notify_all()


class StandinWebServer(ThreadingHTTPServer):
    """The stand-in's state: sessions, documents and engine.io sessions, all in memory."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], *, bench: Path, job_delay: float = 0.2, poll_wait: float = 25.0,
                 access_log: bool = False) -> None:
        self.bench = Path(bench)
        self.sites = self.bench / "sites"
        self.job_delay = job_delay
        self.poll_wait = poll_wait
        self.access_log = access_log
        self.lock = threading.RLock()
        self.sessions: dict[str, Session] = {}
        self.docs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (site, doctype) -> name -> doc
        self.eio: dict[str, EngineIOSession] = {}
        self._thread: threading.Thread | None = None
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving (from another thread than the one serving) and close the socket."""
        self.shutdown()
        self.server_close()
        with self.lock:
            for session in self.eio.values():
                with session.cond:
                    session.closed = True
                    session.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # sites ---------------------------------------------------------------------------------

    def site_exists(self, site: str | None) -> bool:
        return bool(site) and "/" not in site and not site.startswith(".") and \
            (self.sites / site / "site_config.json").is_file()

    def site_config(self, site: str) -> dict[str, Any]:
        return _read_json(self.sites / site / "site_config.json")

    def common_config(self) -> dict[str, Any]:
        return _read_json(self.sites / "common_site_config.json")

    def web_config(self, site: str) -> dict[str, Any]:
        return _read_json(self.sites / site / CONFIG_FILE)

    def fault(self, site: str | None, name: str) -> bool:
        env = {item.strip() for item in os.environ.get(FAULTS_ENV, "").split(",") if item.strip()}
        if name in env:
            return True
        if not site:
            return False
        faults = self.web_config(site).get("faults") or []
        return name in faults

    def users(self, site: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, entry in (self.web_config(site).get("users") or {}).items():
            info = {"password": entry} if isinstance(entry, str) else dict(entry)
            info.setdefault("user_type", "System User")
            info.setdefault("full_name", name.split("@", 1)[0])
            info.setdefault("enabled", True)
            out[name] = info
        return out

    def reports(self, site: str) -> list[str]:
        return list(self.web_config(site).get("reports") or DEFAULT_REPORTS)

    # documents -----------------------------------------------------------------------------

    def table(self, site: str, doctype: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return self.docs.setdefault((site, doctype), {})

    def new_name(self, site: str, doctype: str) -> str:
        table = self.table(site, doctype)
        while True:
            name = frappe_hash(10)  # ToDo and Prepared Report are named by hash
            if name not in table:
                return name

    def run_prepared_report(self, site: str, name: str) -> None:
        """Play the worker of the ``long`` queue for one Prepared Report."""

        def work() -> None:
            table = self.table(site, "Prepared Report")
            time.sleep(self.job_delay)
            with self.lock:
                doc = table.get(name)
                if doc is None:
                    return
                doc.update(status="Started", job_id=f"{site}::{frappe_hash(32)}", modified=now_text())
                known = doc["report_name"] in self.reports(site)
            if not known:
                return  # the real job raises DoesNotExistError before its try: the status stays Started
            time.sleep(self.job_delay)
            with self.lock:
                doc = table.get(name)
                if doc is None:
                    return
                if self.fault(site, "job"):
                    doc.update(status="Error", error_message=(
                        "Traceback (most recent call last):\n"
                        '  File "apps/frappe/frappe/core/doctype/prepared_report/prepared_report.py", '
                        "in generate_report\n"
                        "Exception: standin fault injected: job"))
                else:
                    doc.update(status="Completed")
                doc.update(report_end_time=now_text(), modified=now_text())

        threading.Thread(target=work, name=f"standin-job-{name}", daemon=True).start()

    # engine.io -----------------------------------------------------------------------------

    def drop_idle_engineio(self) -> None:
        limit = time.monotonic() - EIO_IDLE_S
        with self.lock:
            for sid in [sid for sid, s in self.eio.items() if s.closed or s.last_seen < limit]:
                del self.eio[sid]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Handler(BaseHTTPRequestHandler):
    server: StandinWebServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls
    server_version = "standin-frappe"
    sys_version = ""

    # plumbing ------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.access_log:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self.method = method
        self.out_cookies: list[str] = []
        url = urlsplit(self.path)
        self.url_path = url.path
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length > 0 else b""
        try:
            if self.url_path == "/socket.io" or self.url_path.startswith("/socket.io/"):
                self._socketio()
            else:
                self._frappe()
        except HttpError as exc:
            self._json(exc.status, exc.body())
        except Exception:  # noqa: BLE001 - a bug in the stand-in is a 500, like an uncaught exception in Frappe
            self._json(500, {"exc_type": "Exception", "exception": traceback.format_exc(limit=3)})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for cookie in self.out_cookies:
            self.send_header("Set-Cookie", cookie)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.method != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data, default=str).encode(), "application/json")

    def _html(self, status: int, html: str) -> None:
        self._send(status, html.encode(), "text/html; charset=utf-8")

    def _text(self, status: int, text: str, content_type: str = "text/plain; charset=UTF-8") -> None:
        self._send(status, text.encode(), content_type)

    def _set_cookie(self, name: str, value: str, *, httponly: bool = False) -> None:
        expires = format_datetime(datetime.now(UTC) + timedelta(seconds=SESSION_EXPIRY_S), usegmt=True)
        cookie = f"{name}={quote(value)}; Expires={expires}; Max-Age={SESSION_EXPIRY_S}; Path=/; SameSite=Lax"
        self.out_cookies.append(cookie + ("; HttpOnly" if httponly else ""))

    def _cookies(self, raw: str | None = None) -> dict[str, str]:
        jar = SimpleCookie()
        try:
            jar.load(raw if raw is not None else (self.headers.get("Cookie") or ""))
        except Exception:  # noqa: BLE001 - a malformed Cookie header is no cookie
            return {}
        return {key: unquote(morsel.value) for key, morsel in jar.items()}

    # Frappe --------------------------------------------------------------------------------

    def _form(self) -> dict[str, Any]:
        """frappe.form_dict: the query string, then a form or JSON body."""
        form: dict[str, Any] = dict(self.query)
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if not self.body:
            return form
        if content_type == "application/json":
            try:
                data = json.loads(self.body)
            except ValueError as exc:
                raise HttpError(417, "ValidationError", "Invalid JSON body") from exc
            if isinstance(data, dict):
                form.update(data)
        elif content_type == "application/x-www-form-urlencoded":
            parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
            form.update({key: values[-1] for key, values in parsed.items()})
        return form

    def _frappe(self) -> None:
        site = hostname(self.headers.get("X-Frappe-Site-Name")) or hostname(self.headers.get("Host"))
        if not self.server.site_exists(site):
            self._html(404, NOT_FOUND_PAGE)
            return
        assert site is not None
        self.site = site
        self.form = self._form()
        is_login = self.url_path == "/api/method/login" or self.form.get("cmd") == "login"
        self.session = self._resume_session()
        if self.server.site_config(site).get("maintenance_mode"):
            raise HttpError(503, "SessionStopped", "Session Stopped")
        if not is_login:
            self._validate_csrf_token()
        path = self.url_path
        if path.startswith("/api/method/"):
            self._method(path[len("/api/method/"):].split("/", 1)[0])
        elif path.startswith("/api/resource/"):
            self._resource([unquote(part) for part in path[len("/api/resource/"):].strip("/").split("/", 1)])
        elif path == "/app" or path.startswith("/app/"):
            self._desk()
        else:
            self._html(404, NOT_FOUND_PAGE)

    def _resume_session(self) -> Session | None:
        sid = self.form.get("sid") or self._cookies().get("sid") or "Guest"
        with self.server.lock:
            session = self.server.sessions.get(sid)
        if session is not None and session.site == self.site:
            self._session_cookies(session)
            return session
        self._guest_cookies()
        return None

    def _session_cookies(self, session: Session) -> None:
        self._set_cookie("sid", session.sid, httponly=True)
        self._set_cookie("system_user", "yes" if session.user_type == "System User" else "no")
        self._set_cookie("full_name", session.full_name)
        self._set_cookie("user_id", session.user)
        self._set_cookie("user_image", "")

    def _guest_cookies(self) -> None:
        self.out_cookies.clear()
        self._set_cookie("sid", "Guest", httponly=True)
        self._set_cookie("system_user", "no")
        self._set_cookie("full_name", "Guest")
        self._set_cookie("user_id", "Guest")
        self._set_cookie("user_image", "")

    def _validate_csrf_token(self) -> None:
        """frappe/auth.py HTTPRequest.validate_csrf_token."""
        if self.method not in UNSAFE_METHODS or self.session is None or not self.session.csrf_token:
            return
        given = self.headers.get("X-Frappe-CSRF-Token") or self.form.pop("csrf_token", None)
        if given == self.session.csrf_token:
            return
        raise HttpError(400, "CSRFTokenError", "Invalid Request")

    def _user(self) -> Session:
        if self.session is None:
            raise HttpError(403, "PermissionError", "Not permitted")
        return self.session

    def _method(self, method: str) -> None:
        site = self.site
        if method == "ping":
            if self.server.fault(site, "ping"):
                raise HttpError(500, "Exception", "standin fault injected: ping")
            self._json(200, {"message": "pong"})
        elif method == "version":
            self._json(200, {"message": os.environ.get(VERSION_ENV) or DEFAULT_VERSION})
        elif method == "login":
            self._login()
        elif method in ("logout", "frappe.handler.logout", "frappe.auth.logout"):
            if self.session is not None:
                with self.server.lock:
                    self.server.sessions.pop(self.session.sid, None)
                self.session = None
                self._guest_cookies()
            self._json(200, {})
        elif method == "frappe.auth.get_logged_user":
            self._json(200, {"message": self._user().user})
        elif method == "frappe.realtime.get_user_info":  # allow_guest
            session = self.session
            self._json(200, {"message": {"user": session.user if session else "Guest",
                                         "user_type": session.user_type if session else "Guest"}})
        elif method in ("frappe.desk.query_report.background_enqueue_run",
                        "frappe.core.doctype.prepared_report.prepared_report.make_prepared_report"):
            self._make_prepared_report()
        else:
            raise HttpError(404, "DoesNotExistError", f"Failed to get method for command {method}")

    def _login(self) -> None:
        if self.method != "POST":
            raise HttpError(403, "PermissionError", "Not permitted")
        if self.server.fault(self.site, "login"):
            raise HttpError(500, "Exception", "standin fault injected: login")
        usr, pwd = self.form.get("usr"), self.form.get("pwd")
        if not (usr and pwd):
            raise HttpError(401, "AuthenticationError", "Incomplete login details",
                            extra={"message": "Incomplete login details"})
        users = self.server.users(self.site)
        name = next((key for key in users if key.casefold() == str(usr).casefold()), None)
        info = users.get(name) if name else None
        if info is None or not secrets.compare_digest(str(info["password"]).encode(), str(pwd).encode()):
            raise HttpError(401, "AuthenticationError", "Invalid login credentials",
                            extra={"message": "Invalid login credentials"})
        if not info["enabled"]:
            raise HttpError(401, "AuthenticationError", "User disabled or missing",
                            extra={"message": "User disabled or missing"})
        assert name is not None
        session = Session(sid=frappe_hash(), site=self.site, user=name, user_type=info["user_type"],
                          full_name=info["full_name"])
        if self.server.web_config(self.site).get("csrf_token_at_login"):
            session.csrf_token = frappe_hash()
        with self.server.lock:
            self.server.sessions[session.sid] = session
        self.session = session
        self.out_cookies.clear()
        self._session_cookies(session)
        if session.user_type == "Website User":
            self._json(200, {"message": "No App", "home_page": "/me", "full_name": session.full_name})
        else:
            self._json(200, {"message": "Logged In", "home_page": "/app", "full_name": session.full_name})

    def _desk(self) -> None:
        """frappe/www/app.py: the desk page carries the session's CSRF token (made here if needed)."""
        if self.method != "GET":
            raise HttpError(405, "ValidationError", "Method Not Allowed")
        session = self.session
        if session is None:
            self._html(403, "<!doctype html><title>Not Permitted</title><p>Log in to access this page.</p>")
            return
        if session.user_type != "System User":
            self._html(403, "<!doctype html><title>Not Permitted</title><p>You are not permitted to access "
                            "this page.</p>")
            return
        if not session.csrf_token:
            session.csrf_token = frappe_hash()
        boot = {"sitename": self.site, "user": {"name": session.user}}
        self._html(200, (
            "<!DOCTYPE html>\n<html><head><title>Frappe</title></head><body>\n"
            '<script type="text/javascript">\n'
            f"\tfrappe.boot = {json.dumps(boot)};\n"
            f'\tfrappe.csrf_token = "{session.csrf_token}";\n'
            "</script>\n</body></html>\n"
        ))

    # REST ----------------------------------------------------------------------------------

    def _resource(self, parts: list[str]) -> None:
        doctype = parts[0]
        name = parts[1] if len(parts) > 1 and parts[1] else None
        if doctype not in ("ToDo", "Prepared Report"):
            raise HttpError(404, "DoesNotExistError", f"DocType {doctype} not found")
        session = self._user()
        table = self.server.table(self.site, doctype)
        if name is None:
            if self.method == "GET":
                with self.server.lock:
                    names = [{"name": n} for n, d in table.items() if d["owner"] == session.user]
                self._json(200, {"data": names})
            elif self.method == "POST":
                if doctype != "ToDo":
                    raise HttpError(403, "PermissionError", f"Insufficient Permission for {doctype}")
                self._json(200, {"data": self._insert_todo(session, table)})
            else:
                raise HttpError(405, "ValidationError", "Method Not Allowed")
            return
        with self.server.lock:
            doc = table.get(name)
            if doc is None:
                raise HttpError(404, "DoesNotExistError", f"{doctype} {name} not found")
            if doc["owner"] != session.user:
                raise HttpError(403, "PermissionError", f"No permission for {doctype} {name}")
            if self.method == "GET":
                self._json(200, {"data": doc})
            elif self.method == "PUT" and doctype == "ToDo":
                data = self._data()
                changes = {key: value for key, value in data.items() if key in TODO_FIELDS}
                _validate_todo({**doc, **changes})
                doc.update(changes, modified=now_text(), modified_by=session.user)
                self._json(200, {"data": doc})
            elif self.method == "DELETE":
                del table[name]
                self._json(202, {"data": "ok"})
            else:
                raise HttpError(405, "ValidationError", "Method Not Allowed")

    def _data(self) -> dict[str, Any]:
        """frappe/api/v1.py get_request_form_data: the ``data`` field, else the JSON body, else the form."""
        raw = self.form.get("data")
        if raw is None:
            raw = self.body.decode("utf-8", "replace")
        if isinstance(raw, dict):
            return raw
        try:
            data = json.loads(raw)
        except ValueError:
            return dict(self.form)
        return data if isinstance(data, dict) else dict(self.form)

    def _insert_todo(self, session: Session, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if self.server.fault(self.site, "document"):
            raise HttpError(500, "Exception", "standin fault injected: document")
        data = self._data()
        stamp = now_text()
        doc: dict[str, Any] = {key: None for key in TODO_FIELDS}
        doc.update(status="Open", priority="Medium")
        doc.update({key: value for key, value in data.items() if key in TODO_FIELDS})
        _validate_todo(doc)
        with self.server.lock:
            doc.update(name=self.server.new_name(self.site, "ToDo"), owner=session.user, creation=stamp,
                       modified=stamp, modified_by=session.user, docstatus=0, idx=0, doctype="ToDo")
            table[doc["name"]] = doc
        return doc

    def _make_prepared_report(self) -> None:
        session = self._user()
        if self.method != "POST":
            raise HttpError(403, "PermissionError", "Not permitted")  # a write: frappe.handler refuses GET
        report = self.form.get("report_name")
        if not report:
            raise HttpError(417, "ValidationError", "report_name is required")
        filters = self.form.get("filters") or "null"
        try:
            filters = json.dumps(json.loads(filters) if isinstance(filters, str) else filters,
                                 sort_keys=True, separators=(",", ":"))
        except ValueError as exc:
            raise HttpError(417, "ValidationError", "filters is not JSON") from exc
        table = self.server.table(self.site, "Prepared Report")
        stamp = now_text()
        with self.server.lock:
            name = self.server.new_name(self.site, "Prepared Report")
            table[name] = {
                "name": name, "doctype": "Prepared Report", "report_name": report, "filters": filters,
                "status": "Queued", "job_id": None, "error_message": None, "report_end_time": None,
                "peak_memory_usage": 0, "owner": session.user, "creation": stamp, "modified": stamp,
                "modified_by": session.user, "docstatus": 0, "idx": 0,
                "queued_by": session.user, "queued_at": stamp,
            }
        self.server.run_prepared_report(self.site, name)
        self._json(200, {"message": {"name": name}})

    # Socket.IO (frappe/realtime) -----------------------------------------------------------

    def _eio_error(self, code: int, message: str) -> None:
        self._json(400, {"code": code, "message": message})

    def _socketio(self) -> None:
        if self.query.get("EIO") != "4":
            self._eio_error(5, "Unsupported protocol version")
            return
        if self.query.get("transport") != "polling":
            self._eio_error(0, "Transport unknown")
            return
        sid = self.query.get("sid")
        if not sid:
            if self.method != "GET":
                self._eio_error(2, "Bad handshake method")
                return
            self._eio_open()
            return
        with self.server.lock:
            session = self.server.eio.get(sid)
        if session is None or session.closed:
            self._eio_error(1, "Session ID unknown")
            return
        session.last_seen = time.monotonic()
        if self.method == "POST":
            for packet in self.body.decode("utf-8", "replace").split(EIO_SEPARATOR):
                self._eio_packet(session, packet)
            self._text(200, "ok", "text/html")
        elif self.method == "GET":
            with session.cond:
                if not session.queue and not session.closed:
                    session.cond.wait_for(lambda: session.queue or session.closed, timeout=self.server.poll_wait)
                packets, session.queue = session.queue, []
            if not packets:
                packets = ["1"] if session.closed else ["2"]  # close, or a ping when nothing happened
            self._text(200, EIO_SEPARATOR.join(packets))
        else:
            self._eio_error(3, "Bad request")

    def _eio_open(self) -> None:
        self.server.drop_idle_engineio()
        sid = secrets.token_urlsafe(15)[:20]
        headers = {key.lower(): value for key, value in self.headers.items()}
        with self.server.lock:
            self.server.eio[sid] = EngineIOSession(sid=sid, headers=headers)
        handshake = {"sid": sid, "upgrades": [], "pingInterval": EIO_PING_INTERVAL_MS,
                     "pingTimeout": EIO_PING_TIMEOUT_MS, "maxPayload": EIO_MAX_PAYLOAD}
        self._text(200, "0" + json.dumps(handshake, separators=(",", ":")))

    def _eio_packet(self, session: EngineIOSession, packet: str) -> None:
        if not packet:
            return
        kind, payload = packet[0], packet[1:]
        if kind == "1":  # close
            with session.cond:
                session.closed = True
                session.cond.notify_all()
        elif kind == "4" and payload:  # message: a socket.io packet
            sio_type, rest = payload[0], payload[1:]
            namespace = "/"
            if rest.startswith("/"):
                namespace, _, rest = rest.partition(",")
            prefix = "" if namespace == "/" else f"{namespace},"
            if sio_type == "0":  # CONNECT
                error = self._authenticate(session, namespace)
                if error:
                    session.push(f"44{prefix}" + json.dumps({"message": error}))
                else:
                    socket_id = secrets.token_urlsafe(15)[:20]
                    session.sockets[namespace] = socket_id
                    session.push(f"40{prefix}" + json.dumps({"sid": socket_id}))
            elif sio_type == "1":  # DISCONNECT
                session.sockets.pop(namespace, None)
        # "3" (pong) and anything else need no answer

    def _authenticate(self, session: EngineIOSession, namespace: str) -> str | None:
        """realtime/middlewares/authenticate.js, on the headers of the handshake request."""
        headers = session.headers
        host, origin = headers.get("host"), headers.get("origin")
        site_name = hostname(headers.get("x-frappe-site-name"))
        if not site_name:
            default_site = self.server.common_config().get("default_site")
            if default_site and hostname(host) in ("localhost", "127.0.0.1"):
                site_name = default_site
            else:
                site_name = hostname(origin) or hostname(host)
        if namespace[1:] != site_name:
            return "Invalid namespace"
        if hostname(host) != hostname(origin):
            return "Invalid origin"
        if not headers.get("cookie"):
            return "No cookie transmitted."
        sid = self._cookies(headers["cookie"]).get("sid")
        if not sid and not headers.get("authorization"):
            return "No authentication method used. Use cookie or authorization header."
        # socket.frappe_request("/api/method/frappe.realtime.get_user_info") to the Origin's host
        backend_site = hostname(origin)
        if self.server.fault(backend_site, "realtime"):
            return "Unauthorized: TypeError: fetch failed"
        if not self.server.site_exists(backend_site):
            return "Unauthorized: SyntaxError: Unexpected token '<', \"<!doctype \"... is not valid JSON"
        assert backend_site is not None
        if self.server.site_config(backend_site).get("maintenance_mode"):
            return "Unauthorized: TypeError: Cannot read properties of undefined (reading 'user')"
        return None  # a known sid is its user; any other connects as Guest, as in Frappe


def _validate_todo(doc: dict[str, Any]) -> None:
    if not str(doc.get("description") or "").strip():
        raise HttpError(417, "MandatoryError", "[ToDo]: description")
    if doc.get("priority") not in TODO_PRIORITIES:
        raise HttpError(417, "ValidationError", f"Priority cannot be {doc.get('priority')!r}")
    if doc.get("status") not in TODO_STATUSES:
        raise HttpError(417, "ValidationError", f"Status cannot be {doc.get('status')!r}")


def start_server(bench: Path | str, *, host: str = "127.0.0.1", port: int = 0, job_delay: float = 0.05,
                 poll_wait: float = 25.0) -> StandinWebServer:
    """Serve the stand-in from a daemon thread (an ephemeral port by default); ``server.stop()`` ends it."""
    server = StandinWebServer((host, port), bench=Path(bench), job_delay=job_delay, poll_wait=poll_wait)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="standin-web", daemon=True)
    server._thread = thread
    thread.start()
    return server


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in for Frappe's web and Socket.IO servers.")
    parser.add_argument("--bench", type=Path, default=Path("/home/frappe/frappe-bench"),
                        help="bench folder (its sites/ holds the sites)")
    parser.add_argument("--listen", type=_listen, default=("0.0.0.0", 8000), help="HOST:PORT (default 0.0.0.0:8000)")
    parser.add_argument("--job-delay", type=float, default=0.5,
                        help="seconds the stand-in worker takes for each step of a background job")
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = StandinWebServer(args.listen, bench=args.bench, job_delay=args.job_delay, access_log=not args.quiet)
    sys.stderr.write(f"standin-web: serving {args.bench / 'sites'} on {args.listen[0]}:{args.listen[1]}\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
