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


def describe_argv(argv: Sequence[str]) -> str:
    """A shell-like rendering of argv for messages, with secret values hidden (the log redactor's
    rules: ``--db-root-password PW`` and ``--admin-password=PW`` both show ``***``)."""
    from jerp_jobs.log import redactor

    return shlex.join(redactor.argv(list(argv)))


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"
