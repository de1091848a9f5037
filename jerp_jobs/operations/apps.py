"""Add an app to an existing site, or remove one: ``install-app`` and ``uninstall-app``.

The runbook's step "install the additional app on each existing site" (an app added to
``apps.json``, built into the image, deployed): the site is changed like a migrate changes it,
with the same safety. Normal path::

    maintenance-on -> scheduler-pause -> backup -> install-app | uninstall-app -> clear-cache
    -> scheduler-resume -> maintenance-off

- A database backup is taken right before the change. Installing an app creates its tables and
  runs its install hooks; uninstalling one deletes its DocTypes and their data. Either can stop
  half-way, so a failure restores that backup and brings the site back online. The job then
  ends ``recovered``. If the restore fails too, the site stays in maintenance with an attention
  mark.
- Nothing is taken on trust from the exit code. ``bench install-app`` exits 0 when the app is
  already installed. ``bench uninstall-app`` exits 0 without removing anything when the app is
  not installed, or when another installed app requires it ("App X is a dependency of Y.
  Uninstall Y first."). So the change step reads the site's installed apps (Frappe's
  ``installed_apps`` global) before and after:
  - the app already present (install) or already absent (uninstall) ends the step ``skipped``;
  - an app that is still there after an uninstall fails the step with bench's reason. Nothing
    was removed, so nothing is restored.
- A failure before the database is touched (maintenance, scheduler, backup) brings the site
  back online and fails the job. A missing site fails at the first step, unmarked.

``uninstall-app`` runs bench with ``--yes --no-backup``: the workflow's own verified backup
replaces bench's unverified one. ``frappe`` itself is never uninstalled. An app to install must
be in the bench (``sites/apps.txt``, i.e. built into the image). Both are checked at enqueue when
the worker's sites folder is visible there, and again by the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jerp_jobs import bench
from jerp_jobs.backupfiles import sites_root
from jerp_jobs.errors import CommandFailed, InvalidInput
from jerp_jobs.jobs import Job, StepState
from jerp_jobs.operations.backup import take_backup
from jerp_jobs.operations.common import (
    bench_apps,
    clear_cache,
    maintenance_off,
    maintenance_on,
    mark_attention,
    record_site_as_found,
    scheduler_pause,
    scheduler_resume,
)
from jerp_jobs.operations.restore import (
    manifest_files,
    restore_verified,
    verify_backup_files,
)
from jerp_jobs.workflow import GO_ON, Routes, StepContext, StepSpec, Workflow, table_resolver

#: the steps that run before the site's database is changed: a failure there only brings it back
BEFORE_CHANGE = ("maintenance-on", "scheduler-pause", "backup")


def start(ctx: StepContext) -> None:
    record_site_as_found(ctx)
    maintenance_on(ctx)


def pre_change_backup(ctx: StepContext) -> None:
    take_backup(ctx, with_files=False, record_as="pre_change_backup")


def site_apps(ctx: StepContext) -> list[str]:
    """The site's installed apps as install-app and uninstall-app keep them (``installed_apps``)."""
    return bench.parse_installed_apps(ctx.run(bench.installed_apps_global(ctx.site, bench=ctx.bench)).output)


def install(ctx: StepContext) -> str | None:
    app = ctx.params["app"]
    if app not in bench_apps(ctx):
        ctx.record(app_change={"app": app, "action": "install", "changed": False, "refused": "not in the bench"})
        raise InvalidInput(f"app {app} is not in this bench (sites/apps.txt): add it to apps.json and deploy "
                           "the image that has it first")
    if app in site_apps(ctx):
        ctx.output.append(f"{app} is already installed on {ctx.site}: nothing to do")
        ctx.record(app_change={"app": app, "action": "install", "changed": False})
        return StepState.SKIPPED
    argv = bench.install_app(ctx.site, app, bench=ctx.bench)
    result = ctx.run(argv, check=False)
    if not result.ok:
        raise CommandFailed(f"{' '.join(argv)} exited {result.exit_code}", exit_code=result.exit_code,
                            output_tail=result.output)
    if app not in site_apps(ctx):
        raise CommandFailed(f"bench install-app {app} exited 0 but {app} is not among {ctx.site}'s installed apps",
                            exit_code=result.exit_code, output_tail=result.output)
    ctx.record(app_change={"app": app, "action": "install", "changed": True})
    return None


def uninstall(ctx: StepContext) -> str | None:
    app = ctx.params["app"]
    installed = site_apps(ctx)
    if app in installed and app not in bench_apps(ctx):
        # bench cannot import the app's code and refuses (exit 1) before changing anything
        ctx.record(app_change={"app": app, "action": "uninstall", "changed": False, "refused": "not in the bench"})
        raise InvalidInput(f"app {app} is installed on {ctx.site} but not in this bench (sites/apps.txt): "
                           "bench cannot uninstall an app whose code it lacks; deploy an image that has it first")
    if app not in installed:
        ctx.output.append(f"{app} is not installed on {ctx.site}: nothing to do")
        ctx.record(app_change={"app": app, "action": "uninstall", "changed": False})
        return StepState.SKIPPED
    argv = bench.uninstall_app(ctx.site, app, bench=ctx.bench)
    result = ctx.run(argv, check=False)
    if not result.ok:
        raise CommandFailed(f"{' '.join(argv)} exited {result.exit_code}", exit_code=result.exit_code,
                            output_tail=result.output)
    if app in site_apps(ctx):
        refusal = bench.uninstall_refusal(result.output)
        ctx.record(app_change={"app": app, "action": "uninstall", "changed": False, "refused": refusal})
        raise CommandFailed(
            f"{app} is still installed on {ctx.site}: "
            + (f"bench refused: {refusal}" if refusal else "bench uninstall-app exited 0 without removing it")
            + "; nothing was removed", exit_code=1, output_tail=result.output)
    ctx.record(app_change={"app": app, "action": "uninstall", "changed": True})
    return None


