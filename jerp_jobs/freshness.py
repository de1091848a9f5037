"""How fresh each site's off-site copy is (its local backups without an off-site store), and the
backups known for one site.

Read from the records the backup workflow writes (``jerp:backups:<site>`` for local backups,
``jerp:offsite:<site>`` for verified off-site copies, and the set of sites that have any,
``jerp:backup-sites``), each newest record picked inside Redis by a script that answers with one
JSON text: no S3 call, no SCAN, no reply per site, so ``jerpctl backups`` is quick. A site whose last off-site copy is older than ``JERP_BACKUP_MAX_AGE_HOURS`` (or that
has local backups but none off-site) is flagged stale.

Every row gives a backup's time in UTC (``utc_timestamp``, ``taken_at_utc``) beside bench's
stamp in the site's local time (``timestamp``, the files' names) and its ``time_zone``; rows
are ordered by the UTC stamp. Backups recorded before the UTC fields existed show their stamp
in both (it was then taken to be UTC) and no zone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from jerp_jobs import keys
from jerp_jobs.sites import SITE_CONFIG, SiteListing, find_sites, sites_folder
from jerp_jobs.sitestate import OWNER

LOCAL = keys.LOCAL_BACKUPS
OFFSITE = keys.OFFSITE_BACKUPS


def _times(m: dict[str, Any]) -> dict[str, Any]:
    stamp = m.get("utc_timestamp") or m["timestamp"]
    return {"timestamp": m["timestamp"], "utc_timestamp": stamp, "time_zone": m.get("time_zone"),
            "taken_at_utc": m.get("taken_at_utc"), "taken_at_local": m.get("taken_at_local")}


def _sites(client: Any, prefix: str) -> set[str]:
    return {key.decode()[len(prefix):] for key in client.scan_iter(match=prefix + "*", count=10_000)}


def freshness(at: float | None, *, max_age_hours: float, now: float, offsite: bool) -> dict[str, Any]:
    """The one staleness rule, for ``jerpctl backups`` and ``jerpctl sites`` alike: the newest
    backup that counts — the off-site copy when an off-site store is configured, else the local
    backup (``at``: its time, None when there is none) — and its age; stale when older than
    ``JERP_BACKUP_MAX_AGE_HOURS`` or missing."""
    where = "off-site" if offsite else "local"
    if at is None:
        return {"where": where, "last_at": None, "age_hours": None, "stale": True}
    age = (now - at) / 3600
    return {"where": where, "last_at": at, "age_hours": round(age, 2), "stale": age > max_age_hours}


def index_site(client: Any, site: str) -> None:
    """Add ``site`` to the set of sites with backup records (``client`` may be a pipeline):
    called wherever a backup is recorded, so listing them needs no SCAN of every key."""
    client.sadd(keys.BACKUP_SITES, site)


def rebuild_site_index(client: Any) -> None:
    """Rebuild the set of sites with backup records from a SCAN of the backup keys (once, when
    it was never built: an upgrade, a Redis restored from elsewhere); "" marks it built."""
    found = _sites(client, LOCAL) | _sites(client, OFFSITE)
    client.sadd(keys.BACKUP_SITES, "", *found)


def _newest(client: Any, source: str) -> list[tuple[str, str, str]]:
    """Every site with a backup record and the newest member of ``source`` with its score, in
    pages of one script each (Redis is never held long), the index rebuilt first if needed."""
    if not client.sismember(keys.BACKUP_SITES, ""):
        rebuild_site_index(client)
    script = client.register_script(keys.NEWEST_BACKUPS)
    found: dict[str, tuple[str, str, str]] = {}
    cursor: Any = 0
    while True:
        cursor, page = script(keys=[keys.BACKUP_SITES], args=[cursor, 1000, LOCAL, OFFSITE, source])
        for site, member, score in json.loads(page):
            found[site] = (site, member, score)
        if int(cursor) == 0:
            return [found[site] for site in sorted(found)]


def sites_freshness(client: Any, *, max_age_hours: float, now: float | None = None,
                    offsite: bool = True) -> list[dict[str, Any]]:
    """Each site's newest off-site copy and its age; with ``offsite`` false (local-only mode, no
    off-site store configured) the newest local backup instead (``where`` says which)."""
    now = time.time() if now is None else now
    source = OFFSITE if offsite else LOCAL
    rows = []
    for site, member, score in _newest(client, source):
        fresh = freshness(float(score) if member else None, max_age_hours=max_age_hours, now=now,
                          offsite=offsite)
        times = (_times(json.loads(member)) if member
                 else {"timestamp": None, "utc_timestamp": None, "time_zone": None})
        base = (json.loads(member).get("pitr") or {}) if member and offsite else {}
        rows.append({"site": site, "last_timestamp": times["timestamp"], "last_utc_timestamp": times["utc_timestamp"],
                     "time_zone": times["time_zone"], **fresh, "pitr_base_at": base.get("dumped_at")})
    return rows


def shipped_logs(client: Any) -> dict[str, Any] | None:
    """The last shipment of binary logs (``jerp:pitr:shipped``): when, and the newest log
    archived with the time it was closed; None before the first."""
    raw = client.get(keys.PITR_SHIPPED)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def current_rpo(shipped: dict[str, Any] | None, now: float) -> float | None:
    """Seconds since the newest shipped binary log was closed (what a loss of the database
    server now would lose at most); None before the first shipment."""
    closed = ((shipped or {}).get("newest") or {}).get("closed_at")
    return None if closed is None else round(max(0.0, now - float(closed)), 1)


def pitr_window(bases: list[dict[str, Any]], shipped: dict[str, Any] | None, *, now: float) -> dict[str, Any]:
    """A site's point-in-time window from its off-site bases (each backup's ``pitr``) and the
    last shipment: any second from its oldest base whose logs are still archived to the close
    of the newest log shipped; the current RPO is how long ago that was (what a loss now would
    lose at most, until the next shipment)."""
    newest = (shipped or {}).get("newest") or {}
    reached = newest.get("closed_at")
    oldest_log = (shipped or {}).get("oldest")

    def number(name: Any) -> int:
        return int(str(name).rsplit(".", 1)[-1]) if str(name).rsplit(".", 1)[-1].isdigit() else -1

    usable = [b for b in bases if oldest_log is None or number(b["coordinates"]["file"]) >= number(oldest_log)]
    out: dict[str, Any] = {"bases": len(usable), "from": None, "to": None, "rpo_s": current_rpo(shipped, now),
                           "newest_base": max((b["dumped_at"] for b in usable), default=None)}
    if not usable:
        out["state"] = "no base"
    elif reached is None or float(reached) < min(b["dumped_at"] for b in usable):
        out["state"] = "no logs shipped since the base"
        out["from"] = min(b["dumped_at"] for b in usable)
    else:
        out.update(state="ok", **{"from": min(b["dumped_at"] for b in usable), "to": float(reached)})
    return out


def site_pitr(client: Any, site: str, *, now: float | None = None) -> dict[str, Any]:
    """:func:`pitr_window` of ``site`` from its recorded off-site copies."""
    bases = []
    for raw in client.zrevrange(OFFSITE + site, 0, -1):
        base = json.loads(raw).get("pitr")
        if isinstance(base, dict) and "dumped_at" in base and "coordinates" in base:
            bases.append(base)
    return pitr_window(bases, shipped_logs(client), now=time.time() if now is None else now)


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
                     "job_id": m.get("job_id"), "size": sum(a.get("stored_size", a["size"]) for a in m["artifacts"]),
                     **({"pitr": m["pitr"]} if isinstance(m.get("pitr"), dict) else {})})
    return sorted(rows, key=lambda r: (r["utc_timestamp"], r["where"]), reverse=True)


def site_states(rt: Any, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every site of the bench with its state and the age of its last backup by the rule of
    ``jerpctl backups`` (:func:`freshness`: off-site when an off-site store is configured, else local),
    and every site with an attention mark, even one whose folder is gone (``exists`` false).

    The sites come from the platform's sites folder itself, checked against the bench's own
    count (:func:`jerp_jobs.sites.find_sites`: every site, never an output tail);
    the maintenance flag from each ``site_config.json``. The Redis reads are one script per
    2,000 sites, in one pipeline, each answering with one JSON text; they and the maintenance
    flags are read while the bench counts its sites.
    """
    now = time.time() if now is None else now
    read: dict[str, Any] = {}

    def read_sites(listing: SiteListing) -> None:
        read["listing"] = listing
        read["rows"] = _site_rows(rt, listing, now)

    listing = find_sites(rt.settings, rt.executor, meanwhile=read_sites)
    if read.get("listing") is not listing:
        read_sites(listing)
    rows: list[dict[str, Any]] = read["rows"]
    return rows


