"""The release's steps, and the end of its migrate-all child delivered to the waiting step.

- ``record`` notes the tag the backend runs now and the tag to go back to: that one when it
  is immutable, else the newest known-good immutable tag (``mutable_tags`` such as ``15-prod``
  move, so they are no rollback target).
- ``deploy`` asks Portainer (or the Docker API) for the tag; ``rollout`` then waits, with
  ``JERP_ROLLOUT_TIMEOUT``, until the backend's containers run it — read from the containers,
  never from the deploy's answer — and a site answers ``ping``.
- ``migrate`` is a child ``migrate-all`` job (canary first, failure budget); ``smoke`` runs
  the smoke checks on every site it migrated.
- ``drill`` (a release on the staging bench only, ``params.stage`` ``staging``): restore drills
  of a sample of production sites (``JERP_STAGING_DRILL_SAMPLE``, those drilled longest ago)
  into scratch sites of the staging bench — child ``drill`` jobs on the staging bench, reading
  only the sites' latest off-site copies; any that fails sends the release back.
- ``finish`` remembers the tag as good — or, on the staging bench, as passed staging (it is
  promoted to production from there). The rollback path runs the same steps on the tag to go
  back to (``rollback=True``).

Every step reaches the platform (Portainer or the Docker API, the backend's containers, the
smoke checks) through the runtime's adapter only (:func:`_platform`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jerp_jobs import placement
from jerp_jobs.enqueue import publish, start_job
from jerp_jobs.errors import DeployBusy, DeployError, InvalidInput, JerpError, JobNotFound, SmokeFailed
from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.log import get_logger
from jerp_jobs.operations.common import discover_sites
from jerp_jobs.operations.drill import last_drills
from jerp_jobs.operations.offsite import offsite_sites
from jerp_jobs.operations.release.tags import bad_tags, good_tags, remember_bad, remember_good, remember_staged
from jerp_jobs.platform import Platform
from jerp_jobs.runner import complete_waiting_step
from jerp_jobs.workflow import WAITING, StepContext

if TYPE_CHECKING:
    from jerp_jobs.runtime import Runtime

log = get_logger(__name__)

#: the fields of the release's result that name its migrate-all children, by migrate step
CHILD_FIELDS = (("migrate", "migrate_job"), ("rollback-migrate", "rollback_migrate_job"))
#: the field of the release's result that maps each drilled site to its drill job (staging only)
DRILL_FIELD = "drill_jobs"


def on_staging(job: Job) -> bool:
    """A release on the staging bench of a fleet (the first stage of a staging-first release)."""
    return job.params.get("stage") == "staging"


def _platform(rt: Runtime) -> Platform:
    return rt.platform


def record(ctx: StepContext) -> None:
    rt, job = ctx.runtime, ctx.job
    running = _platform(rt).running_tag()
    mutable = set(rt.settings.mutable_tags)
    bad = bad_tags(rt)
    good = [t for t in good_tags(rt) if t not in mutable and t not in bad]
    if job.params.get("rollback"):
        target = next((t for t in good if t != running), None)
        if target is None:
            raise InvalidInput(f"no previous immutable tag to roll back to (running: {running or 'unknown'}; "
                               f"known good: {', '.join(good) or 'none'})")
        ctx.record(tag=target, previous_tag=running, rollback_to=None)
        if running and running not in mutable:
            remember_bad(rt, running)  # an operator rolled away from it
        ctx.output.append(f"rolling back from {running or 'an unknown tag'} to {target}")
        rt.notify("release.started", f"Rollback to {target} started", f"job {job.id}: {running} -> {target}")
        return
    tag = job.params["tag"]
    if running is not None and running not in mutable and running not in bad:
        rollback_to: str | None = running
    else:
        rollback_to = next((t for t in good if t != tag), None)
    if rollback_to == tag:
        rollback_to = next((t for t in good if t != tag), None)
    ctx.record(tag=tag, previous_tag=running, rollback_to=rollback_to)
    ctx.output.append(f"running {running or 'an unknown tag'}; releasing {tag}; "
                      f"rollback target {rollback_to or 'none known'}")
    rt.notify("release.started", f"Release {tag} started",
              f"job {job.id}: {running or '?'} -> {tag}; rollback target {rollback_to or 'none'}")


def _target(ctx: StepContext, *, rollback: bool) -> str:
    if not rollback:
        return str(ctx.job.result.get("tag") or ctx.job.params["tag"])
    target = ctx.job.result.get("rollback_to")
    if not target:
        raise DeployError("no previous immutable tag is known: nothing to roll back to; the platform runs "
                          f"{ctx.job.result.get('tag')} and needs an operator")
    return str(target)


def deploy(ctx: StepContext, *, rollback: bool) -> None:
    tag = _target(ctx, rollback=rollback)
    if rollback:
        ctx.record(rollback_reason=failure_reason(ctx.job))
    field_name = "rollback_deployed_at" if rollback else "deployed_at"
    earlier = ctx.job.result.get(field_name)
    since = time.time()
    ctx.record(**{field_name: earlier or since})
    try:
        detail = _platform(ctx.runtime).deploy(tag)
    except DeployBusy:
        if not earlier:
            raise
        # our own earlier call may be the deployment in progress: the rollout check decides
        detail = f"a deployment is in progress (possibly the one asked for {time.time() - earlier:.0f} s ago); " \
                 "the rollout check decides"
    ctx.output.append(detail)


def rollout(ctx: StepContext, *, rollback: bool) -> None:
    rt = ctx.runtime
    tag = _target(ctx, rollback=rollback)
    since = float(ctx.job.result.get("rollback_deployed_at" if rollback else "deployed_at") or time.time())
    started = time.monotonic()
    deadline = float(rt.settings.rollout_timeout)
    ctx.output.append(_platform(rt).wait_rollout(tag, since=since, deadline_s=deadline))
    sites = [site for site in _sites(ctx) if not rt.sites.attention(site)]
    if not sites:
        ctx.output.append("no site to ping")
        return
    last: dict[str, str] = {}
    while True:
        for site in sites:
            try:
                _platform(rt).ping(site)
                ctx.output.append(f"{site} answers ping")
                return
            except JerpError as exc:
                last[site] = str(exc)
        if time.monotonic() - started > deadline:
            raise DeployError(f"{tag} runs but no site answers ping after {deadline:.0f} s: "
                              + "; ".join(last.values()))
        time.sleep(2.0)


def _sites(ctx: StepContext) -> list[str]:
    return discover_sites(ctx)


def migrate(ctx: StepContext, *, rollback: bool) -> str | None:
    rt = ctx.runtime
    field = "rollback_migrate_job" if rollback else "migrate_job"
    if rollback and not ctx.job.result.get("migrate_job"):
        ctx.output.append("the release never migrated a site: nothing to migrate back")
        return StepState.SKIPPED
    with rt.locks.hold(f"release-children:{ctx.job.id}", wait=60, poll=0.01, job_id=ctx.job.id, step=ctx.step):
        child_id = rt.store.get(ctx.job.id).result.get(field)
        found = child(rt, child_id)
        if found is None:
            found = start_job(rt, "migrate-all", params={}, parent=ctx.job.id,
                              before_publish=lambda job: ctx.record(**{field: job.id}))
            log.info("release.migrate_started", job_id=ctx.job.id, child=found.id)
            return WAITING
    if found.state == JobState.QUEUED and all(s.attempts == 0 for s in found.steps):
        publish(rt, found)  # its first message may never have gone out
    if not found.finished:
        return WAITING
    _child_outcome(found)
    return None


def child(rt: Runtime, child_id: str | None) -> Job | None:
    """The migrate-all child ``child_id``, or None when there is none (or its record is gone)."""
    if not child_id:
        return None
    try:
        return rt.store.get(child_id)
    except JobNotFound:
        return None


def _child_outcome(found: Job) -> None:
    if found.state != JobState.SUCCEEDED:
        raise JerpError(f"migrate-all {found.id} {found.state}: {found.error or 'see the job'}")


def smoke(ctx: StepContext, *, rollback: bool) -> str | None:
    rt = ctx.runtime
    migrated = child(rt, ctx.job.result.get("rollback_migrate_job" if rollback else "migrate_job"))
    if migrated is not None:
        entries: Mapping[str, Mapping[str, Any]] = migrated.result.get("sites") or {}
        sites = [site for site, entry in entries.items() if entry.get("state") == JobState.SUCCEEDED]
    else:  # nothing was migrated (a rollback before any migration): every site that is not marked
        sites = [site for site in _sites(ctx) if not rt.sites.attention(site)]
    if not sites:
        ctx.output.append("no migrated site to smoke-test")
        return StepState.SKIPPED
    reports = {}
    failed = []
    for site in sites:
        report = _platform(rt).smoke(site)
        reports[site] = report.as_dict()
        ctx.output.append(report.summary())
        if not report.ok:
            failed.append(report.summary())
    ctx.record(**{("rollback_smoke" if rollback else "smoke"): reports})
    if failed:
        raise SmokeFailed(f"{len(failed)} of {len(sites)} sites failed their smoke checks: " + "; ".join(failed))
    return None


def drill_sample(rt: Runtime) -> list[str]:
    """The production sites a staging release drills: those with an off-site copy that live on
    a production bench, drilled longest ago first (never drilled first), at most
    ``JERP_STAGING_DRILL_SAMPLE``."""
    size = rt.settings.staging_drill_sample
    if size <= 0 or not rt.settings.s3_bucket:
        return []
    production = {b.name for b in rt.fleet.with_role("production")}
    on_production = [site for site, bench in placement.benches_of(rt.redis, offsite_sites(rt.redis)).items()
                     if bench in production]
    drills = last_drills(rt.redis)
    return sorted(on_production, key=lambda s: (drills.get(s, {}).get("at", 0.0), s))[:size]


def drill(ctx: StepContext) -> str | None:
    """Restore drills of a sample of production's latest off-site backups on this (staging)
    bench, as child drill jobs; waits for them all; fails naming every drill that failed."""
    rt, job = ctx.runtime, ctx.job
    with rt.locks.hold(f"release-children:{job.id}", wait=60, poll=0.01, job_id=job.id, step=ctx.step):
        result = rt.store.get(job.id).result
        sample = result.get("drill_sites")
        if sample is None:
            if not rt.settings.s3_bucket:
                ctx.output.append("no off-site store (JERP_S3_BUCKET unset): no backup to drill")
                return StepState.SKIPPED
            sample = drill_sample(rt)
            ctx.record(drill_sites=sample, **{DRILL_FIELD: {}})
            if not sample:
                ctx.output.append("no production site has an off-site copy to drill"
                                  if rt.settings.staging_drill_sample else "JERP_STAGING_DRILL_SAMPLE is 0: no drill")
                return StepState.SKIPPED
        started: dict[str, str] = dict(result.get(DRILL_FIELD) or {})
        missing = [site for site in sample if site not in started]
        for site in missing:
            def enter(found: Job, site: str = site) -> None:  # in the release before it can end
                started[site] = found.id
                ctx.record(**{DRILL_FIELD: dict(started)})

            found = start_job(rt, "drill", site=site, params={"bench": job.bench}, parent=job.id,
                              before_publish=enter)
            ctx.output.append(f"drilling {site}'s latest off-site backup on bench {job.bench} (job {found.id})")
            log.info("release.drill_started", job_id=job.id, site=site, child=found.id)
        if missing:
            return WAITING
    children = [child(rt, child_id) for child_id in started.values()]
    for found in children:
        if found is not None and found.state == JobState.QUEUED and all(s.attempts == 0 for s in found.steps):
            publish(rt, found)  # its first message may never have gone out
    if any(found is not None and not found.finished for found in children):
        return WAITING
    _drills_outcome(rt, started)
    ctx.output.append(f"{len(started)} restore drill(s) passed: {', '.join(sorted(started))}")
    return None


def _drills_outcome(rt: Runtime, started: Mapping[str, str]) -> None:
    """JerpError naming every drill of ``started`` (site -> job) that did not succeed."""
    failed = []
    for site, child_id in sorted(started.items()):
        found = child(rt, child_id)
        if found is None:
            failed.append(f"{site} (job {child_id}: its record is gone)")
        elif found.state != JobState.SUCCEEDED:
            failed.append(f"{site} (job {found.id} {found.state}: {found.error or 'see the job'})")
    if failed:
        raise JerpError(f"{len(failed)} of {len(started)} restore drills on staging failed: " + "; ".join(failed))


def finish(ctx: StepContext) -> None:
    rt = ctx.runtime
    tag = _target(ctx, rollback=False)
    if on_staging(ctx.job):
        remember_staged(rt, tag, job_id=ctx.job.id, bench=ctx.job.bench)
        ctx.output.append(f"{tag} passed staging on bench {ctx.job.bench}")
        return
    remember_good(rt, tag)
    ctx.output.append(f"{tag} is live")


def rollback_finish(ctx: StepContext) -> None:
    tag = _target(ctx, rollback=True)
    remember_good(ctx.runtime, tag)
    ctx.output.append(f"{tag} runs again")


def failure_reason(job: Job) -> str:
    failed = [s for s in job.steps if s.state == StepState.FAILED and not s.name.startswith("rollback-")]
    if not failed:
        return "cancelled by an operator" if job.cancel_requested else "unknown"
    return f"{failed[0].name} failed: {failed[0].error or 'see the step'}"


def on_child_done(rt: Runtime, parent_id: str, child_id: str) -> Any:
    """The release's migrate-all ended: end the waiting ``migrate`` (or rollback) step."""
    with rt.locks.hold(f"release-children:{parent_id}", wait=60, poll=0.01, job_id=parent_id, step="child-done"):
        parent = rt.store.get(parent_id)
        if parent.finished:
            return None
        drills: dict[str, str] = parent.result.get(DRILL_FIELD) or {}
        if child_id in drills.values():
            return _drill_done(rt, parent, drills)
        for step, field in CHILD_FIELDS:
            if parent.result.get(field) != child_id:
                continue
            waiting_step = parent.step(step)
            ended = rt.store.get(child_id)
            if waiting_step.state != StepState.RUNNING or not ended.finished:
                return None
            if ended.state == JobState.SUCCEEDED:
                return complete_waiting_step(rt, parent_id, step, StepState.SUCCESS)
            return complete_waiting_step(rt, parent_id, step, StepState.FAILED,
                                         error=f"migrate-all {ended.id} {ended.state}: {ended.error or 'see the job'}")
    return None


