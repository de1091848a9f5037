"""Backup of one site: ``bench backup``, then a manifest of what it made, verified.

The manifest lists every artifact with its size and SHA-256, read back from the files bench
wrote (not from the rounded sizes bench prints), and the database dump must be a complete gzip
stream: a backup that cannot be restored is not a backup. The manifest is stored with the job,
in the site's backup index (``jerp:backups:<site>``) and beside the files
(``<timestamp>-jerp-manifest.json``), signed with ``JERP_MANIFEST_KEY`` when it is set
(``jerp_jobs.manifests``), for restores to check against.

Bench writes each attempt into a folder of its own (``jerp_jobs.backupfiles``): the partial
files of a failed or killed attempt are removed, never left among the backups. A failure with
the disk full says so, naming the folder and its free space.

Time. Bench names the files and prints the summary in the site's own time zone (Frappe's
``now_datetime()``: System Settings ``time_zone``, ``Asia/Kolkata`` when unset), not UTC. The
zone is read once per job and site (``bench execute frappe.utils.get_system_timezone``, kept in
the job's ``time_zones``); the manifest keeps bench's local stamp (``timestamp``, the files'
names) with its zone, and beside it the instant in UTC (``utc_timestamp``, ``taken_at_utc``) and
with its offset (``taken_at_local``). Everything that orders or compares backups in time
(S3 keys, retention, ``--at``, freshness) uses the UTC fields.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jerp_jobs import bench, pitr
from jerp_jobs.backupfiles import (
    attempt_folder,
    free_space,
    give_to_owner,
    human,
    move_into_backups,
    names_taken,
    require_sites_root,
    sites_root,
    sweep_attempts,
)
from jerp_jobs.errors import CommandFailed, OutputParseError
from jerp_jobs.freshness import LOCAL as BACKUP_INDEX
from jerp_jobs.freshness import index_site
from jerp_jobs.jobs import JobState, StepState
from jerp_jobs.manifests import manifest_key, seal, write_side
from jerp_jobs.notify import backup_failed
from jerp_jobs.operations.offsite import PITR_BASE_SUFFIX, prune_local, upload
from jerp_jobs.log import get_logger
from jerp_jobs.workflow import StepContext, StepSpec, Workflow, table_resolver

log = get_logger(__name__)

if TYPE_CHECKING:
    from jerp_jobs.jobs import Job
    from jerp_jobs.runtime import Runtime


def backup_site(ctx: StepContext) -> None:
    take_backup(ctx, with_files=bool(ctx.params.get("with_files", True)))


def pitr_base(ctx: StepContext) -> str | None:
    """The base of point-in-time recovery beside the backup (planned when it is on:
    :func:`validate_backup`): a dump of the site's database taken by jerp-jobs with the binary
    log position it is consistent with (``mariadb-dump --single-transaction --master-data=2``;
    ``bench backup`` records no position). It is uploaded with the backup (``upload-offsite``),
    and its local file removed once it is off-site.

    A base that cannot be taken (the database writes no binary logs, cannot be reached) does not
    fail the backup, which is whole without it: the step records ``pitr_base_error`` and says so,
    and the site's point-in-time window shows no new base (``jerpctl backups SITE``)."""
    root = require_sites_root(ctx.settings, "the point-in-time base is written into the site's backup folder")
    manifest = ctx.job.result["backup"]
    folder = root / ctx.site / "private" / "backups"
    for stale in folder.glob("*" + PITR_BASE_SUFFIX):  # an earlier base never uploaded
        stale.unlink(missing_ok=True)
    name = f"{manifest['timestamp']}-{ctx.site.replace('.', '_')}{PITR_BASE_SUFFIX}"
    began = time.monotonic()
    db = pitr.configured_database(ctx.settings, ctx.runtime.executor).within(f"job-{ctx.job.id}")
    try:
        database = pitr.site_database(root, ctx.site)
        coordinates = db.dump(database, folder / name)
        # the snapshot was taken while the dump ran: a second after the server's clock at its
        # end (the clock of the logs' events) surely follows it
        dumped_at = float(db.clock() + 1)
        took = time.monotonic() - began
    except (CommandFailed, pitr.PitrError) as exc:
        (folder / name).unlink(missing_ok=True)
        reason = str(exc).splitlines()[0][:500]
        ctx.record(pitr_base_error=reason)
        ctx.output.append(f"point-in-time base NOT taken (the backup goes on without it): {reason}")
        log.warning("backup.pitr_base_failed", site=ctx.site, job_id=ctx.job.id, error=reason)
        return StepState.SKIPPED
    finally:
        db.clear()
    give_to_owner(folder / name, root / ctx.site)
    size, sha = pitr.digest(folder / name)
    ctx.record(pitr_base={
        "path": f"{ctx.site}/private/backups/{name}", "size": size, "sha256": sha, "database": database,
        "server": ctx.settings.db_host, "coordinates": coordinates.to_dict(), "dumped_at": dumped_at,
        "dump_s": round(took, 3),
    })
    ctx.output.append(f"point-in-time base of {database} at {coordinates.file}:{coordinates.position} "
                      f"({human(size)})")
    return None


