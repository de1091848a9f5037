"""How fresh each site's off-site copy is, and the backups known for one site.

Read from the records the backup workflow writes (``jerp:backups:<site>`` for local backups,
``jerp:offsite:<site>`` for verified off-site copies): no S3 call, so ``jerpctl backups`` is
quick. A site whose last off-site copy is older than ``JERP_BACKUP_MAX_AGE_HOURS`` (or that
has local backups but none off-site) is flagged stale.
"""

from __future__ import annotations

import json
import time
from typing import Any

LOCAL = "jerp:backups:"
OFFSITE = "jerp:offsite:"


def _sites(client: Any, prefix: str) -> set[str]:
    return {key.decode()[len(prefix):] for key in client.scan_iter(match=prefix + "*", count=1000)}


def sites_freshness(client: Any, *, max_age_hours: float, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = []
    for site in sorted(_sites(client, LOCAL) | _sites(client, OFFSITE)):
        newest = client.zrevrange(OFFSITE + site, 0, 0, withscores=True)
        if newest:
            manifest, at = json.loads(newest[0][0]), float(newest[0][1])
            age = (now - at) / 3600
            rows.append({"site": site, "last_timestamp": manifest["timestamp"], "last_at": at,
                         "age_hours": round(age, 2), "stale": age > max_age_hours})
        else:
            rows.append({"site": site, "last_timestamp": None, "last_at": None, "age_hours": None, "stale": True})
    return rows


def site_backups(client: Any, site: str) -> list[dict[str, Any]]:
    """Local backups (as recorded when taken) and verified off-site copies, newest first."""
    rows = []
    for raw in client.zrevrange(LOCAL + site, 0, -1):
        m = json.loads(raw)
        rows.append({"timestamp": m["timestamp"], "where": "local", "verified": True, "job_id": m.get("job_id"),
                     "size": sum(a["size"] for a in m["artifacts"])})
    for raw in client.zrevrange(OFFSITE + site, 0, -1):
        m = json.loads(raw)
        rows.append({"timestamp": m["timestamp"], "where": "off-site", "verified": bool(m.get("verified")),
                     "job_id": m.get("job_id"), "size": sum(a.get("stored_size", a["size"]) for a in m["artifacts"])})
    return sorted(rows, key=lambda r: (r["timestamp"], r["where"]), reverse=True)


def site_states(rt: Any, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every site of the bench with its state and the age of its last backup (local or off-site).

    The sites and their maintenance flags are read from the bench itself through the executor
    (one command: every ``site_config.json`` with its ``maintenance_mode``).
    """
    import re

    now = time.time() if now is None else now
    result = rt.executor.run(
        ["find", "sites", "-mindepth", "2", "-maxdepth", "2", "-name", "site_config.json", "-exec",
         "grep", "-H", "-c", "-E", '"maintenance_mode": *1', "{}", "+"],
        timeout=60,
    )
    from jerp_jobs.sites import is_valid_site_name

    rows = []
    for line in result.output.splitlines():
        match = re.fullmatch(r"sites/([^/]+)/site_config\.json:(\d+)", line.strip())
        if not match or not is_valid_site_name(match.group(1)):
            continue
        site, maintenance = match.group(1), int(match.group(2)) > 0
        attention = rt.sites.attention(site)
        latest = [float(score) for prefix in (LOCAL, OFFSITE)
                  for _, score in rt.redis.zrevrange(prefix + site, 0, 0, withscores=True)]
        age = round((now - max(latest)) / 3600, 2) if latest else None
        state = "needs attention" if attention else "in maintenance" if maintenance else "ok"
        rows.append({"site": site, "state": state, "maintenance": maintenance, "attention": attention,
                     "backup_age_hours": age, "owner_job": rt.sites.owner(site)})
    return sorted(rows, key=lambda r: r["site"])

