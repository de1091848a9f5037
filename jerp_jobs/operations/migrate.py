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

Recovery decides from the class of the failure (:func:`jerp_jobs.bench.classify_failure`,
recorded as ``result.failure``):

- Another process holds Frappe's ``bench_migrate`` lock (an operator's migrate, a deploy
  script: never this platform, whose fence keeps its own commands on a site apart). The first
  step looks for such a holder before it changes anything and waits for it, at most
  ``JERP_FOREIGN_LOCK_WAIT`` seconds; the migrate step, meeting the lock all the same, waits
  too and then migrates. When the wait ends with the lock still held, nothing is restored —
  the other process is still migrating that database — and the site's maintenance mode and
  scheduler are put back as the job found them (``result.site_as_found``, read before its
  first change): the job ends ``failed``, "another process holds bench_migrate", unmarked.
- The first step refused because the worker runs as root with no bench user (``run-as-root``:
  the local executor refuses every command, or bench itself refuses): nothing ran, and the
  recovery would be refused alike. The job fails naming the fix; the site is not marked, so
  once the worker is set right (JERP_BENCH_USER) the same job runs.
- Migrate refused to start because Redis is down (``services-down``): nothing was migrated,
  nothing is restored; the site is brought back online.
- Readiness: when the site has queued background jobs and ``bench doctor`` shows no Frappe
  worker online, nothing will ever run them: wait-ready fails at once with that reason
  (``JERP_READY_WITHOUT_WORKERS=fail``) or goes on (``proceed``).

