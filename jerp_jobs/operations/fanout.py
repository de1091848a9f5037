"""Fan-out over every site of the bench: ``migrate-all``, ``backup-all`` and ``install-app-all``.

A parent job discovers the sites — every folder of the platform's sites folder with a
``site_config.json``, read from the folder itself and checked against the bench's own count
(``jerp_jobs.sites.find_sites``: a mismatch fails the discover step, naming both
numbers) — records how many it found (``result.site_count``, ``result.discovered``), and starts one child job per site
— a full ``migrate`` or ``backup`` workflow, each tracked on its own — never more than
``concurrency`` at once. No worker waits for the children: the parent's step returns
``WAITING``, and each child, when it ends, tells the parent (``on_child_done``), which starts
the next site or ends its step. The fan-out's progress lives in its own keys (below), so a
child's end costs the same whatever the number of sites; the parent's result gets every site
with its job and outcome (``sites``, ``counts``, ``order``) when the fan-out ends.

``migrate-all`` first migrates a canary site alone (``canary``, default the first site); its
chain is the only one that may run ``bench build``: once for the bench, never once per site
(``no_build``, and JERP_BUILD_ASSETS, decide whether it does). If
the canary does not succeed, no other site is started. Then the rest run — each clearing its
caches after the build, as Frappe needs — and new sites stop being started once more than
``budget`` of them failed (a migrate that was rolled back by its automatic recovery counts
as failed). Last, the canary's caches are cleared again (its own clear-cache ran before the
build). Sites
marked as needing attention are left out. The parent's result lists every site with its job
and outcome; its error names the sites that failed or were not started.

``install-app-all`` adds one app (already in the bench's image) to every site the same way:
a canary site first, alone, then the rest, each an ``install-app`` job (maintenance, a verified
backup, the change checked against the site's installed apps, a failure restored from the
backup), with the same failure budget. A site that has the app already ends its child
``succeeded`` with the change ``skipped``.
"""

from __future__ import annotations

from typing import Any

from jerp_jobs import bench, fanouts, keys, placement
from jerp_jobs.enqueue import start_job
from jerp_jobs.errors import InvalidInput, JerpError, JobNotFound
from jerp_jobs.fanouts import Next, SiteRun
from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.locks import site_lock_name
from jerp_jobs.log import get_logger
from jerp_jobs.operations.apps import validate_install_app
from jerp_jobs.operations.backup import notify_if_failed
from jerp_jobs.operations.common import discover_sites
from jerp_jobs.operations.offsite import (
    choose_backup,
    last_offsite_time,
    list_offsite_sites,
    normalise_at,
    store_for,
)
from jerp_jobs.runner import complete_waiting_step
from jerp_jobs.runtime import Runtime
from jerp_jobs.sites import validate_site_name
from jerp_jobs.workflow import WAITING, Routes, StepContext, StepSpec, Workflow, table_resolver

log = get_logger(__name__)

STATE = keys.FANOUT  # hash per parent job: site -> {"state", "job_id"}

FAILED = fanouts.FAILED
ENDED = FAILED | {JobState.SUCCEEDED, SiteRun.NOT_STARTED, SiteRun.SKIPPED}

CHILD_KIND = {"migrate-all": "migrate", "backup-all": "backup", "install-app-all": "install-app",
              "restore-all": "restore"}
#: fan-outs that change sites: one canary first, alone, and a failure budget
CANARY_KINDS = frozenset({"migrate-all", "install-app-all"})


# -- state of one fan-out, changed only under the fan-out's lock -------------------------------
#
# A fan-out keeps its progress in its own keys (jerp_jobs.fanouts), never in its parent's record,
# so one child's end costs the same at the 10th site as at the 10,000th: a child's start is one
# script, a child's end another, which also says what the parent's waiting step does next. The
# parent's record gets the full per-site map (``result.sites``, ``counts``, ``order``) once, when
# the fan-out ends, and these keys are then deleted; :func:`progress` reads the live map
# meanwhile.

#: field of the fan-out's hash that holds the order of its sites (no site name has a '#')
ORDER = fanouts.ORDER
_keys = fanouts.fanout_keys
progress = fanouts.progress


def _entries(rt: Runtime, parent_id: str) -> dict[str, dict[str, Any]]:
    live = rt.fanouts.progress(parent_id)
    return live["sites"] if live is not None else {}


