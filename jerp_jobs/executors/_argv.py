"""Checks and renderings shared by the executors: argv validation and safe descriptions."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence



def check_argv(argv: object) -> tuple[str, ...]:
    """Return argv as a tuple of str, or refuse it: argv lists only, never a shell string."""
    if isinstance(argv, (str, bytes)):
        raise TypeError(
            "argv must be a list or tuple of str, not a single string (no shell is used): "
            f"{argv!r}"
        )
    if not isinstance(argv, (list, tuple)):
        raise TypeError(f"argv must be a list or tuple of str, not {type(argv).__name__}")
    if not argv:
        raise ValueError("argv is empty: nothing to run")
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise TypeError(f"argv[{i}] must be str, not {type(arg).__name__}: {arg!r}")
        if "\x00" in arg:
            raise ValueError(f"argv[{i}] contains a NUL byte")
    return tuple(argv)


def check_timeout(timeout: object) -> float:
    """Return the timeout as a positive finite number of seconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def check_stdin(stdin: object) -> bytes | None:
    """Return the bytes for a command's stdin (None: stdin closed from the start)."""
    from jerp_jobs.executors.base import STDIN_MAX

    if stdin is None:
        return None
    if not isinstance(stdin, bytes):
        raise TypeError(f"stdin must be bytes or None, not {type(stdin).__name__}")
    if len(stdin) > STDIN_MAX:
        raise ValueError(f"stdin carries {len(stdin)} bytes; at most {STDIN_MAX} (answers to prompts)")
    return stdin


def check_holders_of(path: object) -> str | None:
    """Return the fence file path (relative to the working folder), or None."""
    if path is None:
        return None
    if not isinstance(path, str) or not path or "\x00" in path or path.startswith(("/", "-")):
        raise ValueError(f"holders_of must be a path relative to the working folder, not {path!r}")
    if ".." in path.split("/"):
        raise ValueError(f"holders_of must stay inside the working folder: {path!r}")
    return path


def describe_argv(argv: Sequence[str]) -> str:
    """A shell-like rendering of argv for messages, with secret values hidden (the log redactor's
    rules: ``--db-root-password PW`` and ``--admin-password=PW`` both show ``***``)."""
    from jerp_jobs.log import redactor

    return shlex.join(redactor.argv(list(argv)))


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"
