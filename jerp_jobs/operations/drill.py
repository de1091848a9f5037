"""Restore drill: prove that a site's latest off-site backup restores.

The latest verified off-site backup of SITE is downloaded (checksums verified, decrypted) into
a scratch site made for the drill (``drill-<job>.jerp-drill.invalid``: never a real domain),
restored there, and checked: the same tables with the same row counts as the manifest's
statistics (read from a dump of the restored copy), and ``frappe.ping`` answering through
bench. The scratch site is dropped, pass or fail, and its archived folder removed: a drill
leaves no copy of customer data behind. The outcome, with timings, goes in the job and in
``jerp:drills`` (site -> last drill), which the drill rotation reads to pick the sites drilled
longest ago.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jerp_jobs import bench, keys
from jerp_jobs.jobs import StepState
from jerp_jobs.operations import pointintime
from jerp_jobs.operations.common import site_exists
from jerp_jobs.operations.offsite import fetch_offsite, offsite_sites
from jerp_jobs.operations.restore import check_restored, verify_backup_files
from jerp_jobs.sites import db_name_for
from jerp_jobs.workflow import Routes, StepContext, StepSpec, Workflow, table_resolver

DRILLS = keys.DRILLS


def scratch_name(job_id: str) -> str:
    return f"drill-{job_id}.jerp-drill.invalid"


def make_scratch(ctx: StepContext) -> None:
    scratch = scratch_name(ctx.job.id)
    ctx.record(scratch=scratch, scratch_started=True)
    call = bench.new_site(
        scratch,
        db_root_password=ctx.settings.secret("mariadb_root_password"),
        admin_password=ctx.settings.secret("frappe_admin_password"),
        db_name=db_name_for(scratch),
        bench=ctx.bench,
    )
    ctx.run(call.argv, stdin=call.stdin, fence=scratch)


def fetch(ctx: StepContext) -> None:
    fetch_offsite(ctx, into_site=scratch_name(ctx.job.id))


def restore(ctx: StepContext) -> None:
    scratch = scratch_name(ctx.job.id)
    fetched = ctx.job.result["fetched"]
    files = fetched["files"]
    verify_backup_files(ctx, files, expected=fetched["sha256"], fence=scratch)
    call = bench.restore(
        scratch,
        files["db"],
        db_root_password=ctx.settings.secret("mariadb_root_password"),
        public_files=files.get("public_files"),
        private_files=files.get("private_files"),
        bench=ctx.bench,
    )
    ctx.run(call.argv, stdin=call.stdin, fence=scratch)


def verify(ctx: StepContext) -> None:
    check_restored(ctx, scratch_name(ctx.job.id), ctx.job.result["fetched"].get("stats"))


def drop_scratch(ctx: StepContext) -> str | None:
    """Drop the scratch site and remove its archived folder; records the drill's outcome."""
    passed = ctx.step == "drop-scratch"
    scratch = scratch_name(ctx.job.id)
    if ctx.job.result.get("scratch_started") and site_exists(ctx, scratch):
        call = bench.drop_site(scratch, db_root_password=ctx.settings.secret("mariadb_root_password"), bench=ctx.bench)
        ctx.run(call.argv, stdin=call.stdin, fence=scratch)
    ctx.run(["rm", "-rf", "--", f"archived/sites/{scratch}"], fence=scratch)
    if ctx.job.result.get("pitr_scratch"):
        pointintime.drop_drill_databases(ctx)
    _record_drill(ctx, passed=passed)
    return None


def _record_drill(ctx: StepContext, *, passed: bool) -> None:
    job = ctx.runtime.store.get(ctx.job.id)
    timings = {s.name: s.duration_s for s in job.steps if s.duration_s is not None}
    failed = [f"{s.name}: {s.error}" for s in job.steps if s.state == StepState.FAILED]
    outcome: dict[str, Any] = {
        "site": ctx.site,
        "job_id": ctx.job.id,
        "at": time.time(),
        "passed": passed,
        "backup": job.result.get("fetched", {}).get("timestamp"),
        "pitr": job.result.get("pitr_drill"),
        "timings_s": timings,
        "problems": failed,
    }
    ctx.record(drill=outcome)
    ctx.runtime.redis.hset(DRILLS, ctx.site, json.dumps(outcome, sort_keys=True))


def last_drills(client: Any) -> dict[str, dict[str, Any]]:
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in client.hgetall(DRILLS).items()}


def pick_for_rotation(rt: Any) -> list[str]:
    """The sites to drill this run: those with an off-site copy, drilled longest ago (never
    drilled first), ``ceil(sites / JERP_DRILL_RUNS_PER_QUARTER)`` of them, so that with one
    run a week every site is drilled at least once a quarter."""
    sites = offsite_sites(rt.redis)
    drills = last_drills(rt.redis)
    per_run = -(-len(sites) // rt.settings.drill_runs_per_quarter)
    ranked = sorted(sites, key=lambda s: (drills.get(s, {}).get("at", 0.0), s))
    return ranked[:per_run]


STEPS: dict[str, StepSpec] = {
    "make-scratch": StepSpec(make_scratch),
    "fetch": StepSpec(fetch, retries=3),
    "restore": StepSpec(restore),
    "verify": StepSpec(verify),
    "pitr": StepSpec(pointintime.drill),
    "drop-scratch": StepSpec(drop_scratch),
    "cleanup": StepSpec(drop_scratch, recovery=True, last=True),
}


#: any failure, and a cancel once the drill began, drops the scratch site (cleanup)
ROUTES = Routes(
    resolve=table_resolver("drill", STEPS),
    failure={**{name: "cleanup" for name in STEPS if name != "cleanup"}, "cleanup": None},
    cancel={None: None, **{name: "cleanup" for name in STEPS}},
)


def validate_drill(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    """A drill plans its point-in-time part (``pitr``) while point-in-time recovery is on."""
    out = {k: v for k, v in params.items() if k != "pitr"}
    if settings.pitr_on:
        out["pitr"] = True
    return out


DRILL = Workflow(
    kind="drill",
    needs_site=True,
    plan=lambda params: [name for name in STEPS if name != "pitr" or params.get("pitr")],
    validate=validate_drill,
    resolve=ROUTES.resolve,
    **ROUTES.hooks(),
)