def _entry(rt: Runtime, parent_id: str, site: str) -> dict[str, Any]:
    return rt.fanouts.entry(parent_id, site)


def _publish_summary(rt: Runtime, parent_id: str) -> None:
    """Write the fan-out's per-site map, counts and order into the parent's result (once, when
    the fan-out ends)."""
    live = rt.fanouts.progress(parent_id)
    if live is not None:
        rt.store.set_result(parent_id, **live)


def _fanout_lock(rt: Runtime, parent_id: str):  # type: ignore[no-untyped-def]
    return rt.locks.hold(f"fanout:{parent_id}", wait=60, poll=0.01, job_id=parent_id, step="fan-out")


# -- steps of the parent ------------------------------------------------------------------------


def discover(ctx: StepContext) -> None:
    rt, params = ctx.runtime, ctx.params
    if params.get("benches"):
        return _discover_benches(ctx)
    if params.get("sites") or ctx.job.kind == "restore-all":
        found = params.get("sites") or offsite_sites_smallest_first(ctx)
    else:
        found = discover_sites(ctx)
        if rt.fleet.declared:  # the site-to-bench map of a fleet; a single host has no reader of it
            bench_name = ctx.job.bench or rt.fleet.benches[0].name
            recorded = placement.record_listing(rt.redis, bench_name, found)
            if recorded["conflicts"] or recorded["added"] or recorded["removed"]:
                ctx.record(placement=recorded)
    sites = list(dict.fromkeys(validate_site_name(s) for s in found))
    if not sites:
        raise InvalidInput("the off-site store has no site to restore" if ctx.job.kind == "restore-all"
                           else "the bench has no site")
    limit = int(params.get("site_limit") or 0)
    deferred: list[str] = []
    if limit and len(sites) > limit:
        ranked = sorted(sites, key=lambda s: (last_offsite_time(rt.redis, s) or 0.0, s))  # oldest copy first
        sites, deferred = sorted(ranked[:limit]), sorted(ranked[limit:])
    canary = params.get("canary")
    if ctx.job.kind in CANARY_KINDS:
        canary = canary or sites[0]
        if canary not in sites:
            raise InvalidInput(f"canary {canary} is not a site of the bench")
        sites = [canary] + [s for s in sites if s != canary]
    marks = rt.sites.attention_many(sites)
    clashes = placement.conflicts(rt.redis) if rt.fleet.declared else {}
    entries: dict[str, dict[str, Any]] = {}
    for site in sites:
        attention = marks.get(site)
        if site in clashes:
            entries[site] = {"state": SiteRun.SKIPPED,
                             "reason": f"listed by benches {' and '.join(clashes[site])}: a site lives on one bench"}
        elif attention:
            entries[site] = {"state": SiteRun.SKIPPED, "reason": f"needs attention: {attention.get('reason')}"}
        else:
            entries[site] = {"state": SiteRun.PENDING}
    for site in deferred:
        entries[site] = {"state": SiteRun.SKIPPED, "reason": f"over the per-run limit of {limit} sites"}
    rt.fanouts.set_many(ctx.job.id, entries)
    total = len(sites) + len(deferred)
    rt.store.set_result(ctx.job.id, canary=canary, site_count=total)
    ctx.output.append(f"{total} sites" + (f" ({len(deferred)} over the per-run limit)" if deferred else "")
                      + (f", canary {canary}" if canary else ""))


def _discover_benches(ctx: StepContext) -> None:
    """A fan-out over several benches: each bench is one child, the same fan-out on that bench
    (with its own discovery, canary and concurrency); all benches run at once."""
    benches = [ctx.runtime.fleet.get(name).name for name in ctx.params["benches"]]
    ctx.runtime.fanouts.set_many(ctx.job.id, {name: {"state": SiteRun.PENDING} for name in benches})
    ctx.runtime.store.set_result(ctx.job.id, canary=None, site_count=len(benches), benches=benches)
    ctx.output.append(f"{len(benches)} benches: {', '.join(benches)}")


def offsite_sites_smallest_first(ctx: StepContext) -> list[str]:
    """restore-all: every site of the off-site store with a verified backup (at or before ``at``),
    smallest backup first — the most customers back soonest; offboarded sites (a legal hold) are
    left out and listed in the job's output."""
    store = store_for(ctx)
    sized: list[tuple[int, str]] = []
    for site in list_offsite_sites(store):
        if store.get_legal_hold(site) is not None:
            ctx.output.append(f"{site}: offboarded (legal hold): not restored")
            continue
        try:
            manifest = choose_backup(store, site, ctx.params.get("at"))
        except InvalidInput as exc:
            ctx.output.append(f"{site}: {exc}: not restored")
            continue
        sized.append((sum(int(a.get("size") or 0) for a in manifest["artifacts"]), site))
    return [site for _, site in sorted(sized)]


