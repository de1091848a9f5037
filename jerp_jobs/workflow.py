"""Workflows as data: the named steps of a job kind, and what runs each step.

A :class:`Workflow` plans a job's steps up front (``plan``) and maps each step name to a
:class:`StepSpec`: the plain function that does the work, and the lock it needs (the site's,
or the bench's for bench-wide work such as ``build``). Steps marked ``recovery`` run only
when the workflow's ``on_failure`` sends the job to them; on the normal path they end
``skipped``. A workflow with recovery keeps its failure and cancel routes and its final state
as tables (:class:`Routes`) next to its steps. Nothing here imports Celery: the runner
(``jerp_jobs.runner``) executes steps and the Celery tasks (``jerp_jobs.tasks``) only carry them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from jerp_jobs.errors import CommandFailed, InvalidInput
from jerp_jobs.jobs import JobState, StepState
from jerp_jobs.log import get_logger, redactor

if TYPE_CHECKING:
    from jerp_jobs.executors.base import CommandResult
    from jerp_jobs.jobs import Job
    from jerp_jobs.runtime import Runtime

log = get_logger(__name__)

#: flock's exit code when the fence stayed busy past its wait (EX_TEMPFAIL)
FENCE_BUSY = 75


def fence_path(fence: str) -> str:
    """The fence's lock file, relative to the bench folder."""
    return f"sites/.jerp-fence.{fence}"


def fence_wait(timeout: float) -> float:
    """How long a command waits for its fence: inside its own timeout, ending a little before
    it (a tenth, at most a second) so that a busy fence is reported as such, not as a timeout."""
    return max(timeout - min(1.0, timeout / 10), timeout / 2)


@dataclass
class StepContext:
    """What a step function gets: the job, the parts, and helpers that record as they go."""

    runtime: Runtime
    job: Job
    step: str
    output: list[str] = field(default_factory=list)
    exit_code: int | None = None
    #: the fence commands run in unless told otherwise: the site, or "bench" for bench-wide steps
    fence: str | None = None

    @property
    def site(self) -> str:
        if self.job.site is None:
            raise InvalidInput(f"step {self.step} needs a site")
        return self.job.site

    @property
    def params(self) -> Mapping[str, Any]:
        return self.job.params

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    @property
    def bench(self) -> str:
        return self.runtime.settings.bench_bin

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        fence: str | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run argv through the executor, fenced; output goes into the step record.

        Output lines are logged one by one at DEBUG only; ``command.end`` counts them at INFO.
        While the command runs, its argv and its lines go to the job's live output stream
        (redacted, in batches: :class:`jerp_jobs.jobs.LiveOutput`), which ``jerpctl --wait`` follows.

        The fence is a kernel file lock (``flock``) in the bench's sites folder, one per site
        (or ``bench`` for bench-wide work), held by the command's own processes for as long as
        they live. A command left running by a worker that died (SIGKILL, OOM) keeps its fence,
        so the step's next attempt waits for it to end instead of running beside it: never two
        bench processes for one site.

        One limit, ``timeout`` (default ``JERP_COMMAND_TIMEOUT``), covers the wait for the
        fence and the command together: the fence is waited for at most
        :func:`fence_wait` of it (a busy fence then fails the step naming the fence), and the
        executor kills everything at ``timeout`` — the command's process group and every
        process still holding the fence file (one that daemonised, ``setsid``, included).
        ``stdin`` goes to the command's standard input (answers to bench's password prompts).
        """
        timeout = timeout or self.runtime.settings.command_timeout
        fence = fence or self.fence or self.job.site or "bench"
        wait = fence_wait(timeout)
        shown = redactor.argv(argv)
        log.info("command.start", argv=shown, timeout=timeout)
        lines = 0
        live = _live_output(self.runtime, self.job, self.step)
        live.command(shown)

        def _line(line: str) -> None:
            nonlocal lines
            lines += 1
            log.debug("command.output", line=line)
            live.line(line)

        fence_file = fence_path(fence)
        fenced = ["flock", "-w", f"{wait:g}", "-E", str(FENCE_BUSY), fence_file, *argv]
        try:
            result = self.runtime.executor.run(
                fenced, timeout=timeout, on_output=_line, stdin=stdin, holders_of=fence_file
            )
        finally:
            live.close()
        self.exit_code = result.exit_code
        self.output.append(result.output)
        log.info("command.end", argv=shown, exit_code=result.exit_code, duration_s=round(result.duration_s, 3),
                 output_lines=lines)
        if result.exit_code == FENCE_BUSY:
            raise CommandFailed(
                f"another process still works on {fence} (its fence stayed busy for {wait:g}s); "
                f"not running {' '.join(shown[:4])}",
                exit_code=result.exit_code,
                output_tail=result.output,
            )
        if check and not result.ok:
            raise CommandFailed(
                f"{' '.join(shown)} exited {result.exit_code}",
                exit_code=result.exit_code,
                output_tail=result.output,
            )
        return result

    def record(self, **values: Any) -> None:
        """Merge values into the job's result (shown by ``jerpctl status``)."""
        self.runtime.store.set_result(self.job.id, **values)


