"""Offboard a customer: ``offboard`` (LGPD — the customer's data goes, on a documented schedule).

``jerpctl enqueue offboard SITE --dry-run`` runs the inventory alone: what would be deleted (the
site folder and its local backups, the database and its user, the proxy host, every off-site
backup but the final one, jerp-jobs' own records of the site) and what would be kept (the final
backup, until when). Nothing is changed. ``--confirm`` runs the whole chain::

    inventory -> maintenance-on -> scheduler-pause -> final-backup -> final-upload -> legal-hold
    -> drop-site -> remove-archive -> remove-proxy-host -> purge-offsite -> forget

- Nothing is deleted before a final backup (database and files) is taken, copied off-site and
  verified there, and its legal hold is written beside it (``<prefix>/<site>/legal-hold.json``:
  the backup's timestamp and ``until``, now + ``JERP_LEGAL_HOLD_DAYS``, signed with
  ``JERP_MANIFEST_KEY`` when set). A failure up to there brings the site back online and the
  job fails: the customer is still served.
- ``drop-site`` is bench's own: the database and its user are dropped, the site folder (its
  local backups included) is moved to ``archived/sites/``; ``remove-archive`` then deletes that
  archived folder, so no copy stays on the bench.
- The proxy host is deleted through Nginx Proxy Manager when it is configured; otherwise the step
  is skipped and says what to delete by hand.
- ``purge-offsite`` deletes every off-site backup of the site except the held one; ``forget``
  removes the site's backup indexes, drill record and attention mark from Redis and writes the
  audit entry ``site.offboarded``. The job record itself expires as every job record does.
- The held backup is deleted by the prune job (Beat's ``retention-prune``) once ``until`` has
  passed, with the audit entry ``site.legal-hold-expired``
  (:func:`jerp_jobs.operations.offsite.prune_offsite`).

A failure from ``drop-site`` on marks the site as needing attention: part of it is gone, and the
rest is finished by hand (docs/offboarding.md).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from jerp_jobs import audit, bench
from jerp_jobs.backupfiles import sites_root
from jerp_jobs.errors import ConfigError, InvalidInput
from jerp_jobs.freshness import LOCAL, OFFSITE
from jerp_jobs.integrations import npm
from jerp_jobs.jobs import Job, StepState
from jerp_jobs.keys import BACKUP_SITES
from jerp_jobs.log import get_logger
from jerp_jobs.offsite import offsite_stamp
from jerp_jobs.operations.backup import take_backup
from jerp_jobs.operations.common import (
    maintenance_off,
    maintenance_on,
    mark_attention,
    scheduler_pause,
    scheduler_resume,
    site_exists,
)
from jerp_jobs.operations.drill import DRILLS
from jerp_jobs.operations.offsite import store_for, upload
from jerp_jobs.sitestate import ATTENTION
from jerp_jobs.workflow import GO_ON, Routes, StepContext, StepSpec, Workflow, table_resolver

log = get_logger(__name__)

KIND = "offboard"
ARCHIVE = "archived/sites"
#: the steps that run while the site is still whole: a failure there only brings it back online
BEFORE_DROP = ("maintenance-on", "scheduler-pause", "final-backup", "final-upload", "legal-hold")
DAY = 86400


# -- what would go ------------------------------------------------------------------------------


def inventory(ctx: StepContext) -> None:
    site, s = ctx.site, ctx.settings
    if not site_exists(ctx, site):
        ctx.record(site_missing=True)
        raise InvalidInput(f"site {site} does not exist in the bench (no sites/{site}/site_config.json); nothing was changed")
    config = _site_config(ctx)
    backups = ctx.run(["find", f"sites/{site}/private/backups", "-maxdepth", "1", "-type", "f", "-printf", "%s %f\\n"],
                      check=False)
    local = [line.split(" ", 1) for line in backups.output.splitlines() if " " in line] if backups.ok else []
    offsite = [offsite_stamp(m) for m in store_for(ctx).list_backups(site)] if s.s3_bucket else []
    found = {
        "site_folder": f"sites/{site} (moved by bench drop-site to {ARCHIVE}/, then deleted)",
        "database": config.get("db_name"),
        "database_user": config.get("db_user") or config.get("db_name"),
        "local_backup_files": len(local),
        "local_backup_bytes": sum(int(size) for size, _ in local if size.isdigit()),
        "offsite_backups": offsite,
        "proxy_host": _proxy_host(ctx),
        "redis": [LOCAL + site, OFFSITE + site, ATTENTION + site, f"{DRILLS} [{site}]"],
        "kept": f"the final backup, off-site under a legal hold of {s.legal_hold_days} days "
                f"(until {time.strftime('%Y-%m-%d', time.gmtime(time.time() + s.legal_hold_days * DAY))} UTC)",
    }
    ctx.record(inventory=found)
    ctx.output.append(f"will delete: site folder and {len(local)} local backup files, database {found['database']} "
                      f"and its user, {len(offsite)} off-site backups, proxy host {found['proxy_host']}, "
                      f"jerp-jobs' records of {site}")
    ctx.output.append(f"will keep: {found['kept']}")
    if ctx.params.get("dry_run"):
        ctx.output.append("dry run: nothing was changed")


def _site_config(ctx: StepContext) -> dict[str, Any]:
    """The site's config read by the worker itself (never through a command: its output is logged
    and recorded, and the file holds the database password); only names are kept."""
    root = sites_root(ctx.settings)
    try:
        config = json.loads((root / ctx.site / "site_config.json").read_text(encoding="utf-8")) if root else {}
    except (OSError, ValueError):
        config = {}
    return {k: config[k] for k in ("db_name", "db_user") if isinstance(config, dict) and k in config}


def _proxy_host(ctx: StepContext) -> str:
    client = _npm(ctx)
    if client is None:
        return "unknown (Nginx Proxy Manager is not configured: delete it by hand)"
    host = client.find_proxy_host(ctx.site)
    return f"NPM proxy host {host['id']}" if host else "none in NPM"


def _npm(ctx: StepContext) -> Any:
    s = ctx.settings
    if not (s.npm_url and s.npm_identity and s.npm_secret):
        return None
    return npm.NpmClient(s.npm_url, s.npm_identity, s.secret("npm_secret"))


# -- the final backup and its hold -------------------------------------------------------------


def final_backup(ctx: StepContext) -> None:
    take_backup(ctx, with_files=True)


def legal_hold(ctx: StepContext) -> None:
    offsite = ctx.job.result.get("offsite") or {}
    if not offsite.get("verified"):
        raise InvalidInput("the final backup has no verified off-site copy: nothing will be deleted")
    now = time.time()
    hold = {
        "site": ctx.site, "timestamp": offsite_stamp(offsite), "job_id": ctx.job.id, "reason": "offboarded",
        "offboarded_at": round(now, 3), "until": round(now + ctx.settings.legal_hold_days * DAY, 3),
        "days": ctx.settings.legal_hold_days,
    }
    store = store_for(ctx)
    store.put_legal_hold(ctx.site, hold)
    if store.get_legal_hold(ctx.site) is None:  # read back: deletions follow only a hold that is there
        raise InvalidInput(f"the legal hold of {ctx.site} could not be read back: nothing will be deleted")
    ctx.record(legal_hold=hold)
    ctx.output.append(f"final backup {hold['timestamp']} held until "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(hold['until']))} UTC")


# -- deletion -----------------------------------------------------------------------------------


def drop_site(ctx: StepContext) -> str | None:
    """bench drop-site (database, its user; the folder moved to the archive), no backup of bench's
    own (the final backup is taken). The archived folder's name is recorded for remove-archive."""
    before = _archived(ctx)
    if not site_exists(ctx, ctx.site):
        if ctx.job.result.get("archived_as"):
            return StepState.SKIPPED  # dropped by an earlier attempt of this step
        raise InvalidInput(f"site {ctx.site} is no longer in the bench, and this job did not drop it")
    call = bench.drop_site(ctx.site, db_root_password=ctx.settings.secret("mariadb_root_password"), bench=ctx.bench)
    ctx.run(call.argv, stdin=call.stdin)
    new = sorted(set(_archived(ctx)) - set(before))
    if site_exists(ctx, ctx.site) or len(new) != 1:
        raise InvalidInput(f"bench drop-site {ctx.site} did not move the site to {ARCHIVE}/ "
                           f"(new there: {', '.join(new) or 'nothing'})")
    ctx.record(archived_as=f"{ARCHIVE}/{new[0]}")
    return None