def _drill_done(rt: Runtime, parent: Job, drills: Mapping[str, str]) -> Any:
    """One of the release's drills ended: end the waiting ``drill`` step once they all have
    (call under the release's children lock)."""
    waiting_step = parent.step("drill")
    if waiting_step.state != StepState.RUNNING or set(drills) != set(parent.result.get("drill_sites") or ()):
        return None  # the step is not waiting, or is still starting its drills: it sees their ends itself
    children = [child(rt, child_id) for child_id in drills.values()]
    if any(found is not None and not found.finished for found in children):
        return None
    try:
        _drills_outcome(rt, drills)
    except JerpError as exc:
        return complete_waiting_step(rt, parent.id, "drill", StepState.FAILED, error=str(exc))
    return complete_waiting_step(rt, parent.id, "drill", StepState.SUCCESS)


def reconcile(rt: Runtime, parent_id: str) -> None:
    """Deliver the end of a migrate-all or drill child whose notification was lost."""
    parent = rt.store.get(parent_id)
    for _, field in CHILD_FIELDS:
        found = child(rt, parent.result.get(field))
        if found is not None and found.finished:
            on_child_done(rt, parent_id, found.id)
    for child_id in (parent.result.get(DRILL_FIELD) or {}).values():
        found = child(rt, child_id)
        if found is not None and found.finished:
            on_child_done(rt, parent_id, found.id)
            break  # one call settles the step from every drill's end
