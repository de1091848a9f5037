"""Starting a job — creating it and sending its first step: the one way work starts.

The job record is written first, with every step planned; then the first step's message is
published. If publishing fails, a requested job is marked failed at once, so no record waits
forever for a message that was never sent; a child job stays queued for the resumer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jerp_jobs import audit, placement, runner
from jerp_jobs.backupfiles import sites_root
from jerp_jobs.errors import BrokerUnavailable, InvalidInput, JerpError
from jerp_jobs.jobs import Job
from jerp_jobs.runtime import Runtime
from jerp_jobs.sites import SITE_CONFIG, bench_app_names, refuse_app_name, site_in_bench, validate_site_name


def create_job(
    rt: Runtime,
    kind: str,
    *,
    site: str | None = None,
    params: Mapping[str, Any] | None = None,
    parent: str | None = None,
    actor: str | None = None,
    check_site: bool = False,
) -> Job:
    """Validate the request and write the job with its planned steps; nothing is sent yet.

    ``check_site`` (a request from a person or a schedule): a job whose workflow needs an
    existing site is refused when the bench shows it has no such site
    (:func:`refuse_missing_site`), after its parameters were checked.

    The audit trail gets who started it: ``actor`` (``jerpctl user@host``, ``beat ENTRY``,
    ``webhook ...``), or the parent job for a child."""
    workflow = rt.workflow(kind)
    if workflow.needs_site:
        site = validate_site_name(site)
        refuse_app_name(site, _app_names(rt))
    elif site is not None:
        raise InvalidInput(f"{kind} works on the whole bench; it takes no site")
    params = dict(params or {})
    requested, group = params.pop("bench", None), params.pop("group", None)
    params = workflow.validate(site, params, rt.settings)
    bench = choose_bench(rt, kind, site, params, requested=requested, group=group, parent=parent,
                         creates_site=site is not None and not workflow.site_must_exist(params))
    workflow.check_bench(params, bench, rt.fleet)
    if bench is None and kind in FLEET_FANOUTS:
        if params.get("canary") or params.get("sites"):
            raise InvalidInput(f"{kind} over several benches takes no canary or list of sites (each bench "
                               "chooses its own canary): name the bench with --bench")
        params["benches"] = [b.name for b in rt.fleet.select(group=group)]
    if check_site and site is not None and workflow.site_must_exist(params) and not rt.fleet.declared:
        refuse_missing_site(rt, kind, site)  # a fleet's sites are known by the site-to-bench map
    job = rt.store.create(kind, workflow.plan(params), site=site, params=params, parent=parent, bench=bench)
    audit.record(rt.redis, actor=actor or (f"job {parent}" if parent else "unknown"), action="job.created",
                 job_id=job.id, kind=kind, site=site, days=rt.settings.audit_days)
    return job


#: fan-outs that may run over several benches of the fleet at once (each bench its own fan-out)
FLEET_FANOUTS = frozenset({"backup-all", "migrate-all", "install-app-all"})
#: site jobs that run on a staging bench, not on their site's: they read only the site's off-site
#: copy (a restore drill into a scratch site); the fleet's staging bench by default
STAGING_KINDS = frozenset({"drill"})


def choose_bench(rt: Runtime, kind: str, site: str | None, params: Mapping[str, Any], *, requested: Any,
                 group: Any, parent: str | None, creates_site: bool) -> str | None:
    """The bench a new job runs on (docs/fleet.md), or None for a fan-out over several benches.

    ``requested`` (``--bench``) must be a bench of the fleet; a site job runs on the bench its
    site lives on (the site-to-bench map) and a request naming another bench is refused —
    except a drill (:data:`STAGING_KINDS`), which runs on the fleet's staging bench when there
    is one, or on the staging bench named, and only reads the site's off-site copy; a
    child runs where its parent does unless it names its bench (the children of a fan-out over
    benches); a new site goes to the bench named, or to the fleet's only production bench. A
    single-bench fleet needs none of this: every job is on its one bench."""
    fleet = rt.fleet
    if requested is not None:
        if not isinstance(requested, str):
            raise InvalidInput(f"a bench is named by a string, not {requested!r}")
        fleet.get(requested)
    if group is not None:
        if requested is not None or site is not None or kind not in FLEET_FANOUTS:
            raise InvalidInput(f"--group chooses the benches of a fan-out ({', '.join(sorted(FLEET_FANOUTS))}) "
                               f"and goes without --bench; {kind} does not take it")
        fleet.select(group=group)
    single = fleet.single
    if single is not None and group is None:
        return single.name  # neither the parent's record nor the map can name another bench
    if parent is not None and requested is None:
        inherited = rt.store.route(parent)
        if inherited is not None and inherited[2]:
            requested = inherited[2]
    if site is None:
        if requested is not None:
            return requested
        if kind in FLEET_FANOUTS:
            return None
        raise InvalidInput(f"{kind} works on one bench: name it with --bench ({', '.join(fleet.names)})")
    if kind in STAGING_KINDS:
        staging = fleet.staging
        if requested is None and staging is not None:
            return staging.name  # drills belong on staging: the site's own bench is never touched
        if requested is not None and fleet.get(requested).role == "staging":
            return requested
    where = placement.bench_of(rt.redis, site)
    if where is not None and where not in fleet.names:
        where = None  # a bench the fleet file no longer declares: its listing is stale
    if requested is not None and where is not None and requested != where and not _moving_to(rt, parent, requested):
        raise InvalidInput(f"site {site} lives on bench {where}, not {requested}; "
                           f"`jerpctl enqueue move {site} --to {requested}` moves it")
    if requested is not None or where is not None:
        return requested or where
    if single is not None:
        return single.name
    if creates_site:
        production = fleet.with_role("production")
        if len(production) == 1:
            return production[0].name
        raise InvalidInput(f"site {site} is new: name the bench it goes on with --bench "
                           f"({', '.join(b.name for b in production)})")
    raise InvalidInput(f"site {site} is on no bench the fleet knows; `jerpctl sites --refresh` lists every "
                       f"bench's sites again ({', '.join(fleet.names)})")


def _moving_to(rt: Runtime, parent: str | None, bench: str) -> bool:
    """True for a child of a move of its site to ``bench`` (the move's own jobs on the target
    bench: its restore there, or the drop of that copy when the move goes back)."""
    if parent is None:
        return False
    job = rt.store.get(parent)
    return job.kind == "move" and not job.finished and job.params.get("to") == bench


#: how long asking the bench whether a site exists may take when a request is made
SITE_CHECK_TIMEOUT_S = 20.0


def refuse_missing_site(rt: Runtime, kind: str, site: str) -> None:
    """InvalidInput when the bench shows it has no ``site`` (:func:`site_in_bench`: the sites
    folder when visible here, else ``test -f`` where bench runs). When neither can tell, the
    request goes on and the job's first step finds out."""
    try:
        executor = rt.executor
    except JerpError:
        executor = None
    if site_in_bench(rt.settings, executor, site, timeout=SITE_CHECK_TIMEOUT_S) is False:
        raise InvalidInput(f"site {site} does not exist in the bench (no sites/{site}/{SITE_CONFIG}); "
                           f"{kind} not enqueued")


