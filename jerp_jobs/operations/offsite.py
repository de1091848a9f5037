"""Off-site copies: upload after a backup, local clean-up, retention, restore from S3, drills.

Frappe removes local backups after about a day: the off-site copy is the real backup. An
upload counts only once every object is verified from S3 (``jerp_jobs.offsite``); only then
is the backup recorded as this site's freshest off-site copy (``jerp:offsite:<site>``) and
may older local copies be removed (``JERP_KEEP_LOCAL`` newest kept, and only copies that are
safe off-site). The worker reads and writes backup files through the platform's sites
folder (``JERP_SITES_DIR``; for the local executor, ``JERP_BENCH_DIR/sites``).

Off-site, a backup is named and ordered by its UTC stamp (``utc_timestamp``,
:func:`jerp_jobs.offsite.offsite_stamp`), never by bench's local-time file names: S3 keys,
retention periods and windows, and ``restore --from-offsite --at`` are all UTC.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jerp_jobs import audit, bench
from jerp_jobs.backupfiles import give_to_owner, sites_root
from jerp_jobs.dumpstats import dump_stats
from jerp_jobs.errors import ConfigError, InvalidInput
from jerp_jobs.freshness import LOCAL, OFFSITE, index_site, rebuild_site_index
from jerp_jobs.jobs import StepState
from jerp_jobs.log import get_logger
from jerp_jobs.manifests import (
    SIDE_SUFFIX,
    artifact,
    confirm_recorded,
    manifest_key,
    read_side,
    seal,
    write_side,
)
from jerp_jobs.offsite import offsite_stamp
from jerp_jobs.offsite.s3 import OffsiteStore
from jerp_jobs.retention import Backup, parse_policy, plan_deletions
from jerp_jobs.sites import sites_dir
from jerp_jobs.workflow import StepContext, StepSpec, simple

log = get_logger(__name__)



def store_for(ctx: StepContext) -> Any:
    return OffsiteStore.from_settings(ctx.settings)


def offsite_wanted(ctx: StepContext) -> bool:
    """``offsite`` param: True (required), False (never), absent (when a bucket is configured)."""
    wanted = ctx.params.get("offsite")
    if wanted is None:
        return bool(ctx.settings.s3_bucket)
    if wanted and not ctx.settings.s3_bucket:
        raise ConfigError("JERP_S3_BUCKET", "is not set; an off-site copy was asked for")
    return bool(wanted)


# -- after a backup ---------------------------------------------------------------------------


#: the name ending of a point-in-time base in a site's backup folder (``pitr-base`` step)
PITR_BASE_SUFFIX = "-pitr-base.sql.gz"
#: the artifacts of a backup that a restore from it reads
RESTORED_KINDS = frozenset({"database", "public_files", "private_files"})


def upload(ctx: StepContext) -> str | None:
    if not offsite_wanted(ctx):
        ctx.output.append("off-site copy not asked for / not configured: skipped")
        return StepState.SKIPPED
    manifest = dict(ctx.job.result["backup"])
    folder = sites_dir(ctx.settings)
    confirm_recorded(manifest, folder, manifest_key(ctx.settings))
    base = ctx.job.result.get("pitr_base")
    if base:  # the point-in-time base goes with the backup, its position in the manifest
        manifest["artifacts"] = [*manifest["artifacts"], {"kind": "pitr_base", **{
            k: base[k] for k in ("path", "size", "sha256")}}]
        manifest["pitr"] = {k: base[k] for k in ("database", "server", "coordinates", "dumped_at")}
    database = next(a for a in manifest["artifacts"] if a["kind"] == "database")
    manifest["stats"] = dump_stats(folder / database["path"])
    manifest["apps"], manifest["apps_source"] = installed_apps(ctx)
    started = time.monotonic()
    offsite = store_for(ctx).upload_backup(manifest, folder)
    offsite["upload_s"] = round(time.monotonic() - started, 3)
    ctx.record(offsite=offsite)
    record_offsite(ctx.runtime.redis, offsite)
    if base:  # off-site is where it is read from: no local copy is kept
        (folder / base["path"]).unlink(missing_ok=True)
    ctx.output.append(f"uploaded and verified {len(offsite['artifacts'])} objects in {offsite['upload_s']}s")
    return None


def installed_apps(ctx: StepContext) -> tuple[list[str], str]:
    """The site's apps, and where they were read: the ``installed_apps`` global
    (``frappe.get_installed_apps``), which install-app, uninstall-app and migrate all keep.
    ``list-apps`` is not used: it reads the Installed Application table, which install-app leaves
    as it was (empty on a site never migrated; without the new app on one migrated before) until
    the next migrate or uninstall-app refreshes it."""
    apps = bench.parse_installed_apps(ctx.run(bench.installed_apps_global(ctx.site, bench=ctx.bench)).output)
    return apps, "installed_apps"


def record_offsite(client: Any, offsite: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.zadd(OFFSITE + offsite["site"], {json.dumps(offsite, sort_keys=True): time.time()})
    index_site(pipe, offsite["site"])
    pipe.execute()


def offsite_records(client: Any, site: str) -> list[dict[str, Any]]:
    """Verified off-site copies recorded for a site, newest upload first."""
    return [json.loads(raw) for raw in client.zrevrange(OFFSITE + site, 0, -1)]


def last_offsite_time(client: Any, site: str) -> float | None:
    """When the newest verified off-site copy of the site was recorded (epoch seconds)."""
    newest = client.zrevrange(OFFSITE + site, 0, 0, withscores=True)
    return float(newest[0][1]) if newest else None


def offsite_sites(client: Any) -> list[str]:
    """Sites with at least one recorded off-site copy."""
    return sorted(key.decode()[len(OFFSITE):] for key in client.scan_iter(match=OFFSITE + "*", count=1000))


def local_only(settings: Any) -> bool:
    """No off-site store is configured (``JERP_S3_BUCKET`` unset): the local backups are the
    only copies, and local retention alone decides which of them go."""
    return not settings.s3_bucket


def prune_local(ctx: StepContext) -> str | None:
    """Remove older local backup sets of the site, keeping the newest ``JERP_KEEP_LOCAL``.

    With an off-site store, only sets with a verified off-site copy are ever removed, and
    nothing is removed when this job's copy did not succeed. Without one (local-only mode),
    the newest ``max(JERP_KEEP_LOCAL, 1)`` sets stay and older sets that jerp-jobs took and
    verified (its local index) are removed; sets it does not know (taken by hand or by Frappe's
    scheduler) are never touched."""
    copied = ctx.job.step("upload-offsite").state == StepState.SUCCESS
    if copied:
        keep = ctx.settings.keep_local
        safe = {r["timestamp"] for r in offsite_records(ctx.runtime.redis, ctx.site) if r.get("verified")}
        why = "copied off-site"
    elif local_only(ctx.settings) and ctx.job.step("backup").state == StepState.SUCCESS:
        keep = max(ctx.settings.keep_local, 1)
        safe = set(local_stamps(ctx.runtime.redis, ctx.site))
        why = "older than the newest kept (local-only: no off-site store)"
    else:
        return StepState.SKIPPED
    folder = sites_dir(ctx.settings) / ctx.site / "private" / "backups"
    sets: dict[str, list[Path]] = {}
    for path in folder.iterdir() if folder.is_dir() else []:
        stamp = path.name[:bench.STAMP_LEN]
        if path.is_file() and bench.is_stamp(stamp):
            sets.setdefault(stamp, []).append(path)
    doomed = [stamp for stamp in sorted(sets, reverse=True)[keep:] if stamp in safe]
    paths = [f"sites/{ctx.site}/private/backups/{p.name}" for stamp in doomed for p in sorted(sets[stamp])]
    if paths:
        ctx.run(["rm", "-f", "--", *paths])
        _forget_local(ctx, set(doomed))
    ctx.record(local_removed=doomed, local_kept=len(sets) - len(doomed), local_only=not copied)
    ctx.output.append(f"kept {len(sets) - len(doomed)} local backup set(s); removed {len(doomed)} {why}")
    return None


def local_stamps(client: Any, site: str) -> list[str]:
    """Bench stamps of the site's backups in jerp-jobs' local index (taken and verified here)."""
    stamps = []
    for raw in client.zrange(LOCAL + site, 0, -1):
        try:
            stamps.append(json.loads(raw)["timestamp"])
        except (ValueError, KeyError, TypeError):
            continue
    return stamps


def _forget_local(ctx: StepContext, stamps: set[str]) -> None:
    """Drop the removed sets from the site's local backup index (``jerpctl backups`` lists it)."""
    key = LOCAL + ctx.site
    for raw in ctx.runtime.redis.zrange(key, 0, -1):
        try:
            stamp = json.loads(raw).get("timestamp")
        except (ValueError, AttributeError):
            continue
        if stamp in stamps:
            ctx.runtime.redis.zrem(key, raw)