def canary(ctx: StepContext) -> str:
    rt, parent = ctx.runtime, ctx.job
    site = parent.result["canary"]
    with _fanout_lock(rt, parent.id):
        entry = _entry(rt, parent.id, site)
        if entry["state"] == SiteRun.SKIPPED:
            raise InvalidInput(f"canary {site} needs attention; choose another canary")
        if entry["state"] == SiteRun.PENDING:
            _start_child(rt, parent, site)
    return WAITING


def sites(ctx: StepContext) -> str | None:
    rt, parent = ctx.runtime, ctx.job
    with _fanout_lock(rt, parent.id):
        parent = rt.store.get(parent.id)
        outcome = _go_on(rt, parent, _where(rt, parent, None, waiting="sites"))
    if outcome is None:
        return WAITING
    state, error = outcome
    if state == StepState.FAILED:
        raise JerpError(error or "sites failed")
    return None


def clear_canary_cache(ctx: StepContext) -> str | None:
    """The canary cleared its caches before its chain built the assets (clear-cache comes
    before build-assets in a migrate): clear them again now that the new assets exist. Every
    other site migrated after the build and cleared its own caches then."""
    rt, site = ctx.runtime, ctx.job.result.get("canary")
    entry = _entry(rt, ctx.job.id, site) if site else {}
    if entry.get("state") != JobState.SUCCEEDED:
        return StepState.SKIPPED
    owner = rt.sites.owner(site)
    if owner is not None:
        ctx.output.append(f"{site} is busy with job {owner}; it clears its own caches")
        return StepState.SKIPPED
    with rt.locks.hold(site_lock_name(site), wait=600, job_id=ctx.job.id, step="clear-canary-cache"):
        ctx.run(bench.clear_cache(site, bench=ctx.bench), fence=site)
    return None


# -- children -----------------------------------------------------------------------------------


def _start_child(rt: Runtime, parent: Job, site: str) -> dict[str, Any]:
    if parent.params.get("benches"):
        return _start_bench(rt, parent, site)
    kind = CHILD_KIND[parent.kind]
    canary = parent.result.get("canary")
    params: dict[str, Any] = {
        "build_assets": site == canary, **({"no_build": True} if parent.params.get("no_build") else {}),
    } if kind == "migrate" else {"app": parent.params["app"]} if kind == "install-app" else {
        "from_offsite": True, "create": True, "verify": True,
        **({"at": parent.params["at"]} if parent.params.get("at") else {}),
    } if kind == "restore" else {
        "with_files": parent.params.get("with_files", True),
        **({"offsite": parent.params["offsite"]} if parent.params.get("offsite") is not None else {}),
    }
    entries: list[dict[str, Any]] = []

    def enter(child: Job) -> None:  # in the parent's map before the child can end
        entries.append(rt.fanouts.child_started(parent.id, site, child.id))

    child = start_job(rt, kind, site=site, params=params, parent=parent.id, before_publish=enter)
    entry = entries[0]
    log.info("fanout.child_started", job_id=parent.id, site=site, child=child.id)
    return entry


def _start_bench(rt: Runtime, parent: Job, bench_name: str) -> dict[str, Any]:
    """One bench of a fan-out over benches: the same fan-out, on that bench's queue."""
    params = {k: v for k, v in parent.params.items() if k != "benches"}
    entries: list[dict[str, Any]] = []

    def enter(child: Job) -> None:
        entries.append(rt.fanouts.child_started(parent.id, bench_name, child.id))

    child = start_job(rt, parent.kind, params={**params, "bench": bench_name}, parent=parent.id, before_publish=enter)
    log.info("fanout.bench_started", job_id=parent.id, bench=bench_name, child=child.id)
    return entries[0]


def concurrency_of(rt: Runtime, job: Job) -> int:
    """How many children of fan-out ``job`` run at once: every bench of a fan-out over benches;
    else the request's ``concurrency``, the bench's own (the fleet file), JERP_FANOUT_CONCURRENCY."""
    if job.params.get("benches"):
        return len(job.params["benches"])
    if job.params.get("concurrency"):
        return int(job.params["concurrency"])
    declared = rt.fleet.get(job.bench).concurrency if job.bench and job.bench in rt.fleet.names else None
    return declared or rt.settings.fanout_concurrency