def _site_rows(rt: Any, listing: SiteListing, now: float) -> list[dict[str, Any]]:
    """The rows of :func:`site_states` for the sites of ``listing`` and every attention mark."""
    folder = str(sites_folder(rt.settings))
    marks = rt.sites.attention_marks()
    names = sorted(set(listing.sites) | set(marks))
    present = set(listing.sites)
    pages = _backups_and_owners(rt, names)  # Redis runs the scripts while the flags are read
    flags = {site: _maintenance(os.path.join(folder, site, SITE_CONFIG)) for site in names if site in present}
    rows = []
    for site, reply in zip(names, pages()):
        exists = site in present
        maintenance = flags[site] if exists else None
        attention = marks.get(site)
        state = ("needs attention" if attention else "unreadable config" if maintenance is None and exists
                 else "in maintenance" if maintenance else "ok")
        rows.append({"site": site, "state": state, "exists": exists, "maintenance": maintenance,
                     "attention": attention, **_backup_columns(rt, reply, now)})
    return rows


def fleet_site_states(rt: Any, fleet: Any, *, bench: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """:func:`site_states` for a declared fleet: every site of the site-to-bench map (each
    bench's last listing, jerp_jobs.placement), every site two benches list, every attention
    mark, with its ``bench`` (``benches`` for a site on two); the maintenance flag read where the
    bench's sites folder is visible here (else None). ``bench``: only that bench's sites."""
    from jerp_jobs import placement

    now = time.time() if now is None else now
    where = placement.site_map(rt.redis)
    clashes = placement.conflicts(rt.redis)
    marks = rt.sites.attention_marks()
    names = sorted(set(where) | set(clashes) | set(marks))
    if bench is not None:
        fleet.get(bench)
        names = [s for s in names if where.get(s) == bench or bench in clashes.get(s, ())]
    pages = _backups_and_owners(rt, names)
    folders = {b.name: b.sites_dir for b in fleet if b.sites_dir is not None and b.sites_dir.is_dir()}
    rows = []
    for site, reply in zip(names, pages()):
        home = where.get(site)
        folder = folders.get(home or "")
        maintenance = _maintenance(os.path.join(folder, site, SITE_CONFIG)) if folder is not None else None
        attention = marks.get(site)
        state = ("needs attention" if attention else "on two benches" if site in clashes
                 else "unreadable config" if folder is not None and maintenance is None
                 else "in maintenance" if maintenance else "ok")
        rows.append({"site": site, "state": state, "exists": home is not None or site in clashes,
                     "maintenance": maintenance, "attention": attention, "bench": home,
                     "benches": clashes.get(site), **_backup_columns(rt, reply, now)})
    return rows


def _backups_and_owners(rt: Any, names: list[str]) -> Callable[[], Any]:
    """(local backup time, off-site backup time, owning job) of each site of ``names``: one
    script per 2,000 sites in one pipeline, run in a thread; returns what waits for the answer."""
    script = rt.redis.register_script(keys.SITES_BACKUPS_OWNERS)
    pipe = rt.redis.pipeline(transaction=False)
    for start in range(0, len(names), 2000):
        script(args=[LOCAL, OFFSITE, OWNER, "\n".join(names[start:start + 2000])], client=pipe)
    pages = _in_thread(pipe.execute)
    return lambda: [entry for page in pages() for entry in json.loads(page)]


def _backup_columns(rt: Any, reply: Any, now: float) -> dict[str, Any]:
    local, offsite, owner = reply
    use_offsite = bool(rt.settings.s3_bucket)
    counted = offsite if use_offsite else local
    fresh = freshness(float(counted) if counted else None, max_age_hours=rt.settings.backup_max_age_hours,
                      now=now, offsite=use_offsite)
    return {"backup_age_hours": fresh["age_hours"], "backup_where": fresh["where"], "backup_stale": fresh["stale"],
            "owner_job": owner or None}


def _in_thread(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` started in a thread of its own; returns what waits for its answer (raising its
    error, if it raised one)."""
    import threading

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="redis-read", daemon=True)
    thread.start()

    def wait() -> Any:
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return wait


def _maintenance(path: str) -> bool | None:
    """``maintenance_mode`` of a site_config.json, truthy as Frappe reads it; None when the file
    cannot be read as a JSON object."""
    try:
        fd = os.open(path, os.O_RDONLY)  # without a file object: a tenth of a millisecond less per site
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        config = json.loads(b"".join(chunks).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return bool(config.get("maintenance_mode")) if isinstance(config, dict) else None