def backup_time(stamp: str) -> datetime:
    """A UTC ``YYYYMMDD_HHMMSS`` -> aware datetime."""
    return datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=timezone.utc)


def utc_time(manifest: dict[str, Any]) -> datetime:
    """When a backup was taken, in UTC (see :func:`jerp_jobs.offsite.offsite_stamp`)."""
    return backup_time(offsite_stamp(manifest))


# -- retention ----------------------------------------------------------------------------------


def list_offsite_sites(store: Any) -> list[str]:
    """Every site with a folder under the prefix in the bucket (:meth:`OffsiteStore.sites`)."""
    return store.sites()


def prune_offsite(ctx: StepContext) -> None:
    policy = parse_policy(ctx.settings.retention)
    store = store_for(ctx)
    hold = store.get_legal_hold(ctx.site)
    if hold is not None:
        _prune_held(ctx, store, hold)
        return
    manifests = store.list_backups(ctx.site)
    backups = [Backup(utc_time(m), offsite_stamp(m), bool(m.get("verified"))) for m in manifests]
    decision = plan_deletions(backups, policy, now=datetime.now(timezone.utc))
    deleted = []
    for backup in decision.delete:
        store.delete_backup(ctx.site, backup.key)
        deleted.append(backup.key)
    gone = set(deleted)
    client = ctx.runtime.redis
    for raw in client.zrange(OFFSITE + ctx.site, 0, -1):
        if offsite_stamp(json.loads(raw)) in gone:
            client.zrem(OFFSITE + ctx.site, raw)
    ctx.record(retention=decision.as_record(), deleted=deleted)
    ctx.output.append(f"policy {policy}: kept {len(decision.keep)}, deleted {len(deleted)}")


