"""Move a site between benches of the fleet: ``jerpctl enqueue move SITE --to BENCH`` (docs/fleet.md).

The ``move`` job runs on the site's bench (the source) and holds the site for its whole length;
the work on the target bench is done by child jobs on the target's queue, which run under the
move's claim of the site (no other job touches the site meanwhile, on either bench)::

    check -> maintenance-on -> scheduler-pause -> backup -> upload-offsite -> restore-target
    -> verify-target -> switch-proxy -> switch-map -> drop-source

- ``check``: the target is a bench of the fleet, not the source; the site exists on the source
  and no bench listing shows it on the target; the off-site store is configured; with Nginx
  Proxy Manager, the two benches forward to different frontends (``npm_forward_host``).
- The source goes into maintenance (its scheduler paused) before the backup, so nothing the
  customer writes afterwards is left behind; the backup (database and files) is verified and
  copied off-site, verified there.
- ``restore-target``: a ``restore`` child on the target bench (``--from-offsite --create
  --verify``, at exactly this backup's stamp): the site is created there — never restored over a
  site the target already has — restored, given the source site's ``encryption_key`` (from the
  backup's copy of its site_config.json: ``carry-config``), its tables and row counts checked against the
  backup's manifest and ``frappe.ping`` answered, then migrated and brought online there. The
  move waits for it without holding a worker.
- ``verify-target``: that restore succeeded, restored this backup, and its checks found nothing.
- ``switch-proxy``: the site's NPM proxy host forwards to the target's frontend from now on
  (without NPM: the job records what to change by hand).
- ``switch-map``: the site-to-bench map says the site lives on the target.
- ``drop-source``: ``bench drop-site`` on the source, only now; bench moves the site's folder,
  its local backups included, to ``archived/sites/`` there, where it is kept.

A failure before the proxy host was switched goes back: the proxy host points to the source
again, the target's copy is dropped (a ``move-drop`` child on the target; a failed restore
drops the copy it made itself), and the source comes out of maintenance as it was found. The
site is never served by both benches: the source reopens only once the proxy host and the map
point to it and the target's copy is dropped — or, when that copy cannot be dropped (the
target's database server is down...), once it is recorded there, unserved, and the site marked
as needing attention naming it (``target-copy-left``). Any other failure of a way back leaves
the site in maintenance, marked as needing attention.
A failure after the switch leaves the site served by the target and says what is left to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jerp_jobs import bench, placement
from jerp_jobs.enqueue import start_job
from jerp_jobs.errors import ConfigError, InvalidInput, JerpError, JobNotFound
from jerp_jobs.integrations import npm
from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.log import get_logger
from jerp_jobs.offsite import offsite_stamp
from jerp_jobs.operations.backup import take_backup
from jerp_jobs.operations.common import (
    maintenance_as_found,
    maintenance_on,
    mark_attention,
    record_site_as_found,
    scheduler_as_found,
    scheduler_pause,
    site_exists,
)
from jerp_jobs.operations.offsite import upload
from jerp_jobs.runner import complete_waiting_step
from jerp_jobs.runtime import Runtime
from jerp_jobs.workflow import GO_ON, WAITING, Routes, StepContext, StepSpec, Workflow, table_resolver

log = get_logger(__name__)

KIND = "move"
DROP_KIND = "move-drop"
#: the steps that wait for a child on the target bench, and where the child's id is recorded
CHILD_STEPS = {"restore-target": "restore_job", "drop-target": "drop_job"}


# -- checks -------------------------------------------------------------------------------------


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    unknown = sorted(set(params) - {"to"})
    if unknown:
        raise InvalidInput(f"move takes only --to, not {', '.join(unknown)}")
    to = params.get("to")
    if not isinstance(to, str) or not to:
        raise InvalidInput("a move needs the bench it goes to: --to BENCH")
    if not settings.s3_bucket:
        raise ConfigError("JERP_S3_BUCKET", "is not set; a move carries the site over through a verified "
                                            "off-site backup")
    return {"to": to, "offsite": True}


def _check_bench(params: Mapping[str, Any], bench_name: str | None, fleet: Any) -> None:
    """At request time, once the site's bench is known: the target is another bench of the fleet."""
    fleet.get(params["to"])  # InvalidInput naming the benches
    if params["to"] == bench_name:
        raise InvalidInput(f"the site is on bench {bench_name} already; --to names another bench "
                           f"({', '.join(n for n in fleet.names if n != bench_name) or 'the fleet has no other'})")


