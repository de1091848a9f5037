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


class FlakyCreateApi(ScriptedApi):
    """Creating an exec fails ``failures`` times (the API busy for a moment), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__(exit_code=0, pid=42, output=b"ok\n")
        self.failures, self.creates = failures, 0

    def exec_create(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        self.creates += 1
        if self.creates <= self.failures:
            raise ConnectionError("Connection aborted: the proxy closed the connection")
        return super().exec_create(*args, **kwargs)


def test_an_exec_the_api_failed_to_create_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jerp_jobs.executors.docker.EXEC_CREATE_RETRIES_S", (0.0, 0.0))
    api = FlakyCreateApi(failures=2)
    result = _executor(api).run(["true"], timeout=10)
    assert result.exit_code == 0 and "ok" in result.output and api.creates == 3
    api = FlakyCreateApi(failures=3)
    with pytest.raises(ExecutorUnavailable, match="failed while creating an exec in jerp-backend-1"):
        _executor(api).run(["true"], timeout=10)
    assert api.creates == 3


def test_an_exec_the_api_refuses_is_not_asked_again() -> None:
    from types import SimpleNamespace

    import docker.errors

    class RefusingApi(FlakyCreateApi):
        def exec_create(self, *args: Any, **kwargs: Any) -> dict[str, str]:
            self.creates += 1
            raise docker.errors.APIError("403 Forbidden: not allowed by the proxy",
                                         response=SimpleNamespace(status_code=403, url="http://proxy/exec", reason="Forbidden"),
                                         explanation="not allowed by the proxy")

    api = RefusingApi(failures=0)
    with pytest.raises(ExecutorUnavailable, match="not allowed by the proxy"):
        _executor(api).run(["true"], timeout=10)
    assert api.creates == 1
