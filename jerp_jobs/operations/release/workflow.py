"""The release as a workflow: its steps, where a failure or a cancel sends it, how it ends.

    record -> deploy -> rollout -> migrate -> smoke -> finish
              (on failure) rollback-deploy -> rollback-rollout -> rollback-migrate
                           -> rollback-smoke -> rollback-finish

Any failure after ``record`` sends the job down the rollback path (:data:`ON_FAILURE`), which
deploys the previous tag, migrates and smoke-tests again; the release then ends
``rolled-back`` with the reason. If the rollback fails too, the release ends ``failed``. A
release cancelled once its new tag may have been asked for goes back too (:data:`ON_CANCEL`).
A manual rollback (``params.rollback``) has no way further back: it ends where it fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jerp_jobs.errors import InvalidInput
from jerp_jobs.hooks import validate_tag
from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.operations.release.admission import admit
from jerp_jobs.operations.release.ending import on_end
from jerp_jobs.operations.release.steps import (
    deploy,
    finish,
    migrate,
    on_child_done,
    reconcile,
    record,
    rollback_finish,
    rollout,
    smoke,
)
from jerp_jobs.releases import KIND
from jerp_jobs.workflow import StepContext, StepSpec, Workflow, table_resolver


def _bind(fn: Callable[..., Any], *, rollback: bool) -> Callable[[StepContext], Any]:
    def step(ctx: StepContext) -> Any:
        return fn(ctx, rollback=rollback)

    step.__name__ = f"{'rollback_' if rollback else ''}{fn.__name__.lstrip('_')}"
    return step


STEPS: dict[str, StepSpec] = {
    "record": StepSpec(record, scope="bench"),
    "deploy": StepSpec(_bind(deploy, rollback=False), scope="bench", retries=5),
    "rollout": StepSpec(_bind(rollout, rollback=False), scope="bench"),
    "migrate": StepSpec(_bind(migrate, rollback=False), scope="bench"),
    "smoke": StepSpec(_bind(smoke, rollback=False), scope="bench"),
    "finish": StepSpec(finish, scope="bench", last=True),
    "rollback-deploy": StepSpec(_bind(deploy, rollback=True), scope="bench", recovery=True, retries=5),
    "rollback-rollout": StepSpec(_bind(rollout, rollback=True), scope="bench", recovery=True),
    "rollback-migrate": StepSpec(_bind(migrate, rollback=True), scope="bench", recovery=True),
    "rollback-smoke": StepSpec(_bind(smoke, rollback=True), scope="bench", recovery=True),
    "rollback-finish": StepSpec(rollback_finish, scope="bench", recovery=True, last=True),
}

# -- where a failure or a cancel sends the job -----------------------------------------------------

#: the two kinds of release job: one that releases a tag, and an operator's manual rollback
RELEASE_PATH, ROLLBACK_PATH = "release", "rollback"

#: the step a failed step sends the job to, by kind of job (None: the job ends)
ON_FAILURE: dict[str, dict[str, str | None]] = {
    RELEASE_PATH: {
        "record": None,  # nothing was asked of the platform yet
        "deploy": "rollback-deploy",
        "rollout": "rollback-deploy",
        "migrate": "rollback-deploy",
        "smoke": "rollback-deploy",
        "finish": "rollback-deploy",
        "rollback-deploy": None,  # the rollback failed too: the release ends failed
        "rollback-rollout": None,
        "rollback-migrate": None,
        "rollback-smoke": None,
        "rollback-finish": None,
    },
    ROLLBACK_PATH: dict.fromkeys(STEPS),  # a manual rollback has no way further back
}

#: the step a cancel sends the job to, by kind of job and whether the new tag may have been
#: asked for (its ``deploy`` ran, runs or was tried): then the previous tag goes back
ON_CANCEL: dict[tuple[str, bool], str | None] = {
    (RELEASE_PATH, False): None,  # nothing asked of the platform: the release just ends
    (RELEASE_PATH, True): "rollback-deploy",
    (ROLLBACK_PATH, False): None,
    (ROLLBACK_PATH, True): None,
}


def _path(job: Job) -> str:
    return ROLLBACK_PATH if job.params.get("rollback") else RELEASE_PATH


def _deploy_asked(job: Job) -> bool:
    deploy_step = job.step("deploy")
    return deploy_step.attempts > 0 or deploy_step.state != StepState.PENDING


def _on_failure(job: Job, step: str) -> str | None:
    return ON_FAILURE[_path(job)].get(step)


def _on_cancel(job: Job, step: str | None) -> str | None:
    """Cancelled once the new tag may have been asked for: go back to the previous one."""
    return ON_CANCEL[_path(job), _deploy_asked(job)]


def _final_state(job: Job) -> str:
    if job.step("rollback-finish").state == StepState.SUCCESS:
        return JobState.ROLLED_BACK
    return JobState.FAILED if any(s.state == StepState.FAILED for s in job.steps) else JobState.SUCCEEDED


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    if params.get("rollback"):
        if params.get("tag"):
            raise InvalidInput("a rollback finds its tag itself; it takes none")
        return params
    validate_tag(params.get("tag"))
    return params


RELEASE = Workflow(
    kind=KIND,
    needs_site=False,
    plan=lambda params: list(STEPS),
    resolve=table_resolver(KIND, STEPS),
    on_failure=_on_failure,
    on_cancel=_on_cancel,
    final_state=_final_state,
    admit=admit,
    on_end=on_end,
    on_child_done=on_child_done,
    reconcile=reconcile,
    validate=_validate,
)
