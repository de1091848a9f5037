"""Migrate one site after a release — the runbook's chain, made safe.

Normal path::

    maintenance-on -> scheduler-pause -> wait-ready -> backup -> migrate -> clear-cache
    -> build-assets -> scheduler-resume -> maintenance-off

``bench migrate`` commits in phases: a failure midway leaves the database half-migrated. So a
database backup is taken right before it, and when migrate fails that backup is restored
automatically and the site brought back online; the job ends ``recovered`` with the migrate
output in its record. If the recovery fails too, the site is marked as needing attention and
stays in maintenance: no automated workflow touches it until an operator clears the mark.
A failure before the database is touched (maintenance, scheduler, readiness, backup) just
brings the site back online and fails the job. A site that does not exist fails the job at its
first step, with that reason, and is never marked.
"""

from __future__ import annotations

import time

from jerp_jobs import bench
from jerp_jobs.errors import CommandFailed
from jerp_jobs.jobs import Job
from jerp_jobs.operations.backup import take_backup
from jerp_jobs.operations.common import (
    build_assets,
    clear_cache,
    maintenance_off,
    maintenance_on,
    mark_attention,
    scheduler_pause,
    scheduler_resume,
)
from jerp_jobs.operations.restore import manifest_files, restore_verified, verify_backup_files
from jerp_jobs.workflow import StepContext, StepSpec, Workflow, register, table_resolver

#: how long to wait for the site's background jobs to drain, and how often to ask
READY_TIMEOUT_S = 600.0
READY_POLL_S = 5.0


def wait_ready(ctx: StepContext) -> None:
    deadline = time.monotonic() + float(ctx.params.get("ready_timeout", READY_TIMEOUT_S))
    poll = float(ctx.params.get("ready_poll", READY_POLL_S))
    while True:
        result = ctx.run(bench.ready_for_migration(ctx.site, bench=ctx.bench), check=False)
        if result.ok:
            return
        if time.monotonic() + poll > deadline:
            raise CommandFailed(
                f"{ctx.site} still has pending background jobs; not ready for migration after "
                f"{ctx.params.get('ready_timeout', READY_TIMEOUT_S)}s",
                exit_code=result.exit_code,
                output_tail=result.output,
            )
        time.sleep(poll)


def pre_migrate_backup(ctx: StepContext) -> None:
    take_backup(ctx, with_files=False, record_as="pre_migrate_backup")


def migrate(ctx: StepContext) -> None:
    ctx.run(bench.migrate(ctx.site, bench=ctx.bench))


def build_assets_once(ctx: StepContext) -> str | None:
    if not ctx.params.get("build_assets", True):
        return "skipped"  # a migrate-all builds once for the bench
    build_assets(ctx)
    return None


def restore_pre_migrate(ctx: StepContext) -> None:
    manifest = ctx.job.result["pre_migrate_backup"]
    files = manifest_files(manifest)
    verify_backup_files(ctx, files)
    restore_verified(ctx, files)
    ctx.record(recovered={"restored": files["db"], "reason": _migrate_error(ctx.runtime.store.get(ctx.job.id))})


def _migrate_error(job: Job) -> str:
    step = job.step("migrate")
    return f"migrate exited {step.exit_code}: {step.output[-2000:]}"


STEPS: dict[str, StepSpec] = {
    "maintenance-on": StepSpec(maintenance_on),
    "scheduler-pause": StepSpec(scheduler_pause),
    "wait-ready": StepSpec(wait_ready),
    "backup": StepSpec(pre_migrate_backup),
    "migrate": StepSpec(migrate),
    "clear-cache": StepSpec(clear_cache),
    "build-assets": StepSpec(build_assets_once, scope="bench"),
    "scheduler-resume": StepSpec(scheduler_resume),
    "maintenance-off": StepSpec(maintenance_off),
    # recovery after a failed migrate: put the pre-migrate database back, bring the site online
    "restore-pre-migrate": StepSpec(restore_pre_migrate, recovery=True, then="recovered-scheduler-resume"),
    "recovered-scheduler-resume": StepSpec(scheduler_resume, recovery=True, then="recovered-maintenance-off"),
    "recovered-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
    # a failure before the database was touched: back online, nothing to restore
    "abort-scheduler-resume": StepSpec(scheduler_resume, recovery=True, then="abort-maintenance-off"),
    "abort-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
    "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
}


def _on_failure(job: Job, step: str) -> str | None:
    if job.result.get("site_missing"):
        return None  # the site does not exist: nothing was touched, nothing to mark
    if step in ("maintenance-on", "scheduler-pause", "wait-ready", "backup"):
        return "abort-scheduler-resume"
    if step == "migrate":
        return "restore-pre-migrate"
    if step in ("clear-cache", "build-assets"):
        return "scheduler-resume"  # migrated: still bring it online; the job ends failed
    if step == "mark-attention":
        return None
    return "mark-attention"


def _on_cancel(job: Job, step: str | None) -> str | None:
    """Cancelled before migrate: bring the site back online. From migrate on: finish the chain
    (stopping between migrate and maintenance-off would leave the site down)."""
    if step in (None,):
        return None
    if step in ("maintenance-on", "scheduler-pause", "wait-ready", "backup"):
        return "abort-scheduler-resume"
    return next((s.name for s in job.steps if s.state == "pending" and not STEPS[s.name].recovery), None)


def _final_state(job: Job) -> str:
    failed = {s.name for s in job.steps if s.state == "failed"}
    if not failed:
        return "succeeded"
    if failed == {"migrate"} and job.step("recovered-maintenance-off").state == "success":
        return "recovered"
    return "failed"


register(
    Workflow(
        kind="migrate",
        needs_site=True,
        plan=lambda params: [name for name in STEPS if name != "build-assets" or params.get("build_assets", True)],
        resolve=table_resolver("migrate", STEPS),
        on_failure=_on_failure,
        on_cancel=_on_cancel,
        final_state=_final_state,
    )
)
