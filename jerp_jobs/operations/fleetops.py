"""Fleet operations: ``list-sites``, one bench's listing of its sites into the site-to-bench map.

Each bench's worker lists the sites of its own sites folder (checked against the bench's own
count, :func:`jerp_jobs.operations.common.discover_sites`) and records them as that bench's
sites (:func:`jerp_jobs.placement.record_listing`). ``jerpctl sites --refresh`` starts one per
bench, and Beat every ``JERP_FLEET_LIST_MINUTES`` in a declared fleet.
"""

from __future__ import annotations

from jerp_jobs import placement
from jerp_jobs.operations.common import discover_sites
from jerp_jobs.workflow import StepContext, StepSpec, simple


def list_sites(ctx: StepContext) -> None:
    found = discover_sites(ctx)
    bench = ctx.job.bench or ctx.runtime.fleet.benches[0].name
    recorded = placement.record_listing(ctx.runtime.redis, bench, found)
    ctx.record(placement=recorded)
    ctx.output.append(f"bench {bench}: {recorded['sites']} sites ({recorded['added']} new, {recorded['removed']} gone"
                      + (f", {recorded['conflicts']} also on another bench" if recorded["conflicts"] else "") + ")")


LIST_SITES = simple("list-sites", [("list", StepSpec(list_sites, scope="bench"))], needs_site=False)
