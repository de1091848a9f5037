"""Formatting for ``jerpctl``'s human output: aligned tables and readable times.

Widths are measured on the visible text, without ANSI escape codes, so a coloured cell pads
like a plain one (click drops the colours when the output is not a terminal). Times are shown
as ages ("3 min ago") beside the UTC time; ``--json`` keeps Unix seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def visible_len(text: str) -> int:
    """Length of ``text`` as a terminal shows it (escape codes take no room)."""
    return len(_ANSI.sub("", text))


def pad(text: str, width: int, *, right: bool = False) -> str:
    fill = " " * max(0, width - visible_len(text))
    return fill + text if right else text + fill


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
    """Lines of an aligned table with a header line; columns in ``right`` are right-aligned; the
    last column is never padded."""
    widths = [max([visible_len(h), *(visible_len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for cells in [list(headers), *rows]:
        out = [pad(cell, widths[i], right=i in right) if i < len(cells) - 1 else cell for i, cell in enumerate(cells)]
        lines.append("  ".join(out).rstrip())
    return lines


def ago(epoch: float | None, *, now: float | None = None) -> str:
    """How long ago ``epoch`` was: "12 s ago", "3 min ago", "5 h ago", "2 d ago"; "-" for none."""
    if not epoch:
        return "-"
    seconds = (time.time() if now is None else now) - float(epoch)
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def duration(seconds: float) -> str:
    """A duration for people: "0.4 s", "42 s", "3 min", "2 h 5 min", "3 d 4 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, rest = divmod(int(minutes), 60)
    if hours < 48:
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def utc(epoch: float | None) -> str:
    """``YYYY-MM-DD HH:MM:SSZ`` (UTC); "-" for none."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(epoch))) if epoch else "-"


def when(epoch: float | None, *, now: float | None = None) -> str:
    """The UTC time and its age: ``2026-12-05 17:20:01Z (3 min ago)``; "-" for none."""
    return f"{utc(epoch)} ({ago(epoch, now=now)})" if epoch else "-"