def _where(rt: Runtime, parent: Job, child_id: str | None, *, waiting: str | None) -> Next:
    """Record child ``child_id``'s end (None: none) and read what the parent's ``waiting`` step
    does next (one script: jerp_jobs.fanouts)."""
    over_benches = bool(parent.params.get("benches"))
    return rt.fanouts.child_ended(
        parent.id, child_id, waiting=waiting, canary=parent.result.get("canary"),
        attempts=int(parent.params.get("retries", 0)) if parent.kind == "backup-all" and not over_benches else 0,
        stop=parent.cancel_requested,
        budget=int(parent.params.get("budget", 1)) if parent.kind in CANARY_KINDS and not over_benches else None,
        concurrency=concurrency_of(rt, parent),
    )


def _go_on(rt: Runtime, parent: Job, where: Next) -> tuple[str, str | None] | None:
    """The sites' step after ``where``: start the sites it names; returns (state, error) when the
    fan-out is over (its per-site map then published into the parent's result)."""
    if where.action == "start":
        for site in where.sites:
            _start_child(rt, parent, site)
        return None
    if where.action != "over":
        return None
    _publish_summary(rt, parent.id)
    if where.state == StepState.FAILED:
        return StepState.FAILED, _summary(rt, parent.id)
    return StepState.SUCCESS, None


def _summary(rt: Runtime, parent_id: str) -> str:
    entries = _entries(rt, parent_id)
    failed = [f"{s} ({e['state']}, job {e.get('job_id')}: {e.get('error') or 'see the job'})"
              for s, e in entries.items() if e["state"] in FAILED]
    skipped = [s for s, e in entries.items() if e["state"] in (SiteRun.NOT_STARTED, SiteRun.SKIPPED)]
    parts = []
    if failed:
        parts.append("failed sites: " + ", ".join(failed))
    if skipped:
        parts.append("not started: " + ", ".join(skipped))
    return "; ".join(parts) or JobState.CANCELLED


def on_child_done(rt: Runtime, parent_id: str, child_id: str) -> Any:
    """A child job ended: record it, start more sites or end the parent's waiting step.

    Safe to call twice for one child, and after a crash halfway: the end is recorded only while
    the site's entry names the child as running, and the parent's waiting step is settled from
    the recorded entries every time, whether or not this call changed one.
    Returns the runner's StepRun when the parent's waiting step ended, else None.
    """
    with _fanout_lock(rt, parent_id):
        parent = rt.store.get(parent_id)
        if parent.finished:
            return None  # reaped or cancelled: start nothing more
        return _settle(rt, parent, child_id)


def _settle(rt: Runtime, parent: Job, child_id: str | None = None) -> Any:
    """Record ``child_id``'s end (if any), then end the parent's waiting step when its children
    allow it, or start more sites (call under the fan-out lock)."""
    waiting = next((s.name for s in parent.steps if s.state == StepState.RUNNING), None)
    where = _where(rt, parent, child_id, waiting=waiting if waiting in ("canary", "sites") else None)
    if where.recorded:
        log.info("fanout.child_ended", job_id=parent.id, child=child_id)
    if waiting == "canary" and where.action == "settle":
        if where.state == StepState.SUCCESS:
            return complete_waiting_step(rt, parent.id, "canary", StepState.SUCCESS)
        canary_site = parent.result.get("canary")
        entry = _entry(rt, parent.id, canary_site)
        _publish_summary(rt, parent.id)
        return complete_waiting_step(
            rt, parent.id, "canary", StepState.FAILED,
            error=f"canary {canary_site} {entry['state']}: {entry.get('error')}; " + _summary(rt, parent.id),
        )
    if waiting == "sites":
        outcome = _go_on(rt, parent, where)
        if outcome is not None:
            state, error = outcome
            return complete_waiting_step(rt, parent.id, "sites", state, error=error)
    return None


