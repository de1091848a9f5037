"""Per-site state that outlives one step: which job owns the site, and attention marks.

- Ownership (``jerp:site-owner:<site>`` = job id): a job claims its site when its first step
  starts and releases it when it ends, so two jobs never interleave their steps on one site
  (a migrate's maintenance-on of one job and a restore of another, say). The execution lock
  (``jerp_jobs.locks``) is finer: it guards each running step against a second delivery.
  An owner key carries the job TTL as a backstop, and a claim left by a job that ended or
  expired (a crash between its end and the release) is taken over by the next job.
- Attention (``jerp:attention:<site>``): set when an automatic recovery failed on a site that
  exists; no automated workflow touches the site until an operator clears it (``jerpctl site
  clear-attention``). Every mark is listed by :meth:`SiteState.attention_marks`, whether or
  not the site's folder is still there, so ``jerpctl sites`` shows them all.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from jerp_jobs import keys
from jerp_jobs.jobs import as_text

if TYPE_CHECKING:
    import redis

OWNER = keys.SITE_OWNER
ATTENTION = keys.ATTENTION

_RELEASE = keys.COMPARE_AND_DELETE


class SiteState:
    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._r = client
        self._ttl = ttl_s
        #: how long an owner key lives unless released (the job TTL, a backstop)
        self.owner_ttl_s = ttl_s
        self._release = client.register_script(_RELEASE)

    def claim(self, site: str, job_id: str) -> str:
        """Claim the site for a job; returns the owner (``job_id`` when the claim succeeded)."""
        key = OWNER + site
        while True:
            if self._r.set(key, job_id, nx=True, ex=self._ttl):
                return job_id
            owner = self._r.get(key)
            if owner is not None:  # else it was released in between: try again
                return as_text(owner)

    def owner(self, site: str) -> str | None:
        owner = self._r.get(OWNER + site)
        return as_text(owner) if owner is not None else None

    def release(self, site: str, job_id: str) -> bool:
        return bool(self._release(keys=[OWNER + site], args=[job_id]))

    def mark_attention(self, site: str, *, job_id: str, reason: str) -> None:
        self._r.set(ATTENTION + site, json.dumps({"job_id": job_id, "reason": reason, "since": time.time()}))

    def attention(self, site: str) -> dict[str, Any] | None:
        raw = self._r.get(ATTENTION + site)
        return json.loads(raw) if raw else None

    def attention_many(self, sites: list[str]) -> dict[str, dict[str, Any]]:
        """The marks of the given sites (one round trip), by site; unmarked sites are left out."""
        if not sites:
            return {}
        raw = self._r.mget([ATTENTION + site for site in sites])
        return {site: json.loads(value) for site, value in zip(sites, raw) if value}

    def attention_marks(self) -> dict[str, dict[str, Any]]:
        """Every attention mark there is, by site (read with SCAN: the keys, then their values)."""
        sites = sorted(as_text(key)[len(ATTENTION):] for key in self._r.scan_iter(match=ATTENTION + "*", count=1000))
        return self.attention_many(sites)

    def clear_attention(self, site: str) -> bool:
        return bool(self._r.delete(ATTENTION + site))
