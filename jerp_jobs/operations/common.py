"""Small steps and bench facts that several workflows share."""

from __future__ import annotations

import time

from jerp_jobs import bench
from jerp_jobs.errors import CommandFailed, InvalidInput, JerpError
from jerp_jobs.jobs import StepState
from jerp_jobs.log import get_logger
from jerp_jobs.sites import SITE_CONFIG, find_sites, site_config_test
from jerp_jobs.workflow import StepContext

log = get_logger(__name__)


def site_exists(ctx: StepContext, site: str) -> bool:
    """A site exists when ``sites/<site>/site_config.json`` exists (as bench decides)."""
    return ctx.run(site_config_test(site), check=False).ok


def require_site(ctx: StepContext) -> None:
    if not site_exists(ctx, ctx.site):
        raise InvalidInput(f"site {ctx.site} does not exist in the bench")


def bench_apps(ctx: StepContext) -> list[str]:
    """Apps present in the bench (``sites/apps.txt``)."""
    return bench.parse_apps_txt(ctx.run(["cat", "sites/apps.txt"]).output)


def discover_sites(ctx: StepContext) -> list[str]:
    """Every site of the bench (:func:`find_sites`), sorted; odd folder names are reported, not
    used. Records what was found (``discovered``, ``ignored_sites``) in the job's result."""
    listing = find_sites(ctx.settings, ctx.runtime.executor)
    if listing.ignored:
        log.warning("sites.ignored", ignored=list(listing.ignored))
        ctx.record(ignored_sites=list(listing.ignored))
    ctx.record(discovered={"sites": len(listing.sites), "bench_count": listing.candidates,
                           "ignored": len(listing.ignored), "folder": listing.folder})
    log.info("sites.discovered", sites=len(listing.sites), bench_count=listing.candidates, folder=listing.folder)
    return list(listing.sites)


def site_missing(ctx: StepContext) -> bool:
    """True only when the bench shows the job's site does not exist (``test -f`` exited 1).

    Any doubt (the command could not run, the fence stayed busy) answers False: the site is
    then treated as existing.
    """
    try:
        result = ctx.run(site_config_test(ctx.site), check=False)
    except JerpError:
        return False
    return result.exit_code == 1


def maintenance_on(ctx: StepContext) -> None:
    """The first step that touches a site. When it fails because the site does not exist, the
    job records ``site_missing`` and fails with that reason: nothing was changed, there is
    nothing to bring back online and no site to mark as needing attention."""
    try:
        ctx.run(bench.set_maintenance_mode(ctx.site, True, bench=ctx.bench))
    except CommandFailed:
        refuse_missing_site(ctx)
        raise


def refuse_missing_site(ctx: StepContext) -> None:
    """When the bench shows the job's site does not exist, record ``site_missing`` and fail
    with that reason (nothing was changed); otherwise return."""
    if site_missing(ctx):
        ctx.record(site_missing=True)
        raise InvalidInput(
            f"site {ctx.site} does not exist in the bench (no sites/{ctx.site}/{SITE_CONFIG}); nothing was changed"
        ) from None


def _skip_for_missing_site(ctx: StepContext) -> bool:
    if ctx.job.result.get("site_missing"):
        ctx.output.append(f"site {ctx.site} does not exist in the bench: nothing to do")
        return True
    return False


def maintenance_off(ctx: StepContext) -> str | None:
    if _skip_for_missing_site(ctx):
        return StepState.SKIPPED
    ctx.run(bench.set_maintenance_mode(ctx.site, False, bench=ctx.bench))
    return None


def scheduler_pause(ctx: StepContext) -> None:
    ctx.run(bench.scheduler(ctx.site, "pause", bench=ctx.bench))


def scheduler_resume(ctx: StepContext) -> str | None:
    if _skip_for_missing_site(ctx):
        return StepState.SKIPPED
    ctx.run(bench.scheduler(ctx.site, "resume", bench=ctx.bench))
    return None


def scheduler_enable(ctx: StepContext) -> None:
    ctx.run(bench.scheduler(ctx.site, "enable", bench=ctx.bench))


def clear_cache(ctx: StepContext) -> None:
    ctx.run(bench.clear_cache(ctx.site, bench=ctx.bench))


def build_assets(ctx: StepContext) -> None:
    ctx.run(bench.build(bench=ctx.bench))


# -- the site as the job found it ----------------------------------------------------------------


def read_site_switches(ctx: StepContext) -> dict[str, bool] | None:
    """The site's ``maintenance_mode`` and ``pause_scheduler`` (from its site_config.json, read
    where bench runs; only those two keys are printed). None when the file cannot be read."""
    result = ctx.run(bench.site_switches(ctx.site), check=False)
    if result.exit_code not in (0, 1):
        return None
    return bench.parse_site_switches(result.output if result.exit_code == 0 else "")


