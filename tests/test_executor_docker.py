"""DockerExecutor against the real Docker Engine and the stand-in backend image."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jerp_jobs.errors import (
    CommandTimeout,
    ContainerNotFound,
    ContainerNotRunning,
    ExecutorUnavailable,
)
from jerp_jobs.executors import CommandResult, DockerExecutor
from tests.naming import BACKEND_IMAGE, LABELS, unique_name

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

pytestmark = pytest.mark.docker

BENCH_PATH = "/home/frappe/frappe-bench"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    """A bench folder with an empty sites folder, mounted into the backend containers."""
    (tmp_path / "bench" / "sites").mkdir(parents=True)
    return tmp_path / "bench"


@pytest.fixture
def backend(backend_container: Callable[..., Container], bench_dir: Path) -> Container:
    """One running stand-in backend container in a compose project of its own."""
    return backend_container(bench_dir)


def executor_for(container: Container, **kwargs: object) -> DockerExecutor:
    kwargs.setdefault("kill_grace", 1.0)
    return DockerExecutor(project=container.labels[PROJECT_LABEL], **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def executor(backend: Container) -> DockerExecutor:
    """A DockerExecutor aimed at ``backend``, with a short kill grace."""
    return executor_for(backend)


def processes(executor: DockerExecutor) -> list[str]:
    """The command lines of the processes running in the container (procps ``ps``)."""
    result = executor.run(["ps", "-eo", "args="], timeout=30)
    assert result.exit_code == 0, result.output
    return [line.strip() for line in result.output.splitlines()]


@pytest.fixture
def make_container(docker_client: docker.DockerClient) -> Iterator[Callable[..., Container]]:
    """Factory for containers of the backend image with compose labels; removes them after."""
    made: list[Container] = []

    def make(
        project: str, *, service: str = "backend", start: bool = True, **kwargs: object
    ) -> Container:
        labels = {**LABELS, PROJECT_LABEL: project, SERVICE_LABEL: service}
        labels.update(kwargs.pop("labels", {}))  # type: ignore[arg-type]
        container = docker_client.containers.create(
            BACKEND_IMAGE, network_mode="host", labels=labels, **kwargs
        )
        made.append(container)
        if start:
            container.start()
        return container

    yield make
    for container in made:
        try:
            container.remove(force=True)
        except Exception:
            pass


def wait_for_status(container: Container, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        if container.status == wanted:
            return
        assert time.monotonic() < deadline, f"container stayed {container.status}, never {wanted}"
        time.sleep(0.05)


@pytest.mark.parametrize("code", [0, 3], ids=["success", "exit-3"])
def test_exit_code_is_reported_not_raised(executor: DockerExecutor, code: int) -> None:
    result = executor.run(["sh", "-c", f"echo bye; exit {code}"], timeout=30)

    assert isinstance(result, CommandResult)
    assert result.exit_code == code
    assert result.output == "bye"
    assert result.argv == ("sh", "-c", f"echo bye; exit {code}")


def test_runs_as_frappe_in_the_bench_folder(executor: DockerExecutor) -> None:
    result = executor.run(["sh", "-c", "id -un; id -u; pwd"], timeout=30)

    assert result.output.splitlines() == ["frappe", "1000", BENCH_PATH]


def test_extra_env_reaches_the_command(backend: Container) -> None:
    executor = executor_for(backend, env={"JERP_PROBE": "present"})

    result = executor.run(["printenv", "JERP_PROBE"], timeout=30)

    assert result.output == "present"


def test_output_reaches_the_callback_while_the_command_still_runs(
    executor: DockerExecutor, bench_dir: Path
) -> None:
    script = (
        "echo first; "
        "i=0; while [ ! -e sites/callback-marker ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; "
        "if [ -e sites/callback-marker ]; then echo 'marker seen'; else echo 'marker missing'; fi"
    )
    seen: list[str] = []

    def on_output(line: str) -> None:
        seen.append(line)
        if line == "first":
            (bench_dir / "sites" / "callback-marker").touch()

    result = executor.run(["sh", "-c", script], timeout=60, on_output=on_output)

    assert seen == ["first", "marker seen"]
    assert result.exit_code == 0


def test_stdout_and_stderr_arrive_in_order(executor: DockerExecutor) -> None:
    code = (
        "import sys\n"
        "for i in range(40):\n"
        "    print(f'line {i}', file=sys.stderr if i % 2 else sys.stdout, flush=True)\n"
    )
    seen: list[str] = []

    executor.run(["python3", "-c", code], timeout=30, on_output=seen.append)

    assert seen == [f"line {i}" for i in range(40)]


def test_stdin_is_closed(executor: DockerExecutor) -> None:
    result = executor.run(["python3", "-c", "import sys; print(repr(sys.stdin.read()))"], timeout=30)

    assert result.exit_code == 0
    assert result.output == "''"


def test_hung_command_is_killed_at_its_timeout(executor: DockerExecutor) -> None:
    with pytest.raises(CommandTimeout) as caught:
        executor.run(["sleep", "1000"], timeout=1)

    assert caught.value.timeout == 1
    assert "timeout of 1s" in str(caught.value)
    left = processes(executor)
    assert not [p for p in left if "sleep 1000" in p], left


def test_command_ignoring_sigterm_is_killed_after_the_grace(executor: DockerExecutor) -> None:
    script = "trap '' TERM; echo trapped; sleep 1000; echo survived"

    with pytest.raises(CommandTimeout) as caught:
        executor.run(["sh", "-c", script], timeout=1)

    assert caught.value.output_tail == "trapped"
    left = processes(executor)
    assert not [p for p in left if "sleep 1000" in p or "echo trapped" in p], left


def test_wedged_exec_gives_up_at_the_client_deadline(
    backend: Container,
) -> None:
    """A paused container never finishes the exec: the caller still gets its answer."""
    executor = executor_for(backend, api_margin=1.0)

    def pause_once_started(line: str) -> None:
        if line == "started":
            backend.pause()

    try:
        with pytest.raises(CommandTimeout, match="did not report its end"):
            executor.run(["sh", "-c", "echo started; exec sleep 1000"], timeout=1, on_output=pause_once_started)
    finally:
        backend.reload()
        if backend.status == "paused":
            backend.unpause()

    deadline = time.monotonic() + 30
    while [p for p in processes(executor) if "sleep 1000" in p]:
        assert time.monotonic() < deadline, "the in-container timeout never killed the command"
        time.sleep(0.2)


def test_missing_program_is_unavailable(executor: DockerExecutor) -> None:
    with pytest.raises(ExecutorUnavailable, match="no-such-program-xyz"):
        executor.run(["no-such-program-xyz"], timeout=30)


def test_container_without_timeout_program_is_unavailable(backend: Container) -> None:
    executor = executor_for(backend, env={"PATH": "/nowhere"})

    with pytest.raises(ExecutorUnavailable, match="coreutils `timeout`"):
        executor.run(["true"], timeout=30)


def test_unknown_user_is_unavailable(backend: Container) -> None:
    executor = executor_for(backend, user="no-such-user")

    with pytest.raises(ExecutorUnavailable, match="no-such-user"):
        executor.run(["true"], timeout=30)


def test_missing_container_names_project_and_service() -> None:
    project = unique_name("absent")
    executor = DockerExecutor(project=project, service="backend")

    with pytest.raises(ContainerNotFound) as caught:
        executor.run(["true"], timeout=10)

    message = str(caught.value)
    assert f"'{project}'" in message and "'backend'" in message
    assert "is the stack up?" in message


def test_other_service_of_the_project_is_not_used(backend: Container) -> None:
    executor = DockerExecutor(project=backend.labels[PROJECT_LABEL], service="queue-long")

    with pytest.raises(ContainerNotFound, match="queue-long"):
        executor.run(["true"], timeout=10)


def test_stopped_container_is_not_running(backend: Container, executor: DockerExecutor) -> None:
    backend.stop(timeout=5)

    with pytest.raises(ContainerNotRunning, match="exited") as caught:
        executor.run(["true"], timeout=10)

    assert caught.value.fields["status"] == "exited"


def test_paused_container_is_not_running(backend: Container, executor: DockerExecutor) -> None:
    backend.pause()
    try:
        with pytest.raises(ContainerNotRunning, match="paused"):
            executor.run(["true"], timeout=10)
    finally:
        backend.unpause()


def test_created_container_is_not_running(make_container: Callable[..., Container]) -> None:
    project = unique_name("exec")
    make_container(project, start=False)

    with pytest.raises(ContainerNotRunning, match="created"):
        DockerExecutor(project=project).run(["true"], timeout=10)


def test_crash_looping_container_is_reported_as_restarting(
    make_container: Callable[..., Container],
) -> None:
    project = unique_name("exec")
    container = make_container(project, command=["false"], restart_policy={"Name": "always"})
    wait_for_status(container, "restarting")

    with pytest.raises(ContainerNotRunning, match="restarting") as caught:
        DockerExecutor(project=project).run(["true"], timeout=10)

    assert "crash loop" in str(caught.value)


def test_scaled_service_uses_the_lowest_container_number(
    make_container: Callable[..., Container],
) -> None:
    project = unique_name("exec")
    number = "com.docker.compose.container-number"
    make_container(project, labels={number: "2"}, environment={"WHICH": "second"})
    make_container(project, labels={number: "10"}, environment={"WHICH": "tenth"})
    make_container(project, labels={number: "1"}, environment={"WHICH": "first"})
    executor = DockerExecutor(project=project)

    assert executor.run(["printenv", "WHICH"], timeout=30).output == "first"


def test_running_container_wins_over_stopped_ones(
    make_container: Callable[..., Container],
) -> None:
    project = unique_name("exec")
    number = "com.docker.compose.container-number"
    make_container(project, start=False, labels={number: "1"}, environment={"WHICH": "created"})
    make_container(project, labels={number: "2"}, environment={"WHICH": "running"})

    assert DockerExecutor(project=project).run(["printenv", "WHICH"], timeout=30).output == "running"


@pytest.mark.parametrize("how", ["kill", "remove"])
def test_container_going_away_mid_command_is_reported(
    backend: Container, executor: DockerExecutor, how: str
) -> None:
    action = backend.kill if how == "kill" else (lambda: backend.remove(force=True))
    stopper = threading.Thread(target=action)

    def stop(line: str) -> None:
        if line == "started":
            stopper.start()

    try:
        with pytest.raises(ContainerNotRunning) as caught:
            executor.run(["sh", "-c", "echo started; exec sleep 1000"], timeout=60, on_output=stop)
    finally:
        if stopper.is_alive() or stopper.ident is not None:
            stopper.join(timeout=60)

    message = str(caught.value)
    assert "while running sh -c" in message
    if how == "kill":
        assert "is exited" in message
    else:
        assert "disappeared" in message or "is removing" in message


def test_unreachable_docker_api_is_unavailable() -> None:
    import docker

    executor = DockerExecutor(
        project="jerp",
        client_factory=lambda: docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41"),
    )

    with pytest.raises(ExecutorUnavailable, match="127.0.0.1:9") as caught:
        executor.run(["true"], timeout=10)

    assert caught.value.__cause__ is not None


def test_docker_client_that_cannot_be_built_is_unavailable(tmp_path: Path) -> None:
    import docker

    socket = tmp_path / "no-docker.sock"
    executor = DockerExecutor(
        project="jerp", client_factory=lambda: docker.DockerClient(base_url=f"unix://{socket}")
    )

    with pytest.raises(ExecutorUnavailable, match="cannot reach the Docker API"):
        executor.run(["true"], timeout=10)


def test_string_argv_is_refused_before_any_docker_call() -> None:
    def no_client() -> docker.DockerClient:
        raise AssertionError("the Docker API must not be contacted")

    executor = DockerExecutor(project="jerp", client_factory=no_client)

    with pytest.raises(TypeError):
        executor.run("bench --site all migrate", timeout=10)  # type: ignore[arg-type]


def test_standin_bench_reports_an_unknown_site(
    backend_container: Callable[..., Container], tmp_path: Path
) -> None:
    from tests.standin.layout import create_bench

    bench = create_bench(tmp_path / "frappe-bench", db_host="127.0.0.1", db_port=3306)
    executor = executor_for(backend_container(bench))

    result = executor.run(["bench", "--site", "nosuch.example.com", "migrate"], timeout=60)

    assert result.exit_code == 1
    assert "Site nosuch.example.com does not exist!" in result.output


STDIN_PROBE = ["python3", "-c", "import sys; a = sys.stdin.readline(); b = sys.stdin.readline(); "
               "rest = sys.stdin.read(); print(repr(a), repr(b), repr(rest))"]


def test_stdin_bytes_reach_the_exec_then_end_of_file(executor: DockerExecutor) -> None:
    fed = executor.run(STDIN_PROBE, timeout=30, stdin=b"first\nsecond\n")
    assert (fed.exit_code, fed.output) == (0, "'first\\n' 'second\\n' ''")
    closed = executor.run(STDIN_PROBE, timeout=30)
    assert (closed.exit_code, closed.output) == (0, "'' '' ''")
    many = executor.run(["sh", "-c", "seq 1 20000; cat"], timeout=30, stdin=b"tail-line\n")
    assert many.output.splitlines()[-2:] == ["20000", "tail-line"]


DAEMON_IN_CONTAINER = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        null = os.open(os.devnull, os.O_RDWR)\n"
    "        [os.dup2(null, fd) for fd in (0, 1, 2)]\n"
    "        open('sites/daemon.pid', 'w').write(str(os.getpid()))\n"
    "        while True: time.sleep(1)\n"
    "    os._exit(0)\n"
    "print('migrating', flush=True)\n"
    "time.sleep(300)\n"
)


def test_a_daemonised_fence_holder_is_killed_after_a_timeout(executor: DockerExecutor, bench_dir: Path) -> None:
    fence = "sites/.jerp-fence.acme.example.com"
    with pytest.raises(CommandTimeout):
        executor.run(["flock", "-w", "1", fence, "python3", "-c", DAEMON_IN_CONTAINER], timeout=2,
                     holders_of=fence)
    pid = (bench_dir / "sites" / "daemon.pid").read_text().strip()
    deadline = time.monotonic() + 10
    while [p for p in processes(executor) if "python3 -c" in p]:
        assert time.monotonic() < deadline, f"daemon {pid} still holds the fence"
        time.sleep(0.2)
    got = executor.run(["flock", "-w", "1", "-E", "75", fence, "echo", "fence free"], timeout=10)
    assert (got.exit_code, got.output) == (0, "fence free")