def reconcile(rt: Runtime, parent_id: str) -> None:
    """Deliver the end of every child that ended without its parent hearing of it, then settle."""
    with _fanout_lock(rt, parent_id):
        rt.fanouts.index(parent_id)
    for site in rt.fanouts.running_sites(parent_id):
        entry = _entry(rt, parent_id, site)
        if entry.get("state") == SiteRun.RUNNING and entry.get("job_id"):
            try:
                child = rt.store.get(entry["job_id"])
            except JobNotFound:
                continue
            if child.finished:
                on_child_done(rt, parent_id, child.id)
    with _fanout_lock(rt, parent_id):
        parent = rt.store.get(parent_id)
        if not parent.finished:
            _settle(rt, parent)


# -- the two workflows --------------------------------------------------------------------------


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    out = dict(params)
    if out.get("benches") is not None:
        raise InvalidInput("the benches of a fan-out are chosen by --group or --bench, not given")
    if out.get("concurrency") is not None and int(out["concurrency"]) < 1:
        raise InvalidInput("concurrency must be at least 1")
    if out.get("budget") is not None and int(out["budget"]) < 0:
        raise InvalidInput("the failure budget cannot be negative")
    if "no_build" in out and not isinstance(out["no_build"], bool):
        raise InvalidInput(f"no_build must be true or false, not {out['no_build']!r}")
    if out.get("canary"):
        validate_site_name(out["canary"])
    for s in out.get("sites") or []:
        validate_site_name(s)
    return out


def _validate_restore_all(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    if not settings.s3_bucket:
        raise InvalidInput("restore-all restores from the off-site store: set JERP_S3_BUCKET")
    out = _validate(site, {k: v for k, v in params.items() if v is not None}, settings)
    if out.get("at"):
        out["at"] = normalise_at(out["at"])
    return out


def _validate_install_all(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    out = _validate(site, params, settings)
    return {**out, **validate_install_app(None, {"app": out.get("app")}, settings)}


MIGRATE_ALL: dict[str, StepSpec] = {
    "discover": StepSpec(discover),
    "canary": StepSpec(canary),
    "sites": StepSpec(sites),
    "clear-canary-cache": StepSpec(clear_canary_cache, scope="bench"),
}
BACKUP_ALL: dict[str, StepSpec] = {"discover": StepSpec(discover), "sites": StepSpec(sites)}
RESTORE_ALL: dict[str, StepSpec] = {"discover": StepSpec(discover), "sites": StepSpec(sites)}
INSTALL_APP_ALL: dict[str, StepSpec] = {
    "discover": StepSpec(discover), "canary": StepSpec(canary), "sites": StepSpec(sites),
}


#: migrate-all: a failed step -> where the job goes (None: it ends there); a cancel ends it
MIGRATE_ALL_ROUTES = Routes(
    resolve=table_resolver("migrate-all", MIGRATE_ALL),
    failure={
        "discover": None,
        "canary": None,
        "sites": "clear-canary-cache",  # the canary succeeded: its caches still need clearing
        "clear-canary-cache": None,
    },
    cancel_otherwise=None,
)


def _publish_at_end(then: Any = None) -> Any:
    """A fan-out's ``on_end``: its per-site map into its result (however it ended) and its own
    keys deleted (the record holds it all now), then ``then``."""

    def on_end(rt: Runtime, job: Job) -> None:
        live = rt.fanouts.progress(job.id)
        if live is not None:
            rt.store.set_result(job.id, **live)
            job.result.update(live)
            rt.fanouts.delete(job.id)
        if then is not None:
            then(rt, job)

    return on_end


def _fanout(kind: str, table: dict[str, StepSpec], validate: Any, on_end: Any = None, **extra: Any) -> Workflow:
    """A fan-out workflow: its fixed steps, its children's ends settled by :func:`on_child_done`."""
    return Workflow(kind=kind, needs_site=False,
                    plan=lambda params: ["discover", "sites"] if params.get("benches") else list(table),
                    resolve=table_resolver(kind, table), validate=validate, on_child_done=on_child_done,
                    reconcile=reconcile, on_end=_publish_at_end(on_end), **extra)


MIGRATE_ALL_WORKFLOW = _fanout("migrate-all", MIGRATE_ALL, _validate, **MIGRATE_ALL_ROUTES.hooks())
BACKUP_ALL_WORKFLOW = _fanout("backup-all", BACKUP_ALL, _validate, on_end=notify_if_failed)
INSTALL_APP_ALL_WORKFLOW = _fanout("install-app-all", INSTALL_APP_ALL, _validate_install_all)
RESTORE_ALL_WORKFLOW = _fanout("restore-all", RESTORE_ALL, _validate_restore_all)
