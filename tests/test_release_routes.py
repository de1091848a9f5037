"""Where a failed or cancelled release goes, and how it ends: every route of the release
workflow's table (:data:`jerp_jobs.operations.release.ROUTES`), read through the workflow itself
(no store, no platform)."""

from __future__ import annotations

import pytest

from jerp_jobs.jobs import Job, JobState, Step, StepState
from jerp_jobs.operations.release import RELEASE, ROUTES, STEPS
from jerp_jobs.workflow import GO_ON

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


def _ran(job: Job, **states: StepState) -> Job:
    """``job`` with the named steps (``rollback_deploy`` for ``rollback-deploy``) in those states."""
    for name, state in states.items():
        step = job.step(name.replace("_", "-"))
        step.state, step.attempts = state, 1
    return job


def test_the_plan_is_the_normal_path_then_the_rollback_path() -> None:
    assert RELEASE.plan({"tag": "a1b2c3d"}) == NORMAL + ROLLBACK == list(STEPS)
    assert [name for name in STEPS if RELEASE.is_recovery(name)] == ROLLBACK


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


@pytest.mark.parametrize("ended", range(len(NORMAL)))
def test_a_release_cancelled_part_way_goes_back_once_its_deploy_started(ended: int) -> None:
    """A cancel after the first ``ended`` steps of the normal path ended, as the runner sees it
    (the last step that ended), with the next one pending."""
    job = _ran(_job(rollback=False), **{name: StepState.SUCCESS for name in NORMAL[:ended]})
    after = NORMAL[ended - 1] if ended else None
    expected = "rollback-deploy" if ended >= 2 else None  # record and deploy ended: the new tag was asked for
    assert RELEASE.on_cancel(job, after) == expected
    assert RELEASE.on_cancel(_ran(_job(rollback=True), **{name: StepState.SUCCESS for name in NORMAL[:ended]}),
                             after) is None


def test_how_a_release_ends() -> None:
    assert RELEASE.final_state(_job(rollback=False)) == JobState.SUCCEEDED
    done = _ran(_job(rollback=False), **{name: StepState.SUCCESS for name in NORMAL})
    assert RELEASE.final_state(done) == JobState.SUCCEEDED
    # a failure after record, the rollback run to its end
    rolled_back = _ran(_job(rollback=False), record=StepState.SUCCESS, deploy=StepState.SUCCESS,
                       migrate=StepState.FAILED, **{name: StepState.SUCCESS for name in ROLLBACK})
    assert RELEASE.final_state(rolled_back) == JobState.ROLLED_BACK
    # a cancel sent it back (no step failed)
    cancelled_back = _ran(_job(rollback=False), record=StepState.SUCCESS, deploy=StepState.SUCCESS,
                          **{name: StepState.SUCCESS for name in ROLLBACK})
    assert RELEASE.final_state(cancelled_back) == JobState.ROLLED_BACK
    # the rollback failed too
    rollback_failed = _ran(_job(rollback=False), record=StepState.SUCCESS, deploy=StepState.FAILED,
                           rollback_deploy=StepState.SUCCESS, rollback_rollout=StepState.FAILED)
    assert RELEASE.final_state(rollback_failed) == JobState.FAILED
    # a manual rollback that failed, and one that did not
    assert RELEASE.final_state(_ran(_job(rollback=True), record=StepState.SUCCESS,
                                    deploy=StepState.FAILED)) == JobState.FAILED
    assert RELEASE.final_state(_ran(_job(rollback=True), **{name: StepState.SUCCESS for name in NORMAL})) == (
        JobState.SUCCEEDED)


def test_the_route_table_names_every_step_and_only_steps() -> None:
    assert RELEASE.routes is ROUTES
    assert set(ROUTES.failure) == set(STEPS)
    assert set(ROUTES.failure.values()) <= {None, *STEPS}
    assert set(ROUTES.cancel) == {None, *STEPS}
    assert set(ROUTES.cancel.values()) <= {None, *STEPS}
    assert GO_ON not in ROUTES.cancel.values()  # a cancelled release never goes on to its end
    assert ROUTES.recovered_by == ROLLBACK[-1] and ROUTES.recovered_state == JobState.ROLLED_BACK