def _npm(ctx: StepContext) -> Any:
    s = ctx.settings
    if not (s.npm_url and s.npm_identity and s.npm_secret):
        return None
    return npm.NpmClient(s.npm_url, s.npm_identity, s.secret("npm_secret"))


def _benches(ctx: StepContext) -> tuple[Any, Any]:
    fleet = ctx.runtime.fleet
    if not ctx.job.bench:
        raise InvalidInput("this move has no source bench")
    return fleet.get(ctx.job.bench), fleet.get(ctx.params["to"])


def check(ctx: StepContext) -> None:
    rt = ctx.runtime
    source, target = _benches(ctx)
    _check_bench(ctx.params, source.name, rt.fleet)
    if not ctx.settings.s3_bucket:
        raise ConfigError("JERP_S3_BUCKET", "is not set; a move carries the site over through a verified off-site backup")
    if not site_exists(ctx, ctx.site):
        ctx.record(site_missing=True)
        raise InvalidInput(f"site {ctx.site} does not exist on bench {source.name}; nothing was changed")
    if ctx.site in placement.sites_on(rt.redis, target.name):
        raise InvalidInput(f"bench {target.name} lists a site {ctx.site} already; a move never restores over a "
                           "site: drop the stray copy there first (then `jerpctl sites --refresh`)")
    there, here = target.npm_forward(ctx.settings), source.npm_forward(ctx.settings)
    if _npm(ctx) is not None and there == here:
        raise InvalidInput(f"benches {source.name} and {target.name} both forward to {here[0]}:{here[1]}: the proxy "
                           "host could not tell them apart; declare npm_forward_host (and npm_forward_port) of "
                           "each bench in the fleet file")
    record_site_as_found(ctx)
    ctx.record(move={"from": source.name, "to": target.name, "forward_to": f"{there[0]}:{there[1]}"})
    ctx.output.append(f"moving {ctx.site} from bench {source.name} to bench {target.name}")


def backup(ctx: StepContext) -> None:
    take_backup(ctx, with_files=True)


# -- the children on the target bench ----------------------------------------------------------


def _start_child(ctx: StepContext, kind: str, params: dict[str, Any], record_as: str) -> str:
    """The child job ``kind`` on the target bench (its queue); WAITING. A step delivered again
    finds its child recorded: it waits for it again, or ends as the child did."""
    rt = ctx.runtime
    known = ctx.job.result.get(record_as)
    if known:
        try:
            child = rt.store.get(known)
        except JobNotFound:
            raise JerpError(f"the {kind} job {known} on bench {ctx.params['to']} is gone") from None
        if not child.finished:
            return WAITING
        if child.state != JobState.SUCCEEDED:
            raise JerpError(_child_error(child))
        return StepState.SUCCESS

    def enter(child: Job) -> None:  # recorded before the child can end
        rt.store.set_result(ctx.job.id, **{record_as: child.id})

    child = start_job(rt, kind, site=ctx.site, params={**params, "bench": ctx.params["to"]}, parent=ctx.job.id,
                      before_publish=enter)
    ctx.output.append(f"{kind} job {child.id} on bench {ctx.params['to']}")
    return WAITING


def restore_target(ctx: StepContext) -> str:
    offsite = ctx.job.result.get("offsite") or {}
    if not offsite.get("verified"):
        raise InvalidInput("the backup has no verified off-site copy: nothing is restored on the target")
    params = {"from_offsite": True, "create": True, "verify": True, "at": offsite_stamp(offsite),
              "moving_from": ctx.job.bench}
    return _start_child(ctx, "restore", params, "restore_job")


def verify_target(ctx: StepContext) -> None:
    """The target's restore succeeded, restored this move's backup, and found every table with
    its rows and ``frappe.ping`` answering."""
    child = ctx.runtime.store.get(ctx.job.result["restore_job"])
    if child.state != JobState.SUCCEEDED:
        raise JerpError(_child_error(child))
    if child.step("verify").state != StepState.SUCCESS:
        raise JerpError(f"restore job {child.id} did not verify the copy (its verify step {child.step('verify').state})")
    verified = child.result.get("verified") or {}
    if verified.get("problems") or "tables" not in verified:
        raise JerpError(f"restore job {child.id}: the copy differs: {'; '.join(verified.get('problems') or ['no check'])}")
    wanted = offsite_stamp(ctx.job.result["offsite"])
    got = (child.result.get("fetched") or {}).get("utc_timestamp")
    if got != wanted:
        raise JerpError(f"restore job {child.id} restored backup {got}, not this move's {wanted}")
    ctx.record(target_verified={"job_id": child.id, "backup": wanted, "tables": verified["tables"],
                                "rows": verified.get("rows")})
    ctx.output.append(f"the copy on {ctx.params['to']} has {verified['tables']} tables, {verified.get('rows')} rows, "
                      "as the backup; frappe.ping answered")


