"""Post-release smoke checks of one site, through the platform's frontend (Nginx), with the site's Host header.

Five checks, run in order and each recorded as a :class:`CheckResult`:

    ping      GET /api/method/ping answers {"message": "pong"} (as a guest)
    login     POST /api/method/login (form usr/pwd) answers "Logged In" with a ``sid`` cookie, and
              GET /api/method/frappe.auth.get_logged_user names the smoke user
    document  a ToDo is created, edited, read back and deleted through the REST API (/api/resource)
    realtime  the Socket.IO handshake on /socket.io (engine.io v4 polling) connects to namespace /<site>
    job       a background job round trip: a Prepared Report of ``report`` is enqueued and a worker
              completes it (GET /api/resource/Prepared Report/<name> until Completed or Error)

``document``, ``realtime`` and ``job`` need the session of ``login``; when login fails they are
recorded as failed with the detail ``not run: login failed``. :func:`smoke_site` never raises: an
unreachable frontend, a timeout or an unexpected answer is a failed check with a one-line detail.
Details and log events never carry the password, the session id or the CSRF token.

What real Frappe (version-15) does, and this module relies on:

- Site routing: ``X-Frappe-Site-Name`` or the ``Host`` header (port stripped); an unknown site is a
  werkzeug 404 ``Not Found`` (frappe/app.py ``init_request``).
- A session created by ``/api/method/login`` has no CSRF token: ``Session.start`` never sets one
  (frappe/sessions.py); the token is made by ``frappe.sessions.get_csrf_token``, called when the desk
  page renders (frappe/www/app.py, written into the page as ``frappe.csrf_token = "..."`` by
  frappe/www/app.html). ``HTTPRequest.validate_csrf_token`` (frappe/auth.py) only checks POST/PUT/
  DELETE/PATCH requests of a session that has a token, against the ``X-Frappe-CSRF-Token`` header
  (or a ``csrf_token`` form field), and fails with ``CSRFTokenError`` (HTTP 400). So a write is sent
  without the header; if it is refused with ``CSRFTokenError`` (an app issued a token at login), the
  token is read from ``GET /app`` and the write is sent once more with it.
- REST: frappe/api/v1.py — POST /api/resource/<doctype> inserts, PUT .../<name> updates, GET reads,
  DELETE answers 202 ``"ok"``; documents come back under ``"data"``; whitelisted methods answer
  under ``"message"``.
- Realtime: frappe/realtime/index.js serves every namespace ``/<site>`` (Socket.IO v4, engine.io
  protocol 4, path /socket.io); frappe/realtime/middlewares/authenticate.js refuses a namespace that
  is not the site (``Invalid namespace``), an Origin whose host differs from Host (``Invalid
  origin``), a handshake without cookies or without a ``sid`` cookie, and then asks the backend
  ``frappe.realtime.get_user_info`` with that sid; a refusal is a socket.io CONNECT_ERROR packet
  (``44/<site>,{"message": ...}``). The handshake therefore carries the session cookie and an Origin
  of ``<scheme>://<site>`` (frappe_docker's Nginx sets both Origin and X-Frappe-Site-Name itself).
- Background job: ``frappe.desk.query_report.background_enqueue_run(report_name, filters)`` calls
  ``make_prepared_report`` (frappe/core/doctype/prepared_report/prepared_report.py), which inserts a
  Prepared Report (status Queued) whose ``after_insert`` enqueues ``generate_report`` on the ``long``
  queue; the worker sets Started, then Completed or Error (with ``error_message``). The default
  report, ``ToDo``, is a standard script report of frappe itself (frappe/desk/report/todo) with the
  role System Manager: the smoke user needs that role (or pass a ``report`` it may run).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

import httpx

from jerp_jobs.errors import SmokeFailed
from jerp_jobs.log import get_logger

log = get_logger(__name__)

CHECKS: tuple[str, ...] = ("ping", "login", "document", "realtime", "job")
#: Checks that use the session of ``login``.
NEEDS_LOGIN = frozenset({"document", "realtime", "job"})
DEFAULT_REPORT = "ToDo"
USER_VARIABLES = ("JERP_SMOKE_USER", "JERP_SMOKE_PASSWORD")

_DETAIL_MAX = 300
_MASK = "***"
_EIO_SEPARATOR = "\x1e"  # engine.io v4 polling: packets of one payload are separated by a record separator
_CSRF_IN_DESK = re.compile(r"""frappe\.csrf_token\s*=\s*["']([^"']+)["']""")
_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_FINISHED_REPORT = frozenset({"Completed", "Error", "Failed"})


@dataclass(frozen=True)
class CheckResult:
    name: str  # "ping", "login", "document", "realtime", "job"
    ok: bool
    detail: str  # one line; never a password, cookie, CSRF token or sid
    duration_s: float


@dataclass(frozen=True)
class SmokeReport:
    site: str
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def summary(self) -> str:
        """One line: ``site X: login failed (HTTP 401 ...), document not run, ...; 1 of 5 checks passed``."""
        total = len(self.checks)
        if self.ok:
            return f"site {self.site}: all {total} checks passed"
        passed = sum(check.ok for check in self.checks)
        problems = [
            f"{check.name} not run" if check.detail.startswith("not run") else f"{check.name} failed ({check.detail})"
            for check in self.checks
            if not check.ok
        ]
        return f"site {self.site}: {', '.join(problems)}; {passed} of {total} checks passed"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, for the job record."""
        return {
            "site": self.site,
            "ok": self.ok,
            "summary": self.summary(),
            "checks": [
                {"name": c.name, "ok": c.ok, "detail": c.detail, "duration_s": round(c.duration_s, 3)}
                for c in self.checks
            ],
        }


