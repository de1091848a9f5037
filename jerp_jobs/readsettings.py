"""The settings the read commands of ``jerpctl`` use, read without the typed model.

``jerpctl jobs``, ``backups`` and ``sites`` read a handful of settings (the broker, the job
store's, the staleness rule's, where bench runs) and start nothing. Building the typed
:class:`~jerp_jobs.settings.Settings` costs its imports (pydantic and pydantic-settings) on every
start; :func:`read_settings` reads only those variables, the same way: the ``.env`` file first
(the environment wins), names case-insensitive, the same defaults. A value that is not in its
plain form (a number written otherwise, an empty path, an unknown executor, a URL that is not a
Redis one) is left to the typed model: :func:`read_settings` then returns
:func:`~jerp_jobs.settings.load_settings`'s answer, or its :class:`ConfigError` naming the
variable. The other settings are checked where a job is started, by the typed model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jerp_jobs.envfile import load_env_file
from jerp_jobs.errors import ConfigError
from jerp_jobs.secretnames import SECRET_VARIABLES


_INT = re.compile(r"[0-9]+")
_FLOAT = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class _Unplain(Exception):
    """A value this reader leaves to the typed model."""


@dataclass(frozen=True)
class ReadSettings:
    """The settings of the read commands, with the typed model's names, defaults and rules."""

    broker_url: str = "redis://localhost:6379/0"
    job_ttl_days: int = 30
    live_output_lines: int = 1000
    backup_max_age_hours: float = 26.0
    s3_bucket: str | None = None
    executor: str = "docker"
    compose_project: str = "jerp"
    backend_service: str = "backend"
    bench_dir: Path | None = None
    bench_bin: str = "bench"
    bench_user: str | None = None
    child_env_extra: list[str] = field(default_factory=list)
    sites_dir: Path | None = None
    fleet_file: Path | None = None
    bench: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def secret_values(self) -> list[str]:
        """Every secret value that is set: what the log redactor must never let through."""
        return list(self.secrets)

    def require_bench_dir(self) -> Path:
        if self.bench_dir is None:
            raise ConfigError("JERP_BENCH_DIR", "is not set; the local executor needs the bench folder")
        return self.bench_dir


def _int(value: str, minimum: int) -> int:
    if not _INT.fullmatch(value) or int(value) < minimum:
        raise _Unplain
    return int(value)


def _float(value: str, *, above: float) -> float:
    if not _FLOAT.fullmatch(value) or float(value) <= above:
        raise _Unplain
    return float(value)


def _path(value: str) -> Path:
    if not value.strip():
        raise _Unplain
    return Path(value)


def _names(value: str, secrets: Mapping[str, str]) -> list[str]:
    names = [item.strip() for item in value.split(",") if item.strip()]
    for name in names:
        if not name.replace("_", "a").isalnum() or name[0].isdigit() or name in secrets.values():
            raise _Unplain
    return names


def _broker(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise _Unplain
    return value


def _literal(*allowed: str) -> Any:
    def check(value: str) -> str:
        if value not in allowed:
            raise _Unplain
        return value

    return check


#: field -> how its variable's text becomes its value (raises _Unplain to defer to the model)
_FIELDS: dict[str, Any] = {
    "broker_url": _broker,
    "job_ttl_days": lambda v: _int(v, 1),
    "live_output_lines": lambda v: _int(v, 0),
    "backup_max_age_hours": lambda v: _float(v, above=0),
    "s3_bucket": str,
    "executor": _literal("docker", "local"),
    "compose_project": str,
    "backend_service": str,
    "bench_dir": _path,
    "bench_bin": str,
    "bench_user": str,
    "child_env_extra": lambda v: _names(v, SECRET_VARIABLES),
    "sites_dir": _path,
    "fleet_file": _path,
    "bench": str,
}


def read_settings() -> Any:
    """The read commands' settings from the environment (after the ``.env`` file): a
    :class:`ReadSettings`, or the typed Settings when a value needs the model's judgement (for a
    malformed one, its ConfigError)."""
    load_env_file()
    env = {name.lower(): value for name, value in os.environ.items()}  # as the typed model reads them
    values: dict[str, Any] = {}
    try:
        for name, parse in _FIELDS.items():
            text = env.get(f"jerp_{name}")
            if text is not None:
                values[name] = parse(text)
    except (_Unplain, ValueError):
        from jerp_jobs.settings import load_settings

        return load_settings()
    secrets = (env.get(variable.lower()) for variable in SECRET_VARIABLES.values())
    return ReadSettings(**values, secrets=tuple(s for s in secrets if s))