def validate_backup(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    """A backup plans its point-in-time base (``pitr_base``) when point-in-time recovery is on
    and the backup goes off-site."""
    out = {k: v for k, v in params.items() if k != "pitr_base"}
    if settings.pitr_on and out.get("offsite") is not False:
        out["pitr_base"] = True
    return out


def take_backup(ctx: StepContext, *, with_files: bool, record_as: str = "backup") -> dict[str, Any]:
    """Run a backup of the job's site; record and index its verified manifest; return it.

    Bench writes into a folder of this attempt; its files are moved into the backup folder only
    once it has finished, so a failed or killed attempt leaves nothing among the backups (the
    next backup of the site removes what it left). A failure on a full disk says so.
    """
    root = sites_root(ctx.settings)
    if root is None:
        return _take_backup_in_place(ctx, with_files=with_files, record_as=record_as)
    zone = site_time_zone(ctx, ctx.site)
    try:
        for tries_left in range(SAME_SECOND_TRIES - 1, -1, -1):
            started = datetime.now(timezone.utc)
            attempt, names, printed = _bench_backup(ctx, root, with_files=with_files, record_as=record_as)
            taken = names_taken(root, ctx.site, names)
            if not taken:
                break
            sweep_attempts(root, ctx.site)
            if not tries_left:
                raise CommandFailed(f"backup of {ctx.site}: {ctx.site}/private/backups/{taken[0]} already exists; "
                                    "not replacing it", exit_code=1)
            # bench names a set by the second it started: a backup taken in the same second as the
            # last one (a retry, two quick jobs) gets its names; wait for the next second, take it again
            ctx.output.append(f"a backup set named like this one exists ({taken[0]}): bench names sets by the "
                              "second; taking the backup again in the next second")
            time.sleep(max(0.0, 1.05 - (datetime.now(timezone.utc) - started).total_seconds()))
        manifest = build_manifest(ctx, printed, zone=zone, near=started)  # checked where bench wrote it, then moved
        move_into_backups(root, ctx.site, attempt, names)
        for entry, name in zip(manifest["artifacts"], names):
            entry["path"] = f"{ctx.site}/private/backups/{name}"
        manifest = seal(manifest, manifest_key(ctx.settings))
        write_side(root, ctx.site, manifest)
    finally:
        sweep_attempts(root, ctx.site)  # this attempt's folder, and any a dead bench wrote meanwhile
    ctx.record(**{record_as: manifest})
    store_manifest(ctx, manifest)
    return manifest


#: bench backups taken when the first one's names are those of an existing set (same second)
SAME_SECOND_TRIES = 2


def _bench_backup(ctx: StepContext, root: Any, *, with_files: bool, record_as: str) -> tuple[str, list[str], Any]:
    """One ``bench backup`` into a fresh attempt folder: the folder, the file names bench wrote
    there, and its parsed summary."""
    attempt, removed = attempt_folder(root, ctx.site, ctx.job.id, record_as)
    if removed:
        ctx.output.append(f"removed the partial files of an earlier attempt: {', '.join(removed)}")
    try:
        result = ctx.run(bench.backup(ctx.site, with_files=with_files, backup_path=attempt, bench=ctx.bench))
    except CommandFailed as exc:
        sweep_attempts(root, ctx.site)
        raise disk_full(ctx, root, exc) or exc
    printed = bench.parse_backup_summary(result.output, ctx.site)
    names = []
    for a in printed.artifacts:
        folder, _, name = a.path.removeprefix("./").rpartition("/")
        if folder != attempt:
            raise OutputParseError(f"bench wrote {a.path}, outside the folder of this backup ({attempt})")
        names.append(name)
    return attempt, names, printed


def _take_backup_in_place(ctx: StepContext, *, with_files: bool, record_as: str) -> dict[str, Any]:
    """Without the sites folder (JERP_SITES_DIR), bench writes straight into the backup folder."""
    ctx.output.append("the sites folder is not visible to the worker (JERP_SITES_DIR): the manifest is kept in "
                      "Redis only, and the files of a failed attempt cannot be removed")
    zone = site_time_zone(ctx, ctx.site)
    started = datetime.now(timezone.utc)
    result = ctx.run(bench.backup(ctx.site, with_files=with_files, bench=ctx.bench))
    summary = bench.parse_backup_summary(result.output, ctx.site)
    manifest = seal(build_manifest(ctx, summary, zone=zone, near=started), manifest_key(ctx.settings))
    ctx.record(**{record_as: manifest})
    store_manifest(ctx, manifest)
    return manifest


_NO_SPACE = ("No space left on device", "ENOSPC", "Errno 28", "Disk full", "disk full")
#: below this much free space a failed backup is put down to a full disk
MIN_FREE = 64 * 1024 * 1024


def disk_full(ctx: StepContext, root: Any, exc: CommandFailed) -> CommandFailed | None:
    """A failed backup explained by a full disk: bench's output says so (ENOSPC), or the backup
    folder has less free space than the site's last backup took (at least ``MIN_FREE``)."""
    folder = root / ctx.site / "private" / "backups"
    try:
        free, total = free_space(folder)
    except OSError:
        return None
    text = f"{exc}\n{exc.output_tail}"
    said = any(marker in text for marker in _NO_SPACE)
    last = max((sum(a["size"] for a in m["artifacts"]) for m in local_manifests(ctx, ctx.site)[:1]), default=0)
    needed = max(MIN_FREE, last)
    if not said and free >= needed:
        return None
    because = "bench reported no space left on device" if said else (
        f"less than the {human(needed)} a backup of {ctx.site} needs" + (f" (the last one took {human(last)})" if last else "")
    )
    return CommandFailed(
        f"the backup of {ctx.site} failed: disk full: {folder} has {human(free)} free of {human(total)}, {because}; "
        "its partial files were removed. Free space there (or on the volume), then back up again",
        exit_code=exc.exit_code,
        output_tail=exc.output_tail,
    )


def local_manifests(ctx: StepContext, site: str) -> list[dict[str, Any]]:
    """The manifests of the site's backup index in Redis, newest first."""
    out = []
    for raw in ctx.runtime.redis.zrevrange(BACKUP_INDEX + site, 0, -1):
        try:
            manifest = json.loads(raw)
        except ValueError:
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("artifacts"), list):
            out.append(manifest)
    return out


