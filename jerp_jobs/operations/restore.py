"""Restore of a site from its backup files, and the checks that come before it.

Backup files are named as paths inside the site's backup folder (``sites/<site>/private/backups``);
anything else — another folder, another site's backups, a path with ``..`` — is refused when
the job is requested, before anything runs. Before the database is touched, the files are
checked: the SHA-256 against the manifest recorded when the backup was taken (when there is
one), the dump as a complete gzip stream, the tars as readable archives. A tampered or
truncated dump never reaches ``bench restore``.

The restore workflow takes a safety backup of the current state first; if the restore or the
migrate after it fails, that safety backup is restored, and if that fails too the site is
marked as needing attention and left in maintenance.
"""

from __future__ import annotations

import posixpath
from typing import Any

from jerp_jobs import bench
from jerp_jobs.errors import CommandFailed, InvalidInput
from jerp_jobs.jobs import Job
from jerp_jobs.operations.backup import find_manifest, take_backup
from jerp_jobs.operations.common import (
    clear_cache,
    maintenance_off,
    maintenance_on,
    mark_attention,
    scheduler_enable,
)
from jerp_jobs.workflow import StepContext, StepSpec, Workflow, register, table_resolver

BENCH_ROOT = "/home/frappe/frappe-bench/"
FILE_PARAMS = {"db": (".sql.gz",), "public_files": (".tar", ".tgz", ".tar.gz"), "private_files": (".tar", ".tgz", ".tar.gz")}


def backup_folder(site: str) -> str:
    return f"{site}/private/backups"


