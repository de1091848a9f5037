"""The Docker executor's reading of what the Docker API reports, on a scripted API (no
engine): cases that the engine produces only under load or by accident."""

from __future__ import annotations

from typing import Any

import pytest

from jerp_jobs.errors import ExecutorUnavailable
from jerp_jobs.executors.docker import DockerExecutor

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class ScriptedApi:
    """A running backend container whose execs end with ``exit_code`` and report ``pid``,
    printing ``output``."""

    def __init__(self, *, exit_code: int, pid: int, output: bytes = b"") -> None:
        self.exit_code, self.pid, self.output = exit_code, pid, output

    def containers(self, **_: Any) -> list[dict[str, Any]]:
        labels = {PROJECT_LABEL: "jerp", SERVICE_LABEL: "backend", "com.docker.compose.container-number": "1"}
        return [{"Id": "c0ffee", "Names": ["/jerp-backend-1"], "State": "running", "Status": "Up", "Labels": labels}]

    def inspect_container(self, _id: str) -> dict[str, Any]:
        return {"Id": "c0ffee", "Name": "/jerp-backend-1", "State": {"Status": "running", "ExitCode": 0}}

    def exec_create(self, *_: Any, **__: Any) -> dict[str, str]:
        return {"Id": "e" * 64}

    def exec_start(self, *_: Any, **__: Any) -> Any:
        return iter([self.output] if self.output else [])

    def exec_inspect(self, _id: str) -> dict[str, Any]:
        return {"Running": False, "ExitCode": self.exit_code, "Pid": self.pid}


def _executor(api: ScriptedApi) -> DockerExecutor:
    return DockerExecutor(project="jerp", service="backend", user="no-such-user", client_factory=lambda: api)


def test_an_exec_docker_never_started_is_unavailable_even_with_its_message_lost() -> None:
    """Under load the daemon's "unable to find user" line can miss the stream; the exec's
    ``Pid`` 0 still tells that no process ran, which is not a failed command."""
    with pytest.raises(ExecutorUnavailable, match="as user 'no-such-user'.*no process was started"):
        _executor(ScriptedApi(exit_code=126, pid=0)).run(["true"], timeout=10)


def test_a_command_that_ran_and_exited_127_is_its_own_failure() -> None:
    result = _executor(ScriptedApi(exit_code=127, pid=4242, output=b"bench: missing-thing\n")).run(
        ["bench", "x"], timeout=10)
    assert result.exit_code == 127 and "missing-thing" in result.output
