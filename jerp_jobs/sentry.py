"""Optional error reports to Sentry: on when ``JERP_SENTRY_DSN`` is set, off (and sentry-sdk
not even imported) otherwise.

:func:`init` is called once per process at start: by the Celery worker's main process
(``celeryd_init``, before the pool forks) and by Beat (``beat_init``) in ``jerp_jobs.celery``,
and by the web apps when they start (the webhook's lifespan; the dashboard and the
``/metrics`` app do the same). The Celery integration reports a task that raises, with the
task's name and arguments (ids only: messages carry nothing secret); Sentry's logging
integration reports stdlib log records at ERROR (Celery's own lines).

Secrets are scrubbed as in the logs: every event and breadcrumb passes through the log
redactor (:data:`jerp_jobs.log.redactor`: every known secret value, the value after a secret
option, a password in a URL) in ``before_send``/``before_breadcrumb``, after Sentry's own
scrubber (fields named like ``password``). Local variables of stack frames are not sent
(``include_local_variables=False``): the logs never show them either, and a value read at run
time (a token fetched from an API) would not be known to the redactor. No personal data
(``send_default_pii=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jerp_jobs.log import get_logger, redactor

log = get_logger(__name__)


def scrub(event: Any, hint: Any = None) -> Any:
    """``event`` (or a breadcrumb) with every secret masked, as plain JSON-able values."""
    return _plain(redactor.value(event))


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)  # the redactor's Redacted marker is the redactor's business only
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def init(settings: Any, *, transport: Any = None) -> bool:
    """Start Sentry when ``settings.sentry_dsn`` is set; True when it was started.

    ``transport``: a sentry-sdk transport (a class or instance) instead of HTTP, for tests."""
    dsn = settings.sentry_dsn
    if dsn is None or not dsn.get_secret_value():
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    redactor.add(settings.secret_values())
    options: dict[str, Any] = {}
    if transport is not None:
        options["transport"] = transport
    sentry_sdk.init(
        dsn=dsn.get_secret_value(),
        environment=settings.sentry_environment,
        integrations=[CeleryIntegration()],
        before_send=scrub,
        before_send_transaction=scrub,
        before_breadcrumb=scrub,
        send_default_pii=False,
        include_local_variables=False,
        traces_sample_rate=None,
        **options,
    )
    log.info("sentry.enabled", environment=settings.sentry_environment)
    return True