def normalise_backup_path(site: str, path: str, *, what: str, suffixes: tuple[str, ...]) -> str:
    """A backup file given as a name, or a path into the site's backup folder -> ``<site>/private/backups/<name>``.

    Accepted forms: ``NAME``, ``<site>/private/backups/NAME``, ``sites/<site>/private/backups/NAME``,
    ``/home/frappe/frappe-bench/sites/<site>/private/backups/NAME``, with or without ``./``.
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidInput(f"{what}: empty path")
    if ".." in path.split("/"):
        raise InvalidInput(f"{what}: {path!r} contains '..'; give a file of {backup_folder(site)}/")
    folder = backup_folder(site)
    cleaned = posixpath.normpath(path)
    for prefix in (BENCH_ROOT + "sites/", "sites/"):
        if cleaned.startswith(prefix):
            cleaned = cleaned[len(prefix):]
            break
    if "/" in cleaned:
        if posixpath.dirname(cleaned) != folder:
            raise InvalidInput(f"{what}: {path!r} is outside the backup folder of {site} ({folder}/)")
        cleaned = posixpath.basename(cleaned)
    if cleaned.startswith(("-", ".")) or not cleaned.endswith(suffixes):
        raise InvalidInput(f"{what}: {path!r} is not a backup file name ending {' or '.join(suffixes)}")
    return f"{folder}/{cleaned}"


def validate_restore(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    assert site is not None
    out = dict(params)
    if params.get("from_offsite"):
        if any(params.get(name) for name in FILE_PARAMS):
            raise InvalidInput("--from-offsite takes no backup file: it restores the off-site copy")
        if params.get("at"):
            from jerp_jobs.operations.offsite import normalise_at

            out["at"] = normalise_at(params["at"])
        return out
    if params.get("at"):
        raise InvalidInput("--at goes with --from-offsite")
    if not params.get("db"):
        raise InvalidInput("a restore needs the database dump (--db), or --from-offsite")
    for name, suffixes in FILE_PARAMS.items():
        if params.get(name):
            out[name] = normalise_backup_path(site, params[name], what=name.replace("_", " "), suffixes=suffixes)
    return out


def verify_backup_files(
    ctx: StepContext, files: dict[str, str], *, expected: dict[str, str] | None = None, fence: str | None = None
) -> dict[str, Any]:
    """Check the files before anything is touched; returns what was checked (for the record).

    The SHA-256 of each file is compared with ``expected`` (an off-site manifest's) or else
    with the manifest recorded when the backup was taken, when there is one.
    """
    checked: dict[str, Any] = {}
    site = ctx.site
    for name, rel in files.items():
        path = "sites/" + rel
        if not ctx.run(["test", "-f", path], check=False, fence=fence).ok:
            raise InvalidInput(f"{name}: {rel} does not exist")
        if expected is not None:
            want, source = expected.get(name), "off-site manifest"
        else:
            manifest = find_manifest(ctx, site, rel)
            want = next(a["sha256"] for a in manifest["artifacts"] if a["path"] == rel) if manifest else None
            source = f"manifest of job {manifest['job_id']}" if manifest else None
        entry: dict[str, Any] = {"path": rel, "manifest": source}
        if want is not None:
            actual = ctx.run(["sha256sum", "--", path], fence=fence).output.split()[0]
            if actual != want:
                raise CommandFailed(
                    f"{name}: {rel} does not match its manifest (SHA-256 {actual[:12]}… != {want[:12]}…); "
                    "refusing to restore a file that changed since its backup",
                    exit_code=1,
                )
            entry["sha256"] = actual
        check = ["gzip", "-t", "--", path] if name == "db" else ["tar", "-tf", path]
        result = ctx.run(check, check=False, fence=fence)
        if not result.ok:
            raise CommandFailed(
                f"{name}: {rel} is damaged ({'not a complete gzip stream' if name == 'db' else 'not a readable tar'})",
                exit_code=result.exit_code,
                output_tail=result.output,
            )
        checked[name] = entry
    return checked


def restore_files(ctx: StepContext, files: dict[str, str]) -> None:
    """``bench --force restore`` of already checked files (paths relative to sites/)."""
    call = bench.restore(
        ctx.site,
        files["db"],
        db_root_password=ctx.settings.secret("mariadb_root_password"),
        public_files=files.get("public_files"),
        private_files=files.get("private_files"),
        bench=ctx.bench,
    )
    ctx.run(call.argv, stdin=call.stdin)


def manifest_files(manifest: dict[str, Any]) -> dict[str, str]:
    kinds = {"database": "db", "public_files": "public_files", "private_files": "private_files"}
    return {kinds[a["kind"]]: a["path"] for a in manifest["artifacts"] if a["kind"] in kinds}


# -- the restore workflow --------------------------------------------------------------------


def _requested(ctx: StepContext) -> dict[str, str]:
    if ctx.params.get("from_offsite"):
        return dict(ctx.job.result["fetched"]["files"])
    return {name: ctx.params[name] for name in FILE_PARAMS if ctx.params.get(name)}


def fetch(ctx: StepContext) -> str | None:
    if not ctx.params.get("from_offsite"):
        return "skipped"
    from jerp_jobs.operations.offsite import fetch_offsite

    ctx.settings.secret("mariadb_root_password")  # fail before a long download
    fetch_offsite(ctx, at=ctx.params.get("at"))
    return None


def check_backup(ctx: StepContext) -> None:
    ctx.settings.secret("mariadb_root_password")  # fail now, not after the safety backup
    expected = ctx.job.result["fetched"]["sha256"] if ctx.params.get("from_offsite") else None
    ctx.record(checked=verify_backup_files(ctx, _requested(ctx), expected=expected))


def safety_backup(ctx: StepContext) -> None:
    take_backup(ctx, with_files=True, record_as="safety_backup")


def restore(ctx: StepContext) -> None:
    restore_files(ctx, _requested(ctx))


def migrate_after_restore(ctx: StepContext) -> None:
    ctx.run(bench.migrate(ctx.site, bench=ctx.bench))


def restore_safety_backup(ctx: StepContext) -> None:
    manifest = ctx.job.result.get("safety_backup")
    if not manifest:
        raise InvalidInput("no safety backup was recorded; cannot put the site back")
    files = manifest_files(manifest)
    verify_backup_files(ctx, files)
    restore_files(ctx, files)


STEPS: dict[str, StepSpec] = {
    "fetch-offsite": StepSpec(fetch, retries=3),
    "check-backup": StepSpec(check_backup),
    "maintenance-on": StepSpec(maintenance_on),
    "safety-backup": StepSpec(safety_backup),
    "restore": StepSpec(restore),
    "migrate": StepSpec(migrate_after_restore),
    "clear-cache": StepSpec(clear_cache),
    "scheduler-enable": StepSpec(scheduler_enable),
    "maintenance-off": StepSpec(maintenance_off),
    # recovery: the restore (or the migrate after it) failed -> put the safety backup back
    "restore-safety-backup": StepSpec(restore_safety_backup, recovery=True, then="recovered-maintenance-off"),
    "recovered-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
    # recovery: failed before the database was touched -> just bring the site back online
    "abort-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
    "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
}


def _on_failure(job: Job, step: str) -> str | None:
    if step in ("fetch-offsite", "check-backup"):
        return None  # nothing was touched
    if step in ("maintenance-on", "safety-backup"):
        return "abort-maintenance-off"
    if step in ("restore", "migrate"):
        return "restore-safety-backup"
    if step in ("clear-cache", "scheduler-enable"):
        return "maintenance-off"
    if step == "mark-attention":
        return None
    return "mark-attention"


def _on_cancel(job: Job, step: str | None) -> str | None:
    """Before the database is touched: back online. From the restore on: finish the chain."""
    if step in (None, "fetch-offsite", "check-backup"):
        return None
    if step in ("maintenance-on", "safety-backup"):
        return "abort-maintenance-off"
    return next((s.name for s in job.steps if s.state == "pending" and not STEPS[s.name].recovery), None)


def _final_state(job: Job) -> str:
    failed = {s.name for s in job.steps if s.state == "failed"}
    if not failed:
        return "succeeded"
    if failed <= {"restore", "migrate"} and job.step("recovered-maintenance-off").state == "success":
        return "recovered"
    return "failed"


register(
    Workflow(
        kind="restore",
        needs_site=True,
        plan=lambda params: list(STEPS),
        resolve=table_resolver("restore", STEPS),
        on_failure=_on_failure,
        on_cancel=_on_cancel,
        final_state=_final_state,
        validate=validate_restore,
    )
)
