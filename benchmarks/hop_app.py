"""The floor of benchmarks/migrate_all.py: a bare Celery hop with jerp-jobs' own configuration.

``celery -A benchmarks.hop_app worker`` runs jerp-jobs' app (same broker, queues, late acks,
prefetch, events setting) with one more task, ``bench.hop``: it does nothing but publish itself
again, like a step publishing the next one, and carries the time each hop took from its
publication to the start of the next task's body. The last hop of a chain pushes them all to
one Redis list, so the hops themselves send no command of their own.
"""

from __future__ import annotations

import time
from typing import Any

from jerp_jobs.celery import SITE_QUEUE, app

#: the Redis list the chains' hop times go to
HOPS_KEY = "bench:hops"


@app.task(name="bench.hop", queue=SITE_QUEUE, acks_late=True, ignore_result=True)
def hop(*, left: int, sent: float, seen: list[float]) -> None:
    seen = [*seen, time.time() - sent]
    if left > 0:
        start_hop(left - 1, seen)
        return
    import redis

    redis.Redis.from_url(app.conf.broker_url).rpush(HOPS_KEY, *[repr(s) for s in seen])


def start_hop(left: int, seen: list[float] | None = None) -> Any:
    return hop.apply_async(kwargs={"left": left, "sent": time.time(), "seen": seen or []}, queue=SITE_QUEUE)
