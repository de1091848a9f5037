"""Point-in-time restore: a site's database as it was at an instant (``restore SITE --to``).

Two steps come before the restore workflow's own (check-backup, maintenance, the safety backup,
bench restore, migrate, ...), and neither touches the site:

- ``pitr-prepare`` chooses the newest off-site backup of the source site whose point-in-time
  base (``pitr-base`` of the backup job) was taken before the instant, and plans the shipped
  binary logs from its position through the instant (all present, in sequence). An instant the
  shipped logs do not reach yet, but which is past, gets one shipment first
  (:func:`jerp_jobs.pitr.ship_configured`).
- ``pitr-replay`` downloads the base (checked and decrypted), checks every binary log against
  the archive's index, loads the base into a scratch database of the job and replays the source
  database's events up to the instant (:func:`jerp_jobs.pitr.restore_to`: no other database's
  events), then exports the scratch database as a dump into the site's backup folder with a
  manifest beside it, and drops the scratch database. The site stays online meanwhile.

The restore then restores that dump as any other, through the same checks. With ``--as NEW``
(``from_site``), the job's site is the new site, created empty first; the source site is only
read from the off-site store.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timezone
from typing import Any

from jerp_jobs import bench, pitr
from jerp_jobs.backupfiles import free_space, give_to_owner, human, require_sites_root, sites_root
from jerp_jobs.dumpstats import dump_stats
from jerp_jobs.enqueue import start_job
from jerp_jobs.errors import InvalidInput
from jerp_jobs.jobs import StepState
from jerp_jobs.log import get_logger
from jerp_jobs.manifests import manifest_key, read_side, seal, side_name, write_side
from jerp_jobs.offsite import offsite_stamp
from jerp_jobs.operations.offsite import store_for
from jerp_jobs.sites import validate_site_name
from jerp_jobs.workflow import StepContext

log = get_logger(__name__)

#: the restore options a point-in-time restore does not take
NOT_WITH_TO = ("db", "public_files", "private_files", "from_offsite", "at", "unverified", "create", "verify")


def validate(site: str, params: dict[str, Any], out: dict[str, Any], settings: Any) -> dict[str, Any]:
    """``to`` (and ``from_site``) of a restore request: the instant as UTC ISO text, past, and
    the store it needs configured."""
    given = [name for name in NOT_WITH_TO if params.get(name)]
    if given:
        raise InvalidInput(f"--to restores the database to an instant from the off-site store and binary logs; "
                           f"it takes no {', '.join('--' + name.replace('_', '-') for name in given)}")
    out = {k: v for k, v in out.items() if k not in NOT_WITH_TO}
    out["to"] = pitr.iso_utc(pitr.parse_instant(params["to"]))
    if params.get("from_site") is not None:
        source = validate_site_name(params["from_site"])
        if source == site:
            raise InvalidInput(f"--as {site}: the new site must differ from the site restored ({source})")
        out["from_site"] = source
    if not settings.pitr_on:
        missing = ("JERP_S3_BUCKET is not set" if not settings.s3_bucket else
                   "JERP_BINLOG_SHIP_MINUTES is 0" if settings.binlog_ship_minutes <= 0 else
                   "JERP_PITR_WINDOW_DAYS is 0")
        raise InvalidInput(f"point-in-time recovery is off ({missing}): --to needs binary logs shipped off-site")
    return out


def source_site(ctx: StepContext) -> str:
    """The site whose database is restored: ``from_site`` (``--as``), else the job's."""
    return ctx.params.get("from_site") or ctx.site  # type: ignore[return-value]


def target_instant(ctx: StepContext) -> float:
    return datetime.fromisoformat(str(ctx.params["to"]).replace("Z", "+00:00")).timestamp()


def _bases(store: Any, site: str) -> list[dict[str, Any]]:
    """The verified off-site backups of ``site`` with a point-in-time base, oldest base first."""
    found = [m for m in store.list_backups(site)
             if m.get("verified") and isinstance(m.get("pitr"), dict) and "dumped_at" in m["pitr"]]
    return sorted(found, key=lambda m: m["pitr"]["dumped_at"])


def choose_base(store: Any, site: str, target: float) -> dict[str, Any]:
    """The newest verified off-site backup of ``site`` with a point-in-time base taken before
    ``target``; InvalidInput when there is none."""
    bases = [m for m in _bases(store, site) if m["pitr"]["dumped_at"] <= target]
    if not bases:
        raise InvalidInput(f"no off-site backup of {site} with a point-in-time base taken before "
                           f"{pitr.utc_text(target)} UTC (bases are taken with each backup while point-in-time "
                           "recovery is on)")
    return bases[-1]