def _archived(ctx: StepContext) -> list[str]:
    """Folders of the archive that bench may have made for this site: ``SITE``, ``SITE1``, ``SITE2``…"""
    result = ctx.run(["find", ARCHIVE, "-mindepth", "1", "-maxdepth", "1", "-type", "d", "-printf", "%f\\n"],
                     check=False)
    if not result.ok:
        return []
    mine = re.compile(re.escape(ctx.site) + r"\d*")
    return [name for name in result.output.splitlines() if mine.fullmatch(name.strip())]


def remove_archive(ctx: StepContext) -> str | None:
    archived = ctx.job.result.get("archived_as")
    if not archived:
        return StepState.SKIPPED
    ctx.run(["rm", "-rf", "--one-file-system", "--", archived])
    if ctx.run(["test", "-e", archived], check=False).ok:
        raise InvalidInput(f"{archived} is still there after rm")
    ctx.output.append(f"{archived} deleted")
    return None


def remove_proxy_host(ctx: StepContext) -> str | None:
    client = _npm(ctx)
    if client is None:
        ctx.record(proxy_host={"removed": False, "manual": f"delete the proxy host of {ctx.site} in Nginx Proxy Manager"})
        ctx.output.append(f"Nginx Proxy Manager is not configured: delete the proxy host of {ctx.site} by hand")
        return StepState.SKIPPED
    host = client.delete_proxy_host(ctx.site)
    ctx.record(proxy_host={"removed": host is not None, "npm_id": host.get("id") if host else None})
    return None


