"""Where a failed or cancelled release goes: every route of the release workflow's tables,
read through the workflow itself (no store, no platform)."""

from __future__ import annotations

import pytest

from jerp_jobs.jobs import Job, Step, StepState
from jerp_jobs.operations.release import ON_CANCEL, ON_FAILURE, RELEASE, STEPS

NORMAL = ["record", "deploy", "rollout", "migrate", "smoke", "finish"]
ROLLBACK = ["rollback-deploy", "rollback-rollout", "rollback-migrate", "rollback-smoke", "rollback-finish"]


def _job(*, rollback: bool, deploy: StepState = StepState.PENDING, attempts: int = 0) -> Job:
    params = {"rollback": True} if rollback else {"tag": "a1b2c3d"}
    steps = [Step(name) for name in RELEASE.plan(params)]
    for step in steps:
        if step.name == "deploy":
            step.state, step.attempts = deploy, attempts
    return Job(id="j1", kind="release", site=None, state="running", created_at=0.0, updated_at=0.0,
               params=params, steps=steps)


def test_the_plan_is_the_normal_path_then_the_rollback_path() -> None:
    assert RELEASE.plan({"tag": "a1b2c3d"}) == NORMAL + ROLLBACK == list(STEPS)


@pytest.mark.parametrize("step,route", [
    ("record", None),
    ("deploy", "rollback-deploy"),
    ("rollout", "rollback-deploy"),
    ("migrate", "rollback-deploy"),
    ("smoke", "rollback-deploy"),
    ("finish", "rollback-deploy"),
    ("rollback-deploy", None),
    ("rollback-rollout", None),
    ("rollback-migrate", None),
    ("rollback-smoke", None),
    ("rollback-finish", None),
    ("a-step-of-another-version", None),
])
def test_a_failed_step_of_a_release(step: str, route: str | None) -> None:
    assert RELEASE.on_failure(_job(rollback=False), step) == route


@pytest.mark.parametrize("step", NORMAL + ROLLBACK)
def test_a_manual_rollback_has_no_way_further_back(step: str) -> None:
    assert RELEASE.on_failure(_job(rollback=True), step) is None


@pytest.mark.parametrize("rollback,deploy,attempts,route", [
    (False, StepState.PENDING, 0, None),  # the new tag was never asked for
    (False, StepState.PENDING, 1, "rollback-deploy"),  # a deploy tried, waiting for its retry
    (False, StepState.RUNNING, 1, "rollback-deploy"),
    (False, StepState.SUCCESS, 1, "rollback-deploy"),
    (False, StepState.FAILED, 6, "rollback-deploy"),
    (False, StepState.SKIPPED, 0, "rollback-deploy"),
    (True, StepState.PENDING, 0, None),
    (True, StepState.PENDING, 1, None),
    (True, StepState.RUNNING, 1, None),
    (True, StepState.SUCCESS, 1, None),
    (True, StepState.FAILED, 6, None),
])
def test_a_cancelled_release(rollback: bool, deploy: StepState, attempts: int, route: str | None) -> None:
    job = _job(rollback=rollback, deploy=deploy, attempts=attempts)
    for step in [None, *STEPS]:
        assert RELEASE.on_cancel(job, step) == route


def test_the_route_tables_name_every_step_and_only_steps() -> None:
    assert all(set(routes) == set(STEPS) for routes in ON_FAILURE.values())
    assert {route for routes in ON_FAILURE.values() for route in routes.values()} <= {None, *STEPS}
    assert set(ON_CANCEL) == {(path, asked) for path in ON_FAILURE for asked in (False, True)}
    assert set(ON_CANCEL.values()) <= {None, *STEPS}