def prepare(ctx: StepContext) -> None:
    """``pitr-prepare``: the base and the binary logs of the restore, chosen and recorded;
    nothing is touched."""
    ctx.settings.secret("mariadb_root_password")  # fail before anything long
    source, target = source_site(ctx), target_instant(ctx)
    store = store_for(ctx)
    manifest = choose_base(store, source, target)
    base = manifest["pitr"]
    start = pitr.Coordinates.from_dict(base["coordinates"])
    archive = pitr.OffsiteArchive(store, base["server"])
    try:
        logs = pitr.plan(archive.index(), start, target)
    except pitr.NotReached as exc:  # the logs shipped do not reach the instant yet: ship now, once
        ctx.output.append(f"{exc}: shipping the binary logs now")
        shipped = pitr.ship_configured(ctx.settings, ctx.runtime.executor, ctx.runtime.redis)
        reason = pitr.not_shipped(shipped)
        if reason:
            raise pitr.PitrError(f"{exc}; and no shipment could be made now: {reason}") from None
        logs = pitr.plan(archive.index(), start, target)
    base_size = next((int(a.get("size") or 0) for a in manifest.get("artifacts", []) if a.get("kind") == "pitr_base"), 0)
    ctx.record(pitr={
        "source": source, "to": ctx.params["to"], "backup": offsite_stamp(manifest),
        "apps": manifest.get("apps") or [], "base": base, "binlogs": [entry["name"] for entry in logs],
        "space_needed": SPACE_PER_BASE_BYTE * base_size + 2 * sum(int(entry["size"]) for entry in logs),
    })
    ctx.output.append(f"{source} at {pitr.utc_text(target)} UTC: base of the backup {offsite_stamp(manifest)} "
                      f"(taken {pitr.utc_text(base['dumped_at'])} UTC at {start.file}:{start.position}), then "
                      f"{len(logs)} binary log(s) {logs[0]['name']}..{logs[-1]['name']}")


#: the room a replay takes in the sites volume per byte of the compressed base: the base, its
#: plain dump, the export plain and compressed (a plain dump is several times its gzip)
SPACE_PER_BASE_BYTE = 10


def scratch_database(job_id: str) -> str:
    """The job's scratch database (made and dropped by ``pitr-replay``)."""
    return f"_jerp_pitr_{job_id}"


def _free_stamp(root: Any, site: str) -> str:
    """A backup stamp (UTC, now) no file or manifest of the site's backup folder uses yet."""
    at = int(time.time())
    while True:
        stamp = time.strftime(bench.STAMP_FORMAT, time.gmtime(at))
        folder = root / site / "private" / "backups"
        if read_side(root, site, stamp) is None and not any(folder.glob(stamp + "-*")):
            return stamp
        at += 1


def job_database(settings: Any, executor: Any, job_id: str) -> pitr.MariaDB:
    """The platform's MariaDB for one job, with a work folder of the job's own."""
    return pitr.configured_database(settings, executor).within(f"job-{job_id}")


def _drop_quietly(db: pitr.MariaDB, names: list[str], failing: bool) -> None:
    """Drop ``names``; when the step is failing already, a failed drop is logged, never put in
    the place of the step's own error (the job's end drops them again)."""
    for name in names:
        try:
            db.drop(name)
        except Exception:
            if not failing:
                raise


def _restore_base(db: pitr.MariaDB, store: Any, archive: pitr.OffsiteArchive, site: str, backup: str,
                  base: dict[str, Any], *, into: str, target: float) -> dict[str, Any]:
    """Database ``into`` as ``site``'s database was at ``target``, from the base of its off-site
    backup ``backup`` (downloaded, checked and decrypted into the job's work folder, removed
    after) and the archived logs (:func:`jerp_jobs.pitr.restore_to`)."""
    files = store.download_backup(site, backup, db.workdir(), kinds={"pitr_base"}, require_signature=True)
    try:
        return pitr.restore_to(db, archive, dump=files["pitr_base"], start=pitr.Coordinates.from_dict(base["coordinates"]),
                               dumped_at=base["dumped_at"], database=base["database"], into=into, target=target)
    finally:
        files["pitr_base"].unlink(missing_ok=True)


