"""A scripted executor for unit tests of the code that drives bench.

    fake = FakeExecutor([
        Rule(["bench", "--site", "a.example.com", "migrate"], output=["Migrating a.example.com"]),
        Rule(lambda argv: "backup" in argv, exit_code=1, output="Backup failed for Site a"),
        Rule(["bench", "build"], raises=CommandTimeout("too slow", timeout=60)),
    ])
    fake.on(["bench", "--site", "b.example.com"], exit_code=0)

The first rule that matches (an argv prefix, or a predicate on the argv tuple) decides: its
output lines go to ``on_output`` and into the result's tail, then its exception is raised if
it has one, else a :class:`CommandResult` with its exit code is returned. Every call is
recorded in :attr:`FakeExecutor.calls` (with its timeout, stdin and fence file); an argv no rule matches raises
:class:`UnexpectedCommand`, an ``AssertionError``. argv and timeout are checked the way the
real executors check them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jerp_jobs.executors._argv import check_argv, check_holders_of, check_stdin, check_timeout, describe_argv
from jerp_jobs.executors.base import CommandResult, OutputCallback, OutputTail

Matcher = Sequence[str] | Callable[[tuple[str, ...]], bool]


class UnexpectedCommand(AssertionError):
    """The code under test ran an argv that no rule of the FakeExecutor expects."""

    def __init__(self, argv: tuple[str, ...], rules: Sequence[Rule]) -> None:
        known = "\n".join(f"  - {rule.describe()}" for rule in rules) or "  (none)"
        super().__init__(f"unexpected command: {describe_argv(argv)}\nrules:\n{known}")
        self.argv = argv


@dataclass(frozen=True)
class Rule:
    match: Matcher
    exit_code: int = 0
    output: Sequence[str] | str = ()
    raises: BaseException | type[BaseException] | None = None

    def matches(self, argv: tuple[str, ...]) -> bool:
        if callable(self.match):
            return bool(self.match(argv))
        prefix = tuple(self.match)
        return argv[: len(prefix)] == prefix

    def lines(self) -> list[str]:
        return self.output.splitlines() if isinstance(self.output, str) else list(self.output)

    def describe(self) -> str:
        if callable(self.match):
            what = f"predicate {getattr(self.match, '__name__', repr(self.match))}"
        else:
            what = f"prefix {describe_argv(tuple(self.match))}"
        outcome = f"raises {self.raises!r}" if self.raises is not None else f"exit {self.exit_code}"
        return f"{what} -> {outcome}"


@dataclass(frozen=True)
class Call:
    argv: tuple[str, ...]
    timeout: float
    stdin: bytes | None = None
    holders_of: str | None = None


@dataclass
class FakeExecutor:
    rules: list[Rule] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def on(
        self,
        match: Matcher,
        *,
        exit_code: int = 0,
        output: Sequence[str] | str = (),
        raises: BaseException | type[BaseException] | None = None,
    ) -> FakeExecutor:
        """Add a rule (after the existing ones) and return self, for chaining."""
        self.rules.append(Rule(match, exit_code=exit_code, output=output, raises=raises))
        return self

    @property
    def argvs(self) -> list[tuple[str, ...]]:
        return [call.argv for call in self.calls]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        holders_of: str | None = None,
    ) -> CommandResult:
        args = check_argv(argv)
        seconds = check_timeout(timeout)
        self.calls.append(Call(args, seconds, check_stdin(stdin), check_holders_of(holders_of)))
        rule = next((rule for rule in self.rules if rule.matches(args)), None)
        if rule is None:
            raise UnexpectedCommand(args, self.rules)
        tail = OutputTail(on_output)
        for line in rule.lines():
            tail.feed(line + "\n")
        tail.close()
        if rule.raises is not None:
            raise rule.raises
        return CommandResult(argv=args, exit_code=rule.exit_code, duration_s=0.0, output=tail.text())
