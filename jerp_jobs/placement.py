"""Where each site lives: the site-to-bench map of the fleet (docs/fleet.md).

A site lives on exactly one bench. The map is built from each bench's own listing of its sites
(:func:`record_listing`, what a bench's worker finds in its sites folder), and changed where
jerp-jobs itself puts a site somewhere (:func:`assign`: a provision, a move) or removes it
(:func:`forget`: an offboard, the end of a move). A site that two benches' listings both show is
a *conflict*: it is kept out of the map's answer (:func:`bench_of` refuses it, naming both
benches) until one of the benches no longer lists it or a move settles it.

Redis keys (jerp_jobs.keys): ``jerp:fleet:site-bench`` (hash site -> bench),
``jerp:fleet:bench-sites:<bench>`` (set: the bench's last listing), ``jerp:fleet:listed``
(hash bench -> when it was listed), ``jerp:fleet:conflict`` (hash site -> "bench,bench").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from jerp_jobs import keys
from jerp_jobs.errors import InvalidInput

#: one listing of one bench, applied at once: the bench's set replaced, the map and the
#: conflicts brought in line. KEYS: map, conflicts, listed, the bench's set, the set prefix;
#: ARGV: bench, now, then the sites. Returns {added, removed, conflicts}.
_RECORD = """
local map, conflicts, listed, mine, prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local bench, now = ARGV[1], ARGV[2]
local before = {}
for _, s in ipairs(redis.call('SMEMBERS', mine)) do before[s] = true end
redis.call('DEL', mine)
local found = {}
for i = 3, #ARGV do
  found[ARGV[i]] = true
  redis.call('SADD', mine, ARGV[i])
end
local added, removed, clashes = 0, 0, 0
for site in pairs(before) do
  if not found[site] then
    removed = removed + 1
    if redis.call('HGET', map, site) == bench then redis.call('HDEL', map, site) end
    local c = redis.call('HGET', conflicts, site)
    if c then
      redis.call('HDEL', conflicts, site)
      for other in string.gmatch(c, '[^,]+') do
        if other ~= bench and redis.call('SISMEMBER', prefix .. other, site) == 1 then
          redis.call('HSET', map, site, other)
        end
      end
    end
  end
end
for site in pairs(found) do
  local current = redis.call('HGET', map, site)
  if not current then
    if not redis.call('HGET', conflicts, site) then
      redis.call('HSET', map, site, bench)
      if not before[site] then added = added + 1 end
    end
  elseif current ~= bench then
    if redis.call('SISMEMBER', prefix .. current, site) == 1 then
      redis.call('HDEL', map, site)
      redis.call('HSET', conflicts, site, current .. ',' .. bench)
      clashes = clashes + 1
    else
      redis.call('HSET', map, site, bench)
      added = added + 1
    end
  end
end
redis.call('HSET', listed, bench, now)
return {added, removed, clashes}
"""


def record_listing(client: Any, bench: str, sites: Iterable[str], *, now: float | None = None) -> dict[str, int]:
    """Record that ``bench`` has exactly ``sites`` (its worker listed them); returns how many
    sites were added to the map, removed from the bench, and found on another bench too."""
    listed = sorted(set(sites))
    added, removed, clashes = client.eval(
        _RECORD, 5, keys.SITE_BENCH, keys.SITE_CONFLICT, keys.BENCH_LISTED, keys.BENCH_SITES + bench,
        keys.BENCH_SITES, bench, repr(time.time() if now is None else now), *listed)
    return {"sites": len(listed), "added": int(added), "removed": int(removed), "conflicts": int(clashes)}


def assign(client: Any, site: str, bench: str) -> None:
    """``site`` lives on ``bench`` now (jerp-jobs put it there): in the map and in the bench's
    listing, out of every other bench's listing and out of the conflicts."""
    previous = _text(client.hget(keys.SITE_BENCH, site))
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.SITE_BENCH, site, bench)
    pipe.sadd(keys.BENCH_SITES + bench, site)
    if previous and previous != bench:
        pipe.srem(keys.BENCH_SITES + previous, site)
    pipe.hdel(keys.SITE_CONFLICT, site)
    pipe.execute()


def forget(client: Any, site: str, bench: str) -> None:
    """``site`` is no longer on ``bench`` (offboarded, or moved away and dropped there)."""
    pipe = client.pipeline(transaction=True)
    pipe.srem(keys.BENCH_SITES + bench, site)
    pipe.execute()
    if _text(client.hget(keys.SITE_BENCH, site)) == bench:
        client.hdel(keys.SITE_BENCH, site)


def conflict_of(client: Any, site: str) -> list[str] | None:
    raw = _text(client.hget(keys.SITE_CONFLICT, site))
    return raw.split(",") if raw else None


def bench_of(client: Any, site: str) -> str | None:
    """The bench ``site`` lives on; None when no bench's listing has it; InvalidInput naming
    both benches when two list it."""
    found = _text(client.hget(keys.SITE_BENCH, site))
    if found:
        return found
    both = conflict_of(client, site)
    if both:
        raise InvalidInput(f"site {site} is listed by benches {' and '.join(both)}; a site lives on one bench: "
                           f"drop the stray copy (or finish its move), then `jerpctl sites --refresh`")
    return None


def benches_of(client: Any, sites: Sequence[str]) -> dict[str, str]:
    """site -> bench for the ``sites`` the map knows (one HMGET)."""
    if not sites:
        return {}
    values = client.hmget(keys.SITE_BENCH, list(sites))
    return {site: _text(v) for site, v in zip(sites, values, strict=True) if v}


def site_map(client: Any) -> dict[str, str]:
    """Every site the map knows, with its bench."""
    return {_text(k): _text(v) for k, v in client.hgetall(keys.SITE_BENCH).items()}


def conflicts(client: Any) -> dict[str, list[str]]:
    return {_text(k): _text(v).split(",") for k, v in client.hgetall(keys.SITE_CONFLICT).items()}


def sites_on(client: Any, bench: str) -> list[str]:
    """The sites of ``bench``'s last listing (and those jerp-jobs put there since), sorted."""
    return sorted(_text(s) for s in client.smembers(keys.BENCH_SITES + bench))


def listed_at(client: Any) -> dict[str, float]:
    """bench -> when its sites were last listed."""
    return {_text(k): float(_text(v)) for k, v in client.hgetall(keys.BENCH_LISTED).items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))
