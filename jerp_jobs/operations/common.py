"""Small steps and bench facts that several workflows share."""

from __future__ import annotations

from jerp_jobs import bench
from jerp_jobs.errors import InvalidInput, InvalidSiteName
from jerp_jobs.log import get_logger
from jerp_jobs.sites import validate_site_name
from jerp_jobs.workflow import StepContext

log = get_logger(__name__)


def site_exists(ctx: StepContext, site: str) -> bool:
    """A site exists when ``sites/<site>/site_config.json`` exists (as bench decides)."""
    return ctx.run(["test", "-f", f"sites/{validate_site_name(site)}/site_config.json"], check=False).ok


def require_site(ctx: StepContext) -> None:
    if not site_exists(ctx, ctx.site):
        raise InvalidInput(f"site {ctx.site} does not exist in the bench")


def bench_apps(ctx: StepContext) -> list[str]:
    """Apps present in the bench (``sites/apps.txt``)."""
    return bench.parse_apps_txt(ctx.run(["cat", "sites/apps.txt"]).output)


def discover_sites(ctx: StepContext) -> list[str]:
    """Every site folder with a ``site_config.json``, sorted; odd folder names are reported, not used."""
    out = ctx.run(
        ["find", "sites", "-mindepth", "2", "-maxdepth", "2", "-name", "site_config.json", "-type", "f"]
    ).output
    sites, ignored = [], []
    for line in out.splitlines():
        parts = line.strip().split("/")
        if len(parts) != 3:
            continue
        try:
            sites.append(validate_site_name(parts[1]))
        except InvalidSiteName as exc:
            ignored.append(f"{parts[1]}: {exc.rule}")
    if ignored:
        log.warning("sites.ignored", ignored=ignored)
        ctx.record(ignored_sites=ignored)
    return sorted(set(sites))


def maintenance_on(ctx: StepContext) -> None:
    ctx.run(bench.set_maintenance_mode(ctx.site, True, bench=ctx.bench))


def maintenance_off(ctx: StepContext) -> None:
    ctx.run(bench.set_maintenance_mode(ctx.site, False, bench=ctx.bench))


def scheduler_pause(ctx: StepContext) -> None:
    ctx.run(bench.scheduler(ctx.site, "pause", bench=ctx.bench))


def scheduler_resume(ctx: StepContext) -> None:
    ctx.run(bench.scheduler(ctx.site, "resume", bench=ctx.bench))


def scheduler_enable(ctx: StepContext) -> None:
    ctx.run(bench.scheduler(ctx.site, "enable", bench=ctx.bench))


def clear_cache(ctx: StepContext) -> None:
    ctx.run(bench.clear_cache(ctx.site, bench=ctx.bench))


def build_assets(ctx: StepContext) -> None:
    ctx.run(bench.build(bench=ctx.bench))


def mark_attention(ctx: StepContext) -> None:
    """Recovery failed: the site stays in maintenance and automation leaves it alone."""
    failed = [s.name for s in ctx.runtime.store.get(ctx.job.id).steps if s.state == "failed"]
    reason = f"{ctx.job.kind} job {ctx.job.id}: steps {', '.join(failed)} failed and automatic recovery did not finish"
    ctx.runtime.mark_attention(ctx.site, job_id=ctx.job.id, reason=reason)
    ctx.record(needs_attention=reason)
