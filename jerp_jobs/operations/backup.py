"""Backup of one site: ``bench backup``, then a manifest of what it made, verified.

The manifest lists every artifact with its size and SHA-256, read back from the files bench
wrote (not from the rounded sizes bench prints), and the database dump must be a complete gzip
stream: a backup that cannot be restored is not a backup. The manifest is stored with the job
and in the site's backup index (``jerp:backups:<site>``) for restores to check against.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from jerp_jobs import bench
from jerp_jobs.errors import CommandFailed, OutputParseError
from jerp_jobs.freshness import LOCAL as BACKUP_INDEX
from jerp_jobs.notify import backup_failed
from jerp_jobs.operations.offsite import prune_local, upload
from jerp_jobs.workflow import StepContext, StepSpec, simple

if TYPE_CHECKING:
    from jerp_jobs.jobs import Job
    from jerp_jobs.runtime import Runtime


def backup_site(ctx: StepContext) -> None:
    take_backup(ctx, with_files=bool(ctx.params.get("with_files", True)))


def take_backup(ctx: StepContext, *, with_files: bool, record_as: str = "backup") -> dict[str, Any]:
    """Run a backup of the job's site; record and index its verified manifest; return it."""
    result = ctx.run(bench.backup(ctx.site, with_files=with_files, bench=ctx.bench))
    summary = bench.parse_backup_summary(result.output, ctx.site)
    manifest = build_manifest(ctx, summary)
    ctx.record(**{record_as: manifest})
    store_manifest(ctx, manifest)
    return manifest


def find_manifest(ctx: StepContext, site: str, path: str) -> dict[str, Any] | None:
    """The newest recorded manifest of ``site`` that lists ``path`` (relative to sites/)."""
    for raw in ctx.runtime.redis.zrevrange(BACKUP_INDEX + site, 0, -1):
        manifest = json.loads(raw)
        if any(a["path"] == path for a in manifest["artifacts"]):
            return manifest
    return None


def build_manifest(ctx: StepContext, summary: bench.BackupSummary) -> dict[str, Any]:
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
    return {
        "site": summary.site,
        "timestamp": summary.timestamp,
        "taken_at": summary.taken_at.isoformat() if summary.taken_at else None,
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
    ctx.runtime.redis.zadd(key, {json.dumps(manifest, sort_keys=True): manifest["recorded_at"]})


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
    if job.state != "succeeded" and not job.parent:
        rt.notify(*backup_failed(job))


simple(
    "backup",
    [("backup", StepSpec(backup_site)), ("upload-offsite", StepSpec(upload, retries=3)), ("prune-local", StepSpec(prune_local))],
    on_end=notify_if_failed,
)
