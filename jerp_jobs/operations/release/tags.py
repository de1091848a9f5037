"""The tags a release may go back to: the known-good tags, newest first (``jerp:release:good``),
and the bad ones (``jerp:release:bad``: rolled back from, or whose release failed), never a
rollback target. A moving tag (``JERP_MUTABLE_TAGS``) is never remembered as good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jerp_jobs import keys
from jerp_jobs.jobs import as_text

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

GOOD = keys.RELEASE_GOOD  # tags that passed a release, newest first
BAD = keys.RELEASE_BAD  # tags rolled back from, or whose release failed: never a rollback target
GOOD_KEPT = 50


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
    pipe.execute()


def bad_tags(rt: Runtime) -> set[str]:
    return {as_text(t) for t in rt.redis.smembers(BAD)}


def good_tags(rt: Runtime) -> list[str]:
    return [as_text(t) for t in rt.redis.lrange(GOOD, 0, -1)]
