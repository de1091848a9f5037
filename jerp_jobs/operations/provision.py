"""Provision a customer site: the runbook's ``make site-<FQDN>``.

Steps: check the site is new -> ``new-site`` (DB root and admin passwords from the worker's
environment, login scope ``%``, a DB name derived from the site) -> one ``install-app`` step per
app of ``JERP_INSTALL_APPS`` (an app the bench lacks is skipped, not an error) -> scheduler
enabled -> a first backup -> the Nginx Proxy Manager proxy host (created through NPM's API when
``NPM_URL``/``NPM_IDENTITY``/``NPM_SECRET`` are set; otherwise recorded as what the operator
must create). Any failure after the site started to be made drops it again: no half-made site
is left behind.
"""

from __future__ import annotations

from typing import Any

from jerp_jobs import bench
from jerp_jobs.errors import InvalidInput
from jerp_jobs.integrations import npm
from jerp_jobs.jobs import Job, StepState
from jerp_jobs.operations.backup import take_backup
from jerp_jobs.operations.common import (
    bench_apps,
    mark_attention,
    scheduler_enable,
    site_exists,
)
from jerp_jobs.sites import APP_NAMES, db_name_for, refuse_app_name
from jerp_jobs.workflow import Routes, StepContext, StepSpec, Workflow

APP_STEP = "install-app:"


def check_new(ctx: StepContext) -> None:
    ctx.settings.secret("mariadb_root_password")
    ctx.settings.secret("frappe_admin_password")
    refuse_app_name(ctx.site, APP_NAMES | set(bench_apps(ctx)))
    if site_exists(ctx, ctx.site):
        raise InvalidInput(f"site {ctx.site} already exists; provision only makes new sites")


def new_site(ctx: StepContext) -> None:
    ctx.record(site_started=True, db_name=db_name_for(ctx.site))
    call = bench.new_site(
        ctx.site,
        db_root_password=ctx.settings.secret("mariadb_root_password"),
        admin_password=ctx.settings.secret("frappe_admin_password"),
        db_name=db_name_for(ctx.site),
        login_scope="%",
        bench=ctx.bench,
    )
    ctx.run(call.argv, stdin=call.stdin)


def install_app(ctx: StepContext) -> str | None:
    app = ctx.step.removeprefix(APP_STEP)
    if app not in bench_apps(ctx):
        ctx.output.append(f"{app} is not in this bench (sites/apps.txt): skipped")
        return StepState.SKIPPED
    ctx.run(bench.install_app(ctx.site, app, bench=ctx.bench))
    return None


def first_backup(ctx: StepContext) -> None:
    take_backup(ctx, with_files=True)


def proxy_host(ctx: StepContext) -> None:
    s = ctx.settings
    wanted = npm.manual_instructions(ctx.site, s.npm_forward_host, s.npm_forward_port)
    if not (s.npm_url and s.npm_identity and s.npm_secret):
        ctx.record(proxy_host={**wanted, "created": False})
        ctx.output.append("Nginx Proxy Manager is not configured: create the proxy host by hand (see the job result)")
        return
    client = npm.NpmClient(s.npm_url, s.npm_identity, s.secret("npm_secret"))
    host = client.create_proxy_host(ctx.site, forward_host=s.npm_forward_host, forward_port=s.npm_forward_port)
    ctx.record(proxy_host={**wanted, "created": True, "npm_id": host.get("id")})


def drop_site(ctx: StepContext) -> str | None:
    """Undo a provision that failed after ``new-site`` started.

    ``new-site`` writes the site folder and its site_config.json before it creates the
    database, so when the folder is missing nothing was made; otherwise ``drop-site`` removes
    the database, its user, and archives the folder.
    """
    if not ctx.job.result.get("site_started") or not site_exists(ctx, ctx.site):
        ctx.output.append(f"no site {ctx.site} was made: nothing to drop")
        return StepState.SKIPPED
    call = bench.drop_site(ctx.site, db_root_password=ctx.settings.secret("mariadb_root_password"), bench=ctx.bench)
    ctx.run(call.argv, stdin=call.stdin)
    return None


def _cancel_outcome(job: Job) -> str:
    if job.step("drop-site").state == StepState.SUCCESS:
        return f"the half-made site {job.site} was dropped"
    return f"no site {job.site} was made"


def _plan(params: dict[str, Any]) -> list[str]:
    apps = [f"{APP_STEP}{app}" for app in params.get("apps", [])]
    return ["check-new", "new-site", *apps, "scheduler-enable", "first-backup", "proxy-host", "drop-site",
            "mark-attention"]


def _resolve(name: str) -> StepSpec:
    if name.startswith(APP_STEP):
        return StepSpec(install_app)
    table = {
        "check-new": StepSpec(check_new),
        "new-site": StepSpec(new_site),
        "scheduler-enable": StepSpec(scheduler_enable),
        "first-backup": StepSpec(first_backup),
        "proxy-host": StepSpec(proxy_host),
        "drop-site": StepSpec(drop_site, recovery=True, last=True),
        "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
    }
    try:
        return table[name]
    except KeyError:
        raise InvalidInput(f"provision has no step {name!r}") from None


#: a failed step -> where the job goes (None: it ends there); a half-made site is dropped
ROUTES = Routes(
    resolve=_resolve,
    failure={
        "check-new": None,
        "new-site": "drop-site",
        "scheduler-enable": "drop-site",
        "first-backup": "drop-site",
        "proxy-host": "drop-site",
        "drop-site": "mark-attention",
        "mark-attention": None,
    },
    failure_otherwise="drop-site",  # the steps of the apps (APP_STEP + app)
    # the last step that ended -> where a cancelled job goes: from new-site on, drop what was made
    cancel={None: None, "check-new": None},
    cancel_otherwise="drop-site",
)


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    apps = params.get("apps")
    if apps is None:
        apps = list(settings.install_apps)
    for app in apps:
        bench.validate_app_name(app)
    return {**params, "apps": list(dict.fromkeys(a for a in apps if a != "frappe"))}


PROVISION = Workflow(
    kind="provision",
    needs_site=True,
    plan=_plan,
    resolve=ROUTES.resolve,
    **ROUTES.hooks(),
    cancel_outcome=_cancel_outcome,
    validate=_validate,
)