class _NoLiveOutput:
    """Where the lines of a command run outside any stored job go: nowhere."""

    def command(self, argv: Sequence[str]) -> None:
        pass

    def line(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _live_output(runtime: Any, job: Any, step: str) -> Any:
    """The live output writer of ``job``'s ``step``; a context with no job store or no job id
    (a command run by a check or a tool, not by a stored job) streams nowhere."""
    store = getattr(runtime, "store", None)
    job_id = getattr(job, "id", None)
    if store is None or not job_id:
        return _NoLiveOutput()
    return store.live_output(job_id, step)


StepFn = Callable[[StepContext], str | None]  # returns None (StepState.SUCCESS), StepState.SKIPPED, or WAITING

#: A step function returns this when the step goes on outside any worker (a fan-out waiting
#: for its children): the step stays running until ``runner.complete_waiting_step`` ends it.
WAITING = "waiting"


@dataclass(frozen=True)
class StepSpec:
    """How to run one step.

    ``retries``: a step that raises :class:`~jerp_jobs.errors.TransientError` (a store that
    is down) is tried again that many times, waiting ``JERP_RETRY_BACKOFF`` s, doubling
    each time. ``recovery`` steps are off the normal path: they run only when ``on_failure`` names them,
    and end ``skipped`` otherwise. ``then`` names the step that follows this one (default: the
    next pending step on the same path); ``last`` ends the path here.
    """

    fn: StepFn
    scope: Literal["site", "bench"] = "site"
    recovery: bool = False
    then: str | None = None
    last: bool = False
    #: attempts after the first when the step raises a TransientError (backoff JERP_RETRY_BACKOFF)
    retries: int = 0


class _GoOn:
    """The cancel route that finishes the normal path (see :data:`GO_ON`)."""

    def __repr__(self) -> str:
        return "GO_ON"


#: a cancel route: go on with the next pending step of the normal path, to its end (stopping
#: half-way through a change would leave the site down)
GO_ON = _GoOn()

#: where a route leads: a step of the workflow, or None (the job ends there)
Route = str | None
#: where a cancel route leads: also GO_ON
CancelRoute = str | None | _GoOn

#: no default route: every step has its row in the table
_ALL_ROUTED: Any = object()


@dataclass(frozen=True)
class Routes:
    """A workflow's failure and cancel routes and its final state, as tables.

    - ``failure``: a failed step -> the step the job goes to (a recovery step, or a later step
      of the normal path), or None: the job ends there. ``failure_otherwise`` is the route of
      a step without a row (steps named at plan time, one per app say).
    - ``by_class``: (failed step, class of the bench failure it recorded in ``result.failure``)
      -> route; it comes before the step's row in ``failure``.
    - ``cancel``: the last step that ended (None: none yet) -> where a cancelled job goes: a
      step, None (it ends there) or :data:`GO_ON`; ``cancel_otherwise`` as above. With
      ``cancel_at="started"`` the row read is that of the furthest step of the plan that
      started instead (it ran, runs, or was tried and waits for its retry): for a workflow whose
      way back depends on what a step may already have asked for, ended or not.
    - ``recoverable``, ``recovered_by`` and ``recovered_state``: a job whose failed steps, if
      any, are all in ``recoverable`` ends ``recovered_state`` (``recovered`` unless told
      otherwise) once the recovery path's last step, ``recovered_by``, succeeded — whether a
      failure or a cancel sent it there; otherwise ``failed`` when a step failed, else
      ``succeeded``.

    ``resolve`` is the workflow's own: :data:`GO_ON` leaves out its recovery steps.
    """

    resolve: Callable[[str], StepSpec]
    failure: Mapping[str, Route]
    cancel: Mapping[str | None, CancelRoute] = field(default_factory=dict)
    by_class: Mapping[tuple[str, str], Route] = field(default_factory=dict)
    failure_otherwise: Route = _ALL_ROUTED
    cancel_otherwise: CancelRoute = _ALL_ROUTED
    recoverable: frozenset[str] = frozenset()
    recovered_by: str | None = None
    recovered_state: JobState = JobState.RECOVERED
    cancel_at: Literal["ended", "started"] = "ended"

    def failure_route(self, step: str) -> Route:
        """The row of ``step`` in ``failure`` (KeyError when it has none and no default)."""
        if step in self.failure:
            return self.failure[step]
        if self.failure_otherwise is _ALL_ROUTED:
            raise KeyError(step)
        return self.failure_otherwise

    def cancel_route(self, step: str | None) -> CancelRoute:
        """The row of ``step`` in ``cancel`` (KeyError when it has none and no default)."""
        if step in self.cancel:
            return self.cancel[step]
        if self.cancel_otherwise is _ALL_ROUTED:
            raise KeyError(step)
        return self.cancel_otherwise

    def on_failure(self, job: Job, step: str) -> Route:
        failure = job.result.get("failure") or {}
        if failure.get("step") == step and (step, failure.get("class")) in self.by_class:
            return _planned(job, self.by_class[(step, failure["class"])])
        return _planned(job, self.failure_route(step))

    def on_cancel(self, job: Job, step: str | None) -> Route:
        if self.cancel_at == "started":
            step = _furthest_started(job)
        route = self.cancel_route(step)
        if route is GO_ON:
            return next((s.name for s in job.steps
                         if s.state == StepState.PENDING and not self.resolve(s.name).recovery), None)
        return _planned(job, route)

    def final_state(self, job: Job) -> JobState:
        failed = {s.name for s in job.steps if s.state == StepState.FAILED}
        if (self.recovered_by is not None and failed <= self.recoverable
                and job.step(self.recovered_by).state == StepState.SUCCESS):
            return self.recovered_state
        return JobState.FAILED if failed else JobState.SUCCEEDED

    def hooks(self, **override: Any) -> dict[str, Any]:
        """The Workflow fields these tables give (``routes`` and its three hooks); ``override``
        replaces one (a hook that reads job facts first, then the table)."""
        return {"routes": self, "on_failure": self.on_failure, "on_cancel": self.on_cancel,
                "final_state": self.final_state, **override}


def _planned(job: Job, route: Any) -> Route:
    """``route``, or None (the job ends) when it leads to a step this job's plan does not have
    (a fan-out over several benches plans no canary clean-up: each bench's fan-out does its own)."""
    if route is None or any(s.name == route for s in job.steps):
        return route
    return None


def _furthest_started(job: Job) -> str | None:
    """The last step of the plan that started: it ended, runs, or was tried (None: none yet)."""
    started = [s.name for s in job.steps if s.attempts > 0 or s.state != StepState.PENDING]
    return started[-1] if started else None


@dataclass(frozen=True)
class Workflow:
    kind: str
    needs_site: bool
    plan: Callable[[Mapping[str, Any]], list[str]]
    resolve: Callable[[str], StepSpec]
    on_failure: Callable[[Job, str], str | None] = lambda job, step: None
    final_state: Callable[[Job], str] = lambda job: (
        JobState.FAILED if any(s.state == StepState.FAILED for s in job.steps) else JobState.SUCCEEDED
    )
    #: where a cancelled job goes after ``step`` (None: it just ends); e.g. back online
    on_cancel: Callable[[Job, str | None], str | None] = lambda job, step: None
    #: what a cancelled job's ``on_cancel`` path leaves behind, in its final message
    cancel_outcome: Callable[[Job], str] = lambda job: "the site was left online"
    #: called before each step of a job that holds no site: LockBusy keeps the job waiting (queued)
    admit: Callable[[Runtime, Job], None] = lambda rt, job: None
    #: a child job (started by one of this job's steps) ended: settle the waiting step
    on_child_done: Callable[[Runtime, str, str], Any] = lambda rt, parent_id, child_id: None
    #: deliver the ends of children whose notification was lost (the resumer calls it)
    reconcile: Callable[[Runtime, str], None] = lambda rt, parent_id: None
    #: called once when the job has its final state (frees what the job held, tells people)
    on_end: Callable[[Runtime, Job], None] = lambda rt, job: None
    #: checks and normalises a request's parameters before the job exists (InvalidInput if bad)
    validate: Callable[[str | None, dict[str, Any], Any], dict[str, Any]] = lambda site, params, settings: params
    #: True when a request with these (validated) parameters works on a site that must already
    #: exist: such a request for a site the bench does not have is refused before the job exists
    site_must_exist: Callable[[Mapping[str, Any]], bool] = lambda params: False
    #: checks a request's (validated) parameters against the bench the job was given and the
    #: fleet, before the job exists (InvalidInput if they do not fit: a move to its own bench)
    check_bench: Callable[[Mapping[str, Any], str | None, Any], None] = lambda params, bench, fleet: None
    #: the tables behind ``on_failure``, ``on_cancel`` and ``final_state`` when the workflow has
    #: them (:class:`Routes`), for the checks that read every route without running a job
    routes: Routes | None = None

    def is_recovery(self, step: str) -> bool:
        return self.resolve(step).recovery


class Catalog(Mapping[str, Workflow]):
    """The job kinds a process knows, built explicitly from the workflows given (no import side
    effects): ``jerp_jobs.catalog.CATALOG`` lists the built-in ones."""

    def __init__(self, workflows: Sequence[Workflow] = ()) -> None:
        self._by_kind: dict[str, Workflow] = {}
        for workflow in workflows:
            if workflow.kind in self._by_kind:
                raise ValueError(f"two workflows of kind {workflow.kind!r}")
            self._by_kind[workflow.kind] = workflow

    def __getitem__(self, kind: str) -> Workflow:
        return self._by_kind[kind]

    def workflow(self, kind: str) -> Workflow:
        """The workflow of ``kind``; InvalidInput naming the known kinds if there is none."""
        try:
            return self._by_kind[kind]
        except KeyError:
            known = ", ".join(sorted(self._by_kind)) or "none"
            raise InvalidInput(f"unknown job kind {kind!r}; known: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_kind)

    def __len__(self) -> int:
        return len(self._by_kind)


def table_resolver(kind: str, table: Mapping[str, StepSpec]) -> Callable[[str], StepSpec]:
    def resolve(name: str) -> StepSpec:
        try:
            return table[name]
        except KeyError:
            raise InvalidInput(f"{kind} has no step {name!r}") from None

    return resolve


def simple(kind: str, steps: Sequence[tuple[str, StepSpec]], *, needs_site: bool = True, **extra: Any) -> Workflow:
    """A workflow whose plan is a fixed list of steps."""
    names = [name for name, _ in steps]
    return Workflow(
        kind=kind,
        needs_site=needs_site,
        plan=lambda params: list(names),
        resolve=table_resolver(kind, dict(steps)),
        **extra,
    )
