"""FakeExecutor, the shipped test double, and the package's light import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jerp_jobs.errors import CommandTimeout
from jerp_jobs.executors import CommandResult, Executor
from tests.fake_executor import FakeExecutor, Rule, UnexpectedCommand
from jerp_jobs.executors._argv import describe_argv


def test_first_matching_prefix_rule_decides() -> None:
    fake = FakeExecutor(
        [
            Rule(["bench", "--site", "a.example.com", "migrate"], output=["Migrating a.example.com"]),
            Rule(["bench", "--site", "a.example.com"], exit_code=1, output="Site a.example.com does not exist!"),
        ]
    )
    seen: list[str] = []

    migrate = fake.run(["bench", "--site", "a.example.com", "migrate"], timeout=60, on_output=seen.append)
    other = fake.run(("bench", "--site", "a.example.com", "clear-cache"), timeout=30)

    assert migrate == CommandResult(
        argv=("bench", "--site", "a.example.com", "migrate"),
        exit_code=0,
        duration_s=0.0,
        output="Migrating a.example.com",
    )
    assert seen == ["Migrating a.example.com"]
    assert other.exit_code == 1 and other.output == "Site a.example.com does not exist!"


def test_calls_are_recorded_with_their_timeouts() -> None:
    fake = FakeExecutor().on(["bench"])

    fake.run(["bench", "build"], timeout=600)
    fake.run(["bench", "--site", "x.example.com", "migrate"], timeout=3600)

    assert fake.argvs == [("bench", "build"), ("bench", "--site", "x.example.com", "migrate")]
    assert [call.timeout for call in fake.calls] == [600.0, 3600.0]


def test_predicate_rule_and_raised_exception() -> None:
    fake = FakeExecutor().on(
        lambda argv: "backup" in argv,
        output=["Backing up"],
        raises=CommandTimeout("too slow", timeout=5),
    )
    seen: list[str] = []

    with pytest.raises(CommandTimeout, match="too slow"):
        fake.run(["bench", "--site", "a.example.com", "backup"], timeout=5, on_output=seen.append)

    assert seen == ["Backing up"]
    assert len(fake.calls) == 1


def test_unexpected_command_is_an_assertion_error_naming_the_argv() -> None:
    fake = FakeExecutor().on(["bench", "build"])

    with pytest.raises(AssertionError) as caught:
        fake.run(["bench", "--site", "a.example.com", "--db-root-password", "pw", "restore"], timeout=5)

    assert isinstance(caught.value, UnexpectedCommand)
    message = str(caught.value)
    assert "unexpected command: bench --site a.example.com" in message
    assert "pw " not in message
    assert "prefix bench build -> exit 0" in message


def test_fake_refuses_a_shell_string_like_the_real_executors() -> None:
    fake = FakeExecutor().on(lambda argv: True)

    with pytest.raises(TypeError):
        fake.run("bench build", timeout=5)  # type: ignore[arg-type]


def test_fake_satisfies_the_executor_protocol() -> None:
    executor: Executor = FakeExecutor().on(["true"])

    assert executor.run(["true"], timeout=1).ok


@pytest.mark.parametrize(
    "argv, shown",
    [
        pytest.param(["bench", "migrate"], "bench migrate", id="plain"),
        pytest.param(
            ["bench", "new-site", "a", "--db-root-password", "s3", "--admin-password=pw"],
            "bench new-site a --db-root-password '***' '--admin-password=***'",
            id="secret-options",
        ),
        pytest.param(["bench", "restore", "--encryption-key", "k"], "bench restore --encryption-key '***'", id="key"),
        pytest.param(["echo", "a b"], "echo 'a b'", id="quoting"),
    ],
)
def test_argv_descriptions_hide_secrets(argv: list[str], shown: str) -> None:
    assert describe_argv(argv) == shown


def test_importing_the_package_does_not_import_docker() -> None:
    code = (
        "import sys, jerp_jobs.executors as e\n"
        "e.DockerExecutor(project='p', service='backend')\n"
        "assert 'docker' not in sys.modules, 'the docker SDK imported before the executor talks to Docker'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