def find_manifest(ctx: StepContext, site: str, path: str) -> dict[str, Any] | None:
    """The newest recorded manifest of ``site`` that lists ``path`` (relative to sites/)."""
    return next((m for m in local_manifests(ctx, site) if any(a.get("path") == path for a in m["artifacts"])), None)


def site_time_zone(ctx: StepContext, site: str) -> str:
    """The site's time zone, read from bench once per job (kept in the job's ``time_zones``)."""
    known = ctx.job.result.get("time_zones") or {}
    if isinstance(known.get(site), str):
        return known[site]
    zone = bench.parse_time_zone(ctx.run(bench.system_timezone(site, bench=ctx.bench)).output)
    ctx.job.result["time_zones"] = {**known, site: zone}
    ctx.record(time_zones=ctx.job.result["time_zones"])
    return zone


def build_manifest(
    ctx: StepContext, summary: bench.BackupSummary, *, zone: str, near: datetime | None = None
) -> dict[str, Any]:
    paths = [_bench_path(a.path) for a in summary.artifacts]
    sizes = _sizes(ctx, paths)
    digests = _sha256(ctx, paths)
    database = _bench_path(summary.artifact("database").path)  # type: ignore[union-attr]
    gzip_check = ctx.run(["gzip", "-t", "--", database], check=False)
    if not gzip_check.ok:
        raise CommandFailed(
            f"the database dump of {summary.site} is not a complete gzip stream: {database}",
            exit_code=gzip_check.exit_code,
            output_tail=gzip_check.output,
        )
    times = bench.backup_times(summary.timestamp, zone, near=near)
    finished = (
        bench.local_to_utc(summary.taken_at, zone, near=datetime.now(timezone.utc)) if summary.taken_at else None
    )
    return {
        "site": summary.site,
        **times,
        "taken_at": summary.taken_at.isoformat() if summary.taken_at else None,
        "finished_at_utc": finished.isoformat().replace("+00:00", "Z") if finished else None,
        "recorded_at": time.time(),
        "job_id": ctx.job.id,
        "with_files": summary.with_files,
        "artifacts": [
            {"kind": a.kind, "path": a.path.removeprefix("./"), "size": sizes[p], "sha256": digests[p]}
            for a, p in zip(summary.artifacts, paths)
        ],
    }


