"""The audit trail: who started each job, and which operator actions were taken (LGPD).

Kept apart from job records, with its own retention: one Redis stream, ``jerp:audit``, whose
entry ids are the time of the entry (milliseconds). Each :func:`record` trims entries older than
``JERP_AUDIT_DAYS`` (default 730) with ``XADD ... MINID``, so the trail outlives the job records
(``JERP_JOB_TTL``) and never grows past its window. An entry holds who (``actor``), what
(``action``: ``job.created``, ``job.cancel-requested``, ``site.attention-cleared``,
``site.offboarded``...), on what (``job_id``, ``kind``, ``site``) and a short ``detail``. Never a
secret: a job's parameters are not copied here, only the names the job was started with.

Actors:
    ``jerpctl root@host`` (``jerpctl alice (sudo root)@host``)   an operator's command
    ``webhook release delivery <id>``                            the image pipeline's hook
    ``beat nightly-backup``                                      a Celery Beat entry
    ``job <id>``                                                 a job that started another
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from jerp_jobs import keys

STREAM = keys.AUDIT
DAY_MS = 86_400_000
DEFAULT_DAYS = 730
#: fields of an entry, in the order they are printed
FIELDS = ("at", "actor", "action", "job_id", "kind", "site", "detail")


def cli_actor() -> str:
    """The operator running jerpctl: OS user (and the user sudo ran for) at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    who = f"{sudo} (sudo {user})" if sudo and sudo != user else user
    return f"jerpctl {who}@{socket.gethostname()}"


def record(r: Any, *, actor: str, action: str, job_id: str | None = None, kind: str | None = None,
           site: str | None = None, detail: str | None = None, days: int = DEFAULT_DAYS) -> str:
    """Append one entry and trim the entries older than ``days``; returns the entry's id (Redis
    gives it: the time in milliseconds, never before the newest entry's)."""
    now = time.time()
    fields = {"at": f"{now:.3f}", "actor": actor, "action": action}
    fields.update({k: v for k, v in (("job_id", job_id), ("kind", kind), ("site", site), ("detail", detail)) if v})
    minid = max(0, int(now * 1000) - max(1, days) * DAY_MS)
    entry_id = r.xadd(STREAM, fields, minid=minid, approximate=False)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def entries(r: Any, *, site: str | None = None, since: float | None = None, limit: int | None = None,
            batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Entries oldest first, from ``since`` (epoch seconds), of one site if given, at most ``limit``."""
    start = f"{int(since * 1000)}-0" if since else "-"
    count = 0
    while True:
        chunk = r.xrange(STREAM, min=start, max="+", count=batch)
        if not chunk:
            return
        for entry_id, raw in chunk:
            entry = _decode(entry_id, raw)
            if site and entry.get("site") != site:
                continue
            yield entry
            count += 1
            if limit and count >= limit:
                return
        last = chunk[-1][0]
        last = last.decode() if isinstance(last, bytes) else last
        start = "(" + last


def newest(r: Any, *, site: str | None = None, since: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` entries (of one site if given, from ``since``), oldest first."""
    out: list[dict[str, Any]] = []
    end = "+"
    stop = f"{int(since * 1000)}-0" if since else "-"
    while len(out) < limit:
        chunk = r.xrevrange(STREAM, max=end, min=stop, count=1000)
        if not chunk:
            break
        for entry_id, raw in chunk:
            entry = _decode(entry_id, raw)
            if not site or entry.get("site") == site:
                out.append(entry)
                if len(out) >= limit:
                    break
        last = chunk[-1][0]
        end = "(" + (last.decode() if isinstance(last, bytes) else last)
    return list(reversed(out))


def _decode(entry_id: Any, raw: dict[Any, Any]) -> dict[str, Any]:
    entry = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
    entry["id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    entry["at"] = float(entry.get("at") or 0)
    return entry


def as_json_line(entry: dict[str, Any]) -> str:
    """One entry as a JSON line, with its time also in UTC ISO 8601."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry["at"])) + f".{int(entry['at'] * 1000) % 1000:03d}Z"
    return json.dumps({**entry, "at_utc": iso}, sort_keys=True)
