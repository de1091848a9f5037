"""The dashboard's ASGI app: pages, the live stream of a job, and the operator's actions.

Served by ``uvicorn jerp_jobs.dashboard:app`` (compose.jobs.yml's ``jobs-dashboard``, profile
``dashboard``); its own app, never the public webhook's. Settings are read when the service
starts (a bad or missing one stops it, named), not at import.

Routes: ``GET /healthz`` and ``GET /metrics`` (:mod:`jerp_jobs.metrics`; open, or a bearer
token) answer without a session; ``GET|POST /login``, ``POST /logout``; pages ``/jobs``
(filters ``kind``, ``state``, ``site``, ``window``; cursor ``before``), ``/jobs/{id}``,
``/sites``, ``/releases``, ``/fanouts``, ``/workers``, ``/audit``; ``GET /jobs/{id}/events``
(server-sent events: the live part of the job's page whenever it changes, until the job ends);
``GET /api/jobs/{id}`` (the record as JSON); actions ``GET /actions/{action}`` (the
confirmation page) and ``POST /actions/{action}`` (``cancel``, ``clear-attention``,
``backup``, ``drill``; operator role, CSRF token, same origin, ``confirm=yes``).

An anonymous request to a page is sent to the login page; to ``/api/`` or an event stream it
gets 401. A read-only user gets 403 on an action.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from jerp_jobs import keys
import jerp_jobs.dashboard.views as views
from jerp_jobs.dashboard.auth import LOGIN_WINDOW_S, Auth, User, same_origin
from jerp_jobs.errors import InvalidInput, JerpError, JobNotFound
from jerp_jobs.jobs import JOB_STATES
from jerp_jobs.log import get_logger
from jerp_jobs.metrics import make_router as make_metrics_router
from jerp_jobs.runtime import Runtime, runtime_once
from jerp_jobs.sites import validate_site_name

log = get_logger(__name__)

HERE = Path(__file__).resolve().parent
#: seconds a failed login is held before its answer
FAILED_LOGIN_DELAY_S = 1.0
#: seconds between two keep-alive comments of an idle event stream
KEEPALIVE_S = 15.0

ACTIONS = {
    "cancel": "Cancel job {target}: no new step starts; the running step finishes; the site is left online.",
    "clear-attention": "Clear the attention mark of {target}: automated workflows may touch it again. "
                       "Do this only once the site has been repaired.",
    "backup": "Start a backup of {target} (database and files, then off-site when configured).",
    "drill": "Start a restore drill of {target}: its latest off-site backup restored into a scratch site, "
             "verified, dropped.",
}

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class _Anonymous(Exception):
    pass


class _NotFound(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


class _Forbidden(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _fmt_time(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def _fmt_age(epoch: float | None, now: float | None = None) -> str:
    if not epoch:
        return "-"
    return _fmt_duration((now or time.time()) - epoch) + " ago"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _fmt_hours(hours: float | None) -> str:
    return "never" if hours is None else _fmt_duration(hours * 3600)


def _default_celery_app() -> Any:
    from jerp_jobs.celery import app

    return app


def _process_runtime() -> Runtime:
    from jerp_jobs.bootstrap import get_runtime

    return get_runtime()


def create_app(runtime: Runtime | Callable[[], Runtime] | None = None,
               celery_app: Callable[[], Any] | None = _default_celery_app) -> FastAPI:
    """The ASGI app; ``runtime`` (or a factory) for tests, else the process's runtime, built
    from the environment when the service starts; ``celery_app`` gives the Celery app whose
    workers the workers page asks (None: no workers are asked)."""
    state: dict[str, Any] = {}
    rt = runtime_once(runtime or _process_runtime)

    def auth() -> Auth:
        if "auth" not in state:
            state["auth"] = Auth(rt().settings)
        return state["auth"]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from jerp_jobs import log as logs

        runtime_ = rt()  # settings are read at start: a bad variable stops the service here, named
        logs.configure(secrets=runtime_.settings.secret_values())
        auth()
        yield

    app = FastAPI(title="jerp-jobs dashboard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # GET /metrics: open to scrapers (or a bearer token, JERP_METRICS_TOKEN), never a session
    app.include_router(make_metrics_router(rt, celery_app))
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(time=_fmt_time, age=_fmt_age, duration=_fmt_duration, hours=_fmt_hours)
    templates.env.globals.update(states=JOB_STATES, quote=quote)

    # -- who is asking -----------------------------------------------------------------------

    def _session(request: Request) -> dict[str, Any] | None:
        return auth().read(request.cookies.get("jerp_dashboard"))

    def current(request: Request) -> tuple[User | None, dict[str, Any] | None]:
        """The user (password session, or the trusted proxy's header) and the session."""
        session = _session(request)
        peer = request.client.host if request.client else None
        proxied = auth().proxy_user(request.headers, peer)
        if proxied is not None:
            if session and (session.get("v") != "proxy" or session.get("u") != proxied.name):
                session = None  # a session of someone else: a new one is issued for this user
            return proxied, session
        return auth().session_user(session), session

    def require(request: Request) -> tuple[User, dict[str, Any] | None]:
        user, session = current(request)
        if user is None:
            raise _Anonymous()
        request.state.user = user
        return user, session

    @app.exception_handler(_Anonymous)
    async def _anonymous(request: Request, _: _Anonymous) -> Response:
        path = request.url.path
        if path.startswith("/api/") or path.endswith("/events") or "text/event-stream" in request.headers.get("accept", ""):
            return JSONResponse({"detail": "log in first"}, status_code=401, headers={"WWW-Authenticate": "Cookie"})
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    @app.exception_handler(_Forbidden)
    async def _forbidden(request: Request, exc: _Forbidden) -> Response:
        return _page(request, "error.html", {"title": "Not allowed", "message": exc.detail}, status=403)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _page(request: Request, template: str, context: dict[str, Any], *, status: int = 200,
              session: dict[str, Any] | None = None) -> Response:
        """Render a page; a proxy user without a session of theirs gets one (for the CSRF token)."""
        user: User | None = getattr(request.state, "user", None)
        if user is not None and session is None:
            session = current(request)[1]
        csrf = (session or {}).get("c")
        cookie = None
        if user is not None and csrf is None:
            cookie, csrf = auth().issue(user)
        response = templates.TemplateResponse(request, template, {"user": user, "csrf": csrf, **context},
                                              status_code=status)
        if cookie is not None:
            response.set_cookie(value=cookie, **auth().cookie_options())
        return response

    # -- open routes -------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            rt().redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to answer is unhealthy
            return JSONResponse({"detail": f"job store unreachable: {type(exc).__name__}"}, status_code=503)
        return {"status": "ok"}

    @app.get("/login")
    def login_form(request: Request, next: str = "/jobs") -> Response:
        return _page(request, "login.html", {"next": _safe_next(next), "error": None, "title": "Log in"})

    def _failures_key(kind: str, value: str) -> str:
        return f"{keys.DASHBOARD_LOGIN_FAILS}{kind}:{value}"

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "/jobs")))
        if not same_origin(request.headers):
            return _page(request, "login.html", {"next": target, "error": "refused: not sent from this site",
                                                 "title": "Log in"}, status=403)
        peer = request.client.host if request.client else "?"
        counters = [_failures_key("user", name), _failures_key("addr", peer)]
        r = rt().redis
        failures = await run_in_threadpool(lambda: [int(v or 0) for v in r.mget(counters)])
        if max(failures) >= auth().max_failures:
            log.warning("dashboard.login_refused", user=name, peer=peer, reason="too many failures")
            return _page(request, "login.html", {"next": target, "title": "Log in",
                                                 "error": "too many failed logins: try again in 15 minutes"},
                         status=429)
        user = await run_in_threadpool(auth().login, name, password)
        if user is None:
            def count() -> None:
                pipe = r.pipeline()
                for key in counters:
                    pipe.incr(key)
                    pipe.expire(key, LOGIN_WINDOW_S)
                pipe.execute()

            await run_in_threadpool(count)
            log.warning("dashboard.login_failed", user=name, peer=peer)
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)
            return _page(request, "login.html", {"next": target, "error": "unknown user or wrong password",
                                                 "title": "Log in"}, status=401)
        await run_in_threadpool(r.delete, counters[0])
        log.info("dashboard.login", user=user.name, role=user.role, peer=peer)
        cookie, _ = auth().issue(user)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(value=cookie, **auth().cookie_options())
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        user, session = require(request)
        await _check_post(request, session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie("jerp_dashboard", path="/")
        return response

    async def _check_post(request: Request, session: dict[str, Any] | None) -> dict[str, Any]:
        """The form of a POST from this site with this session's CSRF token; 403 otherwise."""
        form = dict(await request.form())
        if not same_origin(request.headers):
            raise _Forbidden("refused: the request was not sent from a page of this dashboard")
        import hmac

        token = str(form.get("csrf", ""))
        if not session or not token or not hmac.compare_digest(token, str(session.get("c", ""))):
            raise _Forbidden("refused: the form's security token is missing or stale; reload the page and try again")
        return form

    # -- pages -------------------------------------------------------------------------------

    @app.get("/")
    def home(request: Request) -> Response:
        require(request)
        return RedirectResponse("/jobs", status_code=303)

    @app.get("/jobs")
    def jobs(request: Request, kind: str = "", state: str = "", site: str = "", window: str = "",
             before: float | None = None) -> Response:
        _, session = require(request)
        filters = {"kind": kind or None, "state": state or None, "site": site.strip() or None,
                   "window": window or None}
        error = None
        try:
            if filters["state"] and filters["state"] not in JOB_STATES:
                raise InvalidInput(f"unknown state {state!r}")
            if filters["site"]:
                validate_site_name(filters["site"])
            listing = views.jobs_list(rt(), before=before, **filters)
        except InvalidInput as exc:
            error, listing = str(exc), {"rows": [], "cursor": None, "counts": {}, "total": 0}
        query = {k: v for k, v in filters.items() if v}
        next_url = "/jobs?" + urlencode({**query, "before": repr(listing["cursor"])}) if listing["cursor"] else None
        return _page(request, "jobs.html", {"title": "Jobs", "filters": filters, "kinds": views.job_kinds(rt()),
                                            "windows": list(views.WINDOWS), "error": error, "next_url": next_url,
                                            "first_url": "/jobs?" + urlencode(query) if before else None,
                                            **listing}, session=session)

    def _job_or_404(job_id: str) -> dict[str, Any]:
        try:
            return views.job_view(rt(), job_id)
        except JobNotFound:
            raise _NotFound(f"no job {job_id}") from None

    @app.get("/jobs/{job_id}")
    def job_page(request: Request, job_id: str) -> Response:
        _, session = require(request)
        view = _job_or_404(job_id)
        return _page(request, "job.html", {"title": f"Job {job_id}", **view,
                                           "done": request.query_params.get("done")}, session=session)

    @app.get("/api/jobs/{job_id}")
    def job_json(request: Request, job_id: str) -> Response:
        require(request)
        try:
            return JSONResponse(rt().store.get(job_id).to_dict())
        except JobNotFound:
            return JSONResponse({"detail": f"no job {job_id}"}, status_code=404)

    @app.get("/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str) -> Response:
        user, session = require(request)
        await run_in_threadpool(_job_or_404, job_id)
        poll = rt().settings.dashboard_poll_s
        live = templates.env.get_template("_live.html")

        async def stream() -> AsyncIterator[str]:
            last = None
            quiet = 0.0
            yield "retry: 2000\n\n"
            while True:
                try:
                    view = await run_in_threadpool(views.job_view, rt(), job_id)
                except JobNotFound:
                    yield "event: end\ndata: {}\n\n"
                    return
                mark = views.fingerprint(view)
                if mark != last:
                    last, quiet = mark, 0.0
                    html = live.render(user=user, csrf=(session or {}).get("c"), **view)
                    data = json.dumps({"state": view["job"].state, "html": html})
                    yield f"event: update\ndata: {data}\n\n"
                if view["finished"]:
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(poll)
                quiet += poll
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/sites")
    def sites(request: Request) -> Response:
        _, session = require(request)
        return _page(request, "sites.html", {"title": "Sites", **views.sites_view(rt()),
                                             "done": request.query_params.get("done")}, session=session)

    @app.get("/releases")
    def releases(request: Request) -> Response:
        _, session = require(request)
        return _page(request, "releases.html", {"title": "Releases", "rows": views.releases_list(rt())},
                     session=session)

    @app.get("/fanouts")
    def fanouts(request: Request) -> Response:
        _, session = require(request)
        return _page(request, "fanouts.html", {"title": "Fan-outs", "rows": views.fanouts_list(rt())},
                     session=session)

    @app.get("/workers")
    def workers(request: Request) -> Response:
        _, session = require(request)
        seen = views.workers_view(rt(), celery_app() if celery_app else None)
        return _page(request, "workers.html", {"title": "Workers and queues", **seen}, session=session)

    @app.get("/audit")
    def audit_page(request: Request) -> Response:
        _, session = require(request)
        from jerp_jobs import audit

        rows = list(reversed(audit.newest(rt().redis, limit=200)))
        return _page(request, "audit.html", {"title": "Audit trail", "rows": rows}, session=session)

    # -- actions -----------------------------------------------------------------------------

    def _operator(request: Request) -> tuple[User, dict[str, Any] | None]:
        user, session = require(request)
        if not user.operator:
            raise _Forbidden(f"{user.name} has the {user.role} role; actions need the operator role")
        return user, session

    def _target(action: str, target: str) -> str:
        if action not in ACTIONS:
            raise _NotFound(f"no action {action}")
        if action == "cancel":
            if not target.isalnum():
                raise _NotFound(f"no job {target}")
            return target
        try:
            return validate_site_name(target)
        except InvalidInput as exc:
            raise _NotFound(str(exc)) from None

    @app.get("/actions/{action}")
    def confirm_page(request: Request, action: str, target: str = "") -> Response:
        _, session = _operator(request)
        target = _target(action, target)
        return _page(request, "confirm.html", {"title": "Confirm", "action": action, "target": target,
                                               "what": ACTIONS[action].format(target=target)}, session=session)

    @app.post("/actions/{action}")
    async def act(request: Request, action: str) -> Response:
        user, session = _operator(request)
        form = await _check_post(request, session)
        target = _target(action, str(form.get("target", "")))
        if form.get("confirm") != "yes":
            return RedirectResponse(f"/actions/{action}?" + urlencode({"target": target}), status_code=303)
        actor = f"dashboard {user.name} ({user.via})"
        try:
            where = await run_in_threadpool(_do, rt(), action, target, actor)
        except JobNotFound:
            raise _NotFound(f"no job {target}") from None
        except JerpError as exc:
            return _page(request, "error.html", {"title": "Not done", "message": str(exc)}, status=409,
                         session=session)
        log.info("dashboard.action", action=action, target=target, user=user.name)
        return RedirectResponse(where, status_code=303)

    @app.exception_handler(_NotFound)
    async def _not_found(request: Request, exc: _NotFound) -> Response:
        return _page(request, "error.html", {"title": "Not found", "message": exc.detail}, status=404)

    return app


def _do(rt: Runtime, action: str, target: str, actor: str) -> str:
    """Take an action through the functions jerpctl uses; returns where to go next."""
    from jerp_jobs import actions
    from jerp_jobs.enqueue import submit

    if action == "cancel":
        actions.cancel_job(rt, target, actor=actor)
        return f"/jobs/{target}?done=cancel-requested"
    if action == "clear-attention":
        actions.clear_attention(rt, target, actor=actor)
        return "/sites?" + urlencode({"done": f"attention mark of {target} cleared"})
    job = submit(rt, action, site=target, actor=actor)
    return f"/jobs/{job.id}?done=started"


def _safe_next(target: str) -> str:
    """Only a path of this site (never //host or a scheme): no open redirect after login."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/jobs"
    return target