def store_manifest(ctx: StepContext, manifest: dict[str, Any]) -> None:
    key = BACKUP_INDEX + manifest["site"]
    pipe = ctx.runtime.redis.pipeline(transaction=False)
    pipe.zadd(key, {json.dumps(manifest, sort_keys=True): manifest["recorded_at"]})
    index_site(pipe, manifest["site"])
    pipe.execute()


def _bench_path(printed: str) -> str:
    """Bench prints paths relative to sites/; commands run in the bench folder."""
    return "sites/" + printed.removeprefix("./")


def _sizes(ctx: StepContext, paths: list[str]) -> dict[str, int]:
    out = ctx.run(["stat", "-c", "%s %n", "--", *paths]).output
    sizes = {}
    for line in out.splitlines():
        size, _, name = line.partition(" ")
        if name in paths and size.isdigit():
            sizes[name] = int(size)
    _require_all(paths, sizes, "size")
    return sizes


def _sha256(ctx: StepContext, paths: list[str]) -> dict[str, str]:
    out = ctx.run(["sha256sum", "--", *paths]).output
    digests = {}
    for line in out.splitlines():
        digest, _, name = line.partition("  ")
        if name in paths and len(digest) == 64:
            digests[name] = digest
    _require_all(paths, digests, "SHA-256")
    return digests


def _require_all(paths: list[str], found: dict[str, Any], what: str) -> None:
    missing = [p for p in paths if p not in found]
    if missing:
        raise OutputParseError(f"could not read the {what} of {', '.join(missing)}")


def notify_if_failed(rt: Runtime, job: Job) -> None:
    """``on_end`` of backup and backup-all: tell people when the job did not succeed.

    A backup started by a backup-all is left to its parent, which may retry it and reports
    every site that failed in one notification.
    """
    if job.state != JobState.SUCCEEDED and not job.parent:
        rt.notify(*backup_failed(job))


_BACKUP_STEPS = {"backup": StepSpec(backup_site), "pitr-base": StepSpec(pitr_base),
                 "upload-offsite": StepSpec(upload, retries=3), "prune-local": StepSpec(prune_local)}

BACKUP = Workflow(
    kind="backup",
    needs_site=True,
    plan=lambda params: [name for name in _BACKUP_STEPS if name != "pitr-base" or params.get("pitr_base")],
    resolve=table_resolver("backup", _BACKUP_STEPS),
    validate=validate_backup,
    on_end=notify_if_failed,
    site_must_exist=lambda params: True,
)
