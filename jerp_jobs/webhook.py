"""The webhook service: hooks from the image pipeline start releases.

Run it as ``uvicorn jerp_jobs.webhook:app --http jerp_jobs.webhook:GuardedH11Protocol
--limit-concurrency N`` (compose.jobs.yml does).

Endpoints (the OpenAPI schema at ``/openapi.json``, ``/docs`` and ``/redoc`` only with
``JERP_WEBHOOK_DOCS=1``; 404 otherwise):

- ``POST /hooks/github`` — GitHub deliveries, signed (``X-Hub-Signature-256``, key
  ``JERP_WEBHOOK_SECRET``): a successful ``workflow_run`` of ``JERP_GITHUB_REPOSITORY`` on
  ``JERP_GITHUB_BRANCH``, or a published container package with a tag.
- ``POST /hooks/registry`` — Distribution registry notifications (v1 and v2 envelopes) and
  Harbor ``PUSH_ARTIFACT``, authenticated by ``Authorization: Bearer <JERP_REGISTRY_TOKEN>``.
- ``POST /hooks/release`` — the pipeline's own signed ``{image, tag, sha, timestamp}``; the
  timestamp must be at most ``JERP_WEBHOOK_MAX_AGE`` seconds old (and at most
  :data:`~jerp_jobs.hooks.CLOCK_SKEW_S` ahead).
- ``GET /healthz`` — answers 200 when the job store answers.

The service only checks, records and enqueues; the release runs in the workers
(:mod:`jerp_jobs.operations.release.requests`). Answers: 202 a release was started; 200 the delivery was
already answered (same ``X-GitHub-Delivery``, or the same tag), the event is not one that
starts a release, or the release request is declined (its tag was requested before, or a newer
request was made; the reason is recorded); 400 malformed JSON or payload (a release call
without a valid ``timestamp`` too); 401 bad or missing signature or token; 403 a signed release
call whose timestamp is too old or in the future; 408 the body did not arrive within
``JERP_WEBHOOK_READ_TIMEOUT``; 413 a body over ``JERP_WEBHOOK_MAX_BODY``; 503 the service is not
configured for this hook, or Redis/the broker is down. Nothing is enqueued unless the answer is
202. Every delivery that passed authentication is recorded in ``jerp:hooks:recent``, refusals
included. Secrets never reach a log line or an answer.

Slow clients: :class:`GuardedH11Protocol` closes a connection whose request line and headers
have not arrived ``JERP_WEBHOOK_READ_TIMEOUT`` seconds after it opened (or after the previous
answer on it), answering 408; the endpoints then give the body as long again, and answer 408
and close the connection past that. uvicorn's ``--limit-concurrency`` caps the connections
served at once (503 beyond) and ``--timeout-keep-alive`` closes idle ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import h11
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from uvicorn.protocols.http.h11_impl import H11Protocol

from jerp_jobs import hooks, keys
from jerp_jobs.errors import (
    ConfigError,
    InvalidInput,
    JerpError,
    Unauthorized,
)
from jerp_jobs.log import get_logger
from jerp_jobs.runtime import Runtime, runtime_once

log = get_logger(__name__)

RECENT = keys.HOOKS_RECENT  # the last deliveries and what was done with them
RECENT_KEPT = 500
_JSON_TYPES = ("application/json", "application/vnd.docker.distribution.events.v1+json",
               "application/vnd.docker.distribution.events.v2+json")


class StartedJob(BaseModel):
    job_id: str
    tag: str
    created: bool


class HookAnswer(BaseModel):
    status: str  # accepted | duplicate | ignored
    reason: str | None = None
    jobs: list[StartedJob] = []


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "malformed JSON or payload"},
    401: {"model": Problem, "description": "bad or missing signature or token"},
    403: {"model": Problem, "description": "a signed release call too old (JERP_WEBHOOK_MAX_AGE) or in the future"},
    408: {"model": Problem, "description": "the body did not arrive within JERP_WEBHOOK_READ_TIMEOUT"},
    413: {"model": Problem, "description": "body over JERP_WEBHOOK_MAX_BODY"},
    503: {"model": Problem, "description": "not configured, or the job store is down"},
}
_JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


#: answers after which the rest of the request is not read: the connection is closed
_CLOSE_AFTER = frozenset({408, 413})


def _process_runtime() -> Runtime:
    from jerp_jobs.bootstrap import get_runtime

    return get_runtime()


def create_app(runtime: Runtime | Callable[[], Runtime] | None = None) -> FastAPI:
    """The ASGI app; ``runtime`` (or a factory) for tests, else the process's runtime, built
    from the environment when the service starts."""
    rt = runtime_once(runtime or _process_runtime)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from jerp_jobs import log as logs

        runtime_ = rt()  # settings are read at start: a bad variable stops the service here, named
        logs.configure(secrets=runtime_.settings.secret_values())
        from jerp_jobs import sentry

        sentry.init(runtime_.settings)
        yield

    # No /docs, /redoc or /openapi.json on this public service unless JERP_WEBHOOK_DOCS turns them on
    # (read per request: settings are read at start, never at import, where this app is made).
    app = FastAPI(title="jerp-jobs webhooks", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def _docs_on() -> None:
        if not rt().settings.webhook_docs:
            raise _Refused(404, "Not Found")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> Any:
        _docs_on()
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs() -> Any:
        from fastapi.openapi.docs import get_swagger_ui_html

        _docs_on()
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title + " - docs")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Any:
        from fastapi.openapi.docs import get_redoc_html

        _docs_on()
        return get_redoc_html(openapi_url="/openapi.json", title=app.title + " - ReDoc")

    @app.exception_handler(_Refused)
    async def _refused(_: Request, exc: _Refused) -> JSONResponse:
        headers = {"Connection": "close"} if exc.status in _CLOSE_AFTER else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.get("/healthz", response_model=Health, responses={503: _ERRORS[503]})
    def healthz() -> Any:
        try:
            rt().redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to answer is unhealthy
            return JSONResponse({"detail": f"job store unreachable: {type(exc).__name__}"}, status_code=503)
        return {"status": "ok"}

    @app.post("/hooks/github", response_model=HookAnswer, status_code=202, responses={200: {"model": HookAnswer},
              **_ERRORS}, openapi_extra=_JSON_BODY)
    async def github(request: Request) -> Any:
        body = await _body(request, rt().settings)
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery") or None
        return await run_in_threadpool(_github, rt(), body, request.headers.get("x-hub-signature-256"), event,
                                       delivery)

    @app.post("/hooks/registry", response_model=HookAnswer, status_code=202,
              responses={200: {"model": HookAnswer}, **_ERRORS}, openapi_extra=_JSON_BODY)
    async def registry(request: Request) -> Any:
        body = await _body(request, rt().settings)
        return await run_in_threadpool(_registry, rt(), body, request.headers.get("authorization"),
                                       request.headers.get("content-type", ""))

    @app.post("/hooks/release", response_model=HookAnswer, status_code=202,
              responses={200: {"model": HookAnswer}, **_ERRORS}, openapi_extra=_JSON_BODY)
    async def release(request: Request) -> Any:
        body = await _body(request, rt().settings)
        delivery = request.headers.get("x-github-delivery") or None
        return await run_in_threadpool(_release_call, rt(), body, request.headers.get("x-hub-signature-256"),
                                       delivery)

    return app


# -- the three hooks (run in a thread: they talk to Redis) --------------------------------------


def _github(rt: Runtime, body: bytes, signature: str | None, event: str, delivery: str | None) -> Any:
    _verify_signature(rt, body, signature)
    with _recording_refusals(rt, "github", event or "?", delivery):
        payload = _json(body)
        outcome = _guard(lambda: hooks.parse_github(
            event, payload, repository=rt.settings.github_repository, branch=rt.settings.github_branch,
            image_repository=rt.settings.image_repository))
        return _act(rt, "github", event or "?", delivery, outcome)


def _registry(rt: Runtime, body: bytes, authorization: str | None, content_type: str) -> Any:
    try:
        token = rt.settings.secret("registry_token")
    except ConfigError as exc:
        raise _Refused(503, f"the registry hook is not configured: {exc}") from exc
    which = _guard(lambda: hooks.verify_bearer([token, _optional_secret(rt, "registry_token_previous")], authorization))
    _note_rotation(which, "JERP_REGISTRY_TOKEN_PREVIOUS", "registry")
    media = content_type.split(";")[0].strip().lower()
    with _recording_refusals(rt, "registry", media or "?", None):
        if media and media not in _JSON_TYPES:
            raise _Refused(400, f"unsupported content type {media!r}; expected one of {', '.join(_JSON_TYPES)}")
        payload = _json(body)
        outcome = _guard(lambda: hooks.parse_registry(payload, repository=rt.settings.image_repository))
        return _act(rt, "registry", media or "?", None, outcome)


def _release_call(rt: Runtime, body: bytes, signature: str | None, delivery: str | None) -> Any:
    _verify_signature(rt, body, signature)
    with _recording_refusals(rt, "release", "release", delivery):
        payload = _json(body)
        outcome = _guard(lambda: hooks.parse_release_call(payload))
        _guard(lambda: hooks.check_request_time(outcome.requested_at, now=time.time(),
                                                max_age=rt.settings.webhook_max_age))
        return _act(rt, "release", "release", delivery, outcome)


@contextlib.contextmanager
def _recording_refusals(rt: Runtime, endpoint: str, event: str, delivery: str | None) -> Iterator[None]:
    """Record in the recent deliveries a refusal of a delivery that passed authentication
    (unauthenticated noise is not recorded: it would push real deliveries out of the list)."""
    try:
        yield
    except _Refused as exc:
        if exc.status < 500:
            _recent(rt, endpoint, event, delivery, "refused", status=exc.status, reason=exc.detail)
            log.warning("hook.refused", endpoint=endpoint, hook_event=event, delivery=delivery, status=exc.status,
                        reason=exc.detail)
        raise


def _verify_signature(rt: Runtime, body: bytes, signature: str | None) -> None:
    try:
        secret = rt.settings.secret("webhook_secret")
    except ConfigError as exc:
        raise _Refused(503, f"signed hooks are not configured: {exc}") from exc
    which = _guard(lambda: hooks.verify_signature([secret, _optional_secret(rt, "webhook_secret_previous")], body,
                                                  signature))
    _note_rotation(which, "JERP_WEBHOOK_SECRET_PREVIOUS", "signed")


def _optional_secret(rt: Runtime, field: str) -> str:
    value = getattr(rt.settings, field)
    return value.get_secret_value() if value is not None else ""


def _note_rotation(which: int, variable: str, endpoint: str) -> None:
    """A delivery authenticated by the secret being retired: the sender has not switched yet."""
    if which:
        log.warning("hook.previous_secret", endpoint=endpoint,
                    detail=f"authenticated with {variable}: the sender still uses the secret being retired")


def _act(rt: Runtime, endpoint: str, event: str, delivery: str | None, outcome: Any) -> Any:
    from jerp_jobs.operations.release.requests import (
        Declined,
        delivery_answer,
        request_release,
    )

    if not isinstance(outcome, hooks.Ignored):
        outcome = _immutable_only(rt, outcome if isinstance(outcome, list) else [outcome])
    requests = outcome if isinstance(outcome, list) else [outcome]
    try:
        if isinstance(outcome, hooks.Ignored):
            return _ignored(rt, endpoint, event, delivery, outcome.reason, remember=True)
        if delivery and delivery_answer(rt, delivery) == "ignored":
            return JSONResponse(HookAnswer(status="ignored", reason="this delivery was ignored before").model_dump(),
                                status_code=200)
        started, declined = [], []
        for index, request in enumerate(requests):
            key = delivery if index == 0 else (f"{delivery}#{index}" if delivery else None)
            answer = request_release(rt, request.tag, source=request.source, image=request.image, sha=request.sha,
                                     digest=request.digest, delivery=key, requested_at=request.requested_at)
            if isinstance(answer, Declined):
                declined.append(answer.reason)
            else:
                started.append(StartedJob(job_id=answer.job.id, tag=request.tag, created=answer.created))
    except InvalidInput as exc:
        raise _Refused(400, str(exc)) from exc
    except (JerpError, OSError) as exc:  # StoreError, BrokerUnavailable, LockBusy...
        log.error("hook.store_failed", endpoint=endpoint, error=str(exc))
        raise _Refused(503, f"could not record the release: {exc}") from exc
    except Exception as exc:  # redis-py's own errors: the store is down
        log.error("hook.store_failed", endpoint=endpoint, error=type(exc).__name__)
        raise _Refused(503, f"could not record the release: {type(exc).__name__}") from exc
    reason = "; ".join(declined) or None
    if not started:
        return _ignored(rt, endpoint, event, delivery, reason or "nothing to start", remember=False)
    created = any(job.created for job in started)
    extra = {"reason": reason} if reason else {}
    _recent(rt, endpoint, event, delivery, "accepted" if created else "duplicate",
            jobs=[job.model_dump() for job in started], **extra)
    log.info("hook.accepted" if created else "hook.duplicate", endpoint=endpoint, hook_event=event,
             delivery=delivery, jobs=[job.job_id for job in started], declined=declined or None)
    answer = HookAnswer(status="accepted" if created else "duplicate", reason=reason, jobs=started)
    return JSONResponse(answer.model_dump(), status_code=202 if created else 200)


def _ignored(rt: Runtime, endpoint: str, event: str, delivery: str | None, reason: str, *, remember: bool) -> Any:
    from jerp_jobs.operations.release.requests import remember_delivery

    if delivery and remember:
        remember_delivery(rt, delivery, "ignored")
    _recent(rt, endpoint, event, delivery, "ignored", reason=reason)
    log.info("hook.ignored", endpoint=endpoint, hook_event=event, delivery=delivery, reason=reason)
    return JSONResponse(HookAnswer(status="ignored", reason=reason).model_dump(), status_code=200)


def _immutable_only(rt: Runtime, requests: list[Any]) -> list[Any] | hooks.Ignored:
    """Releases deploy immutable tags: the pipeline also pushes the moving production tag
    (``15-prod``) with the same image, and that push must not start a second release."""
    moving = set(rt.settings.mutable_tags)
    kept = [request for request in requests if request.tag not in moving]
    if kept:
        return kept
    tags = ", ".join(sorted({request.tag for request in requests}))
    return hooks.Ignored(f"only moving tags were pushed ({tags}); releases deploy immutable tags")


def _recent(rt: Runtime, endpoint: str, event: str, delivery: str | None, outcome: str, **extra: Any) -> None:
    entry = {"at": time.time(), "endpoint": endpoint, "event": event, "delivery": delivery, "outcome": outcome,
             **extra}
    try:
        pipe = rt.redis.pipeline()
        pipe.lpush(RECENT, json.dumps(entry, sort_keys=True))
        pipe.ltrim(RECENT, 0, RECENT_KEPT - 1)
        pipe.execute()
    except Exception:  # noqa: BLE001 - the record of a delivery must not fail the delivery
        log.warning("hook.not_recorded", endpoint=endpoint)


def recent_deliveries(rt: Runtime, limit: int = 20) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in rt.redis.lrange(RECENT, 0, limit - 1)]


# -- request bodies ---------------------------------------------------------------------------


async def _body(request: Request, settings: Any) -> bytes:
    """The raw body as received (signatures are over these bytes); 413 past the size limit, 408
    when it does not arrive whole within ``JERP_WEBHOOK_READ_TIMEOUT`` (a client that sends a
    byte now and then must not hold a connection)."""
    limit, timeout = settings.webhook_max_body, settings.webhook_read_timeout
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _Refused(413, f"body of {declared} bytes is over the limit of {limit}")
        except ValueError:
            raise _Refused(400, "malformed Content-Length") from None
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Refused(413, f"body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        log.warning("hook.slow_body", received=size, timeout=timeout)
        raise _Refused(408, f"the body did not arrive within {timeout:g} s (JERP_WEBHOOK_READ_TIMEOUT); "
                            f"{size} bytes came") from None
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refused(400, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise _Refused(400, "body is not JSON this service accepts: nested too deeply") from None
    if not isinstance(payload, dict):
        raise _Refused(400, f"body must be a JSON object, not {type(payload).__name__}")
    return payload


def _guard(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Unauthorized as exc:
        raise _Refused(401, str(exc)) from exc
    except hooks.StaleRequest as exc:
        raise _Refused(403, str(exc)) from exc
    except InvalidInput as exc:
        raise _Refused(400, str(exc)) from exc


# -- the HTTP protocol ------------------------------------------------------------------------


def _read_timeout() -> float:
    from jerp_jobs.settings import get_settings

    try:
        return float(get_settings().webhook_read_timeout)
    except ConfigError:
        return 10.0  # the service does not start with bad settings anyway (the lifespan reads them)


_HEAD_TIMEOUT_TEXT = b"the request line and headers did not arrive in time\n"
_HEAD_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: " + str(len(_HEAD_TIMEOUT_TEXT)).encode() + b"\r\n\r\n" + _HEAD_TIMEOUT_TEXT
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's line and headers.

    uvicorn bounds idle keep-alive connections, but a client that sends its headers a byte at
    a time holds a connection for as long as it likes (each byte cancels the keep-alive timer).
    Here a connection whose request line and headers are not complete
    ``JERP_WEBHOOK_READ_TIMEOUT`` seconds after it opened, or after the previous answer on it,
    gets a 408 and is closed. The body has its own deadline in the endpoints (:func:`_body`).
    Select it with ``uvicorn --http jerp_jobs.webhook:GuardedH11Protocol``.
    """

    head_timeout: float | None = None  # seconds; None: JERP_WEBHOOK_READ_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()  # a keep-alive connection waits for its next request

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        timeout = self.head_timeout if self.head_timeout is not None else _read_timeout()
        self._head_deadline = self.loop.call_later(timeout, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.warning("hook.slow_headers", client=f"{self.client[0]}:{self.client[1]}" if self.client else None)
        self.transport.write(_HEAD_TIMEOUT_ANSWER)
        self.transport.close()


app = create_app()