def drop_target(ctx: StepContext) -> str:
    """Going back: the copy the target's restore made is dropped (a ``move-drop`` child there).
    Nothing to drop when the restore never started or ended without a site (it drops what it
    made when it fails)."""
    restore_id = ctx.job.result.get("restore_job")
    if not restore_id:
        ctx.output.append("nothing was restored on the target: nothing to drop")
        return StepState.SKIPPED
    try:
        restore = ctx.runtime.store.get(restore_id)
    except JobNotFound:
        restore = None
    if restore is not None and restore.finished and (
            not restore.result.get("created_site") or restore.result.get("created_site_dropped")):
        ctx.output.append(f"restore job {restore_id} left no copy on {ctx.params['to']}: nothing to drop")
        return StepState.SKIPPED
    return _start_child(ctx, DROP_KIND, {}, "drop_job")


def target_copy_left(ctx: StepContext) -> None:
    """Going back, the target's copy could not be dropped: it is left there, unserved — the proxy
    host and the map point to the source — and the site is marked as needing attention, saying
    where the copy is; the way back goes on and the source serves the site again."""
    source, target = _benches(ctx)
    if ctx.job.result.get("proxy_points_to") == target.name or ctx.job.result.get("map_switched"):
        raise JerpError(f"the proxy host or the map may send {ctx.site} to bench {target.name}: the source stays "
                        "in maintenance")
    failed = ctx.runtime.store.get(ctx.job.id).step("drop-target")
    reason = (f"move job {ctx.job.id}: the copy of {ctx.site} on bench {target.name} could not be dropped "
              f"({failed.error or 'see the job'}); it is not served (the proxy host and the map point to bench "
              f"{source.name}, where the site is back online). Drop it on bench {target.name} "
              f"(bench drop-site {ctx.site}, and archived/sites/{ctx.site} there), then `jerpctl sites --refresh` "
              f"and `jerpctl site clear-attention {ctx.site}`")
    ctx.runtime.mark_attention(ctx.site, job_id=ctx.job.id, reason=reason)
    ctx.record(target_copy_left={"bench": target.name, "error": failed.error}, needs_attention=reason)
    ctx.output.append(f"the copy on bench {target.name} is left there, unserved; the site is marked as needing "
                      f"attention and comes back online on bench {source.name}")


def _child_error(child: Job) -> str:
    return f"{child.kind} job {child.id} on bench {child.bench} ended {child.state}: {child.error or 'see the job'}"


def on_child_done(rt: Runtime, parent_id: str, child_id: str) -> Any:
    """A child on the target ended: end the move's step that waits for it (safe to call twice)."""
    with rt.locks.hold(f"move:{parent_id}", wait=60, poll=0.01, job_id=parent_id, step="child-done"):
        parent = rt.store.get(parent_id)
        if parent.finished:
            return None
        for step, record_as in CHILD_STEPS.items():
            if parent.result.get(record_as) != child_id or parent.step(step).state != StepState.RUNNING:
                continue
            child = rt.store.get(child_id)
            if not child.finished:
                return None
            log.info("move.child_ended", job_id=parent_id, child=child_id, state=child.state)
            if child.state == JobState.SUCCEEDED:
                return complete_waiting_step(rt, parent_id, step, StepState.SUCCESS)
            return complete_waiting_step(rt, parent_id, step, StepState.FAILED, error=_child_error(child))
    return None


def reconcile(rt: Runtime, parent_id: str) -> None:
    """Deliver the end of a child whose notification was lost."""
    parent = rt.store.get(parent_id)
    for record_as in CHILD_STEPS.values():
        child_id = parent.result.get(record_as)
        if not child_id:
            continue
        try:
            child = rt.store.get(child_id)
        except JobNotFound:
            continue
        if child.finished:
            on_child_done(rt, parent_id, child_id)


# -- the switch ---------------------------------------------------------------------------------