def ping(site: str, *, base_url: str, timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
    """GET /api/method/ping on ``site``; raises :class:`SmokeFailed` naming the site and what came back."""
    with _Frontend(site, base_url=base_url, timeout=timeout, transport=transport) as frontend:
        try:
            _check_ping(frontend, with_version=False)
        except _CheckError as exc:
            detail = frontend.clean(str(exc))
            raise SmokeFailed(f"site {site}: ping failed: {detail}", site=site, check="ping", detail=detail) from exc


def smoke_site(
    site: str,
    *,
    base_url: str,
    user: str | None,
    password: str | None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
    report: str = DEFAULT_REPORT,
    poll_interval: float = 0.5,
) -> SmokeReport:
    """Run the smoke checks of ``site`` through the frontend at ``base_url``; never raises.

    ``timeout`` bounds every HTTP request, the wait for the socket.io connect answer and the wait
    for the background job. ``report`` is the report the job check prepares; ``poll_interval`` is
    the pause between two reads of its Prepared Report.
    """
    started = time.monotonic()
    log.info("smoke.start", site=site, base_url=base_url, user=user)
    results: list[CheckResult] = []
    client: _Frontend | None = None
    try:
        client = _Frontend(site, base_url=base_url, timeout=timeout, transport=transport)
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed base_url: every check fails, nothing raises
        problem = f"frontend {base_url!r} unusable: {type(exc).__name__}: {exc}"
        results = [CheckResult(name=name, ok=False, detail=problem[:_DETAIL_MAX], duration_s=0.0) for name in CHECKS]
    if client is not None:
        _run_checks(client, results, user=user, password=password, report=report, poll_interval=poll_interval)
    smoke = SmokeReport(site=site, checks=tuple(results))
    (log.info if smoke.ok else log.warning)(
        "smoke.done",
        site=site,
        ok=smoke.ok,
        summary=smoke.summary(),
        duration_s=round(time.monotonic() - started, 3),
    )
    return smoke


def _run_checks(frontend: _Frontend, results: list[CheckResult], *, user: str | None, password: str | None,
                report: str, poll_interval: float) -> None:
    with frontend:
        if password:
            frontend.add_secret(password)
        results.append(_run(frontend, "ping", lambda: _check_ping(frontend, with_version=True)))
        if frontend.unreachable:
            # The same frontend would only time out once more: say why login was not tried.
            results.append(_not_run(frontend, "login", frontend.unreachable))
        else:
            results.append(_run(frontend, "login", lambda: _check_login(frontend, user, password)))
        logged_in = results[-1].ok
        steps: dict[str, Callable[[], str]] = {
            "document": lambda: _check_document(frontend),
            "realtime": lambda: _check_realtime(frontend),
            "job": lambda: _check_job(frontend, report=report, poll_interval=poll_interval),
        }
        for name, step in steps.items():
            if logged_in:
                results.append(_run(frontend, name, step))
            else:
                results.append(_not_run(frontend, name, "login failed"))
        if logged_in:
            frontend.logout()


# -- the frontend client ------------------------------------------------------------------


class _CheckError(Exception):
    """A check failed; the message is its detail."""


class _UnreachableError(_CheckError):
    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class _Frontend:
    """An httpx client on the frontend, for one site, that holds the session and masks its secrets."""

    def __init__(self, site: str, *, base_url: str, timeout: float, transport: httpx.BaseTransport | None) -> None:
        self.site = site
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.scheme = urlsplit(self.base_url).scheme or "http"
        self.unreachable: str | None = None
        self.csrf_token: str | None = None
        self._secrets: set[str] = set()
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Host": site, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    # secrets -------------------------------------------------------------------------------

    def add_secret(self, value: str) -> None:
        if value:
            self._secrets.add(value)
            self._secrets.add(quote(value, safe=""))

    def clean(self, text: str) -> str:
        """One line, at most ``_DETAIL_MAX`` characters, with every secret of this run masked."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= 4 and secret in text:
                text = text.replace(secret, _MASK)
        text = " ".join(text.split())
        return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"

    # session -------------------------------------------------------------------------------

    def start_session(self, sid: str) -> None:
        self.add_secret(sid)
        # Sent explicitly on every request from now on; cookies the frontend sets are not kept.
        self._client.headers["Cookie"] = f"sid={sid}"

    def logout(self) -> None:
        """End the smoke session (best effort): Frappe keeps sessions in tabSessions until they expire."""
        try:
            self.write("POST", "/api/method/logout")
        except Exception as exc:  # noqa: BLE001 - cleanup must never fail the checks
            log.warning("smoke.logout_failed", site=self.site, error=self.clean(f"{type(exc).__name__}: {exc}"))
        self._client.headers.pop("Cookie", None)

    # requests ------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # refused, reset, DNS, timeouts
            detail = f"frontend {self.base_url} unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
            timed_out = isinstance(exc, httpx.TimeoutException)
            if not timed_out or isinstance(exc, httpx.ConnectTimeout):
                self.unreachable = self.unreachable or self.clean(detail)
            raise _UnreachableError(self.clean(detail), timed_out=timed_out) from exc
        finally:
            self._client.cookies.clear()

    def write(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A POST/PUT/DELETE with the session; adds the CSRF token when the session turns out to have one."""
        response = self.request(method, path, headers=self._csrf_header(), **kwargs)
        if self.csrf_token is None and response.status_code == 400 and _exc_type(response) == "CSRFTokenError":
            self.csrf_token = self._desk_csrf_token()
            response = self.request(method, path, headers=self._csrf_header(), **kwargs)
        return response

    def _csrf_header(self) -> dict[str, str]:
        return {"X-Frappe-CSRF-Token": self.csrf_token} if self.csrf_token else {}

    def _desk_csrf_token(self) -> str:
        response = self.request("GET", "/app", headers={"Accept": "text/html"})
        if response.status_code != 200:
            raise _CheckError(f"the session needs a CSRF token, and GET /app answered {_describe(response)}")
        match = _CSRF_IN_DESK.search(response.text)
        if not match or match.group(1) in ("", "None"):
            raise _CheckError("the session needs a CSRF token, and the desk page (GET /app) shows none")
        token = match.group(1)
        self.add_secret(token)
        return token


# -- checks -------------------------------------------------------------------------------


def _run(frontend: _Frontend, name: str, step: Callable[[], str]) -> CheckResult:
    started = time.monotonic()
    try:
        ok, detail = True, step()
    except _CheckError as exc:
        ok, detail = False, str(exc)
    except Exception as exc:  # noqa: BLE001 - a smoke check reports; it never raises
        ok, detail = False, f"unexpected error: {type(exc).__name__}: {exc}"
    result = CheckResult(name=name, ok=ok, detail=frontend.clean(detail), duration_s=time.monotonic() - started)
    _log_check(frontend.site, result)
    return result


def _not_run(frontend: _Frontend, name: str, reason: str) -> CheckResult:
    result = CheckResult(name=name, ok=False, detail=frontend.clean(f"not run: {reason}"), duration_s=0.0)
    _log_check(frontend.site, result)
    return result


def _log_check(site: str, result: CheckResult) -> None:
    (log.info if result.ok else log.warning)(
        "smoke.check",
        site=site,
        check=result.name,
        ok=result.ok,
        detail=result.detail,
        duration_s=round(result.duration_s, 3),
    )


def _check_ping(frontend: _Frontend, *, with_version: bool) -> str:
    response = frontend.request("GET", "/api/method/ping")
    if response.status_code != 200 or _message(response) != "pong":
        hint = f" (is {frontend.site} a site of this bench?)" if response.status_code == 404 else ""
        raise _CheckError(f"GET /api/method/ping: {_describe(response)}{hint}")
    if not with_version:
        return "pong"
    version = None
    with contextlib.suppress(_CheckError):  # informative only: which release answers
        answer = frontend.request("GET", "/api/method/version")
        version = _message(answer) if answer.status_code == 200 else None
    return f"pong (frappe {version})" if isinstance(version, str) and version else "pong"


def _check_login(frontend: _Frontend, user: str | None, password: str | None) -> str:
    if not user or not password:
        missing = " and ".join(var for var, value in zip(USER_VARIABLES, (user, password), strict=True) if not value)
        raise _CheckError(
            f"no smoke credentials: set JERP_SMOKE_USER and JERP_SMOKE_PASSWORD (a System Manager of the site); "
            f"{missing} not set"
        )
    response = frontend.request("POST", "/api/method/login", data={"usr": user, "pwd": password})
    if response.status_code != 200:
        raise _CheckError(f"POST /api/method/login: {_describe(response)}")
    message = _message(response)
    if message != "Logged In":
        raise _CheckError(f"POST /api/method/login answered {message!r}, not 'Logged In' (website user, 2FA, reset?)")
    sid = _set_cookie(response, "sid")
    if not sid or sid == "Guest":
        raise _CheckError("POST /api/method/login answered 'Logged In' without a session (no sid cookie)")
    frontend.start_session(sid)
    response = frontend.request("GET", "/api/method/frappe.auth.get_logged_user")
    if response.status_code != 200:
        raise _CheckError(f"GET /api/method/frappe.auth.get_logged_user: {_describe(response)}")
    logged_user = _message(response)
    if not isinstance(logged_user, str) or logged_user.casefold() != user.casefold():
        raise _CheckError(f"the new session belongs to {logged_user!r}, not {user!r}")
    return f"logged in as {logged_user}"


def _check_document(frontend: _Frontend) -> str:
    marker = f"jerp smoke check {uuid.uuid4().hex[:12]}"
    new = {"description": f"{marker}: created", "priority": "Low"}
    response = frontend.write("POST", "/api/resource/ToDo", json=new)
    if response.status_code != 200:
        raise _CheckError(f"create ToDo (POST /api/resource/ToDo): {_describe(response)}")
    name = _data(response).get("name")
    if not isinstance(name, str) or not name:
        raise _CheckError("create ToDo: the answer names no document")
    try:
        _edit_and_read_back(frontend, name, f"{marker}: edited")
    except BaseException:
        _delete_quietly(frontend, "ToDo", name)
        raise
    problem = _delete(frontend, "ToDo", name)
    if problem:
        raise _CheckError(f"ToDo {name} created, edited and read back, but delete failed: {problem}")
    return f"ToDo {name} created, edited, read back and deleted"


def _edit_and_read_back(frontend: _Frontend, name: str, description: str) -> None:
    path = _doc_path("ToDo", name)
    response = frontend.write("PUT", path, json={"description": description, "priority": "Medium"})
    if response.status_code != 200:
        raise _CheckError(f"edit ToDo {name} (PUT): {_describe(response)}")
    response = frontend.request("GET", path)
    if response.status_code != 200:
        raise _CheckError(f"read ToDo {name} (GET): {_describe(response)}")
    data = _data(response)
    if description not in str(data.get("description") or "") or data.get("priority") != "Medium":
        raise _CheckError(f"read ToDo {name}: the edit was not kept (description {data.get('description')!r})")


def _check_realtime(frontend: _Frontend) -> str:
    namespace = f"/{frontend.site}"
    headers = {"Origin": f"{frontend.scheme}://{frontend.site}", "Accept": "*/*"}
    query = {"EIO": "4", "transport": "polling"}
    response = frontend.request("GET", "/socket.io/", params={**query, "t": _cache_buster()}, headers=headers)
    if response.status_code != 200:
        raise _CheckError(f"engine.io handshake (GET /socket.io/): {_describe(response)}")
    eio_sid = _engineio_sid(response.text)
    if not eio_sid:
        raise _CheckError(f"engine.io handshake: no open packet in {response.text[:80]!r}")
    frontend.add_secret(eio_sid)
    session = {**query, "sid": eio_sid}
    send_headers = {**headers, "Content-Type": "text/plain;charset=UTF-8"}
    try:
        connect = f"40{namespace},"  # engine.io MESSAGE (4) carrying a socket.io CONNECT (0) to the namespace
        response = frontend.request("POST", "/socket.io/", params=session, content=connect, headers=send_headers)
        if response.status_code != 200:
            raise _CheckError(f"socket.io connect to {namespace}: {_describe(response)}")
        deadline = time.monotonic() + frontend.timeout
        while True:
            try:
                poll = {**session, "t": _cache_buster()}
                response = frontend.request("GET", "/socket.io/", params=poll, headers=headers)
            except _UnreachableError as exc:
                if exc.timed_out:
                    raise _CheckError(
                        f"socket.io did not answer the connect to {namespace} within {frontend.timeout:g}s"
                    ) from None
                raise
            if response.status_code != 200:
                raise _CheckError(f"socket.io connect to {namespace}: poll answered {_describe(response)}")
            for packet in response.text.split(_EIO_SEPARATOR):
                if packet == "2":  # engine.io ping: answer pong, keep waiting
                    frontend.request("POST", "/socket.io/", params=session, content="3", headers=send_headers)
                elif packet.startswith("1"):
                    raise _CheckError(f"engine.io session closed by the server before {namespace} connected")
                elif packet.startswith(f"40{namespace},") or packet == f"40{namespace}":
                    return f"socket.io namespace {namespace} connected (engine.io v4 polling)"
                elif packet.startswith(f"44{namespace},"):
                    raise _CheckError(f"socket.io refused namespace {namespace}: {_connect_error(packet)}")
            if time.monotonic() >= deadline:
                raise _CheckError(f"socket.io did not answer the connect to {namespace} within {frontend.timeout:g}s")
    finally:
        with contextlib.suppress(_CheckError):  # close the engine.io session
            frontend.request("POST", "/socket.io/", params=session, content="1", headers=send_headers)


def _check_job(frontend: _Frontend, *, report: str, poll_interval: float) -> str:
    # frappe/desk/query_report.py background_enqueue_run -> make_prepared_report
    # (frappe/core/doctype/prepared_report/prepared_report.py): the insert enqueues generate_report.
    response = frontend.write(
        "POST",
        "/api/method/frappe.desk.query_report.background_enqueue_run",
        data={"report_name": report, "filters": "{}"},
    )
    if response.status_code != 200:
        raise _CheckError(f"enqueue report {report!r} (background_enqueue_run): {_describe(response)}")
    answer = _message(response)
    name = answer.get("name") if isinstance(answer, Mapping) else None
    if not isinstance(name, str) or not name:
        raise _CheckError(f"enqueue report {report!r}: the answer names no Prepared Report")
    started = time.monotonic()
    deadline = started + frontend.timeout
    try:
        while True:
            response = frontend.request("GET", _doc_path("Prepared Report", name))
            if response.status_code != 200:
                raise _CheckError(f"read Prepared Report {name}: {_describe(response)}")
            data = _data(response)
            status = data.get("status")
            if status == "Completed":
                return f"report {report!r} prepared by a background worker in {time.monotonic() - started:.1f}s"
            if status in _FINISHED_REPORT:
                error = _last_line(data.get("error_message"))
                raise _CheckError(f"Prepared Report {name} of {report!r} ended {status}: {error}")
            now = time.monotonic()
            if now >= deadline:
                raise _CheckError(
                    f"Prepared Report {name} of {report!r} still {status or 'without status'} after "
                    f"{frontend.timeout:g}s: is a worker consuming the 'long' queue?"
                )
            time.sleep(min(poll_interval, deadline - now))
    finally:
        _delete_quietly(frontend, "Prepared Report", name)


# -- helpers ------------------------------------------------------------------------------


def _delete(frontend: _Frontend, doctype: str, name: str) -> str | None:
    """Delete a document; the problem, or None."""
    try:
        response = frontend.write("DELETE", _doc_path(doctype, name))
    except _CheckError as exc:
        return str(exc)
    if response.status_code not in (200, 202):
        return _describe(response)
    return None


def _delete_quietly(frontend: _Frontend, doctype: str, name: str) -> None:
    problem = _delete(frontend, doctype, name)
    if problem:
        log.warning(
            "smoke.cleanup_failed", site=frontend.site, doctype=doctype, name=name, error=frontend.clean(problem)
        )


def _doc_path(doctype: str, name: str) -> str:
    return f"/api/resource/{quote(doctype, safe='')}/{quote(name, safe='')}"


def _cache_buster() -> str:
    return secrets.token_urlsafe(6)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(response: httpx.Response) -> Any:
    body = _json(response)
    return body.get("message") if isinstance(body, Mapping) else None


def _data(response: httpx.Response) -> Mapping[str, Any]:
    body = _json(response)
    data = body.get("data") if isinstance(body, Mapping) else None
    return data if isinstance(data, Mapping) else {}


def _exc_type(response: httpx.Response) -> str | None:
    body = _json(response)
    value = body.get("exc_type") if isinstance(body, Mapping) else None
    return value if isinstance(value, str) else None


def _set_cookie(response: httpx.Response, name: str) -> str | None:
    """The last value the response sets for cookie ``name`` (Frappe quotes cookie values)."""
    value = None
    for header in response.headers.get_list("set-cookie"):
        key, _, rest = header.partition("=")
        if key.strip() == name:
            value = unquote(rest.split(";", 1)[0].strip().strip('"'))
    return value


def _server_messages(raw: Any) -> list[str]:
    """Frappe's ``_server_messages``: a JSON list of JSON objects with a ``message``."""
    out: list[str] = []
    try:
        items = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return out
    for item in items if isinstance(items, list) else []:
        try:
            entry = json.loads(item) if isinstance(item, str) else item
        except ValueError:
            entry = item
        text = entry.get("message") if isinstance(entry, Mapping) else entry
        if isinstance(text, str) and text.strip():
            out.append(_TAGS.sub("", text).strip())
    return out


def _describe(response: httpx.Response) -> str:
    """``HTTP <code> <what the server said>``, in one short line."""
    said = ""
    body = _json(response)
    if isinstance(body, Mapping):
        parts: list[str] = []
        exc_type = body.get("exc_type")
        if isinstance(exc_type, str) and exc_type:
            parts.append(exc_type + ":")
        messages = _server_messages(body.get("_server_messages"))
        message = body.get("message")
        if messages:
            parts.append("; ".join(messages))
        elif isinstance(message, str) and message:
            parts.append(message)
        elif isinstance(body.get("exception"), str):
            parts.append(body["exception"])
        elif message is not None:
            parts.append(f"message {json.dumps(message)[:80]}")
        said = " ".join(parts).rstrip(":")
    else:
        text = response.text
        title = _HTML_TITLE.search(text)
        said = title.group(1) if title else _TAGS.sub(" ", text)[:120]
        said = " ".join(said.split())
        code = str(response.status_code)
        if said.startswith(code):
            said = said[len(code):].strip()
    return f"HTTP {response.status_code} {said}".strip()


def _engineio_sid(payload: str) -> str | None:
    for packet in payload.split(_EIO_SEPARATOR):
        if packet.startswith("0"):
            try:
                sid = json.loads(packet[1:]).get("sid")
            except (ValueError, AttributeError):
                return None
            return sid if isinstance(sid, str) and sid else None
    return None


def _connect_error(packet: str) -> str:
    _, _, payload = packet.partition(",")
    try:
        data = json.loads(payload)
    except ValueError:
        return payload or "no reason given"
    if isinstance(data, Mapping):
        return str(data.get("message") or data)
    return str(data)


def _last_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"
