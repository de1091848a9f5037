"""Compose stacks for the deployment tests: the platform (tests/compose/platform.yml: compose.yml's
database and the stand-in backend) and the jobs stack (compose.jobs.yml with the test override
tests/compose/jobs.yml), each a compose project of its own as in production, on the images
that tests/images/build.sh builds for this checkout (tests/naming.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import naming

ROOT = Path(__file__).resolve().parent.parent
#: The image variables of the compose files (compose.jobs.yml, tests/compose/platform.yml):
#: this checkout's images. Put them in every env file of a stack.
IMAGES = {
    "JERP_JOBS_IMAGE": naming.JOBS_IMAGE,
    "JERP_REDIS_IMAGE": naming.REDIS_IMAGE,
    "JERP_TEST_MARIADB_IMAGE": naming.MARIADB_IMAGE,
    "JERP_TEST_BACKEND_IMAGE": naming.BACKEND_IMAGE,
}
REQUIRED_IMAGES = list(IMAGES.values())
_ENV_PASSED = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")


def compose_command() -> list[str]:
    """``docker compose`` (v2) when the plugin is there, else ``docker-compose`` (v1)."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed", pytrace=False)


def write_env_file(path: Path, values: Mapping[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    path.chmod(0o600)
    return path


@dataclass
class Compose:
    """One compose project: ``files`` interpolated from ``env_file`` only (never a stray .env)."""

    project: str
    files: Sequence[Path]
    env_file: Path
    command: list[str] = field(default_factory=compose_command)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [*self.command, "--env-file", str(self.env_file), "-p", self.project,
                *(arg for f in self.files for arg in ("-f", str(f))), *args]
        env = {k: v for k, v in os.environ.items() if k in _ENV_PASSED}
        done = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv[len(self.command):])} failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def up(self) -> None:
        self.run("up", "-d", "--no-build", timeout=600)

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=300)

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", service).stdout.split()
        if not ids:
            raise AssertionError(f"service {service} of {self.project} has no container")
        return ids[0]

    def services(self) -> list[str]:
        return self.run("ps", "--services").stdout.split()

    def logs(self, tail: int = 80) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), check=False).stdout

    def exec(self, service: str, *argv: str, env: Mapping[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
        extra = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        return subprocess.run(["docker", "exec", *extra, self.container(service), *argv],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def health(self, service: str) -> str:
        state = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .State}}", self.container(service)],
                                          capture_output=True, text=True, check=True).stdout)
        return (state.get("Health") or {}).get("Status") or state.get("Status", "?")

    def wait_healthy(self, services: Sequence[str], *, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {s: self.health(s) for s in services}
            if all(state == "healthy" for state in states.values()):
                return
            if any(state in ("unhealthy", "exited", "dead") for state in states.values()):
                break
            time.sleep(1)
        raise AssertionError(f"{self.project}: not healthy: {states}\n{self.logs()}")


def require_images() -> None:
    missing = [image for image in REQUIRED_IMAGES
               if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0]
    if missing:
        pytest.fail(f"missing test images {missing}: run tests/images/build.sh", pytrace=False)


def chown_to_frappe(path: Path) -> None:
    """The backend runs bench as frappe (uid 1000): the sites folder must be its."""
    for item in [path, *path.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(item, 1000, 1000, follow_symlinks=False)
        elif not item.is_symlink():
            item.chmod(item.stat().st_mode | (0o777 if item.is_dir() else 0o666))
