"""The ``.env`` file: settings an operator keeps beside the stack, read once at process start.

jerpctl, the Celery worker and Beat, and the webhook service read ``./.env`` (the working
directory's), or the file named by ``JERP_ENV_FILE``, before their settings. The process's
environment always wins: a variable already set is never replaced, so compose's
``environment:`` and an operator's ``export`` override the file.

The format is the one ``.env.example`` and docker compose use: ``NAME=value`` lines, an
optional ``export`` before the name, ``#`` comments and blank lines, values optionally in single
or double quotes (the quotes are removed; nothing inside is expanded). A malformed line is a
:class:`~jerp_jobs.errors.ConfigError` naming the file and the line number — never its value,
which may be a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

from jerp_jobs.errors import ConfigError

ENV_FILE_VARIABLE = "JERP_ENV_FILE"

_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def parse_env_file(path: Path) -> dict[str, str]:
    """The variables of one ``.env`` file, in order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(ENV_FILE_VARIABLE, f"names {path}, which cannot be read ({exc.__class__.__name__})") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ConfigError(ENV_FILE_VARIABLE, f"file {path}, line {number}: expected NAME=value")
        name, value = match.groups()
        values[name] = _unquote(value, path, number)
    return values


def _unquote(value: str, path: Path, number: int) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        if end < 0:
            raise ConfigError(ENV_FILE_VARIABLE, f"file {path}, line {number}: unterminated {quote} quote")
        rest = value[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(ENV_FILE_VARIABLE, f"file {path}, line {number}: text after the closing quote")
        return value[1:end]
    # An unquoted value ends at " #" (an inline comment), as in docker compose.
    return re.split(r"\s+#", value, maxsplit=1)[0].strip()


def load_env_file(environ: MutableMapping[str, str] | None = None, *, cwd: Path | None = None) -> Path | None:
    """Add the ``.env`` file's variables that are not set yet to ``environ`` (``os.environ``).

    Returns the file read, or None when there is none. A missing file is skipped: compose's
    ``env_file: ${JERP_ENV_FILE}`` names the file on the Docker host, and inside the containers
    its variables are already in the environment (with ``JERP_ENV_FILE`` among them when the file
    sets it, as Portainer's ``stack.env`` does). A relative name is taken from ``cwd``.
    """
    environ = os.environ if environ is None else environ
    base = cwd or Path.cwd()
    path = base / (environ.get(ENV_FILE_VARIABLE) or ".env")
    if not path.is_file():
        return None
    for name, value in parse_env_file(path).items():
        environ.setdefault(name, value)
    return path
