"""Logging: structlog, configured once per process, with secrets redacted everywhere.

- JSON lines when stderr is not a terminal (workers, containers); a readable console on a TTY.
- Task context (job id, site, step, task id) is bound with contextvars by the Celery signal
  handlers in ``jerp_jobs.celery`` and shows on every line logged while a task runs.
- :class:`Redactor` masks every known secret value wherever it appears — in the event, in any
  field, inside lists such as a logged argv — and the value following a secret option
  (``--db-root-password PW``, ``--admin-password=PW``) even when the value is not known.
  The same redactor cleans output tails before they reach a job record.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jerp_jobs.secretnames import SECRET_OPTIONS

MASK = "***"

#: Options whose value is a secret: bench's own, and any option named like a credential.
_SECRET_OPTION_NAME = re.compile(r"^--?[\w-]*(password|passwd|secret|token|key)[\w-]*$", re.IGNORECASE)


def is_secret_option(option: str) -> bool:
    return option in SECRET_OPTIONS or bool(_SECRET_OPTION_NAME.match(option))

_OPTION_VALUE = re.compile(
    r"(?P<opt>(?:" + "|".join(re.escape(o) for o in sorted(SECRET_OPTIONS)) + r"))(?P<sep>[= ]+)(?P<val>\S+)"
)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?P<at>@)")


class Redacted(str):
    """Text that went through the redactor: the log processor passes it on as it is."""

    __slots__ = ()


class Redactor:
    """Replaces secret values with ``***`` in strings and nested containers.

    Every value is redacted once: the results are :class:`Redacted` strings (and lists of
    them), which a later pass — the log processor over a value already cleaned for a job
    record or a logged argv — returns untouched.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole. Very short values
        # would mask innocent text and are not secrets worth the name; they are still masked
        # when they follow a secret option.
        merged = set(self._secrets) | {s for s in secrets if s and len(s) >= 4}
        self._secrets = sorted(merged, key=len, reverse=True)

    def text(self, value: str) -> str:
        if isinstance(value, Redacted):
            return value
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        if "--" in value:  # every secret option starts so
            value = _OPTION_VALUE.sub(lambda m: f"{m['opt']}{m['sep']}{MASK}", value)
        if "://" in value:
            value = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", value)
        return Redacted(value)

    def argv(self, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, _RedactedList):
            return argv
        out: list[str] = _RedactedList()
        hide_next = False
        for item in argv:
            if hide_next:
                out.append(MASK)
                hide_next = False
                continue
            option, eq, _ = item.partition("=")
            if is_secret_option(option):
                if eq:
                    out.append(f"{option}={MASK}")
                    continue
                hide_next = True
            out.append(self.text(item))
        return out

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, _RedactedList) or value is None or isinstance(value, (int, float)):
            return value
        if isinstance(value, (list, tuple)):
            if all(isinstance(v, str) for v in value):
                return self.argv(value)
            return [self.value(v) for v in value]
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, BaseException):
            return self.text(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        """structlog processor."""
        return {k: self.value(v) for k, v in event_dict.items()}


class _RedactedList(list):  # type: ignore[type-arg]
    """An argv that went through :meth:`Redactor.argv`."""


#: The process-wide redactor, filled with the settings' secrets by :func:`configure`.
redactor = Redactor()


#: the arguments of a configuration left for the first log line (configure(..., on_first_use=True))
_deferred: tuple[bool | None, int] | None = None


#: logging.INFO (the logging module is imported only when logging is configured)
INFO = 20


def configure(*, secrets: Iterable[str] = (), json: bool | None = None, level: int = INFO,
              on_first_use: bool = False) -> None:
    """Configure structlog and the stdlib root logger (Celery's own lines) once, at start.

    ``on_first_use``: the secrets are given to the redactor now, and structlog is imported and
    configured only when a logger is first used (a read command that logs nothing never
    imports it). When structlog is imported already (loggers of this process may exist), it is
    configured now, as without the option."""
    global _deferred
    redactor.add(secrets)
    if on_first_use and "structlog" not in sys.modules:
        _deferred = (json, level)
        return
    _deferred = None
    import logging

    import structlog

    if json is None:
        json = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),  # one write per event: no glued lines
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared[:-1], redactor],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request's URL at INFO; a Portainer webhook's URL is its only credential
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))


class _Logger:
    """structlog's logger of one name, with structlog imported when it is first used."""

    def __init__(self, name: str | None) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") or attribute in ("_name", "_logger"):
            raise AttributeError(attribute)
        if self._logger is None:
            if _deferred is not None:
                configure(json=_deferred[0], level=_deferred[1])
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attribute)


def get_logger(name: str | None = None) -> Any:
    return _Logger(name)