def switch_proxy(ctx: StepContext) -> str | None:
    source, target = _benches(ctx)
    host, port = target.npm_forward(ctx.settings)
    client = _npm(ctx)
    if client is None:
        ctx.record(proxy_host={"switched": False,
                               "manual": f"point the proxy host of {ctx.site} to http://{host}:{port} (bench {target.name})"})
        ctx.output.append(f"Nginx Proxy Manager is not configured: point the proxy host of {ctx.site} to "
                          f"http://{host}:{port} by hand")
        return StepState.SKIPPED
    if "proxy_existed" not in ctx.job.result:
        ctx.record(proxy_existed=client.find_proxy_host(ctx.site) is not None)
    ctx.record(proxy_points_to=target.name)  # before the change: a failure half-way is put back
    answer = client.point_proxy_host(ctx.site, forward_host=host, forward_port=port)
    ctx.record(proxy_host={"switched": True, "npm_id": answer.get("id"), "forward": f"{host}:{port}"})
    ctx.output.append(f"proxy host of {ctx.site} forwards to http://{host}:{port} (bench {target.name})")
    return None


def proxy_back(ctx: StepContext) -> str | None:
    """Going back: the proxy host forwards to the source again (or goes, when the move made it)."""
    source, target = _benches(ctx)
    if ctx.job.result.get("proxy_points_to") != target.name:
        return StepState.SKIPPED
    client = _npm(ctx)
    if client is None:
        raise ConfigError("NPM_URL", "is no longer configured; the proxy host cannot be pointed back to the source")
    if ctx.job.result.get("proxy_existed") is False:
        client.delete_proxy_host(ctx.site)
    else:
        host, port = source.npm_forward(ctx.settings)
        client.point_proxy_host(ctx.site, forward_host=host, forward_port=port)
    ctx.record(proxy_points_to=source.name)
    ctx.output.append(f"proxy host of {ctx.site} back on bench {source.name}")
    return None


def switch_map(ctx: StepContext) -> None:
    placement.assign(ctx.runtime.redis, ctx.site, ctx.params["to"])
    ctx.record(map_switched=True)


def drop_source(ctx: StepContext) -> str | None:
    """``bench drop-site`` on the source, once the target's copy is verified and serves: the
    site's folder, with its local backups, goes to ``archived/sites/`` there (kept)."""
    if not (ctx.job.result.get("target_verified") and ctx.job.result.get("map_switched")):
        raise InvalidInput("the copy on the target is not verified and switched to: the source is not dropped")
    if not site_exists(ctx, ctx.site):
        if ctx.job.result.get("source_dropped"):
            return StepState.SKIPPED  # dropped by an earlier attempt of this step
        raise InvalidInput(f"site {ctx.site} is no longer on bench {ctx.job.bench}, and this move did not drop it")
    ctx.record(source_dropped=False)
    call = bench.drop_site(ctx.site, db_root_password=ctx.settings.secret("mariadb_root_password"), bench=ctx.bench)
    try:
        ctx.run(call.argv, stdin=call.stdin)
    except JerpError as exc:
        raise JerpError(f"{ctx.site} lives on bench {ctx.params['to']} now; its old copy on bench {ctx.job.bench} "
                        f"could not be dropped ({exc}): it stays there in maintenance; drop it by hand "
                        f"(bench drop-site {ctx.site}), then `jerpctl sites --refresh`") from exc
    ctx.record(source_dropped=True)
    ctx.output.append(f"{ctx.site} dropped on bench {ctx.job.bench}; its folder and local backups are kept in "
                      f"archived/sites/ there")
    return None


STEPS: dict[str, StepSpec] = {
    "check": StepSpec(check),
    "maintenance-on": StepSpec(maintenance_on),
    "scheduler-pause": StepSpec(scheduler_pause),
    "backup": StepSpec(backup),
    "upload-offsite": StepSpec(upload, retries=3),
    "restore-target": StepSpec(restore_target),
    "verify-target": StepSpec(verify_target),
    "switch-proxy": StepSpec(switch_proxy, retries=2),
    "switch-map": StepSpec(switch_map, retries=3),
    "drop-source": StepSpec(drop_source),
    # going back, before the switch: proxy host to the source, the target's copy dropped, the
    # source out of maintenance as it was found
    "proxy-back": StepSpec(proxy_back, recovery=True, retries=2, then="drop-target"),
    "drop-target": StepSpec(drop_target, recovery=True, then="abort-scheduler-resume"),
    # the target's copy could not be dropped: left there unserved, the site marked; the source reopens
    "target-copy-left": StepSpec(target_copy_left, recovery=True, then="abort-scheduler-resume"),
    "abort-scheduler-resume": StepSpec(scheduler_as_found, recovery=True, then="abort-maintenance-off"),
    "abort-maintenance-off": StepSpec(maintenance_as_found, recovery=True, last=True),
    "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
}