def rescan(ctx: StepContext) -> None:
    """Rebuild jerp-jobs' backup indexes from the backups themselves — after Redis was lost, or on
    a new host that starts with an empty one. Off-site: each site's index is replaced by the
    complete backups the store holds (the store is the truth). Local: every manifest copy beside
    the files (``<timestamp>-jerp-manifest.json``) whose files are all there is added to the
    site's local index when it is not in it yet."""

    r = ctx.runtime.redis
    found: dict[str, dict[str, int]] = {}
    if ctx.settings.s3_bucket:
        store = store_for(ctx)
        for site in list_offsite_sites(store):
            manifests = [m for m in store.list_backups(site) if m.get("verified")]
            pipe = r.pipeline()
            pipe.delete(OFFSITE + site)
            for manifest in manifests:
                pipe.zadd(OFFSITE + site, {json.dumps(manifest, sort_keys=True): utc_time(manifest).timestamp()})
            index_site(pipe, site)
            pipe.execute()
            found.setdefault(site, {})["offsite"] = len(manifests)
    root = sites_root(ctx.settings)
    for folder in sorted(root.iterdir()) if root is not None else []:
        backups = folder / "private" / "backups"
        if not (folder / "site_config.json").is_file() or not backups.is_dir():
            continue
        site = folder.name
        known = set(local_stamps(r, site))
        added = 0
        for side in sorted(backups.glob("*" + SIDE_SUFFIX)):
            stamp = side.name[: -len(SIDE_SUFFIX)]
            if stamp in known or not bench.is_stamp(stamp):
                continue
            manifest = read_side(root, site, stamp)
            if manifest is None or not all((root / a["path"]).is_file() for a in manifest["artifacts"]):
                continue
            r.zadd(LOCAL + site, {json.dumps(manifest, sort_keys=True): float(manifest.get("recorded_at") or 0)})
            index_site(r, site)
            added += 1
        found.setdefault(site, {})["local_added"] = added
    rebuild_site_index(r)
    ctx.record(rescanned=found)
    ctx.output.append(f"{sum(v.get('offsite', 0) for v in found.values())} off-site backups of "
                      f"{sum(1 for v in found.values() if 'offsite' in v)} sites indexed; "
                      f"{sum(v.get('local_added', 0) for v in found.values())} local backups added")


RESCAN = simple("rescan", [("rescan", StepSpec(rescan))], needs_site=False)


