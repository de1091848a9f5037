"""The error tree of jerp-jobs.

Every error carries a human message (``str(exc)``) and the fields an operator or a caller
needs. Parts translate what they catch into one of these with ``raise ... from exc``; entry
points (the CLI, the webhook service, Celery tasks) turn them into an exit code, an HTTP
status or a failed step, never into a traceback for an operator to read.

    JerpError
    ├── ConfigError            a setting is missing or malformed (names the variable)
    ├── InvalidInput           bad input from a caller: a site name, a path, an option
    │   └── InvalidSiteName
    ├── ExecutorError          the command could not be run where it should run
    │   ├── ContainerNotFound
    │   ├── ContainerNotRunning
    │   ├── ExecutorUnavailable   (Docker API / bench folder unreachable)
    │   │   └── CommandRefused    refused before it started: a root worker with no bench user
    │   └── CommandTimeout        the command ran past its timeout and was killed
    ├── CommandFailed          the command ran and exited non-zero (``failure``: its class)
    │   ├── ForeignLockHeld    another process kept a Frappe lock past the wait for it
    │   └── NoWorkers          no Frappe worker consumes the queues a step waits on
    ├── OutputParseError       bench printed something the parser does not recognise
    ├── Unauthorized           a hook's signature or token does not match
    ├── DeployError            the platform could not be moved to an image tag
    │   ├── RolloutTimeout     the backend did not run the new image within the deadline
    │   ├── DeployBusy         Portainer is already deploying the stack (409); transient
    │   └── DeployUnavailable  Portainer or the Docker API unreachable or failing; transient
    ├── SmokeFailed            a site failed its smoke checks (names the checks)
    ├── StoreError             the job store (Redis) misbehaved
    │   ├── JobNotFound
    │   ├── PartialRecord      a job's hash lacks a required field (names the job and fields)
    │   └── BrokerUnavailable
    ├── LockError
    │   ├── LockBusy           someone else holds it (names the holder's job)
    │   └── LockLost           our lock expired or was taken while we worked
    └── TransientError         (a mixin) may succeed when tried again later: a store that is
                               down, a timeout; steps that declare retries retry these
"""

from __future__ import annotations

from jerp_jobs.failures import LOCK_HELD_BY_OTHER, NO_WORKERS, RUN_AS_ROOT, TIMED_OUT, BenchFailure, classify_failure


class JerpError(Exception):
    """Base of every error the project raises on purpose."""

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return self.message


class ConfigError(JerpError):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}", variable=variable)
        self.variable = variable


class InvalidInput(JerpError):
    pass


class InvalidSiteName(InvalidInput):
    def __init__(self, name: str, rule: str) -> None:
        super().__init__(f"invalid site name {name!r}: {rule}", name=name, rule=rule)
        self.name = name
        self.rule = rule


class ExecutorError(JerpError):
    pass


class ContainerNotFound(ExecutorError):
    pass


class ContainerNotRunning(ExecutorError):
    pass


class ExecutorUnavailable(ExecutorError):
    pass


class CommandRefused(ExecutorUnavailable):
    """The executor refused to start the command: a worker running as root with no bench user
    (bench would refuse it too). Nothing ran; its class is ``run-as-root``, which changed
    nothing, so a workflow refused at its first step has nothing to bring back or mark."""

    @property
    def failure(self) -> BenchFailure:
        return BenchFailure(RUN_AS_ROOT, "refused before it started: the worker runs as root with no bench user "
                            "(JERP_BENCH_USER)")


class CommandTimeout(ExecutorError):
    def __init__(self, message: str, *, timeout: float, output_tail: str = "") -> None:
        super().__init__(message, timeout=timeout)
        self.timeout = timeout
        self.output_tail = output_tail

    @property
    def failure(self) -> BenchFailure:
        """Always the ``timed-out`` class (:class:`jerp_jobs.failures.BenchFailure`)."""
        return BenchFailure(TIMED_OUT, f"the command ran past its timeout of {self.timeout:g}s and was killed")


class CommandFailed(JerpError):
    """A command exited non-zero. ``failure`` is its class (a
    :class:`jerp_jobs.failures.BenchFailure`): given, or read from the exit status and the output
    by :func:`jerp_jobs.failures.classify_failure`. The runner records it in the job's result."""

    def __init__(self, message: str, *, exit_code: int, output_tail: str = "", failure: BenchFailure | None = None) -> None:
        super().__init__(message, exit_code=exit_code)
        self.exit_code = exit_code
        self.output_tail = output_tail
        self._failure = failure

    @property
    def failure(self) -> BenchFailure:
        if self._failure is None:
            self._failure = classify_failure(self.exit_code, self.output_tail)
        return self._failure


class ForeignLockHeld(CommandFailed):
    """Another process (not this platform: its fence keeps its own commands apart) held a Frappe
    lock for longer than the step would wait. Nothing of the command ran."""

    def __init__(self, message: str, *, lock: str, waited_s: float, exit_code: int = 1, output_tail: str = "",
                 lock_path: str | None = None) -> None:
        super().__init__(message, exit_code=exit_code, output_tail=output_tail,
                         failure=BenchFailure(LOCK_HELD_BY_OTHER, f"another process holds {lock}", lock=lock,
                                              lock_path=lock_path))
        self.fields.update(lock=lock, waited_s=waited_s)
        self.lock = lock
        self.waited_s = waited_s


class NoWorkers(CommandFailed):
    """A step waits for background jobs that nothing will run: no Frappe worker is online."""

    def __init__(self, message: str, *, exit_code: int = 1, output_tail: str = "") -> None:
        super().__init__(message, exit_code=exit_code, output_tail=output_tail,
                         failure=BenchFailure(NO_WORKERS, "no Frappe worker consumes the site's queues"))


class OutputParseError(JerpError):
    pass


class Unauthorized(JerpError):
    """A request's signature or token is missing or does not match (the message says which)."""


class DeployError(JerpError):
    pass


class RolloutTimeout(DeployError):
    pass


class SmokeFailed(JerpError):
    pass


class StoreError(JerpError):
    pass


class JobNotFound(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (unknown id, or expired)", job_id=job_id)
        self.job_id = job_id


class PartialRecord(StoreError):
    """A job's hash lacks fields every job record has (written to after it expired, or by hand)."""

    def __init__(self, job_id: str, missing: list[str]) -> None:
        super().__init__(
            f"job {job_id} has a partial record: it lacks {', '.join(missing)} (expired and written to "
            f"again, or changed by hand); read it with: redis-cli HGETALL jerp:job:{job_id}",
            job_id=job_id, missing=missing,
        )
        self.job_id = job_id
        self.missing = missing


class BrokerUnavailable(StoreError):
    pass


class LockError(JerpError):
    pass


class LockBusy(LockError):
    def __init__(self, name: str, holder: dict[str, str] | None) -> None:
        holder = holder or {}
        who = holder.get("job_id") or "an unknown holder"
        what = holder.get("step")
        detail = f"job {who}" + (f" (step {what})" if what else "")
        super().__init__(f"{name} is busy: held by {detail}", lock=name, holder=holder)
        self.name = name
        self.holder = holder


class LockLost(LockError):
    pass


class TransientError(JerpError):
    """The operation may succeed if tried again later (a service down, a timeout)."""


class DeployBusy(DeployError, TransientError):
    """Portainer is already deploying the stack (HTTP 409): try again later."""


class DeployUnavailable(DeployError, TransientError):
    """Portainer or the Docker API could not be reached, or failed (5xx): try again later."""