#: before anything exists on the target: only the source comes back online
BEFORE_TARGET = ("maintenance-on", "scheduler-pause", "backup", "upload-offsite")
#: a copy may exist on the target, the proxy host may point to it: the whole way back
BEFORE_SWITCH = ("verify-target", "switch-proxy")
AFTER_SWITCH = ("switch-map", "drop-source")
RECOVERY = ("proxy-back", "drop-target", "target-copy-left", "abort-scheduler-resume", "abort-maintenance-off")

ROUTES = Routes(
    resolve=table_resolver(KIND, STEPS),
    failure={
        "check": None,
        **{name: "abort-scheduler-resume" for name in BEFORE_TARGET},
        # the restore failed: it dropped the copy it made (or marked the site)
        "restore-target": "drop-target",
        **{name: "proxy-back" for name in BEFORE_SWITCH},
        # the target serves the site: the job ends failed, saying what is left
        **{name: None for name in AFTER_SWITCH},
        **{name: "mark-attention" for name in RECOVERY},
        # the copy on the target stays, unserved: marked, and the source reopens
        "drop-target": "target-copy-left",
        "mark-attention": None,
    },
    cancel={
        None: None,
        "check": None,
        **{name: "abort-scheduler-resume" for name in BEFORE_TARGET},
        "restore-target": "proxy-back",
        "verify-target": "proxy-back",
        **{name: GO_ON for name in ("switch-proxy", *AFTER_SWITCH, *RECOVERY, "mark-attention")},
    },
)


def _on_failure(job: Job, step: str) -> str | None:
    if job.result.get("site_missing"):
        return None  # nothing was touched
    return ROUTES.on_failure(job, step)


def _cancel_outcome(job: Job) -> str:
    if job.result.get("map_switched"):
        return f"the move was finished: the site lives on bench {job.params.get('to')}"
    return "the site was left on its bench, online"


MOVE = Workflow(
    kind=KIND,
    needs_site=True,
    plan=lambda params: list(STEPS),
    resolve=ROUTES.resolve,
    **ROUTES.hooks(on_failure=_on_failure),
    cancel_outcome=_cancel_outcome,
    validate=_validate,
    check_bench=_check_bench,
    on_child_done=on_child_done,
    reconcile=reconcile,
    site_must_exist=lambda params: True,
)


# -- move-drop: the target's copy dropped when a move goes back ---------------------------------


def drop_copy(ctx: StepContext) -> str | None:
    """Drop the copy of the site on this bench made by the move that started this job; refused
    for any other job: only a move's own copy on its target, before the switch, is dropped."""
    rt = ctx.runtime
    parent = rt.store.get(ctx.job.parent) if ctx.job.parent else None
    if (parent is None or parent.kind != KIND or parent.finished or parent.params.get("to") != ctx.job.bench
            or parent.bench == ctx.job.bench):
        raise InvalidInput(f"{DROP_KIND} drops only the copy a running move made on its target bench; "
                           "this job was not started by one")
    if parent.result.get("map_switched") or parent.result.get("proxy_points_to") == ctx.job.bench:
        raise InvalidInput(f"the site is switched to bench {ctx.job.bench}: its copy here is not dropped")
    if site_exists(ctx, ctx.site):
        call = bench.drop_site(ctx.site, db_root_password=ctx.settings.secret("mariadb_root_password"),
                               bench=ctx.bench)
        ctx.run(call.argv, stdin=call.stdin)
    ctx.run(["rm", "-rf", "--", f"archived/sites/{ctx.site}"])  # no copy of the data stays here
    ctx.record(dropped=True)
    ctx.output.append(f"the copy of {ctx.site} on bench {ctx.job.bench} was dropped")
    return None


def _validate_drop(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    if params:
        raise InvalidInput(f"{DROP_KIND} takes no parameters; a move starts it")
    return {}


MOVE_DROP = Workflow(
    kind=DROP_KIND,
    needs_site=True,
    plan=lambda params: ["drop-copy"],
    resolve=table_resolver(DROP_KIND, {"drop-copy": StepSpec(drop_copy)}),
    validate=_validate_drop,
)