def replay(ctx: StepContext) -> None:
    """``pitr-replay``: the source's database at the instant, as a dump in the site's backup
    folder with its manifest; recorded as ``fetched`` for the restore's checks."""
    plan = ctx.job.result["pitr"]
    base, source, target = plan["base"], plan["source"], target_instant(ctx)
    root = require_sites_root(ctx.settings, "the point-in-time dump is written into the site's backup folder")
    _remove_made(root, ctx.site, ctx.job.result.get("pitr_made"))  # an earlier attempt's
    free, _ = free_space(root)
    if free < int(plan.get("space_needed") or 0):
        raise pitr.PitrError(f"the sites volume has {human(free)} free; a point-in-time restore of this base needs "
                             f"about {human(plan['space_needed'])} there (the base and its plain dump, the logs, "
                             "the replay, the export): free space first. Nothing was changed")
    store = store_for(ctx)
    db = job_database(ctx.settings, ctx.runtime.executor, ctx.job.id)
    scratch = scratch_database(ctx.job.id)
    ctx.record(pitr_scratch=True)  # the job's end drops it, whatever happens here
    db.drop(scratch)  # left by an earlier attempt of this step
    failing = True
    try:
        done = _restore_base(db, store, pitr.OffsiteArchive(store, base["server"]), source, plan["backup"], base,
                             into=scratch, target=target)
        stamp = _free_stamp(root, ctx.site)
        rel = f"{ctx.site}/private/backups/{stamp}-{ctx.site.replace('.', '_')}-pitr-database.sql.gz"
        ctx.record(pitr_made={"path": rel, "timestamp": stamp})  # known before it exists: never orphaned
        dest = root / rel
        db.export(scratch, dest)
        give_to_owner(dest, root / ctx.site)
        size, sha = pitr.digest(dest)
        failing = False
    finally:
        _drop_quietly(db, [scratch], failing)
        db.clear()
    manifest = {
        "site": ctx.site, "timestamp": stamp, "utc_timestamp": stamp, "job_id": ctx.job.id, "recorded_at": time.time(),
        "point_in_time": {"source": source, "to": plan["to"], "backup": plan["backup"]},
        "artifacts": [{"kind": "database", "path": rel, "size": size, "sha256": sha}],
    }
    write_side(root, ctx.site, seal(manifest, manifest_key(ctx.settings)))
    ctx.record(fetched={
        "timestamp": stamp, "utc_timestamp": stamp, "time_zone": "UTC", "files": {"db": rel}, "sha256": {"db": sha},
        "stats": dump_stats(dest), "point_in_time": {**done, "to": plan["to"], "source": source},
        "made_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    ctx.output.append(f"replayed {done['events']} row events of {base['database']} from {len(done['binlogs'])} "
                      f"binary log(s) up to {pitr.utc_text(target)} UTC (load {done['load_s']}s, replay "
                      f"{done['replay_s']}s): {rel}")


def _remove_made(root: Any, site: str, made: dict[str, Any] | None) -> None:
    """Remove a dump a replay made for ``site`` (and its manifest)."""
    rel, stamp = (made or {}).get("path"), (made or {}).get("timestamp")
    if not rel or not stamp or not str(rel).startswith(f"{site}/private/backups/") or "/../" in f"/{rel}/":
        return
    (root / rel).unlink(missing_ok=True)
    (root / site / "private" / "backups" / side_name(stamp)).unlink(missing_ok=True)


def after_restore(rt: Any, job: Any) -> None:
    """``on_end`` of a restore.

    A restore that changed the site's database in place, while point-in-time recovery is on,
    starts a backup of the site (which takes a new base): the binary logs now hold the restore's
    ``DROP DATABASE`` of the site, which no replay crosses, so until a base newer than the
    restore exists the site cannot be restored to an instant after it (a restore started by
    ``restore-all`` is left to the nightly backup). Then :func:`remove_made_dump`."""
    restored = any(step.name == "restore" and step.state == StepState.SUCCESS for step in job.steps)
    # a fan-out child (restore-all after a disaster) is left to the nightly backup: one backup per
    # restored site would compete with the sites still to restore
    if restored and job.site and not job.parent and rt.settings.pitr_on:
        backup = start_job(rt, "backup", site=job.site, actor=f"job {job.id}")
        log.info("restore.followed_by_backup", job_id=job.id, site=job.site, backup_job=backup.id)
    remove_made_dump(rt, job)


def remove_made_dump(rt: Any, job: Any) -> None:
    """A point-in-time restore's end, whatever its outcome: the dump ``pitr-replay`` made (and
    its manifest) is removed — made for this restore only, kept it would fill the backup folder
    and could pass for a backup taken at its file's time — and so are the job's scratch database
    and work folder, which a worker killed in the middle of the replay leaves."""
    if not job.params.get("to"):
        return
    root = sites_root(rt.settings)
    if root is not None:
        _remove_made(root, job.site, job.result.get("pitr_made"))
    if not job.result.get("pitr_scratch"):
        return
    db = job_database(rt.settings, rt.executor, job.id)
    db.drop(scratch_database(job.id))
    db.clear()


# -- drills ----------------------------------------------------------------------------------


def _checksums(db: pitr.MariaDB, database: str) -> dict[str, str]:
    """Every table of ``database`` with its ``CHECKSUM TABLE`` (row data, whatever the order)."""
    tables = [row[0] for row in db.query("SHOW TABLES", database=database)]
    out: dict[str, str] = {}
    for table in tables:
        quoted = "`" + table.replace("`", "``") + "`"
        for row in db.query(f"CHECKSUM TABLE {quoted}", database=database):
            out[table] = row[-1]
    return out


def drill_databases(job_id: str) -> list[str]:
    """The scratch databases of a drill's point-in-time part."""
    return [f"_jerp_drill_{job_id}_{n}" for n in range(2)]


def drop_drill_databases(ctx: StepContext) -> None:
    """The drill's scratch databases and work folder, gone (its cleanup, also after a worker
    was killed in the middle of the point-in-time part)."""
    db = job_database(ctx.settings, ctx.runtime.executor, ctx.job.id)
    for name in drill_databases(ctx.job.id):
        db.drop(name)
    db.clear()


def drill(ctx: StepContext) -> str | None:
    """``pitr`` step of a drill (planned while point-in-time recovery is on): the site's
    database restored to a random second inside its window, twice, from two different bases —
    the newest base before that second and an older one — into two scratch databases; every
    table must be the same in both (``CHECKSUM TABLE``). Each derivation checks every binary log
    it reads against the archive's index; their agreement proves the chain of logs between the
    two bases complete and each base consistent with its position. With a single base, that
    restore alone is checked (recorded: not compared). The scratch databases are dropped."""
    store = store_for(ctx)
    manifests = _bases(store, ctx.site)
    if not manifests:
        ctx.record(pitr_drill={"not_drilled": "no off-site backup with a point-in-time base yet"})
        ctx.output.append("point-in-time: no off-site backup with a base yet; nothing to drill")
        return StepState.SKIPPED
    server = manifests[-1]["pitr"]["server"]
    manifests = [m for m in manifests if m["pitr"]["server"] == server]
    archive = pitr.OffsiteArchive(store, server)
    index = archive.index()
    archived = {pitr.sequence(e["name"]) for e in index}
    usable = [m for m in manifests if pitr.sequence(m["pitr"]["coordinates"]["file"]) in archived]
    reached = max((e["closed_at"] for e in index), default=None)
    if not usable or reached is None or reached < usable[0]["pitr"]["dumped_at"] + 1:
        ctx.record(pitr_drill={"not_drilled": "no binary log shipped after the base yet"})
        ctx.output.append("point-in-time: no binary log shipped after the base yet; nothing to drill")
        return StepState.SKIPPED
    # an instant where two bases can both reach it when there are two: compared
    low = usable[1 if len(usable) > 1 else 0]["pitr"]["dumped_at"]
    high = float(int(reached))
    if high < low:
        low = usable[0]["pitr"]["dumped_at"]
    target = float(random.Random(ctx.job.id).randint(int(low), int(max(low, high))))
    before = [m for m in usable if m["pitr"]["dumped_at"] <= target]
    chosen = [before[-1]] + ([before[0]] if len(before) > 1 else [])
    db = job_database(ctx.settings, ctx.runtime.executor, ctx.job.id)
    scratches = drill_databases(ctx.job.id)[:len(chosen)]
    ctx.record(pitr_scratch=True)  # the drill's cleanup drops them, whatever happens here
    sums: list[dict[str, str]] = []
    done: list[dict[str, Any]] = []
    failing = True
    try:
        for manifest, scratch in zip(chosen, scratches):
            db.drop(scratch)
            done.append(_restore_base(db, store, archive, ctx.site, offsite_stamp(manifest), manifest["pitr"],
                                      into=scratch, target=target))
            sums.append(_checksums(db, scratch))
        failing = False
    finally:
        _drop_quietly(db, scratches, failing)
        db.clear()
    outcome: dict[str, Any] = {
        "to": pitr.iso_utc(target), "bases": [offsite_stamp(m) for m in chosen], "tables": len(sums[0]),
        "events": [d["events"] for d in done], "binlogs": len(done[0]["binlogs"]), "compared": len(sums) > 1,
    }
    if len(sums) > 1:
        differ = sorted(t for t in set(sums[0]) | set(sums[1]) if sums[0].get(t) != sums[1].get(t))
        outcome["differ"] = differ
        ctx.record(pitr_drill=outcome)
        if differ:
            raise pitr.PitrError(f"point-in-time drill: {ctx.site} at {pitr.utc_text(target)} UTC restored from the "
                                 f"bases of {outcome['bases'][0]} and {outcome['bases'][1]} differs in "
                                 f"{len(differ)} table(s): {', '.join(differ[:10])}")
        ctx.output.append(f"point-in-time: {ctx.site} at {pitr.utc_text(target)} UTC restored from two bases "
                          f"({', '.join(outcome['bases'])}): {len(sums[0])} tables identical")
    else:
        ctx.record(pitr_drill=outcome)
        ctx.output.append(f"point-in-time: {ctx.site} at {pitr.utc_text(target)} UTC restored from the base of "
                          f"{outcome['bases'][0]} ({len(sums[0])} tables); one base only: not compared")
    return None