def purge_offsite(ctx: StepContext) -> None:
    store = store_for(ctx)
    held = ctx.job.result["legal_hold"]["timestamp"]
    deleted = []
    for manifest in store.list_backups(ctx.site):
        stamp = offsite_stamp(manifest)
        if stamp != held:
            store.delete_backup(ctx.site, stamp)
            deleted.append(stamp)
    ctx.record(offsite_deleted=deleted)
    ctx.output.append(f"deleted {len(deleted)} off-site backups; kept {held} under its legal hold")


def forget(ctx: StepContext) -> None:
    r, site = ctx.runtime.redis, ctx.site
    pipe = r.pipeline()
    pipe.delete(LOCAL + site, OFFSITE + site, ATTENTION + site)
    pipe.srem(BACKUP_SITES, site)
    pipe.hdel(DRILLS, site)
    pipe.execute()
    hold = ctx.job.result["legal_hold"]
    audit.record(r, actor=f"job {ctx.job.id}", action="site.offboarded", job_id=ctx.job.id, kind=KIND, site=site,
                 detail=f"final backup {hold['timestamp']} held until "
                        f"{time.strftime('%Y-%m-%d', time.gmtime(hold['until']))} UTC",
                 days=ctx.settings.audit_days)


STEPS: dict[str, StepSpec] = {
    "inventory": StepSpec(inventory),
    "maintenance-on": StepSpec(maintenance_on),
    "scheduler-pause": StepSpec(scheduler_pause),
    "final-backup": StepSpec(final_backup),
    "final-upload": StepSpec(upload),
    "legal-hold": StepSpec(legal_hold),
    "drop-site": StepSpec(drop_site),
    "remove-archive": StepSpec(remove_archive),
    "remove-proxy-host": StepSpec(remove_proxy_host),
    "purge-offsite": StepSpec(purge_offsite),
    "forget": StepSpec(forget),
    # before anything was deleted: the customer is still served
    "abort-scheduler-resume": StepSpec(scheduler_resume, recovery=True, then="abort-maintenance-off"),
    "abort-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
    "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
}


def _plan(params: dict[str, Any]) -> list[str]:
    return ["inventory"] if params.get("dry_run") else list(STEPS)


#: the steps after the drop: once it is done, the offboarding goes on to its end
AFTER_DROP = ("drop-site", "remove-archive", "remove-proxy-host", "purge-offsite", "forget")
ROUTES = Routes(
    resolve=table_resolver(KIND, STEPS),
    # a failed step -> where the job goes (None: it ends there)
    failure={
        "inventory": None,
        # before anything was deleted: back online
        **{name: "abort-scheduler-resume" for name in BEFORE_DROP},
        **{name: "mark-attention" for name in (*AFTER_DROP, "abort-scheduler-resume", "abort-maintenance-off")},
        "mark-attention": None,
    },
    # the last step that ended -> where a cancelled job goes: before the drop, back online; from
    # the drop on, finish the chain
    cancel={
        None: None,
        "inventory": None,
        **{name: "abort-scheduler-resume" for name in BEFORE_DROP},
        **{name: GO_ON for name in (*AFTER_DROP, "abort-scheduler-resume", "abort-maintenance-off", "mark-attention")},
    },
)


def _on_failure(job: Job, step: str) -> str | None:
    if job.result.get("site_missing"):
        return None  # the site does not exist: nothing was touched, nothing to mark
    return ROUTES.on_failure(job, step)


def _cancel_outcome(job: Job) -> str:
    if any(s.name == "drop-site" and s.state == StepState.SUCCESS for s in job.steps):
        return "the offboarding was finished"
    return "the site was left online"


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    dry_run, confirm = bool(params.get("dry_run")), bool(params.get("confirm"))
    if dry_run and confirm:
        raise InvalidInput("offboard takes --dry-run or --confirm, not both")
    if not dry_run and not confirm:
        raise InvalidInput(f"offboarding deletes {site}, its database and its backups: run it with --dry-run "
                           "to see what goes, then with --confirm")
    if not settings.s3_bucket:
        raise ConfigError("JERP_S3_BUCKET", "is not set; offboarding keeps a final off-site backup under a legal hold")
    root = sites_root(settings)
    if root is not None and site and not (root / site / "site_config.json").is_file():
        raise InvalidInput(f"site {site} does not exist in the bench (no sites/{site}/site_config.json)")
    return {"dry_run": True} if dry_run else {"confirm": True, "offsite": True}


OFFBOARD = Workflow(
    kind=KIND,
    needs_site=True,
    plan=_plan,
    resolve=ROUTES.resolve,
    validate=_validate,
    **ROUTES.hooks(on_failure=_on_failure),
    cancel_outcome=_cancel_outcome,
    site_must_exist=lambda params: True,
)