def _prune_held(ctx: StepContext, store: Any, hold: dict[str, Any]) -> None:
    """An offboarded site: only its held final backup stays, until the hold's ``until``; then it
    goes too, with its hold, and the audit trail records it. The retention policy does not apply."""
    now = time.time()
    expired = now >= float(hold["until"])
    deleted = []
    for manifest in store.list_backups(ctx.site):
        stamp = offsite_stamp(manifest)
        if expired or stamp != hold["timestamp"]:
            store.delete_backup(ctx.site, stamp)
            deleted.append(stamp)
    until = datetime.fromtimestamp(float(hold["until"]), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if expired:
        store.delete_legal_hold(ctx.site)
        ctx.runtime.redis.delete(OFFSITE + ctx.site)
        audit.record(ctx.runtime.redis, actor=f"job {ctx.job.id}", action="site.legal-hold-expired",
                     job_id=ctx.job.id, kind=ctx.job.kind, site=ctx.site,
                     detail=f"held until {until} UTC (offboard job {hold.get('job_id')}); deleted {', '.join(deleted) or 'nothing'}",
                     days=ctx.settings.audit_days)
        ctx.output.append(f"legal hold ended {until} UTC: deleted {len(deleted)} backup(s) and the hold")
    else:
        ctx.output.append(f"offboarded: {hold['timestamp']} held until {until} UTC; deleted {len(deleted)} other(s)")
    ctx.record(legal_hold={**hold, "expired": expired}, deleted=deleted)


PRUNE = simple("prune", [("prune-offsite", StepSpec(prune_offsite))])


# -- restore from off-site ------------------------------------------------------------------------


def choose_backup(store: Any, site: str, at: str | None) -> dict[str, Any]:
    """The newest verified off-site backup of ``site`` taken at or before ``at`` (latest if None);
    compared in UTC."""
    limit = normalise_at(at) if at else None
    for manifest in sorted(store.list_backups(site), key=offsite_stamp, reverse=True):
        if manifest.get("verified") and (limit is None or offsite_stamp(manifest) <= limit):
            return manifest
    when = f" at or before {at} (UTC {limit})" if at else ""
    raise InvalidInput(f"no verified off-site backup of {site}{when}")


def normalise_at(at: str) -> str:
    """``--at`` -> a UTC ``YYYYMMDD_HHMMSS``.

    Accepted: ``YYYYMMDD_HHMMSS`` (UTC), an ISO date (that whole day, UTC), an ISO date and
    time, UTC unless it carries its own offset (``Z``, ``+14:00``, ``-10:00``), which is then
    converted to UTC."""
    text = at.strip() if isinstance(at, str) else ""
    if bench.is_stamp(text):
        return text
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"--at {at!r}: expected YYYYMMDD_HHMMSS (UTC), an ISO date, or an ISO date and time "
            "(UTC unless it gives its offset, e.g. 2026-11-29T03:00:00+14:00)"
        ) from None
    if len(text) <= 10:  # a date alone: that whole day
        when = when.replace(hour=23, minute=59, second=59)
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y%m%d_%H%M%S")


def fetch_offsite(
    ctx: StepContext, *, into_site: str | None = None, at: str | None = None, strict: bool = False
) -> dict[str, Any]:
    """Download, verify (stored and plain SHA-256, the manifest's HMAC when a key is set) and
    decrypt a backup of the job's site into the backup folder of ``into_site`` (default: the
    same site). ``strict``: an unsigned manifest.json is refused when a key is set. Records
    what was fetched, and writes its manifest beside the files for the restore to cross-check."""
    store = store_for(ctx)
    manifest = choose_backup(store, ctx.site, at)
    target = into_site or ctx.site
    root = sites_dir(ctx.settings)
    dest = root / target / "private" / "backups"
    started = time.monotonic()
    made = [folder for folder in (dest.parent, dest) if not folder.exists()]
    paths = store.download_backup(ctx.site, offsite_stamp(manifest), dest, chosen=manifest, require_signature=strict,
                                  kinds=RESTORED_KINDS)
    for path in [*made, *paths.values()]:  # the bench's user, not a root worker, owns them
        give_to_owner(path, root / target)
    kinds = {"database": "db", "public_files": "public_files", "private_files": "private_files"}
    files = {kinds[k]: f"{target}/private/backups/{p.name}" for k, p in paths.items() if k in kinds}
    sha = {kinds[a["kind"]]: a["sha256"] for a in manifest["artifacts"] if a["kind"] in kinds}
    names = {a["kind"]: a["name"] for a in manifest["artifacts"]}
    local = {
        "site": target, "timestamp": manifest["timestamp"], "job_id": ctx.job.id, "fetched_from": ctx.site,
        "artifacts": [{"kind": k, "path": f"{target}/private/backups/{names[k]}", "size": a["size"],
                       "sha256": a["sha256"]} for a in manifest["artifacts"] if (k := a["kind"]) in paths],
    }
    present = read_side(root, target, manifest["timestamp"])
    if present is None or any(
        (artifact(present, a["path"]) or {}).get("sha256") != a["sha256"] for a in local["artifacts"]
    ):
        write_side(root, target, seal(local, manifest_key(ctx.settings)))
    fetched = {
        "timestamp": manifest["timestamp"],
        "utc_timestamp": offsite_stamp(manifest),
        "time_zone": manifest.get("time_zone"),
        "files": files,
        "sha256": sha,
        "stats": manifest.get("stats"),
        "download_s": round(time.monotonic() - started, 3),
    }
    ctx.record(fetched=fetched)
    return fetched