def record_site_as_found(ctx: StepContext) -> dict[str, bool] | None:
    """Record, once per job and before it changes anything, how the site was
    (``result.site_as_found``): a step run again must not take the job's own changes for the
    site's state."""
    if "site_as_found" in ctx.job.result:
        return ctx.job.result["site_as_found"]
    found = read_site_switches(ctx)
    if found is not None:
        ctx.record(site_as_found=found)
    return found


def scheduler_as_found(ctx: StepContext) -> str | None:
    """Put the scheduler back as the job found it: resumed, unless it was already paused."""
    found = ctx.job.result.get("site_as_found")
    if found and found.get("pause_scheduler"):
        ctx.output.append("the scheduler was paused before this job: left paused")
        return StepState.SKIPPED
    ctx.run(bench.scheduler(ctx.site, "resume", bench=ctx.bench))
    return None


def maintenance_as_found(ctx: StepContext) -> str | None:
    """Put maintenance mode back as the job found it: off, unless it was already on."""
    found = ctx.job.result.get("site_as_found")
    if found and found.get("maintenance_mode"):
        ctx.output.append("the site was in maintenance mode before this job: left in maintenance mode")
        return StepState.SKIPPED
    ctx.run(bench.set_maintenance_mode(ctx.site, False, bench=ctx.bench))
    return None


# -- Frappe's own file locks, held by processes outside this platform ---------------------------

#: how often a held Frappe lock is looked at again while a step waits for it
LOCK_POLL_S = 2.0


def frappe_lock_held(ctx: StepContext, name: str, *, site: str | None = None) -> bool:
    """True while another process holds the Frappe lock ``name`` (of ``site``, or bench-wide).

    The platform's fence keeps its own bench commands on a site apart, so a holder is always
    someone else: an operator's ``bench migrate``, a deploy script. Any doubt (no lock file or
    folder, a probe that cannot run) answers False: the bench command itself decides then.
    """
    result = ctx.run(bench.lock_probe(name, site), check=False)
    return result.exit_code == bench.LOCK_HELD


def wait_for_frappe_lock(ctx: StepContext, name: str, *, site: str | None, deadline: float, poll: float) -> bool:
    """Wait, polling, until the lock is free (True) or the deadline passes (False)."""
    while frappe_lock_held(ctx, name, site=site):
        if time.monotonic() + poll > deadline:
            return False
        time.sleep(poll)
    return True


def foreign_lock_wait(ctx: StepContext) -> tuple[float, float]:
    """(seconds to wait for a foreign holder, seconds between two looks): JERP_FOREIGN_LOCK_WAIT,
    or the job's ``lock_wait`` / ``lock_poll``."""
    wait = float(ctx.params.get("lock_wait", ctx.settings.foreign_lock_wait))
    poll = float(ctx.params.get("lock_poll", LOCK_POLL_S))
    return wait, max(0.05, poll)


# -- assets ---------------------------------------------------------------------------------------


def assets_skip_reason(ctx: StepContext) -> str | None:
    """Why a migrate does not run ``bench build``, or None when it builds.

    ``--no-build`` (the job's ``no_build``) and ``JERP_BUILD_ASSETS=never`` never build,
    ``always`` always does. ``auto`` (the default) builds only where the assets are the bench's
    own: not with the Docker executor (frappe_docker images carry the assets they were built
    with, and building in a running container leaves ``assets.json`` and the files out of step),
    nor where ``sites/assets`` is a link (the image's entrypoint links it into the image).
    """
    if ctx.params.get("no_build"):
        return "--no-build"
    mode = ctx.settings.build_assets
    if mode == "never":
        return "JERP_BUILD_ASSETS=never"
    if mode == "always":
        return None
    if ctx.settings.executor == "docker":
        return "assets come from the image (Docker executor: the image carries its built assets)"
    if ctx.run(["test", "-L", "sites/assets"], check=False).ok:
        return "assets come from the image (sites/assets is a link into the image)"
    return None


def mark_attention(ctx: StepContext) -> str | None:
    """Recovery failed: the site stays in maintenance and automation leaves it alone.

    Only an existing site is marked: a job that found its site missing (``site_missing``)
    changed nothing, and a mark would only block a later provision of that name.
    """
    if _skip_for_missing_site(ctx):
        ctx.record(needs_attention=None)
        return StepState.SKIPPED
    failed = [s.name for s in ctx.runtime.store.get(ctx.job.id).steps if s.state == StepState.FAILED]
    reason = f"{ctx.job.kind} job {ctx.job.id}: steps {', '.join(failed)} failed and automatic recovery did not finish"
    ctx.runtime.mark_attention(ctx.site, job_id=ctx.job.id, reason=reason)
    ctx.record(needs_attention=reason)
    return None
