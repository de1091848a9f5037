"""The failure and cancel routes of every workflow of the catalog, checked as tables, in
milliseconds, without Redis or a bench.

Through the hooks every workflow has (``on_failure``, ``on_cancel``, ``final_state``), for every
job kind, a few parameter sets and the job facts the routes read (a site that was missing, a
site the job created, each class of bench failure), and every planned step:

- a failed step routes to nothing or to a step of the same job, never to itself;
- failing again along the route always ends (no loop between recovery steps);
- a cancel before any step, or after any step, routes to nothing or to a step of the job;
- the job's final state with that step failed is one of the job states;
- every recovery step of the job is reached by some route.

Through the tables (:class:`jerp_jobs.workflow.Routes`) of the workflows that have them:

- every row names a step of the workflow, and every planned step has a failure and a cancel row;
- a failure leads to a recovery step, or forward on the normal path; a failure of a recovery
  step never leads back to the normal path; a cancel leads to a recovery step, goes on, or ends;
- the recovery that makes a job ``recovered`` (or its workflow's word for it, ``rolled-back``)
  is where the route of its recoverable steps ends.

And the workflow modules speak of job and step states through the enums only (one vocabulary).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest

from jerp_jobs import failures
from jerp_jobs.catalog import CATALOG
from jerp_jobs.jobs import FINAL_JOB_STATES, Job, JobState, Step, StepState
from jerp_jobs.operations.fanout import SiteRun
from jerp_jobs.runner import next_pending
from jerp_jobs.workflow import GO_ON, Routes, Workflow

PACKAGE = Path(__file__).resolve().parent.parent / "jerp_jobs"

#: parameter sets that give every kind each of its plans
PARAMS: dict[str, list[dict[str, Any]]] = {
    "provision": [{"apps": []}, {"apps": ["erpnext", "hrms"]}],
    "migrate": [{"build_assets": True}, {"build_assets": False}],
    "restore": [{}, {"from_offsite": True, "create": True, "verify": True},
                {"from_offsite": True, "create": True, "verify": True, "moving_from": "a"}],
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

_DEFAULT_ON_FAILURE = Workflow.__dataclass_fields__["on_failure"].default
_DEFAULT_ON_CANCEL = Workflow.__dataclass_fields__["on_cancel"].default
ROUTED = sorted(kind for kind, workflow in CATALOG.items() if workflow.routes is not None)


def _job(workflow: Workflow, params: dict[str, Any], facts: dict[str, Any], failed: str | None = None) -> Job:
    steps = [Step(name) for name in workflow.plan(params)]
    job = Job(id="j1", kind=workflow.kind, site=None if not workflow.needs_site else "a.example.com",
              state=JobState.RUNNING, created_at=0.0, updated_at=0.0, params=params, steps=steps, result=dict(facts))
    if failed is not None:
        for step in steps:
            if step.name == failed:
                step.state = StepState.FAILED
                break
            step.state = StepState.SUCCESS
        failure = job.result.get("failure")
        if isinstance(failure, dict):
            job.result["failure"] = {**failure, "step": failed}
    return job


def _path(workflow: Workflow, job: Job, start: str) -> list[str]:
    """The steps a job runs from ``start`` on when each succeeds (as the runner goes on:
    ``then``, ``last``, or the next pending step of the same path)."""
    job = dataclasses.replace(job, steps=[Step(s.name, state=s.state) for s in job.steps])
    path = [start]
    while True:
        job.step(path[-1]).state = StepState.SUCCESS
        following = next_pending(workflow, job, after=path[-1])
        if following is None or following in path:
            return path
        path.append(following)


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
            job.step(target).state = StepState.FAILED
            target = workflow.on_failure(job, target)
        assert workflow.final_state(_job(workflow, params, facts, failed)) in FINAL_JOB_STATES
    for after in [None, *plan]:
        job = _job(workflow, params, facts)
        target = workflow.on_cancel(job, after)
        assert target is None or target in plan, f"{kind}: a cancel after {after} routes to {target!r}"


def test_every_kind_has_a_case() -> None:
    assert {kind for kind, _, _ in CASES} == set(CATALOG)


@pytest.mark.parametrize("kind", sorted(CATALOG))
def test_every_recovery_step_is_reached_by_a_route(kind: str) -> None:
    workflow = CATALOG[kind]
    planned: set[str] = set()
    reached: set[str] = set()
    for params, facts in itertools.product(PARAMS.get(kind, [{}]), FACTS):
        plan = workflow.plan(params)
        planned.update(plan)
        for step in plan:
            failed = _job(workflow, params, facts, step)
            target = workflow.on_failure(failed, step)
            if target is not None:
                reached.update(_path(workflow, failed, target))
        for after in [None, *plan]:
            job = _job(workflow, params, facts)
            target = workflow.on_cancel(job, after)
            if target is not None:
                reached.update(_path(workflow, job, target))
    unreached = sorted(s for s in planned if workflow.is_recovery(s) and s not in reached)
    assert not unreached, f"{kind}: recovery steps no route leads to: {unreached}"


def test_every_workflow_that_routes_does_so_through_tables() -> None:
    for kind, workflow in CATALOG.items():
        if workflow.routes is not None:
            continue
        assert workflow.on_failure is _DEFAULT_ON_FAILURE, f"{kind}: a failure route outside a Routes table"
        assert workflow.on_cancel is _DEFAULT_ON_CANCEL, f"{kind}: a cancel route outside a Routes table"
    assert ROUTED, "no workflow has route tables"


def _plans(kind: str) -> list[list[str]]:
    return [CATALOG[kind].plan(params) for params in PARAMS.get(kind, [{}])]


def _check_failure_target(workflow: Workflow, plan: list[str], failed: str, target: str | None) -> None:
    if target is None:
        return
    assert target in plan, f"{workflow.kind}: failing {failed} routes to {target!r}, not a step of the job"
    assert target != failed, f"{workflow.kind}: failing {failed} routes to itself"
    if workflow.is_recovery(failed):
        assert workflow.is_recovery(target), (
            f"{workflow.kind}: failing recovery step {failed} routes back to the normal path ({target})")
    elif not workflow.is_recovery(target):
        assert plan.index(target) > plan.index(failed), (
            f"{workflow.kind}: failing {failed} routes back to the earlier step {target}")


@pytest.mark.parametrize("kind", ROUTED)
def test_failure_tables_route_every_step_forward_or_to_recovery(kind: str) -> None:
    workflow = CATALOG[kind]
    routes = workflow.routes
    assert isinstance(routes, Routes)
    for name in routes.failure:
        workflow.resolve(name)  # no row for a step the workflow does not have
    for plan in _plans(kind):
        for failed in plan:
            _check_failure_target(workflow, plan, failed, routes.failure_route(failed))
        for (failed, failure_class), target in routes.by_class.items():
            assert failure_class in failures.FAILURE_KINDS, f"{kind}: unknown failure class {failure_class!r}"
            if failed in plan:
                _check_failure_target(workflow, plan, failed, target)


@pytest.mark.parametrize("kind", ROUTED)
def test_cancel_tables_route_every_step_to_recovery_on_or_end(kind: str) -> None:
    workflow = CATALOG[kind]
    routes = workflow.routes
    assert isinstance(routes, Routes)
    for name in routes.cancel:
        if name is not None:
            workflow.resolve(name)
    for plan in _plans(kind):
        for after in [None, *plan]:
            target = routes.cancel_route(after)
            if target is None or target is GO_ON:
                continue
            assert isinstance(target, str) and target in plan, f"{kind}: a cancel after {after} routes to {target!r}"
            assert workflow.is_recovery(target), f"{kind}: a cancel after {after} goes to normal step {target}"


@pytest.mark.parametrize("kind", [k for k in ROUTED if CATALOG[k].routes.recovered_by])  # type: ignore[union-attr]
def test_a_recovered_job_ends_where_the_route_of_its_failure_ends(kind: str) -> None:
    workflow = CATALOG[kind]
    routes = workflow.routes
    assert isinstance(routes, Routes) and routes.recovered_by is not None
    spec = workflow.resolve(routes.recovered_by)
    assert spec.recovery and spec.last, f"{kind}: {routes.recovered_by} does not end a recovery path"
    assert routes.recoverable, f"{kind}: nothing to recover from"
    for step in routes.recoverable:
        assert not workflow.is_recovery(step), f"{kind}: recoverable step {step} is a recovery step"
    for params in PARAMS.get(kind, [{}]):
        for step in sorted(routes.recoverable & set(workflow.plan(params))):
            job = _job(workflow, params, {}, step)
            target = routes.failure_route(step)
            assert target is not None, f"{kind}: failing {step} ends the job unrecovered"
            path = _path(workflow, job, target)
            assert path[-1] == routes.recovered_by, (
                f"{kind}: failing {step} leads to {path}, not to {routes.recovered_by}")
            for name in path:
                job.step(name).state = StepState.SUCCESS
            assert workflow.final_state(job) == routes.recovered_state
            job.step(routes.recovered_by).state = StepState.FAILED
            assert workflow.final_state(job) == JobState.FAILED
        assert workflow.final_state(_job(workflow, params, {})) == JobState.SUCCEEDED


def test_a_route_table_without_a_row_for_a_step_says_so() -> None:
    routes = Routes(resolve=CATALOG["drill"].resolve, failure={"fetch": "cleanup"})
    assert routes.failure_route("fetch") == "cleanup"
    with pytest.raises(KeyError):
        routes.failure_route("verify")
    with pytest.raises(KeyError):
        routes.cancel_route(None)


def test_a_cancel_table_read_at_the_furthest_step_that_started() -> None:
    drill = CATALOG["drill"]
    first, second = drill.plan({})[:2]
    routes = Routes(resolve=drill.resolve, failure={}, cancel={None: None, first: None, second: "cleanup"},
                    cancel_otherwise=GO_ON, cancel_at="started")
    job = _job(drill, {}, {})
    assert routes.on_cancel(job, None) is None
    job.step(first).state = StepState.SUCCESS
    assert routes.on_cancel(job, first) is None
    job.step(second).attempts = 1  # tried once, waiting for its retry: still pending, yet started
    assert routes.on_cancel(job, first) == "cleanup"
    assert dataclasses.replace(routes, cancel_at="ended").on_cancel(job, first) is None


def test_a_recovery_a_cancel_sent_the_job_to_counts_as_recovered() -> None:
    drill = CATALOG["drill"]
    first = drill.plan({})[0]
    routes = Routes(resolve=drill.resolve, failure={}, recoverable=frozenset({first}), recovered_by="cleanup",
                    recovered_state=JobState.ROLLED_BACK)
    job = _job(drill, {}, {})
    assert routes.final_state(job) == JobState.SUCCEEDED
    job.step("cleanup").state = StepState.SUCCESS  # no step failed: a cancel sent it there
    assert routes.final_state(job) == JobState.ROLLED_BACK
    job.step(first).state = StepState.FAILED
    assert routes.final_state(job) == JobState.ROLLED_BACK
    job.step(drill.plan({})[1]).state = StepState.FAILED  # a failure the recovery does not cover
    assert routes.final_state(job) == JobState.FAILED


# -- one vocabulary -------------------------------------------------------------------------------

#: the stored state words: of a job, of a step, of a fan-out's site
VOCABULARY = frozenset(JobState) | frozenset(StepState) | frozenset(SiteRun)
#: the modules that speak of states through the enums only
SCANNED = sorted(
    [p for p in (PACKAGE / "operations").glob("*.py") if p.name != "release.py"]
    + [PACKAGE / f"{name}.py" for name in ("workflow", "resume", "actions", "freshness", "sitestate", "observe")]
)


def state_literals(source: str) -> list[tuple[int, str]]:
    """(line, word) of every string constant that is a state word, leaving out docstrings and
    the members of an enum class (where the words are defined)."""
    tree = ast.parse(source)
    left_out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                left_out.add(id(body[0].value))
        if isinstance(node, ast.ClassDef) and any("Enum" in ast.unparse(base) for base in node.bases):
            for member in node.body:
                if isinstance(member, ast.Assign):
                    left_out.update(id(n) for n in ast.walk(member.value))
    return sorted(
        (node.lineno, node.value) for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in VOCABULARY
        and id(node) not in left_out
    )


def test_the_scan_finds_state_literals() -> None:
    source = '''
class Colour(StrEnum):
    """failed"""
    PENDING = "pending"

def f(job):
    """skipped"""
    if job.state == "failed":
        return "skipped"
    return run(state="not-started")
'''
    assert state_literals(source) == [(8, "failed"), (9, "skipped"), (10, "not-started")]


@pytest.mark.parametrize("path", SCANNED, ids=[p.name for p in SCANNED])
def test_states_are_spelled_through_the_enums(path: Path) -> None:
    found = state_literals(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(PACKAGE.parent)}: state words spelled as strings: {found}"
