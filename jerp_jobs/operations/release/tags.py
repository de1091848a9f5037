"""The tags a release may go back to: the known-good tags, newest first (``jerp:release:good``),
and the bad ones (``jerp:release:bad``: rolled back from, or whose release failed), never a
rollback target. A moving tag (``JERP_MUTABLE_TAGS``) is never remembered as good.

In a fleet with a staging bench, a tag whose staging release succeeded is *staged*
(``jerp:release:staged``: tag -> the staging release, when, and the production releases it was
promoted by); only a staged tag that is not bad is promoted to production. A tag becomes good
when a production release of it succeeds; a tag marked bad is staged no more.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from jerp_jobs import keys
from jerp_jobs.jobs import as_text

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

GOOD = keys.RELEASE_GOOD  # tags that passed a release, newest first
BAD = keys.RELEASE_BAD  # tags rolled back from, or whose release failed: never a rollback target
GOOD_KEPT = 50
STAGED = keys.RELEASE_STAGED  # tag -> the staging release it passed (JSON); never expires


def remember_good(rt: Runtime, tag: str) -> None:
    if tag in rt.settings.mutable_tags:
        return
    pipe = rt.redis.pipeline()
    pipe.srem(BAD, tag)
    pipe.lrem(GOOD, 0, tag)
    pipe.lpush(GOOD, tag)
    pipe.ltrim(GOOD, 0, GOOD_KEPT - 1)
    pipe.execute()


def remember_bad(rt: Runtime, tag: str) -> None:
    pipe = rt.redis.pipeline()
    pipe.sadd(BAD, tag)
    pipe.lrem(GOOD, 0, tag)
    pipe.hdel(STAGED, tag)
    pipe.execute()


def bad_tags(rt: Runtime) -> set[str]:
    return {as_text(t) for t in rt.redis.smembers(BAD)}


def good_tags(rt: Runtime) -> list[str]:
    return [as_text(t) for t in rt.redis.lrange(GOOD, 0, -1)]


def remember_staged(rt: Runtime, tag: str, *, job_id: str, bench: str | None) -> None:
    """``tag``'s release on the staging bench (job ``job_id``) succeeded: it may be promoted."""
    rt.redis.hset(STAGED, tag, json.dumps({"job": job_id, "bench": bench, "at": time.time(), "promoted": []}))


def staged(rt: Runtime, tag: str) -> dict[str, Any] | None:
    """The staging release ``tag`` passed (job, bench, at, promoted), or None."""
    raw = rt.redis.hget(STAGED, tag)
    if raw is None:
        return None
    try:
        value = json.loads(as_text(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def note_promoted(rt: Runtime, tag: str, job_ids: list[str]) -> None:
    """Record the production releases that promote ``tag`` (call under the admission lock)."""
    record = staged(rt, tag)
    if record is not None:
        rt.redis.hset(STAGED, tag, json.dumps({**record, "promoted": job_ids, "promoted_at": time.time()}))
