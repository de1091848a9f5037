"""Pytest plugin: containers of the stand-in frappe_docker ``backend`` image.

Load it with ``pytest_plugins = ["tests.docker_backend"]``. The image is this checkout's
(tests/naming.py), built by ``tests/images/build.sh``; without it (or without a reachable Docker Engine) the fixtures fail
the test rather than skip it, so a broken setup never passes silently.

Fixtures:
    docker_client       (session) a ``docker.DockerClient`` from the environment.
    backend_container   a factory ``start(bench_dir, *, project=None, service="backend",
                        env=None) -> Container``; every container it started is removed
                        (forced) when the test ends. The containers carry this checkout's
                        label and are named ``<project>-<service>-<number>`` (the project
                        name given the checkout's ``jt<id>-`` prefix when it lacks it).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import naming

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

BACKEND_IMAGE = naming.BACKEND_IMAGE
BENCH_PATH = "/home/frappe/frappe-bench"
SITES_PATH = f"{BENCH_PATH}/sites"
FRAPPE_UID = 1000
FRAPPE_GID = 1000
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"

_BUILD_HINT = "run tests/images/build.sh"
_START_TIMEOUT = 30.0

StartBackend = Callable[..., "Container"]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A Docker client from the environment; fails when the engine or the backend image is missing."""
    import docker

    problem = None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        problem = f"the Docker Engine is not reachable ({exc}); these tests need it"
    else:
        try:
            client.images.get(BACKEND_IMAGE)
        except docker.errors.ImageNotFound:
            client.close()
            problem = f"the image {BACKEND_IMAGE} is missing: {_BUILD_HINT}"
    if problem:
        pytest.fail(problem, pytrace=False)
    yield client
    client.close()


@pytest.fixture
def backend_container(docker_client: docker.DockerClient) -> Iterator[StartBackend]:
    """Factory starting stand-in backend containers on the host network, with compose labels.

    ``start(bench_dir, project=None, service="backend", env=None)`` bind-mounts
    ``bench_dir / "sites"`` at /home/frappe/frappe-bench/sites (made writable by uid 1000),
    labels the container as service ``service`` of compose project ``project`` (a random
    ``jt<id>-backend-xxxxxxxx`` when not given), waits until it runs and returns it.
    """
    import docker

    started: list[Container] = []
    numbers: Counter[tuple[str, str]] = Counter()

    def start(
        bench_dir: Path,
        *,
        project: str | None = None,
        service: str = "backend",
        env: dict[str, str] | None = None,
    ) -> Container:
        sites = Path(bench_dir).resolve() / "sites"
        if not sites.is_dir():
            raise FileNotFoundError(f"{sites} does not exist; lay out the bench folder first")
        _make_writable_by_frappe(sites)
        project = project or naming.unique_name("backend")
        numbers[(project, service)] += 1
        number = numbers[(project, service)]
        prefix = "" if naming.is_ours(project) else naming.NAME_PREFIX
        container = docker_client.containers.run(
            BACKEND_IMAGE,
            name=f"{prefix}{project}-{service}-{number}",
            detach=True,
            network_mode="host",
            labels={
                **naming.LABELS,
                PROJECT_LABEL: project,
                SERVICE_LABEL: service,
                "com.docker.compose.oneoff": "False",
                "com.docker.compose.container-number": str(number),
            },
            volumes={str(sites): {"bind": SITES_PATH, "mode": "rw"}},
            # On the host's network: its web server on a port of its own, not the host's 8000.
            environment={"STANDIN_WEB_LISTEN": "127.0.0.1:0", **(env or {})},
        )
        started.append(container)
        _wait_running(container)
        return container

    yield start

    for container in reversed(started):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def _make_writable_by_frappe(path: Path) -> None:
    if os.geteuid() == 0:
        for item in [path, *path.rglob("*")]:
            os.chown(item, FRAPPE_UID, FRAPPE_GID, follow_symlinks=False)
        return
    for item in [path, *path.rglob("*")]:
        if item.is_symlink():
            continue
        mode = item.stat().st_mode
        extra = 0o777 if item.is_dir() else 0o666 | (0o111 if mode & 0o100 else 0)
        item.chmod(mode | extra)


def _wait_running(container: Container) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        container.reload()
        status = container.status
        if status == "running":
            return
        if status in ("exited", "dead") or time.monotonic() > deadline:
            logs = container.logs(tail=50).decode(errors="replace")
            pytest.fail(
                f"container {container.short_id} of {BACKEND_IMAGE} is {status}, not running\n{logs}",
                pytrace=False,
            )
        time.sleep(0.1)
