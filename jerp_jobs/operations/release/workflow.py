"""The release as a workflow: its steps, where a failure or a cancel sends it, how it ends.

    record -> deploy -> rollout -> migrate -> smoke [-> drill] -> finish
              (on failure) rollback-deploy -> rollback-rollout -> rollback-migrate
                           -> rollback-smoke -> rollback-finish

Any failure after ``record`` sends the job down the rollback path (:data:`ROUTES`), which
deploys the previous tag, migrates and smoke-tests again; the release then ends
``rolled-back`` with the reason. If the rollback fails too, the release ends ``failed``. A
release cancelled once its new tag may have been asked for goes back too (its ``deploy``
started: the cancel routes are read at the furthest step that started). A manual rollback
(``params.rollback``) has no way further back: it ends where it fails or is cancelled.

``drill`` is planned for a release on the staging bench only (``params.stage`` ``staging``:
restore drills of production's off-site backups on staging); a release on a production bench
(``stage`` ``production``, promoted) and a single host's release have today's steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jerp_jobs.errors import InvalidInput
from jerp_jobs.hooks import validate_tag
from jerp_jobs.jobs import Job, JobState
from jerp_jobs.operations.release.admission import admit
from jerp_jobs.operations.release.ending import on_end
from jerp_jobs.operations.release.steps import (
    deploy,
    drill,
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
from jerp_jobs.workflow import Routes, StepContext, StepSpec, Workflow, table_resolver


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

#: the steps of a release on the staging bench: ``drill`` (restore drills of production's
#: off-site backups on staging) before ``finish``
def _with_drill(steps: dict[str, StepSpec]) -> dict[str, StepSpec]:
    out: dict[str, StepSpec] = {}
    for name, spec in steps.items():
        if name == "finish":
            out["drill"] = StepSpec(drill, scope="bench")
        out[name] = spec
    return out


STAGING_STEPS = _with_drill(STEPS)

# -- where a failure or a cancel sends the job -----------------------------------------------------

NORMAL = ("record", "deploy", "rollout", "migrate", "smoke", "finish")
ROLLBACK = tuple(name for name in STEPS if STEPS[name].recovery)


def _routes(table: dict[str, StepSpec]) -> Routes:
    """The routes of a release whose steps are ``table``."""
    # the steps from which the new tag may have been asked for: their failure goes back to the previous tag
    asked = [name for name in table if name != "record" and not table[name].recovery]
    return Routes(
        resolve=table_resolver(KIND, STAGING_STEPS),
        # a failed step -> where the release goes (None: it ends there)
        failure={
            "record": None,  # nothing was asked of the platform yet
            **dict.fromkeys(asked, "rollback-deploy"),
            **dict.fromkeys(ROLLBACK),  # the rollback failed too: the release ends failed
        },
        failure_otherwise=None,  # a step this version does not have
        # the furthest step that started (it ended, runs, or was tried: a deploy waiting for its
        # retry) -> where a cancelled release goes: once the new tag may have been asked for, the
        # previous tag goes back
        cancel_at="started",
        cancel={
            None: None,
            "record": None,  # nothing asked of the platform: the release just ends
            **dict.fromkeys((*asked, *ROLLBACK), "rollback-deploy"),
        },
        # a release sent down the rollback path (by a failure or a cancel) that got there ends rolled-back
        recoverable=frozenset(asked),
        recovered_by="rollback-finish",
        recovered_state=JobState.ROLLED_BACK,
    )


#: a release's routes (a single host's, a production bench's)
ROUTES = _routes(STEPS)
#: the routes of a release on the staging bench: its ``drill`` too
STAGING_ROUTES = _routes(STAGING_STEPS)
#: the steps from which the new tag may have been asked for
ASKED = tuple(sorted(ROUTES.recoverable, key=NORMAL.index))


def _manual_rollback(job: Job) -> bool:
    """A manual rollback (``params.rollback``) has no way further back: it ends where it fails
    or is cancelled."""
    return bool(job.params.get("rollback"))


def routes_of(job: Job) -> Routes:
    """The route table of ``job``: the staging one for a release on the staging bench."""
    return STAGING_ROUTES if job.params.get("stage") == "staging" else ROUTES


def _on_failure(job: Job, step: str) -> str | None:
    return None if _manual_rollback(job) else routes_of(job).on_failure(job, step)


def _on_cancel(job: Job, step: str | None) -> str | None:
    return None if _manual_rollback(job) else routes_of(job).on_cancel(job, step)


def _final_state(job: Job) -> JobState:
    return routes_of(job).final_state(job)


STAGES = ("staging", "production")


def plan(params: dict[str, Any]) -> list[str]:
    """Every step; the drill only on the staging bench."""
    return list(STAGING_STEPS if params.get("stage") == "staging" else STEPS)


def _validate(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    stage = params.get("stage")
    if stage is not None and stage not in STAGES:
        raise InvalidInput(f"a release's stage is {' or '.join(STAGES)}, not {stage!r}")
    if stage == "production" and params.get("rollback"):
        raise InvalidInput("a rollback goes to the staging bench first; production takes the tag it passed there")
    if params.get("rollback"):
        if params.get("tag"):
            raise InvalidInput("a rollback finds its tag itself; it takes none")
        return params
    validate_tag(params.get("tag"))
    return params


RELEASE = Workflow(
    kind=KIND,
    needs_site=False,
    plan=plan,
    resolve=ROUTES.resolve,
    **ROUTES.hooks(on_failure=_on_failure, on_cancel=_on_cancel, final_state=_final_state),
    admit=admit,
    on_end=on_end,
    on_child_done=on_child_done,
    reconcile=reconcile,
    validate=_validate,
)
