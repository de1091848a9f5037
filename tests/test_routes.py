"""The failure and cancel routes of every workflow of the catalog, checked as tables, in
milliseconds, without Redis or a bench.

For every job kind, a few parameter sets and the job facts the routes read (a site that was
missing, a site the job created, each class of bench failure), and every planned step:

- a failed step routes to nothing or to a step of the same job, never to itself;
- failing again along the route always ends (no loop between recovery steps);
- a cancel before any step, or after any step, routes to nothing or to a step of the job;
- the job's final state with that step failed is one of the job states.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from jerp_jobs import failures
from jerp_jobs.catalog import CATALOG
from jerp_jobs.jobs import FINAL_JOB_STATES, Job, Step
from jerp_jobs.workflow import Workflow

#: parameter sets that give every kind each of its plans
PARAMS: dict[str, list[dict[str, Any]]] = {
    "provision": [{"apps": []}, {"apps": ["erpnext", "hrms"]}],
    "migrate": [{"build_assets": True}, {"build_assets": False}],
    "restore": [{}, {"from_offsite": True, "create": True, "verify": True}],
    "offboard": [{"confirm": True}, {"dry_run": True}],
    "install-app": [{"app": "hrms"}],
    "uninstall-app": [{"app": "hrms"}],
    "release": [{"tag": "v1"}, {"rollback": True}],
}

#: what the routes may read from a job's result
FACTS: list[dict[str, Any]] = [
    {},
    {"site_missing": True},
    {"created_site": True},
    {"app_change": {"changed": False}},
    *({"failure": {"class": kind, "summary": "-"}} for kind in failures.FAILURE_KINDS),
]

CASES = [
    (kind, params, facts)
    for kind in sorted(CATALOG)
    for params, facts in itertools.product(PARAMS.get(kind, [{}]), FACTS)
]


def _job(workflow: Workflow, params: dict[str, Any], facts: dict[str, Any], failed: str | None = None) -> Job:
    steps = [Step(name) for name in workflow.plan(params)]
    job = Job(id="j1", kind=workflow.kind, site=None if not workflow.needs_site else "a.example.com",
              state="running", created_at=0.0, updated_at=0.0, params=params, steps=steps, result=dict(facts))
    if failed is not None:
        for step in steps:
            if step.name == failed:
                step.state = "failed"
                break
            step.state = "success"
        failure = job.result.get("failure")
        if isinstance(failure, dict):
            job.result["failure"] = {**failure, "step": failed}
    return job


@pytest.mark.parametrize("kind,params,facts", CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_failure_and_cancel_routes_stay_inside_the_job_and_end(kind: str, params: dict[str, Any],
                                                               facts: dict[str, Any]) -> None:
    workflow = CATALOG[kind]
    plan = workflow.plan(params)
    assert plan and len(set(plan)) == len(plan), f"{kind}: a plan with unique steps"
    for name in plan:
        workflow.resolve(name)  # every planned step resolves to a function
    for failed in plan:
        job = _job(workflow, params, facts, failed)
        seen = [failed]
        target = workflow.on_failure(job, failed)
        while target is not None:
            assert target in plan, f"{kind}: failing {seen[-1]} routes to {target!r}, not a step of the job"
            assert target not in seen, f"{kind}: the failure route loops: {' -> '.join([*seen, target])}"
            seen.append(target)
            job.step(target).state = "failed"
            target = workflow.on_failure(job, target)
        assert workflow.final_state(_job(workflow, params, facts, failed)) in FINAL_JOB_STATES
    for after in [None, *plan]:
        job = _job(workflow, params, facts)
        target = workflow.on_cancel(job, after)
        assert target is None or target in plan, f"{kind}: a cancel after {after} routes to {target!r}"


def test_every_kind_has_a_case() -> None:
    assert {kind for kind, _, _ in CASES} == set(CATALOG)
