"""How fresh each site's off-site copy is (its local backups without an off-site store), and the
backups known for one site.

Read from the records the backup workflow writes (``jerp:backups:<site>`` for local backups,
``jerp:offsite:<site>`` for verified off-site copies): no S3 call, so ``jerpctl backups`` is
quick. A site whose last off-site copy is older than ``JERP_BACKUP_MAX_AGE_HOURS`` (or that
has local backups but none off-site) is flagged stale.

Every row gives a backup's time in UTC (``utc_timestamp``, ``taken_at_utc``) beside bench's
stamp in the site's local time (``timestamp``, the files' names) and its ``time_zone``; rows
are ordered by the UTC stamp. Backups recorded before the UTC fields existed show their stamp
in both (it was then taken to be UTC) and no zone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jerp_jobs import keys
from jerp_jobs.sites import find_sites, sites_folder
from jerp_jobs.sitestate import OWNER

LOCAL = keys.LOCAL_BACKUPS
OFFSITE = keys.OFFSITE_BACKUPS


def _times(m: dict[str, Any]) -> dict[str, Any]:
    stamp = m.get("utc_timestamp") or m["timestamp"]
    return {"timestamp": m["timestamp"], "utc_timestamp": stamp, "time_zone": m.get("time_zone"),
            "taken_at_utc": m.get("taken_at_utc"), "taken_at_local": m.get("taken_at_local")}


def _sites(client: Any, prefix: str) -> set[str]:
    return {key.decode()[len(prefix):] for key in client.scan_iter(match=prefix + "*", count=10_000)}


def freshness(newest: list[Any], *, max_age_hours: float, now: float, offsite: bool) -> dict[str, Any]:
    """The one staleness rule, for ``jerpctl backups`` and ``jerpctl sites`` alike: the newest
    backup that counts — the off-site copy when an off-site store is configured, else the local
    backup (``newest`` is that sorted set's top entry, with its score) — and its age; stale when
    older than ``JERP_BACKUP_MAX_AGE_HOURS`` or missing."""
    where = "off-site" if offsite else "local"
    if not newest:
        return {"where": where, "last_at": None, "age_hours": None, "stale": True, "manifest": None}
    manifest, at = json.loads(newest[0][0]), float(newest[0][1])
    age = (now - at) / 3600
    return {"where": where, "last_at": at, "age_hours": round(age, 2), "stale": age > max_age_hours,
            "manifest": manifest}


def sites_freshness(client: Any, *, max_age_hours: float, now: float | None = None,
                    offsite: bool = True) -> list[dict[str, Any]]:
    """Each site's newest off-site copy and its age; with ``offsite`` false (local-only mode, no
    off-site store configured) the newest local backup instead (``where`` says which)."""
    now = time.time() if now is None else now
    source = OFFSITE if offsite else LOCAL
    sites = sorted(_sites(client, LOCAL) | _sites(client, OFFSITE))
    pipe = client.pipeline(transaction=False)
    for site in sites:
        pipe.zrevrange(source + site, 0, 0, withscores=True)
    rows = []
    for site, newest in zip(sites, pipe.execute()):
        fresh = freshness(newest, max_age_hours=max_age_hours, now=now, offsite=offsite)
        manifest = fresh.pop("manifest")
        times = _times(manifest) if manifest else {"timestamp": None, "utc_timestamp": None, "time_zone": None}
        rows.append({"site": site, "last_timestamp": times["timestamp"], "last_utc_timestamp": times["utc_timestamp"],
                     "time_zone": times["time_zone"], **fresh})
    return rows


def site_backups(client: Any, site: str) -> list[dict[str, Any]]:
    """Local backups (as recorded when taken) and verified off-site copies, newest first."""
    rows = []
    for raw in client.zrevrange(LOCAL + site, 0, -1):
        m = json.loads(raw)
        rows.append({**_times(m), "where": "local", "verified": True, "job_id": m.get("job_id"),
                     "size": sum(a["size"] for a in m["artifacts"])})
    for raw in client.zrevrange(OFFSITE + site, 0, -1):
        m = json.loads(raw)
        rows.append({**_times(m), "where": "off-site", "verified": bool(m.get("verified")),
                     "job_id": m.get("job_id"), "size": sum(a.get("stored_size", a["size"]) for a in m["artifacts"])})
    return sorted(rows, key=lambda r: (r["utc_timestamp"], r["where"]), reverse=True)


def site_states(rt: Any, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every site of the bench with its state and the age of its last backup by the rule of
    ``jerpctl backups`` (:func:`freshness`: off-site when an off-site store is configured, else local),
    and every site with an attention mark, even one whose folder is gone (``exists`` false).

    The sites come from the platform's sites folder itself, checked against the bench's own
    count (:func:`jerp_jobs.sites.find_sites`: every site, never an output tail);
    the maintenance flag from each ``site_config.json``. The Redis reads go in one pipeline.
    """
    now = time.time() if now is None else now
    listing = find_sites(rt.settings, rt.executor)
    folder = sites_folder(rt.settings)
    marks = rt.sites.attention_marks()
    names = sorted(set(listing.sites) | set(marks))
    present = set(listing.sites)
    pipe = rt.redis.pipeline(transaction=False)
    for site in names:
        pipe.zrevrange(LOCAL + site, 0, 0, withscores=True)
        pipe.zrevrange(OFFSITE + site, 0, 0, withscores=True)
        pipe.get(OWNER + site)
    replies = pipe.execute()
    rows = []
    use_offsite = bool(rt.settings.s3_bucket)
    for i, site in enumerate(names):
        local, offsite, owner = replies[3 * i: 3 * i + 3]
        fresh = freshness(offsite if use_offsite else local, max_age_hours=rt.settings.backup_max_age_hours,
                          now=now, offsite=use_offsite)
        exists = site in present
        maintenance = _maintenance(folder / site / "site_config.json") if exists else None
        attention = marks.get(site)
        state = ("needs attention" if attention else "unreadable config" if maintenance is None and exists
                 else "in maintenance" if maintenance else "ok")
        rows.append({"site": site, "state": state, "exists": exists, "maintenance": maintenance,
                     "attention": attention, "backup_age_hours": fresh["age_hours"],
                     "backup_where": fresh["where"], "backup_stale": fresh["stale"],
                     "owner_job": owner.decode() if isinstance(owner, bytes) else owner})
    return rows


def _maintenance(path: Path) -> bool | None:
    """``maintenance_mode`` of a site_config.json, truthy as Frappe reads it; None when the file
    cannot be read as a JSON object."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return bool(config.get("maintenance_mode")) if isinstance(config, dict) else None