def restore_pre_change(ctx: StepContext) -> None:
    manifest = ctx.job.result["pre_change_backup"]
    files = manifest_files(manifest)
    verify_backup_files(ctx, files)
    restore_verified(ctx, files)
    step = ctx.runtime.store.get(ctx.job.id).step(_change_step(ctx.job))
    ctx.record(recovered={"restored": files["db"], "reason": f"{step.name}: {step.error or ''}"[-2000:]})


def _change_step(job: Job) -> str:
    return "install-app" if job.kind == "install-app" else "uninstall-app"


def _steps(change: str, fn: Any) -> dict[str, StepSpec]:
    return {
        "maintenance-on": StepSpec(start),
        "scheduler-pause": StepSpec(scheduler_pause),
        "backup": StepSpec(pre_change_backup),
        change: StepSpec(fn),
        "clear-cache": StepSpec(clear_cache),
        "scheduler-resume": StepSpec(scheduler_resume),
        "maintenance-off": StepSpec(maintenance_off),
        # the change failed: put the database back as it was before it, bring the site online
        "restore-pre-change": StepSpec(restore_pre_change, recovery=True, then="recovered-scheduler-resume"),
        "recovered-scheduler-resume": StepSpec(scheduler_resume, recovery=True, then="recovered-maintenance-off"),
        "recovered-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
        # a failure before the database was touched, or a change that changed nothing: back online
        "abort-scheduler-resume": StepSpec(scheduler_resume, recovery=True, then="abort-maintenance-off"),
        "abort-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
        "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
    }


def _routes(kind: str, table: dict[str, StepSpec]) -> Routes:
    """The routes of install-app or uninstall-app, whose change step is ``kind``."""
    return Routes(
        resolve=table_resolver(kind, table),
        # a failed step -> where the job goes (None: it ends there)
        failure={
            # before the database was touched: back online
            **{name: "abort-scheduler-resume" for name in BEFORE_CHANGE},
            kind: "restore-pre-change",
            "clear-cache": "scheduler-resume",  # changed: still bring it online; the job ends failed
            **{name: "mark-attention" for name in ("scheduler-resume", "maintenance-off", "restore-pre-change",
                                                   "recovered-scheduler-resume", "recovered-maintenance-off",
                                                   "abort-scheduler-resume", "abort-maintenance-off")},
            "mark-attention": None,
        },
        # refused as root before anything ran
        by_class={("maintenance-on", bench.RUN_AS_ROOT): None},
        # the last step that ended -> where a cancelled job goes: before the change, back online;
        # from the change on, finish the chain (stopping half-way would leave the site down)
        cancel={
            None: None,
            **{name: "abort-scheduler-resume" for name in BEFORE_CHANGE},
            **{name: GO_ON for name in table if name not in BEFORE_CHANGE},
        },
        recoverable=frozenset({kind}),
        recovered_by="recovered-maintenance-off",
    )


def _on_failure(routes: Routes) -> Callable[[Job, str], str | None]:
    def on_failure(job: Job, step: str) -> str | None:
        if job.result.get("site_missing"):
            return None  # the site does not exist: nothing was touched, nothing to mark
        if step == _change_step(job) and (job.result.get("app_change") or {}).get("changed") is False:
            return "abort-scheduler-resume"  # refused before anything changed: nothing to restore
        return routes.on_failure(job, step)

    return on_failure


def _validate(kind: str) -> Any:
    def validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
        app = params.get("app")
        if not app:
            raise InvalidInput(f"{kind} needs an app name")
        bench.validate_app_name(app)
        if kind == "uninstall-app" and app == "frappe":
            raise InvalidInput("frappe cannot be uninstalled from a site (drop the site instead)")
        root = sites_root(settings)
        if kind == "install-app" and root is not None and (root / "apps.txt").is_file():
            present = _apps_txt(root)
            if app not in present:
                raise InvalidInput(f"app {app} is not in this bench (sites/apps.txt lists {', '.join(sorted(present))}): "
                                   "add it to apps.json and deploy the image that has it first")
        return {"app": app}

    return validate


def _apps_txt(root: Any) -> set[str]:
    return set(bench.parse_apps_txt((root / "apps.txt").read_text(encoding="utf-8", errors="replace")))


#: what install-app (and install-app-all, for its children) accepts
validate_install_app = _validate("install-app")


def _app_workflow(kind: str, fn: Any) -> Workflow:
    table = _steps(kind, fn)
    routes = _routes(kind, table)
    return Workflow(
        kind=kind,
        needs_site=True,
        plan=lambda params: list(table),
        resolve=routes.resolve,
        validate=_validate(kind),
        **routes.hooks(on_failure=_on_failure(routes)),
        site_must_exist=lambda params: True,
    )


INSTALL_APP = _app_workflow("install-app", install)
UNINSTALL_APP = _app_workflow("uninstall-app", uninstall)