Assets: ``bench build`` runs in the build-assets step unless the job says ``--no-build``,
``JERP_BUILD_ASSETS=never``, or ``auto`` finds the assets come from the image; the step then
ends ``skipped`` and ``result.assets`` says why.
"""

from __future__ import annotations

import time

from typing import Any

from jerp_jobs import bench
from jerp_jobs.errors import CommandFailed, ForeignLockHeld, InvalidInput, NoWorkers, OutputParseError
from jerp_jobs.jobs import Job, StepState
from jerp_jobs.log import get_logger
from jerp_jobs.operations.backup import take_backup
from jerp_jobs.operations.common import (
    assets_skip_reason,
    build_assets,
    clear_cache,
    foreign_lock_wait,
    maintenance_as_found,
    maintenance_off,
    maintenance_on,
    mark_attention,
    record_site_as_found,
    scheduler_as_found,
    scheduler_pause,
    scheduler_resume,
    wait_for_frappe_lock,
)
from jerp_jobs.operations.restore import manifest_files, restore_verified, verify_backup_files
from jerp_jobs.workflow import GO_ON, CancelRoute, Routes, StepContext, StepSpec, Workflow, table_resolver

log = get_logger(__name__)

#: how long to wait for the site's background jobs to drain, and how often to ask
READY_TIMEOUT_S = 600.0
READY_POLL_S = 5.0

#: the Frappe lock ``bench migrate`` takes (``filelock("bench_migrate", timeout=1)``)
MIGRATE_LOCK = "bench_migrate"


def _foreign_holder_message(site: str, waited: float, *, changed: bool) -> str:
    after = ("nothing was changed" if not changed else
             "nothing was restored; maintenance mode and the scheduler are put back as this job found them")
    return (f"another process holds bench_migrate on {site} (a migrate outside this platform); waited {waited:g}s "
            f"for it to finish; {after}")


def start(ctx: StepContext) -> None:
    """Record the site as found, wait for a foreign migrate to end, then maintenance on.

    Nothing is changed while another process holds ``bench_migrate``: after
    JERP_FOREIGN_LOCK_WAIT seconds the job fails here, leaving the site exactly as it was.
    """
    record_site_as_found(ctx)
    wait, poll = foreign_lock_wait(ctx)
    if not wait_for_frappe_lock(ctx, MIGRATE_LOCK, site=ctx.site, deadline=time.monotonic() + wait, poll=poll):
        raise ForeignLockHeld(_foreign_holder_message(ctx.site, wait, changed=False), lock=MIGRATE_LOCK,
                              waited_s=wait)
    maintenance_on(ctx)


def _workers_online(ctx: StepContext) -> int | None:
    """Frappe RQ workers online (``bench doctor``), or None when that cannot be told."""
    result = ctx.run(bench.doctor(ctx.site, bench=ctx.bench), check=False)
    if not result.ok:
        return None
    try:
        return bench.parse_workers_online(result.output)
    except OutputParseError:
        return None


def wait_ready(ctx: StepContext) -> None:
    """Wait, bounded, until the site has no queued background job.

    Queued jobs with no Frappe worker online never drain (``bench migrate`` itself queues one,
    the search index rebuild): that is told at once, not after the whole wait — the step fails
    naming the cause, or goes on when JERP_READY_WITHOUT_WORKERS=proceed.
    """
    deadline = time.monotonic() + float(ctx.params.get("ready_timeout", READY_TIMEOUT_S))
    poll = float(ctx.params.get("ready_poll", READY_POLL_S))
    while True:
        result = ctx.run(bench.ready_for_migration(ctx.site, bench=ctx.bench), check=False)
        if result.ok:
            return
        if _workers_online(ctx) == 0:
            reason = (f"{ctx.site} has queued background jobs and no Frappe worker is online to run them "
                      "(bench doctor: Workers online: 0); start the queue workers")
            if ctx.settings.ready_without_workers == "proceed":
                ctx.output.append(f"{reason}; going on (JERP_READY_WITHOUT_WORKERS=proceed)")
                ctx.record(ready={"proceeded": True, "reason": reason})
                log.warning("migrate.ready_without_workers", job_id=ctx.job.id, site=ctx.site)
                return
            raise NoWorkers(f"{reason}; not migrating (JERP_READY_WITHOUT_WORKERS=fail)",
                            exit_code=result.exit_code, output_tail=result.output)
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
    """``bench migrate``; when another process holds ``bench_migrate``, wait for it (at most
    JERP_FOREIGN_LOCK_WAIT seconds) and migrate then. Still held: :class:`ForeignLockHeld`."""
    argv = bench.migrate(ctx.site, bench=ctx.bench)
    deadline: float | None = None
    while True:
        result = ctx.run(argv, check=False)
        if result.ok:
            return
        failure = bench.classify_failure(result.exit_code, result.output)
        if failure.kind != bench.LOCK_HELD_BY_OTHER or failure.lock != MIGRATE_LOCK:
            raise CommandFailed(f"{' '.join(argv)} exited {result.exit_code}", exit_code=result.exit_code,
                                output_tail=result.output, failure=failure)
        wait, poll = foreign_lock_wait(ctx)
        if deadline is None:
            deadline = time.monotonic() + wait
            ctx.record(foreign_lock={"lock": MIGRATE_LOCK, "path": failure.lock_path, "since": time.time()})
            log.warning("migrate.foreign_lock", job_id=ctx.job.id, site=ctx.site, wait_s=wait)
        ctx.output.append(f"another process holds {MIGRATE_LOCK}: waiting for it (at most {wait:g}s in all)")
        if not wait_for_frappe_lock(ctx, MIGRATE_LOCK, site=ctx.site, deadline=deadline, poll=poll):
            raise ForeignLockHeld(_foreign_holder_message(ctx.site, wait, changed=True), lock=MIGRATE_LOCK,
                                  waited_s=wait, exit_code=result.exit_code, output_tail=result.output,
                                  lock_path=failure.lock_path)


def build_assets_once(ctx: StepContext) -> str | None:
    if not ctx.params.get("build_assets", True):
        return StepState.SKIPPED  # a migrate-all builds once for the bench
    reason = assets_skip_reason(ctx)
    if reason is not None:
        ctx.output.append(f"assets not built: {reason}")
        ctx.record(assets={"built": False, "reason": reason})
        return StepState.SKIPPED
    build_assets(ctx)
    ctx.record(assets={"built": True})
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
    "maintenance-on": StepSpec(start),
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
    # another process kept bench_migrate: nothing restored, the site put back as the job found it
    "as-found-scheduler": StepSpec(scheduler_as_found, recovery=True, then="as-found-maintenance"),
    "as-found-maintenance": StepSpec(maintenance_as_found, recovery=True, last=True),
    "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
}


#: a failed step -> where the job goes (None: it ends there)
FAILURE_ROUTES: dict[str, str | None] = {
    # before the database was touched: back online, nothing to restore
    "maintenance-on": "abort-scheduler-resume",
    "scheduler-pause": "abort-scheduler-resume",
    "wait-ready": "abort-scheduler-resume",
    "backup": "abort-scheduler-resume",
    "migrate": "restore-pre-migrate",
    # migrated: still bring it online; the job ends failed
    "clear-cache": "scheduler-resume",
    "build-assets": "scheduler-resume",
    "scheduler-resume": "mark-attention",
    "maintenance-off": "mark-attention",
    "restore-pre-migrate": "mark-attention",
    "recovered-scheduler-resume": "mark-attention",
    "recovered-maintenance-off": "mark-attention",
    "abort-scheduler-resume": "mark-attention",
    "abort-maintenance-off": "mark-attention",
    "as-found-scheduler": "mark-attention",
    "as-found-maintenance": "mark-attention",
    "mark-attention": None,
}
#: (failed step, class of its bench failure) -> where the job goes, before FAILURE_ROUTES
FAILURE_BY_CLASS: dict[tuple[str, str], str | None] = {
    # a foreign migrate runs: the job changed nothing and leaves the site to it
    ("maintenance-on", bench.LOCK_HELD_BY_OTHER): None,
    # refused as root before anything ran: nothing to bring back (it would be refused too)
    ("maintenance-on", bench.RUN_AS_ROOT): None,
    # never restore under another process's migrate
    ("migrate", bench.LOCK_HELD_BY_OTHER): "as-found-scheduler",
    # migrate stopped before it touched the database
    ("migrate", bench.SERVICES_DOWN): "abort-scheduler-resume",
}
#: the last step that ended -> where a cancelled job goes: before migrate, back online; from
#: migrate on, finish the chain (stopping between migrate and maintenance-off would leave the site down)
CANCEL_ROUTES: dict[str | None, CancelRoute] = {
    None: None,
    "maintenance-on": "abort-scheduler-resume",
    "scheduler-pause": "abort-scheduler-resume",
    "wait-ready": "abort-scheduler-resume",
    "backup": "abort-scheduler-resume",
    **{name: GO_ON for name in STEPS if name not in ("maintenance-on", "scheduler-pause", "wait-ready", "backup")},
}
ROUTES = Routes(
    resolve=table_resolver("migrate", STEPS),
    failure=FAILURE_ROUTES,
    by_class=FAILURE_BY_CLASS,
    cancel=CANCEL_ROUTES,
    recoverable=frozenset({"migrate"}),
    recovered_by="recovered-maintenance-off",
)


def _on_failure(job: Job, step: str) -> str | None:
    if job.result.get("site_missing"):
        return None  # the site does not exist: nothing was touched, nothing to mark
    return ROUTES.on_failure(job, step)


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    out = dict(params)
    for flag in ("no_build", "build_assets"):
        if flag in out and not isinstance(out[flag], bool):
            raise InvalidInput(f"{flag} must be true or false, not {out[flag]!r}")
    for number in ("lock_wait", "lock_poll", "ready_timeout", "ready_poll"):
        if number in out:
            try:
                ok = float(out[number]) >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InvalidInput(f"{number} must be a number of seconds, not {out[number]!r}")
    return out


MIGRATE = Workflow(
    kind="migrate",
    needs_site=True,
    plan=lambda params: [name for name in STEPS if name != "build-assets" or params.get("build_assets", True)],
    resolve=ROUTES.resolve,
    validate=_validate,
    **ROUTES.hooks(on_failure=_on_failure),
    site_must_exist=lambda params: True,
)