def _app_names(rt: Runtime) -> set[str]:
    """frappe, erpnext, and the bench's apps.txt when its sites folder is visible here."""
    return bench_app_names(sites_root(rt.settings))


def start_job(
    rt: Runtime,
    kind: str,
    *,
    site: str | None = None,
    params: Mapping[str, Any] | None = None,
    parent: str | None = None,
    actor: str | None = None,
    before_publish: Callable[[Job], None] | None = None,
    check_site: bool = False,
) -> Job:
    """The one way a job starts — for jerpctl, Beat, the webhook, fan-outs and releases: the
    request validated and the record written with every step planned (:func:`create_job`),
    ``before_publish`` run (what must be recorded before any step can run, such as the child's
    place in its parent), then the first step published (:func:`publish`). Returns the job as
    created."""
    job = create_job(rt, kind, site=site, params=params, parent=parent, actor=actor, check_site=check_site)
    if before_publish is not None:
        before_publish(job)
    publish(rt, job)
    return job


def publish(rt: Runtime, job: Job, *, undo: Callable[[], None] | None = None) -> None:
    """Publish the first step of ``job``; BrokerUnavailable naming the job when it cannot be.

    A job someone asked for (no parent) is then failed at once, after ``undo`` took back what
    was recorded for it, so that no record waits for a message that was never sent and the
    requester is told. A child job stays queued: the resumer publishes its first step again
    (``jerp_jobs.resume``), so one broker error does not count as a failed site."""
    try:
        rt.dispatch(job.id, runner.first_step(rt, job.id))
    except Exception as exc:
        if job.parent is None:
            if undo is not None:
                undo()
            runner.finish_job(rt, job.id, "failed", error=f"could not enqueue the {job.kind} job: {exc}")
        raise BrokerUnavailable(f"could not publish job {job.id} to the broker: {exc}", job_id=job.id) from exc


def submit(rt: Runtime, kind: str, *, site: str | None = None, params: Mapping[str, Any] | None = None,
           actor: str | None = None) -> Job:
    """:func:`start_job` for a request (jerpctl, Beat, the dashboard): a site the bench does not
    have is refused first (``check_site``); returns the job's record as it is now."""
    return rt.store.get(start_job(rt, kind, site=site, params=params, actor=actor, check_site=True).id)
